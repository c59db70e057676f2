"""Synthetic masks on real LFW faces; dlib's 68-point predictor is the landmark reference."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from maskid.pipeline.masks import (
    anchors_from_68,
    apply_mask,
    available_styles,
    cover_anchors,
    face_anchors,
    fit_anchor_regression,
    head_yaw,
    points5_from_68,
)

STYLES = available_styles()


def _load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path))
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def lfw_landmarks(lfw10: Path) -> list[tuple[str, Path, np.ndarray]]:
    """(identity, path, dlib 68 points) for the first five photos of every lfw10 identity."""
    dlib = pytest.importorskip("dlib", reason="dlib (dlib-bin) is the landmark reference")
    face_recognition_models = pytest.importorskip("face_recognition_models")

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    found = []
    for person in sorted(p for p in lfw10.iterdir() if p.is_dir()):
        for path in sorted(person.glob("*.jpg"))[:5]:
            img = _load_rgb(path)
            rects = detector(img, 0)
            if len(rects) == 0:
                continue
            rect = min(rects, key=lambda r: abs(r.center().x - 125) + abs(r.center().y - 125))
            shape = predictor(img, rect)
            found.append((person.name, path, np.array([(q.x, q.y) for q in shape.parts()], float)))
    if len(found) < 30:
        pytest.skip("dlib found too few lfw10 faces")
    return found


@pytest.fixture(scope="module")
def faces(lfw_landmarks: list[tuple[str, Path, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Four faces (image, five landmarks) from different identities."""
    picked, seen = [], set()
    for name, path, p68 in lfw_landmarks:
        if name not in seen:
            seen.add(name)
            picked.append((_load_rgb(path), points5_from_68(p68)))
    return picked[:4]


def _at(alpha: np.ndarray, xy: np.ndarray) -> float:
    x, y = np.round(xy).astype(int)
    return float(alpha[y, x])


def test_styles() -> None:
    assert len(STYLES) == len(set(STYLES)) >= 8
    assert {"surgical", "n95", "cloth", "poly_surgical", "poly_cloth"} <= set(STYLES)


@pytest.mark.parametrize("style", STYLES)
def test_mask_covers_nose_and_mouth_not_eyes(
    faces: list[tuple[np.ndarray, np.ndarray]], style: str
) -> None:
    for i, (img, l5) in enumerate(faces):
        out, alpha = apply_mask(img, l5, np.random.default_rng(i), style, return_alpha=True)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert alpha.shape == img.shape[:2] and alpha.dtype == np.float32
        assert alpha.min() >= 0.0 and alpha.max() <= 1.0
        mouth_centre = (l5[3] + l5[4]) / 2
        below_nose = (l5[2] + mouth_centre) / 2
        for point in (l5[3], l5[4], below_nose, mouth_centre):
            assert _at(alpha, point) > 0.5, (style, i, point)
        for eye in l5[:2]:
            assert _at(alpha, eye) < 0.05, (style, i)
        x, y = np.round(mouth_centre).astype(int)
        patch = (slice(y - 3, y + 4), slice(x - 3, x + 4))
        assert np.abs(out[patch].astype(int) - img[patch].astype(int)).mean() > 4
        # away from the face nothing changes
        assert np.array_equal(out[:10, :10], img[:10, :10])
        assert float(alpha[:10, :10].max()) == 0.0


def test_deterministic_per_seed(faces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    img, l5 = faces[0]
    first = [apply_mask(img, l5, np.random.default_rng(seed), jitter=0.05) for seed in range(6)]
    again = [apply_mask(img, l5, np.random.default_rng(seed), jitter=0.05) for seed in range(6)]
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)
    assert len({a.tobytes() for a in first}) == len(first)


