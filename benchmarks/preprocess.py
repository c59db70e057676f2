"""Face-chip preprocessing: the maskid C++ core against the straightforward OpenCV + NumPy path.

For 1, 8, 32 and 128 faces cut from a real LFW photo (a realistic chip transform with small random
perturbations), times `maskid.alignment.warp.warp_batch` (fused warp + BGR->RGB + normalise + NCHW,
all cores) and the per-face OpenCV path (cv2.warpAffine INTER_LINEAR, colour swap, float
conversion, normalise, transpose) in the same run, and reports the max abs difference of each
against the exact NumPy reference (dlib's sampling). OpenCV differs by design: it interpolates
in fixed point and rounds, where dlib truncates a double.

    python benchmarks/preprocess.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from maskid.alignment.warp import CHIP_SIZE, backends, reference_warp, warp_batch
from maskid.paths import shared_data_dir

MEAN = (122.782, 117.001, 104.298)
SCALE = 1 / 58.0


def load_photo() -> np.ndarray:
    data = shared_data_dir()
    if data is None:
        sys.exit("benchmarks/preprocess.py: ../shared/data is not present")
    photos = sorted((data / "demo" / "lfw10").rglob("*.jpg"))
    if not photos:
        sys.exit("benchmarks/preprocess.py: no photos under shared/data/demo/lfw10")
    img = cv2.imread(str(photos[0]), cv2.IMREAD_COLOR)
    if img is None:
        sys.exit(f"benchmarks/preprocess.py: cannot read {photos[0]}")
    return img


def face_transforms(img: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Chip -> image similarity transforms around the face of an LFW photo (face ~110 px)."""
    h, w = img.shape[:2]
    ts = np.zeros((n, 2, 3))
    for i in range(n):
        s = 110 / CHIP_SIZE * rng.uniform(0.9, 1.1)
        a = rng.uniform(-0.15, 0.15)
        cx, cy = w / 2 + rng.normal(0, 4), h / 2 + rng.normal(0, 4)
        c, si = s * np.cos(a), s * np.sin(a)
        half = CHIP_SIZE / 2
        ts[i] = [[c, -si, cx - c * half + si * half], [si, c, cy - si * half - c * half]]
    return ts


def opencv_path(img: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """What one writes without maskid: warp per face, then convert and re-layout."""
    mean = np.asarray(MEAN, np.float32)
    chips = []
    for m in ts:
        inv = cv2.invertAffineTransform(m)
        chip = cv2.warpAffine(img, inv, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR)
        chip = chip[..., ::-1].astype(np.float32)
        chips.append(((chip - mean) * SCALE).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(chips))


def best_time(fn: Callable[[], object], repeats: int, budget_s: float) -> float:
    """Median of `repeats` timed calls (fewer if the budget runs out), in seconds."""
    fn()  # warm-up: thread pool, caches
    times: list[float] = []
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (well under a minute)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--sizes", default="1,8,32,128", help="comma-separated face counts")
    args = ap.parse_args(argv)
    repeats, budget = (7, 1.5) if args.quick else (30, 6.0)

    img = load_photo()
    rng = np.random.default_rng(0)
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    for n in tqdm(sizes, desc="faces", unit="batch"):
        ts = face_transforms(img, n, rng)
        out = np.empty((n, 3, CHIP_SIZE, CHIP_SIZE), np.float32)
        ref = reference_warp(img, ts, bgr=True, mean=MEAN, scale=SCALE)
        core = warp_batch(img, ts, bgr=True, mean=MEAN, scale=SCALE, out=out)
        cv = opencv_path(img, ts)
        t_core = best_time(
            lambda ts=ts, out=out: warp_batch(img, ts, bgr=True, mean=MEAN, scale=SCALE, out=out),
            repeats,
            budget,
        )
        t_core1 = best_time(
            lambda ts=ts, out=out: warp_batch(
                img, ts, bgr=True, mean=MEAN, scale=SCALE, out=out, threads=1
            ),
            repeats,
            budget,
        )
        t_cv = best_time(lambda ts=ts: opencv_path(img, ts), repeats, budget)
        rows.append(
            {
                "faces": n,
                "core_ms": t_core * 1e3,
                "core_1thread_ms": t_core1 * 1e3,
                "opencv_ms": t_cv * 1e3,
                "speedup": t_cv / t_core,
                "speedup_1thread": t_cv / t_core1,
                # in units of the normalised output; x 58 for grey levels
                "core_max_abs_diff": float(np.abs(core - ref).max()),
                "opencv_max_abs_diff": float(np.abs(cv - ref).max()),
            }
        )

    print(f"\nimage {img.shape[1]}x{img.shape[0]}, chip {CHIP_SIZE}, {os.cpu_count()} CPUs")
    head = f"{'faces':>5} {'core ms':>9} {'1-thr ms':>9} {'opencv ms':>10} {'speedup':>8}"
    print(head + f" {'1-thr x':>8} {'core diff':>10} {'cv diff':>9}")
    for r in rows:
        print(
            f"{r['faces']:>5} {r['core_ms']:>9.3f} {r['core_1thread_ms']:>9.3f} "
            f"{r['opencv_ms']:>10.3f} {r['speedup']:>7.2f}x {r['speedup_1thread']:>7.2f}x "
            f"{r['core_max_abs_diff']:>10.2e} {r['opencv_max_abs_diff']:>9.2e}"
        )
    print(f"(diffs are max |x - exact reference| of normalised values; 1 grey level = {SCALE:.4f})")
    if args.json:
        report = {
            "benchmark": "preprocess",
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "opencv": cv2.__version__,
            "backends": backends(),
            "quick": args.quick,
            "results": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
