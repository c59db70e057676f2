"""Detection benchmark: maskid's MTCNN (ONNX Runtime) vs dlib HOG, same run, same images.

Rates on M2FRED masked (`*-1-0.png`) and unmasked (`*-0-0.png`) 128x128 crops, unpadded and
padded 50% per side (edge-replicated), and on lfw10. A detection counts only if it is correct:
the box overlaps the central region of the image and (ours) both eyes lie inside the box.
Latency: mean CPU time on a 640x480 and a 1920x1080 photo composed from a real lfw10 face.

Usage: python benchmarks/detection.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from maskid.detection.mtcnn import MtcnnDetector
from maskid.io.images import load_image
from maskid.paths import shared_data_dir
from maskid.pipeline.recognizer import Recognizer


def pad(img: np.ndarray, frac: float) -> np.ndarray:
    p = round(max(img.shape[:2]) * frac)
    return cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_REPLICATE) if p else img


def centre_ok(box: np.ndarray, shape: tuple[int, ...]) -> bool:
    """The box overlaps the central third of the image (the face is centred in these sets)."""
    h, w = shape[:2]
    cx1, cy1, cx2, cy2 = w / 3, h / 3, 2 * w / 3, 2 * h / 3
    return bool(box[0] < cx2 and box[2] > cx1 and box[1] < cy2 and box[3] > cy1)


def ours_ok(faces: list, shape: tuple[int, ...]) -> bool:  # type: ignore[type-arg]
    for f in faces:
        eyes = f.landmarks[:2]
        inside = np.all((eyes >= f.box[:2]) & (eyes <= f.box[2:]))
        if inside and centre_ok(f.box, shape):
            return True
    return False


def hog_ok(rects, shape: tuple[int, ...]) -> bool:  # type: ignore[no-untyped-def]
    return any(
        centre_ok(np.array([r.left(), r.top(), r.right(), r.bottom()]), shape) for r in rects
    )


def photo(face: np.ndarray, w: int, h: int) -> np.ndarray:
    """A real face on a plain canvas: the face takes ~40% of the frame height."""
    canvas = np.full((h, w, 3), 110, np.uint8)
    side = int(h * 0.4 / 0.55)  # lfw faces fill ~55% of their 250 px image
    f = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
    y, x = (h - side) // 2, (w - side) // 2
    canvas[y : y + side, x : x + side] = f
    return canvas


def timeit(fn, img: np.ndarray, n: int) -> float:  # type: ignore[no-untyped-def]
    fn(img)
    t = time.perf_counter()
    for _ in range(n):
        fn(img)
    return (time.perf_counter() - t) / n * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a sample of each set (< 1 min)")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--no-hog", action="store_true", help="skip dlib HOG")
    args = ap.parse_args(argv)
    shared = shared_data_dir()
    if shared is None:
        raise SystemExit("../shared/data not found: nothing to measure")
    hog = None
    if not args.no_hog:
        import dlib

        hog = dlib.get_frontal_face_detector()
    det = MtcnnDetector()
    # What `recognize` does with the same file: tight crops get a border, then the ONet-only
    # fallback on the whole crop (maskid.pipeline.recognizer.Recognizer.detect).
    pipeline = Recognizer(None).detect
    m2 = shared / "eval" / "m2fred"
    lfw = sorted((shared / "demo" / "lfw10").glob("*/*.jpg"))
    sets = {
        "m2fred masked": (sorted(m2.glob("*/*-1-0.png")), 0.0),
        "m2fred masked, padded": (sorted(m2.glob("*/*-1-0.png")), 0.5),
        "m2fred unmasked": (sorted(m2.glob("*/*-0-0.png")), 0.0),
        "m2fred unmasked, padded": (sorted(m2.glob("*/*-0-0.png")), 0.5),
        "lfw10": (lfw, 0.0),
    }
    results: dict[str, dict[str, float]] = {}
    for name, (files, frac) in sets.items():
        if args.quick:
            files = files[:: max(1, len(files) // 25)]
        n_ours = n_hog = n_pipe = 0
        for p in tqdm(files, desc=name, leave=False):
            original = load_image(p)
            img = pad(original, frac)
            n_ours += ours_ok(det.detect(img), img.shape)
            faces, context, _ = pipeline(original)
            n_pipe += ours_ok(faces, context.shape)
            if hog is not None:
                n_hog += hog_ok(hog(img, 1), img.shape)
        results[name] = {
            "n": len(files),
            "ours": n_ours / len(files),
            "pipeline": n_pipe / len(files),
        }
        if hog is not None:
            results[name]["hog"] = n_hog / len(files)
    face = load_image(lfw[0])
    reps = 5 if args.quick else 20
    latency: dict[str, dict[str, float]] = {}
    for w, h in ((640, 480), (1920, 1080)):
        img = photo(face, w, h)
        key = f"{w}x{h}"
        found = ours_ok(det.detect(img), img.shape)
        latency[key] = {"ours_ms": timeit(det.detect, img, reps), "ours_found": float(found)}
        if hog is not None:
            latency[key]["hog_ms"] = timeit(lambda im: hog(im, 0), img, max(2, reps // 4))
            latency[key]["hog_found"] = float(hog_ok(hog(img, 0), img.shape))
    print(f"{'set':26s} {'n':>4s} {'ours':>7s} {'pipeline':>9s} {'dlib HOG':>9s}")
    for name, r in results.items():
        hog_s = f"{r['hog']:9.1%}" if "hog" in r else f"{'-':>9s}"
        print(f"{name:26s} {r['n']:4.0f} {r['ours']:7.1%} {r['pipeline']:9.1%} {hog_s}")
    print("(pipeline: the same file through Recognizer.detect: border + whole-crop ONet fallback)")
    print(f"\n{'latency (mean ms)':26s} {'ours':>7s} {'dlib HOG':>9s} {'HOG/ours':>9s}")
    for key, r in latency.items():
        extra = f"{r['hog_ms']:9.1f} {r['hog_ms'] / r['ours_ms']:8.1f}x" if "hog_ms" in r else ""
        print(f"{key:26s} {r['ours_ms']:7.1f} {extra}")
    print("(HOG without upsampling for latency; with upsample=1 for the rates.)")
    if args.json:
        args.json.write_text(json.dumps({"rates": results, "latency": latency}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
