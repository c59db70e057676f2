"""Face-chip preprocessing: warp N faces out of one image into a float32 NCHW batch.

The work is done by the C++ core (`maskid._core.warp_batch`): one pass per face that samples
exactly like dlib's `extract_image_chip` (so descriptors match dlib's), swaps BGR to RGB,
normalises and lays the result out as NCHW, on all cores with the GIL released.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

import maskid._core as _core

CHIP_SIZE = 150


def warp_batch(
    image: np.ndarray,
    transforms: np.ndarray | Sequence[Any],
    size: int = CHIP_SIZE,
    bgr: bool = False,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    scale: float = 1.0,
    out: np.ndarray | None = None,
    threads: int = 0,
    bgr_out: bool = False,
) -> np.ndarray:
    """Cut face chips out of `image` and return them as float32 ``(N, 3, size, size)`` planes,
    RGB (BGR with `bgr_out`: the channel order the model's contract states).

    :param image: uint8 ``(H, W, 3)`` array, any strides (slices and channel-reversed views are
        read in place). Other dtypes raise TypeError: convert explicitly.
    :param transforms: float64 ``(N, 2, 3)`` (or one ``(2, 3)``) affine matrices, each mapping chip
        pixel ``(col, row, 1)`` to image ``(x, y)`` (as ``Face.chip_transform``). Lists are
        converted; arrays of another dtype raise TypeError.
    :param bgr: the image is in OpenCV's BGR order.
    :param bgr_out: write the planes in BGR order (e.g. OMZ models) instead of RGB.
    :param mean: per output channel, subtracted before scaling; ``out = (v - mean) * scale``. The
        maskid ONNX embedders normalise inside the graph, so the defaults (0, 1) are usual.
    :param out: a float32 C-contiguous ``(N, 3, size, size)`` array to fill (e.g. a pinned
        engine input buffer); a new array is returned when None.
    :param threads: worker threads, 0 for all cores.
    """
    if not isinstance(transforms, np.ndarray):
        transforms = np.asarray(transforms, dtype=np.float64)
    m = tuple(float(v) for v in mean)
    if len(m) != 3:
        raise ValueError(f"mean must have 3 values (R, G, B), got {len(m)}")
    return _core.warp_batch(image, transforms, size, bgr, m, float(scale), out, threads, bgr_out)


def reference_warp(
    image: np.ndarray,
    transforms: np.ndarray,
    size: int = CHIP_SIZE,
    bgr: bool = False,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    scale: float = 1.0,
    bgr_out: bool = False,
) -> np.ndarray:
    """The exact semantics of `warp_batch` in plain NumPy (slow; for checks and benchmarks).

    ``(x, y) = M @ (col, row, 1)`` in double; outside ``[0, W-1) x [0, H-1)`` the pixel is 0;
    inside, bilinear in double, truncated to uint8, then ``(v - mean) * scale`` in float32.
    """
    img = np.asarray(image)[..., ::-1] if bgr != bgr_out else np.asarray(image)
    h, w = img.shape[:2]
    src = img.astype(np.float64)
    cols, rows = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    ts = np.asarray(transforms, np.float64).reshape(-1, 2, 3)
    out = np.zeros((len(ts), 3, size, size), np.float32)
    for i, m in enumerate(ts):
        x = m[0, 0] * cols + m[0, 1] * rows + m[0, 2]
        y = m[1, 0] * cols + m[1, 1] * rows + m[1, 2]
        with np.errstate(invalid="ignore"):
            left, top = np.floor(x), np.floor(y)
            inside = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
        li = np.where(inside, left, 0).astype(np.int64)
        ti = np.where(inside, top, 0).astype(np.int64)
        tx = np.where(inside, x - left, 0.0)[..., None]
        ty = np.where(inside, y - top, 0.0)[..., None]
        li1, ti1 = np.minimum(li + 1, w - 1), np.minimum(ti + 1, h - 1)
        v = (1 - ty) * ((1 - tx) * src[ti, li] + tx * src[ti, li1]) + ty * (
            (1 - tx) * src[ti1, li] + tx * src[ti1, li1]
        )
        v8 = np.clip(v, 0, 255).astype(np.uint8)
        v8[~inside] = 0
        chip = (v8.astype(np.float32) - np.asarray(mean, np.float32)) * np.float32(scale)
        out[i] = chip.transpose(2, 0, 1)
    return out


def _cuda_device_count() -> int:
    count = getattr(_core, "cuda_device_count", None)
    if count is None:
        return 0
    try:
        return int(count())
    except RuntimeError:  # no driver, or a driver older than the runtime
        return 0


def backends() -> dict[str, Any]:
    """What this installation can use, e.g. ``{"cpu": True, "cuda_kernel": False, ...}``.

    Keys: ``cpu`` (the C++ core), ``cuda_kernel`` (the CUDA preprocessing kernel was compiled),
    ``cuda_archs``, ``cuda_devices`` (GPUs visible now), ``tensorrt_executor`` (the C++
    TensorRT executor was compiled), ``tensorrt_python`` (the `tensorrt` module imports),
    ``onnxruntime_providers``, ``compiler``.
    """
    info = _core.build_info()
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:  # pragma: no cover - a dependency, but keep the report working
        providers = []
    try:
        import tensorrt  # noqa: F401

        trt_python = True
    except ImportError:
        trt_python = False
    return {
        "cpu": True,
        "cuda_kernel": bool(info["cuda"]),
        "cuda_archs": str(info.get("cuda_archs", "")),
        "cuda_devices": _cuda_device_count(),
        "tensorrt_executor": bool(info["tensorrt"]),
        "tensorrt_python": trt_python,
        "onnxruntime_providers": providers,
        "compiler": str(info["compiler"]),
        "nvcc_on_path": shutil.which("nvcc") is not None
        or os.path.exists("/usr/local/cuda/bin/nvcc"),
    }


__all__ = ["CHIP_SIZE", "backends", "reference_warp", "warp_batch"]
