"""Enrollment cost per photo of the synthetically masked copies, and how often a copy's
re-detection (`recognizer.COPY_REDETECT`) falls back to the unmasked photo's chip (issue 5).

Times `Recognizer.enrollment_vectors` (the copies only: detection/embedding of the photo itself
is done once beforehand) on M2FRED's unmasked photos and lfw10's first photos, one thread.

    OMP_NUM_THREADS=1 python training/enroll_cost.py [--n 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from maskid.errors import MaskidError
from maskid.networks.registry import sha256_file
from maskid.paths import shared_data_dir
from maskid.pipeline import recognizer as recmod
from maskid.pipeline.masks import apply_mask
from maskid.pipeline.recognizer import Recognizer, identity_images

SETTINGS = {
    "fitted placement, unmasked photo's chip": (0.0, 0.0, False),
    "fitted placement, re-detected (A)": (0.0, 0.0, True),
    "raise 0.15 (B)": (0.15, 0.0, False),
    "raise 0.15, re-detected (A+B)": (0.15, 0.0, True),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60, help="photos per dataset")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    data = shared_data_dir()
    if data is None:
        print("enroll_cost: ../shared/data not found", file=sys.stderr)
        return 2
    rec = Recognizer(None, threads=1)
    photos = {
        "m2fred": [p for _, p in identity_images(data / "eval" / "m2fred", "*-0-0.png")][: args.n],
        "lfw10": [p for _, p in identity_images(data / "demo" / "lfw10", "*_0001.jpg")],
    }
    report: dict[str, dict[str, object]] = {}
    for ds, paths in photos.items():
        faces = []
        for p in paths:
            try:
                face, context = rec.enroll_face(rec.load(p))
            except MaskidError:  # a photo without a face is skipped, as enrollment does
                continue
            faces.append((context, face, int(sha256_file(p)[:8], 16)))
        rec.enrollment_vectors(*faces[0])  # warm up
        for name, (raise_top, widen, redetect) in SETTINGS.items():
            recmod.COPY_RAISE_TOP, recmod.COPY_WIDEN, recmod.COPY_REDETECT = (
                raise_top, widen, redetect,
            )  # fmt: skip
            t0 = time.perf_counter()
            for context, face, seed in faces:
                rec.enrollment_vectors(context, face, seed)
            ms = 1000 * (time.perf_counter() - t0) / len(faces)
            # fallbacks: copies whose re-detection found no overlapping face
            fallback = total = 0
            if redetect:
                for context, face, seed in faces:
                    rng = np.random.default_rng(seed)
                    for _ in range(rec.mask_copies):
                        m = apply_mask(context, face.landmarks, rng=rng, raise_top=raise_top)
                        t = rec.copy_transform(m, face)
                        fallback += bool(np.array_equal(t, face.chip_transform))
                        total += 1
            report.setdefault(ds, {})[name] = {
                "photos": len(faces),
                "copies": rec.mask_copies,
                "ms_per_photo": ms,
                "fallback_fraction": fallback / total if total else None,
            }
            print(f"{ds:<7} {name:<42} {ms:6.1f} ms/photo"
                  + (f"  fallback {fallback}/{total}" if total else ""))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
