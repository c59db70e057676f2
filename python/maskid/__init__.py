"""maskid: face identification that still works when people wear face masks.

    from maskid import Recognizer
    rec = Recognizer("my-gallery")
    rec.enroll("Ada", ["ada.jpg"])
    faces = rec.recognize("masked.jpg")   # each with .identity, .match_score, .box, .matches

The package is laid out by stage: `io` (images, video sources) -> `detection` -> `alignment`
-> `networks` (embedders and their model contracts) -> `gallery` (store + index) ->
`pipeline` (the Recognizer) -> `apps` (cli, camera, demo, eval); `evaluation` holds metrics
and the data splits. The names below are the public API.

They are imported on first use, so `import maskid` stays cheap for the CLI; type checkers
see the real imports (the lazy loader is hidden from them, so a misspelt name is an error).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maskid.detection import FaceDetector
    from maskid.errors import MaskidError
    from maskid.face import Face, Match
    from maskid.gallery import Gallery, GalleryBackend, open_gallery
    from maskid.io.images import load_image
    from maskid.networks.embedder import Embedder
    from maskid.pipeline.masks import apply_mask
    from maskid.pipeline.recognizer import Recognizer

    __version__: str

_EXPORTS = {
    "Recognizer": "maskid.pipeline.recognizer",
    "Gallery": "maskid.gallery",
    "GalleryBackend": "maskid.gallery",
    "open_gallery": "maskid.gallery",
    "FaceDetector": "maskid.detection",
    "Embedder": "maskid.networks.embedder",
    "Face": "maskid.face",
    "Match": "maskid.face",
    "load_image": "maskid.io.images",
    "apply_mask": "maskid.pipeline.masks",
    "MaskidError": "maskid.errors",
}

__all__ = [
    "Embedder",
    "Face",
    "FaceDetector",
    "Gallery",
    "GalleryBackend",
    "MaskidError",
    "Match",
    "Recognizer",
    "__version__",
    "apply_mask",
    "load_image",
    "open_gallery",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maskid")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0"


if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        if name == "__version__":
            return _version()
        if name in _EXPORTS:
            return getattr(import_module(_EXPORTS[name]), name)
        raise AttributeError(f"module 'maskid' has no attribute {name!r}")
