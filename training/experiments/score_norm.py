"""Cohort score normalisation of the fused descriptor's scores (issue 5), measured on M2FRED.

A masked probe is less similar to everyone than an unmasked one, and some enrolled people
attract masked probes more than others ("hubs"), so one cosine threshold serves probes and
identities badly. Cohort normalisation (Z/T/S-norm, the adaptive variants of speaker and face
verification) rescales each score by how the probe, and the enrolled identity, score against a
cohort of OTHER people:

    z(s) = (s - mu_probe) / sd_probe          mu, sd: mean, std of the top-K cohort scores
    t(s) = (s - mu_ident) / sd_ident
    s-norm = (z + t) / 2

Cohort: the training identities (shared/data/train, glint23 + celeba; never M2FRED or lfw10):
each cohort identity is "enrolled" like a gallery person (its unmasked chips + K=2 synthetic
masked views from the maskid_train mask pool) for the probe side, and its masked views are
"probes" for the identity side. Z-norm leaves the ranking unchanged (rank-1 is the same);
T-norm and S-norm change it.

A second cohort needs no extra data: the gallery itself. Gallery Z-norm scores probe p against
identity i by (s_pi - mu) / sd over p's top-K scores against the OTHER enrolled identities (a
standardised margin over the rest of the gallery).

Evaluated with training/experiments/heldout.py's protocol (dev/test halves, product enrollment: 3 masked
copies of the `redetect` policy) against the raw scores, with the paired identity bootstrap, and,
because a closed protocol (every probe's identity enrolled) can reward a normalisation that
leans on the probe's true mate, also OPEN-SET: half of the identities enrolled (10 identity
splits), all masked probes searched; a stranger's best score is a false alarm; DIR@FAR = the
fraction of enrolled people's probes ranked first AND above the threshold that lets FAR of the
strangers through. Result (training/README.md): every variant is worse than the raw cosine on
what a deployment sees; gallery Z-norm's closed-protocol TAR gain is that artefact.

The cohort file holds the fused descriptors of every training chip and its 2 pool views; it is
made (and cached) by training/experiments/metric_head.py's `train_descriptors` (its first run, ~9 min).

    OMP_NUM_THREADS=1 python training/experiments/embed_cache.py --copies 3 --policies redetect \\
        --out /work/cache/sn/v1_desc.npz
    OMP_NUM_THREADS=1 PYTHONPATH=training python training/experiments/score_norm.py /work/cache/sn/v1_desc.npz \\
        --cohort /work/cache/chips/train/fused_maskid-eyes-v1.npz --json training/results/score_norm_m2fred.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/: maskid_train
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other experiments

from heldout import Cache, descriptors, identity_bootstrap, protocols

from maskid.evaluation.metrics import identification_report


def identity_max(sims: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """(P, G) similarities to gallery entries -> (P, n) max per identity."""
    out = np.full((sims.shape[0], n), -np.inf, np.float32)
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(n + 1))
    s = sims[:, order]
    for i in range(n):
        if bounds[i + 1] > bounds[i]:
            out[:, i] = s[:, bounds[i] : bounds[i + 1]].max(axis=1)
    return out


def top_stats(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each row's k highest scores (k <= 0: all)."""
    s = np.sort(scores, axis=1)[:, ::-1]
    if k > 0:
        s = s[:, :k]
    return s.mean(axis=1), np.maximum(s.std(axis=1), 1e-6)


@dataclass
class Cohort:
    entries: np.ndarray  # (G, D) gallery-like entries: plain + masked views
    owner: np.ndarray  # (G,) cohort identity of each entry
    n_ids: int
    probes: np.ndarray  # (M, D) masked views used as cohort probes

    @classmethod
    def load(cls, path: Path, max_ids: int = 0, probes_per_id: int = 8, seed: int = 0) -> Cohort:
        z = np.load(path)
        plain, masked, labels = z["plain"], z["masked"], z["labels"]
        ids = np.unique(labels)
        rng = np.random.default_rng(seed)
        if max_ids and max_ids < len(ids):
            ids = np.sort(rng.choice(ids, max_ids, replace=False))
        index = {int(c): j for j, c in enumerate(ids)}
        keep = np.isin(labels, ids)
        p, m, lab = plain[keep], masked[keep], labels[keep]
        own = np.array([index[int(c)] for c in lab])
        entries = np.concatenate([p[:, None], m], axis=1).reshape(-1, p.shape[1])
        owner = np.repeat(own, 1 + m.shape[1])
        probes = []
        for j in range(len(ids)):
            rows = np.flatnonzero(own == j)
            pick = rng.choice(rows, min(probes_per_id, len(rows)), replace=False)
            probes.append(m[pick, rng.integers(0, m.shape[1], len(pick))])
        return cls(entries, owner, len(ids), np.concatenate(probes))


