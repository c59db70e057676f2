"""Gallery benchmark: query latency and recall@1 per hnswlib setting, commit time (journal append
vs full rewrite), open time and memory, at 100k and 1M entries.

    python benchmarks/gallery.py --quick                  # 20k x 256, < 1 min
    python benchmarks/gallery.py --json benchmarks/results/gallery.json   # 100k and 1M x 256

Built galleries are cached (--cache, default /work/cache/gallery_bench or $MASKID_BENCH_CACHE),
keyed by size, data and hnswlib (M, ef_construction): building 1M on 2 cores takes minutes.

Data: realistic clustered descriptors. Each identity is a random centre on the unit sphere with
`--per-id` noisy samples; queries are fresh samples of enrolled identities, so the nearest
neighbour is not the query itself. `--noise` sets the difficulty (noise norm s: cosine to the
centre 1/sqrt(1+s^2), two samples of one person ~1/(1+s^2)): 0.75 (default) gives samples ~0.8
to their centre and same-person pairs ~0.64 (real same-person cosines are ~0.6-0.8); uniformly
random vectors would be a different (unrealistic) problem for a graph index.

recall@1: share of queries whose top identity from `Gallery.search` equals the identity of the
exact nearest descriptor (NumPy brute force in the same run). nn-recall: share whose top score
equals the exact best cosine (the exact nearest entry itself was found). Latency: one query at a
time, one thread, through `Gallery.search(q, k=1)` (validation and aggregation included).

Commit: one enrollment (one descriptor with its source) into an open gallery: appended to the
journal (the default) vs written as a new generation (what every commit cost before format 2).
Replay: opening a gallery whose journal holds N appended enrollments, and its first search
(which inserts the replayed descriptors into hnswlib).

Backends: `--backends hnswlib` (this file); a Milvus measurement lives in gallery_milvus.py, run
with `--backends milvus` when that file exists (it gets the same data and reports the same row).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from maskid.gallery.store import (
    JOURNAL_FRACTION,
    JOURNAL_MAX_BYTES,
    JOURNAL_MIN_BYTES,
    MANIFEST,
    Gallery,
    HnswParams,
)

EMBEDDER = "bench-clustered@00000000"
DEFAULT_CACHE = Path(os.environ.get("MASKID_BENCH_CACHE", "/work/cache/gallery_bench"))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def unit_rows(a: np.ndarray) -> np.ndarray:
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    return a


# Real descriptors are not isotropic: over 1,402 people of the team's data (omz-face-reid-0095
# 256-d, one centre per person), the centres' covariance has a participation ratio of ~102 of
# 256 dimensions (eigenvalues falling as ~i^-0.74 over the first 150) and centre-to-centre
# cosines have std 0.096 (isotropic 256-d: 0.0625). Eigenvalues i^-0.62 in a random basis match
# both (ratio 105, std 0.097). 0 gives isotropic centres: as hard for a graph index as uniform
# random data.
SPECTRUM = 0.62


def make_data(
    n: int,
    dim: int,
    per_id: int,
    n_queries: int,
    noise: float,
    seed: int,
    spectrum: float = SPECTRUM,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(entries (n, dim), entry identity (n,), queries (q, dim), query identity (q,))."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // per_id)
    scale_c = np.arange(1, dim + 1, dtype=np.float32) ** (-spectrum / 2)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    centres = np.empty((n_ids, dim), np.float32)
    for s in range(0, n_ids, 100_000):
        e = min(n_ids, s + 100_000)
        centres[s:e] = (rng.standard_normal((e - s, dim), dtype=np.float32) * scale_c) @ basis.T
    unit_rows(centres)
    ident = np.repeat(np.arange(n_ids), per_id)[:n]
    if ident.size < n:
        ident = np.concatenate([ident, rng.integers(0, n_ids, n - ident.size)])
    x = np.empty((n, dim), np.float32)
    scale = noise / np.sqrt(dim)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        x[s:e] = centres[ident[s:e]] + scale * rng.standard_normal((e - s, dim), dtype=np.float32)
        unit_rows(x[s:e])
    q_ident = rng.integers(0, n_ids, n_queries)
    q = centres[q_ident] + scale * rng.standard_normal((n_queries, dim), dtype=np.float32)
    return x, ident, unit_rows(q), q_ident


def exact_top1(x: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and cosine of each query's exact nearest entry (chunked brute force)."""
    best = np.full(len(q), -np.inf, np.float32)
    arg = np.zeros(len(q), np.int64)
    for s in range(0, len(x), 200_000):
        sims = q @ x[s : s + 200_000].T
        j = sims.argmax(axis=1)
        v = sims[np.arange(len(q)), j]
        better = v > best
        best[better] = v[better]
        arg[better] = j[better] + s
    return arg, best


