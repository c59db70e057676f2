"""The two gallery backends side by side: the directory store (hnswlib) and a Milvus collection
on a local milvus-lite server, both driven through `maskid.gallery.open_gallery` as the CLI
drives them, on the same data in one run.

    python benchmarks/gallery_milvus.py --quick                     # 20k x 256, ~2 min
    python benchmarks/gallery_milvus.py --sizes 100000 1000000      # ~40 min on 2 cores
    python benchmarks/gallery_milvus.py --milvus-uri milvus://HOST:PORT/bench   # your server

Per size and backend: bulk enrollment throughput (`maskid build`: one batch, one identity per
`add`), single enrollments (`maskid enroll`: one commit each, into the full gallery), time until
searchable (Milvus: flush + load, which builds the per-segment HNSW indexes), single-query
latency p50/p95 (one query per `search` call, k=1) and per query in batches of 32, recall@1
against exact search, and memory: the RSS the hnswlib index adds to this process, and the
milvus-lite server process's RSS (the whole server: data, indexes, Python).

Data and recall@1 as benchmarks/gallery.py (clustered descriptors, `--noise`); descriptors are
256-d by default here. `compare()` is what benchmarks/gallery.py can call for its Milvus column.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from gallery import exact_top1, make_data, rss_mb
from maskid.gallery import GalleryBackend, HnswParams, open_gallery

EMBEDDER = "bench-clustered@00000000"


def server_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def create(location: str, dim: int, hnsw: HnswParams) -> GalleryBackend:
    """A new gallery with these HNSW parameters (`open_gallery` takes none: each backend's
    own `open` does)."""
    if "://" in location:
        from maskid.gallery.milvus import MilvusGallery

        return MilvusGallery.open(location, EMBEDDER, dim, create=True, hnsw=hnsw)
    from maskid.gallery.store import Gallery

    return Gallery.open(location, EMBEDDER, dim, create=True, hnsw=hnsw)


def enroll_bulk(location: str, x: np.ndarray, ident: np.ndarray, hnsw: HnswParams) -> float:
    """Add everything in one batch, one `add` per identity; returns seconds."""
    g = create(location, x.shape[1], hnsw)
    bounds = np.flatnonzero(np.diff(ident, prepend=-1, append=-1))
    t0 = time.perf_counter()
    with g.batch():
        for s, e in itertools.pairwise(bounds):
            srcs = [
                {"path": f"/data/id{ident[s]}/{i}.jpg", "sha256": f"{i:064x}"} for i in range(s, e)
            ]
            g.add(f"id{ident[s]}", x[s:e], srcs)
    dt = time.perf_counter() - t0
    g.close()
    return dt


def enroll_single(location: str, dim: int, n: int, seed: int) -> list[float]:
    """`n` enrollments of one new person each (5 descriptors), each its own commit: seconds each."""
    g = open_gallery(location, embedder_id=EMBEDDER, dim=dim)
    rng = np.random.default_rng(seed)
    times = []
    for i in range(n):
        v = rng.standard_normal((5, dim)).astype(np.float32)
        t = time.perf_counter()
        g.add(f"new{seed}-{i}", v)
        times.append(time.perf_counter() - t)
    g.close()
    return times


def time_queries(
    location: str, q: np.ndarray, exact_id: np.ndarray, ef: int, n_timed: int
) -> dict[str, float]:
    g = open_gallery(location, embedder_id=EMBEDDER, dim=q.shape[1])
    g.ef_search = ef  # type: ignore[attr-defined]  (both backends have it; not in the protocol)
    if hasattr(g, "num_threads"):
        g.num_threads = 1  # single-query latency: one query, one thread
    for i in range(min(10, len(q))):  # warm up
        g.search(q[i], k=1)
    lat = np.empty(n_timed)
    top = []
    for i in range(n_timed):
        t = time.perf_counter()
        (res,) = g.search(q[i], k=1)
        lat[i] = time.perf_counter() - t
        top.append(int(res[0].identity[2:]))
    n_exact = min(n_timed, len(exact_id))
    batch = q[: min(len(q), 32 * 4)]
    t = time.perf_counter()
    for s in range(0, len(batch), 32):
        g.search(batch[s : s + 32], k=1)
    per_query_batched = (time.perf_counter() - t) / len(batch)
    g.close()
    return {
        "ef": ef,
        "queries": n_timed,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p95_ms": float(np.percentile(lat, 95) * 1e3),
        "batch32_ms_per_query": per_query_batched * 1e3,
        "recall_at_1": float(np.mean(np.array(top[:n_exact]) == exact_id[:n_exact])),
    }


def compare(
    n: int,
    *,
    dim: int = 256,
    per_id: int = 5,
    noise: float = 0.75,
    ef: tuple[int, ...] = (64, 256),
    hnsw: HnswParams | None = None,
    backends: tuple[str, ...] = ("directory", "milvus"),
    n_queries: int = 500,
    single_adds: int = 20,
    workdir: Path,
    milvus_uri: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Both backends at `n` descriptors: {"directory": {...}, "milvus": {...}} plus the data."""
    print(f"\n== {n:,} descriptors ({n // per_id:,} identities x {per_id}), dim {dim}", flush=True)
    x, ident, q, _ = make_data(n, dim, per_id, n_queries, noise, seed)
    exact_idx, _ = exact_top1(x, q)
    exact_id = ident[exact_idx]
    hnsw = hnsw or HnswParams()
    out: dict[str, Any] = {
        "n": n,
        "dim": dim,
        "identities": n // per_id,
        "M": hnsw.M,
        "ef_construction": hnsw.ef_construction,
    }

    if "directory" in backends:
        out["directory"] = bench_directory(
            n, x, ident, q, exact_id, hnsw, ef, n_queries, single_adds, workdir
        )
    if "milvus" in backends:
        out["milvus"] = bench_milvus(
            n, x, ident, q, exact_id, hnsw, ef, n_queries, single_adds, workdir, milvus_uri
        )
    return out


