"""maskid.io.images.load_image on real and deliberately broken files (made in tmp_path)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskid.errors import ImageError
from maskid.io.images import load_image


@pytest.fixture(scope="module")
def face_path(lfw10: Path) -> Path:
    return sorted(lfw10.glob("*/*.jpg"))[0]


@pytest.fixture(scope="module")
def face(face_path: Path) -> np.ndarray:
    return load_image(face_path)


def test_jpeg_and_bytes(face_path: Path, face: np.ndarray) -> None:
    assert face.dtype == np.uint8 and face.shape == (250, 250, 3)
    assert np.array_equal(load_image(face_path.read_bytes()), face)


def test_exif_orientation(tmp_path: Path, face: np.ndarray) -> None:
    tall = face[:, :200]  # 250 x 200, so a rotation shows in the shape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    Image.fromarray(tall).save(p, exif=exif.tobytes(), quality=95)
    out = load_image(p)
    assert out.shape == (200, 250, 3)
    expected = np.rot90(tall, k=-1)  # clockwise
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 6


def test_greyscale_rgba_palette_16bit_webp_bmp(tmp_path: Path, face: np.ndarray) -> None:
    grey = Image.fromarray(face).convert("L")
    grey.save(tmp_path / "g.png")
    g = load_image(tmp_path / "g.png")
    assert g.shape == (250, 250, 3) and np.array_equal(g[..., 0], g[..., 2])

    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    rgba[:50, :50, 3] = 0  # transparent corner -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = load_image(tmp_path / "a.png")
    assert a.shape == (250, 250, 3)
    assert np.all(a[:50, :50] == 255) and np.array_equal(a[100:, 100:], face[100:, 100:])

    Image.fromarray(face).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    assert np.abs(load_image(tmp_path / "p.png").astype(int) - face).mean() < 8

    g16 = np.asarray(grey, dtype=np.uint16) * 257
    Image.fromarray(g16).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im16:
        assert im16.mode.startswith("I")
    out16 = load_image(tmp_path / "g16.png")
    assert out16.dtype == np.uint8
    assert np.abs(out16[..., 0].astype(int) - np.asarray(grey)).max() <= 1

    Image.fromarray(face).save(tmp_path / "f.webp", quality=90)
    assert np.abs(load_image(tmp_path / "f.webp").astype(int) - face).mean() < 8
    Image.fromarray(face).save(tmp_path / "f.bmp")
    assert np.array_equal(load_image(tmp_path / "f.bmp"), face)


def _one_line(e: pytest.ExceptionInfo[ImageError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_errors(tmp_path: Path, face_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file") as e:
        load_image(tmp_path / "missing.jpg")
    _one_line(e)
    with pytest.raises(ImageError, match="directory") as e:
        load_image(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty") as e:
        load_image(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("hello, not a picture\n")
    with pytest.raises(ImageError, match="not an image") as e:
        load_image(tmp_path / "text.jpg")
    _one_line(e)
    data = face_path.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as e:
        load_image(tmp_path / "cut.jpg")
    _one_line(e)


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(_png_header(50_000, 50_000))
    with pytest.raises(ImageError, match="decompression bomb") as e:
        load_image(tmp_path / "bomb.png")
    assert "2500 megapixels" in _one_line(e)
