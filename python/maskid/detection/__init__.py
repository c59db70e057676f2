"""Face detection: every detector returns `Face`s with a box, a score and the same 5 landmarks
(eye centres, nose tip, mouth corners), largest face first, so alignment never cares which ran.

`FaceDetector` is the interface; `default_detector()` the product's choice,
`cascade.CascadeDetector` (`yunet.YunetDetector` finds, MTCNN's ONet places the points);
`mtcnn.MtcnnDetector` the detector shipped before; `tight_crops.find_faces` the policy for
photos that are already a tight face crop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from maskid.face import Face


@runtime_checkable
class FaceDetector(Protocol):
    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 H x W x 3 image, largest first, in its pixel coordinates."""
        ...


@runtime_checkable
class BoxScorer(Protocol):
    """A detector that can also judge given candidate boxes (MTCNN's ONet does): the tight-crop
    policy asks it whether a whole small photo is a face when detection found nothing."""

    def score_boxes(self, image_rgb: np.ndarray, boxes: np.ndarray) -> list[Face]: ...


def default_detector(threads: int | None = None) -> FaceDetector:
    """The detector the product uses (`threads`: CPU threads; None: its default): the cascade
    of YuNet and MTCNN's ONet, the best measured by benchmarks/detection.py (README)."""
    from maskid.detection.cascade import CascadeDetector

    return CascadeDetector() if threads is None else CascadeDetector(threads=threads)


__all__ = ["BoxScorer", "FaceDetector", "default_detector"]
