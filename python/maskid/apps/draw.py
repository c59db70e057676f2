"""Annotated pictures: boxes, landmarks, identity and score drawn onto the photo."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class LabelLayout:
    """Where a face's label goes: a filled block at (x, y) of size w x h holding `lines`."""

    x: int
    y: int
    w: int
    h: int
    lines: tuple[str, ...]
    font: float  # cv2.FONT_HERSHEY_SIMPLEX scale
    thick: int
    line_h: int  # pixels per text line, baseline to baseline
    ascent: int  # pixels from a line's top to its baseline
    pad: int


FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_FONT = 0.3  # below this Hershey text is unreadable: long lines are cut instead


def face_label(face: Face) -> tuple[str, ...]:
    """The label lines of a face: its name and score, or `unknown` with the nearest identity
    (the same facts `recognize` prints; ASCII only, as OpenCV's fonts have no other glyphs)."""
    score = f"{face.match_score:.3f}" if face.match_score is not None else "-"
    if face.identity:
        return (face.identity, f"cos {score}")
    if face.matches:  # below the threshold: say who came closest
        return ("unknown", f"nearest {face.matches[0].identity} {score}")
    return ("unknown",)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def label_layout(
    shape: Sequence[int],
    box: Sequence[float] | np.ndarray,
    lines: Sequence[str],
    thick: int | None = None,
) -> LabelLayout:
    """Place a label for the face in `box` so that it lies wholly inside an image of `shape`.

    The font shrinks (down to MIN_FONT) until the widest line fits the image width, and lines
    still too wide are cut with ".." (before a closing score, which stays whole). The block
    goes above the box, else below it, else inside its top edge (a tight crop, where the face
    fills the picture)."""
    h_img, w_img = int(shape[0]), int(shape[1])
    scale = max(h_img, w_img) / 640.0
    thick = thick if thick is not None else max(1, round(2 * scale))
    font = max(0.45, 0.5 * scale)  # shrunk below to fit narrow pictures
    pad = max(2, thick + 1)

    def width(text: str, f: float) -> int:
        return int(cv2.getTextSize(text, FONT, f, thick)[0][0])

    room = max(1, w_img - 2 * pad)
    widest = max(width(t, font) for t in lines)
    if widest > room:
        font = max(MIN_FONT, font * room / widest)
    fitted = []
    for text in lines:
        # Cut the name, not the score: a number ending the line stays whole.
        head, _, tail = text.rpartition(" ")
        if head and _is_number(tail):
            while width(text, font) > room and len(head) > 3:
                head = head[:-3] + ".."
                text = f"{head} {tail}"
        while width(text, font) > room and len(text) > 3:
            text = text[:-3] + ".."
        fitted.append(text)
    (_, th), base = cv2.getTextSize("Ag", FONT, font, thick)
    ascent = th + thick  # the stroke's thickness reaches above the glyph height
    line_h = ascent + base + thick
    bw = min(w_img, max(width(t, font) for t in fitted) + 2 * pad)
    bh = min(h_img, line_h * len(fitted) + pad)
    x1, y1, _, y2 = (round(float(v)) for v in box)
    if y1 - bh >= 0:
        y = y1 - bh  # above the box
    elif y2 + bh <= h_img:
        y = y2  # below it
    else:
        y = max(0, y1)  # inside its top edge
    y = min(max(0, y), h_img - bh)
    x = min(max(0, x1), w_img - bw)
    return LabelLayout(x, y, bw, bh, tuple(fitted), font, thick, line_h, ascent, pad)


def annotate(
    image: np.ndarray, faces: Sequence[Face], labels: Sequence[str] | None = None
) -> np.ndarray:
    """A copy of the RGB image with each face's box, landmarks, name and cosine score
    (`labels`: a prefix per face, such as the camera loop's track ids). Labels stay inside the
    picture, also on tight 128 px crops (`label_layout`)."""
    out = image.copy()
    scale = max(out.shape[:2]) / 640.0
    thick = max(1, round(2 * scale))
    for i, f in enumerate(faces):
        color = KNOWN if f.identity else UNKNOWN
        x1, y1, x2, y2 = (round(float(v)) for v in f.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        for x, y in f.landmarks:
            cv2.circle(
                out, (round(float(x)), round(float(y))), thick + 1, LANDMARK, -1, cv2.LINE_AA
            )
        lines = face_label(f)
        if labels is not None:
            lines = (f"{labels[i]} {lines[0]}", *lines[1:])
        draw_label(out, label_layout(out.shape, f.box, lines, thick), color)
    return out


def draw_label(out: np.ndarray, layout: LabelLayout, color: tuple[int, int, int]) -> None:
    """Draw a label block (white text on `color`) in place."""
    lay = layout
    cv2.rectangle(out, (lay.x, lay.y), (lay.x + lay.w - 1, lay.y + lay.h - 1), color, -1)
    for k, text in enumerate(lay.lines):
        baseline_y = lay.y + lay.pad // 2 + lay.line_h * k + lay.ascent
        cv2.putText(
            out,
            text,
            (lay.x + lay.pad, baseline_y),
            FONT,
            lay.font,
            (255, 255, 255),
            lay.thick,
            cv2.LINE_AA,
        )


def side_by_side(
    left: np.ndarray,
    right: np.ndarray,
    height: int = 360,
    captions: tuple[str, str] | None = None,
) -> np.ndarray:
    """Two RGB images scaled to the same height and placed next to each other, each with its
    caption in a white strip above it (`captions`)."""

    def fit(img: np.ndarray, caption: str | None) -> np.ndarray:
        w = max(1, round(img.shape[1] * height / img.shape[0]))
        panel = cv2.resize(img, (w, height), interpolation=cv2.INTER_AREA)
        if caption is None:
            return panel
        strip = np.full((36, w, 3), 255, np.uint8)
        font = 0.7
        while cv2.getTextSize(caption, FONT, font, 2)[0][0] > w - 12 and font > MIN_FONT:
            font -= 0.05
        cv2.putText(strip, caption, (6, 26), FONT, font, (20, 20, 20), 2, cv2.LINE_AA)
        return np.concatenate([strip, panel], axis=0)

    a = fit(left, captions[0] if captions else None)
    b = fit(right, captions[1] if captions else None)
    gap = np.full((a.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([a, gap, b], axis=1)


def can_write_image(path: str | Path) -> bool:
    """Whether OpenCV can encode an image for this file name (by its suffix)."""
    return bool(Path(path).suffix) and bool(cv2.haveImageWriter(str(path)))


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
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; a picture is for sharing
            f.write(buf.tobytes())
        os.replace(tmp, path)
    except OSError as e:
        raise ImageError(f"{path}: cannot write ({e.strerror})") from None
    return path