def bench_directory(
    n: int,
    x: np.ndarray,
    ident: np.ndarray,
    q: np.ndarray,
    exact_id: np.ndarray,
    hnsw: HnswParams,
    ef: tuple[int, ...],
    n_queries: int,
    single_adds: int,
    workdir: Path,
) -> dict[str, Any]:
    """The directory store (hnswlib), in this process."""
    dim = x.shape[1]
    path = workdir / f"dir-{n}"
    shutil.rmtree(path, ignore_errors=True)
    rss0 = rss_mb()
    bulk = enroll_bulk(str(path), x, ident, hnsw)
    row: dict[str, Any] = {"bulk_add_per_s": n / bulk, "build_rss_mib": rss_mb() - rss0}
    # Each store commit rewrites the index file: few of them at 1M.
    singles = enroll_single(str(path), dim, single_adds if n < 500_000 else 4, seed=1)
    row |= {"single_add_p50_ms": float(np.median(singles) * 1e3), "disk_mib": dir_mb(path)}
    row["search"] = [time_queries(str(path), q, exact_id, e, n_queries) for e in ef]
    print("directory:", json.dumps(row), flush=True)
    shutil.rmtree(path, ignore_errors=True)
    return row


def bench_milvus(
    n: int,
    x: np.ndarray,
    ident: np.ndarray,
    q: np.ndarray,
    exact_id: np.ndarray,
    hnsw: HnswParams,
    ef: tuple[int, ...],
    n_queries: int,
    single_adds: int,
    workdir: Path,
    milvus_uri: str | None,
) -> dict[str, Any]:
    """A Milvus collection: on a milvus-lite server process started here, or at `milvus_uri`."""
    dim = x.shape[1]
    server = None
    if milvus_uri is None:
        from milvus_server import MilvusServer

        server = MilvusServer(workdir / f"milvus-{n}")
        server.start()
        location = server.uri("bench")
    else:
        location = milvus_uri
    try:
        from maskid.gallery.milvus import MilvusGallery

        MilvusGallery.delete(location)
        rss0 = server_rss_mb(server.proc.pid) if server and server.proc else float("nan")
        bulk = enroll_bulk(location, x, ident, hnsw)
        row = {"bulk_add_per_s": n / bulk}
        # Searchable at full speed: segments sealed (flush) and indexed (load builds them).
        g = MilvusGallery.open(location)
        t = time.perf_counter()
        g._c.flush(g.loc.collection)
        g._c.release_collection(g.loc.collection)
        g._load()
        row["flush_and_index_s"] = time.perf_counter() - t
        g.close()
        singles = enroll_single(location, dim, single_adds, seed=1)
        row["single_add_p50_ms"] = float(np.median(singles) * 1e3)
        row["search"] = [
            time_queries(location, q, exact_id, e, n_queries if n < 500_000 else n_queries // 3)
            for e in ef
        ]
        if server and server.proc:
            row["server_rss_mib"] = server_rss_mb(server.proc.pid)
            row["server_rss_growth_mib"] = row["server_rss_mib"] - rss0
            row["disk_mib"] = dir_mb(server.data_dir)
        print("milvus:", json.dumps(row), flush=True)
    finally:
        if server:
            server.stop()
            shutil.rmtree(server.data_dir, ignore_errors=True)
    return row


def print_table(rows: list[dict[str, Any]], milvus_what: str) -> None:
    print(
        f"\n{os.cpu_count()} CPUs ({platform.machine()}); directory = hnswlib in-process, "
        f"milvus = {milvus_what}; same HNSW M/efConstruction in both; k=1, one query per call"
    )
    head = (
        f"{'entries':>9} {'efC':>4} {'backend':>9} {'bulk add/s':>10} {'enroll ms':>9} {'ef':>4} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'ms/q@32':>8} {'recall@1':>8} {'memory MiB':>10}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        for backend in ("directory", "milvus"):
            b = r.get(backend)
            if not b:
                continue
            mem = b.get("build_rss_mib", b.get("server_rss_mib", float("nan")))
            for s in b["search"]:
                print(
                    f"{r['n']:>9,} {r['ef_construction']:>4} {backend:>9} "
                    f"{b['bulk_add_per_s']:>10,.0f} "
                    f"{b['single_add_p50_ms']:>9.1f} {s['ef']:>4} {s['p50_ms']:>8.2f} "
                    f"{s['p95_ms']:>8.2f} {s['batch32_ms_per_query']:>8.2f} "
                    f"{s['recall_at_1']:>8.4f} {mem:>10,.0f}"
                )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--quick", action="store_true", help="20k descriptors, 200 queries")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--per-id", type=int, default=5)
    ap.add_argument("--noise", type=float, default=0.75)
    ap.add_argument("--ef", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--M", type=int, default=HnswParams.M)
    ap.add_argument(
        "--ef-construction",
        type=int,
        default=HnswParams.ef_construction,
        help="build effort, both backends (lower: faster builds, lower recall)",
    )
    ap.add_argument("--queries", type=int, default=500, help="single queries timed (1M: a third)")
    ap.add_argument("--single-adds", type=int, default=20, help="one-commit enrollments timed")
    ap.add_argument(
        "--backends", nargs="+", default=["directory", "milvus"], choices=["directory", "milvus"]
    )
    ap.add_argument("--milvus-uri", default=None, help="use this server instead of milvus-lite")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.queries = [20_000], 200
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="maskid-bench-milvus-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in args.sizes:
            rows.append(
                compare(
                    n,
                    dim=args.dim,
                    per_id=args.per_id,
                    noise=args.noise,
                    ef=tuple(args.ef),
                    hnsw=HnswParams(M=args.M, ef_construction=args.ef_construction),
                    backends=tuple(args.backends),
                    n_queries=args.queries,
                    single_adds=args.single_adds,
                    workdir=workdir,
                    milvus_uri=args.milvus_uri,
                )
            )
            if args.json:  # after each size: a 1M run is long
                args.json.write_text(
                    json.dumps({"cpus": os.cpu_count(), "results": rows}, indent=1)
                )
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    import milvus_lite
    import pymilvus

    what = (
        f"server at {args.milvus_uri}"
        if args.milvus_uri
        else f"milvus-lite {milvus_lite.__version__} server process"
    )
    print_table(rows, f"{what}, pymilvus {pymilvus.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
