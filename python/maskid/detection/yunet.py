"""YuNet (OpenCV Zoo, MIT; Wu, Peng & Yu 2023) on ONNX Runtime: boxes and 5 landmarks in one pass.

The network (`maskid/data/detector/yunet.onnx`, 230 KB) is fully convolutional over any input
size (padded to a multiple of 32). Per anchor point at strides 8, 16 and 32 it outputs a class
and an objectness score (the face score is their geometric mean), a box (centre offset and
log-size, in stride units) and 5 points, decoded here as OpenCV's `FaceDetectorYN` does.
Its points come in MTCNN's order (left eye as seen in the image first, then right eye, nose tip,
mouth corners), but they sit up to ~0.1 inter-ocular distances from MTCNN's on the same faces;
`maskid.detection.cascade` puts MTCNN's ONet points on YuNet's boxes.

Unlike MTCNN it finds tight face crops as they come (no border needed; a border hurts it) and
masked faces, but masked faces often score 0.1-0.6, where face-free clutter (scrambled photos,
collars) scores too. A face scores about the same mirrored and clutter does not, so an unsure
candidate's score is the mean of its score and its mirror image's (`verify_below`). The
threshold 0.5 is the lowest with <= 0.01 false positives per face-free dev image in the
cascade (benchmarks/detection.py's dev sweep); plain YuNet needs 0.6 for that.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from maskid.detection.mtcnn import check_rgb, detector_session, nms
from maskid.face import Face, iou
from maskid.paths import PACKAGE_DATA

YUNET_PATH = PACKAGE_DATA / "detector" / "yunet.onnx"
_STRIDES = (8, 16, 32)


class YunetDetector:
    """YuNet face detector returning `Face`s (box, score, 5 landmarks), largest face first.

    Args:
        score_threshold: faces scoring below this (after verification) are dropped.
        verify_below: a candidate scoring below this is scored again as the mean of its score
            and the score of the same face in the mirrored image (None: never).
        verify_floor: candidates scoring below this are dropped without verification (on the
            dev data none below 0.3 survived it; a floor spares the mirror pass in most frames).
        nms_threshold: IoU above which the weaker of two candidates is dropped.
        max_side: images whose longer side exceeds this are analysed downscaled to it (bounds the
            cost). 640: a 640x480 frame is analysed whole. At 320 a masked face loses too much:
            M2FRED dev masked faces pasted into 640x480 frames are found 0.46 / 0.66 / 0.83 at
            72 / 96 / 128 px against 0.84 / 0.87 / 0.92 at 640 (MTCNN 0.91 / 0.87 / 0.90;
            benchmarks/detection.py, "in frames"). None: never.
        threads: ONNX Runtime intra-op threads.
        providers: ONNX Runtime execution providers (default CPU).
        model_path: the ONNX file (default: the bundled one).
    """

    # It finds tight crops as they come (maskid.detection.tight_crops): no border.
    needs_border = False

    def __init__(
        self,
        score_threshold: float = 0.5,
        verify_below: float | None = 0.8,
        verify_floor: float = 0.25,
        nms_threshold: float = 0.3,
        max_side: int | None = 640,
        threads: int = 2,
        providers: Sequence[str] | None = None,
        model_path: str | Path | None = None,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be >= 32 or None, got {max_side}")
        self.score_threshold = float(score_threshold)
        self.verify_below = verify_below
        self.verify_floor = float(verify_floor)
        self.nms_threshold = float(nms_threshold)
        self.max_side = max_side
        self._session = detector_session(Path(model_path or YUNET_PATH), threads, providers)
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"YunetDetector(score_threshold={self.score_threshold:g}, "
            f"verify_below={self.verify_below}, max_side={self.max_side})"
        )

    def detect(self, image_rgb: np.ndarray, min_score: float | None = None) -> list[Face]:
        """Faces in an RGB uint8 H x W x 3 image, largest first; boxes x1, y1, x2, y2 and
        landmarks (5, 2) in input-image pixels (order: maskid.face.LANDMARK_NAMES).

        min_score: keep faces down to this score instead of `score_threshold` (a cascade's
        second stage judges the weaker ones)."""
        image = check_rgb(image_rgb)
        small, scale = self._analysed(image)
        keep_from = self.score_threshold if min_score is None else float(min_score)
        floor = keep_from
        if self.verify_below is not None:
            floor = min(floor, self.verify_floor)
        boxes, scores, points = self.candidates(small, floor)
        unsure = scores < (self.verify_below or 0.0)
        if np.any(unsure):
            scores = scores.copy()
            scores[unsure] = (scores[unsure] + self._mirror_scores(small, boxes[unsure])) / 2
        keep = scores >= keep_from
        faces = [
            Face(box=b / scale, score=float(s), landmarks=p / scale)
            for b, s, p in zip(boxes[keep], scores[keep], points[keep], strict=True)
        ]
        faces.sort(key=lambda f: f.size, reverse=True)
        return faces

    def candidates(
        self, image_rgb: np.ndarray, min_score: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pass over the image as given: boxes (N, 4), scores (N,), points (N, 5, 2) of every
        candidate scoring >= min_score after NMS, in its pixels."""
        h, w = image_rgb.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        x = np.zeros((1, 3, ph, pw), np.float32)
        x[0, :, :h, :w] = image_rgb[:, :, ::-1].transpose(2, 0, 1)  # YuNet takes BGR 0..255
        with self._lock:
            out = dict(zip(self._outputs, self._session.run(None, {"input": x}), strict=True))
        boxes, scores, points = [], [], []
        for st in _STRIDES:
            cols = pw // st
            score = np.sqrt(
                np.clip(out[f"cls_{st}"][0, :, 0], 0, 1) * np.clip(out[f"obj_{st}"][0, :, 0], 0, 1)
            )
            idx = np.nonzero(score >= min_score)[0]
            if idx.size == 0:
                continue
            r = (idx // cols).astype(np.float64)[:, None]
            c = (idx % cols).astype(np.float64)[:, None]
            b = out[f"bbox_{st}"][0, idx].astype(np.float64)
            k = out[f"kps_{st}"][0, idx].astype(np.float64)
            centre = (np.hstack([c, r]) + b[:, :2]) * st
            half = np.exp(b[:, 2:4]) * st / 2
            boxes.append(np.hstack([centre - half, centre + half]))
            points.append(np.stack([(k[:, 0::2] + c) * st, (k[:, 1::2] + r) * st], axis=2))
            scores.append(score[idx].astype(np.float64))
        if not boxes:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        b_all, s_all, p_all = np.vstack(boxes), np.concatenate(scores), np.vstack(points)
        keep = nms(b_all, s_all, self.nms_threshold)
        return b_all[keep], s_all[keep], p_all[keep]

    def _mirror_scores(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Each box's best score among the candidates found in the mirror image of the region
        around the boxes (their union, grown by half a box each side: the whole image for a
        tight crop) that overlap it (IoU > 0.5 once mirrored back); 0 where none does."""
        h, w = image.shape[:2]
        grow = np.hstack([-(boxes[:, 2:] - boxes[:, :2]), boxes[:, 2:] - boxes[:, :2]]) / 2
        x1, y1 = np.floor(np.maximum((boxes + grow)[:, :2].min(0), 0)).astype(int)
        x2, y2 = np.ceil(np.minimum((boxes + grow)[:, 2:].max(0), [w, h])).astype(int)
        region = np.ascontiguousarray(image[y1:y2, x1:x2][:, ::-1])
        m_boxes, m_scores, _ = self.candidates(region, 0.05)
        if len(m_boxes) == 0:
            return np.zeros(len(boxes))
        back = m_boxes.copy()  # mirrored back into the image's coordinates
        back[:, 0], back[:, 2] = x2 - m_boxes[:, 2], x2 - m_boxes[:, 0]
        back[:, 1::2] += y1
        overlap = iou(boxes, back) > 0.5
        return np.asarray(np.where(overlap, m_scores[None, :], 0.0).max(axis=1))

    def _analysed(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = image.shape[:2]
        if self.max_side is None or max(h, w) <= self.max_side:
            return image, 1.0
        scale = self.max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return small, small.shape[1] / w
