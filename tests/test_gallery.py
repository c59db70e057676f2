"""The directory gallery store: real hnswlib, real files, real processes (random vectors, no
faces). What every backend promises (search, sources, empty and missing galleries, another
embedder's gallery) is tested once for all backends in tests/test_gallery_api.py."""

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
from maskid.gallery.store import (
    APPEND_CRASH_POINTS,
    CRASH_POINTS,
    FORMAT_VERSION,
    REWRITE_CRASH_POINTS,
    Gallery,
    validate_name,
)

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
def test_refuses_to_create_in_foreign_directory(tmp_path: Path):
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(GalleryError, match="not empty"):
        Gallery.open(tmp_path, embedder_id=EMBEDDER, dim=DIM, create=True)


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
        "journal",
        "meta",
        "sources",
    ]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_crash_at_each_commit_step(gdir: Path, point: str):
    g = new_gallery(gdir)
    g.add_many((n, vector_for(n), [source_for(n)]) for n in ("pre-0", "pre-1"))
    env = {"MASKID_GALLERY_CRASH_AT": point}
    if point in REWRITE_CRASH_POINTS:
        env["GALLERY_WORKER_REWRITE"] = "1"  # the victim's commit writes a new generation
    r = worker("enroll", str(gdir), "victim", "1", env=env)
    assert r.returncode == -signal.SIGKILL
    ids = Gallery.open(gdir).identities()
    assert {"pre-0", "pre-1"} <= set(ids)
    # An appended record is committed once whole (the page cache survives a SIGKILL).
    committed = point in ("manifest-renamed", "cleanup", "journal-written", "journal-synced")
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


# -- journal -----------------------------------------------------------------------------------
def manifest_of(gdir: Path) -> dict:
    return json.loads((gdir / "manifest.json").read_text())


def journal_of(gdir: Path) -> Path:
    return gdir / manifest_of(gdir)["journal"]["name"]


def enroll_each(g: Gallery, names: list[str]) -> None:
    """One commit per name, as separate enrollments make."""
    for n in names:
        g.add(n, vector_for(n), [source_for(n)])


def test_commit_appends_without_rewriting_the_base(gdir: Path):
    g = new_gallery(gdir)
    enroll_each(g, ["base"])
    base = manifest_of(gdir)
    base_files = {p.name: p.stat().st_mtime_ns for p in gdir.iterdir() if p.suffix != ".log"}
    gen = g.generation
    sizes = []
    for i, n in enumerate(["a", "b", "c"]):
        enroll_each(g, [n])
        assert g.generation == gen + i + 1  # one commit each
        sizes.append(journal_of(gdir).stat().st_size)
    assert sizes == sorted(sizes) and sizes[0] > 0
    # The manifest and the base files are untouched: each commit was one appended record.
    assert manifest_of(gdir) == base
    assert {p.name: p.stat().st_mtime_ns for p in gdir.iterdir() if p.suffix != ".log"} == (
        base_files
    )
    g2 = Gallery.open(gdir)
    assert g2.identities() == {"a": 1, "b": 1, "base": 1, "c": 1}
    assert g2.generation == g.generation
    assert g2.search(vector_for("b"), k=1)[0][0].identity == "b"
    assert g2.has_source(source_for("c")["sha256"])
    g2.remove("a")
    assert Gallery.open(gdir).identities() == {"b": 1, "base": 1, "c": 1}
    assert Gallery.read_identities(gdir)[0] == {"b": 1, "base": 1, "c": 1}


