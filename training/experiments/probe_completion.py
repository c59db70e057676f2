"""Probe completion: score a masked probe with its lower face replaced by each candidate's (issue 5).

The enrolled masked copies put a synthetic mask on the gallery so both sides are masked. This is
the reverse: for each probe p and enrolled photo e, the chip rows below `--row` (the mask) come
from e's chip (blended over +-8 rows), dlib's full-face branch embeds that composite, and the
full-face half of the fused score becomes (1 - lam) cos(p, e) + lam cos(composite, e); the
periocular half (rows 0-89, above the seam) is unchanged. The genuine composite is a whole face
of one person; an impostor's mixes two. It costs one extra embedding per candidate photo (a
deployment would re-rank the top few).

    OMP_NUM_THREADS=2 python training/experiments/probe_completion.py /work/cache/sn/v1_desc.npz \\
        --json training/results/probe_completion_m2fred.json

Needs training/experiments/embed_cache.py's cache (with the `redetect` copies: the product's enrollment).
Result (training/README.md): without copies it helps (all 43: TAR@1e-3 .506 -> .612, rank-1
.788 -> .829 at row 68, lam .5); beside the product's copies it adds nothing beyond noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/: maskid_train
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other experiments

from eye_crops import m2fred_rows, product_chips
from heldout import Cache, identity_bootstrap, split_identities

from maskid.evaluation.metrics import identification_report
from maskid.face import l2_normalize
from maskid.networks.embedder import Embedder


def composites(c: np.ndarray, probes: list[int], enrolled: list[int], row: int) -> np.ndarray:
    """(P, E, 128) unit dlib descriptors of probe-top + enrolled-bottom chips."""
    alpha = np.clip((np.arange(150) - (row - 8)) / 16, 0, 1)[None, :, None, None]
    emb = Embedder("dlib-resnet-v1", threads=2)
    e = c[enrolled].astype(np.float32)
    out = np.zeros((len(probes), len(enrolled), 128), np.float32)
    for a, p in enumerate(tqdm(probes, desc=f"composites (row {row})")):
        mix = (1 - alpha) * c[p][None].astype(np.float32) + alpha * e
        out[a] = l2_normalize(emb.embed_chips(np.clip(mix + 0.5, 0, 255).astype(np.uint8)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "cache", type=Path, help="training/experiments/embed_cache.py's output (redetect copies)"
    )
    ap.add_argument("--rows", default="68,85", help="seam rows to try (nose tip ~88)")
    ap.add_argument("--lams", default="0.3,0.5,0.7,1.0")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    np.seterr(invalid="ignore", divide="ignore")
    c = Cache(args.cache)
    rows_m2 = m2fred_rows(c)
    chip, _, ok = product_chips(c, copies=False)
    enrolled = [j for j, i in enumerate(rows_m2) if c.kinds[i] == "m2fred-enroll" and ok[j]]
    probes = [j for j, i in enumerate(rows_m2) if c.kinds[i] == "m2fred-probe"]
    d = c.desc[rows_m2][:, 0]  # (n, 2 branches, 128): the plain chip's branch descriptors
    copies = c.copies["redetect"][rows_m2][:, :3, 0]  # (n, 3, 2, 128)
    ident = [c.idents[i] for i in rows_m2]
    halves = split_identities(sorted(set(ident)))
    results: dict[str, object] = {}
    for row in (int(r) for r in args.rows.split(",")):
        comp = composites(chip, [p for p in probes if ok[p]], enrolled, row)
        slot = {p: a for a, p in enumerate(p for p in probes if ok[p])}

        def scores(
            half: str,
            lam: float,
            with_copies: bool,
            comp: np.ndarray = comp,
            slot: dict[int, int] = slot,
        ) -> tuple[np.ndarray, ...]:
            keep = set(halves[half])
            ei = [k for k, e in enumerate(enrolled) if ident[e] in keep]
            er = [enrolled[k] for k in ei]
            pr = [p for p in probes if ident[p] in keep]
            names_h = sorted(keep)
            owner = np.array([names_h.index(ident[e]) for e in er])
            s = np.full((len(pr), len(names_h)), -np.inf)
            for a, p in enumerate(pr):
                if p not in slot:
                    continue
                full = (1 - lam) * d[er, 0] @ d[p, 0] + lam * (comp[slot[p]][ei] * d[er, 0]).sum(1)
                pair = (full + d[er, 1] @ d[p, 1]) / 2
                if with_copies:
                    cp = (copies[er][:, :, 0] @ d[p, 0] + copies[er][:, :, 1] @ d[p, 1]) / 2
                    pair = np.maximum(pair, cp.max(axis=1))
                for k in range(len(names_h)):
                    s[a, k] = pair[owner == k].max()
            truth = np.array([names_h.index(ident[p]) for p in pr])
            no_face = np.array([p not in slot for p in pr])
            return s, truth, no_face

        for with_copies in (False, True):
            key = f"row{row}_{'copies' if with_copies else 'no_copies'}"
            results[key] = {}
            for half in ("dev", "test", "all"):
                base = scores(half, 0.0, with_copies)
                cell: dict[str, object] = {}
                for lam in [0.0] + [float(x) for x in args.lams.split(",")]:
                    s = scores(half, lam, with_copies)
                    r = identification_report(*s).as_dict()
                    cell[f"lam{lam}"] = {k: r[k] for k in ("rank1", "tar_at_far_1e-3", "eer")}
                    if lam == 0.5:
                        cell["lam0.5_minus_base"] = identity_bootstrap(base[0], s[0], s[1], s[2])
                results[key][half] = cell  # type: ignore[index]
                print(
                    f"{key:<20} {half:<4} "
                    + " | ".join(
                        f"{k} {v['rank1']:.3f} {v['tar_at_far_1e-3']:.3f} {v['eer']:.3f}"  # type: ignore[index]
                        for k, v in cell.items()
                        if k.startswith("lam") and "minus" not in k
                    )
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
