"""A candidate periocular branch against the shipped one, on M2FRED's held-out halves (issue 5).

`build`: a fused ONNX (dlib's net on the chip + the candidate's periocular branch, the graph
`maskid.networks.registry` builds for `maskid-eyes-v1`) from a candidate's fp16 .npz (`maskid_train.
periocular --export`), written where you say (never over the shipped files).

`compare`: two descriptor caches of the same faces (`training/experiments/embed_cache.py --model ...`, one
per model) evaluated as the product enrolls (3 masked copies aligned from a detection on the
masked copy: policy `redetect`; eye weight 1, max over an identity's entries), on the dev and
test halves of M2FRED, all 43, the unmasked controls and lfw10, with the dev half's FAR-1e-3
threshold and the test half's FAR/TAR at it, and a paired bootstrap over identities of the
candidate-minus-baseline differences (5th-95th percentile; the yardstick for "beyond noise").

    OMP_NUM_THREADS=1 python training/experiments/eyes_candidate.py build CAND.eye.npz --out CAND.onnx
    OMP_NUM_THREADS=1 python training/experiments/embed_cache.py --model CAND.onnx --copies 3 \\
        --policies redetect --out /work/cache/cand_desc.npz
    python training/experiments/eyes_candidate.py compare BASE_desc.npz CAND_desc.npz --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/: maskid_train
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other experiments
from heldout import Cache, copy_similarity, evaluate, identity_bootstrap, protocols

POLICY = "redetect"  # maskid.pipeline.recognizer.COPY_REDETECT: the product's enrolled copies
COPIES = 3
KEYS = ("rank1", "tar_at_far_1e-3", "tar_at_far_1e-2", "eer")


def build(weights: Path, out: Path, name: str) -> Path:
    from maskid.networks.dlib.onnx_build import build_fused_onnx
    from maskid.networks.dlib.reader import read_dlib_net, with_weights
    from maskid.networks.registry import (
        CONVERTER_VERSION,
        EYE_ROWS,
        EYE_WEIGHT,
        dlib_dat_path,
        sha256_file,
    )

    full = read_dlib_net(dlib_dat_path())
    with np.load(weights) as z:
        eye = with_weights(full, [z[f"p{i:03d}"] for i in range(len(z.files))])
    key = sha256_file(weights)[:12]
    model = build_fused_onnx(
        full, eye, name, f"{CONVERTER_VERSION}+cand-{key}", EYE_ROWS, EYE_WEIGHT
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.SerializeToString())
    return out


def _scores(
    c: Cache, prot: tuple[list[int], list[int]], copies: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out: list[np.ndarray] = []
    evaluate(c, *prot, 1.0, False, copies, POLICY, "max", scores_out=out)
    return out[0], out[1], out[2]


def paired_bootstrap(
    a: Cache, b: Cache, prot: tuple[list[int], list[int]], copies: int, n: int
) -> dict[str, list[float]]:
    """b minus a: [full-set delta, 5th, 95th percentile] over identity resamples."""
    s0, t, nf = _scores(a, prot, copies)
    s1, t1, nf1 = _scores(b, prot, copies)
    assert np.array_equal(t, t1) and np.array_equal(nf, nf1)
    return identity_bootstrap(s0, s1, t, nf, KEYS, n)


def table(c: Cache) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    halves = {h: protocols(c, h) for h in ("dev", "test", "all")}
    for h, prot in halves.items():
        m = evaluate(c, *prot["masked"], 1.0, False, COPIES, POLICY, "max")
        k0 = evaluate(c, *prot["control"], 1.0, False, 0, POLICY, "max")
        kc = evaluate(c, *prot["control"], 1.0, False, COPIES, POLICY, "max")
        out[h] = {
            "rank1": m["rank1"], "tar": m["tar_at_far_1e-3"], "eer": m["eer"],
            "thr": m["threshold"], "control_rank1": k0["rank1"],
            "control_copies_rank1": kc["rank1"],
        }  # fmt: skip
    thr = out["dev"]["thr"]
    t = evaluate(c, *halves["test"]["masked"], 1.0, False, COPIES, POLICY, "max", threshold=thr)
    out["test_at_dev_thr"] = {"far": t["far_at_threshold"], "tar": 1.0 - t["frr_at_threshold"]}
    lfw = evaluate(c, c.rows("lfw-enroll"), c.rows("lfw-probe"), 1.0, False, COPIES, POLICY, "max")
    lfu = evaluate(
        c, c.rows("lfw-enroll"), c.rows("lfw-probe-unmasked"), 1.0, False, COPIES, POLICY, "max"
    )
    out["lfw"] = {"rank1": lfw["rank1"], "tar": lfw["tar_at_far_1e-3"], "eer": lfw["eer"]}
    out["lfw_unmasked"] = {"rank1": lfu["rank1"]}
    # how far a mask moves the descriptor: synthetic copies vs a real mask (cosine to unmasked)
    keep = (POLICY, "real mask (same session)")
    out["cos_to_unmasked"] = {k: v for k, v in copy_similarity(c).items() if k in keep}
    return out


def _load(path: Path) -> Cache:
    c = Cache(path)
    if POLICY not in c.copies or c.copies[POLICY].shape[1] < COPIES:
        raise SystemExit(f"{path} lacks {COPIES} '{POLICY}' copies (embed_cache --policies)")
    return c


def versus(a: Cache, b: Cache, n: int) -> dict[str, dict[str, list[float]]]:
    """Paired bootstrap of b minus a on every protocol."""
    if a.names != b.names:
        raise SystemExit("the caches do not hold the same faces")
    sets = {h: protocols(a, h)["masked"] for h in ("dev", "test", "all")}
    sets["lfw"] = (a.rows("lfw-enroll"), a.rows("lfw-probe"))
    boot = {h: paired_bootstrap(a, b, prot, COPIES, n) for h, prot in sets.items()}
    for h in ("dev", "test", "all"):  # unmasked control, no copies (benchmarks/accuracy.py)
        boot[f"control_{h}"] = paired_bootstrap(a, b, protocols(a, h)["control"], 0, n)
    return boot


def _print_table(label: str, r: dict) -> None:  # type: ignore[type-arg]
    print(f"{label} ({r['model']}):")
    for h in ("dev", "test", "all"):
        x = r[h]
        print(
            f"  {h:<4} r1 {x['rank1']:.3f} TAR {x['tar']:.3f} EER {x['eer']:.3f} "
            f"thr {x['thr']:.4f} control {x['control_rank1']:.3f} "
            f"(with copies {x['control_copies_rank1']:.3f})"
        )
    print(
        f"  lfw10 r1 {r['lfw']['rank1']:.3f} TAR {r['lfw']['tar']:.3f}; unmasked r1 "
        f"{r['lfw_unmasked']['rank1']:.3f}; test at dev thr FAR "
        f"{r['test_at_dev_thr']['far']:.4f} TAR {r['test_at_dev_thr']['tar']:.3f}"
    )
    cos = ", ".join(f"{k} {v:.4f}" for k, v in r["cos_to_unmasked"].items())
    print(f"  cosine to the unmasked photo: {cos}")


def _print_boot(title: str, boot: dict[str, dict[str, list[float]]]) -> None:
    print(f"{title} [5%, 95%]: rank-1, TAR@1e-3")
    for h, v in boot.items():
        r1, tar = v["rank1"], v["tar_at_far_1e-3"]
        print(
            f"  {h:<12} {r1[0]:+.3f} [{r1[1]:+.3f}, {r1[2]:+.3f}]   "
            f"{tar[0]:+.3f} [{tar[1]:+.3f}, {tar[2]:+.3f}]"
        )


def _run_log(run: Path) -> dict[str, object]:
    """A training run's args, per-epoch dev rows (all of M2FRED) and the exported epoch."""
    import csv

    import torch

    rows = list(csv.DictReader((run / "epochs.csv").open()))
    return {
        "args": json.loads((run / "args.json").read_text()),
        "epochs": [{k: float(v) for k, v in r.items()} for r in rows],
        "exported_epoch": int(torch.load(run / "best.pt", map_location="cpu")["epoch"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="candidate .eye.npz -> fused ONNX")
    b.add_argument("weights", type=Path)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--name", default="maskid-eyes-candidate")
    c = sub.add_parser("compare", help="baseline vs candidate descriptor caches")
    c.add_argument("base", type=Path, help="the shipped model's cache")
    c.add_argument("cand", nargs="+", help="LABEL=CACHE.npz[:RUN_DIR] for each candidate")
    c.add_argument(
        "--pair", action="append", default=[], help="A,B: also bootstrap candidate B minus A"
    )
    c.add_argument("--extra-json", type=Path, action="append", default=[], help="merged in")
    c.add_argument("--json", type=Path)
    c.add_argument("--bootstrap", type=int, default=300)
    args = ap.parse_args(argv)
    if args.cmd == "build":
        print(build(args.weights, args.out, args.name))
        return 0
    np.seterr(invalid="ignore", divide="ignore")
    base = _load(args.base)
    doc: dict[str, object] = {
        "protocol": f"{COPIES} '{POLICY}' copies (the product's enrollment), eye weight 1, max "
        "over an identity's entries; M2FRED identities sorted, dev = even positions, test = odd; "
        "control: unmasked rank-1 without copies (with copies: control_copies_rank1); thr: the "
        "half's FAR-1e-3 threshold; bootstrap: [delta, 5%, 95%] over "
        f"{args.bootstrap} identity resamples, candidate minus baseline",
        "baseline": {"model": base.model_id, **table(base)},
    }
    _print_table("baseline", doc["baseline"])  # type: ignore[arg-type]
    caches: dict[str, Cache] = {}
    cands: dict[str, object] = {}
    for spec in args.cand:
        label, _, rest = spec.partition("=")
        path, _, run = rest.partition(":")
        caches[label] = _load(Path(path))
        entry: dict[str, object] = {"model": caches[label].model_id, **table(caches[label])}
        _print_table(label, entry)
        entry["bootstrap_vs_baseline"] = versus(base, caches[label], args.bootstrap)
        _print_boot(f"{label} - baseline", entry["bootstrap_vs_baseline"])  # type: ignore[arg-type]
        if run:
            entry["training"] = _run_log(Path(run))
        cands[label] = entry
    doc["candidates"] = cands
    pairs: dict[str, object] = {}
    for pair in args.pair:
        x, y = pair.split(",")
        pairs[f"{y} - {x}"] = versus(caches[x], caches[y], args.bootstrap)
        _print_boot(f"{y} - {x}", pairs[f"{y} - {x}"])  # type: ignore[arg-type]
    doc["pairs"] = pairs
    for extra in args.extra_json:
        doc[extra.stem] = json.loads(extra.read_text())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
