"""Finding faces in photos that may be tight face crops (RMFD, M2FRED, a passport photo).

A tight crop leaves a detector no context around the face, so small photos are searched with a
50% edge-replicated border (as is any photo where nothing was found), and the chips are then
cut from the bordered image, as dlib's reference pipeline does. Where even that finds nothing
in a small photo, the photo itself is the face box: a `BoxScorer` (MTCNN's ONet) judges it
directly, which recovers most masked crops that a cascade's early stages reject.
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
    if min(h, w) > SMALL_IMAGE:
        faces = detector.detect(image)
        if faces or not retry_with_border:
            return faces, image, 0
    pad = max(h, w) // 2
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    faces = detector.detect(padded)
    if not faces and max(h, w) <= SMALL_IMAGE and isinstance(detector, BoxScorer):
        # The crop at its own size and a little less (a crop is often slightly loose).
        cx, cy = pad + w / 2, pad + h / 2
        boxes = [[cx - s, cy - s, cx + s, cy + s] for s in (max(h, w) / 2, 0.45 * max(h, w))]
        faces = detector.score_boxes(padded, np.array(boxes))[:1]
    return faces, padded, pad
