"""The `Face` record that every pipeline stage fills in (detect -> align -> embed -> match)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Landmark order used everywhere in maskid (image coordinates, pixels, x then y):
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# "left"/"right" are as seen in the image: left_eye has the smaller x in an upright face.


@dataclass
class Match:
    identity: str
    score: float  # cosine similarity in [-1, 1]; higher is more similar


@dataclass
class Face:
    box: np.ndarray  # (4,) float: x1, y1, x2, y2 in pixels of the original image
    score: float  # detector confidence in [0, 1]
    landmarks: np.ndarray  # (5, 2) float, order LANDMARK_NAMES
    chip_transform: np.ndarray | None = None  # (2, 3) affine mapping chip pixels -> image pixels
    descriptor: np.ndarray | None = None  # raw embedder output
    identity: str | None = None
    match_score: float | None = None
    matches: list[Match] = field(default_factory=list)

    @property
    def size(self) -> float:
        """Box area in pixels, used to sort faces largest first."""
        w = float(self.box[2] - self.box[0])
        h = float(self.box[3] - self.box[1])
        return max(w, 0.0) * max(h, 0.0)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N x 4, x1 y1 x2 y2) with every box in b (M x 4): N x M."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9))


def l2_normalize(v: np.ndarray) -> np.ndarray:
    """Rows of `v` scaled to unit length (zero rows stay zero); float32 unless `v` is already a
    float array, whose precision is kept."""
    v = np.asarray(v)
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float32)
    out: np.ndarray = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return out
