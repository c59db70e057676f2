"""Fit where a face mask's six anchors sit, given maskid's five landmarks; and package the templates.

Two jobs, both regenerating what `maskid.pipeline.masks` ships:

* ``fit`` (default): on real photos (``../shared/data/demo/lfw10`` and the unmasked M2FRED
  crops ``*-0-0.png``, padded 50% edge-replicated), dlib's 68-point predictor gives the ground
  truth. From it we take maskid's five points (eye centres, nose tip 30, mouth corners 48/54) and
  the six mask anchors (`maskid.pipeline.masks.anchors_from_68`), then fit a ridge regression in the
  eye-normalised frame. It prints the coefficients to paste into ``_ANCHOR_COEF`` in masks.py,
  the in-sample and leave-identities-out errors (pixels / inter-ocular distance) and the
  distribution of the yaw proxy.
* ``templates``: copy the MaskTheFace templates we keep into ``python/maskid/data/masks``,
  cropped to their alpha and scaled so the cheek-to-cheek anchor span is ``--span`` pixels,
  with the anchors in masks.cfg rewritten to match.

    PYTHONPATH=training python -m maskid_train.fit_mask_anchors fit
    PYTHONPATH=training python -m maskid_train.fit_mask_anchors templates
"""

from __future__ import annotations

import argparse
import configparser
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskid.paths import PACKAGE_DATA, shared_data_dir
from maskid.pipeline.masks import (
    _ANCHOR_COEF,
    anchors_from_68,
    face_anchors,
    fit_anchor_regression,
    head_yaw,
    points5_from_68,
)

KEEP = (  # MaskTheFace templates worth shipping; the gas mask (a respirator with filters) is not
    "surgical",
    "surgical_blue",
    "surgical_green",
    "N95",
    "KN95",
    "cloth",
)


def _dlib_models() -> tuple[Any, Any]:
    import dlib
    import face_recognition_models

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    return detector, predictor


