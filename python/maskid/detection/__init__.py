"""Face detection: every detector returns `Face`s with a box, a score and the same 5 landmarks
(eye centres, nose tip, mouth corners), largest face first, so alignment never cares which ran.

`FaceDetector` is the interface; `default_detector()` the product's choice, MTCNN
(`mtcnn.MtcnnDetector`) or, with $MASKID_DETECTOR=cascade, `cascade.CascadeDetector`
(`yunet.YunetDetector` finds, MTCNN's ONet places the points); `tight_crops.find_faces` the
policy for photos that are already a tight face crop.
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


# The detectors a user can choose by name ($MASKID_DETECTOR, `default_detector(name=)`).
DETECTORS = ("mtcnn", "cascade")


def default_detector(threads: int | None = None, name: str | None = None) -> FaceDetector:
    """The detector the product uses (`threads`: CPU threads; None: its default).

    MTCNN, unless `name` or $MASKID_DETECTOR says "cascade". The cascade (YuNet finds, ONet
    places the points) finds more masked faces, faster (benchmarks/detection.py), but its points
    cost the shipped embedders at their operating thresholds: the dev score of the default
    embedder is 0.522 with it against 0.534 with MTCNN (masked probes named, M2FRED dev 0.736 vs
    0.793; benchmarks/accuracy.py --detector), so MTCNN stays the default by the product's rule.
    """
    import os

    from maskid.errors import UsageError

    chosen = name or os.environ.get("MASKID_DETECTOR") or "mtcnn"
    n = 2 if threads is None else threads  # both detectors' default
    if chosen == "mtcnn":
        from maskid.detection.mtcnn import MtcnnDetector

        return MtcnnDetector(threads=n)
    if chosen == "cascade":
        from maskid.detection.cascade import CascadeDetector

        return CascadeDetector(threads=n)
    raise UsageError(
        f"unknown detector {chosen!r} ($MASKID_DETECTOR): choose one of {', '.join(DETECTORS)}"
    )


__all__ = ["DETECTORS", "BoxScorer", "FaceDetector", "default_detector"]
