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
from maskid.errors import ModelError
from maskid.networks.contract import ModelContract
from maskid.networks.embedder import Embedder
from maskid.networks.registry import BUNDLED_DIR, DEFAULT_MODEL, DLIB_MODEL, model_path, sha256_file
from maskid.networks.tensorrt import Engine

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


# --- the pretrained models with their own chip geometry: an engine keeps their contract -------


def _bundled_similarity_models() -> list[str]:
    """Shipped ONNX models whose contract is not dlib's (OMZ, EdgeFace, ...), from their
    metadata: what an engine built from them must carry over in its sidecar."""
    import onnx

    names = []
    for path in sorted(BUNDLED_DIR.glob("*.onnx")):
        meta = {
            p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props
        }
        if ModelContract.from_metadata(meta, path.stem).chip_geometry == "similarity":
            names.append(path.stem)
    return names


SIMILARITY_MODELS = _bundled_similarity_models()


def _engine_sidecar(name: str) -> dict:
    """The sidecar build_engine.py writes for `name`, made by its own functions (everything
    but the TensorRT build: the version and GPU in the key are placeholders), through JSON."""
    import onnx

    tool = build_engine_module()
    onnx_model = model_path(name)
    graph = onnx.load(str(onnx_model), load_external_data=False).graph
    chw = tuple(d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:])
    key = tool.engine_key(onnx_model, "fp16", 8, "no-tensorrt", "no-gpu")
    side = tool.sidecar(key, graph.input[0].name, chw, tool.onnx_contract(onnx_model))
    return json.loads(json.dumps(side))


def test_the_shipped_similarity_models_are_covered() -> None:
    assert {"omz-face-reid-0095", "edgeface-xs", "edgeface-xxs"} <= set(SIMILARITY_MODELS)


@pytest.mark.parametrize("name", SIMILARITY_MODELS)
def test_engine_sidecar_gives_the_onnx_contract(name: str) -> None:
    side = _engine_sidecar(name)
    reference = Embedder(name)
    assert ModelContract.from_metadata(side["onnx_metadata"]) == reference.contract
    assert reference.contract.chip_geometry == "similarity"
    assert side["output_dim"] == reference.dim == reference.contract.descriptor_dim
    assert side["input_shape"] == [3, reference.input_size, reference.input_size]
    assert side["model_sha256"] == sha256_file(model_path(name))


class _ShapeOnlyEngine:
    """Stands in for a TensorRT engine where there is none: its input shape, nothing to run.
    What is checked with it is the sidecar -> contract path, not an engine's output."""

    def __init__(self, chw: tuple[int, int, int]) -> None:
        self.input_shape = chw

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise AssertionError("no TensorRT engine here")


