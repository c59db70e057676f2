"""Query-side branch weighting for masked probes (issue 5), from the descriptor cache.

The gallery stores the fused `maskid-eyes-v1` descriptor [l2(f), l2(e)] / sqrt(2) (full-face
branch f, periocular branch e, eye weight 1). Scaling a probe's halves to [a * l2(f), b * l2(e)]
before the search scores every gallery entry by (a cos_f + b cos_e) / (sqrt(2) |(a, b)|), so the
eye weight can change per probe without touching the gallery. Scores are reported here as the
weighted mean of the branch cosines, (a cos_f + b cos_e) / (a + b) (a constant rescale of the
search score, the default's scale when a = b), and every weighting gets its own threshold at
FAR 1e-3 on the dev half.

Oracle (issue 5, step 1): every masked probe weighted b/a (as if a mask check were always right)
against the default b/a = 1, with the product's gallery (each enrollment photo + 3 synthetic masked
copies); also without copies, on the unmasked control (what a wrong decision costs) and on lfw10's
synthetic masks. The mask check and the end-to-end steps were to follow only if the oracle gained
beyond noise on the dev half (paired identity bootstrap, as `training/experiments/heldout.py`); it does not
(results/query_weight_m2fred.json), so they are not here.

    python training/experiments/query_weight.py /work/cache/eyes_desc.npz \\
        --json training/results/query_weight_m2fred.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from heldout import Cache, identity_bootstrap, protocols

from maskid.evaluation.metrics import identification_report

KEYS = ("rank1", "tar_at_far_1e-3", "eer")
RATIOS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, float("inf"))


def mix(ratio: float) -> tuple[float, float]:
    """(a, b) for b/a = ratio (inf: eye only)."""
    return (0.0, 1.0) if np.isinf(ratio) else (1.0, float(ratio))


class Branches:
    """Per-probe, per-gallery-entry branch cosines for one protocol (gallery as the product:
    each enrollment photo + `copies` masked copies, chip view, fused with eye weight 1)."""

    def __init__(self, c: Cache, enroll: list[int], probes: list[int], copies: int = 3) -> None:
        names = sorted({c.idents[i] for i in enroll})
        index = {n: j for j, n in enumerate(names)}
        g, owner = [], []
        for i in enroll:
            b = np.concatenate([c.desc[i][None], c.copies["random"][i, :copies]])[:, 0]
            if np.isnan(b).any():
                continue
            g.append(b)
            owner += [index[c.idents[i]]] * len(b)
        gal = np.concatenate(g)  # (G, 2 branches, 128), unit per branch
        pd = c.desc[probes][:, 0]  # (P, 2, 128): the chip view
        self.no_face = np.isnan(pd).any(axis=(1, 2))
        pd = np.nan_to_num(pd)
        self.cf = pd[:, 0] @ gal[:, 0].T
        self.ce = pd[:, 1] @ gal[:, 1].T
        self.owner = np.asarray(owner)
        self.n_ids = len(names)
        self.truth = np.array([index.get(c.idents[i], -1) for i in probes])

    def scores(self, ratio: float) -> np.ndarray:
        """(P, n_ids): max over an identity's entries of (a cos_f + b cos_e) / (a + b)."""
        a, b = mix(ratio)
        s = (a * self.cf + b * self.ce) / (a + b)
        out = np.full((s.shape[0], self.n_ids), -np.inf)
        for i in range(self.n_ids):
            if (self.owner == i).any():  # an identity whose photos had no face: never matched
                out[:, i] = s[:, self.owner == i].max(axis=1)
        out[self.no_face] = 0.0
        return out

    def report(self, s: np.ndarray, threshold: float | None = None) -> dict[str, float]:
        r = identification_report(s, self.truth, self.no_face, threshold=threshold).as_dict()
        return {k: float(r[k]) for k in (*KEYS, "threshold", "far_at_threshold")} | {
            "tar_at_threshold": 1.0 - float(r["frr_at_threshold"])
        }


def bootstrap(br: Branches, s0: np.ndarray, s1: np.ndarray, n: int = 300) -> dict[str, list[float]]:
    """s1 minus s0 on the same probes: [full-set delta, 5th, 95th percentile] over identity
    resamples (`training/experiments/heldout.py`'s yardstick)."""
    return identity_bootstrap(s0, s1, br.truth, br.no_face, KEYS, n)


