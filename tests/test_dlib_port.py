"""The dlib face ResNet port (reader -> ONNX / PyTorch) against dlib itself on real faces."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from dlib_reference import MODELS, dlib, rgb
from maskid.alignment.dlib_chip import chip_source, dlib_chip_transform
from maskid.errors import ModelError
from maskid.networks.dlib.reader import AddPrev, Conv, Fc, Skip, Tag, read_dlib_net
from maskid.networks.embedder import Embedder
from maskid.networks.registry import available_models, dlib_dat_path, model_path


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the ONNX into a fresh cache, so the conversion itself is tested."""
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MASKID_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder("dlib-resnet-v1")


@pytest.fixture(scope="module")
def facerec() -> object:
    return dlib.face_recognition_model_v1(str(MODELS / "dlib_face_recognition_resnet_model_v1.dat"))


@pytest.fixture(scope="module")
def faces(lfw10: Path, m2fred: Path) -> list[tuple[np.ndarray, object]]:
    """(image, dlib 5-point shape) for LFW photos and unmasked M2FRED crops."""
    det = dlib.get_frontal_face_detector()
    sp = dlib.shape_predictor(str(MODELS / "shape_predictor_5_face_landmarks.dat"))
    images = [rgb(p) for p in sorted(lfw10.glob("*/*.jpg"))[3::13][:6]]
    images += [rgb(p, 0.5) for p in sorted(m2fred.glob("*/*-0-0.png"))[4::11][:8]]
    out = [(img, sp(img, d[0])) for img in images if (d := det(img, 1))]
    assert len(out) >= 8, "dlib found too few faces in the fixtures"
    return out


@pytest.fixture(scope="module")
def chips(faces: list[tuple[np.ndarray, object]]) -> np.ndarray:
    return np.stack([dlib.get_face_chip(img, shape, 150, 0.25) for img, shape in faces])


@pytest.fixture(scope="module")
def reference(chips: np.ndarray, facerec: object) -> np.ndarray:
    return np.array([facerec.compute_face_descriptor(c) for c in chips])  # type: ignore[attr-defined]


# --- reader -------------------------------------------------------------------------------


def test_reader_parses_face_resnet() -> None:
    net = read_dlib_net(dlib_dat_path())
    assert net.loss == "loss_metric_2"
    np.testing.assert_allclose(net.input_means, (122.782, 117.001, 104.298), atol=1e-4)
    assert net.input_size == (150, 150)
    convs = [layer for layer in net.layers if isinstance(layer, Conv)]
    assert len(convs) == 29 and convs[0].weight.shape == (32, 3, 7, 7)
    assert convs[0].stride == (2, 2) and convs[0].pad == (0, 0) and convs[1].pad == (1, 1)
    assert sum(isinstance(layer, Skip) for layer in net.layers) == 4
    assert sum(isinstance(layer, (Tag, AddPrev)) for layer in net.layers) == 2 * 14 + 4
    fc = net.layers[-1]
    assert isinstance(fc, Fc) and fc.weight.shape == (128, 256) and fc.bias is None


@pytest.mark.parametrize("cut", [0.0, 0.5, 0.999999])
def test_reader_rejects_truncated(tmp_path: Path, cut: float) -> None:
    data = dlib_dat_path().read_bytes()
    bad = tmp_path / "bad.dat"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelError, match="truncated"):
        read_dlib_net(bad)


def test_reader_rejects_corrupt_and_other_models(tmp_path: Path) -> None:
    data = bytearray(dlib_dat_path().read_bytes())
    data[40] = 0x07  # a version int in the layer list becomes garbage
    bad = tmp_path / "bad.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelError):
        read_dlib_net(bad)
    with pytest.raises(ModelError, match=r"not a dlib metric network|corrupt|unsupported"):
        read_dlib_net(MODELS / "mmod_human_face_detector.dat")


# --- ONNX, embedder and registry ----------------------------------------------------------


