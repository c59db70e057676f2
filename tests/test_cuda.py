"""The CUDA preprocessing kernel: built wherever nvcc is, equal to the CPU core on a GPU."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

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


def test_gpu_pipeline_sources_compile_without_the_tensorrt_sdk() -> None:
    """The device pipeline (CUDA warp -> TensorRT input) and its binding include no TensorRT
    header, so they compile wherever the CUDA headers are, with the build's warnings-as-errors:
    a GPU machine is not the first to see them."""
    import subprocess
    import sysconfig

    import pybind11

    cuda_include = "/usr/local/cuda/include"
    if not os.path.exists(os.path.join(cuda_include, "cuda_runtime.h")):
        pytest.skip("no CUDA headers on this machine")
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    root = Path(__file__).resolve().parents[1]
    for source in ("cpp/src/device_pipeline.cpp", "cpp/bindings/bind_trt.cpp"):
        cmd = [compiler, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
        cmd += ["-DMASKID_WITH_CUDA", "-DMASKID_WITH_TENSORRT", f"-I{root / 'cpp/include'}"]
        cmd += [f"-I{cuda_include}", f"-I{sysconfig.get_paths()['include']}"]
        cmd += [f"-I{pybind11.get_include()}", str(root / source)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{source}:\n{done.stderr[-3000:]}"


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
