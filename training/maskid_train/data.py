"""Chip dataset and caches for training: identity folders -> aligned 150x150 chips.

Chips are made with maskid's own pipeline (MTCNN `MtcnnDetector` -> `align.chip_transform` ->
`chip.extract_chip`), so training sees exactly what the runtime feeds the embedder. Tight crops
(glint23's 112x112 ArcFace crops, m2fred) are padded 50% with replicated edges before detection.
Images without a face are skipped and counted.

Cache layout (``--cache`` dir, never in the repository):

    <set>/shards/NNNN.npz   chips uint8 (n,150,150,3), landmarks (n,5,2) in chip pixels, index
                            into the item list; one per `SHARD` items; a ``.lock`` file marks a
                            shard being made, so several processes can fill one cache at once
    <set>/chips.npy         all chips (N,150,150,3) uint8, assembled from the shards
    <set>/meta.npz          labels (N,), names, paths, landmarks (N,5,2), n_images, n_no_face
    <set>/masked_k{K}.npy   uint8 memmap (N,K,150,150,3) of synthetic masked variants
    <set>/teacher.npy       (N,128) float32 dlib descriptors of the unmasked chips
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHIP = 150
SHARD = 256
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
TIGHT_CROP_SETS = {"glint23", "m2fred"}  # tight crops: detectors need context around the face


@dataclass(frozen=True)
class Item:
    path: str
    identity: str  # "<set>/<folder>" so identities of different sets never merge
    pad: float  # border added on each side before detection, as a fraction of the image side


def training_items(root: Path, sets: Iterable[str] = ("glint23", "celeba")) -> list[Item]:
    """Every image of root/<set>/<identity>/, in a fixed order."""
    items = []
    for s in sets:
        base = root / s
        if not base.is_dir():
            raise FileNotFoundError(f"{base}: training set folder not found")
        pad = 0.5 if s in TIGHT_CROP_SETS else 0.0
        for person in sorted(p for p in base.iterdir() if p.is_dir()):
            for f in sorted(person.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    items.append(Item(str(f), f"{s}/{person.name}", pad))
    return items


def pad_edges(image: np.ndarray, frac: float) -> tuple[np.ndarray, int]:
    if frac <= 0:
        return image, 0
    p = round(frac * max(image.shape[:2]))
    return np.pad(image, ((p, p), (p, p), (0, 0)), mode="edge"), p


class ChipMaker:
    """image path -> (chip, landmarks in chip pixels) or None when no face is found."""

    def __init__(self, threads: int = 1) -> None:
        from maskid.detection.mtcnn import MtcnnDetector

        self.detector = MtcnnDetector(threads=threads)

    def __call__(self, path: str, pad: float) -> tuple[np.ndarray, np.ndarray] | None:
        from maskid.io.images import load_image

        return self.from_image(load_image(path), pad)

    def from_image(self, image: np.ndarray, pad: float) -> tuple[np.ndarray, np.ndarray] | None:
        from maskid.alignment.dlib_chip import extract_chip
        from maskid.alignment.similarity import chip_transform

        padded, _ = pad_edges(image, pad)
        faces = self.detector.detect(padded)
        if not faces:
            return None
        lm = faces[0].landmarks
        m = chip_transform(lm)
        chip = extract_chip(padded, m, CHIP)
        return chip, image_to_chip(m, lm).astype(np.float32)


def image_to_chip(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map image points through the inverse of M (chip (col,row,1) -> image (x,y))."""
    a, t = m[:, :2], m[:, 2]
    return (np.asarray(pts, np.float64) - t) @ np.linalg.inv(a).T


def _try_lock(path: Path, stale_s: float = 1800.0) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if time.time() - path.stat().st_mtime > stale_s:  # a crashed maker's lock
            path.unlink(missing_ok=True)
            return _try_lock(path, stale_s)
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)