def landmarks68(
    image_rgb: np.ndarray, detector: Any, predictor: Any, upsample: int = 1
) -> np.ndarray | None:
    """dlib's 68 points of the face nearest the image centre, or None when no face is found."""
    import dlib

    rects = detector(image_rgb, upsample)
    if len(rects) == 0:
        return None
    h, w = image_rgb.shape[:2]

    def off_centre(r: dlib.rectangle) -> float:
        return float(
            np.hypot((r.left() + r.right()) / 2 - w / 2, (r.top() + r.bottom()) / 2 - h / 2)
        )

    rect = min(rects, key=off_centre)
    shape = predictor(image_rgb, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise OSError(f"unreadable image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def collect(data: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N,68,2) landmarks and identity labels from lfw10 and unmasked M2FRED."""
    detector, predictor = _dlib_models()
    pts: list[np.ndarray] = []
    ids: list[str] = []
    for path in sorted((data / "demo" / "lfw10").glob("*/*.jpg")):
        img = _read_rgb(path)
        p = landmarks68(img, detector, predictor, upsample=0)
        if p is not None:
            pts.append(p)
            ids.append("lfw/" + path.parent.name)
    for path in sorted((data / "eval" / "m2fred").glob("*/*-0-0.png")):
        img = _read_rgb(path)
        pad = img.shape[0] // 2
        img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        p = landmarks68(img, detector, predictor, upsample=1)
        if p is not None:
            pts.append(p - pad)
            ids.append("m2fred/" + path.parent.name)
    return np.stack(pts), np.stack([points5_from_68(p) for p in pts]), ids


def anchor_errors(coef: np.ndarray, p5: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(N,6) anchor errors in inter-ocular distances."""
    pred = np.stack([face_anchors(p, coef=coef) for p in p5])
    iod = np.linalg.norm(p5[:, 1] - p5[:, 0], axis=1)
    return np.linalg.norm(pred - anchors, axis=2) / iod[:, None]


def report(name: str, err: np.ndarray) -> None:
    per_anchor = " ".join(f"{k}={v:.3f}" for k, v in zip("abcdef", err.mean(axis=0), strict=True))
    print(
        f"{name}: mean {err.mean():.3f} IOD, median {np.median(err):.3f}, "
        f"95% {np.percentile(err, 95):.3f}, max {err.max():.3f}  [{per_anchor}]"
    )


def cmd_fit(args: argparse.Namespace) -> int:
    data = shared_data_dir()
    if data is None:
        print("../shared/data not found", file=sys.stderr)
        return 2
    cache = Path(args.cache)
    if cache.exists():
        z = np.load(cache)
        p68, ids = z["p68"], list(z["ids"])
        p5 = np.stack([points5_from_68(p) for p in p68])
    else:
        p68, p5, ids = collect(data)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, p68=p68, ids=np.array(ids))
    anchors = np.stack([anchors_from_68(p) for p in p68])
    print(f"{len(p68)} faces from {len(set(ids))} identities")

    coef = fit_anchor_regression(p5, anchors, ridge=args.ridge)
    report("in-sample", anchor_errors(coef, p5, anchors))
    # leave-identities-out: 5 folds over identities
    uniq = sorted(set(ids))
    rng = np.random.default_rng(0)
    fold_of = dict(zip(uniq, rng.permutation(len(uniq)) % 5, strict=True))
    folds = np.array([fold_of[i] for i in ids])
    errs = []
    for k in range(5):
        tr, te = folds != k, folds == k
        errs.append(
            anchor_errors(
                fit_anchor_regression(p5[tr], anchors[tr], args.ridge), p5[te], anchors[te]
            )
        )
    report("held-out identities (5-fold)", np.concatenate(errs))
    report("shipped coefficients", anchor_errors(_ANCHOR_COEF, p5, anchors))

    yaw = np.array([head_yaw(p) for p in p5])
    # ground-truth asymmetry: nose bridge to left vs right face contour
    gt = np.array(
        [
            (np.linalg.norm(p[27] - p[0]) - np.linalg.norm(p[27] - p[16]))
            / np.linalg.norm(p[16] - p[0])
            for p in p68
        ]
    )
    print(
        f"yaw proxy: percentiles 5/25/50/75/95 = {np.round(np.percentile(yaw, [5, 25, 50, 75, 95]), 3)}, "
        f"corr with contour asymmetry {np.corrcoef(yaw, gt)[0, 1]:.2f}"
    )
    print("\n_ANCHOR_COEF = np.array(")
    print("    [")
    for row in coef:
        print("        [" + ", ".join(f"{v:+.5f}" for v in row) + "],")
    print("    ]\n)")
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    src = Path(args.src) if args.src else (shared_data_dir() or Path("missing")) / "masks"
    if not (src / "masks.cfg").is_file():
        print(f"no masks.cfg under {src}", file=sys.stderr)
        return 2
    dst = PACKAGE_DATA / "masks"
    (dst / "templates").mkdir(parents=True, exist_ok=True)
    cfg = configparser.ConfigParser()
    cfg.read(src / "masks.cfg")
    out = configparser.ConfigParser()
    for base in KEEP:
        for name in (base, base + "_left", base + "_right"):
            sec = cfg[name]
            rgba = cv2.imread(
                str(src / "templates" / Path(sec["template"]).name), cv2.IMREAD_UNCHANGED
            )
            if rgba is None or rgba.ndim != 3 or rgba.shape[2] != 4:
                print(f"{name}: template unreadable or not RGBA", file=sys.stderr)
                return 1
            pts = np.array([[float(v) for v in sec["mask_" + k].split(",")] for k in "abcdef"])
            ys, xs = np.nonzero(rgba[..., 3] > 0)
            x0, y0 = xs.min(), ys.min()
            rgba = rgba[y0 : ys.max() + 1, x0 : xs.max() + 1]
            pts -= (x0, y0)
            scale = args.span / np.linalg.norm(pts[2] - pts[0])
            if scale < 1:
                rgba = cv2.resize(rgba, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                pts *= scale
            rgba[rgba[..., 3] == 0, :3] = 0  # invisible pixels compress better
            fname = name.lower() + ".png"
            cv2.imwrite(str(dst / "templates" / fname), rgba, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            out[name.lower()] = {"template": "templates/" + fname} | {
                "mask_" + k: f"{x:.1f}, {y:.1f}" for k, (x, y) in zip("abcdef", pts, strict=True)
            }
            print(f"{fname}: {rgba.shape[1]}x{rgba.shape[0]}")
    with open(dst / "masks.cfg", "w") as f:
        f.write(
            "; Derived from MaskTheFace's masks/masks.cfg (MIT, see LICENSE-MaskTheFace.txt):\n"
            "; templates cropped to their alpha and scaled by training/maskid_train/fit_mask_anchors.py templates.\n"
            "; mask_a..f: template pixels of a,c top corners (cheekbones), b nose bridge,\n"
            "; d,f lower corners (jaw), e bottom centre (under the chin).\n\n"
        )
        out.write(f)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd")
    fit = sub.add_parser("fit", help="fit the 5-point -> anchor regression")
    fit.add_argument(
        "--cache", default="out/mask_anchor_landmarks.npz", help="dlib landmarks cache"
    )
    fit.add_argument("--ridge", type=float, default=1e-3)
    tpl = sub.add_parser("templates", help="package the MaskTheFace templates")
    tpl.add_argument(
        "--src", default=None, help="MaskTheFace masks folder (default ../shared/data/masks)"
    )
    tpl.add_argument(
        "--span", type=float, default=240.0, help="cheek-to-cheek anchor span in pixels"
    )
    args = parser.parse_args(argv)
    if args.cmd == "templates":
        return cmd_templates(args)
    if args.cmd is None:
        args = fit.parse_args([])
    return cmd_fit(args)


if __name__ == "__main__":
    raise SystemExit(main())
