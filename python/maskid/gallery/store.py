"""The gallery: enrolled people and their face descriptors, kept like a small database.

A gallery is a directory::

    manifest.json          the commit point of a generation: format version, embedder, dim,
                           hnswlib parameters, and the name, size and sha256 of each base file
    index-000042.bin       hnswlib index (see `index`), space 'ip' over unit float32 (= cosine)
    meta-000042.json       identity names and, per entry, hnswlib label -> identity
    sources-000042.json    per entry: source image path, its sha256 and the UTC time it was added
    journal-000042.log     commits since the base files were written, appended (format 2)
    .lock                  taken (filelock) by writers only

A commit normally appends one record to the journal: a header (magic, lengths and their crc32,
sha256 of the body) and a body (JSON ops + float32 vectors), written and fsynced under the lock.
A record is committed once it is whole; readers replay the whole records on top of the base and
ignore a torn tail, which the next writer truncates. Appending costs milliseconds at any size.

When the journal outgrows its budget (a share of the index file, within bounds: replaying it
costs every reader hnswlib inserts), or a batch is that large itself, the commit compacts: it
writes a new generation (base files and an empty journal), fsyncs it, then atomically replaces
`manifest.json` (write a temporary, fsync, rename, fsync the directory). The rename is the commit: a crash leaves the old generation and its journal, or the
new one, both loadable. Committed base files are never modified; other generations are deleted
after a commit.

Writers hold an exclusive lock while they catch up with the latest committed state, apply their
changes and commit, so concurrent enrollments lose nothing. Readers take no lock.

hnswlib files carry no header, so the manifest holds what the blob lacks (magic, format version,
metric, dim, embedder id, element count) plus its sha256, which is checked before hnswlib ever
parses the file: hnswlib can crash the process on a corrupt file.

Format 1 (no journal) is read as is; the first commit to it writes a format-2 generation.

A `Gallery` object is not thread-safe; use one per thread.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import signal
import struct
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from maskid.errors import GalleryError, UnknownIdentityError, UsageError
from maskid.face import Match
from maskid.gallery.checks import rebuild_hint, same_embedder, source_pairs, unit_vectors
from maskid.gallery.index import INITIAL_CAPACITY, HnswIndex, HnswParams

if TYPE_CHECKING:  # filelock loads only where a lock is taken
    import filelock

__all__ = ["FORMAT_VERSION", "Gallery", "HnswParams", "validate_name"]

FORMAT_VERSION = 2
MAGIC = "maskid-gallery"
MANIFEST = "manifest.json"
LOCK = ".lock"
MAX_NAME_LEN = 128
# Compact when the journal would exceed JOURNAL_FRACTION of the index file, kept within
# [JOURNAL_MIN_BYTES, JOURNAL_MAX_BYTES]. Every reader replays the journal (an hnswlib insert per
# descriptor at its first search) while compacting rewrites the whole base, so the cap bounds
# replay at ~3k 256-d enrollments (~2 s at 1M entries on 2 cores) and a small gallery, cheap to
# rewrite, compacts often (benchmarks/gallery.py measures both).
JOURNAL_MIN_BYTES = 256 << 10
JOURNAL_MAX_BYTES = 4 << 20
JOURNAL_FRACTION = 0.25
_GEN_FILE = re.compile(r"^(index|meta|sources|journal)-(\d{6,})\.(bin|json|log)$")
_CHUNK = 1 << 20
# Journal record header: magic, JSON length, vector bytes, crc32 of those three, sha256 of
# (JSON + vectors). The crc tells a damaged length (corruption) from a record cut short (torn).
_REC = struct.Struct("<4sIII32s")
_REC_HEAD = struct.Struct("<4sII")
_REC_MAGIC = b"MGJ1"
_T = TypeVar("_T")

# Test hook: a process with this set kills itself (SIGKILL) at the named point of a commit.
_CRASH_AT: str | None = os.environ.get("MASKID_GALLERY_CRASH_AT") or None
# Points of a commit that writes a new generation (compaction)...
REWRITE_CRASH_POINTS = (
    "index-written",
    "meta-written",
    "sources-written",
    "manifest-tmp-written",
    "manifest-renamed",
    "cleanup",
)
# ... and of one that appends to the journal ("journal-torn": half the record written).
APPEND_CRASH_POINTS = ("journal-torn", "journal-written", "journal-synced")
CRASH_POINTS = REWRITE_CRASH_POINTS + APPEND_CRASH_POINTS


def _crash_point(tag: str) -> None:
    if tag == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def validate_name(name: object) -> str:
    """The identity name in canonical (NFC) form, or UsageError saying what is wrong with it."""
    if not isinstance(name, str):
        raise UsageError(f"identity name must be a string, not {type(name).__name__}")
    if not name:
        raise UsageError("identity name must not be empty")
    if name != name.strip():
        raise UsageError(f"identity name {name!r} has leading or trailing whitespace")
    name = unicodedata.normalize("NFC", name)
    if len(name) > MAX_NAME_LEN:
        raise UsageError(f"identity name is {len(name)} characters long; at most {MAX_NAME_LEN}")
    if "/" in name or "\\" in name:
        raise UsageError(f"identity name {name!r} must not contain '/' or '\\'")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        raise UsageError(f"identity name {name!r} contains control characters")
    return name


@functools.cache
def _hnswlib_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("hnswlib")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _hash_fd(fd: int) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    os.lseek(fd, 0, os.SEEK_SET)
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while True:
        n = os.readv(fd, [buf])
        if n == 0:
            break
        h.update(view[:n])
        size += n
    return h.hexdigest(), size


def _write_file(path: Path, data: bytes) -> dict[str, Any]:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"name": path.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _gen_names(gen: int) -> dict[str, str]:
    return {
        "index": f"index-{gen:06d}.bin",
        "meta": f"meta-{gen:06d}.json",
        "sources": f"sources-{gen:06d}.json",
        "journal": f"journal-{gen:06d}.log",
    }


class _Corrupt(Exception):
    """Internal: a file does not match the manifest (turned into GalleryError by the caller)."""


# -- journal records ---------------------------------------------------------------------------
@dataclass
class _Record:
    """One commit in the journal: `ops` in order, adds taking labels from `label0` on."""

    commit: int
    label0: int
    ops: list[dict[str, Any]]  # {"add": name, "n": k, "src": [[path, sha], ...], "added": t}
    #                             or {"remove": name}
    vectors: np.ndarray  # (sum of the adds' n, dim) float32


def _encode_record(gen: int, rec: _Record) -> bytes:
    doc = {"gen": gen, "commit": rec.commit, "label0": rec.label0, "ops": rec.ops}
    js = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    vec = np.ascontiguousarray(rec.vectors, dtype="<f4").tobytes()
    crc = zlib.crc32(_REC_HEAD.pack(_REC_MAGIC, len(js), len(vec)))
    digest = hashlib.sha256(js + vec).digest()
    return _REC.pack(_REC_MAGIC, len(js), len(vec), crc, digest) + js + vec


def _parse_journal(
    data: bytes, name: str, gen: int, dim: int, vectors: bool = True
) -> tuple[list[_Record], int]:
    """The whole records in `data` (a journal read from a record boundary) and how many bytes
    they span. A torn last record (a writer died mid-append) ends the list; a bad record with
    more bytes after it is corruption."""
    out: list[_Record] = []
    off = 0
    while len(data) - off >= _REC.size:
        magic, jlen, vlen, crc, digest = _REC.unpack_from(data, off)
        end = off + _REC.size + jlen + vlen
        if magic != _REC_MAGIC or crc != zlib.crc32(_REC_HEAD.pack(magic, jlen, vlen)):
            if not any(data[off:]):  # a zero-filled tail (lost write after a power cut)
                break
            raise _Corrupt(f"{name}: bad record header at byte {off}")
        if end > len(data):
            break  # torn tail
        body = data[off + _REC.size : end]
        if hashlib.sha256(body).digest() != digest:
            if end == len(data):
                break  # torn tail
            raise _Corrupt(f"{name}: record at byte {off} fails its sha256 check")
        try:
            doc = json.loads(body[:jlen])
            rec = _Record(int(doc["commit"]), int(doc["label0"]), list(doc["ops"]), np.zeros(0))
            n = sum(int(op["n"]) for op in rec.ops if "add" in op)
            if doc["gen"] != gen or vlen != n * dim * 4:
                raise ValueError("record does not belong to this generation")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise _Corrupt(f"{name}: record at byte {off}: {e}") from None
        if vectors:
            rec.vectors = np.frombuffer(body, "<f4", offset=jlen).reshape(n, dim)
        out.append(rec)
        off = end
    return out, off


class _Sources:
    """Per-entry provenance, indexed by label ("" where unknown). Loaded only when needed."""

    def __init__(self, size: int) -> None:
        self.path = [""] * size
        self.sha256 = [""] * size
        self.added = [""] * size
        self.known: Counter[str] = Counter()

    def set(self, label: int, path: str, sha: str, added: str) -> None:
        if label >= len(self.path):
            grow = label + 1 - len(self.path) + len(self.path) // 2
            for lst in (self.path, self.sha256, self.added):
                lst.extend([""] * grow)
        self.path[label] = path
        self.sha256[label] = sha
        self.added[label] = added
        if sha:
            self.known[sha] += 1

    def drop(self, labels: Iterable[int]) -> None:
        for label in labels:
            sha = self.sha256[label] if label < len(self.sha256) else ""
            if sha:
                self.known[sha] -= 1
                if self.known[sha] <= 0:
                    del self.known[sha]
                self.sha256[label] = ""

    def to_json(self, generation: int, labels: list[int]) -> bytes:
        doc = {
            "generation": generation,
            "path": [self.path[i] for i in labels],
            "sha256": [self.sha256[i] for i in labels],
            "added": [self.added[i] for i in labels],
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass
class _BatchMark:
    """State at the start of a batch, to rebase an adds-only batch on others' records."""

    names: int
    next_label: int
    pending: int
    live: int
    live_ids: int


