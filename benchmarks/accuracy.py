"""The table that decides which embedder ships (issue 5).

Rows: (a) the dlib port as is; (b) (a) + synthetically masked copies of every enrolled photo;
(c) fine-tuned with mask augmentation, no eye weighting; (d) eye-region weighted;
(e) the best of (c)/(d) with (b)'s masked copies.
Columns per dataset: masked rank-1, TAR@FAR=1e-3, EER; plus the unmasked control
(M2FRED: enroll session 1 unmasked, probe the other sessions unmasked).

Datasets: ../shared/data/eval/m2fred (enroll *-0-0.png, probe *-1-0.png: real masks) and
../shared/data/demo/lfw10 (enroll photo 1, probe photos 2..10 with synthetic masks).

    python benchmarks/accuracy.py --json out/accuracy.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from maskid.draw import write_image
from maskid.evaluate import evaluate_folders
from maskid.masks import apply_mask
from maskid.models import sha256_file
from maskid.paths import shared_data_dir
from maskid.recognizer import Recognizer, identity_images


def synthetic_masked_probes(lfw: Path, out: Path, rec: Recognizer, per_person: int) -> Path:
    """Photos 2.. of each lfw10 person with a synthetic mask (seeded by the file's hash)."""
    for name, path in identity_images(lfw):
        if path.stem.endswith("_0001"):
            continue
        dest = out / name / f"{path.stem}.png"
        if len(list(dest.parent.glob("*.png"))) >= per_person:
            continue
        img = rec.load(path)
        faces = rec.analyze(img)
        if not faces:
            continue  # written nowhere: counted as missing below
        rng = np.random.default_rng(int(sha256_file(path)[:8], 16))
        write_image(dest, apply_mask(img, faces[0].landmarks, rng=rng))
    return out


def _tar(row: dict[str, object]) -> float:
    masked = row["m2fred_masked"]
    assert isinstance(masked, dict)
    return float(masked["tar_at_far_1e-3"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--quick", action="store_true", help="lfw10 with 3 probes each; m2fred only")
    ap.add_argument("--baseline", default="dlib-resnet-v1", help="row (a) model")
    ap.add_argument("--finetuned", default=None, help="row (c) model: name or .onnx path")
    ap.add_argument("--eyes", default="maskid-eyes-v1", help="row (d) model: name or .onnx path")
    ap.add_argument("--mask-copies", type=int, default=3, help="masked copies for rows (b), (e)")
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="LABEL=MODEL",
        help="another row, e.g. d-gate=path/to/maskid-eyegate-v1.onnx (repeatable)",
    )
    args = ap.parse_args(argv)

    data = shared_data_dir()
    if data is None:
        print("accuracy: ../shared/data not found (set MASKID_SHARED)", file=sys.stderr)
        return 2
    m2fred = data / "eval" / "m2fred"
    lfw = data / "demo" / "lfw10"

    rows: list[tuple[str, str, int]] = [
        ("a", args.baseline, 0),
        ("b", args.baseline, args.mask_copies),
    ]
    if args.finetuned:
        rows.append(("c", args.finetuned, 0))
    if args.eyes:
        rows.append(("d", args.eyes, 0))
    for extra in args.extra:
        label, _, model = extra.partition("=")
        if not model:
            ap.error(f"--extra wants LABEL=MODEL, got {extra!r}")
        rows.append((label, model, 0))

    results: dict[str, dict[str, object]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="maskid-accuracy-"))

    def run(label: str, model: str, copies: int) -> None:
        t0 = time.perf_counter()
        rec = Recognizer(None, model=model, mask_copies=copies)
        masked = evaluate_folders(
            m2fred, m2fred, recognizer=rec, enroll_pattern="*-0-0.png", probe_pattern="*-1-0.png"
        ).report
        control = evaluate_folders(
            m2fred,
            m2fred,
            recognizer=Recognizer(None, model=model, mask_copies=0),
            enroll_pattern="1-0-0.png",
            probe_pattern="[234]-0-0.png",
        ).report
        probes = synthetic_masked_probes(lfw, tmp / "lfw10-masked", rec, 3 if args.quick else 9)
        lfw_rep = evaluate_folders(
            lfw, probes, recognizer=rec, enroll_pattern="*_0001.jpg", probe_pattern="*.png"
        ).report
        results[label] = {
            "model": rec.embedder.name,
            "mask_copies": copies,
            "m2fred_masked": masked.as_dict(),
            "m2fred_unmasked_control": control.as_dict(),
            "lfw10_synthetic_masked": lfw_rep.as_dict(),
            "seconds": time.perf_counter() - t0,
        }
        print(f"  row ({label}) done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    for label, model, copies in rows:
        run(label, model, copies)
    models = {label: model for label, model, _ in rows}
    tuned = [k for k in ("c", "d") if k in results]
    if tuned:
        best = max(tuned, key=lambda k: _tar(results[k]))
        run("e", models[best], args.mask_copies)

    header = (
        f"{'row':<4}{'model':<22}{'copies':>6} | {'M2FRED masked r1':>16} {'TAR@1e-3':>9} "
        f"{'EER':>6} | {'unmasked r1':>11} | {'LFW10 syn r1':>12} {'TAR@1e-3':>9}"
    )
    print(header)
    print("-" * len(header))
    for label, r in results.items():
        m, c, s = r["m2fred_masked"], r["m2fred_unmasked_control"], r["lfw10_synthetic_masked"]
        print(
            f"({label}) {r['model']:<22}{r['mask_copies']:>6} | {m['rank1']:>16.3f} "  # type: ignore[index]
            f"{m['tar_at_far_1e-3']:>9.3f} {m['eer']:>6.3f} | {c['rank1']:>11.3f} | "  # type: ignore[index]
            f"{s['rank1']:>12.3f} {s['tar_at_far_1e-3']:>9.3f}"  # type: ignore[index]
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
