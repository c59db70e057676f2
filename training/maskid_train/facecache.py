"""One cache of every face that training and evaluation use: detect once, cut chips per model.

Two steps, both outside the repository (e.g. under /work/cache/):

    PYTHONPATH=training python -m maskid_train.facecache detect --out /work/cache/faces.npz
    PYTHONPATH=training python -m maskid_train.facecache chips --faces /work/cache/faces.npz \\
        --model omz-face-reid-0095 --out /work/cache/chips-omz.npy --masked-copies 2

`detect` runs the product's detection (`maskid.pipeline.recognizer.Recognizer.detect`: tight crops get a
50% edge-replicated border and, where the cascade finds nothing, ONet scores the whole crop) on
every image of train/{glint23,celeba,lfw,rmfd} and eval/m2fred, and keeps the largest face. The
faces file (.npz) holds, per image in a fixed order:

    source, identity, path (relative to the shared data folder), masked (a real mask: rmfd's
    masked_NN.jpg, m2fred's <session>-1-0.png), found, landmarks (5, 2) and box (x1 y1 x2 y2) of
    the largest face in the ORIGINAL image's coordinates (NaN where none was found), score,
    pad (the border the product put around the image before detecting), fallback (the face came
    from ONet scoring the whole crop), n_faces, height, width; plus n_done / complete (the file
    is rewritten atomically every ~1000 images, and a rerun continues from n_done).

`chips` cuts, for every found face, the chip of one model's contract (`maskid.networks.contract`) exactly
as the product does: the image bordered by `pad` (the product cuts chips from the context image
it detected in), `maskid.alignment.similarity.model_chip_transform` of the landmarks there, then
`maskid.alignment.dlib_chip.chip_source` + `maskid.alignment.warp.warp_batch` as `maskid.networks.embedder.Embedder.prepare`.
Chips are stored as uint8 N x S x S x 3 **RGB** in a .npy (open it as a memmap) whatever the
model's colour order and normalisation: the trainer applies those from the contract, which the
index records. With `--masked-copies K` every unmasked image of train/ also gets K synthetic
masked copies: `maskid.pipeline.masks.apply_mask` on the original image at the unmasked landmarks (seeded
by path and copy number, so a rerun gives the same copies), bordered and cut with the unmasked
face's transform. The index (.npz beside the .npy) holds per chip: source, identity, path,
masked (real mask), copy (0 = the photo itself, k >= 1 = synthetic masked copy k), face (row in
the faces file), transform (2x3 chip -> original-image pixels), chip_landmarks (5, 2) and the
contract as JSON metadata.

`load_chips(prefix)` and `split_rows(index, shared_data)` give the trainer the chips and the
rows of each split (`maskid.evaluation.splits`: the dev identities of rmfd and lfw are never train rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SOURCES = ("train/glint23", "train/celeba", "train/lfw", "train/rmfd", "eval/m2fred")
TRAIN_SOURCES = ("glint23", "celeba", "lfw", "rmfd")
CHECKPOINT_EVERY = 1000
FACES_VERSION = 1

# Contracts of the pretrained backbones we fine-tune, as their ONNX files will carry them; used
# only when the named model is not available as an ONNX (`chips --model NAME`): see `_contract`.
_ARCFACE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)
KNOWN_CONTRACTS: dict[str, dict[str, Any]] = {
    "omz-face-reid-0095": dict(
        input_size=128,
        chip_geometry="similarity",
        chip_template=(
            (0.31556875, 0.46157411),
            (0.68262292, 0.46157411),
            (0.50026250, 0.64050536),
            (0.34947188, 0.82469196),
            (0.65343646, 0.82469196),
        ),
        landmark_weights=(1.0, 1.0, 1.0, 1.0, 1.0),
        color_order="BGR",
        mean=(0.0, 0.0, 0.0),
        scale=1.0,
        descriptor_dim=256,
    ),
    "edgeface-xs": dict(
        input_size=112,
        chip_geometry="similarity",
        chip_template=tuple((x / 112.0, y / 112.0) for x, y in _ARCFACE_112),
        landmark_weights=(1.0, 1.0, 1.0, 1.0, 1.0),
        color_order="RGB",
        mean=(127.5, 127.5, 127.5),
        scale=1.0 / 127.5,
        descriptor_dim=512,
    ),
}


# ------------------------------------------------------------------------------- items


def _is_masked(source: str, rel: Path) -> bool:
    if source == "rmfd":
        return rel.name.startswith("masked_")
    if source == "m2fred":
        parts = rel.stem.split("-")
        return len(parts) >= 2 and parts[1] == "1"
    return False


def list_items(
    shared_data: Path, sources: Sequence[str] = SOURCES, limit: int | None = None
) -> dict[str, np.ndarray]:
    """Every image of the given `<train|eval>/<source>` folders, in a fixed (sorted) order
    (the first `limit` of each folder when given)."""
    from maskid.io.images import IMAGE_SUFFIXES

    src, ident, paths, masked = [], [], [], []
    for folder in sources:
        base = shared_data / folder
        if not base.is_dir():
            raise FileNotFoundError(f"{base}: not found")
        name = Path(folder).name
        taken = 0
        for person in sorted(p for p in base.iterdir() if p.is_dir()):
            for f in sorted(person.iterdir()):
                if limit is not None and taken >= limit:
                    break
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    taken += 1
                    rel = f.relative_to(shared_data)
                    src.append(name)
                    ident.append(person.name)
                    paths.append(str(rel))
                    masked.append(_is_masked(name, rel))
    return {
        "source": np.array(src),
        "identity": np.array(ident),
        "path": np.array(paths),
        "masked": np.array(masked, dtype=bool),
    }


def _atomic_savez(path: Path, arrays: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ------------------------------------------------------------------------------- detect


def _empty_results(n: int) -> dict[str, np.ndarray]:
    return {
        "found": np.zeros(n, bool),
        "landmarks": np.full((n, 5, 2), np.nan),
        "box": np.full((n, 4), np.nan),
        "score": np.full(n, np.nan, np.float32),
        "pad": np.zeros(n, np.int32),
        "fallback": np.zeros(n, bool),
        "n_faces": np.zeros(n, np.int16),
        "height": np.zeros(n, np.int32),
        "width": np.zeros(n, np.int32),
        "readable": np.ones(n, bool),
    }


class _Detection:
    """The product's photo detection policy (`Recognizer.find_faces`) with MTCNN, noting when
    the face came from the whole-crop ONet fallback (`MtcnnDetector.score_boxes`).

    MTCNN is pinned, not the product's current default detector: the shipped `maskid-eyes-v2`
    was trained on chips aligned from MTCNN's landmarks, and `reproduce_eyes_v2.sh` must keep
    rebuilding that file exactly."""

    def __init__(self, threads: int = 1) -> None:
        from maskid.detection.mtcnn import MtcnnDetector
        from maskid.pipeline.recognizer import Recognizer

        outer = self

        class _Noting(MtcnnDetector):
            def score_boxes(self, image_rgb: np.ndarray, boxes: np.ndarray) -> list[Any]:
                faces = super().score_boxes(image_rgb, boxes)
                outer.used_fallback = bool(faces)
                return faces

        self.used_fallback = False
        self.rec = Recognizer(None, threads=threads, detector=_Noting(threads=threads))

    def __call__(self, image: np.ndarray) -> tuple[list[Any], int, bool]:
        self.used_fallback = False
        found = self.rec.find_faces(image)
        faces, pad = found.faces, found.border
        return faces, int(pad), self.used_fallback and bool(faces)


def detect_all(
    shared_data: Path,
    out: Path,
    sources: Sequence[str] = SOURCES,
    limit: int | None = None,
    threads: int = 1,
    checkpoint_every: int = CHECKPOINT_EVERY,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Detect the largest face of every image; resumable (see the module docstring)."""
    from tqdm import tqdm

    from maskid.errors import ImageError
    from maskid.io.images import load_image

    items = list_items(shared_data, sources, limit)
    n = len(items["path"])
    res = _empty_results(n)
    done, elapsed = 0, 0.0
    if out.exists():
        old = _load_npz(out)
        if int(old.get("version", 0)) == FACES_VERSION and np.array_equal(
            old["path"], items["path"]
        ):
            done = int(old["n_done"])
            elapsed = float(old["seconds"])
            for k in res:
                res[k][:done] = old[k][:done]
            print(f"{out}: resuming at {done}/{n}", file=sys.stderr)
        else:
            print(f"{out}: a different item list; starting over", file=sys.stderr)

    def save(k: int, seconds: float) -> None:
        _atomic_savez(
            out,
            {
                **items,
                **res,
                "n_done": np.int64(k),
                "complete": np.bool_(k == n),
                "seconds": np.float64(seconds),
                "version": np.int64(FACES_VERSION),
                "shared_data": np.array(str(shared_data)),
            },
        )

    if done < n:
        detection = _Detection(threads)
        start = time.perf_counter() - elapsed
        bar = tqdm(total=n, initial=done, desc="detect", unit="img", disable=not progress)
        for i in range(done, n):
            try:
                image = load_image(shared_data / str(items["path"][i]))
            except ImageError as e:
                print(f"unreadable: {e}", file=sys.stderr)
                res["readable"][i] = False
                bar.update()
                continue
            res["height"][i], res["width"][i] = image.shape[:2]
            faces, pad, fallback = detection(image)
            res["pad"][i] = pad
            res["n_faces"][i] = len(faces)
            if faces:
                f = faces[0]  # largest first
                res["found"][i] = True
                res["landmarks"][i] = np.asarray(f.landmarks, np.float64) - pad
                res["box"][i] = np.asarray(f.box, np.float64) - pad
                res["score"][i] = f.score
                res["fallback"][i] = fallback
            bar.update()
            if (i + 1) % checkpoint_every == 0 and i + 1 < n:
                save(i + 1, time.perf_counter() - start)
        bar.close()
        save(n, time.perf_counter() - start)
    return _load_npz(out)


