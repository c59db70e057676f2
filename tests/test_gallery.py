"""The gallery store: real hnswlib, real files, real processes (random vectors, no faces)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import numpy as np
import pytest

from gallery_worker import DIM, EMBEDDER, source_for, vector_for
from maskid.errors import GalleryError, UnknownIdentityError, UsageError
from maskid.gallery.store import CRASH_POINTS, FORMAT_VERSION, Gallery, validate_name

WORKER = Path(__file__).with_name("gallery_worker.py")


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def new_gallery(path: Path) -> Gallery:
    return Gallery.open(path, embedder_id=EMBEDDER, dim=DIM, create=True)


def worker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def gdir(tmp_path: Path) -> Path:
    return tmp_path / "gallery"


@pytest.fixture
def people(gdir: Path) -> tuple[Gallery, dict[str, np.ndarray]]:
    """A gallery of 6 identities, each with 4 noisy samples around its own centre."""
    rng = np.random.default_rng(1)
    g = new_gallery(gdir)
    centres = {f"person {i}": unit(rng, 1)[0] for i in range(6)}
    with g.batch():
        for name, c in centres.items():
            g.add(name, c + 0.3 * unit(rng, 4))
    return g, centres


# -- basic behaviour ---------------------------------------------------------------------------
def test_add_search_remove_reload(people: tuple[Gallery, dict[str, np.ndarray]], gdir: Path):
    g, centres = people
    assert len(g) == 24
    assert g.identities() == {name: 4 for name in centres}
    queries = np.stack(list(centres.values()))
    results = g.search(queries, k=3)
    assert [r[0].identity for r in results] == list(centres)
    for r in results:
        assert len(r) == 3
        assert len({m.identity for m in r}) == 3  # one entry per identity
        scores = [m.score for m in r]
        assert scores == sorted(scores, reverse=True)
        assert 0.9 < scores[0] <= 1.0 + 1e-5

    assert g.remove("person 2") == 4
    assert "person 2" not in g.identities()
    assert all(m.identity != "person 2" for m in g.search(centres["person 2"], k=6)[0])

    g2 = Gallery.open(gdir, embedder_id=EMBEDDER, dim=DIM)
    assert g2.identities() == g.identities()
    assert len(g2) == 20
    assert g2.search(centres["person 3"], k=1)[0][0].identity == "person 3"

    # Re-adding a removed name works and survives a reload.
    g2.add("person 2", centres["person 2"])
    g3 = Gallery.open(gdir)
    assert g3.identities()["person 2"] == 1
    assert g3.search(centres["person 2"], k=1)[0][0].identity == "person 2"


def test_search_returns_best_score_per_identity(gdir: Path):
    rng = np.random.default_rng(2)
    g = new_gallery(gdir)
    q = unit(rng, 1)[0]
    # "near" has many entries close to q; "far" has one entry a bit further away.
    near = q + 0.05 * unit(rng, 10)
    far = q + 0.5 * unit(rng, 1)
    g.add("near", near)
    g.add("far", far)
    g.add("other", unit(rng, 3))
    (res,) = g.search(q, k=5)
    assert [m.identity for m in res][:2] == ["near", "far"]
    assert len(res) == 3  # only 3 identities exist
    best = max(float(v @ q / np.linalg.norm(v)) for v in near)
    assert res[0].score == pytest.approx(best, abs=1e-5)
    assert res[1].score == pytest.approx(float(far[0] @ q / np.linalg.norm(far[0])), abs=1e-5)


def test_k_larger_than_neighbours_fetched(gdir: Path):
    """k identities are returned even when one identity owns all the nearest entries."""
    rng = np.random.default_rng(3)
    g = new_gallery(gdir)
    q = unit(rng, 1)[0]
    g.add("crowd", q + 0.01 * unit(rng, 200))
    with g.batch():
        for i in range(8):
            g.add(f"x{i}", unit(rng, 1))
    (res,) = g.search(q, k=5)
    assert len(res) == 5 and res[0].identity == "crowd"


def test_batch_is_one_commit_and_discards_on_error(gdir: Path):
    rng = np.random.default_rng(4)
    g = new_gallery(gdir)
    gen = g.generation
    labels = g.add_many((f"p{i}", unit(rng, 2), None) for i in range(50))
    assert g.generation == gen + 1
    assert len({lab for ls in labels for lab in ls}) == 100
    with pytest.raises(RuntimeError), g.batch():
        g.add("doomed", unit(rng, 1))
        g.remove("p0")
        raise RuntimeError("build failed half way")
    assert g.generation == gen + 1
    assert "doomed" not in g.identities() and "p0" in g.identities()
    assert Gallery.open(gdir).identities() == g.identities()


def test_growth_beyond_initial_capacity(gdir: Path):
    rng = np.random.default_rng(5)
    g = new_gallery(gdir)
    vecs = unit(rng, 3000)
    with g.batch():
        for i in range(0, 3000, 10):
            g.add(f"id{i // 10}", vecs[i : i + 10])
    g2 = Gallery.open(gdir)
    assert len(g2) == 3000 and len(g2.identities()) == 300
    hits = g2.search(vecs[::97], k=1)
    assert [h[0].identity for h in hits] == [f"id{i // 10}" for i in range(0, 3000, 97)]


def test_has_source(gdir: Path):
    g = new_gallery(gdir)
    g.add("ann", vector_for("ann"), [source_for("ann")])
    sha = source_for("ann")["sha256"]
    assert g.has_source(sha) and g.has_source(sha.upper())
    assert not g.has_source(source_for("bob")["sha256"])
    assert Gallery.open(gdir).has_source(sha)
    g.remove("ann")
    assert not Gallery.open(gdir).has_source(sha)


def test_many_deletions_still_searchable(gdir: Path):
    rng = np.random.default_rng(6)
    g = new_gallery(gdir)
    vecs = unit(rng, 400)
    g.add_many((f"p{i}", vecs[i], None) for i in range(400))
    with g.batch():
        for i in range(399):
            g.remove(f"p{i}")
    assert g.search(vecs[0], k=3) == g.search(vecs[0], k=1)
    assert g.search(vecs[0], k=3)[0][0].identity == "p399"
    assert Gallery.open(gdir).identities() == {"p399": 1}


def test_stale_object_sees_other_writers(gdir: Path):
    """Two handles (as two processes would hold): updates apply to the latest committed state."""
    a = new_gallery(gdir)
    b = Gallery.open(gdir)
    la = a.add("x", vector_for("x"))
    lb = b.add("y", vector_for("y"))  # b loaded before a's commit: replayed on top of it
    assert set(la).isdisjoint(lb)
    assert Gallery.open(gdir).identities() == {"x": 1, "y": 1} == b.identities()
    assert a.identities() == {"x": 1}  # a snapshot until refreshed or updated
    assert a.remove("y") == 1  # a did not know "y" yet: it refreshes before giving up
    assert b.refresh() and b.identities() == {"x": 1}
    assert b.search(vector_for("x"), k=2)[0][0].identity == "x"


# -- errors ------------------------------------------------------------------------------------
def test_empty_gallery_search(gdir: Path):
    g = new_gallery(gdir)
    with pytest.raises(GalleryError, match="empty"):
        g.search(vector_for("x"))
    g.add("x", vector_for("x"))
    g.remove("x")
    with pytest.raises(GalleryError, match="empty"):
        Gallery.open(gdir).search(vector_for("x"))


def test_missing_gallery(gdir: Path):
    with pytest.raises(GalleryError, match=r"no gallery at .*maskid build DATASET"):
        Gallery.open(gdir)
    assert not Gallery.exists(gdir)
    with pytest.raises(UsageError):
        Gallery.open(gdir, create=True)  # needs embedder_id and dim


def test_refuses_to_create_in_foreign_directory(tmp_path: Path):
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(GalleryError, match="not empty"):
        Gallery.open(tmp_path, embedder_id=EMBEDDER, dim=DIM, create=True)


def test_embedder_mismatch(gdir: Path):
    new_gallery(gdir).add("a", vector_for("a"))
    with pytest.raises(GalleryError) as e:
        Gallery.open(gdir, embedder_id="arcface-r50@deadbeef", dim=DIM)
    msg = str(e.value)
    assert EMBEDDER in msg and "arcface-r50@deadbeef" in msg and "maskid build" in msg
    with pytest.raises(GalleryError, match="512-d"):
        Gallery.open(gdir, embedder_id=EMBEDDER, dim=512)
    with pytest.raises(GalleryError, match="64-d"):
        Gallery.open(gdir).add("b", np.ones(64))


def test_future_format_version(gdir: Path):
    new_gallery(gdir)
    m = json.loads((gdir / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (gdir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(GalleryError, match="newer than this maskid understands"):
        Gallery.open(gdir)


@pytest.mark.parametrize(
    "name",
    ["", " ann", "ann ", "a/b", "a\\b", "a\nb", "a\x00b", "a\tb", "x" * 129, 42],
)
def test_invalid_names(gdir: Path, name: object):
    g = new_gallery(gdir)
    with pytest.raises(UsageError):
        g.add(name, vector_for("v"))  # type: ignore[arg-type]
    assert len(g) == 0


def test_valid_names():
    assert validate_name("Zoë O'Brien-Ng") == "Zoë O'Brien-Ng"
    assert validate_name("x" * 128)
    assert validate_name("e\u0301") == "\u00e9"  # stored in NFC


def test_remove_unknown(people: tuple[Gallery, dict[str, np.ndarray]]):
    g, _ = people
    with pytest.raises(UnknownIdentityError, match="nobody"):
        g.remove("nobody")


@pytest.mark.parametrize(
    "vectors",
    [np.full((1, DIM), np.nan), np.zeros((1, DIM)), np.ones((0, DIM)), np.ones((2, 3, DIM))],
    ids=["nan", "zero", "none", "3d"],
)
def test_invalid_vectors(gdir: Path, vectors: np.ndarray):
    g = new_gallery(gdir)
    with pytest.raises(UsageError):
        g.add("ann", vectors)


def test_sources_must_match_vectors(gdir: Path):
    g = new_gallery(gdir)
    with pytest.raises(UsageError, match="one per vector"):
        g.add("ann", np.ones((2, DIM)), [source_for("ann")])
    with pytest.raises(UsageError, match="hex"):
        g.add("ann", np.ones((1, DIM)), [{"path": "a.jpg", "sha256": "nope"}])


def _corrupt_file(gdir: Path, kind: str, how: str) -> None:
    m = json.loads((gdir / "manifest.json").read_text())
    target = gdir / ("manifest.json" if kind == "manifest" else m["files"][kind]["name"])
    data = target.read_bytes()
    if how == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        i = len(data) // 2
        target.write_bytes(data[:i] + bytes([data[i] ^ 0x55]) + data[i + 1 :])
    elif how == "delete":
        target.unlink()
    elif how == "garbage":
        target.write_bytes(os.urandom(len(data)))


@pytest.mark.parametrize("kind", ["manifest", "index", "meta", "sources"])
@pytest.mark.parametrize("how", ["truncate", "flip", "delete", "garbage"])
def test_corrupt_files_raise_gallery_error(
    people: tuple[Gallery, dict[str, np.ndarray]], gdir: Path, kind: str, how: str
):
    _corrupt_file(gdir, kind, how)
    with pytest.raises(GalleryError):
        g = Gallery.open(gdir)
        g.has_source(source_for("x")["sha256"])  # sources are read lazily
        g.add("new", vector_for("new"))


def test_corrupt_index_never_reaches_hnswlib(people: tuple[Gallery, dict[str, np.ndarray]]):
    """A corrupt hnswlib file can crash the process, so it must be rejected before loading."""
    _, gdir = people[0], people[0].path
    _corrupt_file(gdir, "index", "flip")
    r = subprocess.run(
        [sys.executable, str(WORKER), "identities", str(gdir)], capture_output=True, text=True
    )
    assert r.returncode == 5, r.stderr
    assert "corrupt" in r.stderr and "Traceback" not in r.stderr


# -- processes ---------------------------------------------------------------------------------
def test_persistence_across_processes(gdir: Path, tmp_path: Path):
    r = worker("enroll", str(gdir), "alice", "3")
    assert r.returncode == 0, r.stderr
    g = Gallery.open(gdir, embedder_id=EMBEDDER, dim=DIM)
    assert g.identities() == {"alice-0": 1, "alice-1": 1, "alice-2": 1}
    assert g.search(vector_for("alice-1"), k=1)[0][0].identity == "alice-1"
    assert g.has_source(source_for("alice-2")["sha256"])

    g.remove("alice-0")
    g.add("bob", vector_for("bob"))
    r = worker("identities", str(gdir))
    assert json.loads(r.stdout) == {"alice-1": 1, "alice-2": 1, "bob": 1}
    np.save(tmp_path / "q.npy", np.concatenate([vector_for("bob"), vector_for("alice-2")]))
    r = worker("search", str(gdir), str(tmp_path / "q.npy"))
    assert json.loads(r.stdout) == ["bob", "alice-2"]


def test_lock_timeout_is_a_gallery_error(gdir: Path):
    g = Gallery.open(gdir, embedder_id=EMBEDDER, dim=DIM, create=True, lock_timeout=0.2)
    with filelock.FileLock(str(gdir / ".lock")), pytest.raises(GalleryError, match="locked"):
        g.add("ann", vector_for("ann"))
    g.add("ann", vector_for("ann"))  # works once the lock is free
    assert Gallery.open(gdir).identities() == {"ann": 1}


def test_concurrent_writers_lose_nothing(gdir: Path):
    new_gallery(gdir)
    cmd = [sys.executable, str(WORKER), "enroll", str(gdir)]
    procs = [subprocess.Popen([*cmd, p, "50"], stdout=subprocess.PIPE, text=True) for p in "ab"]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum(line.startswith("OK ") for out in outs for line in out.splitlines()) == 100
    g = Gallery.open(gdir)
    assert len(g) == 100
    assert set(g.identities()) == {f"{p}-{i}" for p in "ab" for i in range(50)}
    # Stale generations were cleaned up: one of each file remains.
    assert sorted(p.name.split("-")[0] for p in gdir.iterdir() if "-" in p.name) == [
        "index",
        "meta",
        "sources",
    ]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_at_each_commit_step(gdir: Path, point: str):
    g = new_gallery(gdir)
    g.add_many((n, vector_for(n), [source_for(n)]) for n in ("pre-0", "pre-1"))
    r = worker("enroll", str(gdir), "victim", "1", env={"MASKID_GALLERY_CRASH_AT": point})
    assert r.returncode == -signal.SIGKILL
    ids = Gallery.open(gdir).identities()
    assert {"pre-0", "pre-1"} <= set(ids)
    committed = point in ("manifest-renamed", "cleanup")
    assert ("victim-0" in ids) == committed
    # The next writer (here, one that loaded the gallery before the crash) carries on.
    g.add("post-0", vector_for("post-0"))
    ids = Gallery.open(gdir).identities()
    assert {"pre-0", "pre-1", "post-0"} <= set(ids)
    assert ("victim-0" in ids) == committed
    assert not [p for p in gdir.iterdir() if p.name.endswith(".tmp")]


def test_kill_9_at_random_moments(gdir: Path):
    """SIGKILL an enrolling process 50 times: every reported enrollment survives, files load."""
    rnd = random.Random(7)
    reported: set[str] = set()
    t0 = time.monotonic()
    for round_ in range(50):
        p = subprocess.Popen(
            [sys.executable, str(WORKER), "enroll", str(gdir), f"r{round_}", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "READY"
        time.sleep(rnd.uniform(0.0, 0.15))  # a commit takes ~5-30 ms
        p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL, err
        reported |= {line[3:] for line in out.splitlines() if line.startswith("OK ")}
        ids = Gallery.open(gdir).identities()
        missing = reported - set(ids)
        assert not missing, f"round {round_}: lost {sorted(missing)[:5]}"
    g = Gallery.open(gdir)
    print(f"{len(reported)} enrollments reported OK over 50 kills; all present")
    assert len(reported) > 50  # the kills did land among commits
    for name in rnd.sample(sorted(reported), 10):
        assert g.search(vector_for(name), k=1)[0][0].identity == name
    assert time.monotonic() - t0 < 60
