"""The gallery: enrolled descriptors by name, searched by cosine similarity.

`store` keeps them in a directory (versioned generations, commits appended to a journal, a lock
for writers) and searches them with hnswlib (`index`); `milvus` keeps them in a Milvus collection
(`milvus://HOST:PORT/COLLECTION`, `pip install maskid[milvus]`). `open_gallery` picks the
backend from the location, so the pipeline and the CLI never name one; both provide
`backend.GalleryBackend`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from maskid.errors import UsageError
from maskid.gallery.backend import GalleryBackend
from maskid.gallery.store import (
    Gallery,
    HnswParams,
    delete_gallery_files,
    rebuild_hint,
    validate_name,
)

if TYPE_CHECKING:  # pymilvus loads only for a milvus:// location
    from maskid.gallery.milvus import MilvusGallery

__all__ = [
    "Gallery",
    "GalleryBackend",
    "HnswParams",
    "as_location",
    "delete_gallery",
    "gallery_exists",
    "open_gallery",
    "read_identities",
    "rebuild_hint",
    "validate_name",
]

Location = str | os.PathLike[str]


def as_location(location: Location) -> str | Path:
    """A URI (`scheme://...`) stays a string (a Path would fold its `//`); anything else is a
    directory path."""
    if isinstance(location, str) and "://" in location:
        return location
    return Path(location)


def _milvus(location: str | Path) -> type[MilvusGallery] | None:
    """The Milvus backend if `location` is a milvus:// URI (None: a directory); UsageError for
    a URI of a scheme no backend understands."""
    if not isinstance(location, str):
        return None
    scheme = location.split("://", 1)[0].lower()
    if scheme != "milvus":
        raise UsageError(
            f"unknown gallery URI scheme {scheme!r} in {location!r}: give a directory or "
            "milvus://HOST:PORT/COLLECTION"
        )
    from maskid.gallery.milvus import MilvusGallery

    return MilvusGallery


def open_gallery(
    location: Location,
    embedder_id: str | None = None,
    dim: int | None = None,
    create: bool = False,
) -> GalleryBackend:
    """Open the gallery at `location` (a directory, or milvus://HOST:PORT/COLLECTION), checked
    to hold `embedder_id`'s `dim`-d descriptors when given (created empty when `create`)."""
    loc = as_location(location)
    backend = _milvus(loc)
    if backend is not None:
        return backend.open(str(loc), embedder_id=embedder_id, dim=dim, create=create)
    return Gallery.open(loc, embedder_id=embedder_id, dim=dim, create=create)


def gallery_exists(location: Location) -> bool:
    loc = as_location(location)
    backend = _milvus(loc)
    return backend.exists(str(loc)) if backend is not None else Gallery.exists(loc)


def read_identities(location: Location) -> dict[str, int]:
    """Name -> descriptors enrolled, from the gallery's metadata alone (no index, no network)."""
    loc = as_location(location)
    backend = _milvus(loc)
    if backend is not None:
        return backend.read_identities(str(loc))
    return Gallery.read_identities(loc)[0]


def delete_gallery(location: Location) -> int:
    """Delete the gallery at `location` (a corrupt one too); how many files (collections) it
    had. A directory holding anything but a gallery's files, or a collection that is not a
    maskid gallery, is refused untouched."""
    loc = as_location(location)
    backend = _milvus(loc)
    if backend is not None:
        return backend.delete(str(loc))
    return delete_gallery_files(Path(loc))
