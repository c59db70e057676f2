"""The gallery interface, once for every backend: the directory store (hnswlib) and a Milvus
collection on a real milvus-lite server process (random vectors, no faces), opened by location
through `maskid.gallery` as the pipeline and the CLI do. Backend-specific behaviour (the store's
files and commits, Milvus's server crash) is tested beside the shared suite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from gallery_worker import DIM, EMBEDDER, source_for, vector_for
from maskid.errors import GalleryError, UnknownIdentityError, UsageError
from maskid.gallery import (
    GalleryBackend,
    delete_gallery,
    gallery_exists,
    open_gallery,
    read_identities,
)
from milvus_server import MilvusServer, free_port, missing_reason

WORKER = Path(__file__).with_name("gallery_api_worker.py")


def require_milvus() -> None:
    reason = missing_reason()
    if reason:
        if os.environ.get("MASKID_REQUIRE_MILVUS"):  # CI installs the extra: a skip would hide it
            pytest.fail(reason + " but MASKID_REQUIRE_MILVUS is set")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """One server for the session; each test gets its own collection."""
    require_milvus()
    server = MilvusServer(tmp_path_factory.mktemp("milvus") / "data")
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["directory", "milvus"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A location with no gallery yet, for each backend."""
    if request.param == "directory":
        return str(tmp_path / "gallery")
    server: MilvusServer = request.getfixturevalue("milvus_server")
    return server.uri(f"t_{uuid.uuid4().hex[:16]}")


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def new_gallery(location: str) -> GalleryBackend:
    return open_gallery(location, embedder_id=EMBEDDER, dim=DIM, create=True)


def worker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- the shared interface ------------------------------------------------------------------------
def test_add_search_remove_reopen(location: str):
    rng = np.random.default_rng(1)
    g = new_gallery(location)
    centres = {f"person {i}": unit(rng, 1)[0] for i in range(6)}
    with g.batch():
        for name, c in centres.items():
            g.add(name, c + 0.3 * unit(rng, 4))
        assert g.count("person 0") == 4  # as the batch has it
    assert len(g) == 24
    assert g.identities() == {name: 4 for name in centres}
    assert [g.count(name) for name in centres] == [4] * 6 and g.count("nobody") == 0
    results = g.search(np.stack(list(centres.values())), k=3)
    assert [r[0].identity for r in results] == list(centres)
    for r in results:
        assert len(r) == 3 and len({m.identity for m in r}) == 3  # one entry per identity
        scores = [m.score for m in r]
        assert scores == sorted(scores, reverse=True)
        assert 0.9 < scores[0] <= 1.0 + 1e-5

    assert g.remove("person 2") == 4
    assert "person 2" not in g.identities() and g.count("person 2") == 0
    assert all(m.identity != "person 2" for m in g.search(centres["person 2"], k=6)[0])

    g2 = open_gallery(location, embedder_id=EMBEDDER, dim=DIM)
    assert g2.identities() == g.identities() == read_identities(location)
    assert len(g2) == 20
    assert g2.search(centres["person 3"], k=1)[0][0].identity == "person 3"
    g2.add("person 2", centres["person 2"])  # a removed name can come back
    g3 = open_gallery(location)
    assert g3.identities()["person 2"] == 1 == g3.count("person 2")
    assert g3.search(centres["person 2"], k=1)[0][0].identity == "person 2"
    for x in (g, g2, g3):
        x.close()


def test_an_identity_scores_its_best_descriptor(location: str):
    rng = np.random.default_rng(2)
    g = new_gallery(location)
    q = unit(rng, 1)[0]
    near = q + 0.05 * unit(rng, 10)
    far = q + 0.5 * unit(rng, 1)
    g.add_many([("near", near, None), ("far", far, None), ("other", unit(rng, 3), None)])
    (res,) = g.search(q, k=5)
    assert [m.identity for m in res][:2] == ["near", "far"]
    assert len(res) == 3  # only 3 identities exist
    best = max(float(v @ q / np.linalg.norm(v)) for v in near)
    assert res[0].score == pytest.approx(best, abs=1e-5)
    assert res[1].score == pytest.approx(float(far[0] @ q / np.linalg.norm(far[0])), abs=1e-5)


def test_k_identities_when_one_owns_all_the_nearest_entries(location: str):
    rng = np.random.default_rng(3)
    g = new_gallery(location)
    q = unit(rng, 1)[0]
    g.add("crowd", q + 0.01 * unit(rng, 200))
    g.add_many((f"x{i}", unit(rng, 1), None) for i in range(8))
    (res,) = g.search(q, k=5)
    assert len(res) == 5 and res[0].identity == "crowd"


