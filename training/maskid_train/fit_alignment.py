"""Fit `maskid.alignment.similarity.TEMPLATE`: where MTCNN's 5 points sit in dlib's chip geometry.

For each real unmasked face, dlib's own pipeline (HOG detector + shape_predictor_5 +
`maskid.alignment.dlib_chip.dlib_chip_transform`) gives the true chip similarity t: template space -> image.
Our detector's 5 points mapped through t^-1 land in template space; their mean (normalised
like dlib's TEMPLATE_5: x, y in 0..1 before padding) is the template. Prints residuals.

Usage: PYTHONPATH=training python -m maskid_train.fit_alignment [--limit N]   (needs dlib and ../shared/data)
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from maskid.alignment.dlib_chip import dlib_chip_transform
from maskid.detection.mtcnn import MtcnnDetector
from maskid.io.images import load_image

PADDING = 0.25
SIZE = 150


def pad50(img: np.ndarray) -> np.ndarray:
    """A border of 50% of the image side on every side, edge-replicated (128 -> 256)."""
    p = round(max(img.shape[:2]) * 0.5)
    return cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_REPLICATE)


def chip_similarity(m: np.ndarray, size: int = SIZE) -> tuple[np.ndarray, float, float]:
    """Undo dlib's rect folding: M -> (chip centre in the image, scale, angle) of t."""
    mid = (size - 1) / 2
    centre = m[:, :2] @ np.array([mid, mid]) + m[:, 2]
    k = math.hypot(m[0, 0], m[1, 0])
    scale = (k * (size - 1) + 1) / size
    return centre, scale, math.atan2(m[1, 0], m[0, 0])


