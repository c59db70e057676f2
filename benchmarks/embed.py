"""Batched embedding throughput through `maskid.engine.Engine` (faces/s vs batch size).

Feeds real face chips (cut from the LFW demo photos with the C++ core) to the default embedder
(`maskid.models.DEFAULT_MODEL`; `--model dlib-resnet-v1` for the dlib port, or any .onnx or
TensorRT .engine file), on ONNX Runtime's CPU provider unless --providers says otherwise.

    python benchmarks/embed.py [--quick] [--json PATH] [--batches 1,4,16,32] [--threads 1]

`--model maskid-eyes-v1-flip` measures the flip-averaged variant (twice the network passes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from maskid.engine import Engine
from maskid.paths import shared_data_dir
from maskid.preprocess import warp_batch


def real_chips(n: int, size: int) -> np.ndarray:
    """n chips from different LFW photos (a centred face transform), float32 NCHW RGB 0..255."""
    data = shared_data_dir()
    if data is None:
        sys.exit("benchmarks/embed.py: ../shared/data is not present")
    photos = sorted((data / "demo" / "lfw10").rglob("*.jpg"))
    if not photos:
        sys.exit("benchmarks/embed.py: no photos under shared/data/demo/lfw10")
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        img = cv2.imread(str(photos[i % len(photos)]), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        s = 110 / size
        m = np.array([[s, 0, w / 2 - s * size / 2], [0, s, h / 2 - s * size / 2]])
        warp_batch(img, m, size=size, bgr=True, out=out[i : i + 1])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", help="a model name, .onnx or .engine file (default: the default embedder)"
    )
    ap.add_argument("--providers", help="comma-separated ONNX Runtime providers")
    ap.add_argument("--batches", default="1,4,16,32", help="comma-separated batch sizes")
    ap.add_argument("--quick", action="store_true", help="fewer faces per batch size")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all)")
    args = ap.parse_args(argv)

    from maskid.models import DEFAULT_MODEL, available_models, model_path

    name = args.model or DEFAULT_MODEL
    path = model_path(name) if name in available_models() else Path(name)
    providers = args.providers.split(",") if args.providers else None
    batches = [int(b) for b in args.batches.split(",")]
    total = 32 if args.quick else 128

    probe = Engine.open(path, providers=providers, threads=args.threads)
    c, h, w = probe.input_shape
    chips = real_chips(total, h)
    rows = []
    for b in tqdm(batches, desc="batch sizes", unit="size"):
        engine = Engine.open(path, providers=providers, batch_max=b, threads=args.threads)
        engine.run(chips[:b])  # warm-up (allocations, kernel selection)
        t0 = time.perf_counter()
        emb = engine.run(chips)
        dt = time.perf_counter() - t0
        rows.append(
            {
                "batch": b,
                "faces": total,
                "seconds": dt,
                "faces_per_s": total / dt,
                "ms_per_face": dt / total * 1e3,
                "output_dim": int(np.prod(emb.shape[1:])),
            }
        )
    print(f"\n{path.name} on {probe.backend} {getattr(probe, 'providers', '')}, input {c}x{h}x{w}")
    print(f"{'batch':>5} {'faces/s':>9} {'ms/face':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['faces_per_s']:>9.1f} {r['ms_per_face']:>8.2f}")
    if args.json:
        report = {
            "benchmark": "embed",
            "model": path.name,
            "backend": probe.backend,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "threads": args.threads,
            "quick": args.quick,
            "results": rows,
        }
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
