"""The gallery: enrolled descriptors by name, searched by cosine similarity.

`store` keeps them in a directory (versioned generations, atomic commits, a lock for writers)
and searches them with hnswlib. `open_gallery` picks the backend from the location, so the
pipeline and the CLI never name one.
"""

from __future__ import annotations

import os
from pathlib import Path

from maskid.gallery.store import (
    Gallery,
    HnswParams,
    delete_gallery_files,
    rebuild_hint,
    validate_name,
)

__all__ = [
    "Gallery",
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


def open_gallery(
    location: Location,
    embedder_id: str | None = None,
    dim: int | None = None,
    create: bool = False,
) -> Gallery:
    """Open the gallery at `location`, checked to hold `embedder_id`'s `dim`-d descriptors when
    given (created empty when `create`)."""
    return Gallery.open(Path(location), embedder_id=embedder_id, dim=dim, create=create)


def gallery_exists(location: Location) -> bool:
    return Gallery.exists(Path(location))


def read_identities(location: Location) -> dict[str, int]:
    """Name -> descriptors enrolled, from the gallery's metadata alone (no index, no network)."""
    return Gallery.read_identities(Path(location))[0]


def delete_gallery(location: Location) -> int:
    """Delete the gallery at `location` (a corrupt one too); how many files it had. A directory
    holding anything but a gallery's files is refused untouched."""
    return delete_gallery_files(Path(location))
