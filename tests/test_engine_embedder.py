"""A TensorRT engine stands in for the ONNX embedder it was built from (engines/build_engine.py
writes the model's contract into the engine's sidecar); where TensorRT is missing, a clear
ModelError. The build itself runs only where TensorRT and a GPU are."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from maskid import _core
from maskid.embedder import Embedder
from maskid.errors import ModelError
from maskid.models import DEFAULT_MODEL, model_path, sha256_file

ROOT = Path(__file__).resolve().parents[1]


def build_engine_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_engine", ROOT / "engines/build_engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tensorrt_usable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return hasattr(_core, "TrtExecutor")
    return True


def test_sidecar_carries_the_model_contract() -> None:
    onnx_model = model_path(DEFAULT_MODEL)
    contract = build_engine_module().onnx_contract(onnx_model)
    reference = Embedder(DEFAULT_MODEL)
    assert contract["output_dim"] == reference.dim
    assert contract["onnx_metadata"].get("model_name", onnx_model.stem) == reference.name


def test_contract_of_a_broken_model_is_a_model_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    with pytest.raises(ModelError):
        build_engine_module().onnx_contract(junk)


def test_engine_without_sidecar_or_tensorrt_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        Embedder(tmp_path / "missing.engine")
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="sidecar"):
        Embedder(plan)
    if _tensorrt_usable():
        return  # the rest checks the message where TensorRT is missing
    onnx_model = model_path(DEFAULT_MODEL)
    sidecar = {
        "model": onnx_model.name,
        "model_sha256": sha256_file(onnx_model),
        **build_engine_module().onnx_contract(onnx_model),
    }
    plan.with_suffix(".engine.json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelError, match="TensorRT"):
        Embedder(plan)


@pytest.mark.gpu
def test_engine_embeds_like_its_onnx_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _tensorrt_usable():
        pytest.skip("TensorRT is not installed here (no GPU machine)")
    if getattr(_core, "cuda_device_count", lambda: 0)() == 0:
        pytest.skip("no CUDA device visible")
    monkeypatch.setenv("MASKID_CACHE", str(tmp_path))
    tool = build_engine_module()
    onnx_model = model_path(DEFAULT_MODEL)
    args = tool.argparse.Namespace(
        model=str(onnx_model), precision="fp16", max_batch=8, calib=None, force=True
    )
    engine = Embedder(tool.build(args))
    reference = Embedder(DEFAULT_MODEL)
    assert engine.model_id == reference.model_id and engine.threshold == reference.threshold
    chips = np.random.default_rng(0).integers(0, 256, (5, 150, 150, 3), dtype=np.uint8)
    a, b = engine.embed_chips(chips), reference.embed_chips(chips)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999
