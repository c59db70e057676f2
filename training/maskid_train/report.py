"""Collect run folders into one small results JSON + a markdown table.

    PYTHONPATH=training python -m maskid_train.report runs/plain runs/eyes \
        --out training/results/ablation_m2fred.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .evaluate import summary_row

COLUMNS = [
    ("masked_rank1", "masked rank-1"),
    ("masked_tar@1e-3", "masked TAR@1e-3"),
    ("masked_eer", "masked EER"),
    ("masked_enroll+masks_rank1", "rank-1 (enroll+masks)"),
    ("masked_enroll+masks_tar@1e-3", "TAR@1e-3 (enroll+masks)"),
    ("unmasked_control_rank1", "unmasked ctrl rank-1"),
    ("lfw10_masked_rank1", "lfw10 synth rank-1"),
    ("lfw10_masked_tar@1e-3", "lfw10 synth TAR@1e-3"),
]


def collect(run: Path) -> dict:
    args = json.loads((run / "args.json").read_text())
    epochs = {}
    for f in sorted(run.glob("dev_epoch*.json")):
        e = int(f.stem.removeprefix("dev_epoch"))
        epochs[e] = summary_row(json.loads(f.read_text()))
    wall = None
    csv = run / "epochs.csv"
    if csv.exists():
        last = csv.read_text().strip().splitlines()[-1].split(",")
        wall = float(last[-1])
    return {
        "run": run.name,
        "variant": args["variant"],
        "args": args,
        "epochs": epochs,
        "train_wall_s": wall,
    }


def markdown(rows: list[tuple[str, dict]]) -> str:
    head = "| model | " + " | ".join(c for _, c in COLUMNS) + " |"
    sep = "|---" * (len(COLUMNS) + 1) + "|"
    lines = [head, sep]
    for name, r in rows:
        lines.append(
            f"| {name} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k, _ in COLUMNS) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    runs = [collect(r) for r in args.runs]
    rows = []
    for r in runs:
        if 0 in r["epochs"]:
            rows.append(("dlib (untrained, same eval)", r["epochs"][0]))
    for r in runs:
        for e, row in sorted(r["epochs"].items()):
            if e > 0:
                rows.append((f"{r['run']} ({r['variant']}) epoch {e}", row))
    table = markdown(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    slim = [
        {k: v for k, v in r.items() if k != "args"}
        | {
            "args": {
                k: r["args"][k]
                for k in (
                    "variant",
                    "epochs",
                    "epoch_size",
                    "lr_trunk",
                    "lr_new",
                    "cosface_weight",
                    "cosface_m",
                    "masked_frac",
                    "k",
                    "freeze_blocks",
                    "seed",
                    "threads",
                )
            }
        }
        for r in runs
    ]
    args.out.write_text(json.dumps({"runs": slim, "table_markdown": table}, indent=1) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
