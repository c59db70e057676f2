"""Descriptor cache for no-retraining experiments on the shipped fused embedder (issue 5).

Runs the product pipeline once (maskid's detector -> alignment -> chip -> `maskid-eyes-v1`) over
M2FRED and the lfw10 demo set and stores, for every face, the two branch descriptors of the chip
and of its horizontal mirror, plus those of up to `--copies` synthetically masked copies of every
enrollment photo under several copy policies. `training/experiments/heldout.py` then evaluates operating
choices (eye weight, flip averaging, copy count/policy, score aggregation) from the cache, on the
identity-disjoint dev/test halves of M2FRED, without running a network again.

    OMP_NUM_THREADS=1 python training/experiments/embed_cache.py --out /work/cache/eyes_desc.npz

One thread throughout (detector, ONNX Runtime, OpenCV, the C++ warp): ~10 minutes here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from maskid.alignment.dlib_chip import chip_source
from maskid.alignment.warp import warp_batch
from maskid.detection.mtcnn import MtcnnDetector
from maskid.errors import MaskidError
from maskid.face import Face
from maskid.networks.embedder import Embedder
from maskid.networks.registry import EYES_MODEL, sha256_file
from maskid.paths import shared_data_dir
from maskid.pipeline.masks import apply_mask, available_styles
from maskid.pipeline.recognizer import Recognizer, identity_images

# Copy policies: how the k-th synthetic masked copy of an enrollment photo is drawn.
#  random:   the product's default draw before issue 5's coverage/alignment study: one rng
#            seeded by the photo's hash, random style/colour per copy, fitted placement, embedded
#            with the unmasked photo's chip transform; copy k of n is the same for every n.
#  distinct: the styles in a per-photo random order (no style twice before all were used).
#  jitter:   as random, with placement jitter 0.06 inter-ocular distances.
#  redetect: as random, but the copy is aligned from a detection on the masked image, as a real
#            masked probe is (`Recognizer.copy_transform`)  -- variant A.
#  raise<R>[_wide<W>]: as random, the mask worn higher/wider (`apply_mask(raise_top=R/100,
#            widen=W/100)`)  -- variant B; `redetect_raise...`: A + B.
# Every policy draws the same styles/colours for a photo (same seed, same draws), so they pair.
POLICIES = ("random", "distinct", "jitter")
PLACEMENTS = {"raise15": (0.15, 0.0), "raise30": (0.30, 0.0), "raise15_wide10": (0.15, 0.10),
              "raise30_wide10": (0.30, 0.10), "wide10": (0.0, 0.10)}  # fmt: skip
ALL_POLICIES = (
    *POLICIES,
    "redetect",
    *PLACEMENTS,
    *(f"redetect_{k}" for k in PLACEMENTS),
)


def _branches(emb: Embedder, image: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """(2, 2, 128): [plain, mirrored] x [full branch, periocular branch], each l2-normalised."""
    size = emb.input_size
    batch = np.zeros((2, 3, size, size), np.float32)
    source, m = chip_source(image, transform, size)
    if source.shape[0] >= 2 and source.shape[1] >= 2:
        warp_batch(source, m[None], size=size, out=batch[:1], threads=1)
    batch[1] = batch[0][:, :, ::-1]
    d = emb.embed_batch(batch).reshape(2, 2, -1)
    return (d / np.linalg.norm(d, axis=-1, keepdims=True)).astype(np.float32)


def _copies(
    rec: Recognizer, image: np.ndarray, face: Face, seed: int, n: int, policy: str,
    seconds: dict[str, float] | None = None,
) -> np.ndarray:  # fmt: skip
    emb = rec.embedder
    rng = np.random.default_rng(seed)
    styles = available_styles()
    order = [styles[i] for i in rng.permutation(len(styles))] if policy == "distinct" else []
    redetect = policy.startswith("redetect")
    raise_top, widen = PLACEMENTS.get(policy.removeprefix("redetect_"), (0.0, 0.0))
    assert face.chip_transform is not None
    out = []
    t0 = time.perf_counter()
    for k in range(n):
        if policy == "distinct":
            masked = apply_mask(image, face.landmarks, rng=rng, style=order[k % len(order)])
        else:
            jitter = 0.06 if policy == "jitter" else 0.0
            masked = apply_mask(
                image, face.landmarks, rng=rng, jitter=jitter, raise_top=raise_top, widen=widen
            )
        t = rec.copy_transform(masked, face) if redetect else face.chip_transform
        out.append(_branches(emb, masked, t))
    if seconds is not None:
        seconds[policy] = seconds.get(policy, 0.0) + time.perf_counter() - t0
    return np.stack(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--copies", type=int, default=9, help="masked copies per policy and photo")
    ap.add_argument("--model", default=EYES_MODEL)
    ap.add_argument(
        "--salt",
        type=int,
        default=0,
        help="added to every photo's copy seed: another draw of styles/colours (0: the product's)",
    )
    ap.add_argument(
        "--policies", default=",".join(POLICIES), help=f"comma-separated, of {ALL_POLICIES}"
    )
    args = ap.parse_args(argv)
    policies = [p for p in args.policies.split(",") if p]
    if not policies or any(p not in ALL_POLICIES for p in policies):
        ap.error(f"--policies: choose from {ALL_POLICIES}")
    cv2.setNumThreads(1)
    data = shared_data_dir()
    if data is None:
        print("embed_cache: ../shared/data not found", file=sys.stderr)
        return 2
    emb = Embedder(args.model, threads=1)
    rec = Recognizer(None, mask_copies=0, detector=MtcnnDetector(threads=1), embedder=emb)
    if emb.dim != 256:
        print("embed_cache: expects the fused 2 x 128 embedder", file=sys.stderr)
        return 2

    names: list[str] = []  # one row per image
    idents: list[str] = []
    kinds: list[str] = []  # m2fred-enroll | m2fred-probe | m2fred-other | lfw-enroll | lfw-probe...
    desc: list[np.ndarray] = []  # (2, 2, 128); NaN where no face
    copies: dict[str, list[np.ndarray]] = {p: [] for p in policies}
    # per image (n, 2, 2, 128); seconds per policy: drawing + aligning + embedding its copies
    seconds: dict[str, float] = {}
    nan = np.full((2, 2, 128), np.nan, np.float32)
    nan_copies = np.full((args.copies, 2, 2, 128), np.nan, np.float32)

    def add(name: str, ident: str, kind: str, d: np.ndarray, c: dict[str, np.ndarray]) -> None:
        names.append(name)
        idents.append(ident)
        kinds.append(kind)
        desc.append(d)
        for p in policies:
            copies[p].append(c.get(p, nan_copies))

    def enroll_row(name: str, ident: str, kind: str, img: np.ndarray, seed: int) -> None:
        try:
            found = rec.enroll_face(img)  # same skip rule as maskid eval
            face, context = found.faces[0], found.source
        except MaskidError:
            add(name, ident, kind, nan, {})
            return
        t = face.chip_transform
        assert t is not None
        c = {
            p: _copies(rec, context, face, seed + args.salt, args.copies, p, seconds)
            for p in policies
        }
        add(name, ident, kind, _branches(emb, context, t), c)

    def probe_row(name: str, ident: str, kind: str, img: np.ndarray) -> None:
        try:
            found = rec.analyze_in_context(img)
            faces, context = found.faces, found.source
        except MaskidError:
            faces = []
        if not faces or faces[0].chip_transform is None:
            add(name, ident, kind, nan, {})
            return
        add(name, ident, kind, _branches(emb, context, faces[0].chip_transform), {})

    t0 = time.perf_counter()
    m2fred = data / "eval" / "m2fred"
    items = identity_images(m2fred, "*.png")
    for i, (ident, path) in enumerate(items):
        img = rec.load(path)
        kind = {"-0-0": "m2fred-enroll", "-1-0": "m2fred-probe"}.get(path.stem[-4:], "m2fred-other")
        if kind == "m2fred-enroll":
            enroll_row(
                f"m2fred/{ident}/{path.name}", ident, kind, img, int(sha256_file(path)[:8], 16)
            )
        else:
            probe_row(f"m2fred/{ident}/{path.name}", ident, kind, img)
        if i % 20 == 0:
            print(f"  m2fred {i}/{len(items)} {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    lfw = data / "demo" / "lfw10"
    for ident, path in identity_images(lfw):
        img = rec.load(path)
        seed = int(sha256_file(path)[:8], 16)
        if path.stem.endswith("_0001"):
            enroll_row(f"lfw10/{ident}/{path.name}", ident, "lfw-enroll", img, seed)
            continue
        probe_row(f"lfw10/{ident}/{path.name}", ident, "lfw-probe-unmasked", img)
        # benchmarks/accuracy.py's synthetic probe: a mask seeded by the file's hash
        faces = rec.analyze(img)
        if not faces:
            add(f"lfw10/{ident}/{path.stem}.png", ident, "lfw-probe", nan, {})
            continue
        masked = apply_mask(img, faces[0].landmarks, rng=np.random.default_rng(seed))
        probe_row(f"lfw10/{ident}/{path.stem}.png", ident, "lfw-probe", masked)
    print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        names=np.array(names),
        idents=np.array(idents),
        kinds=np.array(kinds),
        desc=np.stack(desc),
        model_id=np.array(emb.model_id),
        **{f"copies_{p}": np.stack(copies[p]) for p in policies},
        **{f"seconds_{p}": np.array(v) for p, v in seconds.items()},
    )
    n_enroll = sum(k.endswith("enroll") for k in kinds)
    for p, v in seconds.items():
        print(f"  {p}: {1000 * v / n_enroll / args.copies:.1f} ms per copy", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
