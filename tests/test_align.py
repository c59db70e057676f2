"""maskid.alignment.similarity: our detector + chip_transform + chip + embedder vs dlib's own pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from maskid.alignment.similarity import TEMPLATE, chip_transform, weighted_similarity

dlib = pytest.importorskip("dlib")
frm = pytest.importorskip("face_recognition_models")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from maskid_train import fit_alignment  # noqa: E402


def test_similarity_recovers_known_transform() -> None:
    src = TEMPLATE * 100
    a = 0.3
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * 1.7
    dst = src @ rot.T + [40, -7]
    t = weighted_similarity(src, dst, np.array([1, 1, 0.1, 0, 0]))
    assert np.allclose(t[:, :2], rot) and np.allclose(t[:, 2], [40, -7])


def test_chip_transform_is_a_rotation_scale() -> None:
    lm = np.array([[100, 100], [140, 102], [120, 125], [105, 145], [137, 146]], float)
    for masked in (None, True, False):
        m = chip_transform(lm, masked=masked)
        assert m.shape == (2, 3)
        assert np.isclose(m[0, 0], m[1, 1]) and np.isclose(m[0, 1], -m[1, 0])
        mid = m @ [74.5, 74.5, 1]  # chip centre lands between the eyes and the mouth
        assert 100 < mid[0] < 140 and 100 < mid[1] < 145
    with pytest.raises(ValueError):
        chip_transform(np.zeros((4, 2)))


@pytest.fixture(scope="module")
def sample(lfw10: Path, m2fred: Path) -> list[Path]:
    return sorted(lfw10.glob("*/*.jpg"))[::10] + sorted(m2fred.glob("*/*-0-0.png"))[::17]


@pytest.mark.slow
def test_descriptor_parity_with_dlib(sample: list[Path]) -> None:
    from maskid.alignment.dlib_chip import extract_chip
    from maskid.detection.mtcnn import MtcnnDetector
    from maskid.io.images import load_image
    from maskid.networks.embedder import Embedder

    det, sp = fit_alignment.dlib_models()
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    ours, emb = MtcnnDetector(), Embedder("dlib-resnet-v1")
    cos = []
    for p in sample:
        img = fit_alignment.pad50(load_image(p))
        rects = det(img, 1)
        if not rects:
            continue  # HOG misses some unmasked M2FRED crops: no reference for those
        shape = sp(img, max(rects, key=lambda r: r.area()))
        ref = np.asarray(rec.compute_face_descriptor(dlib.get_face_chip(img, shape, 150, 0.25)))
        pts = np.array([[q.x, q.y] for q in shape.parts()], float)
        lm = fit_alignment.ours_near(ours, img, pts)
        assert lm is not None, p
        v = emb.embed_chips(extract_chip(img, chip_transform(lm))[None])[0]
        cos.append(float(v @ ref / np.linalg.norm(v) / np.linalg.norm(ref)))
    assert len(cos) >= 10
    assert np.mean(cos) >= 0.98, cos
    assert min(cos) >= 0.95, cos


def test_template_reproduced(sample: list[Path]) -> None:
    res = fit_alignment.fit_template(sample[:12])
    err = np.abs(np.asarray(res["template"]) - TEMPLATE).max(axis=1)
    # 12 faces: the eyes agree closely; nose/mouth move with pose (spread ~7 chip px per face).
    assert err[:2].max() < 0.02 and err[2:].max() < 0.07, err