def make_chip_shards(
    items: list[Item],
    out: Path,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    threads: int = 1,
) -> None:
    """Fill out/shards/ (resumable: finished shards are kept; parallel-safe via lock files)."""
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = (len(items) + SHARD - 1) // SHARD
    maker: ChipMaker | None = None
    todo = [s for s in range(n_shards) if not (shard_dir / f"{s:04d}.npz").exists()]
    for s in progress(todo) if progress else todo:
        final, lock = shard_dir / f"{s:04d}.npz", shard_dir / f"{s:04d}.lock"
        if final.exists() or not _try_lock(lock):
            continue
        try:
            maker = maker or ChipMaker(threads)
            chips, lms, idx = [], [], []
            for i in range(s * SHARD, min((s + 1) * SHARD, len(items))):
                try:
                    r = maker(items[i].path, items[i].pad)
                except Exception:  # unreadable image: counted as no face
                    r = None
                if r is not None:
                    chips.append(r[0])
                    lms.append(r[1])
                    idx.append(i)
            _save_npz_atomic(
                final,
                chips=np.asarray(chips, np.uint8).reshape(-1, CHIP, CHIP, 3),
                landmarks=np.asarray(lms, np.float32).reshape(-1, 5, 2),
                index=np.asarray(idx, np.int64),
            )
        finally:
            lock.unlink(missing_ok=True)


def assemble(items: list[Item], out: Path) -> dict[str, int]:
    """Merge finished shards into chips.npy + meta.npz; returns counts."""
    shard_dir = out / "shards"
    n_shards = (len(items) + SHARD - 1) // SHARD
    missing = [s for s in range(n_shards) if not (shard_dir / f"{s:04d}.npz").exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} chip shards not made yet (e.g. {missing[:3]})")
    chips, lms, idx = [], [], []
    for s in range(n_shards):
        z = np.load(shard_dir / f"{s:04d}.npz")
        chips.append(z["chips"])
        lms.append(z["landmarks"])
        idx.append(z["index"])
    index = np.concatenate(idx)
    names = sorted({it.identity for it in items})
    lookup = {n: i for i, n in enumerate(names)}
    labels = np.array([lookup[items[i].identity] for i in index], np.int64)
    np.save(out / "chips.npy", np.concatenate(chips))
    counts = {"n_images": len(items), "n_chips": len(index), "n_no_face": len(items) - len(index)}
    np.savez(
        out / "meta.npz",
        labels=labels,
        names=np.array(names),
        paths=np.array([items[i].path for i in index]),
        landmarks=np.concatenate(lms),
        n_images=np.array(counts["n_images"]),
        n_chips=np.array(counts["n_chips"]),
        n_no_face=np.array(counts["n_no_face"]),
    )
    (out / "counts.json").write_text(json.dumps(counts, indent=1))
    return counts


@dataclass
class ChipSet:
    chips: np.ndarray  # (N,150,150,3) uint8 (memmap)
    landmarks: np.ndarray  # (N,5,2) chip pixels
    labels: np.ndarray  # (N,)
    names: np.ndarray  # identity names, labels index these
    paths: np.ndarray

    @classmethod
    def load(cls, out: Path) -> ChipSet:
        meta = np.load(out / "meta.npz")
        return cls(
            np.load(out / "chips.npy", mmap_mode="r"),
            meta["landmarks"],
            meta["labels"],
            meta["names"],
            meta["paths"],
        )

    def __len__(self) -> int:
        return len(self.labels)


def build_chip_cache(
    items: list[Item],
    out: Path,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    threads: int = 1,
) -> ChipSet:
    """Make (or reuse) the chip cache for `items` in `out`."""
    if not (out / "meta.npz").exists():
        make_chip_shards(items, out, progress, threads)
        while list((out / "shards").glob("*.lock")):  # other workers still busy
            time.sleep(2)
        assemble(items, out)
    return ChipSet.load(out)


def teacher_descriptors(
    chips: np.ndarray,
    out_file: Path,
    batch: int = 64,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> np.ndarray:
    """Frozen pretrained dlib net's descriptors of `chips` (cached in out_file)."""
    if out_file.exists():
        t = np.load(out_file)
        if len(t) == len(chips):
            return t
    import torch

    from maskid_train.dlib_torch import load_pretrained

    net = load_pretrained()
    res = np.zeros((len(chips), 128), np.float32)
    starts = range(0, len(chips), batch)
    with torch.inference_mode():
        for s in progress(starts) if progress else starts:
            x = torch.from_numpy(np.ascontiguousarray(chips[s : s + batch])).permute(0, 3, 1, 2)
            res[s : s + batch] = net(x.float()).numpy()
    tmp = out_file.with_suffix(".tmp.npy")
    np.save(tmp, res)
    os.replace(tmp, out_file)
    return res
