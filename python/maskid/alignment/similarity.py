"""From the detector's 5 points to the embedder's chip transform, in dlib's chip geometry.

dlib aligns with its own 5 points (eye corners + nose base) and a similarity fit to a template.
MTCNN's points (eye centres, nose tip, mouth corners) are different, so `TEMPLATE` says where
they sit in dlib's template space, fitted on real unmasked faces by `training/maskid_train/fit_alignment.py`
(dlib HOG + shape_predictor_5 + dlib's chip transform as ground truth). At run time a weighted
least-squares similarity (Umeyama) maps `TEMPLATE` onto the detected points, and the result is
folded into a (2, 3) M exactly as `maskid.alignment.dlib_chip.dlib_chip_transform` folds dlib's similarity, so
`maskid.alignment.dlib_chip.extract_chip(image, M)` samples like dlib's `get_face_chip`.

Under a mask the nose and mouth points are guesses, so the fit weights the eyes. Measured
(dlib-resnet-v1, M2FRED, training/maskid_train/fit_alignment.py --eval-masked): masked-probe rank-1 0.516
with all points on both sides, 0.491 eye-weighted probes only, 0.579 eye-weighted on both sides;
parity with dlib's own chips is also higher eye-weighted (mean cosine 0.995 vs 0.993). So the
eye weighting is the default for every face (`masked=None`): gallery and probes must match.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from maskid.networks.contract import ModelContract

# MTCNN points (left_eye, right_eye, nose, mouth_left, mouth_right) in dlib's template units:
# x, y in 0..1 before chip padding, like dlib's TEMPLATE_5 (see maskid.alignment.dlib_chip).
# Regenerate with: PYTHONPATH=training python -m maskid_train.fit_alignment  (fit on 213 faces: lfw10 + M2FRED unmasked;
# spread of single faces around it, chip px: eyes 2.7, nose 7.5, mouth 7.5).
TEMPLATE = np.array(
    [
        [0.225899, 0.222711],
        [0.787005, 0.216720],
        [0.498877, 0.507639],
        [0.262762, 0.781100],
        [0.755104, 0.778320],
    ]
)

# Per-point least-squares weights (left_eye, right_eye, nose, mouth_left, mouth_right).
WEIGHTS_ALL = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
WEIGHTS_MASKED = np.array([1.0, 1.0, 0.1, 0.0, 0.0])  # eyes; the nose only steadies the scale
DEFAULT_PADDING = 0.25


def weighted_similarity(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(2, 3) similarity minimising sum w_i |s R src_i + t - dst_i|^2 (weighted Umeyama)."""
    w = np.asarray(w, dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError("weights must not all be zero")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s, d = src - mu_s, dst - mu_d
    var = float(w @ (s**2).sum(1))
    cov = (d * w[:, None]).T @ s
    u, sv, vt = np.linalg.svd(cov)
    flip = np.eye(2)
    det = np.linalg.det(cov)  # dlib's find_similarity_transform rule for a reflection
    if det < 0 or (det == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        flip[1, 1] = -1
    rot = u @ flip @ vt
    c = float(np.trace(np.diag(sv) @ flip) / var) if var > 0 else 1.0
    out = np.zeros((2, 3))
    out[:, :2] = c * rot
    out[:, 2] = mu_d - c * rot @ mu_s
    return out


def chip_transform(
    landmarks5: np.ndarray,
    masked: bool | None = None,
    size: int = 150,
    padding: float = DEFAULT_PADDING,
) -> np.ndarray:
    """(2, 3) float64 M mapping chip pixel (col, row, 1) to image (x, y) for `extract_chip`.

    `landmarks5`: (5, 2) detector points in maskid's order. `masked`: None (default) or True
    weights the eyes (nose low, mouth not at all; measured best for masked and bare faces);
    False fits all five points equally. Use the same setting for enrollment and probes.
    """
    pts = np.asarray(landmarks5, dtype=np.float64)
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"expected finite (5, 2) landmarks, got {pts.shape}")
    if size < 2:
        raise ValueError(f"size must be >= 2, got {size}")
    from maskid.alignment.dlib_chip import fold_into_chip

    weights = WEIGHTS_ALL if masked is False else WEIGHTS_MASKED
    template = (padding + TEMPLATE) / (2 * padding + 1) * size  # dlib's template space
    return fold_into_chip(weighted_similarity(template, pts, weights), size)


def similarity_chip_transform(
    landmarks5: np.ndarray, template_px: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """(2, 3) M mapping chip pixel (col, row, 1) to image (x, y) for a model whose chip puts the
    five points at `template_px` (chip pixels): the weighted least-squares similarity from the
    template onto the detected points (insightface's norm_crop, OMZ's alignment)."""
    pts = np.asarray(landmarks5, dtype=np.float64)
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"expected finite (5, 2) landmarks, got {pts.shape}")
    return weighted_similarity(np.asarray(template_px, np.float64), pts, np.asarray(weights))


def model_chip_transform(landmarks5: np.ndarray, contract: ModelContract) -> np.ndarray:
    """The chip transform of a face for the model described by `contract` (its own size,
    template and landmark weights): the one place the pipeline turns landmarks into a chip."""
    if contract.chip_geometry == "dlib":
        return chip_transform(landmarks5, size=contract.input_size, padding=contract.chip_padding)
    return similarity_chip_transform(
        landmarks5, contract.template_px, np.asarray(contract.landmark_weights)
    )
