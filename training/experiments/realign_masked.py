"""Re-align the mask pool's masked training chips the way a real masked probe is aligned (issue 5).

The mask pool (`maskid_train.augment`, `<cache>/train/masked_k2.npy`) draws synthetic masks on
each 150x150 training chip with the chip's own (unmasked) landmarks, so a masked view keeps the
unmasked face's alignment. A real masked probe is aligned from the landmarks MTCNN finds on the
masked face (nose and mouth guessed under the mask, box shifted), which moves the descriptor
further. This script makes "realigned masked views", as `Recognizer.copy_transform` does for the
enrolled copies: for every chip it pads the unmasked chip 50% with replicated edges (as a tight
crop is padded before detection) and detects the reference face (the detection whose landmarks
are nearest the cached chip landmarks); then for each masked variant it detects on the padded
masked chip, takes the detection whose box overlaps the reference box most (IoU >= 0.4) and
re-warps the padded masked chip with `align.chip_transform` of that detection's landmarks
(`chip.extract_chip`, 150 px). A variant with no such detection (or a chip whose unmasked copy
gives none) keeps the chip-level masked view.

    OMP_NUM_THREADS=1 PYTHONPATH=training python training/experiments/realign_masked.py \\
        --cache /work/cache/chips --workers 2

Writes `<cache>/train/masked_k2_realigned.npy` (same shape as the pool) and
`masked_k2_realigned.npz` (per variant: realigned flag, IoU, mean landmark shift in chip px).
Resumable per shard of 256 chips; `maskid_train.periocular --realigned replace|mix` trains on it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

MIN_IOU = 0.4  # maskid.pipeline.recognizer.COPY_MIN_IOU
PAD = 0.5  # data.TIGHT_CROP_SETS padding: the chip is a tight crop
SHARD = 256


def _work(args: tuple[str, int, int]) -> int:
    cache, worker, workers = args
    import cv2

    cv2.setNumThreads(1)
    from maskid.alignment.dlib_chip import extract_chip
    from maskid.alignment.similarity import chip_transform
    from maskid.detection.mtcnn import MtcnnDetector
    from maskid.face import iou
    from maskid_train.data import CHIP, pad_edges

    train = Path(cache) / "train"
    chips = np.load(train / "chips.npy", mmap_mode="r")
    pool = np.load(train / "masked_k2.npy", mmap_mode="r")
    lms = np.load(train / "meta.npz")["landmarks"]
    out = np.load(train / "masked_k2_realigned.npy", mmap_mode="r+")
    done = train / "masked_k2_realigned.done"
    det = MtcnnDetector(threads=1)
    n, k = pool.shape[:2]
    made = 0
    for s in range(worker, (n + SHARD - 1) // SHARD, workers):
        if (done / f"{s:04d}.npz").exists():
            continue
        lo, hi = s * SHARD, min((s + 1) * SHARD, n)
        flag = np.zeros((hi - lo, k), bool)
        ious = np.zeros((hi - lo, k), np.float32)
        shift = np.full((hi - lo, k), np.nan, np.float32)
        ref_found = np.zeros(hi - lo, bool)
        for i in range(lo, hi):
            padded, p = pad_edges(np.asarray(chips[i]), PAD)
            faces = det.detect(padded)
            out[i] = pool[i]  # default: the chip-level view
            if not faces:
                continue
            known = lms[i] + p
            ref = min(faces, key=lambda f: float(np.abs(f.landmarks - known).mean()))
            ref_found[i - lo] = True
            for j in range(k):
                mp_, _ = pad_edges(np.asarray(pool[i, j]), PAD)
                best, best_iou = None, MIN_IOU
                for f in det.detect(mp_):
                    o = float(iou(f.box, ref.box)[0, 0])
                    if o >= best_iou:
                        best, best_iou = f, o
                if best is None:
                    continue
                m = chip_transform(best.landmarks)
                out[i, j] = extract_chip(mp_, m, CHIP)
                flag[i - lo, j] = True
                ious[i - lo, j] = best_iou
                shift[i - lo, j] = float(np.linalg.norm(best.landmarks - known, axis=1).mean())
        out.flush()
        tmp = done / f"{s:04d}.{os.getpid()}.tmp.npz"
        np.savez(tmp, flag=flag, iou=ious, shift=shift, ref_found=ref_found)
        os.replace(tmp, done / f"{s:04d}.npz")
        made += 1
    return made


def measure(train: Path, n: int, flag: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Mean cosine (default fused model) of masked views to their unmasked chip, over n random
    chips x 2 variants: chip-level pool, realigned, and realigned where a face was re-detected."""
    from maskid.networks.embedder import Embedder

    chips = np.load(train / "chips.npy", mmap_mode="r")
    pool = np.load(train / "masked_k2.npy", mmap_mode="r")
    real = np.load(train / "masked_k2_realigned.npy", mmap_mode="r")
    idx = np.sort(np.random.default_rng(seed).choice(len(chips), n, replace=False))
    emb = Embedder(threads=1)

    def vec(x: np.ndarray) -> np.ndarray:
        out = []
        for s in range(0, len(x), 32):
            b = np.ascontiguousarray(x[s : s + 32]).transpose(0, 3, 1, 2).astype(np.float32)
            out.append(emb.embed_batch(b))
        v = np.concatenate(out)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    u = vec(chips[idx])
    res: dict[str, float] = {}
    cos = {}
    for name, arr in (("chip_level", pool), ("realigned", real)):
        cos[name] = np.stack([(u * vec(arr[idx, j])).sum(1) for j in range(pool.shape[1])], 1)
        res[name] = float(cos[name].mean())
    f = flag[idx]
    res["realigned_where_redetected"] = float(cos["realigned"][f].mean())
    res["chip_level_where_redetected"] = float(cos["chip_level"][f].mean())
    res["n_chips"] = float(n)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="chip cache (maskid_train.train)")
    ap.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    ap.add_argument(
        "--measure",
        type=int,
        default=0,
        help="then embed N random chips' unmasked, chip-level masked and realigned masked views "
        "with the default model: mean cosine of each masked view to its unmasked chip",
    )
    args = ap.parse_args(argv)
    train = args.cache / "train"
    pool = np.load(train / "masked_k2.npy", mmap_mode="r")
    target = train / "masked_k2_realigned.npy"
    if not target.exists():
        tmp = train / "masked_k2_realigned.tmp.npy"
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=pool.shape).flush()
        os.replace(tmp, target)
    (train / "masked_k2_realigned.done").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(str(args.cache), w, args.workers) for w in range(args.workers)]
    if args.workers == 1:
        made = [_work(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(args.workers) as p:
            made = p.map(_work, jobs)
    n_shards = (len(pool) + SHARD - 1) // SHARD
    parts = [np.load(train / "masked_k2_realigned.done" / f"{s:04d}.npz") for s in range(n_shards)]
    flag = np.concatenate([z["flag"] for z in parts])
    ious = np.concatenate([z["iou"] for z in parts])
    shift = np.concatenate([z["shift"] for z in parts])
    ref = np.concatenate([z["ref_found"] for z in parts])
    np.savez(train / "masked_k2_realigned.npz", flag=flag, iou=ious, shift=shift, ref_found=ref)
    stats = {
        "chips": len(flag),
        "variants": int(flag.size),
        "reference_face_found": float(ref.mean()),
        "realigned_fraction": float(flag.mean()),
        "mean_iou": float(ious[flag].mean()),
        "mean_landmark_shift_px": float(np.nanmean(shift)),
        "median_landmark_shift_px": float(np.nanmedian(shift)),
        "shards_made_now": int(sum(made)),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if args.measure:
        stats["cos_to_unmasked"] = measure(train, args.measure, flag)
    (train / "masked_k2_realigned.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/: maskid_train
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other experiments
    sys.exit(main())