class Gallery:
    """Enrolled identities with an hnswlib index over their descriptors.

    Open with `Gallery.open(...)`; `add`/`remove` commit at once, or once for a whole
    `with gallery.batch():` block. `search` returns the best-scoring identities per query.
    """

    def __init__(self, path: Path, lock_timeout: float) -> None:
        # Use Gallery.open(); this only sets up an empty shell.
        self._sources_fd: int | None = None
        self.path = path
        self._lock: filelock.FileLock | None = None  # made by the first writer (_locked)
        self._lock_timeout = lock_timeout
        self._manifest: dict[str, Any] = {}
        self._gen = 0  # generation of the base files
        self._commit_no = 0  # commits reflected: the base's plus the journal records replayed
        self._journal_end = 0  # bytes of the journal replayed
        self._index: HnswIndex | None = None
        self._names: list[str] = []  # ids are stable while loaded; removed names keep count 0
        self._name_ids: dict[str, int] = {}
        self._counts: list[int] = []
        self._live_ids = 0  # names with count > 0
        self._ident_of = np.full(0, -1, np.int32)  # label -> identity id, -1: none
        self._live = 0
        self._next_label = 0
        self._base_labels = np.zeros(0, np.int64)  # labels of the base sources file, in order
        self._sources: _Sources | None = None
        self._new_sources: dict[int, tuple[str, str, str]] = {}  # since the base, if not loaded
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # vectors, labels: not in hnswlib
        self._ops: list[tuple[str, Any, list[int]]] = []  # this batch's updates, for replay
        self._mark: _BatchMark | None = None  # state when the batch began
        self._touched = False  # the batch changed the index (a conflict then means a reload)
        self._batch_depth = 0
        self._stale = False
        self.num_threads = -1  # hnswlib threads for add/query; -1 = all cores
        self.ef_search: int | None = None  # overrides the manifest's ef_search for this object
        # Journal bytes beyond which a commit compacts; None: the module's policy, 0: always.
        self.journal_limit: int | None = None

    # -- opening ---------------------------------------------------------------------------
    @staticmethod
    def exists(path: str | os.PathLike[str]) -> bool:
        """Whether `path` holds a (committed) gallery."""
        return (Path(path) / MANIFEST).is_file()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        embedder_id: str | None = None,
        dim: int | None = None,
        create: bool = False,
        *,
        hnsw: HnswParams | None = None,
        lock_timeout: float = 60.0,
    ) -> Gallery:
        """Open the gallery in directory `path`.

        embedder_id, dim: when given, the gallery must have been built by that embedder
            (else GalleryError saying how to rebuild). Both are required with create=True.
        create: make an empty gallery if there is none (the directory is created too).
        hnsw: parameters for a new gallery; an existing one keeps its own.
        lock_timeout: seconds a writer waits for another process's update to finish.
        """
        root = Path(path)
        if dim is not None and (not isinstance(dim, int) or dim <= 0):
            raise UsageError(f"descriptor dim must be a positive integer, not {dim!r}")
        if not (root / MANIFEST).exists():
            if not create:
                raise GalleryError(
                    f"no gallery at {root}; create one with `maskid build DATASET` "
                    "or `maskid enroll NAME IMAGE`"
                )
            if not embedder_id or dim is None:
                raise UsageError("embedder_id and dim are needed to create a gallery")
            cls._create(root, embedder_id, dim, hnsw or HnswParams(), lock_timeout)
        elif not root.is_dir():
            raise GalleryError(f"{root} is not a directory")
        if create:  # a writer: load what a commit needs now, not inside the commit
            import filelock  # noqa: F401

            _hnswlib_version()
        g = cls(root, lock_timeout)
        g._manifest = g._read_manifest()
        g.check_embedder(embedder_id, dim)  # before loading a possibly large index
        g._load_committed()
        g.check_embedder(embedder_id, dim)  # (in case another process rebuilt it meanwhile)
        return g

    @classmethod
    def read_identities(cls, path: str | os.PathLike[str]) -> tuple[dict[str, int], dict[str, Any]]:
        """Name -> number of descriptors, and the manifest, of the gallery at `path`, read from
        its (verified) metadata and journal alone: no index is loaded and no embedder is needed,
        so listing a large gallery stays cheap. Errors as `open` (GalleryError for none or a
        corrupt one)."""
        root = Path(path)
        if not (root / MANIFEST).exists():
            cls.open(root)  # raises the "no gallery" error
        elif not root.is_dir():
            raise GalleryError(f"{root} is not a directory")
        g = cls(root, 60.0)

        def load(manifest: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any]]:
            names, _, _, counts = g._read_meta(manifest)
            count = dict(zip(names, counts, strict=True))
            records, _ = g._read_journal(manifest, 0, vectors=False)
            for rec in records:
                for op in rec.ops:
                    if "add" in op:
                        count[op["add"]] = count.get(op["add"], 0) + int(op["n"])
                    else:
                        count[op["remove"]] = 0
            return {n: c for n, c in sorted(count.items()) if c > 0}, manifest

        return g._committed(load)

    @classmethod
    def _create(
        cls, root: Path, embedder_id: str, dim: int, hnsw: HnswParams, lock_timeout: float
    ) -> None:
        if root.exists() and not root.is_dir():
            raise GalleryError(f"cannot create a gallery at {root}: it is a file")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GalleryError(f"cannot create gallery directory {root}: {e}") from None
        g = cls(root, lock_timeout)
        with g._locked():
            if (root / MANIFEST).exists():
                return  # another process created it meanwhile
            foreign = [
                p.name
                for p in root.iterdir()
                if p.name not in (LOCK, MANIFEST)
                and not _GEN_FILE.match(p.name)
                and not p.name.endswith(".tmp")
            ]
            if foreign:
                raise GalleryError(
                    f"{root} is not empty and holds no gallery (found {foreign[0]!r}, ...); "
                    "choose a new or empty directory for the gallery"
                )
            g._index = HnswIndex.create(dim, hnsw)
            g._sources = _Sources(0)
            g._manifest = {
                "magic": MAGIC,
                "format_version": FORMAT_VERSION,
                "embedder_id": embedder_id,
                "dim": dim,
                "metric": "cosine",
                "space": "ip",
                "normalized": True,
                "hnsw": {
                    "M": hnsw.M,
                    "ef_construction": hnsw.ef_construction,
                    "ef_search": hnsw.ef_search,
                },
                "created": _now(),
            }
            g._write_generation(1)
            g._close_sources_fd()

    def check_embedder(self, embedder_id: str | None, dim: int | None) -> None:
        """GalleryError (saying how to rebuild) unless the gallery was built by `embedder_id`
        with `dim`-d descriptors (None: not checked)."""
        same_embedder(self.path, (self.embedder_id, self.dim), embedder_id, dim)

    # -- properties --------------------------------------------------------------------------
    @property
    def embedder_id(self) -> str:
        return str(self._manifest["embedder_id"])

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def generation(self) -> int:
        """Number of commits this object reflects (excluding a batch's changes): each commit,
        appended or compacting, adds one."""
        return self._commit_no

    @property
    def hnsw(self) -> HnswParams:
        h = self._manifest["hnsw"]
        return HnswParams(int(h["M"]), int(h["ef_construction"]), int(h["ef_search"]))

    def __len__(self) -> int:
        self._ensure_fresh()
        return self._live

    def __repr__(self) -> str:
        return f"Gallery({str(self.path)!r}, entries={len(self)}, embedder={self.embedder_id!r})"

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the index memory and file handles (the object is unusable afterwards)."""
        self._close_sources_fd()
        self._index = None

    def identities(self) -> dict[str, int]:
        """Name -> number of descriptors, for everyone enrolled (sorted by name)."""
        self._ensure_fresh()
        return {n: c for n, c in sorted(zip(self._names, self._counts, strict=True)) if c > 0}

    def count(self, name: str) -> int:
        """Descriptors enrolled under `name` (0: nobody of that name)."""
        self._ensure_fresh()
        i = self._name_ids.get(name)
        return 0 if i is None else int(self._counts[i])

    def has_source(self, sha256: str) -> bool:
        """Whether an image with this sha256 (hex) already contributed descriptors."""
        self._ensure_fresh()
        return sha256.lower() in self._load_sources().known

    def refresh(self) -> bool:
        """Pick up changes other processes committed; returns whether anything changed.
        Records appended to the current generation are replayed; a new generation is loaded."""
        if self._batch_depth:
            raise UsageError("cannot refresh a gallery inside a batch")
        manifest = self._read_manifest()
        if int(manifest["generation"]) == self._gen and not self._stale:
            try:
                return self._catch_up()
            except FileNotFoundError:
                pass  # compacted meanwhile: load the new generation
        self._load_committed()
        return True

    # -- updates ---------------------------------------------------------------------------
    def add(
        self,
        name: str,
        vectors: np.ndarray,
        sources: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Add descriptors of identity `name`; returns their labels.

        vectors: (n, dim) or (dim,) floats; stored L2-normalised as float32.
        sources: one dict per vector with "path" and "sha256" of the image it came from.
        Commits at once, unless inside `batch()`. If another process committed first, the
        update is replayed on its state and the returned list is updated with the new labels.
        """
        name = validate_name(name)
        vecs = self._as_vectors(vectors, what="vectors")
        srcs = source_pairs(sources, len(vecs))
        labels: list[int] = []  # filled in again if the batch is replayed on newer state
        with self.batch():
            arg = (name, vecs, srcs, _now())
            self._ops.append(("add", arg, labels))
            labels[:] = self._apply_add(*arg)
        return labels

    def add_many(
        self, items: Iterable[tuple[str, np.ndarray, Sequence[dict[str, Any]] | None]]
    ) -> list[list[int]]:
        """`add` for each (name, vectors, sources), all in one commit."""
        with self.batch():
            return [self.add(name, vecs, srcs) for name, vecs, srcs in items]

    def remove(self, name: str) -> int:
        """Remove identity `name` and all its descriptors; returns how many were removed."""
        name = validate_name(name)
        self._ensure_fresh()
        if not self._known(name) and not self._batch_depth:
            self.refresh()  # another process may have enrolled them since we loaded
        if not self._known(name):
            raise UnknownIdentityError(f"no identity named {name!r} in gallery {self.path}")
        with self.batch():
            self._ops.append(("remove", name, []))
            return self._apply_remove(name)

    @contextlib.contextmanager
    def batch(self) -> Iterator[Gallery]:
        """Group updates into one atomic commit, made when the block ends without an exception.

        The lock is taken only for the commit; if another process committed since this object
        loaded the gallery, its latest state is read and this batch's updates are replayed
        on top. An exception inside the block discards the batch's updates.
        """
        if self._batch_depth:
            self._batch_depth += 1
            try:
                yield self
            finally:
                self._batch_depth -= 1
            return
        self._ensure_fresh()
        self._batch_depth = 1
        self._ops = []
        self._touched = False
        self._mark = _BatchMark(
            len(self._names), self._next_label, len(self._pending), self._live, self._live_ids
        )
        try:
            yield self
            if self._ops:
                self._commit()
        except BaseException:
            self._discard()
            raise
        finally:
            self._batch_depth = 0
            self._ops = []
            self._mark = None
            self._touched = False

    # -- search ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Match]]:
        """The k best identities for each query, best first, scored by cosine similarity.

        queries: (m, dim) or (dim,) floats (normalised here). An identity's score is that of
        its best-matching descriptor. Raises GalleryError if the gallery is empty.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise UsageError(f"k must be a positive integer, not {k!r}")
        q = self._as_vectors(queries, what="queries")
        self._ensure_fresh()
        self._flush()
        live = self._live
        if live == 0:
            raise GalleryError(
                f"gallery {self.path} is empty; enroll someone with `maskid enroll NAME IMAGE` "
                "or `maskid build DATASET`"
            )
        index = self._require_index()
        k_ids = min(int(k), self._live_ids)
        want = min(live, max(4 * k_ids, 16))
        ef = self.ef_search or self.hnsw.ef_search
        while True:
            labels, dists = index.knn(q, want, ef, self._live_labels, self.num_threads)
            results, short = self._aggregate(labels, dists, k_ids)
            if not short or want >= live:
                return results
            want = min(live, want * 4)

    def _live_labels(self) -> np.ndarray:
        return np.flatnonzero(self._ident_of[: self._next_label] >= 0).astype(np.int64)

    def _aggregate(
        self, labels: np.ndarray, dists: np.ndarray, k: int
    ) -> tuple[list[list[Match]], bool]:
        ok = (labels >= 0) & (labels < self._next_label)
        ident = self._ident_of[np.where(ok, labels, 0)]
        if not ok.all() or (ident < 0).any():
            raise GalleryError(
                f"gallery {self.path}: index and metadata disagree; {rebuild_hint(self.path)}"
            )
        results: list[list[Match]] = []
        short = False
        names = self._names
        for row_ids, row_d in zip(ident.tolist(), dists.tolist(), strict=True):
            # Neighbours come best first, so an identity's first hit is its best score.
            seen: set[int] = set()
            row: list[Match] = []
            for i, d in zip(row_ids, row_d, strict=True):
                if i not in seen:
                    seen.add(i)
                    row.append(Match(names[i], 1.0 - d))
                    if len(row) == k:
                        break
            short |= len(row) < k
            results.append(row)
        return results, short

    # -- validation ------------------------------------------------------------------------
    def _as_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        owner = f"gallery {self.path} holds {self.dim}-d descriptors from {self.embedder_id}"
        return unit_vectors(vectors, what, self.dim, owner)

    # -- in-memory updates -----------------------------------------------------------------
    def _known(self, name: str) -> bool:
        i = self._name_ids.get(name)
        return i is not None and self._counts[i] > 0

    def _apply_add(
        self, name: str, vecs: np.ndarray, srcs: Sequence[Sequence[str]], added: str
    ) -> list[int]:
        n = len(vecs)
        ident = self._name_ids.get(name)
        if ident is None:
            ident = len(self._names)
            self._names.append(name)
            self._counts.append(0)
            self._name_ids[name] = ident
        if self._counts[ident] == 0:
            self._live_ids += 1
        start = self._next_label
        labels = np.arange(start, start + n, dtype=np.int64)
        self._next_label += n
        if self._next_label > self._ident_of.size:
            grown = np.full(max(self._next_label, self._ident_of.size * 3 // 2), -1, np.int32)
            grown[: self._ident_of.size] = self._ident_of
            self._ident_of = grown
        self._ident_of[start : self._next_label] = ident
        self._counts[ident] += n
        self._live += n
        self._pending.append((vecs, labels))
        for label, (path, sha) in zip(labels.tolist(), srcs, strict=True):
            if self._sources is not None:
                self._sources.set(label, path, sha, added)
            else:
                self._new_sources[label] = (path, sha, added)
        return labels.tolist()

    def _apply_remove(self, name: str) -> int:
        ident = self._name_ids.get(name)
        if ident is None or self._counts[ident] == 0:
            return 0
        self._touched = True
        self._flush()
        labels = np.flatnonzero(self._ident_of[: self._next_label] == ident)
        self._require_index().mark_deleted(labels)
        self._ident_of[labels] = -1
        if self._sources is not None:
            self._sources.drop(labels.tolist())
        removed = int(labels.size)
        self._live -= removed
        self._counts[ident] = 0
        self._live_ids -= 1
        return removed

    def _flush(self) -> None:
        """Insert descriptors buffered by add() into the hnswlib index (one multi-threaded call)."""
        if not self._pending:
            return
        self._touched = True
        index = self._require_index()
        vecs = np.concatenate([p[0] for p in self._pending])
        labels = np.concatenate([p[1] for p in self._pending])
        index.add(vecs, labels, self.num_threads)
        self._pending = []

    def _undo_adds(self, mark: _BatchMark) -> None:
        """Take back this batch's adds (it touched nothing else), to replay them on newer state."""
        start, end = mark.next_label, self._next_label
        per_id = np.bincount(self._ident_of[start:end])
        for i in np.flatnonzero(per_id).tolist():
            self._counts[i] -= int(per_id[i])
        self._ident_of[start:end] = -1
        for name in self._names[mark.names :]:
            del self._name_ids[name]
        del self._names[mark.names :], self._counts[mark.names :]
        del self._pending[mark.pending :]
        if self._sources is not None:
            self._sources.drop(range(start, end))
        for label in range(start, end):
            self._new_sources.pop(label, None)
        self._next_label, self._live, self._live_ids = start, mark.live, mark.live_ids

    def _replay(self, rec: _Record) -> None:
        """Apply a committed journal record to the in-memory state."""
        if rec.label0 != self._next_label or rec.commit != self._commit_no + 1:
            raise _Corrupt(f"journal record {rec.commit} does not follow commit {self._commit_no}")
        i = 0
        for op in rec.ops:
            if "add" in op:
                n = int(op["n"])
                srcs = op["src"] or [("", "")] * n
                self._apply_add(str(op["add"]), rec.vectors[i : i + n], srcs, str(op["added"]))
                i += n
            else:
                self._apply_remove(str(op["remove"]))
        self._commit_no = rec.commit

    def _require_index(self) -> HnswIndex:
        if self._index is None:
            raise GalleryError(f"gallery {self.path} was closed")
        return self._index

    def _ensure_fresh(self) -> None:
        if self._stale:
            self._load_committed()

    def _discard(self) -> None:
        """Drop uncommitted changes: the committed state is reloaded on next use."""
        self._pending = []
        self._stale = True
        self._index = None
        self._sources = None
        self._close_sources_fd()

    # -- commit ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        import filelock

        if self._lock is None:
            self._lock = filelock.FileLock(str(self.path / LOCK), timeout=self._lock_timeout)
        lock = self._lock
        try:
            lock.acquire()
        except filelock.Timeout:
            raise GalleryError(
                f"gallery {self.path} is locked: another maskid process has been updating it "
                f"for over {self._lock_timeout:g} s; try again when it has finished"
            ) from None
        except OSError as e:
            raise GalleryError(f"cannot lock gallery {self.path}: {e}") from None
        try:
            yield
        finally:
            lock.release()

    def _commit(self) -> None:
        with self._locked():
            label0, commit0 = self._rebase()
            ops: list[dict[str, Any]] = []
            vecs: list[np.ndarray] = []
            for op, arg, _ in self._ops:
                if op == "add":
                    name, v, srcs, added = arg
                    has_src = any(p or s for p, s in srcs)
                    ops.append({"add": name, "n": len(v), "src": srcs if has_src else None})
                    ops[-1]["added"] = added
                    vecs.append(v)
                else:
                    ops.append({"remove": arg})
            rec = _Record(
                commit0 + 1,
                label0,
                ops,
                np.concatenate(vecs) if vecs else np.zeros((0, self.dim), np.float32),
            )
            # A batch whose vectors alone exceed the journal's budget (a build) skips encoding.
            big = self._compact_due(rec.vectors.nbytes)
            data = b"" if big else _encode_record(self._gen, rec)
            if big or self._compact_due(len(data)):
                self._flush()
                self._commit_no = commit0 + 1
                self._write_generation(self._gen + 1)
            else:
                self._append(data)
                self._commit_no = rec.commit

    def _rebase(self) -> tuple[int, int]:
        """Under the lock: bring the in-memory state up to the latest commit with this batch's
        updates on top. Returns the batch's first label and the commit it follows."""
        mark = self._mark
        if mark is None:
            raise RuntimeError("commit outside a batch")
        latest = self._read_manifest()
        if int(latest["generation"]) == self._gen:
            try:
                records, end = self._read_journal(self._manifest, self._journal_end)
                if not records:
                    self._truncate_torn_tail(self._journal_end + end)
                    return mark.next_label, self._commit_no
                if not self._touched:  # only adds so far: take them back, catch up, add again
                    self._undo_adds(mark)
                    self._apply_records(records, end)
                    self._truncate_torn_tail(self._journal_end)
                    return self._reapply()
            except _Corrupt as e:
                raise self._corrupt(e) from None
            except FileNotFoundError:
                pass  # the journal was deleted: reloading says so
        # Another generation (or this batch changed the index): reload, replay the batch.
        self._load_committed()
        self._truncate_torn_tail(self._journal_end)
        return self._reapply()

    def _reapply(self) -> tuple[int, int]:
        label0 = self._next_label
        for op, arg, labels in self._ops:
            if op == "add":
                labels[:] = self._apply_add(*arg)
            else:
                self._apply_remove(arg)
        return label0, self._commit_no

    def _compact_due(self, record_bytes: int) -> bool:
        if int(self._manifest["format_version"]) < 2:
            return True  # format 1 has no journal: migrate
        limit = self.journal_limit
        if limit is None:
            base = int(self._manifest["files"]["index"]["size"])
            limit = min(JOURNAL_MAX_BYTES, max(JOURNAL_MIN_BYTES, int(JOURNAL_FRACTION * base)))
        return self._journal_end + record_bytes > limit

    def _journal_path(self) -> Path:
        return self.path / _gen_names(self._gen)["journal"]

    def _truncate_torn_tail(self, end: int) -> None:
        """Cut a torn record a crashed writer left, so appends follow the last whole record."""
        path = self._journal_path()
        try:
            if path.stat().st_size > end:
                os.truncate(path, end)
        except FileNotFoundError:
            pass  # format 1: created by the first append... which compacts instead
        except OSError as e:
            raise GalleryError(f"could not repair {path} (it is unchanged): {e}") from None

    def _append(self, data: bytes) -> None:
        path = self._journal_path()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                if _CRASH_AT == "journal-torn":
                    os.write(fd, data[: len(data) // 2])
                    _crash_point("journal-torn")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                _crash_point("journal-written")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self._truncate_torn_tail(self._journal_end)
            raise GalleryError(
                f"could not write gallery {self.path} (it is unchanged): {e}"
            ) from None
        self._journal_end += len(data)
        self._stale = False
        _crash_point("journal-synced")
        self._cleanup()  # leftovers of a writer that crashed mid-compaction

    def _write_generation(self, gen: int) -> None:
        index = self._require_index()
        sources = self._load_sources()
        d = self.path
        names = _gen_names(gen)
        live = self._live_labels()
        # Renumber identities densely, dropping removed names.
        keep = [i for i, c in enumerate(self._counts) if c > 0]
        remap = np.full(max(1, len(self._counts)), -1, np.int32)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        try:
            index.save(str(d / names["index"]))
            fd = os.open(d / names["index"], os.O_RDWR)
            try:
                os.fsync(fd)
                sha, size = _hash_fd(fd)
            finally:
                os.close(fd)
            files = {"index": {"name": names["index"], "size": size, "sha256": sha}}
            _crash_point("index-written")
            meta = {
                "generation": gen,
                "names": [self._names[i] for i in keep],
                "label": live.tolist(),
                "identity": remap[self._ident_of[live]].tolist(),
            }
            meta_bytes = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()
            files["meta"] = _write_file(d / names["meta"], meta_bytes)
            _crash_point("meta-written")
            files["sources"] = _write_file(
                d / names["sources"], sources.to_json(gen, live.tolist())
            )
            _crash_point("sources-written")
            _write_file(d / names["journal"], b"")  # empty, and replaces a crashed writer's
            manifest = dict(self._manifest)
            manifest.update(
                format_version=FORMAT_VERSION,
                generation=gen,
                commit=self._commit_no,
                count=int(live.size),
                identities=len(keep),
                next_label=self._next_label,
                updated=_now(),
                files=files,
                journal={"name": names["journal"]},
            )
            manifest["hnsw"] = dict(
                manifest["hnsw"],
                capacity=index.capacity,
                element_count=index.element_count,
                hnswlib=_hnswlib_version(),
            )
            tmp = d / f"{MANIFEST}.{os.getpid()}.tmp"
            _write_file(tmp, json.dumps(manifest, ensure_ascii=False, indent=1).encode())
            _crash_point("manifest-tmp-written")
            os.replace(tmp, d / MANIFEST)
            _crash_point("manifest-renamed")
            _fsync_dir(d)
        except OSError as e:
            raise GalleryError(f"could not write gallery {d} (it is unchanged): {e}") from None
        self._manifest = manifest
        self._gen = gen
        self._journal_end = 0
        self._base_labels = live
        self._stale = False
        _crash_point("cleanup")
        self._cleanup()

    def _cleanup(self) -> None:
        """Delete files of other generations and leftovers of crashed writers (under the lock)."""
        current = {f["name"] for f in self._manifest["files"].values()}
        current.add(_gen_names(self._gen)["journal"])
        for p in self.path.iterdir():
            m = _GEN_FILE.match(p.name)
            if (m and p.name not in current) or p.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    p.unlink()

    # -- loading ---------------------------------------------------------------------------
    def _read_manifest(self) -> dict[str, Any]:
        mpath = self.path / MANIFEST
        try:
            raw = mpath.read_bytes()
        except FileNotFoundError:
            raise GalleryError(
                f"no gallery at {self.path}; create one with `maskid build DATASET` "
                "or `maskid enroll NAME IMAGE`"
            ) from None
        except OSError as e:
            raise GalleryError(f"cannot read {mpath}: {e}") from None
        try:
            m = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise GalleryError(
                f"gallery manifest {mpath} is corrupt ({e}); {rebuild_hint(self.path)}"
            ) from None
        return _check_manifest(m, mpath)

    def _load_committed(self) -> None:
        """Load the latest committed state (retrying if a writer replaces it meanwhile)."""
        self._committed(self._load_generation)

    def _committed(self, load: Callable[[dict[str, Any]], _T]) -> _T:
        """`load(manifest)` of the latest committed generation, retried if a writer replaces
        that generation meanwhile; a corrupt or incomplete gallery raises GalleryError."""
        last: Exception | None = None
        for _ in range(8):
            manifest = self._read_manifest()
            try:
                return load(manifest)
            except FileNotFoundError as e:
                last = e  # a writer committed and cleaned up the generation: read the new one
            except _Corrupt as e:
                raise GalleryError(
                    f"gallery {self.path} is corrupt: {e}; {rebuild_hint(self.path)}"
                ) from None
        missing = Path(getattr(last, "filename", "") or "?").name
        raise GalleryError(
            f"gallery {self.path} is incomplete: {missing} is missing; {rebuild_hint(self.path)}"
        )

    def _load_generation(self, manifest: dict[str, Any]) -> None:
        files = manifest["files"]
        dim = int(manifest["dim"])
        hn = manifest["hnsw"]
        # Metadata first (small), then the index: both verified before they are parsed.
        names, labels, ident, counts = self._read_meta(manifest)
        records, end = self._read_journal(manifest, 0)
        # Room for the journal's descriptors, so replaying them does not copy the index to grow.
        added = sum(len(rec.vectors) for rec in records)
        capacity = max(int(hn["capacity"]), int(hn["element_count"]) + added + INITIAL_CAPACITY)
        index = self._load_index(files["index"], dim, capacity)
        if index.element_count != hn["element_count"] or index.element_count < labels.size:
            raise _Corrupt(f"{files['index']['name']}: element count disagrees with the manifest")
        sources_fd = self._open_checked(files["sources"])
        # Commit the new state only once everything loaded.
        self._close_sources_fd()
        self._manifest = manifest
        self._gen = int(manifest["generation"])
        self._commit_no = int(manifest.get("commit", self._gen))
        self._journal_end = 0
        self._index = index
        self._names = names
        self._name_ids = {n: i for i, n in enumerate(names)}
        self._counts = counts
        self._live_ids = sum(c > 0 for c in counts)
        self._next_label = int(manifest["next_label"])
        self._ident_of = np.full(self._next_label + INITIAL_CAPACITY, -1, np.int32)
        self._ident_of[labels] = ident
        self._live = int(labels.size)
        self._base_labels = labels
        self._pending = []
        self._sources = None
        self._new_sources = {}
        self._sources_fd = sources_fd
        self._stale = False
        try:
            self._apply_records(records, end)
        except _Corrupt:
            self._stale = True
            raise

    def _apply_records(self, records: list[_Record], end: int) -> None:
        for rec in records:
            self._replay(rec)
        self._journal_end += end

    def _catch_up(self) -> bool:
        """Replay records appended to the journal since we last read it."""
        try:
            records, end = self._read_journal(self._manifest, self._journal_end)
            self._apply_records(records, end)
        except _Corrupt as e:
            raise self._corrupt(e) from None
        return bool(records)

    def _corrupt(self, e: _Corrupt) -> GalleryError:
        self._stale = True  # the in-memory state may be half-updated: reload on next use
        return GalleryError(f"gallery {self.path} is corrupt: {e}; {rebuild_hint(self.path)}")

    def _read_journal(
        self, manifest: dict[str, Any], start: int, vectors: bool = True
    ) -> tuple[list[_Record], int]:
        """Whole records of `manifest`'s journal from byte `start` on, and the bytes they span.
        FileNotFoundError if the journal was deleted (its generation was replaced)."""
        if int(manifest["format_version"]) < 2:
            return [], 0
        name = manifest["journal"]["name"]
        with open(self.path / name, "rb") as f:
            f.seek(start)
            data = f.read()
        return _parse_journal(
            data, name, int(manifest["generation"]), int(manifest["dim"]), vectors
        )

    def _read_meta(
        self, manifest: dict[str, Any]
    ) -> tuple[list[str], np.ndarray, np.ndarray, list[int]]:
        """The verified metadata file of `manifest`'s generation: names, labels, identity of
        each label, descriptors per name."""
        files = manifest["files"]
        try:
            meta = json.loads(self._read_verified(files["meta"]))
        except (ValueError, UnicodeDecodeError) as e:
            raise _Corrupt(f"{files['meta']['name']}: {e}") from None
        if not isinstance(meta, dict) or meta.get("generation") != manifest["generation"]:
            raise _Corrupt(f"{files['meta']['name']} does not belong to this generation")
        try:
            names = [str(n) for n in meta["names"]]
            labels = np.asarray(meta["label"], dtype=np.int64).reshape(-1)
            ident = np.asarray(meta["identity"], dtype=np.int32).reshape(-1)
        except (KeyError, TypeError, ValueError) as e:
            raise _Corrupt(f"{files['meta']['name']}: {e}") from None
        if labels.size != ident.size or labels.size != manifest["count"]:
            raise _Corrupt(f"{files['meta']['name']}: entry count disagrees with the manifest")
        if labels.size and (
            (np.diff(labels) <= 0).any()
            or labels[0] < 0
            or labels[-1] >= manifest["next_label"]
            or ident.min() < 0
            or ident.max() >= len(names)
        ):
            raise _Corrupt(f"{files['meta']['name']}: inconsistent labels")
        counts = np.bincount(ident, minlength=len(names)).tolist() if names else []
        if len(set(names)) != len(names):
            raise _Corrupt(f"{files['meta']['name']}: duplicate names")
        return names, labels, ident, counts

    def _open_checked(self, entry: dict[str, Any]) -> int:
        fd = os.open(self.path / entry["name"], os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        if size != entry["size"]:
            os.close(fd)
            raise _Corrupt(f"{entry['name']} is {size} bytes, expected {entry['size']}")
        return fd

    def _read_verified(self, entry: dict[str, Any]) -> bytes:
        fd = self._open_checked(entry)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        finally:
            os.close(fd)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise _Corrupt(f"{entry['name']} fails its sha256 check")
        return data

    def _load_index(self, entry: dict[str, Any], dim: int, capacity: int) -> HnswIndex:
        fd = self._open_checked(entry)
        try:
            sha, _ = _hash_fd(fd)
            if sha != entry["sha256"]:
                raise _Corrupt(f"{entry['name']} fails its sha256 check")
            # Load through the descriptor we verified, so a concurrent cleanup cannot swap it.
            src = f"/proc/self/fd/{fd}"
            if not os.path.exists(src):
                src = str(self.path / entry["name"])
            try:
                return HnswIndex.load(src, dim, capacity)
            except (RuntimeError, MemoryError, ValueError) as e:
                raise _Corrupt(f"{entry['name']}: hnswlib cannot load it ({e})") from None
        finally:
            os.close(fd)

    def _load_sources(self) -> _Sources:
        """All live entries' sources: the base file (read through the descriptor opened with the
        generation) plus those added since."""
        if self._sources is not None:
            return self._sources
        entry = self._manifest["files"]["sources"]
        fd = self._sources_fd
        if fd is None:
            raise GalleryError(f"gallery {self.path} was closed")
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        except OSError as e:
            raise GalleryError(f"cannot read {entry['name']} in {self.path}: {e}") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise GalleryError(
                f"gallery {self.path} is corrupt: {entry['name']} fails its sha256 check; "
                f"{rebuild_hint(self.path)}"
            )
        try:
            doc = json.loads(data)
            rows = list(zip(doc["path"], doc["sha256"], doc["added"], strict=True))
        except (ValueError, KeyError, TypeError) as e:
            raise GalleryError(
                f"gallery {self.path} is corrupt: {entry['name']}: {e}; {rebuild_hint(self.path)}"
            ) from None
        if len(rows) != self._base_labels.size:
            raise GalleryError(
                f"gallery {self.path} is corrupt: {entry['name']} length mismatch; "
                f"{rebuild_hint(self.path)}"
            )
        src = _Sources(self._next_label)
        live = self._ident_of
        for label, (path, sha, added) in zip(self._base_labels.tolist(), rows, strict=True):
            if live[label] >= 0:
                src.set(label, str(path), str(sha), str(added))
        for label, (path, sha, added) in self._new_sources.items():
            if live[label] >= 0:
                src.set(label, path, sha, added)
        self._sources = src
        self._new_sources = {}
        self._close_sources_fd()
        return src

    def _close_sources_fd(self) -> None:
        if self._sources_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._sources_fd)
            self._sources_fd = None

    def __del__(self) -> None:
        if getattr(self, "_sources_fd", None) is not None:
            self._close_sources_fd()


def delete_gallery_files(path: Path) -> int:
    """Delete the gallery files in `path` (even a corrupt gallery's), refusing a directory that
    holds anything else. Returns how many files were deleted."""
    if not path.exists():
        return 0
    if not path.is_dir():
        raise UsageError(f"{path} is a file, not a gallery directory")
    ours: list[Path] = []
    other: list[Path] = []
    for p in path.iterdir():
        known = p.name in (MANIFEST, LOCK) or _GEN_FILE.match(p.name) or p.name.endswith(".tmp")
        (ours if known and p.is_file() else other).append(p)
    if other:
        raise UsageError(
            f"{path} holds files that are not a gallery's (such as {other[0].name!r}); "
            "refusing to delete anything there"
        )
    # The manifest first: from then on no reader takes the directory for a gallery.
    for p in sorted(ours, key=lambda q: q.name != MANIFEST):
        p.unlink(missing_ok=True)
    return len(ours)


def _check_manifest(m: object, mpath: Path) -> dict[str, Any]:
    """The manifest if it is one this version understands, else GalleryError saying why."""
    if not isinstance(m, dict) or m.get("magic") != MAGIC:
        raise GalleryError(f"{mpath} is not a maskid gallery manifest")
    version = m.get("format_version")
    if not isinstance(version, int):
        raise GalleryError(
            f"gallery manifest {mpath} is corrupt (no format_version); {rebuild_hint(mpath.parent)}"
        )
    if version > FORMAT_VERSION:
        raise GalleryError(
            f"gallery {mpath.parent} has format version {version}, newer than this maskid "
            f"understands ({FORMAT_VERSION}); upgrade maskid to use it"
        )
    if version < 1:
        raise GalleryError(f"gallery manifest {mpath} has invalid format_version {version}")
    try:
        ok = (
            isinstance(m["embedder_id"], str)
            and isinstance(m["dim"], int)
            and m["dim"] > 0
            and m["space"] == "ip"
            and isinstance(m["generation"], int)
            and isinstance(m["count"], int)
            and isinstance(m["next_label"], int)
            and all(isinstance(m["hnsw"][k], int) for k in ("M", "ef_construction", "ef_search"))
            and all(isinstance(m["hnsw"][k], int) for k in ("capacity", "element_count"))
            and all(
                isinstance(m["files"][k]["name"], str)
                and _GEN_FILE.match(m["files"][k]["name"])
                and isinstance(m["files"][k]["size"], int)
                and isinstance(m["files"][k]["sha256"], str)
                for k in ("index", "meta", "sources")
            )
            and (
                version < 2
                or (
                    isinstance(m["commit"], int)
                    and m["journal"]["name"] == _gen_names(m["generation"])["journal"]
                )
            )
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise GalleryError(
            f"gallery manifest {mpath} is corrupt (missing or bad fields); "
            f"{rebuild_hint(mpath.parent)}"
        )
    return m
