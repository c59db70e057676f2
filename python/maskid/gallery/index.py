"""The gallery's search index: hnswlib over L2-normalised float32 descriptors, space 'ip'
(1 - cosine), with integer labels chosen by the store.

This module knows nothing of names, files' layout or commits (that is `store`): it builds,
grows, loads and saves one hnswlib index, marks entries deleted and answers k-nearest queries,
falling back to exact search when deletions leave the graph too sparse for hnswlib.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # hnswlib loads only where an index is built or read
    import hnswlib

__all__ = ["HnswIndex", "HnswParams"]

INITIAL_CAPACITY = 1024


@dataclass(frozen=True)
class HnswParams:
    """hnswlib parameters, stored in the gallery's manifest.

    Measured by `benchmarks/gallery.py` (benchmarks/results/gallery.json) on clustered 256-d
    descriptors shaped like real ones, single queries on one core of a shared 2-core machine:
    M: graph degree. At 100k, M=32 doubles the cost of a query at a given ef and the build
        time for no better recall at equal latency (0.998 at 0.35 ms vs M=16's 0.996 at 0.32).
    ef_construction: build-time beam width. At 100k, 200 recalls no better than 100 at any
        ef_search and builds 1.7x slower; a 1M build at 100 takes 18 min on 2 cores.
    ef_search: minimum query-time beam width; raised to the number of neighbours fetched.
        384 is the smallest measured that keeps recall@1 >= 0.99 at 1M entries (3.0 ms p50;
        128: 0.93 at 1.0 ms). Up to 100k, 96 already gives 0.998 at 0.44 ms: set
        `Gallery.ef_search` lower where latency matters more.
    """

    M: int = 16
    ef_construction: int = 100
    ef_search: int = 384


class HnswIndex:
    """One hnswlib index (cosine via inner product on unit vectors), growable, with deletions.

    Not thread-safe for updates; queries release the GIL inside hnswlib.
    """

    def __init__(self, index: hnswlib.Index) -> None:
        self._index = index

    @classmethod
    def create(cls, dim: int, params: HnswParams, capacity: int = INITIAL_CAPACITY) -> HnswIndex:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        # allow_replace_deleted: slots of removed entries are reused by later additions.
        index.init_index(
            max_elements=max(1, capacity),
            M=params.M,
            ef_construction=params.ef_construction,
            allow_replace_deleted=True,
        )
        return cls(index)

    @classmethod
    def load(cls, path: str, dim: int, capacity: int) -> HnswIndex:
        """Load a saved index. hnswlib raises RuntimeError/ValueError/MemoryError on a bad file,
        and can crash on a corrupt one: callers verify the file's checksum first."""
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dim)
        index.load_index(path, max_elements=capacity, allow_replace_deleted=True)
        return cls(index)

    def save(self, path: str) -> None:
        self._index.save_index(path)

    @property
    def element_count(self) -> int:
        """Slots in use, deleted entries included (what hnswlib saves)."""
        return int(self._index.element_count)

    @property
    def capacity(self) -> int:
        return int(self._index.max_elements)

    def add(self, vectors: np.ndarray, labels: np.ndarray, num_threads: int = -1) -> None:
        """Insert unit vectors under `labels`, reusing deleted slots. Growing copies the index,
        so it grows by half (a bulk load by a quarter more than it needs); untouched capacity
        costs address space, not memory."""
        need = self.element_count + len(vectors)
        if need > self.capacity:
            grown = max(need * 5 // 4, self.capacity * 3 // 2 + INITIAL_CAPACITY)
            self._index.resize_index(grown)
        self._index.add_items(vectors, labels, num_threads=num_threads, replace_deleted=True)

    def mark_deleted(self, labels: np.ndarray) -> None:
        for label in labels.tolist():
            self._index.mark_deleted(label)

    def get_items(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(self._index.get_items(labels, return_type="numpy"), np.float32)

    def knn(
        self,
        q: np.ndarray,
        want: int,
        ef: int,
        live: Callable[[], np.ndarray],
        num_threads: int = -1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels and distances (1 - cosine) of the `want` nearest live entries per query, best
        first. `live()`: all live labels, asked only for the exact fallback."""
        ef = max(ef, want)
        while True:
            self._index.set_ef(ef)
            try:
                labels, dists = self._index.knn_query(q, k=want, num_threads=num_threads)
                return labels.astype(np.int64), dists
            except RuntimeError:
                # Too few reachable live entries (many deletions): widen the beam, then go exact.
                if ef >= self.element_count:
                    return self._exact(q, want, live())
                ef = min(ef * 4, self.element_count)

    def _exact(self, q: np.ndarray, want: int, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims = q @ self.get_items(live).T
        order = np.argsort(-sims, axis=1, kind="stable")[:, :want]
        return live[order], 1.0 - np.take_along_axis(sims, order, axis=1)