@pytest.mark.parametrize("name", SIMILARITY_MODELS)
def test_embedder_reads_the_contract_from_an_engine_sidecar(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side = _engine_sidecar(name)
    plan = tmp_path / f"{name}.engine"
    plan.write_bytes(b"\0" * 16)
    plan.with_suffix(".engine.json").write_text(json.dumps(side))
    chw = (3, *side["input_shape"][1:])
    monkeypatch.setattr(Engine, "open", staticmethod(lambda *a, **k: _ShapeOnlyEngine(chw)))
    engine, reference = Embedder(plan), Embedder(name)
    assert engine.contract == reference.contract
    assert (engine.name, engine.model_id, engine.dim, engine.input_size) == (
        reference.name,
        reference.model_id,
        reference.dim,
        reference.input_size,
    )
    assert engine.threshold == reference.threshold
    landmarks = np.array(
        [[80.0, 90.0], [130.0, 88.0], [105.0, 120.0], [85.0, 150.0], [128.0, 149.0]]
    )
    np.testing.assert_array_equal(
        engine.chip_transform(landmarks), reference.chip_transform(landmarks)
    )
    image = np.random.default_rng(1).integers(0, 256, (240, 220, 3), dtype=np.uint8)
    m = reference.chip_transform(landmarks)
    np.testing.assert_array_equal(engine.prepare(image, [m]), reference.prepare(image, [m]))


@pytest.mark.parametrize("name", [*SIMILARITY_MODELS, DLIB_MODEL])
def test_int8_calibration_chips_follow_the_contract(name: str, tmp_path: Path) -> None:
    """Calibration chips (image files or uint8 RGB .npy) reach the engine in the model's input
    form, as Embedder.prepare makes it: BGR planes for OMZ, (x - 127.5) / 127.5 for EdgeFace,
    RGB 0..255 for the dlib graphs."""
    import cv2

    tool = build_engine_module()
    reference = Embedder(name)
    s = reference.input_size
    meta = tool.onnx_contract(model_path(name))["onnx_metadata"]
    chips = np.random.default_rng(2).integers(0, 256, (32, s, s, 3), dtype=np.uint8)
    folder = tmp_path / "chips"
    folder.mkdir()
    for i, chip in enumerate(chips):
        cv2.imwrite(str(folder / f"{i:02d}.png"), chip[..., ::-1])  # RGB -> a BGR file
    np.save(tmp_path / "chips.npy", chips)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    want = np.concatenate([reference.prepare(c, [identity]) for c in chips])
    for source in (folder, tmp_path / "chips.npy"):
        got = tool.load_calibration(source, (3, s, s), meta)
        assert got.dtype == np.float32 and got.shape == want.shape
        # prepare's warp counts the last row and column as outside the image (its bilinear
        # sample there needs a neighbour beyond it): compare the rest
        np.testing.assert_allclose(got[..., :-1, :-1], want[..., :-1, :-1], atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("name", SIMILARITY_MODELS)
def test_engine_of_a_similarity_model_embeds_like_its_onnx(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _tensorrt_usable():
        pytest.skip("TensorRT is not installed here (no GPU machine)")
    if getattr(_core, "cuda_device_count", lambda: 0)() == 0:
        pytest.skip("no CUDA device visible")
    monkeypatch.setenv("MASKID_CACHE", str(tmp_path))
    tool = build_engine_module()
    args = tool.argparse.Namespace(
        model=str(model_path(name)), precision="fp16", max_batch=8, calib=None, force=True
    )
    engine = Embedder(tool.build(args))
    reference = Embedder(name)
    assert engine.contract == reference.contract and engine.model_id == reference.model_id
    s = reference.input_size
    chips = np.random.default_rng(0).integers(0, 256, (5, s, s, 3), dtype=np.uint8)
    a, b = engine.embed_chips(chips), reference.embed_chips(chips)
    cos = np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99


@pytest.mark.gpu
def test_device_pipeline_cuts_the_same_chips_as_the_cpu_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lfw10: Path
) -> None:
    """The pipeline's GPU path (CUDA warp straight into the engine's device input) against the
    same engine fed by the CPU warp, on real faces of a real photo at two scales."""
    if not hasattr(_core, "TrtDevicePipeline"):
        pytest.skip("the core was built without TensorRT (no GPU machine)")
    if _core.cuda_device_count() == 0:
        pytest.skip("no CUDA device visible")
    import cv2

    from maskid.pipeline.recognizer import Recognizer

    monkeypatch.setenv("MASKID_CACHE", str(tmp_path))
    tool = build_engine_module()
    args = tool.argparse.Namespace(
        model=str(model_path(DEFAULT_MODEL)), precision="fp32", max_batch=8, calib=None, force=True
    )
    engine = Embedder(tool.build(args))
    assert engine.uses_device_pipeline
    rec = Recognizer(tmp_path / "g", embedder=engine)
    photo = rec.load(lfw10 / "Colin_Powell" / "Colin_Powell_0002.jpg")
    for image in (photo, cv2.resize(photo, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)):
        found = rec.find_faces(image)
        transforms = [engine.chip_transform(f.landmarks) for f in found.faces]
        gpu = engine.embed_image(found.source, transforms)
        cpu = engine.embed_batch(engine.prepare(found.source, transforms))
        np.testing.assert_allclose(gpu, cpu, atol=1e-4)