def source(i: int) -> dict[str, str]:
    return {"path": f"/data/{i}.jpg", "sha256": hashlib.sha256(b"%d" % i).hexdigest()}


def build_cached(
    cache: Path, n: int, x: np.ndarray, ident: np.ndarray, params: HnswParams, data_key: str
) -> tuple[Path, dict[str, Any]]:
    """The gallery of x (one identity per run of equal `ident`) with `params`, built once."""
    path = cache / f"{data_key}-M{params.M}-efc{params.ef_construction}"
    info_path = path.parent / f"{path.name}.build.json"
    if (path / MANIFEST).exists() and info_path.exists():
        return path, json.loads(info_path.read_text())
    shutil.rmtree(path, ignore_errors=True)
    print(f"building {path.name} (cached for later runs) ...", flush=True)
    g = Gallery.open(path, embedder_id=EMBEDDER, dim=x.shape[1], create=True, hnsw=params)
    bounds = np.flatnonzero(np.diff(ident, prepend=-1, append=-1))
    t0 = time.perf_counter()
    with g.batch():
        for s, e in itertools.pairwise(bounds):
            g.add(f"id{ident[s]}", x[s:e], [source(i) for i in range(s, e)])
        t1 = time.perf_counter()
        g.search(x[0], k=1)  # inserts the batch into hnswlib (multi-threaded)
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    files = json.loads((path / MANIFEST).read_text())["files"]
    info = {
        "bookkeeping_s": t1 - t0,
        "hnsw_insert_s": t2 - t1,
        "write_s": t3 - t2,
        "inserts_per_s": n / (t2 - t1),
        "index_mib": files["index"]["size"] / 2**20,
        "metadata_mib": (files["meta"]["size"] + files["sources"]["size"]) / 2**20,
    }
    info_path.write_text(json.dumps(info))
    print(f"  built in {t3 - t0:.0f} s ({info['inserts_per_s']:,.0f} inserts/s)", flush=True)
    return path, info


def scratch_copy(src: Path, dst: Path) -> Path:
    """A writable copy of a cached gallery: immutable base files hard-linked, the rest copied."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.name.startswith(("index-", "meta-", "sources-")):
            os.link(p, dst / p.name)
        elif p.is_file():
            shutil.copy2(p, dst / p.name)
    return dst


def open_in_subprocess(path: Path, ef: int | None = None) -> dict[str, float]:
    """Open the gallery in a fresh process: wall time, first search, RSS growth."""
    code = (
        "import time, sys, json\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from gallery import rss_mb\n"
        "from maskid.gallery.store import Gallery\n"
        "import numpy as np\n"
        "r0 = rss_mb(); t = time.perf_counter()\n"
        "g = Gallery.open(sys.argv[1])\n"
        "dt = time.perf_counter() - t\n"
        "t = time.perf_counter(); g.search(np.ones(g.dim, np.float32)); q = time.perf_counter() - t\n"
        "print(json.dumps({'open_s': dt, 'first_search_s': q, 'rss_mib': rss_mb() - r0}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def measure_queries(
    g: Gallery, q: np.ndarray, exact_id: np.ndarray, exact_best: np.ndarray, ef: int
) -> dict[str, float]:
    g.ef_search = ef
    g.num_threads = 1  # single-query latency: one query, one thread
    for i in range(min(50, len(q))):  # warm caches
        g.search(q[i], k=1)
    lat = np.empty(len(q))
    top_id = np.empty(len(q), np.int64)
    top_score = np.empty(len(q), np.float32)
    for i in range(len(q)):
        t = time.perf_counter()
        (res,) = g.search(q[i], k=1)
        lat[i] = time.perf_counter() - t
        top_id[i] = int(res[0].identity[2:])
        top_score[i] = res[0].score
    return {
        "ef_search": ef,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p95_ms": float(np.percentile(lat, 95) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "recall_at_1": float(np.mean(top_id == exact_id)),
        "nn_recall": float(np.mean(np.abs(top_score - exact_best) < 1e-5)),
    }


def measure_commits(
    base: Path, scratch: Path, dim: int, appends: int, rewrites: int, replay: int
) -> dict[str, Any]:
    """One enrollment's commit time (append vs rewrite), and the cost of replaying a journal."""
    rng = np.random.default_rng(99)
    path = scratch_copy(base, scratch)
    g = Gallery.open(path, embedder_id=EMBEDDER, dim=dim, create=True)

    def enroll(i: int) -> float:
        v = unit_rows(rng.standard_normal((1, dim), dtype=np.float32))
        t = time.perf_counter()
        g.add(f"new{i}", v, [source(10**9 + i)])
        return time.perf_counter() - t

    append = [enroll(i) for i in range(appends)]
    g.journal_limit = 0  # every commit writes a new generation
    rewrite = [enroll(appends + i) for i in range(rewrites)]
    g.journal_limit = None
    replay_row: dict[str, Any] = {}
    if replay:
        t = time.perf_counter()
        for i in range(replay):  # one record each, as separate enrollments make
            enroll(10**6 + i)
        t_appends = time.perf_counter() - t
        journal = json.loads((path / MANIFEST).read_text())["journal"]["name"]
        replay_row = {
            "records": replay,
            "journal_mib": (path / journal).stat().st_size / 2**20,
            "append_all_s": t_appends,
            **open_in_subprocess(path),
        }
    g.close()
    shutil.rmtree(path, ignore_errors=True)
    return {
        "append_ms_p50": statistics.median(append) * 1e3,
        "append_ms_max": max(append) * 1e3,
        "appends": appends,
        "rewrite_s_p50": statistics.median(rewrite),
        "rewrites": rewrites,
        "replay": replay_row,
    }


