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
