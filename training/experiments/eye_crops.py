"""Other periocular views and multi-crop ensembles, measured on M2FRED's halves (issue 5).

The shipped periocular branch sees the chip's top 90 rows stretched to 150 x 150 ("S90"). Is that
view the best one, and do several views add up? For every M2FRED face (and the product's 3
re-detected masked copies of every enrolled photo) this cuts other views from the product's chip
(`S<rows>`: top rows stretched; `Q<rows>`: a square zoom around the eyes; `R120x90`: 120 x 90
around the eyes; `S90y10`: rows 10-90), embeds each with dlib's pretrained network (untrained
views: their fair comparison is the untrained S90) and evaluates [l2_normalize(full), l2_normalize(view), ...]
concatenations with the product's enrollment (3 copies, max per identity) on the dev/test halves.
"T90" is the shipped fine-tuned branch (from training/experiments/embed_cache.py's cache).

    OMP_NUM_THREADS=2 python training/experiments/eye_crops.py /work/cache/sn/v1_desc.npz \\
        --json training/results/eye_crops_m2fred.json          # ~5 min here

Result (training/README.md): no view or ensemble beats the shipped model on the dev half.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/: maskid_train
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other experiments

from heldout import Cache, split_identities

from maskid.alignment.dlib_chip import chip_source
from maskid.alignment.warp import warp_batch
from maskid.detection.mtcnn import MtcnnDetector
from maskid.errors import MaskidError
from maskid.evaluation.metrics import identification_report
from maskid.face import l2_normalize
from maskid.networks.embedder import Embedder
from maskid.networks.registry import sha256_file
from maskid.paths import shared_data_dir
from maskid.pipeline.masks import apply_mask
from maskid.pipeline.recognizer import Recognizer

VIEWS = {  # (x0, y0, x1, y1) in the 150 px chip; eyes at about (48, 47) and (104, 47)
    "S90": (0, 0, 150, 90),
    "S80": (0, 0, 150, 80),
    "S100": (0, 0, 150, 100),
    "Q90": (30, 0, 120, 90),
    "Q100": (25, 0, 125, 100),
    "Q110": (20, 0, 130, 110),
    "R120x90": (15, 0, 135, 90),
    "S90y10": (0, 10, 150, 90),
}
ENSEMBLES = {
    "shipped (full+T90)": ["full", "T90"],
    "full+S90 (untrained)": ["full", "S90"],
    "full+T90+S90": ["full", "T90", "S90"],
    "full+T90+R120x90": ["full", "T90", "R120x90"],
    "full+T90+S90y10": ["full", "T90", "S90y10"],
    "full+T90+S80+S100": ["full", "T90", "S80", "S100"],
    "full+T90+R120x90+S90y10": ["full", "T90", "R120x90", "S90y10"],
}


def m2fred_rows(c: Cache) -> list[int]:
    """The cache's M2FRED enrollment and probe rows, in cache order."""
    return [i for i, k in enumerate(c.kinds) if k in ("m2fred-enroll", "m2fred-probe")]