def test_torn_tail_is_ignored_then_cut(gdir: Path):
    g = new_gallery(gdir)
    enroll_each(g, ["a", "b"])
    journal = journal_of(gdir)
    whole = journal.read_bytes()
    enroll_each(g, ["c"])
    record = journal.read_bytes()[len(whole) :]
    for cut in (1, 20, len(record) // 2, len(record) - 1):  # a writer died mid-append
        journal.write_bytes(whole + record[:cut])
        assert Gallery.open(gdir).identities() == {"a": 1, "b": 1}
        assert Gallery.read_identities(gdir)[0] == {"a": 1, "b": 1}
    journal.write_bytes(whole + bytes(300))  # zeros: a lost write after a power cut
    assert Gallery.open(gdir).identities() == {"a": 1, "b": 1}
    # The next writer cuts the tail and appends after the last whole record.
    g2 = Gallery.open(gdir, embedder_id=EMBEDDER, dim=DIM, create=True)
    enroll_each(g2, ["d"])
    assert journal.read_bytes()[: len(whole)] == whole
    assert Gallery.open(gdir).identities() == {"a": 1, "b": 1, "d": 1}
    assert Gallery.open(gdir).search(vector_for("d"), k=1)[0][0].identity == "d"


def test_damaged_journal_record_is_corruption(gdir: Path):
    g = new_gallery(gdir)
    enroll_each(g, ["a", "b", "c"])
    journal = journal_of(gdir)
    whole = journal.read_bytes()

    def damage(at: int, mask: int = 0x55) -> None:
        data = bytearray(journal.read_bytes())
        data[at] ^= mask
        journal.write_bytes(bytes(data))

    damage(60)  # inside the first record, with whole records after it
    with pytest.raises(GalleryError, match=r"corrupt.*journal"):
        Gallery.open(gdir)
    with pytest.raises(GalleryError, match="corrupt"):
        Gallery.read_identities(gdir)
    with pytest.raises(GalleryError, match="corrupt"):
        Gallery.open(gdir, embedder_id=EMBEDDER, dim=DIM, create=True)  # a writer too
    damage(60)
    # A writer catching up on records appended since it loaded refuses a damaged one too.
    h = Gallery.open(gdir, embedder_id=EMBEDDER, dim=DIM, create=True)
    enroll_each(g, ["d", "e"])
    damage(len(whole) + 60)  # inside d's record
    with pytest.raises(GalleryError, match="corrupt"):
        h.add("f", vector_for("f"))
    damage(len(whole) + 60)
    damage(5, 0x01)  # a damaged length is not taken for a torn tail (losing b to e)
    with pytest.raises(GalleryError, match=r"corrupt.*bad record header"):
        Gallery.open(gdir)
    damage(5, 0x01)
    assert Gallery.open(gdir).identities() == {n: 1 for n in "abcde"}
    journal.unlink()
    with pytest.raises(GalleryError, match="missing"):
        Gallery.open(gdir)


def test_compaction_writes_a_new_generation(gdir: Path):
    g = new_gallery(gdir)
    enroll_each(g, ["a"])
    record = journal_of(gdir).stat().st_size
    g.journal_limit = 3 * record + record // 2  # room for 3 records
    first = manifest_of(gdir)
    enroll_each(g, ["b", "c"])
    g.remove("a")
    assert manifest_of(gdir)["generation"] == first["generation"]
    enroll_each(g, ["d"])  # the journal is full: compact
    m = manifest_of(gdir)
    assert m["generation"] == first["generation"] + 1
    assert m["format_version"] == FORMAT_VERSION and m["commit"] == g.generation
    assert journal_of(gdir).stat().st_size == 0
    # Only the new generation's files remain, and they hold everything.
    assert sorted(p.name for p in gdir.iterdir() if "-" in p.name) == sorted(
        [*(f["name"] for f in m["files"].values()), m["journal"]["name"]]
    )
    assert m["count"] == 3 and m["identities"] == 3
    g2 = Gallery.open(gdir)
    assert g2.identities() == {"b": 1, "c": 1, "d": 1}
    assert g2.generation == g.generation
    assert [g2.search(vector_for(n), k=1)[0][0].identity for n in "bcd"] == list("bcd")
    assert g2.has_source(source_for("b")["sha256"]) and not g2.has_source(source_for("a")["sha256"])
    enroll_each(g2, ["e"])  # and appends to the new journal
    assert Gallery.open(gdir).identities() == {"b": 1, "c": 1, "d": 1, "e": 1}


@pytest.mark.parametrize("point", REWRITE_CRASH_POINTS)
def test_crash_during_compaction(gdir: Path, point: str):
    """Compaction crashes: the journaled enrollments survive either way."""
    g = new_gallery(gdir)
    journaled = [f"j-{i}" for i in range(4)]
    enroll_each(g, journaled)
    env = {"MASKID_GALLERY_CRASH_AT": point, "GALLERY_WORKER_REWRITE": "1"}
    r = worker("enroll", str(gdir), "victim", "1", env=env)
    assert r.returncode == -signal.SIGKILL
    committed = point in ("manifest-renamed", "cleanup")
    ids = set(Gallery.open(gdir).identities())
    assert set(journaled) <= ids and ("victim-0" in ids) == committed
    assert (manifest_of(gdir)["generation"] == 2) == committed
    # A writer that loaded before the crash carries on (catching up or reloading).
    enroll_each(g, ["post"])
    g2 = Gallery.open(gdir)
    assert set(g2.identities()) == {*journaled, "post"} | ({"victim-0"} if committed else set())
    for n in [*journaled, "post"]:
        assert g2.search(vector_for(n), k=1)[0][0].identity == n
    assert not [p for p in gdir.iterdir() if p.name.endswith(".tmp")]


def test_other_process_sees_appended_enrollment(gdir: Path, tmp_path: Path):
    g = new_gallery(gdir)
    enroll_each(g, ["local"])
    reader = Gallery.open(gdir)
    assert reader.search(vector_for("local"), k=1)[0][0].identity == "local"
    r = worker("enroll", str(gdir), "remote", "2")
    assert r.returncode == 0, r.stderr
    assert manifest_of(gdir)["generation"] == 1  # appended, not rewritten
    assert reader.identities() == {"local": 1}  # a snapshot until refreshed
    assert reader.refresh()
    assert not reader.refresh()  # nothing new
    assert reader.identities() == {"local": 1, "remote-0": 1, "remote-1": 1}
    assert reader.search(vector_for("remote-1"), k=1)[0][0].identity == "remote-1"
    assert reader.has_source(source_for("remote-0")["sha256"])
    # The writer that was open all along catches up before its next commit.
    enroll_each(g, ["local-2"])
    assert set(g.identities()) == {"local", "local-2", "remote-0", "remote-1"}
    r = worker("identities", str(gdir))
    assert json.loads(r.stdout) == {"local": 1, "local-2": 1, "remote-0": 1, "remote-1": 1}
    np.save(tmp_path / "q.npy", np.concatenate([vector_for("remote-0"), vector_for("local-2")]))
    r = worker("search", str(gdir), str(tmp_path / "q.npy"))
    assert json.loads(r.stdout) == ["remote-0", "local-2"]


def test_append_crash_points_leave_a_loadable_journal(gdir: Path):
    """After each kind of append crash the next writer appends cleanly after it."""
    g = new_gallery(gdir)
    for i, point in enumerate(APPEND_CRASH_POINTS):
        r = worker("enroll", str(gdir), f"v{i}", "1", env={"MASKID_GALLERY_CRASH_AT": point})
        assert r.returncode == -signal.SIGKILL
        enroll_each(g, [f"after-{i}"])
    ids = set(Gallery.open(gdir).identities())
    assert ids == {"after-0", "after-1", "after-2", "v1-0", "v2-0"}  # v0: torn, never committed


def test_read_identities_needs_no_index(gdir: Path):
    g = new_gallery(gdir)
    enroll_each(g, ["a", "b"])
    g.remove("a")
    index = gdir / manifest_of(gdir)["files"]["index"]["name"]
    index.write_bytes(os.urandom(index.stat().st_size))  # never read: never detected
    assert Gallery.read_identities(gdir)[0] == {"b": 1}
    with pytest.raises(GalleryError, match="corrupt"):
        Gallery.open(gdir)


def test_format_1_is_read_and_migrated(gdir: Path):
    """A format-1 gallery (no journal) opens as is; its first commit writes format 2."""
    g = new_gallery(gdir)
    g.journal_limit = 0
    enroll_each(g, ["old-0", "old-1"])
    m = manifest_of(gdir)
    journal_of(gdir).unlink()
    for key in ("journal", "commit"):
        del m[key]
    m["format_version"] = 1
    (gdir / "manifest.json").write_text(json.dumps(m))
    old = Gallery.open(gdir)
    assert old.identities() == {"old-0": 1, "old-1": 1}
    assert old.generation == m["generation"]
    assert old.search(vector_for("old-1"), k=1)[0][0].identity == "old-1"
    assert Gallery.read_identities(gdir)[0] == {"old-0": 1, "old-1": 1}
    enroll_each(old, ["new"])
    m2 = manifest_of(gdir)
    assert m2["format_version"] == FORMAT_VERSION == 2
    assert m2["generation"] == m["generation"] + 1 and journal_of(gdir).exists()
    g2 = Gallery.open(gdir)
    assert g2.identities() == {"new": 1, "old-0": 1, "old-1": 1}
    assert g2.has_source(source_for("old-0")["sha256"])
    enroll_each(g2, ["newer"])  # now appended
    assert manifest_of(gdir)["generation"] == m2["generation"]
    assert len(Gallery.open(gdir)) == 4


def test_conflicting_batch_that_changed_the_index_is_replayed(gdir: Path):
    """A batch that removed or searched (so changed hnswlib) is replayed on a full reload when
    another writer appended first; labels stay unique."""
    a = new_gallery(gdir)
    enroll_each(a, ["z", "w"])
    b = Gallery.open(gdir)
    la = a.add("x", vector_for("x"))
    with b.batch():
        lb = b.add("y", vector_for("y"))
        assert b.search(vector_for("y"), k=1)[0][0].identity == "y"
        b.remove("z")
    assert set(la).isdisjoint(lb)
    assert b.identities() == {"w": 1, "x": 1, "y": 1} == Gallery.open(gdir).identities()
    assert [b.search(vector_for(n), k=1)[0][0].identity for n in "wxy"] == list("wxy")
    assert a.refresh() and a.identities() == b.identities()


def test_journal_budget_compacts_by_itself(gdir: Path):
    """With the default policy the journal stays within its budget: commits compact when due,
    and a batch larger than the budget writes a generation at once."""
    from maskid.gallery.store import JOURNAL_MIN_BYTES

    rng = np.random.default_rng(8)
    g = new_gallery(gdir)
    first = manifest_of(gdir)["generation"]
    for i in range(12):  # ~26 KB records: past the 256 KiB minimum budget
        g.add(f"p{i}", unit(rng, 50))
        assert journal_of(gdir).stat().st_size <= JOURNAL_MIN_BYTES
    assert manifest_of(gdir)["generation"] == first + 1
    g.add("big", unit(rng, JOURNAL_MIN_BYTES // (4 * DIM) + 1))
    assert manifest_of(gdir)["generation"] == first + 2
    assert journal_of(gdir).stat().st_size == 0
    assert len(Gallery.open(gdir)) == 12 * 50 + JOURNAL_MIN_BYTES // (4 * DIM) + 1