def test_a_failed_batch_changes_nothing(location: str):
    rng = np.random.default_rng(4)
    g = new_gallery(location)
    labels = g.add_many((f"p{i}", unit(rng, 2), None) for i in range(50))
    assert len({lab for ls in labels for lab in ls}) == 100
    with pytest.raises(RuntimeError), g.batch():
        g.add("doomed", unit(rng, 1))
        assert g.remove("p0") == 2
        assert "doomed" in g.identities() and "p0" not in g.identities()  # as the batch has it
        raise RuntimeError("build failed half way")
    assert "doomed" not in g.identities() and "p0" in g.identities()
    assert open_gallery(location).identities() == g.identities()
    assert len(g) == 100


def test_has_source(location: str):
    g = new_gallery(location)
    sha = source_for("ann")["sha256"]
    with g.batch():
        g.add("ann", vector_for("ann"), [source_for("ann")])
        assert g.has_source(sha)  # a build skips a photo it has just added
    assert g.has_source(sha) and g.has_source(sha.upper())
    assert not g.has_source(source_for("bob")["sha256"])
    assert open_gallery(location).has_source(sha)
    g.remove("ann")
    assert not open_gallery(location).has_source(sha)


def test_many_deletions_still_searchable(location: str):
    rng = np.random.default_rng(6)
    g = new_gallery(location)
    vecs = unit(rng, 300)
    g.add_many((f"p{i}", vecs[i], None) for i in range(300))
    with g.batch():
        for i in range(299):
            g.remove(f"p{i}")
    assert g.search(vecs[0], k=3) == g.search(vecs[0], k=1)
    assert g.search(vecs[0], k=3)[0][0].identity == "p299"
    assert open_gallery(location).identities() == {"p299": 1}


def test_empty_and_missing_gallery(location: str):
    assert not gallery_exists(location)
    with pytest.raises(GalleryError, match=r"no gallery at .*maskid build DATASET"):
        open_gallery(location)
    with pytest.raises(UsageError):
        open_gallery(location, create=True)  # needs embedder_id and dim
    g = new_gallery(location)
    assert gallery_exists(location) and len(g) == 0 and g.identities() == {}
    with pytest.raises(GalleryError, match="empty"):
        g.search(vector_for("x"))
    g.add("x", vector_for("x"))
    g.remove("x")
    with pytest.raises(GalleryError, match="empty"):
        open_gallery(location).search(vector_for("x"))


def test_refuses_another_embedder(location: str):
    new_gallery(location).add("a", vector_for("a"))
    with pytest.raises(GalleryError) as e:
        open_gallery(location, embedder_id="arcface-r50@deadbeef", dim=DIM)
    msg = str(e.value)
    assert EMBEDDER in msg and "arcface-r50@deadbeef" in msg and "maskid build" in msg
    assert location in msg  # the rebuild command names this gallery
    with pytest.raises(GalleryError, match="512-d"):
        open_gallery(location, embedder_id=EMBEDDER, dim=512)
    with pytest.raises(GalleryError, match="64-d"):
        open_gallery(location).add("b", np.ones(64))
    g = open_gallery(location)
    assert (g.embedder_id, g.dim) == (EMBEDDER, DIM)
    with pytest.raises(GalleryError, match="built with"):
        g.check_embedder("arcface-r50@deadbeef", None)


def test_bad_input_is_refused_and_stores_nothing(location: str):
    g = new_gallery(location)
    for name in ("", " ann", "a/b", "a\nb", "x" * 129, 42):
        with pytest.raises(UsageError):
            g.add(name, vector_for("v"))  # type: ignore[arg-type]
    for vectors in (np.full((1, DIM), np.nan), np.zeros((1, DIM)), np.ones((0, DIM))):
        with pytest.raises(UsageError):
            g.add("ann", vectors)
    with pytest.raises(UsageError, match="one per vector"):
        g.add("ann", np.ones((2, DIM)), [source_for("ann")])
    with pytest.raises(UsageError, match="hex"):
        g.add("ann", np.ones((1, DIM)), [{"path": "a.jpg", "sha256": "nope"}])
    with pytest.raises(UsageError):
        g.search(vector_for("v"), k=0)
    assert len(g) == 0
    with pytest.raises(UnknownIdentityError, match="nobody"):
        g.remove("nobody")


