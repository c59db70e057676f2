"""Face-free images for counting false detections, generated the same on every run (seeded).

Five kinds, cycled: value-noise textures; random shapes on them (ellipses, bars, polygons);
real photos (train/lfw) cut into tiles of 1/8 of their side, shuffled and rotated (skin, hair
and clothes with no face left in them); collages of CelebA's bands below the chin (rows 184-200
of 200: necks, collars, clothes); and MaskTheFace's mask templates alone on a texture or shapes
(a mask with no face behind it: the hard negative of a masked-face product). Nothing is
downloaded; the photos and templates come from ../shared/data.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

KINDS = ("texture", "shapes", "scrambled", "bodies", "masks")


def face_free(data: Path, n: int, size: tuple[int, int], seed: int) -> list[tuple[str, np.ndarray]]:
    """`n` RGB images of `size` (w, h) as (kind, image), cycling through KINDS."""
    photos = sorted((data / "train" / "lfw").glob("*/*.jpg"))[::7]
    celeba = sorted((data / "train" / "celeba").glob("*/*.jpg"))[::5]
    masks = sorted((data / "masks" / "templates").glob("*.png"))
    w, h = size
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, w, h, i])
        kind = KINDS[i % len(KINDS)]
        if kind == "texture":
            img = _noise(rng, h, w)
        elif kind == "shapes":
            img = _shapes(rng, h, w)
        elif kind == "scrambled":
            img = _scrambled(rng, h, w, photos)
        elif kind == "bodies":
            img = _bodies(rng, h, w, celeba)
        else:
            img = _masks(rng, h, w, masks)
        out.append((kind, img))
    return out


def _load(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))
    if img is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w, 3), np.float32)
    for octave in range(1, 7):
        s = 2**octave
        small = rng.random((max(2, h * s // 256), max(2, w * s // 256), 3)).astype(np.float32)
        out += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) / s
    out -= out.min()
    out /= max(float(out.max()), 1e-6)
    tint = rng.random(3) * 0.6 + 0.4
    return np.clip(out * tint * 255, 0, 255).astype(np.uint8)


def _shapes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    img = _noise(rng, h, w) // 2 + rng.integers(0, 128, 3).astype(np.uint8)
    for _ in range(int(rng.integers(5, 30))):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        k, s = int(rng.integers(0, 4)), int(rng.integers(4, max(5, min(h, w) // 3)))
        if k == 0:
            cv2.rectangle(img, (x, y), (x + s, y + int(rng.integers(4, s + 5))), c, -1)
        elif k == 1:
            axes = (s, int(rng.integers(2, s + 3)))
            cv2.ellipse(img, (x, y), axes, float(rng.integers(0, 180)), 0, 360, c, -1)
        elif k == 2:
            end = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, (x, y), end, c, int(rng.integers(1, 8)))
        else:
            pts = rng.integers(-s, s, (int(rng.integers(3, 7)), 2)) + np.array([x, y])
            cv2.fillPoly(img, [pts.astype(np.int32)], c)
    return img


def _scrambled(rng: np.random.Generator, h: int, w: int, photos: list[Path]) -> np.ndarray:
    tiles = []
    for p in rng.choice(np.array(photos, dtype=object), 4, replace=False):
        im = _load(p)
        t = im.shape[0] // 8
        tiles += [im[i : i + t, j : j + t] for i in range(0, 8 * t, t) for j in range(0, 8 * t, t)]
    t = int(rng.integers(16, 48)) if min(h, w) > 200 else int(rng.integers(12, 24))
    img = np.zeros((h, w, 3), np.uint8)
    for i in range(0, h, t):
        for j in range(0, w, t):
            tile = cv2.resize(tiles[int(rng.integers(len(tiles)))], (t, t))
            tile = np.rot90(tile, int(rng.integers(4)))
            img[i : i + t, j : j + t] = tile[: h - i, : w - j]
    return img


def _bodies(rng: np.random.Generator, h: int, w: int, celeba: list[Path]) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    bh = int(rng.integers(20, 60))
    for i in range(0, h, bh):
        x = 0
        while x < w:
            band = _load(celeba[int(rng.integers(len(celeba)))])[184:200]
            bw = int(band.shape[1] * bh / band.shape[0])
            band = cv2.resize(band, (bw, bh))
            img[i : i + bh, x : x + bw] = band[: h - i, : w - x]
            x += bw
    return img


def _masks(rng: np.random.Generator, h: int, w: int, masks: list[Path]) -> np.ndarray:
    img = _noise(rng, h, w) if rng.random() < 0.5 else _shapes(rng, h, w)
    for _ in range(int(rng.integers(1, 4)) if min(h, w) > 200 else 1):
        path = masks[int(rng.integers(len(masks)))]
        m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if m is None:
            raise FileNotFoundError(path)
        mw = int(rng.uniform(0.25, 0.8) * min(h, w))
        mh = int(m.shape[0] * mw / m.shape[1])
        m = cv2.resize(m, (mw, mh), interpolation=cv2.INTER_AREA)
        x, y = int(rng.integers(0, max(1, w - mw))), int(rng.integers(0, max(1, h - mh)))
        roi = img[y : y + mh, x : x + mw]
        mm = m[: roi.shape[0], : roi.shape[1]]
        a = mm[:, :, 3:4] / 255.0
        roi[:] = (roi * (1 - a) + mm[:, :, 2::-1] * a).astype(np.uint8)
    return img