def to_template01(points: np.ndarray, m: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Image points -> dlib template units (0..1 before padding) under chip transform M."""
    centre, scale, angle = chip_similarity(m, size)
    c, s = math.cos(angle), math.sin(angle)
    rinv = np.array([[c, s], [-s, c]])
    u = (points - centre) @ rinv.T / scale + size / 2.0  # template space (0..size, padded)
    return u / size * (1 + 2 * PADDING) - PADDING


def dlib_models():  # type: ignore[no-untyped-def]
    import dlib
    import face_recognition_models as frm

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    return det, sp


def dlib_points5(img: np.ndarray, det, sp) -> np.ndarray | None:  # type: ignore[no-untyped-def]
    """dlib HOG + 5-point predictor on the largest face, or None if HOG finds nothing."""
    rects = det(img, 1)
    if not rects:
        return None
    r = max(rects, key=lambda r: r.area())
    shape = sp(img, r)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def ours_near(detector: MtcnnDetector, img: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """Our 5 points for the detected face nearest the dlib landmarks' centre."""
    faces = detector.detect(img)
    if not faces:
        return None
    c = ref.mean(0)
    f = min(faces, key=lambda f: float(np.linalg.norm(f.landmarks.mean(0) - c)))
    if np.linalg.norm(f.landmarks.mean(0) - c) > 0.5 * (f.box[2] - f.box[0]):
        return None
    return f.landmarks


def fit_template(paths: Iterable[Path], detector: MtcnnDetector | None = None) -> dict[str, object]:
    """Return {"template": (5,2), "per_face": (N,5,2), "rms_px": per-point RMS in chip px}."""
    det, sp = dlib_models()
    detector = detector or MtcnnDetector()
    per_face = []
    skipped = 0
    for p in paths:
        img = pad50(load_image(p))
        ref = dlib_points5(img, det, sp)
        ours = None if ref is None else ours_near(detector, img, ref)
        if ref is None or ours is None:
            skipped += 1
            continue
        per_face.append(to_template01(ours, dlib_chip_transform(ref, SIZE, PADDING)))
    arr = np.asarray(per_face)
    template = arr.mean(0)
    chip_px = SIZE / (1 + 2 * PADDING)  # template units -> chip pixels
    rms = np.sqrt(((arr - template) ** 2).sum(2).mean(0)) * chip_px
    return {"template": template, "per_face": arr, "rms_px": rms, "skipped": skipped}


def default_paths(shared: Path) -> list[Path]:
    lfw = sorted((shared / "demo" / "lfw10").glob("*/*.jpg"))
    m2 = sorted((shared / "eval" / "m2fred").glob("*/*-0-0.png"))
    return lfw + m2


def eval_masked_rank1(shared: Path) -> dict[str, float]:
    """Rank-1 of masked M2FRED probes vs unmasked enrollment (dlib-resnet-v1, cosine): probes
    aligned on all points or eye-weighted (gallery all points), and both eye-weighted."""
    from maskid.alignment.dlib_chip import extract_chip
    from maskid.alignment.similarity import chip_transform
    from maskid.networks.embedder import Embedder

    detector, emb = MtcnnDetector(), Embedder("dlib-resnet-v1")
    gal_v: list[np.ndarray] = []
    gal_e: list[np.ndarray] = []
    gal_id = []
    probes: dict[str, list[np.ndarray]] = {"all": [], "eyes": []}
    probe_id = []
    for p in sorted((shared / "eval" / "m2fred").glob("*/*-[01]-0.png")):
        img = pad50(load_image(p))
        faces = detector.detect(img)
        masked = p.name.split("-")[1] == "1"
        if not faces:
            continue  # counted below: rank-1 is over probes both variants detect
        lm = faces[0].landmarks
        if not masked:
            chips = [extract_chip(img, chip_transform(lm, masked=m)) for m in (False, True)]
            v = emb.embed_chips(np.stack(chips))
            gal_v.append(v[0])
            gal_e.append(v[1])
            gal_id.append(p.parent.name)
        else:
            chips = [extract_chip(img, chip_transform(lm, masked=m)) for m in (False, True)]
            v = emb.embed_chips(np.stack(chips))
            probes["all"].append(v[0])
            probes["eyes"].append(v[1])
            probe_id.append(p.parent.name)
    out = {}
    probes["eyes_both"] = probes["eyes"]
    for k, vs in probes.items():
        g = np.asarray(gal_e if k == "eyes_both" else gal_v)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        q = np.asarray(vs)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        best = np.argmax(q @ g.T, axis=1)
        out[k] = float(np.mean([gal_id[b] == t for b, t in zip(best, probe_id, strict=True)]))
    out["probes"] = float(len(probe_id))
    return out


def main(argv: list[str] | None = None) -> int:
    from maskid.paths import shared_data_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="use every k-th image to go faster")
    ap.add_argument("--eval-masked", action="store_true", help="rank-1: eye-weighted vs all")
    args = ap.parse_args(argv)
    shared = shared_data_dir()
    if shared is None:
        raise SystemExit("../shared/data not found")
    if args.eval_masked:
        r = eval_masked_rank1(shared)
        print(f"M2FRED masked probes ({r['probes']:.0f} detected) vs unmasked enrollment, rank-1:")
        print(f"  probe aligned on all 5 points: {r['all']:.3f}")
        print(f"  probe aligned eye-weighted:    {r['eyes']:.3f}")
        print(f"  probe and gallery eye-weighted: {r['eyes_both']:.3f}")
        return 0
    paths = default_paths(shared)
    if args.limit:
        paths = paths[:: max(1, len(paths) // args.limit)]
    res = fit_template(paths)
    t = np.asarray(res["template"])
    names = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    print(
        f"faces used: {len(np.asarray(res['per_face']))}, skipped (no dlib/our face): {res['skipped']}"
    )
    print("per-point spread around the mean (RMS, chip pixels of a 150 chip):")
    for n, r in zip(names, np.asarray(res["rms_px"]), strict=True):
        print(f"  {n:12s} {r:5.2f}")
    print("TEMPLATE = np.array(\n    [")
    for row in t:
        print(f"        [{row[0]:.6f}, {row[1]:.6f}],")
    print("    ]\n)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
