"""Subprocess helper for tests/test_gallery_api.py: another process using a gallery by location
(a directory or a milvus:// URI), through `maskid.gallery.open_gallery` as the CLI does.

    python tests/gallery_api_worker.py enroll LOCATION PREFIX COUNT   # COUNT 0 = until killed
    python tests/gallery_api_worker.py identities LOCATION

`enroll` prints READY once the gallery is open, then "OK <name>" after each acknowledged add.
"""

from __future__ import annotations

import json
import sys

from gallery_worker import DIM, EMBEDDER, source_for, vector_for
from maskid.errors import MaskidError
from maskid.gallery import open_gallery, read_identities


def main(argv: list[str]) -> int:
    cmd, location = argv[0], argv[1]
    if cmd == "enroll":
        prefix, count = argv[2], int(argv[3])
        g = open_gallery(location, embedder_id=EMBEDDER, dim=DIM, create=True)
        print("READY", flush=True)
        i = 0
        while count == 0 or i < count:
            name = f"{prefix}-{i}"
            g.add(name, vector_for(name), [source_for(name)])
            print(f"OK {name}", flush=True)
            i += 1
    elif cmd == "identities":
        print(json.dumps(read_identities(location)))
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
