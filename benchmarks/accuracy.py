"""The table that decides which embedder ships (issue 12), on a protocol fixed before any choice.

Splits (`maskid.evaluation.splits`): M2FRED identities sorted, even positions dev, odd test; a quarter of
`train/rmfd`'s identities and a twentieth of `train/lfw`'s held out of training as dev. Every
choice (model, copies, threshold) is made on dev; M2FRED's test half is only reported.

Per row (a model, and how many synthetically masked copies it enrolls beside each photo):
- dev sources, each a closed gallery: M2FRED dev half (enroll every unmasked photo, probe every
  masked one: same-day photos), RMFD dev (enroll the unmasked web photos, probe the real masked
  ones: other occasions), LFW dev (enroll photo 1, probe photos 2-9: unmasked, other occasions).
  Cells: masked rank-1 / TAR@FAR=1e-3 / EER.
- the operating threshold, calibrated across occasions: FAR 1e-3 on the pooled impostor scores of
  RMFD dev (masked vs unmasked), LFW dev (across photos) and M2FRED dev across sessions (enroll
  session 1 unmasked, probe the masked photos of sessions 2-4); each source's FAR / TAR at it.
- what a user meets at that threshold: the share of masked probes *named* correctly (M2FRED dev
  and RMFD dev: the dev score, below), and the open set (M2FRED dev half enrolled, every masked
  probe searched: the test half's people are strangers): named / strangers named.
- the report on M2FRED's test half: masked rank-1 / TAR@1e-3 / EER, the share named and the FAR
  at the dev threshold, and the unmasked control (enroll session 1, probe sessions 2-4 unmasked).

The rule, fixed before the table was filled: the dev score is the mean of the shares of masked
probes named correctly at the row's threshold on M2FRED dev and on RMFD dev; the default is the
row with the best dev score (ties: higher pooled dev rank-1). `--write-settings` writes each
model's threshold and copies (its best-scoring copies setting) and that default to
`python/maskid/data/models/settings.json`, which the model registry reads.

    python benchmarks/accuracy.py --json training/results/accuracy_table.json [--write-settings]

`--quick`: a smoke run of two rows on a few identities per source, under a minute.
Detection is model-independent, so it runs once per photo for all rows (`MemoDetector`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from maskid.apps.evaluate import DescriptorMemo, EvalResult, evaluate_folders
from maskid.detection import BoxScorer, FaceDetector, default_detector
from maskid.detection.cascade import CascadeDetector
from maskid.detection.mtcnn import MtcnnDetector
from maskid.evaluation.metrics import rates, threshold_at_far
from maskid.evaluation.splits import identity_dirs, lfw_dev, m2fred_halves, rmfd_dev
from maskid.face import Face
from maskid.networks.embedder import Embedder
from maskid.networks.registry import SETTINGS_FILE
from maskid.paths import shared_data_dir
from maskid.pipeline.recognizer import Recognizer

FAR = 1e-3
DEFAULT_ROWS = [
    "dlib-resnet-v1:0",
    "dlib-resnet-v1:3",
    "maskid-eyes-v1:0",
    "maskid-eyes-v1:3",
    "omz-face-reid-0095:0",
    "omz-face-reid-0095:3",
    "edgeface-xs:0",
    "edgeface-xs:3",
    "edgeface-xxs:0",
    "edgeface-xxs:3",
]
QUICK_ROWS = ["dlib-resnet-v1:0", "maskid-eyes-v1:3"]
# Threshold -> FAR/TAR table per dev source (the model card's calibration table).
GRID = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


DETECTORS: dict[str, Callable[[int], FaceDetector]] = {
    "default": default_detector,
    "mtcnn": lambda threads: MtcnnDetector(threads=threads),
    "cascade": lambda threads: CascadeDetector(threads=threads),
    "mtcnn-first": lambda threads: CascadeDetector(mtcnn_first=True, threads=threads),
}


class MemoDetector:
    """The product's detector, answering each distinct image once: every row sees the same
    faces."""

    def __init__(self, threads: int, which: str = "default") -> None:
        self._det = DETECTORS[which](threads)
        self._memo: dict[tuple[str, bytes], list[Face]] = {}

    def _key(self, kind: str, image: np.ndarray, extra: bytes = b"") -> tuple[str, bytes]:
        h = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16)
        h.update(str(image.shape).encode() + extra)
        return kind, h.digest()

    @staticmethod
    def _copy(faces: list[Face]) -> list[Face]:
        return [Face(f.box.copy(), f.score, f.landmarks.copy()) for f in faces]

    def detect(self, image: np.ndarray) -> list[Face]:
        key = self._key("detect", image)
        if key not in self._memo:
            self._memo[key] = self._det.detect(image)
        return self._copy(self._memo[key])

    def score_boxes(self, image: np.ndarray, boxes: np.ndarray) -> list[Face]:
        key = self._key("boxes", image, np.asarray(boxes, np.float64).tobytes())
        if key not in self._memo:
            scorer = self._det
            self._memo[key] = (
                scorer.score_boxes(image, boxes) if isinstance(scorer, BoxScorer) else []
            )
        return self._copy(self._memo[key])


def link_subset(root: Path, ids: list[str], out: Path) -> Path:
    """`out/<id>` symlinks to `root/<id>` for `ids`."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ids:
        link = out / name
        if not link.exists():
            os.symlink((root / name).resolve(), link)
    return out


