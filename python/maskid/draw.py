"""Annotated pictures: boxes, landmarks, identity and score drawn onto the photo."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from maskid.errors import ImageError
from maskid.face import Face

KNOWN = (40, 200, 60)  # RGB
UNKNOWN = (230, 60, 40)
LANDMARK = (255, 220, 0)


def default_annotation_path(image: str | Path) -> Path:
    """Where `recognize` writes its picture when --out is not given (printed to the user)."""
    from maskid.paths import cache_dir

    return cache_dir() / "annotated" / f"{Path(image).stem}.recognized.jpg"


def annotate(
    image: np.ndarray, faces: Sequence[Face], labels: Sequence[str] | None = None
) -> np.ndarray:
    """A copy of the RGB image with each face's box, landmarks, name and cosine score
    (`labels`: a prefix per face, such as the camera loop's track ids)."""
    out = image.copy()
    scale = max(out.shape[:2]) / 640.0
    thick = max(1, round(2 * scale))
    font = 0.5 * max(scale, 0.6)
    for i, f in enumerate(faces):
        color = KNOWN if f.identity else UNKNOWN
        x1, y1, x2, y2 = (round(float(v)) for v in f.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        for x, y in f.landmarks:
            cv2.circle(
                out, (round(float(x)), round(float(y))), thick + 1, LANDMARK, -1, cv2.LINE_AA
            )
        score = f"{f.match_score:.3f}" if f.match_score is not None else "-"
        if f.identity:
            label = f"{f.identity} cos={score}"
        elif f.matches:  # below the threshold: say who came closest, marked as a guess
            label = f"unknown (nearest {f.matches[0].identity}? cos={score})"
        else:
            label = "unknown"
        if labels is not None:
            label = f"{labels[i]} {label}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, thick)
        ty = y1 - 4 if y1 - th - base - 4 > 0 else y2 + th + 4
        lx = max(0, min(x1, out.shape[1] - tw - 4))  # keep the label inside the picture
        cv2.rectangle(out, (lx, ty - th - base), (lx + tw + 4, ty + base), color, -1)
        cv2.putText(
            out,
            label,
            (lx + 2, ty),
            cv2.FONT_HERSHEY_SIMPLEX,
            font,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, height: int = 360) -> np.ndarray:
    """Two RGB images scaled to the same height and placed next to each other."""

    def fit(img: np.ndarray) -> np.ndarray:
        w = max(1, round(img.shape[1] * height / img.shape[0]))
        return cv2.resize(img, (w, height), interpolation=cv2.INTER_AREA)

    gap = np.full((height, 8, 3), 255, np.uint8)
    return np.concatenate([fit(left), gap, fit(right)], axis=1)


def write_image(path: str | Path, image_rgb: np.ndarray) -> Path:
    """Write an RGB image atomically (format from the suffix); ImageError if it cannot."""
    path = Path(path)
    suffix = path.suffix.lower() or ".jpg"
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError(f"{path}: cannot encode an image with suffix {suffix!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        os.replace(tmp, path)
    except OSError as e:
        raise ImageError(f"{path}: cannot write ({e.strerror})") from None
    return path
