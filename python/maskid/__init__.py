"""maskid: face identification that still works when people wear face masks.

    from maskid import Recognizer
    rec = Recognizer("my-gallery")
    rec.enroll("Ada", ["ada.jpg"])
    faces = rec.recognize("masked.jpg")   # each with .identity, .match_score, .box, .matches

Public names (and `__version__`, which needs importlib.metadata) are imported lazily, so
`import maskid` stays cheap for the CLI.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maskid")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0"


_EXPORTS = {
    "Recognizer": "maskid.recognizer",
    "Gallery": "maskid.gallery",
    "Detector": "maskid.detect",
    "Embedder": "maskid.embedder",
    "Face": "maskid.face",
    "Match": "maskid.face",
    "load_image": "maskid.imageio",
    "apply_mask": "maskid.masks",
    "MaskidError": "maskid.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        return _version()
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'maskid' has no attribute {name!r}")