def protocols(data: Path, tmp: Path, quick: bool) -> dict[str, tuple[Path, Path, str, str]]:
    """name -> (enroll dir, probe dir, enroll pattern, probe pattern)."""
    m2fred = data / "eval" / "m2fred"
    halves = m2fred_halves(identity_dirs(m2fred))
    rmfd_ids = rmfd_dev(identity_dirs(data / "train" / "rmfd"))
    lfw_ids = lfw_dev(identity_dirs(data / "train" / "lfw"))
    if quick:
        halves = {k: v[:6] for k, v in halves.items()}
        halves["all"] = sorted(halves["dev"] + halves["test"])
        rmfd_ids, lfw_ids = rmfd_ids[:6], lfw_ids[:6]
    dev = link_subset(m2fred, halves["dev"], tmp / "m2fred-dev")
    test = link_subset(m2fred, halves["test"], tmp / "m2fred-test")
    every = link_subset(m2fred, halves["all"], tmp / "m2fred-all")
    rmfd = link_subset(data / "train" / "rmfd", rmfd_ids, tmp / "rmfd-dev")
    lfw = link_subset(data / "train" / "lfw", lfw_ids, tmp / "lfw-dev")
    return {
        "m2fred_dev": (dev, dev, "*-0-0.png", "*-1-0.png"),
        "m2fred_dev_sessions": (dev, dev, "1-0-0.png", "[234]-1-0.png"),
        "rmfd_dev": (rmfd, rmfd, "[!m]*.jpg", "masked_*.jpg"),
        "lfw_dev": (lfw, lfw, "*_0001.jpg", "*_000[2-9].jpg"),
        "m2fred_test": (test, test, "*-0-0.png", "*-1-0.png"),
        "control_dev": (dev, dev, "1-0-0.png", "[234]-0-0.png"),
        "control_test": (test, test, "1-0-0.png", "[234]-0-0.png"),
        "open_set": (dev, every, "*-0-0.png", "*-1-0.png"),
    }


CALIBRATION = ("rmfd_dev", "lfw_dev", "m2fred_dev_sessions")
NAMED = ("m2fred_dev", "rmfd_dev")