def oracle_table(name: str, br: dict[str, Branches], n_boot: int) -> dict[str, object]:
    """One protocol family (dev/test/all) for every b/a of RATIOS, bootstrap vs b/a = 1 on dev."""
    oracle: dict[str, object] = {}
    base = br["dev"].scores(1.0)
    print(f" {name}")
    for r in RATIOS:
        row: dict[str, object] = {}
        line = f"  b/a={r:<5}"
        thr_dev = 0.0
        for h in ("dev", "test", "all"):
            s = br[h].scores(r)
            rep = br[h].report(s)
            row[h] = rep
            line += f" | {h} {rep['rank1']:.3f} {rep['tar_at_far_1e-3']:.3f} {rep['eer']:.3f}"
            if h == "dev":
                thr_dev = rep["threshold"]
            if h == "test":
                at = br[h].report(s, threshold=thr_dev)
                row["test_at_dev_threshold"] = {
                    "tar": at["tar_at_threshold"], "far": at["far_at_threshold"]
                }  # fmt: skip
                line += f" @dev {at['tar_at_threshold']:.3f}/{at['far_at_threshold']:.4f}"
        row["thr_dev"] = thr_dev
        if r != 1.0 and n_boot:
            b = bootstrap(br["dev"], base, br["dev"].scores(r), n_boot)
            row["bootstrap_dev"] = b
            line += "  boot dev " + " ".join(
                f"{k[:4]} {b[k][0]:+.3f}[{b[k][1]:+.3f},{b[k][2]:+.3f}]" for k in KEYS
            )
        oracle[str(r)] = row
        print(line)
    return oracle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--bootstrap", type=int, default=300)
    args = ap.parse_args(argv)
    np.seterr(invalid="ignore", divide="ignore")
    c = Cache(args.cache)
    halves = {h: protocols(c, h) for h in ("dev", "test", "all")}
    br = {h: Branches(c, *halves[h]["masked"]) for h in halves}
    ctl = {h: Branches(c, *halves[h]["control"]) for h in halves}
    ctl0 = {h: Branches(c, *halves[h]["control"], copies=0) for h in halves}
    lfw = Branches(c, c.rows("lfw-enroll"), c.rows("lfw-probe"))
    lfw_clean = Branches(c, c.rows("lfw-enroll"), c.rows("lfw-probe-unmasked"))
    doc: dict[str, object] = {"cache_model": str(np.load(args.cache)["model_id"])}

    # ------------------------------------------------------------------ 1. oracle on dev
    print("1. oracle: every probe weighted b/a; masked rank-1 / TAR@FAR1e-3 / EER with the"
          " threshold at FAR 1e-3 of each half; test@dev = TAR/FAR on test at the dev"
          " threshold; boot dev = minus b/a=1 on dev [5%, 95%] over identity resamples")  # fmt: skip
    families = {
        "masked, 3 copies (product gallery)": br,
        "masked, no copies": {h: Branches(c, *halves[h]["masked"], copies=0) for h in halves},
        "unmasked control, 3 copies": ctl,
        "unmasked control, no copies": ctl0,
    }
    doc["oracle"] = {
        name: oracle_table(name, fam, args.bootstrap) for name, fam in families.items()
    }
    # beyond noise: the 5th percentile of the dev bootstrap delta above 0 (rank-1, TAR) or the
    # 95th below 0 (EER), with the product's gallery
    product = doc["oracle"]["masked, 3 copies (product gallery)"]  # type: ignore[index]
    gains = [
        r for r, row in product.items() if "bootstrap_dev" in row
        and (row["bootstrap_dev"]["rank1"][1] > 0 or row["bootstrap_dev"]["tar_at_far_1e-3"][1] > 0
             or row["bootstrap_dev"]["eer"][2] < 0)
    ]  # fmt: skip
    doc["oracle_gains_beyond_noise_on_dev"] = gains
    print(f"oracle b/a with a dev gain beyond noise (product gallery): {gains or 'none'}")
    doc["oracle_lfw_synthetic"] = {}
    print("lfw10 synthetic masked / unmasked (3 copies): rank-1 TAR EER")
    for r in RATIOS:
        a, u = lfw.report(lfw.scores(r)), lfw_clean.report(lfw_clean.scores(r))
        doc["oracle_lfw_synthetic"][str(r)] = {"masked": a, "unmasked": u}  # type: ignore[index]
        print(f"  b/a={r:<5} | masked {a['rank1']:.3f} {a['tar_at_far_1e-3']:.3f} {a['eer']:.3f}"
              f" | unmasked {u['rank1']:.3f} {u['tar_at_far_1e-3']:.3f} {u['eer']:.3f}")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