def bench_size(
    n: int, args: argparse.Namespace, settings: list[HnswParams], cache: Path
) -> dict[str, Any]:
    print(
        f"\n== {n:,} descriptors ({n // args.per_id:,} identities x {args.per_id}), dim {args.dim}"
    )
    x, ident, q, q_ident = make_data(
        n, args.dim, args.per_id, args.queries, args.noise, args.seed, args.spectrum
    )
    data_key = f"n{n}-d{args.dim}-p{args.per_id}-s{args.noise}-a{args.spectrum}-seed{args.seed}"
    exact_idx, exact_best = exact_top1(x, q)
    exact_id = ident[exact_idx]
    row: dict[str, Any] = {
        "n": n,
        "identities": n // args.per_id,
        "dim": args.dim,
        "queries": len(q),
        "exact_accuracy": float(np.mean(exact_id == q_ident)),
        "settings": [],
    }
    for params in settings:
        path, info = build_cached(cache, n, x, ident, params, data_key)
        opened = open_in_subprocess(path)
        g = Gallery.open(path)
        sweep = [measure_queries(g, q, exact_id, exact_best, ef) for ef in args.ef]
        g.close()
        for r in sweep:
            print(
                f"M {params.M:2d} efc {params.ef_construction:3d} ef {r['ef_search']:4d}: "
                f"p50 {r['p50_ms']:.3f} ms  p95 {r['p95_ms']:.3f} ms  "
                f"recall@1 {r['recall_at_1']:.4f}  nn-recall {r['nn_recall']:.4f}",
                flush=True,
            )
        row["settings"].append(
            {
                "M": params.M,
                "ef_construction": params.ef_construction,
                **info,
                **opened,
                "sweep": sweep,
            }
        )
    del x
    # Commits are timed on the shipped setting's gallery when built, else the first one's.
    shipped = HnswParams()
    first = next(
        (s for s in settings if (s.M, s.ef_construction) == (shipped.M, shipped.ef_construction)),
        settings[0],
    )
    base = cache / f"{data_key}-M{first.M}-efc{first.ef_construction}"
    if args.commits:
        row["commit"] = measure_commits(
            base,
            cache / "scratch",
            args.dim,
            appends=args.commits,
            rewrites=1 if n >= 500_000 else 3,
            replay=args.replay,
        )
        c = row["commit"]
        print(
            f"commit of one enrollment: append {c['append_ms_p50']:.2f} ms (p50 of {c['appends']}, "
            f"max {c['append_ms_max']:.1f}), rewrite {c['rewrite_s_p50']:.2f} s",
            flush=True,
        )
        if c["replay"]:
            r = c["replay"]
            print(
                f"open with {r['records']} journal records ({r['journal_mib']:.1f} MiB): "
                f"{r['open_s']:.2f} s + first search {r['first_search_s']:.2f} s",
                flush=True,
            )
    return row


