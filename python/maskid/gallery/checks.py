"""What every gallery backend checks before it stores or searches: the same rules and the same
one-line errors whichever backend holds the descriptors."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from typing import Any

import numpy as np

from maskid.errors import GalleryError, UsageError


def rebuild_hint(path: str | os.PathLike[str]) -> str:
    """How to rebuild the gallery at `path`, as a command to copy (for error messages)."""
    return (
        f"rebuild it with `maskid build DATASET --gallery {shlex.quote(str(path))} --force` "
        "(DATASET: the folder of <name>/ photo folders it was built from), or enroll into "
        "a new --gallery"
    )


SHA256 = re.compile(r"^[0-9a-f]{64}$")


def unit_vectors(vectors: np.ndarray, what: str, dim: int, owner: str) -> np.ndarray:
    """`vectors` (n, dim) or (dim,) as C-contiguous float32 rows of unit length. `owner` says
    whose descriptors the gallery holds, for the error when the dimension differs."""
    a = np.asarray(vectors)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] == 0:
        raise UsageError(f"{what} must have shape (n, {dim}) with n >= 1, not {a.shape}")
    if a.shape[1] != dim:
        raise GalleryError(f"{what} are {a.shape[1]}-d but {owner}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise UsageError(f"{what} must be numbers, not {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise UsageError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms < 1e-12).any():
        raise UsageError(f"{what} contain an all-zero vector")
    return np.ascontiguousarray(a / norms, dtype=np.float32)


def source_pairs(sources: Sequence[dict[str, Any]] | None, n: int) -> list[tuple[str, str]]:
    """One (path, sha256) per vector from the caller's source dicts ("" where not given)."""
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
        if sha and not SHA256.match(sha):
            raise UsageError(f"source sha256 {sha!r} is not 64 hex digits")
        out.append((path, sha))
    return out


def same_embedder(
    location: object, have: tuple[str, int], want_id: str | None, want_dim: int | None
) -> None:
    """GalleryError, saying how to rebuild, unless a gallery holding `have` (embedder id, dim)
    serves an embedder `want_id` making `want_dim`-d descriptors (None: not checked)."""
    have_id, have_dim = have
    hint = rebuild_hint(str(location))
    if want_id is not None and want_id != have_id:
        raise GalleryError(
            f"gallery {location} was built with {have_id} but the current model is "
            f"{want_id}; {hint}"
        )
    if want_dim is not None and want_dim != have_dim:
        raise GalleryError(
            f"gallery {location} holds {have_dim}-d descriptors but the current model "
            f"makes {want_dim}-d ones; {hint}"
        )