def run_row(
    model: str,
    copies: int,
    detector: MemoDetector,
    prots: dict[str, tuple[Path, Path, str, str]],
    probe_memos: dict[str, DescriptorMemo],
    threads: int,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    emb = Embedder(model, threads=threads)
    rec = Recognizer(None, mask_copies=copies, detector=detector, embedder=emb)
    plain = Recognizer(None, mask_copies=0, detector=detector, embedder=emb)
    # Probes do not depend on the copies: one probe memo per model, enrollments per recognizer.
    memo = DescriptorMemo(probes=probe_memos.setdefault(model, DescriptorMemo()).probes)
    plain_memo = DescriptorMemo(probes=memo.probes)

    def ev(name: str, threshold: float | None = None) -> EvalResult:
        enroll, probe, ep, pp = prots[name]
        r, m = (plain, plain_memo) if name.startswith("control") else (rec, memo)
        return evaluate_folders(
            enroll, probe, recognizer=r, memo=m, enroll_pattern=ep, probe_pattern=pp,
            threshold=threshold,
        )  # fmt: skip

    closed = {name: ev(name) for name in prots if name != "open_set"}
    pooled = np.concatenate([closed[n].impostor for n in CALIBRATION])
    thr = threshold_at_far(pooled, FAR)
    at = {name: ev(name, thr) for name in (*NAMED, "m2fred_test", "open_set")}
    calibration: dict[str, Any] = {"pooled_impostors": len(pooled), "threshold": thr}
    for n in CALIBRATION:
        g, i = closed[n].genuine, closed[n].impostor
        far, frr = rates(g, i, thr)
        calibration[n] = {
            "far": far,
            "tar": 1 - frr,
            "n_impostor": len(i),
            "grid": [
                {"threshold": t, "far": rates(g, i, t)[0], "tar": 1 - rates(g, i, t)[1]}
                for t in GRID
            ],
        }
    named = {n: at[n].report.dir_at_threshold for n in NAMED}
    # per probe, for the paired identity bootstrap between rows (`dev_score_interval`)
    named_probes = {
        n: {"ids": at[n].probe_ids, "named": at[n].named_correctly(thr).astype(int).tolist()}
        for n in NAMED
    }
    out: dict[str, Any] = {
        "model": emb.name,
        "mask_copies": copies,
        "threshold": thr,
        "calibration": calibration,
        "closed": {n: r.report.as_dict() for n, r in closed.items()},
        "at_threshold": {n: r.report.as_dict() for n, r in at.items()},
        "dev_named": named,
        "dev_named_probes": named_probes,
        "dev_score": float(np.mean(list(named.values()))),
        "dev_rank1": float(np.mean([closed[n].report.rank1 for n in NAMED])),
        "seconds": time.perf_counter() - t0,
    }
    return out


def print_table(results: dict[str, dict[str, Any]]) -> None:
    def cell(r: dict[str, Any], name: str) -> str:
        c = r["closed"][name]
        return f"{c['rank1']:.3f}/{c['tar_at_far_1e-3']:.3f}/{c['eer']:.3f}"

    print(
        "cells: masked rank-1 / TAR@FAR1e-3 / EER (closed gallery per source); thr: FAR 1e-3 on "
        "pooled cross-occasion dev impostors; named: share of masked probes named correctly at "
        "thr; open: M2FRED dev enrolled, all masked probes: named / strangers named; test@thr: "
        "M2FRED test named / FAR at thr; control: unmasked rank-1 dev/test"
    )
    header = (
        f"{'model':<22}{'cp':>2} | {'M2FRED dev':>17} | {'RMFD dev':>17} | {'LFW dev r1':>10} | "
        f"{'thr':>6} | {'named m2/rmfd':>13} | {'score':>5} | {'open':>11} | "
        f"{'M2FRED test':>17} | {'test@thr':>11} | {'control':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results.values():
        a = r["at_threshold"]
        op, te = a["open_set"], a["m2fred_test"]
        cd, ct = r["closed"]["control_dev"], r["closed"]["control_test"]
        print(
            f"{r['model']:<22}{r['mask_copies']:>2} | {cell(r, 'm2fred_dev'):>17} | "
            f"{cell(r, 'rmfd_dev'):>17} | {r['closed']['lfw_dev']['rank1']:>10.3f} | "
            f"{r['threshold']:>6.3f} | {r['dev_named']['m2fred_dev']:.3f}/"
            f"{r['dev_named']['rmfd_dev']:.3f}   | {r['dev_score']:.3f} | "
            f"{op['dir_at_threshold']:.3f}/{op['false_alarm_at_threshold']:.3f} | "
            f"{cell(r, 'm2fred_test'):>17} | {te['dir_at_threshold']:.3f}/"
            f"{te['far_at_threshold']:.4f} | {cd['rank1']:.3f}/{ct['rank1']:.3f}"
        )


def choose(results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, dict[str, float | int]]]:
    """The default (best dev score, ties by dev rank-1) and each model's best copies setting."""
    best_per_model: dict[str, dict[str, Any]] = {}
    for r in results.values():
        cur = best_per_model.get(r["model"])
        if cur is None or (r["dev_score"], r["dev_rank1"]) > (cur["dev_score"], cur["dev_rank1"]):
            best_per_model[r["model"]] = r
    default = max(best_per_model.values(), key=lambda r: (r["dev_score"], r["dev_rank1"]))
    settings = {
        m: {"threshold": round(float(r["threshold"]), 4), "enroll_mask_copies": r["mask_copies"]}
        for m, r in sorted(best_per_model.items())
    }
    return str(default["model"]), settings


def dev_score_interval(
    a: dict[str, Any], b: dict[str, Any], n: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Dev score of row a minus row b, with a 95% paired bootstrap interval over identities
    (people resampled within each dev source; the same draw for both rows)."""
    rng = np.random.default_rng(seed)
    diffs = np.zeros(n)
    point = 0.0
    for src in NAMED:
        ids = np.asarray(a["dev_named_probes"][src]["ids"])
        assert list(ids) == list(b["dev_named_probes"][src]["ids"]), "rows saw other probes"
        d = np.asarray(a["dev_named_probes"][src]["named"], float) - np.asarray(
            b["dev_named_probes"][src]["named"], float
        )
        people = sorted(set(ids))
        per = [d[ids == p] for p in people]
        point += d.mean() / len(NAMED)
        for k in range(n):
            pick = rng.integers(0, len(people), len(people))
            sel = np.concatenate([per[i] for i in pick])
            diffs[k] += sel.mean() / len(NAMED)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(point), float(lo), float(hi)


def write_settings(default: str, settings: dict[str, dict[str, float | int]]) -> None:
    doc = json.loads(SETTINGS_FILE.read_text())
    doc["default"] = default
    doc["models"] = {**doc.get("models", {}), **settings}
    tmp = SETTINGS_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, SETTINGS_FILE)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rows, 6 ids per source")
    ap.add_argument(
        "--row",
        action="append",
        metavar="MODEL:COPIES",
        help="a row (repeatable; MODEL is a registry name or an .onnx path); default: "
        + ", ".join(DEFAULT_ROWS),
    )
    ap.add_argument("--threads", type=int, default=1, help="detector/embedder threads (0: all)")
    ap.add_argument(
        "--detector",
        choices=sorted(DETECTORS),
        default="default",
        help="the detector every row uses (default: the product's); settings are only written "
        "for the product's",
    )
    ap.add_argument(
        "--write-settings",
        action="store_true",
        help=f"write thresholds, copies and the default to {SETTINGS_FILE.name}",
    )
    args = ap.parse_args(argv)
    data = shared_data_dir()
    if data is None:
        print("accuracy: ../shared/data not found (set MASKID_SHARED)", file=sys.stderr)
        return 2
    if args.quick and args.write_settings:
        ap.error("--quick figures must not become settings")
    if args.detector != "default" and args.write_settings:
        ap.error("settings are measured with the product's detector (--detector default)")
    rows = args.row or (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    parsed = []
    for row in rows:
        model, _, copies = row.rpartition(":")
        if not model or not copies.isdigit():
            ap.error(f"--row wants MODEL:COPIES, got {row!r}")
        parsed.append((model, int(copies)))

    threads = args.threads or (os.cpu_count() or 1)
    tmp = Path(tempfile.mkdtemp(prefix="maskid-accuracy-"))
    prots = protocols(data, tmp, args.quick)
    detector = MemoDetector(threads, args.detector)
    probe_memos: dict[str, DescriptorMemo] = {}
    results: dict[str, dict[str, Any]] = {}
    for model, copies in tqdm(parsed, desc="rows", unit="row"):
        results[f"{model}:{copies}"] = run_row(model, copies, detector, prots, probe_memos, threads)
    print_table(results)
    default, settings = choose(results)
    print(f"\nbest on dev (the default by the rule): {default} with {settings[default]}")
    (best,) = [  # the row (keyed as given on the command line) that the rule chose
        k
        for k, r in results.items()
        if r["model"] == default and r["mask_copies"] == settings[default]["enroll_mask_copies"]
    ]
    intervals = {}
    for key, r in results.items():
        if key != best and r["model"] != results[best]["model"]:
            intervals[key] = dev_score_interval(results[best], r)
    for key, (d, lo, hi) in sorted(intervals.items(), key=lambda kv: kv[1][0]):
        print(
            f"  dev score, {best} minus {key}: {d:+.3f} [95% identity bootstrap {lo:+.3f}, {hi:+.3f}]"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {"protocol": __doc__, "default": default, "settings": settings,
               "default_minus_row_dev_score": intervals, "rows": results}  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    if args.write_settings:
        write_settings(default, settings)
        print(f"wrote {SETTINGS_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
