"""The CUDA preprocessing kernel: built wherever nvcc is, equal to the CPU core on a GPU."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from maskid import _core
from maskid.alignment.warp import backends, warp_batch


def _nvcc_present() -> bool:
    return shutil.which("nvcc") is not None or os.path.exists("/usr/local/cuda/bin/nvcc")


def test_cuda_kernel_compiled_where_nvcc_exists() -> None:
    if os.environ.get("MASKID_CUDA", "AUTO").upper() == "OFF":
        pytest.skip("MASKID_CUDA=OFF")
    if not _nvcc_present():
        pytest.skip("no nvcc on this machine")
    info = _core.build_info()
    assert info["cuda"] is True, "nvcc is present but the CUDA kernel was not compiled"
    assert hasattr(_core, "warp_batch_cuda")
    assert "87" in info["cuda_archs"]  # Jetson Orin


def test_backends_report_is_consistent() -> None:
    b = backends()
    assert b["cpu"] is True
    assert b["cuda_kernel"] == hasattr(_core, "warp_batch_cuda")
    assert b["tensorrt_executor"] == hasattr(_core, "TrtExecutor")
    assert "CPUExecutionProvider" in b["onnxruntime_providers"]
    assert b["cuda_devices"] >= 0


def _gpu_or_skip() -> None:
    if not hasattr(_core, "warp_batch_cuda"):
        pytest.skip("the CUDA kernel was not compiled (no nvcc, or MASKID_CUDA=OFF)")
    if _core.cuda_device_count() == 0:
        pytest.skip("no CUDA device visible (no GPU or no driver)")


@pytest.mark.gpu
@pytest.mark.parametrize("bgr", [False, True])
def test_cuda_matches_cpu(bgr: bool) -> None:
    _gpu_or_skip()
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    n = 33
    angles = rng.uniform(-0.6, 0.6, n)
    scales = rng.uniform(0.5, 2.0, n)
    t = np.zeros((n, 2, 3))
    t[:, 0, 0] = scales * np.cos(angles)
    t[:, 0, 1] = -scales * np.sin(angles)
    t[:, 1, 0] = scales * np.sin(angles)
    t[:, 1, 1] = scales * np.cos(angles)
    t[:, 0, 2] = rng.uniform(-50, 300, n)
    t[:, 1, 2] = rng.uniform(-50, 220, n)
    mean, scale = (120.0, 110.0, 100.0), 1 / 64
    cpu = warp_batch(image, t, bgr=bgr, mean=mean, scale=scale)
    gpu = _core.warp_batch_cuda(image, t, 150, bgr, mean, scale, None)
    assert np.abs(cpu - gpu).max() <= 1e-5
    # Strided views are packed before the upload.
    view = image[::2, ::-1]
    cpu_v = warp_batch(view, t, size=64)
    gpu_v = _core.warp_batch_cuda(view, t, 64, False, (0.0, 0.0, 0.0), 1.0, None)
    assert np.abs(cpu_v - gpu_v).max() <= 1e-5
