"""Engine: the ONNX Runtime path on a tiny real ONNX model built here, batching and dispatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from maskid.errors import ModelError
from maskid.networks.tensorrt import Engine, OnnxEngine


def tiny_model(path: Path, batch: int | str = "N", size: int = 8, dim: int = 4) -> Path:
    """x (B, 3, S, S) -> flatten -> matmul W -> tanh -> (B, dim): every pixel matters."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3 * size * size, dim)).astype(np.float32) / 10
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w"], ["y0"]),
        helper.make_node("Tanh", ["y0"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, dim])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx")


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(1).random((11, 3, 8, 8), dtype=np.float32)


def plain_run(model: Path, batch: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": batch})[0]


def test_onnx_matches_plain_session_run(model: Path, batch: np.ndarray) -> None:
    engine = Engine.open(model)
    assert isinstance(engine, OnnxEngine)
    assert engine.backend == "onnxruntime"
    assert engine.input_shape == (3, 8, 8)
    assert engine.batch_max is None
    got = engine.run(batch)
    assert got.shape == (11, 4) and got.dtype == np.float32
    np.testing.assert_allclose(got, plain_run(model, batch), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch_max", [1, 4, 11, 32])
def test_batch_max_splits_without_dropping(model: Path, batch: np.ndarray, batch_max: int) -> None:
    engine = Engine.open(model, batch_max=batch_max)
    assert engine.batch_max == batch_max
    calls: list[int] = []
    inner = engine._run_chunk

    def spy(chunk: np.ndarray) -> np.ndarray:
        calls.append(chunk.shape[0])
        return inner(chunk)

    engine._run_chunk = spy  # type: ignore[method-assign]
    got = engine.run(batch)
    assert sum(calls) == 11 and max(calls) <= batch_max
    np.testing.assert_allclose(got, plain_run(model, batch), rtol=1e-6, atol=1e-6)


def test_fixed_batch_model_pads(tmp_path: Path, batch: np.ndarray) -> None:
    fixed = tiny_model(tmp_path / "fixed.onnx", batch=4)
    engine = Engine.open(fixed)
    assert (engine.batch_min, engine.batch_max) == (4, 4)
    got = engine.run(batch)  # 11 faces = 4 + 4 + 3 (the last chunk zero-padded to 4)
    padded = np.concatenate([batch, np.zeros((1, 3, 8, 8), np.float32)])
    want = np.concatenate([plain_run(fixed, padded[i : i + 4]) for i in (0, 4, 8)])[:11]
    assert got.shape == (11, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_zero_faces(model: Path) -> None:
    assert Engine.open(model).run(np.zeros((0, 3, 8, 8), np.float32)).shape == (0, 4)


def test_non_contiguous_batch(model: Path, batch: np.ndarray) -> None:
    view = np.concatenate([batch, batch], axis=1)[:, ::2]
    assert not view.flags.c_contiguous
    np.testing.assert_allclose(
        Engine.open(model).run(view), plain_run(model, np.ascontiguousarray(view)), atol=1e-6
    )


def test_bad_batches_raise(model: Path) -> None:
    engine = Engine.open(model)
    with pytest.raises(TypeError):
        engine.run(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ValueError):
        engine.run(np.zeros((1, 3, 9, 8), np.float32))
    with pytest.raises(TypeError):
        engine.run([[0.0]])  # type: ignore[arg-type]


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        Engine.open(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError):
        Engine.open(junk)
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown model type"):
        Engine.open(other)
    with pytest.raises(ModelError, match="providers not available"):
        Engine.open(tiny_model(tmp_path / "t.onnx"), providers=["NoSuchExecutionProvider"])


def test_tensorrt_engine_without_tensorrt_is_a_model_error(tmp_path: Path) -> None:
    from maskid import _core

    if hasattr(_core, "TrtExecutor"):
        pytest.skip("this build has the TensorRT executor")
    try:
        import pycuda  # noqa: F401
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt and pycuda are importable here")
    except ImportError:
        pass
    plan = tmp_path / "m.engine"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="TensorRT"):
        Engine.open(plan)
