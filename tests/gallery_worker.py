"""Subprocess helper for tests/test_gallery.py: a separate process that uses a gallery.

    python tests/gallery_worker.py enroll DIR PREFIX COUNT   # COUNT 0 = until killed
    python tests/gallery_worker.py identities DIR
    python tests/gallery_worker.py search DIR QUERIES.npy

`enroll` prints READY once the gallery is open, then "OK <name>" (flushed) after each commit.
The environment variable MASKID_GALLERY_CRASH_AT makes the gallery SIGKILL its own process at
that point of a commit (see maskid.gallery.store.CRASH_POINTS); GALLERY_WORKER_REWRITE=1 makes
every commit write a new generation (compact) instead of appending to the journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from maskid.errors import MaskidError
from maskid.gallery.store import Gallery

EMBEDDER = "test-embedder@00000000"
DIM = 128


def vector_for(name: str) -> np.ndarray:
    """A deterministic random unit vector per name (tests recompute it to check searches)."""
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    v = np.random.default_rng(seed).normal(size=(1, DIM)).astype(np.float32)
    return v / np.linalg.norm(v)


def source_for(name: str) -> dict[str, str]:
    return {"path": f"/images/{name}.jpg", "sha256": hashlib.sha256(name.encode()).hexdigest()}


def main(argv: list[str]) -> int:
    cmd, path = argv[0], argv[1]
    if cmd == "enroll":
        prefix, count = argv[2], int(argv[3])
        g = Gallery.open(path, embedder_id=EMBEDDER, dim=DIM, create=True, lock_timeout=30)
        if os.environ.get("GALLERY_WORKER_REWRITE") == "1":
            g.journal_limit = 0
        print("READY", flush=True)
        i = 0
        while count == 0 or i < count:
            name = f"{prefix}-{i}"
            g.add(name, vector_for(name), [source_for(name)])
            print(f"OK {name}", flush=True)
            i += 1
    elif cmd == "identities":
        print(json.dumps(Gallery.open(path, embedder_id=EMBEDDER, dim=DIM).identities()))
    elif cmd == "search":
        g = Gallery.open(path, embedder_id=EMBEDDER, dim=DIM)
        results = g.search(np.load(argv[2]), k=1)
        print(json.dumps([r[0].identity for r in results]))
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except MaskidError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
