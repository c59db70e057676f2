"""Aligned face chips identical to dlib's `get_face_chip(img, shape, 150, 0.25)`, in numpy.

dlib fits a similarity transform from a 5-point template to the landmarks, keeps only its
angle, scale and the image position of the chip centre, and samples bilinearly about that
centre with step (size*scale - 1)/(size - 1); values are truncated to uint8 and samples
whose 2x2 neighbourhood leaves the image are 0. When the chip is much smaller than the face
dlib first shrinks a crop of the image with `pyramid_down<2>` and samples that level.
`M` (2x3) maps chip pixel (col, row, 1) to image (x, y) with all of that folded in.
"""

from __future__ import annotations

import math

import numpy as np

from maskid.alignment.similarity import weighted_similarity

# dlib's 5-point template (x, y in 0..1): right eye outer/inner, left eye outer/inner, nose.
TEMPLATE_5 = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)


def _chip_rect(points5: np.ndarray, size: int, padding: float) -> tuple[np.ndarray, float, float]:
    """dlib's chip_details: (centre in the image, half-extent of the drectangle, angle)."""
    pts = np.asarray(points5, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"expected 5 x 2 dlib landmarks, got {pts.shape}")
    template = (padding + TEMPLATE_5) / (2 * padding + 1) * size
    return _rect_of(weighted_similarity(template, pts, np.ones(5)), size)


def _rect_of(t: np.ndarray, size: int) -> tuple[np.ndarray, float, float]:
    """The chip rectangle of a template-to-image similarity `t` (size x size template space)."""
    px, py = t[0, 0], t[1, 0]  # the transform applied to the vector (1, 0)
    angle = math.atan2(py, px)
    scale = math.hypot(px, py)
    centre = t[:, :2] @ np.array([size / 2.0, size / 2.0]) + t[:, 2]
    half = (size * scale - 1) / 2  # centered_drect shrinks the width by one pixel
    return centre, half, angle


def _rect_transform(centre: np.ndarray, half: float, angle: float, size: int) -> np.ndarray:
    """Chip (col, row) -> source (x, y): corners of the rotated rect at chip corners."""
    k = 2 * half / (size - 1)
    c, s = math.cos(angle), math.sin(angle)
    m = np.array([[c * k, -s * k, 0.0], [s * k, c * k, 0.0]])
    mid = (size - 1) / 2
    m[:, 2] = centre - m[:, :2] @ np.array([mid, mid])
    return m


def fold_into_chip(t: np.ndarray, size: int) -> np.ndarray:
    """The chip transform dlib samples with for a template-to-image similarity `t`: only its
    angle, scale and the image position of the chip centre are kept (get_face_chip_details)."""
    return _rect_transform(*_rect_of(t, size), size)


def dlib_chip_transform(
    points5_dlib: np.ndarray, size: int = 150, padding: float = 0.25
) -> np.ndarray:
    """2x3 float64 M mapping chip pixel (col, row, 1) to image (x, y), as dlib samples it
    when no pyramid level is needed. `points5_dlib` are dlib's 5 landmarks (x, y)."""
    centre, half, angle = _chip_rect(points5_dlib, size, padding)
    return _rect_transform(centre, half, angle, size)


def _decompose(m: np.ndarray, size: int) -> tuple[np.ndarray, float, float]:
    mid = (size - 1) / 2
    centre = m[:, :2] @ np.array([mid, mid]) + m[:, 2]
    k = math.hypot(m[0, 0], m[1, 0])
    return centre, k * (size - 1) / 2, math.atan2(m[1, 0], m[0, 0])


