"""What every gallery backend checks before it stores or searches: the same rules and the same
one-line errors whichever backend holds the descriptors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from maskid.errors import GalleryError, UsageError

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
