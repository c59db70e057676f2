"""maskid.detection.yunet.YunetDetector on real faces: OpenCV's own YuNet decoder as the
reference, landmark order, mirror verification, scaling and bad input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from maskid.detection.mtcnn import DETECTOR_DIR
from maskid.detection.yunet import YUNET_PATH, YunetDetector
from maskid.errors import ImageError
from maskid.face import Face, iou
from maskid.io.images import load_image


@pytest.fixture(scope="module")
def plain() -> YunetDetector:
    """YuNet alone at full resolution: what OpenCV's FaceDetectorYN computes."""
    return YunetDetector(score_threshold=0.5, verify_below=None, max_side=None)


def check_face(f: Face) -> None:
    x1, y1, x2, y2 = f.box
    le, re, nose, ml, mr = f.landmarks
    for eye in (le, re):
        assert x1 <= eye[0] <= x2 and y1 <= eye[1] <= y2
    assert le[0] < re[0] and ml[0] < mr[0]  # MTCNN's order: left as seen in the image first
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])


def test_model_is_the_documented_file() -> None:
    import hashlib

    m = onnx.load(str(YUNET_PATH))
    onnx.checker.check_model(m, full_check=True)
    digest = hashlib.sha256(YUNET_PATH.read_bytes()).hexdigest()
    assert digest == "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"
    assert "MIT License" in (DETECTOR_DIR / "LICENSE-YuNet.md").read_text()


def test_decoding_matches_opencv(plain: YunetDetector, lfw10: Path, m2fred: Path) -> None:
    """Boxes, points and scores equal OpenCV's FaceDetectorYN on the same file and image."""
    files = sorted(lfw10.glob("*/*.jpg"))[::20] + sorted(m2fred.glob("*/*-1-0.png"))[::40]
    compared = 0
    for p in files:
        img = load_image(p)
        h, w = img.shape[:2]
        ref = cv2.FaceDetectorYN.create(str(YUNET_PATH), "", (w, h), 0.5, 0.3, 5000)
        _, rows = ref.detect(np.ascontiguousarray(img[:, :, ::-1]))
        ours = plain.detect(img)
        rows = np.zeros((0, 15)) if rows is None else rows
        assert len(ours) == len(rows), p
        for f in ours:
            r = rows[np.argmin(np.abs(rows[:, 0] - f.box[0]) + np.abs(rows[:, 1] - f.box[1]))]
            box = np.array([r[0], r[1], r[0] + r[2], r[1] + r[3]])
            assert np.abs(f.box - box).max() < 0.5, p
            assert np.abs(f.landmarks - r[4:14].reshape(5, 2)).max() < 0.5, p
            assert abs(f.score - r[14]) < 1e-3, p
            compared += 1
    assert compared >= len(files)


def test_tight_crops_as_they_come(m2fred: Path) -> None:
    """M2FRED's 128 px crops, no border: every unmasked face and nearly every masked one."""
    det = YunetDetector()
    for kind, need in (("0", 1.0), ("1", 0.95)):
        files = sorted(m2fred.glob(f"*/*-{kind}-0.png"))[::4]
        found = 0
        for p in files:
            faces = det.detect(load_image(p))
            if faces:
                check_face(faces[0])
                found += 1
        assert found >= need * len(files), f"{kind}: {found}/{len(files)}"


def test_mirror_image_gives_the_mirror_face(plain: YunetDetector, lfw10: Path) -> None:
    """What the mirror verification relies on: a face scores about the same mirrored."""
    for p in sorted(lfw10.glob("*/*.jpg"))[::25]:
        img = load_image(p)
        (a,) = plain.detect(img)[:1]
        (b,) = plain.detect(np.ascontiguousarray(img[:, ::-1]))[:1]
        w = img.shape[1]
        back = np.array([w - b.box[2], b.box[1], w - b.box[0], b.box[3]])
        assert abs(a.score - b.score) < 0.1
        assert iou(a.box, back)[0, 0] > 0.8  # the verification matches at IoU > 0.5


def test_verification_only_lowers_unsure_scores(lfw10: Path, m2fred: Path) -> None:
    """A face under `verify_below` gets the mean of its and its mirror's score; a sure face
    keeps its own, so verification never drops a face YuNet is sure of."""
    raw = YunetDetector(score_threshold=0.25, verify_below=None)
    verified = YunetDetector(score_threshold=0.25, verify_below=0.8)
    for p in sorted(m2fred.glob("*/*-1-0.png"))[::10]:
        img = load_image(p)
        for f in raw.detect(img):
            match = [g for g in verified.detect(img) if np.abs(g.box - f.box).max() < 1e-6]
            if f.score >= 0.8:
                assert match and match[0].score == pytest.approx(f.score)
            elif match:
                assert match[0].score <= (f.score + 1.0) / 2 + 1e-9


def test_large_frame_is_analysed_downscaled(lfw10: Path) -> None:
    """A 1000 x 1000 photo analysed at 320: boxes come back in the photo's pixels. YuNet's own
    points move by up to ~0.2 eye distances between scales (why the cascade uses ONet's);
    ONet's points on its boxes stay within 0.05."""
    from maskid.detection.cascade import CascadeDetector

    img = load_image(sorted(lfw10.glob("*/*.jpg"))[0])
    k = 4
    big = cv2.resize(img, (250 * k, 250 * k), interpolation=cv2.INTER_LINEAR)
    ref = YunetDetector(max_side=None).detect(img)[0]
    f = YunetDetector(max_side=320).detect(big)[0]
    eye_dist = np.linalg.norm(ref.landmarks[1] - ref.landmarks[0])
    assert np.abs(f.box / k - ref.box).max() < 0.15 * (ref.box[2] - ref.box[0])
    assert np.linalg.norm(f.landmarks / k - ref.landmarks, axis=1).max() < 0.3 * eye_dist
    cascade = CascadeDetector(yunet=YunetDetector(max_side=320))
    a, b = cascade.detect(img)[0], cascade.detect(big)[0]
    assert np.linalg.norm(b.landmarks / k - a.landmarks, axis=1).max() < 0.05 * eye_dist


def test_no_face_and_bad_input() -> None:
    det = YunetDetector()
    assert det.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    assert det.detect(np.zeros((5, 5, 3), np.uint8)) == []
    with pytest.raises(ImageError):
        det.detect(np.zeros((50, 50), np.uint8))
    with pytest.raises(ImageError):
        det.detect(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError):
        YunetDetector(score_threshold=1.5)