def product_chips(c: Cache, copies: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, 150, 150, 3) product chips of `m2fred_rows(c)`, (n, 3, ...) the 3 re-detected masked
    copies of each enrolled photo (zeros unless `copies`), and whether a face was found. Also
    used by training/experiments/probe_completion.py."""
    data = shared_data_dir()
    if data is None:
        raise SystemExit("../shared/data not found")
    root = data / "eval"
    cv2.setNumThreads(1)
    rec = Recognizer(Path("/nonexistent"), mask_copies=0, detector=MtcnnDetector(threads=1))

    def chip(img: np.ndarray, t: np.ndarray) -> np.ndarray:
        out = np.zeros((1, 3, 150, 150), np.float32)
        src, m = chip_source(img, t, 150)
        warp_batch(src, m[None], size=150, out=out, threads=1)
        return np.clip(out[0].transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8)

    rows = m2fred_rows(c)
    chips = np.zeros((len(rows), 150, 150, 3), np.uint8)
    masked = np.zeros((len(rows), 3, 150, 150, 3), np.uint8)
    found = np.zeros(len(rows), bool)
    for j, i in enumerate(tqdm(rows, desc="chips")):
        path = root / c.names[i]
        img = rec.load(path)
        if c.kinds[i] == "m2fred-enroll":  # as embed_cache / the product enroll it
            try:
                found = rec.enroll_face(img)
                face, ctx = found.faces[0], found.source
            except MaskidError:
                continue
            assert face.chip_transform is not None
            chips[j], found[j] = chip(ctx, face.chip_transform), True
            rng = np.random.default_rng(int(sha256_file(path)[:8], 16))
            for k in range(3 if copies else 0):
                m = apply_mask(ctx, face.landmarks, rng=rng)
                masked[j, k] = chip(m, rec.copy_transform(m, face))
        else:
            found = rec.analyze_in_context(img)
            faces, ctx = found.faces, found.source
            if faces and faces[0].chip_transform is not None:
                chips[j], found[j] = chip(ctx, faces[0].chip_transform), True
    return chips, masked, found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "cache", type=Path, help="training/experiments/embed_cache.py's output (redetect copies)"
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    np.seterr(invalid="ignore", divide="ignore")
    c = Cache(args.cache)
    rows = m2fred_rows(c)
    chips, copies, found = product_chips(c)
    emb = Embedder("dlib-resnet-v1", threads=2)

    def views(box: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        def cut(x: np.ndarray) -> np.ndarray:
            if box is None:
                return x
            x0, y0, x1, y1 = box
            return np.stack([cv2.resize(a[y0:y1, x0:x1], (150, 150)) for a in x])

        one = l2_normalize(emb.embed_chips(cut(chips)))
        cp = l2_normalize(emb.embed_chips(cut(copies.reshape(-1, 150, 150, 3)))).reshape(
            len(rows), 3, -1
        )
        return one, cp

    desc = {"full": views(None)}
    for name, box in tqdm(VIEWS.items(), desc="views"):
        desc[name] = views(box)
    d, cp = c.desc[rows], c.copies["redetect"][rows]
    desc["T90"] = (
        l2_normalize(np.nan_to_num(d[:, 0, 1])),
        l2_normalize(np.nan_to_num(cp[:, :3, 0, 1])),
    )
    check = float(
        np.mean((desc["full"][0] * l2_normalize(np.nan_to_num(d[:, 0, 0]))).sum(-1)[found])
    )
    ident = [c.idents[i] for i in rows]
    kinds = [c.kinds[i] for i in rows]
    halves = split_identities(sorted(set(ident)))

    def report(parts: list[str], half: str) -> dict[str, float]:
        keep = set(halves[half])
        names = sorted(keep)
        enrolled = [j for j in range(len(rows)) if kinds[j] == "m2fred-enroll" and found[j]]
        enrolled = [j for j in enrolled if ident[j] in keep]
        probes = [j for j in range(len(rows)) if kinds[j] == "m2fred-probe" and ident[j] in keep]
        one = l2_normalize(np.concatenate([desc[p][0] for p in parts], axis=-1))
        cps = l2_normalize(np.concatenate([desc[p][1] for p in parts], axis=-1))
        gallery = np.concatenate([np.concatenate([one[j][None], cps[j]]) for j in enrolled])
        owner = np.repeat([names.index(ident[j]) for j in enrolled], 4)
        sims = one[probes] @ gallery.T
        scores = np.stack([sims[:, owner == k].max(axis=1) for k in range(len(names))], axis=1)
        truth = np.array([names.index(ident[j]) for j in probes])
        r = identification_report(scores, truth, ~found[probes]).as_dict()
        return {k: float(r[k]) for k in ("rank1", "tar_at_far_1e-3", "eer")}

    table: dict[str, dict[str, dict[str, float]]] = {}
    for name, parts in [*((f"full+{v}", ["full", v]) for v in VIEWS), *ENSEMBLES.items()]:
        table[name] = {h: report(parts, h) for h in ("dev", "test", "all")}
        print(
            f"{name:<26}"
            + " | ".join(
                f"{h} {r['rank1']:.3f} {r['tar_at_far_1e-3']:.3f} {r['eer']:.3f}"
                for h, r in table[name].items()
            )
        )
    print(f"(full-face descriptors vs the cache: mean cosine {check:.5f})")
    if args.json:
        doc = {"views": VIEWS, "ensembles": ENSEMBLES, "cache_check_cos": check, "table": table}
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
