"""A gallery in a Milvus collection: `milvus://HOST:PORT/COLLECTION`, through pymilvus.

For a site where many cameras search and many desks enroll into one gallery too large or too
important for one box: Milvus (a cluster, or the single-process `milvus-lite server`) keeps the
descriptors, replicates and searches them. Install with `pip install maskid[milvus]`.

One collection is one gallery. Each row is one descriptor::

    id             INT64, primary key, assigned by the server (auto_id)
    name           VARCHAR   identity name (validated as in the directory store)
    vector         FLOAT_VECTOR(dim), L2-normalised; HNSW index, metric COSINE
    source_path    VARCHAR   image the descriptor came from (provenance, may be truncated)
    source_sha256  VARCHAR   its sha256, for `has_source` (`maskid build` skips known photos)
    added          VARCHAR   UTC time of the insert

The collection's property `maskid.gallery` holds the metadata record (JSON: magic, format
version, embedder id, dim, metric), written in the same request that creates the collection,
so a collection made by another embedder is refused as the directory store refuses one.

Visibility and durability: the collection is created with consistency level Strong and every
search and query asks for Strong, so a read waits until the server has applied every write
acknowledged before it was sent: an enrollment acknowledged to the user is found by the next
`recognize` from any process. No flush is issued: Milvus makes an insert durable in its log
before acknowledging it (milvus-lite: its write-ahead log, which survives the server being
killed; see docs/milvus.md for what it does not survive).

What Milvus does not give that the directory store does: a batch is applied as separate
requests (inserts of up to INSERT_ROWS descriptors, deletes by name), so a crash while
committing a large batch can leave part of it in; `maskid build` then resumes, skipping the
photos already in. Reads always see the server's current state (no snapshot, `refresh` is a
no-op).

A `MilvusGallery` object is not thread-safe; use one per thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from maskid.errors import GalleryError, UnknownIdentityError, UsageError
from maskid.face import Match
from maskid.gallery.checks import SHA256, same_embedder, source_pairs, unit_vectors
from maskid.gallery.store import HnswParams, validate_name

if TYPE_CHECKING:
    from pymilvus import MilvusClient

__all__ = ["SCHEME", "MilvusGallery", "MilvusLocation", "parse_location"]

SCHEME = "milvus"
DEFAULT_PORT = 19530
FORMAT_VERSION = 1
MAGIC = "maskid-gallery"
META_PROPERTY = "maskid.gallery"
TOKEN_ENV = "MASKID_MILVUS_TOKEN"  # "user:password" or an API key, for a server with auth on

MAX_TOPK = 16384  # Milvus's limit on neighbours per search
INSERT_ROWS = 4096  # descriptors per insert request (a 512-d row is ~2 KiB + its path)
DELETE_NAMES = 1000  # names per delete request
CONNECT_TIMEOUT = 10.0  # seconds to reach the server
RPC_TIMEOUT = 120.0  # seconds per request, retries included (a restarting server may come back)
NAME_BYTES = 512  # VARCHAR lengths are in bytes: 128 characters of up to 4 bytes
PATH_BYTES = 4096
_COLLECTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_T = TypeVar("_T")


@dataclass(frozen=True)
class MilvusLocation:
    host: str
    port: int
    collection: str

    @property
    def uri(self) -> str:
        """The location as the user writes it (`milvus://HOST:PORT/COLLECTION`)."""
        return f"{SCHEME}://{self._netloc}/{self.collection}"

    @property
    def server(self) -> str:
        """pymilvus's address of the server."""
        return f"http://{self._netloc}"

    @property
    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_location(location: str) -> MilvusLocation:
    """`milvus://HOST[:PORT]/COLLECTION` (port 19530 by default), or UsageError saying why not."""
    try:
        parts = urlsplit(location)
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise UsageError(f"bad Milvus gallery URI {location!r}: {e}") from None
    example = f"{SCHEME}://HOST:PORT/COLLECTION"
    if parts.scheme != SCHEME or not parts.hostname:
        raise UsageError(f"bad Milvus gallery URI {location!r}; expected {example}")
    if parts.username or parts.password:
        raise UsageError(
            f"{location!r}: put no credentials in the gallery URI (it shows in `ps` and logs); "
            f"set ${TOKEN_ENV} to 'user:password' or an API key instead"
        )
    if parts.query or parts.fragment:
        raise UsageError(f"bad Milvus gallery URI {location!r}: no ?query or #fragment; {example}")
    collection = parts.path.strip("/")
    if not _COLLECTION.match(collection):
        raise UsageError(
            f"bad Milvus gallery URI {location!r}: the collection name (after HOST:PORT/) must be "
            "1-255 letters, digits or underscores, not starting with a digit"
        )
    return MilvusLocation(parts.hostname, port, collection)


