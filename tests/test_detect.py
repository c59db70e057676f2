"""maskid.detection.mtcnn.MtcnnDetector on real faces (M2FRED masked/unmasked crops, lfw10 photos)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from maskid.detection.mtcnn import DETECTOR_DIR, MtcnnDetector, nms
from maskid.face import Face
from maskid.io.images import load_image


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    return MtcnnDetector()


def pad50(img: np.ndarray) -> np.ndarray:
    p = img.shape[0] // 2
    return cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_REPLICATE)


def check_face(f: Face, shape: tuple[int, ...]) -> None:
    x1, y1, x2, y2 = f.box
    assert 0 < f.score <= 1 and x2 > x1 and y2 > y1
    le, re, nose, ml, mr = f.landmarks
    for eye in (le, re):
        assert x1 <= eye[0] <= x2 and y1 <= eye[1] <= y2
    assert le[0] < re[0] and ml[0] < mr[0]
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])
    h, w = shape[:2]  # the test faces are centred
    assert x1 < w * 0.6 and x2 > w * 0.4 and y1 < h * 0.6 and y2 > h * 0.4


def test_models_are_valid_onnx() -> None:
    for name in ("pnet", "rnet", "onet"):
        m = onnx.load(str(DETECTOR_DIR / f"{name}.onnx"))
        onnx.checker.check_model(m, full_check=True)
        onnx.shape_inference.infer_shapes(m, strict_mode=True)
        dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
        assert dims[:2] == ["N", 3]
        assert dims[2:] == (
            ["H", "W"] if name == "pnet" else [24, 24] if name == "rnet" else [48, 48]
        )
    assert (DETECTOR_DIR / "LICENSE-MTCNN.md").read_text().startswith("MTCNN weights")


@pytest.mark.parametrize("kind", ["1", "0"])  # masked, unmasked
def test_m2fred_padded(detector: MtcnnDetector, m2fred: Path, kind: str) -> None:
    files = sorted(m2fred.glob(f"*/*-{kind}-0.png"))[::12]
    found = 0
    for p in files:
        img = pad50(load_image(p))
        faces = detector.detect(img)
        if faces:
            check_face(faces[0], img.shape)
            found += 1
    assert found >= 0.8 * len(files), f"{found}/{len(files)}"


def test_lfw10(detector: MtcnnDetector, lfw10: Path) -> None:
    files = sorted(lfw10.glob("*/*.jpg"))[::10]
    for p in files:
        img = load_image(p)
        faces = detector.detect(img)
        assert faces, p
        check_face(faces[0], img.shape)


def test_two_faces_largest_first(detector: MtcnnDetector, lfw10: Path) -> None:
    a = load_image(sorted(lfw10.glob("*/*.jpg"))[0])
    b = cv2.resize(load_image(sorted(lfw10.glob("*/*.jpg"))[50]), (160, 160))
    canvas = np.full((300, 500, 3), 100, np.uint8)
    canvas[25:275, 0:250] = a
    canvas[70:230, 300:460] = b
    faces = detector.detect(canvas)
    assert len(faces) == 2
    assert faces[0].size > faces[1].size
    assert faces[0].box[2] < 250 and faces[1].box[0] > 280


def test_no_face(detector: MtcnnDetector) -> None:
    rng = np.random.default_rng(0)
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    assert detector.detect(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) == []
    assert detector.detect(np.zeros((5, 5, 3), np.uint8)) == []


def test_huge_photo_maps_back(detector: MtcnnDetector, lfw10: Path) -> None:
    img = load_image(sorted(lfw10.glob("*/*.jpg"))[0])
    ref = detector.detect(img)[0]
    k = 8  # 2000 x 2000: searched at max_side, landmarks read from full-resolution crops
    big = cv2.resize(img, (250 * k, 250 * k), interpolation=cv2.INTER_LINEAR)
    f = detector.detect(big)[0]
    eye_dist = np.linalg.norm(ref.landmarks[1] - ref.landmarks[0])
    err = np.linalg.norm(f.landmarks / k - ref.landmarks, axis=1).max()
    assert err < 0.15 * eye_dist
    assert np.abs(f.box / k - ref.box).max() < 0.15 * (ref.box[2] - ref.box[0])


def test_bad_input(detector: MtcnnDetector) -> None:
    from maskid.errors import ImageError

    with pytest.raises(ImageError):
        detector.detect(np.zeros((50, 50), np.uint8))
    with pytest.raises(ImageError):
        detector.detect(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError):
        MtcnnDetector(min_face_size=5)


def test_nms() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], float)
    keep = nms(boxes, np.array([0.5, 0.9, 0.8]), 0.5)
    assert keep.tolist() == [1, 2]
