"""Synthetic masks on chips (precomputed pool) and cheap on-the-fly photometric jitter.

Mask synthesis (maskid.pipeline.masks: template warp + shading) costs milliseconds per chip, so a pool of
K masked variants per chip is made once into a uint8 memmap (N,K,150,150,3); training steps only
index it. Each chip's K variants use K different styles (drawn without replacement from
`available_styles()`), random colours/textures and placement jitter, seeded per chip: the pool
is reproducible whatever order or process made it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .data import SHARD, _try_lock

# Relative draw weights: the procedural surgical/N95 masks cost 100-200 ms each on a 150 px chip
# (vs ~10 ms for a template), so they are drawn less often to keep the pool build short.
STYLE_WEIGHT = {"poly_surgical": 0.3, "poly_n95": 0.2}


def masked_variants(
    chip: np.ndarray, landmarks: np.ndarray, k: int, seed: int, max_jitter: float = 0.08
) -> np.ndarray:
    """(k,150,150,3) uint8: `chip` with k different synthetic masks (deterministic in seed)."""
    from maskid.pipeline.masks import apply_mask, available_styles

    rng = np.random.default_rng(seed)
    styles = available_styles()
    w = np.array([STYLE_WEIGHT.get(s, 1.0) for s in styles])
    order = rng.choice(len(styles), size=min(k, len(styles)), replace=False, p=w / w.sum())
    out = np.empty((k, *chip.shape), np.uint8)
    for j in range(k):
        style = styles[order[j % len(order)]]
        out[j] = apply_mask(
            chip, landmarks, rng=rng, style=style, jitter=float(rng.uniform(0.0, max_jitter))
        )
    return out


def build_mask_pool(
    chips: np.ndarray,
    landmarks: np.ndarray,
    out_file: Path,
    k: int = 3,
    seed: int = 0,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> np.ndarray:
    """Fill (or reuse) the memmap pool; resumable and parallel-safe per shard of chips."""
    n = len(chips)
    done_dir = out_file.with_suffix(".done")
    done_dir.mkdir(parents=True, exist_ok=True)
    shape = (n, k, *chips.shape[1:])
    if _try_lock(out_file.with_suffix(".create.lock"), stale_s=1e9) and not out_file.exists():
        tmp = out_file.with_suffix(".tmp.npy")
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
        os.replace(tmp, out_file)
    while not out_file.exists():  # another process is creating it
        import time

        time.sleep(0.5)
    pool = np.lib.format.open_memmap(out_file, mode="r+")
    if pool.shape != shape:
        raise RuntimeError(f"{out_file}: shape {pool.shape}, expected {shape}; delete it")
    n_shards = (n + SHARD - 1) // SHARD
    todo = [s for s in range(n_shards) if not (done_dir / f"{s:04d}").exists()]
    for s in progress(todo) if progress else todo:
        lock = done_dir / f"{s:04d}.lock"
        if (done_dir / f"{s:04d}").exists() or not _try_lock(lock):
            continue
        try:
            for i in range(s * SHARD, min((s + 1) * SHARD, n)):
                pool[i] = masked_variants(chips[i], landmarks[i], k, seed * 1_000_003 + i)
            pool.flush()
            (done_dir / f"{s:04d}").touch()
        finally:
            lock.unlink(missing_ok=True)
    missing = [s for s in range(n_shards) if not (done_dir / f"{s:04d}").exists()]
    if missing:
        raise RuntimeError(f"mask pool: {len(missing)} shards still being made by another process")
    return np.load(out_file, mmap_mode="r")


def photometric(x, rng_torch):
    """Per-sample gain/offset jitter on N x 3 x H x W float 0..255 (torch), clamped."""
    import torch

    n = x.shape[0]
    gain = 1.0 + (torch.rand(n, 1, 1, 1, generator=rng_torch) - 0.5) * 0.3
    bias = (torch.rand(n, 1, 1, 1, generator=rng_torch) - 0.5) * 30.0
    return (x * gain + bias).clamp_(0.0, 255.0)