def rebuild_hint(uri: str) -> str:
    return (
        f"rebuild it with `maskid build DATASET --gallery {shlex.quote(uri)} --force` "
        "(DATASET: the folder of <name>/ photo folders it was built from), or use a new "
        "collection name"
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _literal(s: str) -> str:
    """`s` as a string literal in a Milvus filter expression (names hold no backslashes or
    control characters: `validate_name`; json escapes the quotes)."""
    return json.dumps(s, ensure_ascii=False)


def _truncate_utf8(s: str, limit: int) -> str:
    b = s.encode()
    return s if len(b) <= limit else b[:limit].decode(errors="ignore")


def _import_pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise GalleryError(
            "a milvus:// gallery needs pymilvus: pip install 'maskid[milvus]'"
        ) from None
    # pymilvus logs every failed request with a traceback on stderr; maskid reports each error
    # once, as one line (GalleryError), so its log is kept for what the user did not cause.
    for name in ("pymilvus", "pymilvus.milvus_client"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return pymilvus


def _connect(loc: MilvusLocation, timeout: float) -> MilvusClient:
    pymilvus = _import_pymilvus()
    try:
        return pymilvus.MilvusClient(
            uri=loc.server, token=os.environ.get(TOKEN_ENV, ""), timeout=timeout
        )
    except pymilvus.MilvusException as e:
        raise GalleryError(
            f"cannot reach the Milvus server for gallery {loc.uri}: {_reason(e)}; is it running "
            "and reachable from here?"
        ) from None


def _reason(e: Exception) -> str:
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    return " ".join(str(msg).split())  # one line


def _code(e: Exception) -> int | None:
    code = getattr(e, "code", None)
    return code if isinstance(code, int) else None


class MilvusGallery:
    """Enrolled identities in a Milvus collection; the same interface as `store.Gallery`.

    Open with `MilvusGallery.open(...)` (or `maskid.gallery.open_gallery("milvus://...")`).
    """

    def __init__(self, loc: MilvusLocation, client: MilvusClient) -> None:
        # Use MilvusGallery.open(); this only sets up an empty shell.
        self.loc = loc
        self.location = loc.uri
        self._client: MilvusClient | None = client
        self._meta: dict[str, Any] = {}
        self._ops: list[tuple[str, Any, list[int]]] = []  # the open batch's updates, in order
        self._batch_depth = 0
        self.ef_search: int | None = None  # overrides the collection's ef_search for this object

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        location: str,
        embedder_id: str | None = None,
        dim: int | None = None,
        create: bool = False,
        *,
        hnsw: HnswParams | None = None,
        timeout: float = CONNECT_TIMEOUT,
    ) -> MilvusGallery:
        """Open the gallery in the collection at `location` (`milvus://HOST:PORT/COLLECTION`).

        embedder_id, dim: when given, the collection must have been made by that embedder
            (else GalleryError saying how to rebuild). Both are required with create=True.
        create: make an empty gallery if the collection does not exist.
        hnsw: HNSW parameters for a new collection's index (the directory store's defaults when
            None); an existing collection keeps its own.
        timeout: seconds to wait for the server to answer the connection.
        """
        if dim is not None and (not isinstance(dim, int) or dim <= 0):
            raise UsageError(f"descriptor dim must be a positive integer, not {dim!r}")
        loc = parse_location(location)
        g = cls(loc, _connect(loc, timeout))
        try:
            if not g._has_collection():
                if not create:
                    raise GalleryError(
                        f"no gallery at {loc.uri} (the server has no collection "
                        f"{loc.collection!r}); create one with `maskid build DATASET` or "
                        "`maskid enroll NAME IMAGE`"
                    )
                if not embedder_id or dim is None:
                    raise UsageError("embedder_id and dim are needed to create a gallery")
                g._create(embedder_id, dim, hnsw or HnswParams())
            g._meta = g._read_meta()
            g.check_embedder(embedder_id, dim)
            g._ensure_loaded()
        except BaseException:
            g.close()
            raise
        return g

    @classmethod
    def exists(cls, location: str, *, timeout: float = CONNECT_TIMEOUT) -> bool:
        """Whether the server has the collection (GalleryError if it cannot be reached)."""
        loc = parse_location(location)
        g = cls(loc, _connect(loc, timeout))
        try:
            return g._has_collection()
        finally:
            g.close()

    @classmethod
    def read_identities(cls, location: str) -> dict[str, int]:
        """Name -> number of descriptors, with no embedder needed."""
        with cls.open(location) as g:
            return g.identities()

    @classmethod
    def delete(cls, location: str) -> int:
        """Drop the gallery's collection (1), or nothing if there is none (0). A collection
        that is not a maskid gallery is refused untouched."""
        loc = parse_location(location)
        g = cls(loc, _connect(loc, CONNECT_TIMEOUT))
        try:
            if not g._has_collection():
                return 0
            if META_PROPERTY not in g._describe().get("properties", {}):  # a corrupt one goes
                raise UsageError(
                    f"collection {loc.collection!r} at {loc.server} is not a maskid gallery; "
                    "refusing to drop it"
                )
            g._rpc("drop the collection", g._c.drop_collection, loc.collection)
            return 1
        finally:
            g.close()

    def _create(self, embedder_id: str, dim: int, hnsw: HnswParams) -> None:
        pymilvus = _import_pymilvus()
        c = self._c
        schema = c.create_schema(
            auto_id=True,
            enable_dynamic_field=False,
            description=f"maskid gallery: {embedder_id} {dim}-d descriptors",
        )
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("name", pymilvus.DataType.VARCHAR, max_length=NAME_BYTES)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("source_path", pymilvus.DataType.VARCHAR, max_length=PATH_BYTES)
        schema.add_field("source_sha256", pymilvus.DataType.VARCHAR, max_length=64)
        schema.add_field("added", pymilvus.DataType.VARCHAR, max_length=32)
        meta = {
            "magic": MAGIC,
            "format_version": FORMAT_VERSION,
            "embedder_id": embedder_id,
            "dim": dim,
            "metric": "cosine",
            "normalized": True,
            "hnsw": {
                "M": hnsw.M,
                "ef_construction": hnsw.ef_construction,
                "ef_search": hnsw.ef_search,
            },
            "created": _now(),
        }
        try:
            c.create_collection(
                self.loc.collection,
                schema=schema,
                consistency_level="Strong",
                properties={META_PROPERTY: json.dumps(meta)},
                timeout=RPC_TIMEOUT,
            )
        except pymilvus.MilvusException as e:
            # Another process may have created it meanwhile: then use theirs (checked next).
            if not self._has_collection():
                raise GalleryError(f"cannot create gallery {self.location}: {_reason(e)}") from None
        self._meta = meta
        self._ensure_index()

    def _ensure_index(self) -> None:
        pymilvus = _import_pymilvus()
        c = self._c
        if self._rpc("list indexes", c.list_indexes, self.loc.collection):
            return
        params = c.prepare_index_params()
        params.add_index(
            "vector",
            index_type="HNSW",
            metric_type="COSINE",
            params={"M": self.hnsw.M, "efConstruction": self.hnsw.ef_construction},
        )
        # Scalar indexes: `remove` and `has_source` filter on these, once per name or photo.
        params.add_index("name", index_type="INVERTED")
        params.add_index("source_sha256", index_type="INVERTED")
        try:
            c.create_index(self.loc.collection, params, timeout=RPC_TIMEOUT)
        except pymilvus.MilvusException as e:
            if not self._rpc("list indexes", c.list_indexes, self.loc.collection):
                raise GalleryError(
                    f"cannot index gallery {self.location}: {_reason(e)}"
                ) from None  # else another process indexed it meanwhile

    def _ensure_loaded(self) -> None:
        """Milvus searches only loaded collections; a restarted server forgets the load."""
        self._ensure_index()
        state = self._rpc("read the load state", self._c.get_load_state, self.loc.collection)
        if "Loaded" not in str(state.get("state", "")):
            self._load()

    def _describe(self) -> dict[str, Any]:
        desc = self._rpc(
            "describe the collection", self._c.describe_collection, self.loc.collection
        )
        return dict(desc)

    def _read_meta(self) -> dict[str, Any]:
        desc = self._describe()
        raw = (desc.get("properties") or {}).get(META_PROPERTY)
        if raw is None:
            raise GalleryError(
                f"collection {self.loc.collection!r} at {self.loc.server} is not a maskid gallery "
                f"(no {META_PROPERTY!r} property); choose another collection name"
            )
        try:
            meta = json.loads(raw)
            ok = (
                isinstance(meta, dict)
                and meta.get("magic") == MAGIC
                and isinstance(meta.get("format_version"), int)
                and isinstance(meta.get("embedder_id"), str)
                and isinstance(meta.get("dim"), int)
            )
        except ValueError:
            ok = False
        if not ok:
            raise GalleryError(
                f"gallery {self.location}: its {META_PROPERTY!r} record is corrupt; "
                f"{rebuild_hint(self.location)}"
            )
        if meta["format_version"] > FORMAT_VERSION:
            raise GalleryError(
                f"gallery {self.location} has format version {meta['format_version']}, newer "
                f"than this maskid understands ({FORMAT_VERSION}); upgrade maskid to use it"
            )
        fields = {f.get("name"): f for f in desc.get("fields", [])}
        have_dim = (fields.get("vector") or {}).get("params", {}).get("dim")
        if have_dim is not None and int(have_dim) != meta["dim"]:
            raise GalleryError(
                f"gallery {self.location}: its vector field is {have_dim}-d but its record says "
                f"{meta['dim']}-d; {rebuild_hint(self.location)}"
            )
        return dict(meta)

    def check_embedder(self, embedder_id: str | None, dim: int | None) -> None:
        """GalleryError (saying how to rebuild) unless the gallery was built by `embedder_id`
        with `dim`-d descriptors (None: not checked)."""
        same_embedder(self.location, (self.embedder_id, self.dim), embedder_id, dim)

    # -- properties --------------------------------------------------------------------------
    @property
    def embedder_id(self) -> str:
        return str(self._meta["embedder_id"])

    @property
    def dim(self) -> int:
        return int(self._meta["dim"])

    @property
    def hnsw(self) -> HnswParams:
        """The HNSW parameters the collection was made with (its index may have been replaced
        by an operator: maskid searches whatever index the collection has)."""
        h = self._meta.get("hnsw") or {}
        d = HnswParams()
        return HnswParams(
            int(h.get("M", d.M)),
            int(h.get("ef_construction", d.ef_construction)),
            int(h.get("ef_search", d.ef_search)),
        )

    @property
    def metadata(self) -> dict[str, Any]:
        """The collection's maskid record (embedder, dim, format version, ...)."""
        return dict(self._meta)

    def __len__(self) -> int:
        return self._count("") + self._pending_delta(None)

    def __repr__(self) -> str:
        embedder = self._meta.get("embedder_id")
        return f"MilvusGallery({self.location!r}, embedder={embedder!r})"

    def __enter__(self) -> MilvusGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the object is unusable afterwards)."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def identities(self) -> dict[str, int]:
        """Name -> number of descriptors, for everyone enrolled (sorted by name)."""
        counts: Counter[str] = Counter()
        it = self._rpc(
            "list identities",
            self._c.query_iterator,
            self.loc.collection,
            batch_size=MAX_TOPK,  # fewer pages: some servers scan every row per page
            filter="",
            output_fields=["name"],
            consistency_level="Strong",
        )
        try:
            while True:
                rows = self._rpc("list identities", it.next, timed=False)
                if not rows:
                    break
                counts.update(r["name"] for r in rows)
        finally:
            with contextlib.suppress(Exception):
                it.close()
        for op, arg, _ in self._ops:  # an open batch's updates, as the store shows them
            if op == "add":
                counts[arg[0]] += len(arg[1])
            else:
                counts.pop(arg, None)
        return {n: c for n, c in sorted(counts.items()) if c > 0}

    def has_source(self, sha256: str) -> bool:
        """Whether an image with this sha256 (hex) already contributed descriptors."""
        sha = sha256.lower()
        if not SHA256.match(sha):
            return False
        under: set[str] = set()  # names the open batch adds this image under
        removed: list[str] = []  # names it removes: their committed descriptors go too
        for op, arg, _ in self._ops:
            if op == "add":
                if any(s == sha for _, s in arg[2]):
                    under.add(arg[0])
            else:
                under.discard(arg)
                removed.append(arg)
        if under:
            return True
        expr = f'source_sha256 == "{sha}"'
        if removed:
            expr += f" and name not in [{', '.join(_literal(n) for n in removed)}]"
        rows = self._rpc(
            "look up a source",
            self._c.query,
            self.loc.collection,
            filter=expr,
            output_fields=["id"],
            limit=1,
            consistency_level="Strong",
        )
        return bool(rows)

    def refresh(self) -> bool:
        """Nothing to pick up: every read asks the server for its current state."""
        if self._batch_depth:
            raise UsageError("cannot refresh a gallery inside a batch")
        return False

    # -- updates ---------------------------------------------------------------------------
    def add(
        self,
        name: str,
        vectors: np.ndarray,
        sources: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Add descriptors of identity `name`; returns their ids (assigned by the server).

        vectors: (n, dim) or (dim,) floats; stored L2-normalised as float32.
        sources: one dict per vector with "path" and "sha256" of the image it came from.
        Commits at once, unless inside `batch()` (then the returned list is filled in when the
        batch commits).
        """
        name = validate_name(name)
        vecs = self._as_vectors(vectors, what="vectors")
        srcs = [
            (_truncate_utf8(path, PATH_BYTES), sha)
            for path, sha in source_pairs(sources, len(vecs))
        ]
        labels: list[int] = []
        with self.batch():
            self._ops.append(("add", (name, vecs, srcs), labels))
        return labels

    def add_many(
        self, items: Iterable[tuple[str, np.ndarray, Sequence[dict[str, Any]] | None]]
    ) -> list[list[int]]:
        """`add` for each (name, vectors, sources), all in one batch."""
        with self.batch():
            return [self.add(name, vecs, srcs) for name, vecs, srcs in items]

    def remove(self, name: str) -> int:
        """Remove identity `name` and all its descriptors; returns how many were removed."""
        name = validate_name(name)
        n = self._named(name) + self._pending_delta(name)
        if n <= 0:
            raise UnknownIdentityError(f"no identity named {name!r} in gallery {self.location}")
        with self.batch():
            self._ops.append(("remove", name, []))
        return n

    def _pending_delta(self, name: str | None) -> int:
        """Descriptors the open batch adds (minus removes) for `name` (None: all names)."""
        if not self._ops:
            return 0
        counts: Counter[str] = Counter()
        removed: set[str] = set()
        for op, arg, _ in self._ops:
            if op == "add":
                counts[arg[0]] += len(arg[1])
            else:
                counts[arg] = 0
                removed.add(arg)
        if name is not None:
            if name in removed:  # the batch's removal also takes the committed descriptors
                return counts[name] - self._named(name)
            return counts[name]
        total = sum(counts.values())
        if removed:
            names = ", ".join(_literal(n) for n in sorted(removed))
            total -= self._count(f"name in [{names}]")
        return total

    @contextlib.contextmanager
    def batch(self) -> Iterator[MilvusGallery]:
        """Group updates: they are sent when the block ends without an exception (in order:
        consecutive additions as inserts of up to INSERT_ROWS rows, removals as deletes by
        name). An exception inside the block discards them all."""
        self._c  # noqa: B018 (a closed gallery fails here, not at the end of the block)
        if self._batch_depth:
            self._batch_depth += 1
            try:
                yield self
            finally:
                self._batch_depth -= 1
            return
        self._batch_depth = 1
        self._ops = []
        try:
            yield self
            ops, self._ops = self._ops, []
            self._commit(ops)
        finally:
            self._batch_depth = 0
            self._ops = []

    def _commit(self, ops: list[tuple[str, Any, list[int]]]) -> None:
        i = 0
        while i < len(ops):  # runs of the same kind of update, one request per run (chunk)
            j = i
            while j < len(ops) and ops[j][0] == ops[i][0]:
                j += 1
            if ops[i][0] == "add":
                self._insert(ops[i:j])
            else:
                names = [_literal(op[1]) for op in ops[i:j]]
                for s in range(0, len(names), DELETE_NAMES):
                    expr = f"name in [{', '.join(names[s : s + DELETE_NAMES])}]"
                    self._rpc("remove identities", self._c.delete, self.loc.collection, filter=expr)
            i = j

    def _insert(self, adds: list[tuple[str, Any, list[int]]]) -> None:
        added = _now()
        rows: list[dict[str, Any]] = []
        owners: list[list[int]] = []  # the labels list each row's id goes to
        for _, (name, vecs, srcs), labels in adds:
            for v, (path, sha) in zip(vecs, srcs, strict=True):
                rows.append(
                    {
                        "name": name,
                        "vector": v,
                        "source_path": path,
                        "source_sha256": sha,
                        "added": added,
                    }
                )
                owners.append(labels)
        for s in range(0, len(rows), INSERT_ROWS):
            res = self._rpc(
                "add descriptors", self._c.insert, self.loc.collection, rows[s : s + INSERT_ROWS]
            )
            ids = list(res.get("ids", []))
            for labels, pk in zip(owners[s : s + INSERT_ROWS], ids, strict=False):
                labels.append(int(pk))

    # -- search ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Match]]:
        """The k best identities for each query, best first, scored by cosine similarity.

        queries: (m, dim) or (dim,) floats (normalised here). An identity's score is that of
        its best-matching descriptor. Raises GalleryError if the gallery is empty. A batch's
        updates are not seen before it commits.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise UsageError(f"k must be a positive integer, not {k!r}")
        q = self._as_vectors(queries, what="queries")
        want = min(MAX_TOPK, max(4 * int(k), 16))
        while True:
            hits = self._knn(q, want)
            results: list[list[Match]] = []
            short = False
            for row in hits:
                # Neighbours come best first, so an identity's first hit is its best score.
                seen: set[str] = set()
                out: list[Match] = []
                for name, score in row:
                    if name not in seen:
                        seen.add(name)
                        out.append(Match(name, score))
                        if len(out) == k:
                            break
                # Fewer than k names among `want` neighbours, and there may be more entries.
                short |= len(out) < k and len(row) == want
                results.append(out)
            if not short or want >= MAX_TOPK:
                break
            want = min(MAX_TOPK, want * 4)
        if not any(results):
            raise GalleryError(
                f"gallery {self.location} is empty; enroll someone with `maskid enroll NAME "
                "IMAGE` or `maskid build DATASET`"
            )
        return results

    def _knn(self, q: np.ndarray, want: int) -> list[list[tuple[str, float]]]:
        ef = max(self.ef_search or self.hnsw.ef_search, want)
        res = self._rpc(
            "search",
            self._c.search,
            self.loc.collection,
            data=list(q),
            limit=want,
            output_fields=["name"],
            search_params={"metric_type": "COSINE", "params": {"ef": ef}},
            consistency_level="Strong",
        )
        # COSINE "distance" in Milvus is the similarity (higher is closer).
        return [[(h["entity"]["name"], float(h["distance"])) for h in row] for row in res]

    def count(self, name: str) -> int:
        """Descriptors enrolled under `name` (0: nobody of that name), the open batch included."""
        return self._named(name) + self._pending_delta(name)

    def _named(self, name: str) -> int:
        """Descriptors committed under `name` (a filtered query: count(*) scans every row on
        some servers, and one person has few descriptors)."""
        rows = self._rpc(
            "look up an identity",
            self._c.query,
            self.loc.collection,
            filter=f"name == {_literal(name)}",
            output_fields=["id"],
            limit=MAX_TOPK,
            consistency_level="Strong",
        )
        return len(rows)

    def _count(self, expr: str) -> int:
        rows = self._rpc(
            "count descriptors",
            self._c.query,
            self.loc.collection,
            filter=expr,
            output_fields=["count(*)"],
            consistency_level="Strong",
        )
        return int(rows[0]["count(*)"]) if rows else 0

    # -- validation (as the directory store) ------------------------------------------------
    def _as_vectors(self, vectors: np.ndarray, what: str) -> np.ndarray:
        owner = f"gallery {self.location} holds {self.dim}-d descriptors from {self.embedder_id}"
        return unit_vectors(vectors, what, self.dim, owner)

    # -- requests ----------------------------------------------------------------------------
    @property
    def _c(self) -> MilvusClient:
        if self._client is None:
            raise GalleryError(f"gallery {self.location} was closed")
        return self._client

    def _has_collection(self) -> bool:
        return bool(
            self._rpc("look up the collection", self._c.has_collection, self.loc.collection)
        )

    def _rpc(self, what: str, fn: Any, *args: Any, timed: bool = True, **kw: Any) -> Any:
        """`fn(*args, **kw)`, with RPC_TIMEOUT if `timed`; server errors become one-line
        GalleryErrors. If the server no longer has the collection loaded (it restarted), it is
        loaded and the request sent again."""
        pymilvus = _import_pymilvus()
        if timed:
            kw.setdefault("timeout", RPC_TIMEOUT)
        for attempt in range(2):
            try:
                return fn(*args, **kw)
            except pymilvus.MilvusException as e:
                if attempt == 0 and _not_loaded(e):
                    self._load()
                    continue
                raise GalleryError(
                    f"gallery {self.location}: cannot {what}: {_reason(e)}"
                ) from None
        raise AssertionError("unreachable")

    def _load(self) -> None:
        # No timeout: Milvus may build the index of every segment before it answers.
        pymilvus = _import_pymilvus()
        try:
            self._c.load_collection(self.loc.collection)
        except pymilvus.MilvusException as e:
            raise GalleryError(
                f"gallery {self.location}: cannot load the collection: {_reason(e)}"
            ) from None


def _not_loaded(e: Exception) -> bool:
    msg = _reason(e).lower()
    return _code(e) == 101 or "not loaded" in msg or "call load()" in msg or "released" in msg