def test_onnx_model_is_valid_with_metadata(embedder: Embedder) -> None:
    model = onnx.load(str(embedder.path))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["model_name"] == "dlib-resnet-v1" and meta["color_order"] == "RGB"
    assert json.loads(meta["input_size"]) == [150, 150]
    assert json.loads(meta["chip_padding"]) == 0.25 and json.loads(meta["scale"]) == 1 / 256
    np.testing.assert_allclose(json.loads(meta["mean"]), (122.782, 117.001, 104.298), atol=1e-4)
    assert (embedder.name, embedder.dim, embedder.input_size) == ("dlib-resnet-v1", 128, 150)
    assert embedder.model_id.startswith("dlib-resnet-v1:")


def test_onnx_matches_dlib(embedder: Embedder, chips: np.ndarray, reference: np.ndarray) -> None:
    ours = embedder.embed_chips(chips)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1e-4


def test_dynamic_batch(embedder: Embedder, chips: np.ndarray) -> None:
    three = embedder.embed_chips(chips[:3])
    ones = np.concatenate([embedder.embed_chips(chips[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(three, ones, atol=1e-5)


def test_torch_matches_dlib(chips: np.ndarray, reference: np.ndarray) -> None:
    torch = pytest.importorskip("torch", reason="torch is only for training/export")
    from maskid_train.dlib_torch import load_pretrained

    net = load_pretrained()
    x = torch.from_numpy(chips.transpose(0, 3, 1, 2).astype(np.float32))
    with torch.no_grad():
        fmap = net.features(x)
        ours = net.head(fmap).numpy()
    assert tuple(fmap.shape) == (len(chips), 256, 2, 2)
    assert np.abs(ours - reference).max() <= 1e-4


def test_pyramid_pipeline_matches_dlib(
    embedder: Embedder, faces: list[tuple[np.ndarray, object]], facerec: object
) -> None:
    """A face 4x larger than usual goes through dlib's pyramid path; same descriptor."""
    sp = dlib.shape_predictor(str(MODELS / "shape_predictor_5_face_landmarks.dat"))
    img, shape = faces[0]
    big = cv2.resize(img, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    r = shape.rect  # type: ignore[attr-defined]
    big_shape = sp(big, dlib.rectangle(4 * r.left(), 4 * r.top(), 4 * r.right(), 4 * r.bottom()))
    pts = np.array([[p.x, p.y] for p in big_shape.parts()], float)
    m = dlib_chip_transform(pts)
    assert chip_source(big, m)[0].shape[0] < big.shape[0] // 3  # a pyramid level is sampled
    ours = embedder.embed_image(big, [m])[0]
    ref = np.array(facerec.compute_face_descriptor(big, big_shape))  # type: ignore[attr-defined]
    assert np.abs(ours - ref).max() <= 1e-3


def test_model_path_is_cached(private_cache: Path) -> None:
    first = model_path("dlib-resnet-v1")
    assert first.parent == private_cache / "models" and first.suffix == ".onnx"
    stamp = first.stat().st_mtime_ns
    assert model_path("dlib-resnet-v1") == first and first.stat().st_mtime_ns == stamp
    assert not list(first.parent.glob("*.tmp"))
    assert "dlib-resnet-v1" in available_models()


def test_unknown_model_lists_available() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*dlib-resnet-v1"):
        model_path("nope")
    with pytest.raises(ModelError, match="unknown model"):
        Embedder("nope")


def test_embedder_rejects_bad_onnx(tmp_path: Path, embedder: Embedder) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(embedder.path.read_bytes()[:5000])
    with pytest.raises(ModelError, match="cannot load"):
        Embedder(corrupt)
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 128])
    y = onnx.helper.make_tensor_value_info("descriptor", onnx.TensorProto.FLOAT, ["N", 128])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["input"], ["descriptor"])], "g", [x], [y]
    )
    wrong = tmp_path / "wrong.onnx"
    onnx.save(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(wrong)
    )
    with pytest.raises(ModelError, match=r"input must be float32 NCHW|expected input"):
        Embedder(wrong)
    with pytest.raises(ModelError, match="does not exist"):
        Embedder(tmp_path / "missing.onnx")
