"""What the pipeline and the CLI may ask of a gallery, whichever backend holds it.

Both `store.Gallery` (a directory, hnswlib) and `milvus.MilvusGallery` (a Milvus collection)
provide this; `open_gallery` returns one or the other by location. Shared semantics (tested
once for both in tests/test_gallery_api.py):

- A gallery records the embedder that made it (model id, descriptor dim, format version);
  opening it for another embedder raises GalleryError saying how to rebuild.
- Descriptors are stored L2-normalised; `search` scores by cosine similarity and gives each
  identity the score of its best descriptor, best identity first.
- `add`/`remove` are acknowledged only once durable and visible to `search` from any process;
  `with g.batch():` defers them to one commit at the end of the block, and an exception inside
  the block discards them. Concurrent writers lose nothing.
- Errors a user can cause are MaskidError subclasses (GalleryError, UsageError,
  UnknownIdentityError).

What differs is stated by each backend: the directory store's commit is atomic and reads are
snapshots until `refresh()`; Milvus applies a batch as a few requests and always reads the
server's current state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np

from maskid.face import Match

__all__ = ["GalleryBackend"]


class GalleryBackend(Protocol):
    """The gallery interface shared by every backend."""

    @property
    def embedder_id(self) -> str:
        """The embedder (`Embedder.model_id`) whose descriptors the gallery holds."""
        ...

    @property
    def dim(self) -> int: ...

    def check_embedder(self, embedder_id: str | None, dim: int | None) -> None:
        """GalleryError (saying how to rebuild) unless built by `embedder_id` with `dim`-d
        descriptors (None: not checked)."""
        ...

    def identities(self) -> dict[str, int]:
        """Name -> number of descriptors, for everyone enrolled (sorted by name)."""
        ...

    def count(self, name: str) -> int:
        """Descriptors enrolled under `name` (0: nobody of that name), without listing everyone
        (a large remote gallery answers this from an index, `identities` from a scan)."""
        ...

    def has_source(self, sha256: str) -> bool:
        """Whether an image with this sha256 (hex) already contributed descriptors."""
        ...

    def add(
        self, name: str, vectors: np.ndarray, sources: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        """Add descriptors (n, dim) of identity `name`; one source dict ("path", "sha256") per
        vector. Returns the entries' labels (inside a batch: filled in when it commits)."""
        ...

    def add_many(
        self, items: Iterable[tuple[str, np.ndarray, Sequence[dict[str, Any]] | None]]
    ) -> list[list[int]]:
        """`add` for each (name, vectors, sources), as one batch."""
        ...

    def remove(self, name: str) -> int:
        """Remove identity `name` (UnknownIdentityError if absent); how many descriptors went."""
        ...

    def batch(self) -> AbstractContextManager[Any]:
        """Group updates into one commit at the end of the block (discarded on an exception)."""
        ...

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Match]]:
        """The k best identities per query (m, dim), best first; GalleryError if empty."""
        ...

    def refresh(self) -> bool:
        """Pick up what other processes committed; whether anything changed."""
        ...

    def close(self) -> None: ...

    def __len__(self) -> int: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...
