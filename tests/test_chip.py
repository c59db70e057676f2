"""chip.py against dlib's own get_face_chip on real faces (dlib is the reference, not used by chip.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dlib_reference import MODELS, dlib, rgb
from maskid.alignment.dlib_chip import chip_source, dlib_chip_transform, extract_chip, pyramid_down2


@pytest.fixture(scope="module")
def dlib_faces(lfw10: Path, m2fred: Path) -> list[tuple[np.ndarray, object]]:
    """(image, dlib 5-point shape) for 6 LFW photos and 4 unmasked M2FRED crops."""
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(MODELS / "shape_predictor_5_face_landmarks.dat"))
    images = [rgb(p) for p in sorted(lfw10.glob("*/*.jpg"))[::17][:6]]
    images += [rgb(p, 0.5) for p in sorted(m2fred.glob("*/*-0-0.png"))[::9][:8]]
    out = []
    for img in images:
        dets = det(img, 1)
        if dets:
            out.append((img, sp(img, dets[0])))
    assert len(out) >= 8, "dlib found too few faces in the fixtures"
    return out


def _points(shape: object) -> np.ndarray:
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)  # type: ignore[attr-defined]


def test_chip_equals_dlib_get_face_chip(dlib_faces: list[tuple[np.ndarray, object]]) -> None:
    for img, shape in dlib_faces:
        m = dlib_chip_transform(_points(shape))
        ref = dlib.get_face_chip(img, shape, 150, 0.25)
        np.testing.assert_array_equal(extract_chip(img, m), ref)


def test_pyramid_chip_equals_dlib(dlib_faces: list[tuple[np.ndarray, object]]) -> None:
    sp = dlib.shape_predictor(str(MODELS / "shape_predictor_5_face_landmarks.dat"))
    for img, shape in dlib_faces[:3]:
        big = cv2.resize(img, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
        r = shape.rect  # type: ignore[attr-defined]
        big_shape = sp(
            big, dlib.rectangle(4 * r.left(), 4 * r.top(), 4 * r.right(), 4 * r.bottom())
        )
        m = dlib_chip_transform(_points(big_shape))
        source, _ = chip_source(big, m)
        assert source.shape[0] < big.shape[0] // 3, "the 4x face should take a pyramid level"
        ref = dlib.get_face_chip(big, big_shape, 150, 0.25)
        np.testing.assert_array_equal(extract_chip(big, m), ref)


def test_pyramid_down2_equals_dlib() -> None:
    img = (np.random.default_rng(0).random((101, 87, 3)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(pyramid_down2(img), np.asarray(dlib.pyramid_down(2)(img)))


def test_chip_outside_image_is_black(dlib_faces: list[tuple[np.ndarray, object]]) -> None:
    img, shape = dlib_faces[0]
    moved = _shift(shape, -0.4 * img.shape[1])  # the face half out of the left edge
    chip = extract_chip(img, dlib_chip_transform(_points(moved)))
    assert (chip[:, :20] == 0).all() and chip.max() > 0
    np.testing.assert_array_equal(chip, dlib.get_face_chip(img, moved, 150, 0.25))


def _shift(shape: object, dx: float) -> object:
    pts = [dlib.point(round(p.x + dx), p.y) for p in shape.parts()]  # type: ignore[attr-defined]
    return dlib.full_object_detection(shape.rect, pts)  # type: ignore[attr-defined]


def test_extract_chip_rejects_non_uint8() -> None:
    with pytest.raises(ValueError, match="uint8"):
        extract_chip(np.zeros((20, 20, 3), np.float32), np.eye(2, 3))