def test_input_not_modified(faces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    img, l5 = faces[1]
    img_copy, l5_copy = img.copy(), l5.copy()
    for style in STYLES:
        apply_mask(img, l5, np.random.default_rng(0), style, jitter=0.1)
    assert np.array_equal(img, img_copy)
    assert np.array_equal(l5, l5_copy)


def test_jitter_moves_the_mask(faces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    img, l5 = faces[2]
    _, still = apply_mask(img, l5, np.random.default_rng(3), "surgical", return_alpha=True)
    _, moved = apply_mask(
        img, l5, np.random.default_rng(3), "surgical", jitter=0.1, return_alpha=True
    )
    assert np.abs(still - moved).mean() > 1e-3
    # still on the face: most of the exact mask is covered
    assert (still * moved).sum() > 0.6 * still.sum()


def test_small_chip_and_face_at_the_border(faces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    img, l5 = faces[0]
    chip = cv2.resize(img, (112, 112), interpolation=cv2.INTER_AREA)
    out, alpha = apply_mask(
        chip, l5 * 112 / img.shape[1], np.random.default_rng(0), "poly_n95", return_alpha=True
    )
    assert out.shape == chip.shape and alpha.max() > 0.9
    shifted = l5 + np.array([0, img.shape[0] * 0.45])  # mask mostly below the bottom edge
    out = apply_mask(img, shifted, np.random.default_rng(0), "cloth")
    assert out.shape == img.shape
    gone = l5 + np.array([10 * img.shape[1], 0])  # face outside the image: nothing to draw
    assert np.array_equal(apply_mask(img, gone, np.random.default_rng(0)), img)


@pytest.mark.parametrize(
    "image, landmarks, kwargs",
    [
        (np.zeros((50, 50), np.uint8), np.zeros((5, 2)), {}),
        (np.zeros((50, 50, 4), np.uint8), np.zeros((5, 2)), {}),
        (np.zeros((50, 50, 3), np.float32), np.zeros((5, 2)), {}),
        (np.zeros((50, 50, 3), np.uint8), np.zeros((4, 2)), {}),
        (np.zeros((50, 50, 3), np.uint8), np.zeros((5, 3)), {}),
        (np.zeros((50, 50, 3), np.uint8), np.full((5, 2), np.nan), {}),
        (np.zeros((50, 50, 3), np.uint8), np.zeros((5, 2)), {}),  # eyes coincide
        (np.zeros((50, 50, 3), np.uint8), None, {"style": "gas"}),
        (np.zeros((50, 50, 3), np.uint8), None, {"jitter": -0.1}),
    ],
)
def test_bad_input_raises(image: np.ndarray, landmarks: np.ndarray | None, kwargs: dict) -> None:
    if landmarks is None:
        landmarks = np.array([[15, 20], [35, 20], [25, 30], [18, 38], [32, 38]], float)
    with pytest.raises(ValueError):
        apply_mask(image, landmarks, np.random.default_rng(0), **kwargs)


def test_mirrored_face_gives_mirrored_anchors(
    lfw_landmarks: list[tuple[str, Path, np.ndarray]],
) -> None:
    for _, _, p68 in lfw_landmarks[::7]:
        l5 = points5_from_68(p68)
        mirrored = l5[[1, 0, 2, 4, 3]] * (-1, 1) + (249, 0)
        iod = np.linalg.norm(l5[1] - l5[0])
        expect = face_anchors(l5)[[2, 1, 0, 5, 4, 3]] * (-1, 1) + (249, 0)
        assert np.abs(face_anchors(mirrored) - expect).max() < 0.05 * iod
        assert head_yaw(mirrored) == pytest.approx(-head_yaw(l5), abs=1e-9)


def test_placement_regression_generalises(
    lfw_landmarks: list[tuple[str, Path, np.ndarray]],
) -> None:
    """Fit on six lfw10 identities, measure on the other four (errors in inter-ocular distances)."""
    names = sorted({n for n, _, _ in lfw_landmarks})
    train = set(names[::2][:3] + names[1::2][:3])
    p5 = np.stack([points5_from_68(p) for _, _, p in lfw_landmarks])
    anchors = np.stack([anchors_from_68(p) for _, _, p in lfw_landmarks])
    is_train = np.array([n in train for n, _, _ in lfw_landmarks])
    assert 10 < is_train.sum() < len(is_train) - 10
    coef = fit_anchor_regression(p5[is_train], anchors[is_train])

    def errors(c: np.ndarray | None, sel: np.ndarray) -> np.ndarray:
        pred = np.stack([face_anchors(p, coef=c) for p in p5[sel]])
        iod = np.linalg.norm(p5[sel, 1] - p5[sel, 0], axis=1)
        return np.linalg.norm(pred - anchors[sel], axis=2) / iod[:, None]

    held_out = errors(coef, ~is_train)
    assert held_out.mean() < 0.12
    assert np.percentile(held_out, 95) < 0.3
    assert held_out[:, 1].mean() < 0.05  # the nose bridge is pinned by the eyes and nose
    shipped = errors(None, np.ones(len(p5), bool))
    assert shipped.mean() < 0.1


def test_cover_anchors_raise_and_widen() -> None:
    l5 = np.array([[40.0, 50.0], [80.0, 52.0], [61.0, 72.0], [45.0, 90.0], [77.0, 91.0]])
    base = face_anchors(l5)
    assert np.array_equal(cover_anchors(base, l5), base)
    nose_drop = 20.0  # nose tip below the eye midpoint, perpendicular to the eye axis (~)
    up = cover_anchors(base, l5, raise_top=0.3)
    shift = (base - up) @ np.array([0.05, 1.0]) / np.hypot(0.05, 1.0)  # along the face's "up"
    assert np.allclose(shift[:3], 0.3 * nose_drop, rtol=0.05)  # top anchors a, b, c move up
    assert np.allclose(up[3:], base[3:])  # jaw and chin stay
    wide = cover_anchors(base, l5, widen=0.1)
    span = lambda a: np.linalg.norm(a[2] - a[0])  # noqa: E731
    assert span(wide) == pytest.approx(1.1 * span(base), rel=1e-3)
    assert np.allclose(wide[[1, 4]], base[[1, 4]])  # the centre line stays
    for bad in ({"raise_top": -0.1}, {"widen": 1.5}, {"raise_top": float("nan")}):
        with pytest.raises(ValueError):
            cover_anchors(base, l5, **bad)


def _top_edge(alpha: np.ndarray, l5: np.ndarray) -> float:
    """Where the mask starts on the segment eye midpoint -> nose tip (0 = eyes, 1 = nose tip)."""
    mid = (l5[0] + l5[1]) / 2
    ts = np.linspace(0, 1, 101)
    covered = [t for t in ts if _at(alpha, mid + t * (l5[2] - mid)) > 0.5]
    return float(min(covered, default=1.0))


def test_raised_mask_covers_more_of_the_nose_not_the_eyes(
    faces: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    for i, (img, l5) in enumerate(faces):
        for style in ("surgical", "poly_cloth"):
            _, fitted = apply_mask(img, l5, np.random.default_rng(i), style, return_alpha=True)
            _, high = apply_mask(
                img, l5, np.random.default_rng(i), style, raise_top=0.15, widen=0.1,
                return_alpha=True,
            )  # fmt: skip
            assert high.sum() > 1.1 * fitted.sum(), (style, i)
            # the mask's top edge on the line from the eye midpoint to the nose tip moves up
            assert _top_edge(high, l5) < _top_edge(fitted, l5) - 0.07, (style, i)
            for eye in l5[:2]:
                assert _at(high, eye) < 0.05, (style, i)
