"""Load any common image file as RGB uint8, or fail with one clear `ImageError` line."""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskid.errors import ImageError

MAX_PIXELS = 100_000_000  # 100 MP: larger files are refused as possible decompression bombs
# File names taken as photos when scanning folders (datasets, folder video sources).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})


def load_image(source: str | os.PathLike[str] | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP/... into an RGB uint8 H x W x 3 array.

    Applies the EXIF orientation; converts greyscale, palette, CMYK and 16-bit images to 8-bit
    RGB; composites transparency over white. Raises `ImageError` for a missing file, a
    directory, an empty, truncated or non-image file, or one over `max_pixels`.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        name = "<bytes>"
    else:
        path = Path(source)
        name = str(path)
        if not path.exists():
            raise ImageError(f"{name}: no such file")
        if path.is_dir():
            raise ImageError(f"{name}: is a directory, not an image")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"{name}: cannot read ({e.strerror or e})") from e
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns, then errors, over MAX_IMAGE_PIXELS; we check the size ourselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels, over the "
                    f"{max_pixels / 1e6:.0f} MP limit (refused as a possible decompression bomb)"
                )
            img.load()  # ImageFile.LOAD_TRUNCATED_IMAGES stays False: truncation raises
            return _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own hard limit, hit inside open()
        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(m.group(1)) / 1e6:.0f} megapixels, " if m else ""
        raise ImageError(
            f"{name}: {size}over the {max_pixels / 1e6:.0f} MP limit "
            "(refused as a possible decompression bomb)"
        ) from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image (or a format Pillow cannot read)") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise ImageError(f"{name}: truncated or corrupt image ({msg})") from e
        raise ImageError(f"{name}: cannot decode image ({msg})") from e


def _to_rgb(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        a8 = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a8[:, :, None], 3, axis=2))
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        top = 1.0 if a.max() <= 1.0 else 255.0
        a8 = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(a8[:, :, None], 3, axis=2))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
