"""The gallery: enrolled people and their face descriptors, kept like a small database.

A gallery is a directory::

    manifest.json          the commit point: format version, embedder, dim, hnswlib parameters,
                           and the name, size and sha256 of each file of the current generation
    index-000042.bin       hnswlib index, space 'ip' over L2-normalised float32 (= cosine)
    meta-000042.json       identity names and, per entry, hnswlib label -> identity
    sources-000042.json    per entry: source image path, its sha256 and the UTC time it was added
    .lock                  taken (filelock) by writers only

Every update writes a new generation of files, fsyncs them, then atomically replaces
`manifest.json` (write a temporary, fsync, rename, fsync the directory). The rename is the
commit: a crash at any moment leaves either the old or the new gallery, both loadable. Files of
a committed generation are never modified; older generations are deleted after the commit.

Writers hold an exclusive lock while they re-read the latest committed state, apply their
changes and commit, so concurrent enrollments lose nothing. Readers take no lock.

hnswlib files carry no header, so the manifest holds what the blob lacks (magic, format version,
metric, dim, embedder id, element count) plus its sha256, which is checked before hnswlib ever
parses the file: hnswlib can crash the process on a corrupt file.

A `Gallery` object is not thread-safe; use one per thread.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shlex
import signal
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from maskid.errors import GalleryError, UnknownIdentityError, UsageError
from maskid.face import Match

if TYPE_CHECKING:  # hnswlib and filelock load only where an index is read or a lock taken
    import filelock
    import hnswlib

__all__ = ["FORMAT_VERSION", "Gallery", "HnswParams", "validate_name"]

FORMAT_VERSION = 1
MAGIC = "maskid-gallery"
MANIFEST = "manifest.json"
LOCK = ".lock"
MAX_NAME_LEN = 128
_INITIAL_CAPACITY = 1024
_GEN_FILE = re.compile(r"^(index|meta|sources)-(\d{6,})\.(bin|json)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_T = TypeVar("_T")

# Test hook: a process with this set kills itself (SIGKILL) at the named point of a commit.
_CRASH_AT: str | None = os.environ.get("MASKID_GALLERY_CRASH_AT") or None
CRASH_POINTS = (
    "index-written",
    "meta-written",
    "sources-written",
    "manifest-tmp-written",
    "manifest-renamed",
    "cleanup",
)


def _crash_point(tag: str) -> None:
    if tag == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class HnswParams:
    """hnswlib parameters, stored in the manifest.

    M: graph degree (16 suits 128-d descriptors; 32 costs twice the links for a little recall).
    ef_construction: build-time beam width (higher builds slower, recalls better).
    ef_search: minimum query-time beam width; raised to the number of neighbours fetched.
        256 keeps recall@1 ~0.99 up to 1M entries (benchmarks/gallery.py); 96 suffices
        up to ~100k and is ~2x faster.
    """

    M: int = 16
    ef_construction: int = 200
    ef_search: int = 256


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


def rebuild_hint(path: str | os.PathLike[str]) -> str:
    """How to rebuild the gallery at `path`, as a command to copy (for error messages)."""
    return (
        f"rebuild it with `maskid build DATASET --gallery {shlex.quote(str(path))} --force` "
        "(DATASET: the folder of <name>/ photo folders it was built from), or enroll into "
        "a new --gallery"
    )


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


class _Sources:
    """Per-entry provenance, aligned with the entry arrays. Loaded only when needed."""

    def __init__(self, path: list[str], sha256: list[str], added: list[str]) -> None:
        self.path = path
        self.sha256 = sha256
        self.added = added
        self.known = set(sha256)
        self.known.discard("")

    def append(self, path: str, sha: str, added: str) -> None:
        self.path.append(path)
        self.sha256.append(sha)
        self.added.append(added)
        if sha:
            self.known.add(sha)

    def keep(self, mask: np.ndarray) -> None:
        idx = np.flatnonzero(mask).tolist()
        self.path = [self.path[i] for i in idx]
        self.sha256 = [self.sha256[i] for i in idx]
        self.added = [self.added[i] for i in idx]
        self.known = set(self.sha256)
        self.known.discard("")

    def to_json(self, generation: int) -> bytes:
        doc = {
            "generation": generation,
            "path": self.path,
            "sha256": self.sha256,
            "added": self.added,
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


class _Corrupt(Exception):
    """Internal: a file does not match the manifest (turned into GalleryError by the caller)."""


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
        self._generation = 0
        self._index: hnswlib.Index | None = None
        self._names: list[str] = []
        self._name_ids: dict[str, int] = {}
        self._counts: list[int] = []
        self._labels = np.zeros(0, np.int64)  # live entries, ascending
        self._ident = np.zeros(0, np.int32)  # identity id of each live entry
        self._next_label = 0
        self._sources: _Sources | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # vecs, labels, ids
        self._ops: list[
            tuple[str, Any, list[int]]
        ] = []  # this batch's updates, replayed if others commit
        self._batch_depth = 0
        self._stale = False
        self.num_threads = -1  # hnswlib threads for add/query; -1 = all cores
        self.ef_search: int | None = None  # overrides the manifest's ef_search for this object

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
        g._load_committed(with_sources=False)
        g.check_embedder(embedder_id, dim)  # (in case another process rebuilt it meanwhile)
        return g

    @classmethod
    def read_identities(cls, path: str | os.PathLike[str]) -> tuple[dict[str, int], dict[str, Any]]:
        """Name -> number of descriptors, and the manifest, of the gallery at `path`, read from
        its (verified) metadata alone: no index is loaded and no embedder is needed, so listing a
        large gallery stays cheap. Errors as `open` (GalleryError for none or a corrupt one)."""
        root = Path(path)
        if not (root / MANIFEST).exists():
            cls.open(root)  # raises the "no gallery" error
        elif not root.is_dir():
            raise GalleryError(f"{root} is not a directory")
        g = cls(root, 60.0)

        def load(manifest: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any]]:
            names, _, _, counts = g._read_meta(manifest)
            return {n: c for n, c in sorted(zip(names, counts, strict=True)) if c > 0}, manifest

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
            import hnswlib

            index = hnswlib.Index(space="ip", dim=dim)
            index.init_index(
                max_elements=_INITIAL_CAPACITY,
                M=hnsw.M,
                ef_construction=hnsw.ef_construction,
                allow_replace_deleted=True,
            )
            g._index = index
            g._sources = _Sources([], [], [])
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
        have = self.embedder_id
        if embedder_id is not None and embedder_id != have:
            raise GalleryError(
                f"gallery {self.path} was built with {have} but the current model is "
                f"{embedder_id}; {rebuild_hint(self.path)}"
            )
        if dim is not None and dim != self.dim:
            raise GalleryError(
                f"gallery {self.path} holds {self.dim}-d descriptors but the current model "
                f"makes {dim}-d ones; {rebuild_hint(self.path)}"
            )

    # -- properties --------------------------------------------------------------------------
    @property
    def embedder_id(self) -> str:
        return str(self._manifest["embedder_id"])

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def generation(self) -> int:
        """Number of the committed generation this object reflects (excluding a batch's changes)."""
        return self._generation

    @property
    def hnsw(self) -> HnswParams:
        h = self._manifest["hnsw"]
        return HnswParams(int(h["M"]), int(h["ef_construction"]), int(h["ef_search"]))

    def __len__(self) -> int:
        self._ensure_fresh()
        return int(self._labels.size) + sum(int(p[1].size) for p in self._pending)

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

    def has_source(self, sha256: str) -> bool:
        """Whether an image with this sha256 (hex) already contributed descriptors."""
        self._ensure_fresh()
        return sha256.lower() in self._load_sources().known

    def refresh(self) -> bool:
        """Pick up changes other processes committed; returns whether anything changed."""
        if self._batch_depth:
            raise UsageError("cannot refresh a gallery inside a batch")
        manifest = self._read_manifest()
        if int(manifest["generation"]) == self._generation and not self._stale:
            return False
        self._load_committed(with_sources=False)
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
        srcs = self._as_sources(sources, len(vecs))
        labels: list[int] = []  # filled in again if the batch is replayed on newer state
        with self.batch():
            self._ops.append(("add", (name, vecs, srcs), labels))
            labels[:] = self._apply_add(name, vecs, srcs)
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
        if name not in self._name_ids and not self._batch_depth:
            self.refresh()  # another process may have enrolled them since we loaded
        if name not in self._name_ids:
            raise UnknownIdentityError(f"no identity named {name!r} in gallery {self.path}")
        with self.batch():
            self._ops.append(("remove", name, []))
            return self._apply_remove(name)

    @contextlib.contextmanager
    def batch(self) -> Iterator[Gallery]:
        """Group updates into one atomic commit, made when the block ends without an exception.

        The lock is taken only for the commit; if another process committed since this object
        loaded the gallery, its latest state is re-read and this batch's updates are replayed
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
        self._load_sources()
        self._batch_depth = 1
        self._ops = []
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
        live = int(self._labels.size)
        if live == 0:
            raise GalleryError(
                f"gallery {self.path} is empty; enroll someone with `maskid enroll NAME IMAGE` "
                "or `maskid build DATASET`"
            )
        k_ids = min(int(k), len(self._names))  # every name has at least one entry
        want = min(live, max(4 * k_ids, 16))
        while True:
            labels, dists = self._knn(q, want)
            results, short = self._aggregate(labels, dists, k_ids)
            if not short or want >= live:
                return results
            want = min(live, want * 4)

    def _knn(self, q: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._require_index()
        ef = max(self.ef_search or self.hnsw.ef_search, want)
        while True:
            index.set_ef(ef)
            try:
                labels, dists = index.knn_query(q, k=want, num_threads=self.num_threads)
                return labels.astype(np.int64), dists
            except RuntimeError:
                # Too few reachable live entries (many deletions): widen the beam, then go exact.
                if ef >= index.element_count:
                    return self._exact_knn(q, want)
                ef = min(ef * 4, index.element_count)

    def _exact_knn(self, q: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._require_index()
        vecs = np.asarray(index.get_items(self._labels, return_type="numpy"), np.float32)
        sims = q @ vecs.T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :want]
        return self._labels[order], 1.0 - np.take_along_axis(sims, order, axis=1)

    def _aggregate(
        self, labels: np.ndarray, dists: np.ndarray, k: int
    ) -> tuple[list[list[Match]], bool]:
        pos = np.searchsorted(self._labels, labels)
        pos = np.minimum(pos, self._labels.size - 1)
        if not np.array_equal(self._labels[pos], labels):
            raise GalleryError(
                f"gallery {self.path}: index and metadata disagree; {rebuild_hint(self.path)}"
            )
        ids = self._ident[pos].tolist()
        results: list[list[Match]] = []
        short = False
        names = self._names
        for row_ids, row_d in zip(ids, dists.tolist(), strict=True):
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
        a = np.asarray(vectors)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[0] == 0:
            raise UsageError(f"{what} must have shape (n, {self.dim}) with n >= 1, not {a.shape}")
        if a.shape[1] != self.dim:
            raise GalleryError(
                f"{what} are {a.shape[1]}-d but gallery {self.path} holds {self.dim}-d "
                f"descriptors from {self.embedder_id}"
            )
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise UsageError(f"{what} must be numbers, not {a.dtype}")
        a = a.astype(np.float32)
        if not np.isfinite(a).all():
            raise UsageError(f"{what} contain NaN or infinite values")
        norms = np.linalg.norm(a, axis=1, keepdims=True)
        if (norms < 1e-12).any():
            raise UsageError(f"{what} contain an all-zero vector")
        return np.ascontiguousarray(a / norms, dtype=np.float32)

    @staticmethod
    def _as_sources(sources: Sequence[dict[str, Any]] | None, n: int) -> list[tuple[str, str]]:
        if sources is None:
            return [("", "")] * n
        if len(sources) != n:
            raise UsageError(f"got {len(sources)} sources for {n} vectors; give one per vector")
        out = []
        for s in sources:
            if not isinstance(s, dict):
                raise UsageError("each source must be a dict with 'path' and 'sha256'")
            path = str(s.get("path", ""))
            sha = str(s.get("sha256", "")).lower()
            if sha and not _SHA256.match(sha):
                raise UsageError(f"source sha256 {sha!r} is not 64 hex digits")
            out.append((path, sha))
        return out

    # -- in-memory updates -----------------------------------------------------------------
    def _apply_add(self, name: str, vecs: np.ndarray, srcs: list[tuple[str, str]]) -> list[int]:
        n = len(vecs)
        ident = self._name_ids.get(name)
        if ident is None:
            ident = len(self._names)
            self._names.append(name)
            self._counts.append(0)
            self._name_ids[name] = ident
        labels = np.arange(self._next_label, self._next_label + n, dtype=np.int64)
        self._next_label += n
        self._counts[ident] += n
        self._pending.append((vecs, labels, np.full(n, ident, np.int32)))
        sources = self._load_sources()
        added = _now()
        for path, sha in srcs:
            sources.append(path, sha, added)
        return labels.tolist()

    def _apply_remove(self, name: str) -> int:
        ident = self._name_ids.get(name)
        if ident is None:
            return 0
        self._flush()
        index = self._require_index()
        mask = self._ident == ident
        for label in self._labels[mask].tolist():
            index.mark_deleted(label)
        keep = ~mask
        removed = int(mask.sum())
        self._labels = self._labels[keep]
        ident_arr = self._ident[keep]
        ident_arr[ident_arr > ident] -= 1
        self._ident = ident_arr
        self._load_sources().keep(keep)
        del self._names[ident]
        del self._counts[ident]
        self._name_ids = {n: i for i, n in enumerate(self._names)}
        return removed

    def _flush(self) -> None:
        """Insert descriptors buffered by add() into the hnswlib index (one multi-threaded call)."""
        if not self._pending:
            return
        index = self._require_index()
        vecs = np.concatenate([p[0] for p in self._pending])
        labels = np.concatenate([p[1] for p in self._pending])
        ident = np.concatenate([p[2] for p in self._pending])
        need = index.element_count + len(vecs)
        if need > index.max_elements:
            index.resize_index(max(need, index.max_elements * 3 // 2 + _INITIAL_CAPACITY))
        index.add_items(vecs, labels, num_threads=self.num_threads, replace_deleted=True)
        self._labels = np.concatenate([self._labels, labels])
        self._ident = np.concatenate([self._ident, ident])
        self._pending = []

    def _require_index(self) -> hnswlib.Index:
        if self._index is None:
            raise GalleryError(f"gallery {self.path} was closed")
        return self._index

    def _ensure_fresh(self) -> None:
        if self._stale:
            self._load_committed(with_sources=False)

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
            latest = self._read_manifest()
            if int(latest["generation"]) != self._generation:
                # Someone else committed since we loaded: read-modify-write on their state.
                ops = self._ops
                self._load_committed(with_sources=True)
                for op, arg, labels in ops:
                    if op == "add":
                        labels[:] = self._apply_add(*arg)
                    else:
                        self._apply_remove(arg)
            self._flush()
            self._write_generation(self._generation + 1)

    def _write_generation(self, gen: int) -> None:
        index = self._require_index()
        sources = self._load_sources()
        d = self.path
        names = {k: f"{k}-{gen:06d}.{ext}" for k, ext in (("index", "bin"), ("meta", "json"))}
        names["sources"] = f"sources-{gen:06d}.json"
        try:
            index.save_index(str(d / names["index"]))
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
                "names": self._names,
                "label": self._labels.tolist(),
                "identity": self._ident.tolist(),
            }
            meta_bytes = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode()
            files["meta"] = _write_file(d / names["meta"], meta_bytes)
            _crash_point("meta-written")
            files["sources"] = _write_file(d / names["sources"], sources.to_json(gen))
            _crash_point("sources-written")
            manifest = dict(self._manifest)
            manifest.update(
                generation=gen,
                count=int(self._labels.size),
                identities=len(self._names),
                next_label=self._next_label,
                updated=_now(),
                files=files,
            )
            manifest["hnsw"] = dict(
                manifest["hnsw"],
                capacity=int(index.max_elements),
                element_count=int(index.element_count),
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
        self._generation = gen
        self._stale = False
        _crash_point("cleanup")
        self._cleanup()

    def _cleanup(self) -> None:
        """Delete files of other generations and leftovers of crashed writers (under the lock)."""
        current = {f["name"] for f in self._manifest["files"].values()}
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

    def _load_committed(self, with_sources: bool) -> None:
        """Load the latest committed generation (retrying if a writer replaces it meanwhile)."""
        self._committed(lambda manifest: self._load_generation(manifest, with_sources))

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

    def _load_generation(self, manifest: dict[str, Any], with_sources: bool) -> None:
        files = manifest["files"]
        dim = int(manifest["dim"])
        hn = manifest["hnsw"]
        # Metadata first (small), then the index: both verified before they are parsed.
        names, labels, ident, counts = self._read_meta(manifest)
        index = self._load_index(files["index"], dim, int(hn["capacity"]))
        if index.element_count != hn["element_count"] or index.element_count < labels.size:
            raise _Corrupt(f"{files['index']['name']}: element count disagrees with the manifest")

        sources_fd = self._open_checked(files["sources"])
        # Commit the new state only once everything loaded.
        self._close_sources_fd()
        self._manifest = manifest
        self._generation = int(manifest["generation"])
        self._index = index
        self._names = names
        self._name_ids = {n: i for i, n in enumerate(names)}
        self._counts = counts
        self._labels = labels
        self._ident = ident
        self._next_label = int(manifest["next_label"])
        self._pending = []
        self._sources = None
        self._sources_fd = sources_fd
        self._stale = False
        if with_sources:
            self._load_sources()

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

    def _load_index(self, entry: dict[str, Any], dim: int, capacity: int) -> hnswlib.Index:
        fd = self._open_checked(entry)
        try:
            sha, _ = _hash_fd(fd)
            if sha != entry["sha256"]:
                raise _Corrupt(f"{entry['name']} fails its sha256 check")
            # Load through the descriptor we verified, so a concurrent cleanup cannot swap it.
            src = f"/proc/self/fd/{fd}"
            if not os.path.exists(src):
                src = str(self.path / entry["name"])
            import hnswlib

            index = hnswlib.Index(space="ip", dim=dim)
            try:
                index.load_index(src, max_elements=capacity, allow_replace_deleted=True)
            except (RuntimeError, MemoryError, ValueError) as e:
                raise _Corrupt(f"{entry['name']}: hnswlib cannot load it ({e})") from None
        finally:
            os.close(fd)
        return index

    def _load_sources(self) -> _Sources:
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
            src = _Sources(
                [str(x) for x in doc["path"]],
                [str(x) for x in doc["sha256"]],
                [str(x) for x in doc["added"]],
            )
        except (ValueError, KeyError, TypeError) as e:
            raise GalleryError(
                f"gallery {self.path} is corrupt: {entry['name']}: {e}; {rebuild_hint(self.path)}"
            ) from None
        n = self._labels.size
        if not (len(src.path) == len(src.sha256) == len(src.added) == n):
            raise GalleryError(
                f"gallery {self.path} is corrupt: {entry['name']} length mismatch; "
                f"{rebuild_hint(self.path)}"
            )
        self._sources = src
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
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise GalleryError(
            f"gallery manifest {mpath} is corrupt (missing or bad fields); "
            f"{rebuild_hint(mpath.parent)}"
        )
    return m