def test_names_that_need_quoting(location: str):
    """Names go into Milvus filter expressions as string literals: quotes must not break them."""
    g = new_gallery(location)
    names = ['Zoë "Zee" O\'Brien', "Łukasz", "x" * 128, "a and b", "名前"]
    g.add_many((n, vector_for(n), None) for n in names)
    assert g.identities() == {n: 1 for n in sorted(names)}
    assert [
        r[0].identity for r in g.search(np.concatenate([vector_for(n) for n in names]))
    ] == names
    assert g.remove('Zoë "Zee" O\'Brien') == 1
    assert len(g.identities()) == 4


def test_another_process_sees_acknowledged_writes(location: str):
    """An enrollment acknowledged in one process is found by the next search in another."""
    new_gallery(location).close()
    reader = open_gallery(location, embedder_id=EMBEDDER, dim=DIM)  # opened before the writes
    proc = worker("enroll", location, "w", "3")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["READY", "OK", "w-0", "OK", "w-1", "OK", "w-2"]
    reader.refresh()  # the directory store reads snapshots; Milvus is always current
    assert reader.search(vector_for("w-1"), k=1)[0][0].identity == "w-1"
    assert reader.has_source(source_for("w-2")["sha256"])
    assert reader.remove("w-0") == 1  # a name another process enrolled
    r = subprocess.run(
        [sys.executable, str(WORKER), "identities", location], capture_output=True, text=True
    )
    assert json.loads(r.stdout) == {"w-1": 1, "w-2": 1}


def test_concurrent_enrollers_lose_nothing(location: str):
    new_gallery(location).close()
    procs = [worker("enroll", location, prefix, "15") for prefix in ("a", "b")]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, out + err
        assert out.count("OK ") == 15
    g = open_gallery(location, embedder_id=EMBEDDER, dim=DIM)
    names = [f"{p}-{i}" for p in ("a", "b") for i in range(15)]
    assert g.identities() == {n: 1 for n in sorted(names)}
    hits = g.search(np.concatenate([vector_for(n) for n in names]), k=1)
    assert [h[0].identity for h in hits] == names


def test_delete_gallery(location: str):
    new_gallery(location).add("a", vector_for("a"))
    assert delete_gallery(location) >= 1
    assert not gallery_exists(location)
    assert delete_gallery(location) == 0
    new_gallery(location).add("b", vector_for("b"))  # built anew in the same place
    assert read_identities(location) == {"b": 1}


# -- Milvus only ---------------------------------------------------------------------------------
def test_server_killed_mid_enrollment_keeps_every_acknowledged_entry(tmp_path: Path):
    """SIGKILL the server while a process enrolls (twice, on the same data): every name that
    process was told is enrolled is there after a restart, and searchable."""
    require_milvus()
    server = MilvusServer(tmp_path / "milvus")
    server.start()
    location = server.uri("crash")
    acked: list[str] = []
    try:
        for round_, wanted in enumerate((25, 60)):
            proc = worker("enroll", location, f"r{round_}", "0")
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "READY", proc.stderr
            done = 0
            while done < wanted:
                line = proc.stdout.readline()
                assert line.startswith("OK "), line + (proc.stderr.read() if proc.stderr else "")
                acked.append(line.split(maxsplit=1)[1].strip())
                done += 1
            server.kill()  # mid-enrollment: the worker is sending its next add
            proc.kill()
            rest, _ = proc.communicate(timeout=60)
            acked += [ln.split(maxsplit=1)[1] for ln in rest.splitlines() if ln.startswith("OK ")]
            server.start()
            g = open_gallery(location, embedder_id=EMBEDDER, dim=DIM)
            have = g.identities()
            assert set(acked) <= set(have), sorted(set(acked) - set(have))
            probe = acked[-10:]
            hits = g.search(np.concatenate([vector_for(n) for n in probe]), k=1)
            assert [h[0].identity for h in hits] == probe
            g.close()
    finally:
        server.stop()


def test_refuses_a_collection_that_is_not_a_gallery(milvus_server: MilvusServer):
    from pymilvus import MilvusClient

    client = MilvusClient(uri=f"http://127.0.0.1:{milvus_server.port}")
    client.create_collection("someone_elses", dimension=DIM)
    client.close()
    location = milvus_server.uri("someone_elses")
    for attempt in (lambda: open_gallery(location), lambda: new_gallery(location)):
        with pytest.raises(GalleryError, match="not a maskid gallery"):
            attempt()
    with pytest.raises(UsageError, match="not a maskid gallery"):  # build --force
        delete_gallery(location)
    assert gallery_exists(location)  # untouched