def pyramid_down2(img: np.ndarray) -> np.ndarray:
    """dlib's pyramid_down<2> on uint8 RGB: 1-4-6-4-1 filter, every other pixel, integer /256.

    Output pixel (i, j) is centred on input (2i+2, 2j+2); size ((H-3)//2, (W-3)//2).
    """
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0, 3), np.uint8)
    x = img.astype(np.int32)
    oc = (w - 3) // 2
    cols = 2 * np.arange(oc)
    t = x[:, cols] + 4 * x[:, cols + 1] + 6 * x[:, cols + 2] + 4 * x[:, cols + 3] + x[:, cols + 4]
    rows = np.arange(2, h - 2, 2)
    d = t[rows - 2] + 4 * t[rows - 1] + 6 * t[rows] + 4 * t[rows + 1] + t[rows + 2]
    return (d // 256).astype(np.uint8)[: (h - 3) // 2]


def _rect_down(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    off = np.array([1.25, 0.75])  # dlib's point_down for pyramid_down<2>
    return lo / 2.0 - off, hi / 2.0 - off


def _area(lo: np.ndarray, hi: np.ndarray) -> float:
    w, h = hi - lo + 1  # drectangle width includes both ends
    return float(w * h) if (w > 0 and h > 0) else 0.0


def needs_pyramid(m: np.ndarray, size: int = 150) -> bool:
    """Whether the chip of `m` is sampled from a pyramid level (a face much larger than the
    chip, anti-aliased as dlib does) rather than from the image itself: see `chip_source`."""
    centre, half, _ = _decompose(np.asarray(m, dtype=np.float64), size)
    return _area(*_rect_down(centre - half, centre + half)) > size * size


def chip_source(image: np.ndarray, m: np.ndarray, size: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """(source image, M for it): the crop or pyramid level dlib samples, and the transform
    from chip (col, row) to that source's (x, y). Sampling semantics are `extract_chip`'s."""
    centre, half, angle = _decompose(np.asarray(m, dtype=np.float64), size)
    lo, hi = centre - half, centre + half
    # Pyramid depth and the crop the pyramid is built from (extract_image_chips).
    depth, grow = 0, 2.0
    dlo, dhi = _rect_down(lo, hi)
    while _area(dlo, dhi) > size * size:
        dlo, dhi = _rect_down(dlo, dhi)
        depth += 1
        grow = grow * 2 + 2
    c, s = math.cos(angle), math.sin(angle)
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]]])
    rot = (corners - centre) @ np.array([[c, s], [-s, c]]) + centre
    h, w = image.shape[:2]
    box_lo = np.maximum(rot.min(0) - grow, 0.0)
    box_hi = np.minimum(rot.max(0) + grow, [w - 1, h - 1])
    if np.any(box_hi < box_lo):  # the chip lies wholly outside the image
        return image[:0, :0], m
    bx0, by0, bx1, by1 = (math.floor(v + 0.5) for v in (*box_lo, *box_hi))
    source = image[by0 : by1 + 1, bx0 : bx1 + 1]
    lo, hi = lo - [bx0, by0], hi - [bx0, by0]
    level = -1
    while _area(*_rect_down(lo, hi)) > size * size:
        level += 1
        lo, hi = _rect_down(lo, hi)
    for _ in range(level + 1):
        source = pyramid_down2(source)
    return source, _rect_transform((lo + hi) / 2, (hi[0] - lo[0]) / 2, angle, size)


def sample_bilinear(source: np.ndarray, m: np.ndarray, size: int = 150) -> np.ndarray:
    """dlib's transform_image with interpolate_bilinear: chip pixel (c, r) takes source
    M @ (c, r, 1); 0 where the 2x2 neighbourhood leaves the source; truncated to uint8."""
    h, w = source.shape[:2]
    r, c = np.mgrid[0:size, 0:size].astype(np.float64)
    x = m[0, 0] * c + m[0, 1] * r + m[0, 2]
    y = m[1, 0] * c + m[1, 1] * r + m[1, 2]
    left, top = np.floor(x), np.floor(y)
    inside = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    li = np.where(inside, left, 0).astype(np.intp)
    ti = np.where(inside, top, 0).astype(np.intp)
    lr = (x - left)[..., None]
    tb = (y - top)[..., None]
    if h < 2 or w < 2:
        return np.zeros((size, size, 3), np.uint8)
    src = source.astype(np.float64)
    tl, tr = src[ti, li], src[ti, li + 1]
    bl, br = src[ti + 1, li], src[ti + 1, li + 1]
    v = (1 - tb) * ((1 - lr) * tl + lr * tr) + tb * ((1 - lr) * bl + lr * br)
    out = np.clip(v, 0, 255).astype(np.uint8)  # truncation, as dlib's assign_pixel
    out[~inside] = 0
    return out


def extract_chip(image_rgb: np.ndarray, m: np.ndarray, size: int = 150) -> np.ndarray:
    """uint8 H x W x 3 RGB image + M from `dlib_chip_transform` -> uint8 size x size x 3."""
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 H x W x 3 RGB, got {image_rgb.dtype} {image_rgb.shape}")
    source, ms = chip_source(image_rgb, m, size)
    return sample_bilinear(source, ms, size)