def found_rates(faces: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per source and masked/unmasked: images, found, found rate, whole-crop fallbacks."""
    rows = []
    for s in dict.fromkeys(faces["source"].tolist()):
        for m in (False, True):
            sel = (faces["source"] == s) & (faces["masked"] == m)
            if not sel.any():
                continue
            rows.append(
                {
                    "source": s,
                    "masked": m,
                    "images": int(sel.sum()),
                    "found": int(faces["found"][sel].sum()),
                    "rate": float(faces["found"][sel].mean()),
                    "fallback": int(faces["fallback"][sel].sum()),
                }
            )
    return rows


# ------------------------------------------------------------------------------- chips


def contract_for(model: str) -> tuple[Any, str]:
    """(ModelContract, where it came from) for a registry name or an .onnx path; a name in
    `KNOWN_CONTRACTS` whose ONNX is not available falls back to the contract written here."""
    from maskid.errors import ModelError
    from maskid.networks.contract import ModelContract
    from maskid.networks.registry import available_models, model_path

    path: Path | None = None
    if model.lower().endswith(".onnx") or Path(model).is_file():
        path = Path(model)
    elif model in available_models():
        path = model_path(model)
    if path is None or not path.is_file():
        if model in KNOWN_CONTRACTS:
            c = ModelContract(name=model, **KNOWN_CONTRACTS[model])
            return c, "hand-written (maskid_train.facecache.KNOWN_CONTRACTS)"
        raise ModelError(f"{model}: no such model or ONNX file")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    return ModelContract.from_metadata(meta, fallback_name=path.stem), str(path)


def context_image(image: np.ndarray, pad: int) -> np.ndarray:
    """The image the product detects in and cuts chips from (`Recognizer.detect`)."""
    import cv2

    if pad <= 0:
        return image
    return cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)


def cut_chip(context: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """uint8 S x S x 3 RGB chip, sampled exactly as `Embedder.prepare` does."""
    from maskid.alignment.dlib_chip import chip_source
    from maskid.alignment.warp import warp_batch

    batch = np.zeros((1, 3, size, size), np.float32)
    source, m_source = chip_source(context, m, size)
    if source.shape[0] >= 2 and source.shape[1] >= 2:
        warp_batch(source, m_source[None], size=size, out=batch, threads=1)
    # warp_batch truncates to uint8 before (v - 0) * 1: the floats are whole numbers 0..255.
    return batch[0].transpose(1, 2, 0).astype(np.uint8)


def model_input(chips: np.ndarray, contract: Any) -> np.ndarray:
    """uint8 N x S x S x 3 RGB chips -> the model's float32 N x 3 x S x S input: the contract's
    colour order, then (v - mean) * scale, as `Embedder.prepare` writes it."""
    return np.asarray(contract.input_batch(chips))


def copy_seed(path: str, k: int) -> int:
    """Seed of synthetic masked copy k of the photo at `path` (stable across runs/machines)."""
    digest = hashlib.sha256(f"{path}#mask{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _index_path(out: Path) -> Path:
    return out.with_suffix(".npz")


def make_chips(
    faces: dict[str, np.ndarray],
    shared_data: Path,
    contract: Any,
    out: Path,
    masked_copies: int = 0,
    contract_source: str = "",
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Write `out` (.npy, uint8 N x S x S x 3 RGB) and its index `out.with_suffix('.npz')`."""
    from tqdm import tqdm

    from maskid.alignment.similarity import model_chip_transform
    from maskid.io.images import load_image
    from maskid.pipeline.masks import apply_mask

    if not bool(faces.get("complete", True)):
        raise ValueError("the faces file is incomplete: finish `detect` first")
    size = int(contract.input_size)
    rows = np.flatnonzero(faces["found"])
    copies = np.where(
        np.isin(faces["source"][rows], TRAIN_SOURCES) & ~faces["masked"][rows], masked_copies, 0
    )
    n = int(len(rows) + copies.sum())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npy")
    chips = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
    face_row = np.zeros(n, np.int64)
    copy = np.zeros(n, np.int16)
    transform = np.zeros((n, 2, 3))
    chip_lm = np.zeros((n, 5, 2), np.float32)
    j = 0
    start = time.perf_counter()
    for r, k_max in tqdm(
        zip(rows, copies, strict=True), total=len(rows), desc="chips", disable=not progress
    ):
        path = str(faces["path"][r])
        image = load_image(shared_data / path)
        pad = int(faces["pad"][r])
        lm = faces["landmarks"][r]
        m = model_chip_transform(lm + pad, contract)  # in the context image, as the product
        m_orig = m - np.array([[0, 0, pad], [0, 0, pad]], np.float64)
        a, t = m[:, :2], m[:, 2]
        lm_chip = (lm + pad - t) @ np.linalg.inv(a).T
        for k in range(int(k_max) + 1):
            if k == 0:
                src = image
            else:
                rng = np.random.default_rng(copy_seed(path, k))
                src = apply_mask(image, lm, rng=rng)
            chips[j] = cut_chip(context_image(src, pad), m, size)
            face_row[j], copy[j], transform[j], chip_lm[j] = r, k, m_orig, lm_chip
            j += 1
    assert j == n
    chips.flush()
    del chips
    os.replace(tmp, out)
    index = {
        "source": faces["source"][face_row],
        "identity": faces["identity"][face_row],
        "path": faces["path"][face_row],
        "masked": faces["masked"][face_row],
        "copy": copy,
        "face": face_row,
        "transform": transform,
        "chip_landmarks": chip_lm,
        "score": faces["score"][face_row],
        "fallback": faces["fallback"][face_row],
        "contract": np.array(json.dumps(contract.to_metadata(), sort_keys=True)),
        "contract_source": np.array(contract_source),
        "masked_copies": np.int64(masked_copies),
        "seconds": np.float64(time.perf_counter() - start),
        "chips_file": np.array(out.name),
    }
    _atomic_savez(_index_path(out), index)
    return index


# ------------------------------------------------------------------------------- loading


def load_chips(prefix: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(chips, index) for `prefix` (".../chips-omz", with or without .npy/.npz): chips is a
    read-only uint8 N x S x S x 3 RGB memmap; index as written by `make_chips`, plus "label"
    ("<source>/<identity>", identities of different sources never merge) and "contract" parsed
    into a `maskid.networks.contract.ModelContract`."""
    from maskid.networks.contract import ModelContract

    p = Path(prefix)
    if p.suffix in (".npy", ".npz"):
        p = p.with_suffix("")
    chips = np.load(p.with_suffix(".npy"), mmap_mode="r")
    index: dict[str, Any] = _load_npz(p.with_suffix(".npz"))
    if len(index["path"]) != len(chips):
        raise ValueError(f"{p}: index and chips disagree ({len(index['path'])} vs {len(chips)})")
    index["label"] = np.char.add(np.char.add(index["source"].astype(str), "/"), index["identity"])
    index["contract"] = ModelContract.from_metadata(json.loads(str(index["contract"])))
    return chips, index


def split_rows(
    index: dict[str, np.ndarray], shared_data: Path, synthetic_eval: bool = False
) -> dict[str, np.ndarray]:
    """Row indices per split (`maskid.evaluation.splits`): "train" (every copy of the faces of
    `training_identities`), "rmfd-dev", "lfw-dev", "m2fred-dev", "m2fred-test". The evaluation
    splits hold only the photos themselves (copy 0) unless `synthetic_eval`."""
    from maskid.evaluation.splits import (
        identity_dirs,
        lfw_dev,
        m2fred_halves,
        rmfd_dev,
        training_identities,
    )

    source, identity = index["source"], index["identity"]
    real = index["copy"] == 0 if not synthetic_eval else np.ones(len(source), bool)

    def rows(src: str, ids: Sequence[str], only_real: bool = True) -> np.ndarray:
        sel = (source == src) & np.isin(identity, list(ids))
        return np.flatnonzero(sel & real if only_real else sel)

    allowed = training_identities(shared_data)
    train = np.sort(np.concatenate([rows(s, allowed[s], False) for s in TRAIN_SOURCES]))
    halves = m2fred_halves(identity_dirs(shared_data / "eval" / "m2fred"))
    return {
        "train": train,
        "rmfd-dev": rows("rmfd", rmfd_dev(identity_dirs(shared_data / "train" / "rmfd"))),
        "lfw-dev": rows("lfw", lfw_dev(identity_dirs(shared_data / "train" / "lfw"))),
        "m2fred-dev": rows("m2fred", halves["dev"]),
        "m2fred-test": rows("m2fred", halves["test"]),
    }


# ------------------------------------------------------------------------------- CLI


def _shared(arg: str | None) -> Path:
    from maskid.paths import shared_data_dir

    path = Path(arg) if arg else shared_data_dir()
    if path is None or not path.is_dir():
        raise SystemExit("shared data folder not found: pass --shared-data")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m maskid_train.facecache", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("detect", help="detect the largest face of every image (resumable)")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--shared-data", default=None, help="default: ../shared/data")
    d.add_argument("--sources", nargs="+", default=list(SOURCES))
    d.add_argument("--limit", type=int, default=None, help="first N images of each source (tests)")
    d.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("chips", help="cut every found face's chip for one model's contract")
    c.add_argument("--faces", type=Path, required=True)
    c.add_argument("--model", required=True, help="registry name or .onnx path")
    c.add_argument("--out", type=Path, required=True, help=".npy (the index goes beside: .npz)")
    c.add_argument("--masked-copies", type=int, default=0)
    c.add_argument("--shared-data", default=None, help="default: the faces file's")
    a = ap.parse_args(argv)

    if a.cmd == "detect":
        t0 = time.perf_counter()
        faces = detect_all(_shared(a.shared_data), a.out, a.sources, a.limit, a.threads)
        print(
            f"{a.out}: {len(faces['path'])} images, {faces['found'].sum()} faces; "
            f"{float(faces['seconds']):.0f} s detecting in all "
            f"({time.perf_counter() - t0:.0f} s this run)"
        )
        for r in found_rates(faces):
            kind = "masked" if r["masked"] else "unmasked"
            print(
                f"  {r['source']:8s} {kind:8s} {r['found']:5d}/{r['images']:5d} "
                f"= {r['rate']:.3f}  (whole-crop fallback {r['fallback']})"
            )
        return 0

    faces = _load_npz(a.faces)
    shared = _shared(a.shared_data or str(faces["shared_data"]))
    contract, origin = contract_for(a.model)
    print(f"contract {contract.name} from {origin}: {contract.to_metadata()}", file=sys.stderr)
    index = make_chips(faces, shared, contract, a.out, a.masked_copies, origin)
    chips, index = load_chips(a.out)
    splits = split_rows(index, shared)
    print(
        f"{a.out}: {chips.shape} uint8 RGB, {a.out.stat().st_size / 2**30:.2f} GiB, "
        f"{float(index['seconds']):.0f} s; rows: "
        + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
