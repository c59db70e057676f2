"""Finding faces in photos that may be tight face crops (RMFD, M2FRED, a passport photo).

A tight crop leaves little context around the face. Detectors that need context (MTCNN's PNet
and RNet: `needs_border = True`, the default for any detector) search small photos with a 50%
edge-replicated border, as they do any photo where nothing was found. Detectors that find tight
crops as they come (YuNet, the cascade) search the photo itself: a border costs YuNet masked
faces (dev: 0.5 border finds 85% of RMFD's masked crops, none 98%). Either way small photos'
chips are cut from the bordered image, as dlib's reference pipeline does, so a chip that reaches
past the crop sees replicated edge pixels, not black. Where nothing was found in a small photo,
the photo itself is the face box: a `BoxScorer` (MTCNN's ONet) judges it directly, which
recovers masked crops that the detectors reject (dev: 2 of 87 M2FRED masked crops).
"""

from __future__ import annotations

import numpy as np

from maskid.detection import BoxScorer, FaceDetector
from maskid.face import Face

# Photos whose shorter side is at most this many pixels are treated as possible tight crops.
SMALL_IMAGE = 400


def find_faces(
    detector: FaceDetector, image: np.ndarray, retry_with_border: bool = True
) -> tuple[list[Face], np.ndarray, int]:
    """Faces (largest first), the image their chips should come from, and that image's border.

    Boxes and landmarks are in the coordinates of the returned (maybe bordered) image; subtract
    the border to get them in `image`'s. `retry_with_border=False`: a large image where nothing
    was found is not searched again with a border (a camera frame with nobody in it).
    """
    import cv2

    h, w = image.shape[:2]
    small = min(h, w) <= SMALL_IMAGE
    needs_border = bool(getattr(detector, "needs_border", True))
    faces: list[Face] = []
    if not small or not needs_border:
        faces = detector.detect(image)
        if not small and (faces or not retry_with_border or not needs_border):
            return faces, image, 0
    pad = max(h, w) // 2
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    if faces:  # a small photo searched as it came: its faces move into the bordered image
        for f in faces:
            f.box = f.box + pad
            f.landmarks = f.landmarks + pad
        return faces, padded, pad
    if needs_border:
        faces = detector.detect(padded)
    if not faces and max(h, w) <= SMALL_IMAGE and isinstance(detector, BoxScorer):
        # The crop at its own size and a little less (a crop is often slightly loose).
        cx, cy = pad + w / 2, pad + h / 2
        boxes = [[cx - s, cy - s, cx + s, cy + s] for s in (max(h, w) / 2, 0.45 * max(h, w))]
        faces = detector.score_boxes(padded, np.array(boxes))[:1]
    return faces, padded, pad


def detect_in_source(detector: FaceDetector, source: np.ndarray, border: int) -> list[Face]:
    """Faces of an image in the coordinates `find_faces` returned (`source`, bordered by
    `border`, e.g. a synthetically masked copy of it), searched as `find_faces` searched the
    photo: without the border for detectors that do not need one (YuNet scores a masked face
    on M2FRED's bordered crops 0.45 where it scores it 0.9 without)."""
    if border <= 0 or getattr(detector, "needs_border", True):
        return detector.detect(source)
    faces = detector.detect(np.ascontiguousarray(source[border:-border, border:-border]))
    for f in faces:
        f.box = f.box + border
        f.landmarks = f.landmarks + border
    return faces
