"""Operating choices of the fused embedder, chosen on one half of M2FRED and checked on the other.

Reads the cache of `training/experiments/embed_cache.py` (branch descriptors of every face, its mirror image
and its synthetic masked copies) and evaluates, with maskid's own metrics:

* eye-branch weight w (descriptor [l2(full), w * l2(periocular)]),
* flip averaging (each branch's descriptor = l2(mean(chip, mirrored chip)), enroll and probe),
* the number and policy of synthetic masked enrollment copies,
* per-identity score aggregation (max, mean of the top 2 of an identity's descriptors),
* the mirrored chips enrolled as extra gallery entries (probes unflipped: no query-time cost),

on M2FRED's identity-disjoint halves (`maskid.evaluation.splits.m2fred_halves`: sorted
ids, even positions = dev, odd = test) plus the synthetic-masked lfw10 set and the unmasked
controls, and compares each candidate with the shipped default by a paired bootstrap over
identities (5th-95th percentile of the metric difference), the yardstick for "beyond noise".
Its figures match benchmarks/accuracy.py run through the pipeline (same detector, chips, seeds).

    python training/experiments/heldout.py /work/cache/eyes_desc.npz --json training/results/heldout_m2fred.json \\
        --csv training/results/heldout_grid_m2fred.csv
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maskid.evaluation.metrics import identification_report, identity_bootstrap
from maskid.evaluation.splits import (
    m2fred_halves as split_identities,  # the one split rule (maskid.evaluation.splits)
)


def descriptors(branches: np.ndarray, weight: float, flip: bool, view: int = 0) -> np.ndarray:
    """(..., 2 views, 2 branches, 128) l2-normalised branch descriptors -> (..., 256) unit.

    flip: each branch = l2(mean of the chip's and the mirrored chip's); else view 0 (the chip)
    or 1 (the mirror)."""
    v = branches.mean(axis=-3) if flip else branches[..., view, :, :]
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    d = np.concatenate([v[..., 0, :], weight * v[..., 1, :]], axis=-1)
    out: np.ndarray = d / np.linalg.norm(d, axis=-1, keepdims=True)
    return out


def aggregate(sims: np.ndarray, owner: np.ndarray, n_ids: int, how: str) -> np.ndarray:
    """(P, G) probe-vs-descriptor similarities -> (P, n_ids) identity scores."""
    out = np.full((sims.shape[0], n_ids), -np.inf)
    for i in range(n_ids):
        s = sims[:, owner == i]
        if s.shape[1] == 0:
            continue
        if how == "max":
            out[:, i] = s.max(axis=1)
        elif how == "top2":
            k = min(2, s.shape[1])
            out[:, i] = np.sort(s, axis=1)[:, -k:].mean(axis=1)
        else:
            raise ValueError(how)
    return out


class Cache:
    """One or more caches of the same faces (same rows), their copy policies merged."""

    def __init__(self, path: Path, *more: Path) -> None:
        z = np.load(path)
        self.names = z["names"].tolist()
        self.idents = z["idents"].tolist()
        self.kinds = z["kinds"].tolist()
        self.desc = z["desc"]
        self.model_id = str(z["model_id"])
        self.copies = {k[len("copies_") :]: z[k] for k in z.files if k.startswith("copies_")}
        self.seconds = {
            k[len("seconds_") :]: float(z[k]) for k in z.files if k.startswith("seconds_")
        }
        for extra in more:
            y = np.load(extra)
            if y["names"].tolist() != self.names or str(y["model_id"]) != self.model_id:
                raise ValueError(f"{extra}: not a cache of the same faces and model as {path}")
            if not np.allclose(y["desc"], self.desc, equal_nan=True, atol=1e-5):
                raise ValueError(f"{extra}: different descriptors for the same faces")
            self.copies |= {k[len("copies_") :]: y[k] for k in y.files if k.startswith("copies_")}
            self.seconds |= {
                k[len("seconds_") :]: float(y[k]) for k in y.files if k.startswith("seconds_")
            }

    def rows(self, kind: str, ids: set[str] | None = None, suffix: str = "") -> list[int]:
        return [
            i
            for i, (k, d, n) in enumerate(zip(self.kinds, self.idents, self.names, strict=True))
            if k == kind and (ids is None or d in ids) and n.endswith(suffix)
        ]


def evaluate(
    c: Cache,
    enroll: list[int],
    probes: list[int],
    weight: float,
    flip: bool,
    copies: int,
    policy: str,
    how: str,
    threshold: float | None = None,
    mirror_enroll: bool = False,
    scores_out: list[np.ndarray] | None = None,
    head: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float | int]:
    """One protocol's report; `head` maps (n, 256) unit fused descriptors to the descriptors
    compared (e.g. `training/experiments/metric_head.py`'s linear head), enrollment and probes alike."""
    h = head if head is not None else (lambda v: v)
    names = sorted({c.idents[i] for i in enroll})
    index = {n: j for j, n in enumerate(names)}
    vecs, owner = [], []
    for i in enroll:
        block = [c.desc[i][None]]
        if copies:
            block.append(c.copies[policy][i, :copies])
        b = np.concatenate(block)
        if np.isnan(b).any():
            continue  # no usable face: this photo adds nothing (maskid eval's rule)
        vecs.append(h(descriptors(b, weight, flip)))
        owner += [index[c.idents[i]]] * len(b)
        if mirror_enroll:  # the mirrored views as extra gallery entries (probe: plain chip)
            vecs.append(h(descriptors(b, weight, False, view=1)))
            owner += [index[c.idents[i]]] * len(b)
    gallery = np.concatenate(vecs)
    pd = c.desc[probes]
    no_face = np.isnan(pd).any(axis=(1, 2, 3))
    q = descriptors(np.nan_to_num(pd), weight, flip) if len(pd) else pd
    q = np.nan_to_num(h(np.nan_to_num(q))) if len(pd) else q
    q[no_face] = 0.0
    scores = aggregate(q @ gallery.T, np.asarray(owner), len(names), how)
    truth = np.array([index.get(c.idents[i], -1) for i in probes])
    if scores_out is not None:
        scores_out += [scores, truth, no_face]
    return identification_report(scores, truth, no_face, threshold=threshold).as_dict()


def protocols(c: Cache, half: str) -> dict[str, tuple[list[int], list[int]]]:
    ids = sorted({d for d, k in zip(c.idents, c.kinds, strict=True) if k.startswith("m2fred")})
    keep = set(split_identities(ids)[half])
    return {
        "masked": (c.rows("m2fred-enroll", keep), c.rows("m2fred-probe", keep)),
        "control": (
            c.rows("m2fred-enroll", keep, "/1-0-0.png"),
            [i for i in c.rows("m2fred-enroll", keep) if not c.names[i].endswith("/1-0-0.png")],
        ),
    }


Config = dict[str, object]
DEFAULT: Config = {"weight": 1.0, "flip": False, "copies": 3, "policy": "random", "agg": "max"}
# Candidates compared with the default by a paired identity bootstrap.
CANDIDATES: dict[str, Config] = {
    "flip (TTA)": {"flip": True},
    "flip, eye weight 0.85": {"flip": True, "weight": 0.85},
    "eye weight 0.85": {"weight": 0.85},
    "eye weight 1.2": {"weight": 1.2},
    "0 copies": {"copies": 0},
    "2 copies": {"copies": 2},
    "6 copies": {"copies": 6},
    "9 copies": {"copies": 9},
    "6 copies, distinct styles": {"copies": 6, "policy": "distinct"},
    "3 copies, placement jitter": {"policy": "jitter"},
    "mean of top-2 per identity": {"agg": "top2"},
    "mirrored views enrolled (no TTA)": {"mirror_enroll": True},
}


def available(c: Cache, cfg: Config) -> bool:
    """Whether the cache holds what `cfg` needs (its policy, enough copies)."""
    policy = str(cfg["policy"])
    return policy in c.copies and int(cfg["copies"]) <= c.copies[policy].shape[1]  # type: ignore[call-overload]


def copy_similarity(c: Cache) -> dict[str, float]:
    """How far a mask moves the fused descriptor (w=1, plain chip), as cosine to the unmasked
    photo's: per copy policy over M2FRED's enrollment photos, and for M2FRED's real masked photo of
    the same session (the target a synthetic copy should imitate)."""
    enroll = c.rows("m2fred-enroll")
    out: dict[str, float] = {}
    base = descriptors(c.desc[enroll], 1.0, False)
    for p, cp in c.copies.items():
        d = descriptors(cp[enroll], 1.0, False)  # (n, copies, 256)
        out[p] = float(np.nanmean(np.einsum("nd,nkd->nk", base, d)))
    key = {c.names[i].removesuffix("-0-0.png"): i for i in enroll}
    pairs = [
        (key[c.names[i].removesuffix("-1-0.png")], i)
        for i in c.rows("m2fred-probe")
        if c.names[i].removesuffix("-1-0.png") in key
    ]
    a = descriptors(c.desc[[e for e, _ in pairs]], 1.0, False)
    b = descriptors(c.desc[[q for _, q in pairs]], 1.0, False)
    out["real mask (same session)"] = float(np.nanmean((a * b).sum(-1)))
    # The same-session figure mixes the mask with a change of shot (the masked photo is another
    # exposure). Across sessions every pair is already another shot, so the unmasked photo of
    # session s against session t's unmasked photo, its copies, and its real masked photo
    # isolates what the mask itself does.
    cross: dict[str, list[float]] = {"unmasked": [], "real mask": []}
    cross |= {p: [] for p in c.copies}
    real = dict(pairs)  # enrollment row -> the same session's masked probe row
    for u in enroll:
        du = descriptors(c.desc[u], 1.0, False)
        for v in enroll:
            if u == v or c.idents[u] != c.idents[v]:
                continue
            cross["unmasked"].append(float(du @ descriptors(c.desc[v], 1.0, False)))
            for p, cp in c.copies.items():
                cross[p].append(float(np.nanmean(descriptors(cp[v], 1.0, False) @ du)))
            if v in real:
                cross["real mask"].append(float(du @ descriptors(c.desc[real[v]], 1.0, False)))
    out |= {f"{k} (other session)": float(np.nanmean(v)) for k, v in cross.items()}
    return out


def run(c: Cache, prot: tuple[list[int], list[int]], cfg: Config) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    evaluate(
        c, *prot, float(cfg["weight"]), bool(cfg["flip"]), int(cfg["copies"]),  # type: ignore[arg-type]
        str(cfg["policy"]), str(cfg["agg"]), mirror_enroll=bool(cfg.get("mirror_enroll")),
        scores_out=out, head=cfg.get("head"),  # type: ignore[arg-type]
    )  # fmt: skip
    return out


def bootstrap(
    c: Cache, prot: tuple[list[int], list[int]], base: Config, cand: Config, n: int = 300
) -> dict[str, list[float]]:
    """Candidate minus base (see `identity_bootstrap`)."""
    s0, t, nf = run(c, prot, base)
    s1, t1, _ = run(c, prot, cand)
    assert np.array_equal(t, t1)
    return identity_bootstrap(s0, s1, t, nf, n=n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", type=Path, nargs="+", help="one cache, or several of the same faces")
    ap.add_argument("--json", type=Path, help="default, split and bootstrap deltas")
    ap.add_argument("--csv", type=Path, help="the whole grid, one configuration a line")
    ap.add_argument("--bootstrap", type=int, default=300, help="identity resamples (0: skip)")
    args = ap.parse_args(argv)
    np.seterr(invalid="ignore", divide="ignore")  # probes without a face are NaN rows
    c = Cache(*args.cache)
    lfw = (c.rows("lfw-enroll"), c.rows("lfw-probe"))
    lfw_clean = (c.rows("lfw-enroll"), c.rows("lfw-probe-unmasked"))
    halves = {h: protocols(c, h) for h in ("dev", "test", "all")}
    max_copies = next(iter(c.copies.values())).shape[1]

    grid = []
    for weight, flip, copies, policy, how in itertools.product(
        (0.0, 0.7, 0.85, 1.0, 1.2, 1.5),  # 0.0: dlib's descriptor alone
        (False, True),
        sorted({k for k in (0, 2, 3, 6, max_copies) if k <= max_copies}),
        tuple(c.copies),
        ("max", "top2"),
    ):
        if copies == 0 and (policy != "random" or how != "max"):
            continue
        cfg = {"weight": weight, "flip": flip, "copies": copies, "policy": policy, "agg": how}
        row: dict[str, object] = dict(cfg)
        for h, prot in halves.items():
            m = evaluate(c, *prot["masked"], weight, flip, copies, policy, how)
            # control as benchmarks/accuracy.py: no copies; and with the copies (the product)
            k0 = evaluate(c, *prot["control"], weight, flip, 0, policy, how)
            kc = evaluate(c, *prot["control"], weight, flip, copies, policy, how)
            row[h] = {
                "rank1": m["rank1"],
                "tar": m["tar_at_far_1e-3"],
                "eer": m["eer"],
                "thr": m["threshold"],
                "control_rank1": k0["rank1"],
                "control_copies_rank1": kc["rank1"],
            }
        ls = evaluate(c, *lfw, weight, flip, copies, policy, how)
        lc = evaluate(c, *lfw_clean, weight, flip, copies, policy, how)
        row["lfw"] = {"rank1": ls["rank1"], "tar": ls["tar_at_far_1e-3"], "eer": ls["eer"]}
        row["lfw_unmasked_rank1"] = lc["rank1"]
        grid.append(row)

    def fmt(r: dict) -> str:  # type: ignore[type-arg]
        d, t, a, lf = r["dev"], r["test"], r["all"], r["lfw"]
        return (
            f"w={r['weight']:<4} flip={int(r['flip'])} n={r['copies']:<2} {r['policy']:<8} "
            f"{r['agg']:<4} | dev {d['rank1']:.3f} {d['tar']:.3f} {d['eer']:.3f} "
            f"c{d['control_rank1']:.3f} | test {t['rank1']:.3f} {t['tar']:.3f} {t['eer']:.3f} "
            f"c{t['control_rank1']:.3f} | all {a['rank1']:.3f} {a['tar']:.3f} "
            f"c{a['control_rank1']:.3f}/{a['control_copies_rank1']:.3f} | lfw "
            f"{lf['rank1']:.3f} {lf['tar']:.3f} {lf['eer']:.3f} u{r['lfw_unmasked_rank1']:.3f}"
        )

    print("columns: masked rank-1 TAR@1e-3 EER, c = unmasked control rank-1 (all: no copies /"
          " with copies); lfw: synthetic masked rank-1 TAR EER, u = unmasked rank-1")  # fmt: skip
    for r in sorted(grid, key=lambda r: -(r["dev"]["tar"] + r["dev"]["rank1"])):  # type: ignore[index]
        print(fmt(r))

    sims = copy_similarity(c)
    print("\nmean cosine of a masked view to the unmasked photo (fused, w=1):")
    for p, v in sims.items():
        print(f"  {p:<28} {v:.4f}")
    boot: dict[str, dict[str, object]] = {}
    if args.bootstrap:
        print("\ncandidate - default (w=1, no flip, 3 random copies, max): delta [5%, 95%] over "
              f"{args.bootstrap} identity resamples; masked rank-1 / TAR@1e-3, control rank-1")  # fmt: skip
        sets = {**{h: halves[h]["masked"] for h in halves}, "lfw": lfw}
        sets |= {f"control_{h}": halves[h]["control"] for h in ("dev", "test")}
        candidates = {**CANDIDATES, **{f"copies: {p}": {"policy": p} for p in c.copies}}
        for name, change in candidates.items():
            cand = {**DEFAULT, **change}
            if not available(c, cand) or cand == DEFAULT:
                continue
            boot[name] = {"config": cand}
            line = []
            for h, prot in sets.items():
                b = bootstrap(c, prot, DEFAULT, cand, args.bootstrap)
                boot[name][h] = b
                r1, tar = b["rank1"], b["tar_at_far_1e-3"]
                cell = f"{r1[0]:+.3f}[{r1[1]:+.3f},{r1[2]:+.3f}]"
                if not h.startswith("control"):
                    cell += f" {tar[0]:+.3f}[{tar[1]:+.3f},{tar[2]:+.3f}]"
                line.append(f"{h} {cell}")
            print(f"{name}:\n    " + "\n    ".join(line))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        n_enroll = sum(k.endswith("enroll") for k in c.kinds)
        doc = {
            "cache_model": c.model_id,
            "copy_vs_unmasked_cos": sims,
            "copy_ms": {p: 1000 * v / n_enroll / max_copies for p, v in sorted(c.seconds.items())},
            "policies_at_default": {
                str(r["policy"]): {h: r[h] for h in ("dev", "test", "all", "lfw")}
                | {"lfw_unmasked_rank1": r["lfw_unmasked_rank1"]}
                for r in grid
                if all(r[k] == v for k, v in DEFAULT.items() if k != "policy")
            },
            "split": "M2FRED identities sorted; dev = even positions, test = odd",
            "default": DEFAULT,
            "bootstrap": boot,
        }
        args.json.write_text(json.dumps(doc, indent=1))
    if args.csv:
        cols = ["weight", "flip", "copies", "policy", "agg"]
        metrics = [(h, k) for h in ("dev", "test", "all") for k in grid[0]["dev"]]  # type: ignore[attr-defined]
        metrics += [("lfw", k) for k in ("rank1", "tar", "eer")]
        lines = [",".join(cols + [f"{h}_{k}" for h, k in metrics] + ["lfw_unmasked_rank1"])]
        for r in grid:
            vals = [str(r[k]) for k in cols]
            vals += [f"{r[h][k]:.4f}" for h, k in metrics]  # type: ignore[index]
            vals.append(f"{r['lfw_unmasked_rank1']:.4f}")
            lines.append(",".join(vals))
        args.csv.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
