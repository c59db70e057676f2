"""The cascade detector ($MASKID_DETECTOR=cascade): YuNet finds the faces, MTCNN's ONet places
the five points.

- Finding: YuNet (`maskid.detection.yunet`) with mirror verification of uncertain candidates.
  It finds masked faces MTCNN's PNet/RNet reject (RMFD's tight masked crops, test ids: 0.967
  vs 0.874) in less time per frame (benchmarks/detection.py).
- Not the default: its points cost the shipped embedders at their thresholds (dev score of the
  default embedder 0.522 vs 0.534 with MTCNN; README, "Detection").
- Landmarks: ONet on each YuNet box. YuNet's own points sit ~0.1 inter-ocular distances from
  MTCNN's, and every embedder's template and the shipped thresholds were fitted on MTCNN's
  points; ONet's points on YuNet's boxes agree with MTCNN's own within ~0.035 on unmasked faces
  and give a masked rank-1 at least as high (dev: .942 vs .907 MTCNN, .919 YuNet's own points).
- Tight crops: a `BoxScorer` (ONet on the whole photo) for the small photos where YuNet finds
  nothing, as MTCNN's policy does (`maskid.detection.tight_crops`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from maskid.detection.mtcnn import MtcnnDetector
from maskid.detection.yunet import YunetDetector
from maskid.face import Face

# Chosen on dev (benchmarks/detection.py): M2FRED dev masked faces in frames, face-free dev seed.
RESCUE_FROM = 0.25
RESCUE_ONET = 0.9


class CascadeDetector:
    """YuNet boxes and scores with ONet's 5 points; `score_boxes` is ONet's (tight crops).

    Args:
        yunet, mtcnn: the two stages (default: each with its defaults and `threads`).
        onet_floor: YuNet's faces below its `verify_below` need at least this ONet score.
        rescue_from, rescue_onet: YuNet's candidates scoring from `rescue_from` up to its
            threshold are kept where ONet scores them at least `rescue_onet` (None: never).
            Small masked faces in camera frames often score low on YuNet yet high on ONet
            (dev, masked faces in frames: +1 to +11 points depending on YuNet's max_side).
        mtcnn_first: run MTCNN (its whole cascade, a border for small photos) first and YuNet
            only where it finds nothing: MTCNN's faces keep MTCNN's own points, to which the
            embedders' thresholds were fitted; YuNet adds the faces MTCNN misses.
        threads, providers: ONNX Runtime settings for the default stages.
    """

    # YuNet finds tight crops as they come; a border costs it masked faces.
    needs_border = False

    def __init__(
        self,
        yunet: YunetDetector | None = None,
        mtcnn: MtcnnDetector | None = None,
        onet_floor: float = 0.05,
        rescue_from: float | None = RESCUE_FROM,
        rescue_onet: float = RESCUE_ONET,
        mtcnn_first: bool = False,
        threads: int = 2,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.yunet = yunet or YunetDetector(threads=threads, providers=providers)
        self.mtcnn = mtcnn or MtcnnDetector(threads=threads, providers=providers)
        self.onet_floor = float(onet_floor)
        self.rescue_from = rescue_from
        self.rescue_onet = float(rescue_onet)
        self.mtcnn_first = mtcnn_first

    def __repr__(self) -> str:
        return f"CascadeDetector({self.yunet!r}, landmarks: ONet)"

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 H x W x 3 image, largest first (see `FaceDetector`)."""
        if self.mtcnn_first:
            faces = self._mtcnn(image_rgb)
            if faces:
                return faces
        threshold = self.yunet.score_threshold
        low = None if self.rescue_from is None else min(self.rescue_from, threshold)
        faces = self.yunet.detect(image_rgb, min_score=low)
        if not faces:
            return faces
        onet_scores, points = self.landmarks(image_rgb, np.stack([f.box for f in faces]))
        sure = self.yunet.verify_below or 0.0
        kept = []
        for f, s, p in zip(faces, onet_scores, points, strict=True):
            # ONet's score comes with its points: a veto on YuNet's unsure faces that ONet
            # finds nothing like a face in (dev: false faces per 640x480 face-free frame
            # 0.025 -> 0.010, no masked face lost), and the judge of its weak candidates.
            if f.score >= threshold:
                keep = f.score >= sure or s >= self.onet_floor
            else:
                keep = s >= self.rescue_onet
            if keep:
                f.landmarks = p
                kept.append(f)
        return kept

    def _mtcnn(self, image_rgb: np.ndarray) -> list[Face]:
        """MTCNN as its own policy runs it: small photos with a 50% edge-replicated border."""
        from maskid.detection.tight_crops import SMALL_IMAGE

        h, w = image_rgb.shape[:2]
        if min(h, w) > SMALL_IMAGE:
            return self.mtcnn.detect(image_rgb)
        pad = max(h, w) // 2
        padded = cv2.copyMakeBorder(image_rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        faces = self.mtcnn.detect(padded)
        for f in faces:
            f.box = f.box - pad
            f.landmarks = f.landmarks - pad
        return faces

    def landmarks(self, image_rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ONet's face score (N,) and 5 points (N, 5, 2) for each box (N, 4) of the image.

        A box that reaches past the image (a tight crop's face does) is read from an
        edge-replicated border, not MTCNN's black: ONet saw whole faces, not black bands."""
        h, w = image_rgb.shape[:2]
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        reach = max(
            0.0,
            float(np.max(side / 2 - np.minimum.reduce([cx, cy, w - cx, h - cy]))),
        )
        pad = min(int(np.ceil(reach)), max(h, w))
        if pad:
            image_rgb = cv2.copyMakeBorder(image_rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        _, scores, points = self.mtcnn.onet(image_rgb, boxes + pad)
        return scores, points - pad

    def score_boxes(self, image_rgb: np.ndarray, boxes: np.ndarray) -> list[Face]:
        """ONet's judgement of given boxes (the tight-crop fallback; see `BoxScorer`)."""
        return self.mtcnn.score_boxes(image_rgb, boxes)