def test_newer_or_corrupt_record(milvus_server: MilvusServer):
    """The collection's maskid record is checked as the store's manifest is; `build --force`
    (delete_gallery) drops a corrupt gallery."""
    from pymilvus import MilvusClient

    from maskid.gallery.milvus import META_PROPERTY

    location = milvus_server.uri("recorded")
    new_gallery(location).add("a", vector_for("a"))
    client = MilvusClient(uri=f"http://127.0.0.1:{milvus_server.port}")
    record = json.loads(client.describe_collection("recorded")["properties"][META_PROPERTY])
    record["format_version"] += 1
    client.alter_collection_properties("recorded", {META_PROPERTY: json.dumps(record)})
    with pytest.raises(GalleryError, match="newer than this maskid understands"):
        open_gallery(location)
    client.alter_collection_properties("recorded", {META_PROPERTY: "{not json"})
    with pytest.raises(GalleryError, match=r"corrupt; rebuild it with `maskid build .* --force`"):
        open_gallery(location)
    client.close()
    assert delete_gallery(location) == 1 and not gallery_exists(location)


@pytest.mark.parametrize(
    "uri",
    [
        "milvus://127.0.0.1:19530/",
        "milvus://127.0.0.1:19530/9lives",
        "milvus://127.0.0.1:19530/a-b",
        "milvus://user:secret@127.0.0.1:19530/g",
        "milvus://127.0.0.1:19530/g?x=1",
        "milvus://127.0.0.1:notaport/g",
        "redis://127.0.0.1:6379/g",
    ],
)
def test_bad_uris_are_usage_errors(uri: str):
    with pytest.raises(UsageError):
        open_gallery(uri)


def run_cli(*args: str) -> Result:
    from maskid.apps.cli import main

    return CliRunner().invoke(main, list(args))


def test_unreachable_server_is_one_line_gallery_error():
    require_milvus()
    uri = f"milvus://127.0.0.1:{free_port()}/gallery"  # nothing listens there
    with pytest.raises(GalleryError, match="cannot reach the Milvus server"):
        open_gallery(uri)
    result = run_cli("list", "--gallery", uri)
    assert result.exit_code == 5, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Milvus server" in lines[0], result.stderr


@pytest.mark.slow
def test_cli_build_enroll_recognize_remove_on_milvus(
    milvus_server: MilvusServer, tmp_path: Path
) -> None:
    """The README's commands against a Milvus URI, on the bundled demo photos: the enrollment
    one process acknowledges is what the next `recognize` process finds."""
    from maskid.paths import PACKAGE_DATA

    demo = PACKAGE_DATA / "demo"
    dataset = tmp_path / "people"
    for name in ("Colin_Powell", "Hugo_Chavez"):
        shutil.copytree(demo / "celebrities" / name, dataset / name)
    uri = milvus_server.uri("cli_gallery")
    env = {**os.environ, "MASKID_GALLERY": uri, "MASKID_CACHE": str(tmp_path / "cache")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "maskid.apps.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    built = run_cli("build", str(dataset), "--gallery", uri)
    assert built.exit_code == 0, built.output
    assert "added 6 photos" in built.stdout and "2 identities" in built.stdout
    again = run_cli("build", str(dataset), "--gallery", uri)
    assert "added 0 photos, 6 already present" in again.stdout, again.output

    enrolled = cli("enroll", "Newcomer", str(demo / "newcomer" / "M2FRED_001_1-0-0.png"))
    assert enrolled.returncode == 0, enrolled.stderr
    found = cli("recognize", "--image", str(demo / "newcomer" / "M2FRED_001_3-1-0.png"), "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["faces"][0]["matches"][0]["identity"] == "Newcomer"

    listed = run_cli("list", "--gallery", uri)
    assert listed.stdout.split("\n")[:3] == [
        f"{n}\t{c}" for n, c in sorted(read_identities(uri).items())
    ]
    assert set(read_identities(uri)) == {"Colin_Powell", "Hugo_Chavez", "Newcomer"}
    removed = run_cli("remove", "Newcomer", "--gallery", uri)
    assert removed.exit_code == 0 and "removed 'Newcomer'" in removed.stdout, removed.output
    assert set(read_identities(uri)) == {"Colin_Powell", "Hugo_Chavez"}

    rebuilt = run_cli("build", str(dataset), "--gallery", uri, "--force")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "deleted the gallery" in rebuilt.stderr and "added 6 photos" in rebuilt.stdout