# -- end to end: `recognize --image` for one photo, process start to exit ------------------
DLIB_RECOGNIZE = r"""
import sys, pickle, dlib, numpy as np, face_recognition_models as frm
from PIL import Image
known = pickle.load(open(sys.argv[2], "rb"))
img = np.asarray(Image.open(sys.argv[1]).convert("RGB"))
det = dlib.get_frontal_face_detector()
sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
for rect in det(img, 1):
    d = np.array(net.compute_face_descriptor(img, sp(img, rect), 1))
    dist = np.linalg.norm(known["vectors"] - d, axis=1)
    i = int(dist.argmin())
    print(known["names"][i] if dist[i] <= 0.6 else "unknown", round(float(dist[i]), 3))
"""


def bench_recognize(
    photo: Path, gallery_photos: list[tuple[str, Path]], runs: int
) -> dict[str, float]:
    """Wall time of `recognize --image` vs a face_recognition-style dlib script, both as whole
    processes (start-up, model loading, detection, embedding, search) on the same photo."""
    import pickle
    import statistics
    import subprocess
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="maskid-e2e-"))
    env = {**os.environ, "MASKID_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "2"}
    gallery = tmp / "gallery"
    for name, path in gallery_photos:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "maskid.apps.cli",
                "enroll",
                name,
                str(path),
                "--gallery",
                str(gallery),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
    import dlib  # the baseline's known encodings, made the way face_recognition does
    import face_recognition_models as frm

    from maskid.io.images import load_image

    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
    net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    names, vectors = [], []
    for name, path in gallery_photos:
        img = load_image(path)
        rects = det(img, 1)
        if rects:
            names.append(name)
            vectors.append(np.array(net.compute_face_descriptor(img, sp(img, rects[0]), 1)))
    known = tmp / "known.pkl"
    known.write_bytes(pickle.dumps({"names": names, "vectors": np.array(vectors)}))
    script = tmp / "dlib_recognize.py"
    script.write_text(DLIB_RECOGNIZE)

    def timed(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0

    ours_cmd = [
        shutil.which("recognize") or sys.executable,
        "--image",
        str(photo),
        "--gallery",
        str(gallery),
        "--out",
        str(tmp / "out.jpg"),
    ]
    if not shutil.which("recognize"):
        ours_cmd[1:1] = ["-m", "maskid.apps.cli", "recognize"]
    dlib_cmd = [sys.executable, str(script), str(photo), str(known)]
    timed(ours_cmd)  # the first run converts/caches nothing it would not on a user's machine,
    timed(dlib_cmd)  # but warms the page cache for both equally
    ours = [timed(ours_cmd) for _ in range(runs)]
    base = [timed(dlib_cmd) for _ in range(runs)]
    return {
        "ours_s": statistics.median(ours),
        "dlib_s": statistics.median(base),
        "ratio_dlib_over_ours": statistics.median(base) / statistics.median(ours),
    }


def run_backend(
    name: str, args: argparse.Namespace, settings: list[HnswParams], big: list[HnswParams]
) -> list[Any]:
    """The rows of one backend. Other backends live in benchmarks/gallery_<name>.py, whose
    `compare(n, ...)` gets the same sizes, data and queries."""
    if name == "hnswlib":
        return [
            bench_size(n, args, big if n >= 500_000 else settings, args.cache) for n in args.sizes
        ]
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        module = importlib.import_module(f"gallery_{name}")
    except ImportError:
        print(f"backend {name}: benchmarks/gallery_{name}.py not found; skipped")
        return []
    return [
        module.compare(
            n,
            dim=args.dim,
            per_id=args.per_id,
            noise=args.noise,
            ef=tuple(args.ef),
            n_queries=args.queries,
            workdir=args.cache / name,
            seed=args.seed,
        )
        for n in args.sizes
    ]


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\nhnswlib, space ip (cosine), {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}; single-thread single queries"
    )
    head = (
        f"{'entries':>9} {'M':>3} {'efc':>4} {'ef':>4} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'recall@1':>8} {'nn-rec':>7} {'build s':>7} {'index MiB':>9} {'open s':>6} "
        f"{'RSS MiB':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        for s in r["settings"]:
            build = s["bookkeeping_s"] + s["hnsw_insert_s"] + s["write_s"]
            for e in s["sweep"]:
                print(
                    f"{r['n']:>9,} {s['M']:>3} {s['ef_construction']:>4} {e['ef_search']:>4} "
                    f"{e['p50_ms']:>7.3f} {e['p95_ms']:>7.3f} {e['recall_at_1']:>8.4f} "
                    f"{e['nn_recall']:>7.4f} {build:>7.0f} {s['index_mib']:>9.0f} "
                    f"{s['open_s']:>6.2f} {s['rss_mib']:>7.0f}"
                )
    print(
        f"\n{'entries':>9} {'append ms':>9} {'rewrite s':>9} {'journal':>20} {'open+1st search':>16}"
    )
    for r in rows:
        c = r.get("commit")
        if c:
            rp = c["replay"]
            j = f"{rp['records']} rec {rp['journal_mib']:.1f} MiB" if rp else "-"
            o = f"{rp['open_s']:.1f}+{rp['first_search_s']:.1f} s" if rp else "-"
            print(
                f"{r['n']:>9,} {c['append_ms_p50']:>9.2f} {c['rewrite_s_p50']:>9.2f} "
                f"{j:>20} {o:>16}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--quick", action="store_true", help="20k descriptors, fewer queries (< 1 min)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--per-id", type=int, default=5, help="descriptors per identity")
    ap.add_argument("--noise", type=float, default=0.75, help="noise norm (see above)")
    ap.add_argument("--spectrum", type=float, default=SPECTRUM, help="centres' eigenvalue decay")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--hnsw",
        nargs="+",
        default=["16,100", "16,200"],
        help="M,ef_construction settings to build (the shipped one measures commits)",
    )
    ap.add_argument(
        "--big-hnsw",
        nargs="+",
        default=[f"{HnswParams.M},{HnswParams.ef_construction}"],
        help="settings built at sizes >= 500k (a 1M build takes 15-40 min on 2 cores)",
    )
    ap.add_argument("--ef", type=int, nargs="+", default=[16, 24, 32, 48, 64, 96, 128])
    ap.add_argument("--queries", type=int, default=2000, help="single queries timed")
    ap.add_argument("--commits", type=int, default=30, help="enrollments timed (append)")
    ap.add_argument(
        "--replay", type=int, default=0, help="also time opening a gallery with this many records"
    )
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="built galleries")
    ap.add_argument("--backends", nargs="+", default=["hnswlib"])
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end recognize timing")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.ef, args.replay = [20_000], 500, [32, 64], 200
        args.hnsw = [f"{HnswParams.M},{HnswParams.ef_construction}"]
        args.no_e2e = True

    def parse(specs: list[str]) -> list[HnswParams]:
        return [HnswParams(*map(int, s.split(",")), ef_search=HnswParams.ef_search) for s in specs]

    settings, big = parse(args.hnsw), parse(args.big_hnsw)
    args.cache.mkdir(parents=True, exist_ok=True)
    results = {name: run_backend(name, args, settings, big) for name in args.backends}
    if results.get("hnswlib"):
        print_table(results["hnswlib"])
    e2e = None
    if not args.no_e2e:
        from maskid.paths import PACKAGE_DATA

        demo = PACKAGE_DATA / "demo"
        people = [(p.parent.name, p) for p in sorted((demo / "celebrities").glob("*/*.jpg"))]
        photo = demo / "newcomer" / "Tony_Blair_enroll.jpg"
        e2e = bench_recognize(photo, people[::3], runs=7)
        print(
            f"\nrecognize --image, whole process (median of runs): maskid {e2e['ours_s']:.2f} s, "
            f"face_recognition-style dlib {e2e['dlib_s']:.2f} s "
            f"(dlib/maskid {e2e['ratio_dlib_over_ours']:.2f}x)"
        )
    if args.json:
        doc = {
            "shipped": HnswParams().__dict__,
            "journal_policy": {
                "fraction": JOURNAL_FRACTION,
                "min_bytes": JOURNAL_MIN_BYTES,
                "max_bytes": JOURNAL_MAX_BYTES,
            },
            "cpus": os.cpu_count(),
            "data": {
                "dim": args.dim,
                "per_id": args.per_id,
                "noise": args.noise,
                "spectrum": args.spectrum,
            },
            "results": results,
            "recognize_end_to_end": e2e,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