def gallery(
    c: Cache, enroll: list[int], copies: int, policy: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = sorted({c.idents[i] for i in enroll})
    index = {n: j for j, n in enumerate(names)}
    vecs, owner = [], []
    for i in enroll:
        b = np.concatenate([c.desc[i][None], c.copies[policy][i, :copies]])
        if np.isnan(b).any():
            continue
        vecs.append(descriptors(b, 1.0, False))
        owner += [index[c.idents[i]]] * len(b)
    return np.concatenate(vecs), np.asarray(owner), names


def scored(
    c: Cache, enroll: list[int], probes: list[int], cohort: Cohort, copies: int, policy: str
) -> dict[str, np.ndarray]:
    """Raw scores and everything the normalisations need, for one protocol."""
    g, owner, names = gallery(c, enroll, copies, policy)
    index = {n: j for j, n in enumerate(names)}
    pd = c.desc[probes]
    no_face = np.isnan(pd).any(axis=(1, 2, 3))
    q = descriptors(np.nan_to_num(pd), 1.0, False)
    q[no_face] = 0.0
    raw = identity_max(q @ g.T, owner, len(names))
    probe_cohort = identity_max(q @ cohort.entries.T, cohort.owner, cohort.n_ids)  # (P, C)
    ident_cohort = identity_max(cohort.probes @ g.T, owner, len(names)).T  # (I, M)
    truth = np.array([index.get(c.idents[i], -1) for i in probes])
    return {"raw": raw, "pc": probe_cohort, "ic": ident_cohort, "truth": truth, "nf": no_face}


def normalise(d: dict[str, np.ndarray], how: str, k: int) -> np.ndarray:
    s = d["raw"].astype(np.float64)
    if how == "raw":
        return s
    mp, sp = top_stats(d["pc"], k)
    mi, si = top_stats(d["ic"], k)
    z = (s - mp[:, None]) / sp[:, None]
    t = (s - mi[None, :]) / si[None, :]
    if how == "z":
        return z
    if how == "t":
        return t
    if how == "s":
        return (z + t) / 2
    if how == "zc":  # probe-centred only (no scaling)
        return s - mp[:, None]
    if how == "sc":  # both centred, no scaling
        return s - (mp[:, None] + mi[None, :]) / 2
    raise ValueError(how)


def gallery_znorm(s: np.ndarray, k: int) -> np.ndarray:
    """(s_pi - mu) / sd over the top-k of probe p's scores against the other identities."""
    out = np.zeros_like(s, dtype=np.float64)
    for i in range(s.shape[1]):
        o = np.delete(s, i, axis=1)
        o = -np.sort(-np.where(np.isfinite(o), o, np.nan), axis=1)  # descending, NaN (no face) last
        o = o[:, :k] if k > 0 else o
        out[:, i] = (s[:, i] - np.nanmean(o, axis=1)) / (np.nanstd(o, axis=1) + 1e-6)
    return out


def open_set(c: Cache, cohort: Cohort, args: argparse.Namespace, splits: int = 10) -> dict:
    """DIR at FAR 1% / 5% of strangers and the all-pairs TAR@1e-3, half the people enrolled."""
    ids = sorted({d for d, k in zip(c.idents, c.kinds, strict=True) if k.startswith("m2fred")})
    rng = np.random.default_rng(0)
    draws = [sorted(rng.permutation(ids)[: len(ids) // 2].tolist()) for _ in range(splits)]
    probes = c.rows("m2fred-probe")
    ways = {"raw": lambda d: d["raw"], "z50": lambda d: normalise(d, "z", 50)}
    ways |= {f"gallery_z{k}": (lambda d, k=k: gallery_znorm(d["raw"], k)) for k in (0, 5, 10)}
    out: dict[str, dict[str, float]] = {}
    for name, fn in ways.items():
        rows = []
        for enrolled in draws:
            d = scored(
                c, c.rows("m2fred-enroll", set(enrolled)), probes, cohort, args.copies, args.policy
            )
            s = np.where(d["nf"][:, None], -np.inf, fn(d))
            known, t = d["truth"] >= 0, d["truth"]
            first = (s[known].argmax(axis=1) == t[known]) & ~d["nf"][known]
            genuine = np.where(first, s[known][np.arange(known.sum()), t[known]], -np.inf)
            stranger = s[~known & ~d["nf"]].max(axis=1)
            row = []
            for far in (0.01, 0.05):
                thr = np.sort(stranger)[::-1][int(far * len(stranger))]
                row.append(float((genuine > thr).mean()))
            row.append(report(s, d)["tar_at_far_1e-3"])
            rows.append(row)
        m = np.mean(rows, axis=0)
        out[name] = {"dir_at_far_1e-2": m[0], "dir_at_far_5e-2": m[1], "tar_at_far_1e-3": m[2]}
        print(
            f"open set {name:<12} DIR@FAR1% {m[0]:.3f}  DIR@FAR5% {m[1]:.3f}  all-pairs TAR@1e-3 {m[2]:.3f}"
        )
    return out


def report(s: np.ndarray, d: dict[str, np.ndarray]) -> dict[str, float]:
    r = identification_report(s, d["truth"], d["nf"]).as_dict()
    return {k: float(r[k]) for k in ("rank1", "tar_at_far_1e-3", "tar_at_far_1e-2", "eer")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", type=Path)
    ap.add_argument("--cohort", type=Path, required=True)
    ap.add_argument("--policy", default="redetect")
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--max-ids", type=int, default=0)
    ap.add_argument("--probes-per-id", type=int, default=8)
    ap.add_argument("--bootstrap", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    np.seterr(invalid="ignore", divide="ignore")
    c = Cache(args.cache)
    cohort = Cohort.load(args.cohort, args.max_ids, args.probes_per_id)
    print(
        f"cohort: {cohort.n_ids} identities, {len(cohort.entries)} entries, {len(cohort.probes)} probes"
    )
    sets = {h: protocols(c, h)["masked"] for h in ("dev", "test", "all")}
    sets |= {f"control_{h}": protocols(c, h)["control"] for h in ("dev", "test")}
    sets["lfw"] = (c.rows("lfw-enroll"), c.rows("lfw-probe"))
    data = {h: scored(c, *p, cohort, args.copies, args.policy) for h, p in sets.items()}
    grid = [("raw", 0)] + [
        (h, k) for h in ("z", "t", "s", "zc", "sc") for k in (0, 20, 50, 100, 200)
    ]
    rows = []
    for how, k in grid:
        row = {"norm": how, "k": k} | {h: report(normalise(d, how, k), d) for h, d in data.items()}
        rows.append(row)
        print(
            f"{how:<3} k={k:<4}"
            + "".join(
                f" | {h} {row[h]['rank1']:.3f} {row[h]['tar_at_far_1e-3']:.3f} {row[h]['eer']:.3f}"
                for h in ("dev", "test", "all", "lfw")
            )
            + f" | ctl {row['control_dev']['rank1']:.3f} {row['control_test']['rank1']:.3f}"
        )
    for k in (0, 5, 10):  # gallery Z-norm, closed protocol
        row = {"norm": "gallery_z", "k": k}
        row |= {h: report(gallery_znorm(d["raw"], k), d) for h, d in data.items()}
        rows.append(row)
        print(
            f"gz  k={k:<4}"
            + "".join(
                f" | {h} {row[h]['rank1']:.3f} {row[h]['tar_at_far_1e-3']:.3f} {row[h]['eer']:.3f}"
                for h in ("dev", "test", "all", "lfw")
            )
        )
    opened = open_set(c, cohort, args)
    boot = {}
    if args.bootstrap:
        for how, k in [(h, k) for h, k in grid if h in ("z", "s", "t") and k in (0, 50, 100)]:
            boot[f"{how}{k}"] = {
                h: identity_bootstrap(
                    normalise(d, "raw", 0),
                    normalise(d, how, k),
                    d["truth"],
                    d["nf"],
                    n=args.bootstrap,
                )
                for h, d in data.items()
                if h in ("dev", "test", "all")
            }
            b = boot[f"{how}{k}"]
            print(
                f"{how}{k} - raw: "
                + " ".join(
                    f"{h} r1 {b[h]['rank1'][0]:+.3f}[{b[h]['rank1'][1]:+.3f},{b[h]['rank1'][2]:+.3f}]"
                    f" tar {b[h]['tar_at_far_1e-3'][0]:+.3f}[{b[h]['tar_at_far_1e-3'][1]:+.3f},"
                    f"{b[h]['tar_at_far_1e-3'][2]:+.3f}]"
                    for h in b
                )
            )
    if args.json:
        doc = {"cohort": {"identities": cohort.n_ids, "entries": len(cohort.entries),
                          "probes": len(cohort.probes)},
               "closed": rows, "open_set": opened, "bootstrap": boot}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
