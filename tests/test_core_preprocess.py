"""The C++ preprocessing core against a NumPy reference of dlib's chip sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskid.alignment.warp import warp_batch


def reference_warp(
    image: np.ndarray,
    transforms: np.ndarray,
    size: int = 150,
    bgr: bool = False,
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """The exact semantics, written the obvious way (double precision, no fused ops)."""
    img = np.asarray(image)
    if bgr:
        img = img[..., ::-1]
    h, w = img.shape[:2]
    src = img.astype(np.float64)
    cols, rows = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    out = np.zeros((len(transforms), 3, size, size), np.float32)
    for i, m in enumerate(np.asarray(transforms, np.float64).reshape(-1, 2, 3)):
        x = m[0, 0] * cols + m[0, 1] * rows + m[0, 2]
        y = m[1, 0] * cols + m[1, 1] * rows + m[1, 2]
        with np.errstate(invalid="ignore"):
            left = np.floor(x)
            top = np.floor(y)
            inside = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
        li = np.where(inside, left, 0).astype(np.int64)
        ti = np.where(inside, top, 0).astype(np.int64)
        tx = np.where(inside, x - left, 0.0)[..., None]
        ty = np.where(inside, y - top, 0.0)[..., None]
        li1 = np.minimum(li + 1, w - 1)
        ti1 = np.minimum(ti + 1, h - 1)
        v = (1 - ty) * ((1 - tx) * src[ti, li] + tx * src[ti, li1]) + ty * (
            (1 - tx) * src[ti1, li] + tx * src[ti1, li1]
        )
        v8 = np.clip(v, 0, 255).astype(np.uint8)
        v8[~inside] = 0
        chip = (v8.astype(np.float32) - np.asarray(mean, np.float32)) * np.float32(scale)
        out[i] = chip.transpose(2, 0, 1)
    return out


def face_transform(rng: np.random.Generator, h: int, w: int, size: int) -> np.ndarray:
    """A similarity transform chip -> image with random rotation, scale and centre."""
    angle = rng.uniform(-np.pi, np.pi)
    s = rng.uniform(0.3, 2.5)
    cx, cy = rng.uniform(-0.2 * w, 1.2 * w), rng.uniform(-0.2 * h, 1.2 * h)
    c, si = s * np.cos(angle), s * np.sin(angle)
    half = size / 2
    return np.array([[c, -si, cx - c * half + si * half], [si, c, cy - si * half - c * half]])


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(97, 131, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def transforms(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    ts = [face_transform(rng, *image.shape[:2], 40) for _ in range(12)]
    ts.append(np.array([[1.0, 0, 0.25], [0, 1.0, 0.75]]))  # mostly inside, sub-pixel shift
    ts.append(np.array([[1.0, 0, 100.5], [0, 1.0, 70.5]]))  # hits the right/bottom border
    ts.append(np.array([[1.0, 0, -5.0], [0, 1.0, -5.0]]))  # hits the left/top border
    return np.stack(ts)


@pytest.mark.parametrize("bgr", [False, True])
def test_matches_reference(image: np.ndarray, transforms: np.ndarray, bgr: bool) -> None:
    got = warp_batch(image, transforms, size=40, bgr=bgr)
    want = reference_warp(image, transforms, size=40, bgr=bgr)
    assert got.shape == (len(transforms), 3, 40, 40)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-5
    assert (got > 0).mean() > 0.2  # not trivially all zeros


def test_bgr_flag_swaps_channels(image: np.ndarray, transforms: np.ndarray) -> None:
    rgb = warp_batch(image, transforms, size=24)
    bgr = warp_batch(np.ascontiguousarray(image[..., ::-1]), transforms, size=24, bgr=True)
    np.testing.assert_array_equal(rgb, bgr)


def test_mean_and_scale(image: np.ndarray, transforms: np.ndarray) -> None:
    mean, scale = (122.8, 116.7, 104.1), 1 / 58.4
    got = warp_batch(image, transforms, size=32, mean=mean, scale=scale)
    want = reference_warp(image, transforms, size=32, mean=mean, scale=scale)
    assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize(
    "view",
    [
        lambda im: im[::2, ::2],  # strided rows and columns
        lambda im: im[..., ::-1],  # negative channel stride
        lambda im: im[::-1, 5:],  # negative row stride, offset start
        lambda im: np.asfortranarray(im),  # column-major
        lambda im: np.transpose(im, (1, 0, 2)),  # swapped axes
    ],
    ids=["slice", "channel-reversed", "row-reversed", "fortran", "transposed"],
)
def test_strided_views_read_in_place(image: np.ndarray, transforms: np.ndarray, view) -> None:
    v = view(image)
    assert not v.flags.c_contiguous
    got = warp_batch(v, transforms, size=30)
    want = warp_batch(np.ascontiguousarray(v), transforms, size=30)
    np.testing.assert_array_equal(got, want)
    assert np.abs(got - reference_warp(v, transforms, size=30)).max() <= 1e-5


def test_strided_transforms(image: np.ndarray, transforms: np.ndarray) -> None:
    fat = np.zeros((len(transforms), 2, 6))
    fat[:, :, ::2] = transforms
    got = warp_batch(image, fat[:, :, ::2], size=20)
    np.testing.assert_array_equal(got, warp_batch(image, transforms, size=20))


def test_single_transform_and_list(image: np.ndarray, transforms: np.ndarray) -> None:
    one = warp_batch(image, transforms[0], size=20)
    assert one.shape == (1, 3, 20, 20)
    np.testing.assert_array_equal(one, warp_batch(image, transforms[0].tolist(), size=20))


def test_out_array_is_filled_and_returned(image: np.ndarray, transforms: np.ndarray) -> None:
    out = np.full((len(transforms), 3, 25, 25), np.nan, np.float32)
    res = warp_batch(image, transforms, size=25, out=out)
    assert res is out or np.shares_memory(res, out)
    np.testing.assert_array_equal(out, warp_batch(image, transforms, size=25))


def test_new_array_owns_its_memory(image: np.ndarray, transforms: np.ndarray) -> None:
    res = warp_batch(image, transforms, size=16)
    assert res.flags.c_contiguous and res.flags.writeable
    assert res.base is not None  # held by the capsule, not copied


def test_zero_faces(image: np.ndarray) -> None:
    res = warp_batch(image, np.zeros((0, 2, 3)), size=16)
    assert res.shape == (0, 3, 16, 16)


def test_default_size_is_150(image: np.ndarray, transforms: np.ndarray) -> None:
    assert warp_batch(image, transforms[:2]).shape == (2, 3, 150, 150)


def test_tiny_image_is_all_outside(transforms: np.ndarray) -> None:
    tiny = np.full((1, 1, 3), 200, np.uint8)
    res = warp_batch(tiny, transforms, size=8)
    assert not res.any()


def test_nan_transform_gives_zeros(image: np.ndarray) -> None:
    res = warp_batch(image, np.full((1, 2, 3), np.nan), size=8)
    assert not res.any()


def test_threads_do_not_change_the_result(image: np.ndarray, transforms: np.ndarray) -> None:
    many = np.concatenate([transforms] * 8)
    one = warp_batch(image, many, size=64, threads=1)
    np.testing.assert_array_equal(one, warp_batch(image, many, size=64, threads=0))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"image": np.zeros((10, 10, 3), np.float32)}, TypeError),
        ({"image": np.zeros((10, 10, 3), np.int8)}, TypeError),
        ({"image": np.zeros((10, 10), np.uint8)}, ValueError),
        ({"image": np.zeros((10, 10, 4), np.uint8)}, ValueError),
        ({"transforms": np.zeros((2, 2, 3), np.float32)}, TypeError),
        ({"transforms": np.zeros((2, 3, 3))}, ValueError),
        ({"size": 0}, ValueError),
        ({"out": np.zeros((2, 3, 20, 20), np.float64)}, TypeError),
        ({"out": np.zeros((3, 3, 20, 20), np.float32)}, ValueError),
        ({"out": np.zeros((2, 3, 20, 40), np.float32)[..., ::2]}, ValueError),
        ({"out": [0.0]}, TypeError),
        ({"mean": (1.0, 2.0)}, ValueError),
    ],
)
def test_bad_arguments_raise(kwargs: dict, error: type[Exception]) -> None:
    args = {
        "image": np.zeros((10, 10, 3), np.uint8),
        "transforms": np.zeros((2, 2, 3)),
        "size": 20,
    }
    args.update(kwargs)
    with pytest.raises(error):
        warp_batch(**args)


def test_read_only_out_raises() -> None:
    out = np.zeros((1, 3, 8, 8), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        warp_batch(np.zeros((10, 10, 3), np.uint8), np.zeros((2, 3)), size=8, out=out)


def test_real_face_chip(lfw10) -> None:
    """A real photo, a realistic face transform: the chip is a mid-grey-ish face, not black."""
    import cv2

    path = sorted(lfw10.rglob("*.jpg"))[0]
    bgr = cv2.imread(str(path))
    assert bgr is not None
    h, w = bgr.shape[:2]
    m = np.array([[0.8, 0.05, w / 2 - 60], [-0.05, 0.8, h / 2 - 60]])
    got = warp_batch(bgr, m, bgr=True)
    want = reference_warp(bgr, m[None], bgr=True)
    assert np.abs(got - want).max() <= 1e-5
    assert 30 < got.mean() < 220


def test_descriptors_through_the_core_equal_the_reference_chips(lfw10: Path) -> None:
    """The recognition path (C++ warp straight into the batch) gives the descriptors of the
    exact NumPy/dlib chip, for a normal face and for an upscaled one (dlib's pyramid path)."""
    import cv2

    from maskid.alignment.dlib_chip import extract_chip
    from maskid.networks.embedder import Embedder
    from maskid.pipeline.recognizer import Recognizer

    emb = Embedder("dlib-resnet-v1")
    rec = Recognizer(None, embedder=emb)
    img = rec.load(lfw10 / "Colin_Powell" / "Colin_Powell_0002.jpg")
    for image in (img, cv2.resize(img, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)):
        found = rec.analyze_in_context(image)
        faces, source = found.faces, found.source
        m = faces[0].chip_transform
        assert m is not None
        via_core = emb.embed_image(source, [m])
        reference = emb.embed_chips(extract_chip(source, m)[None])
        assert np.abs(via_core - reference).max() <= 1e-5
