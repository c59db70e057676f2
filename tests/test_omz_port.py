"""The OMZ face-reidentification-retail-0095 port (IR reader -> ONNX / PyTorch) on real faces:
the shipped ONNX against OpenVINO running Intel's IR, the PyTorch module against the ONNX, the
shipped file against a fresh conversion, and the reader's refusals."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from maskid.alignment.similarity import similarity_chip_transform
from maskid.alignment.warp import warp_batch
from maskid.detection.mtcnn import MtcnnDetector
from maskid.errors import ModelError
from maskid.io.images import load_image
from maskid.networks.contract import ModelContract
from maskid.networks.openvino_ir import build_onnx, read_ir
from maskid_train import convert_omz
from maskid_train.irnet_torch import IRNet

SHIPPED = Path(__file__).resolve().parents[1] / "python/maskid/data/models/omz-face-reid-0095.onnx"
IR_NAME = "face-reidentification-retail-0095"
TOL = 1e-4


@pytest.fixture(scope="module")
def ir_xml(shared_data: Path) -> Path:
    xml = shared_data.parent / "models" / "omz-face-reid-0095" / "FP16" / f"{IR_NAME}.xml"
    if not xml.is_file():
        pytest.skip(f"{xml} is not present (the OMZ IR lives in ../shared/models)")
    return xml


def _session(model: bytes | str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _embed(sess: ort.InferenceSession, chips: np.ndarray) -> np.ndarray:
    return np.asarray(sess.run(["descriptor"], {"input": chips})[0])


@pytest.fixture(scope="module")
def shipped() -> ort.InferenceSession:
    return _session(str(SHIPPED))


@pytest.fixture(scope="module")
def faces(lfw10: Path) -> tuple[np.ndarray, list[str]]:
    """OMZ-aligned BGR 0..255 chips (N x 3 x 128 x 128) of every lfw10 photo, and who."""
    contract = ModelContract.from_metadata(
        {p.key: p.value for p in onnx.load(str(SHIPPED), load_external_data=False).metadata_props}
    )
    det = MtcnnDetector(threads=1)
    chips, who = [], []
    for path in sorted(lfw10.glob("*/*.jpg")):
        image = load_image(path)
        found = det.detect(image)
        if not found:
            continue
        m = similarity_chip_transform(
            found[0].landmarks, contract.template_px, np.asarray(contract.landmark_weights)
        )
        chips.append(warp_batch(image, m[None], size=128, bgr_out=True)[0])
        who.append(path.parent.name)
    assert len(chips) >= 80, f"the detector found only {len(chips)} lfw10 faces"
    return np.stack(chips), who


@pytest.fixture(scope="module")
def sample(faces: tuple[np.ndarray, list[str]]) -> np.ndarray:
    """10 chips, one per person where the detector allows: the parity set."""
    chips, who = faces
    firsts = [who.index(p) for p in sorted(set(who))]
    assert len(firsts) >= 8
    return chips[firsts]


def test_chips_are_bgr_planes(lfw10: Path) -> None:
    image = load_image(next(iter(sorted(lfw10.glob("*/*.jpg")))))
    m = np.array([[1.0, 0.0, 40.0], [0.0, 1.0, 40.0]])
    rgb = warp_batch(image, m[None], size=128)[0]
    bgr = warp_batch(image, m[None], size=128, bgr_out=True)[0]
    assert np.array_equal(bgr, rgb[::-1])


def test_shipped_matches_openvino(
    ir_xml: Path, shipped: ort.InferenceSession, sample: np.ndarray
) -> None:
    if importlib.util.find_spec("openvino") is None:
        pytest.skip(
            "openvino is not installed (pip install 'maskid[test]'): no reference to compare"
        )
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(ir_xml), "CPU", config={"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )
    ref = np.concatenate([np.asarray(compiled(c[None])[0]).reshape(1, -1) for c in sample])
    got = _embed(shipped, sample)
    assert got.shape == ref.shape == (len(sample), 256)
    assert np.abs(got - ref).max() <= TOL, np.abs(got - ref).max()


def test_torch_matches_onnx(
    ir_xml: Path, shipped: ort.InferenceSession, sample: np.ndarray
) -> None:
    torch.set_num_threads(1)
    net = IRNet(read_ir(ir_xml)).eval()
    x = torch.from_numpy(sample)
    with torch.no_grad():
        out, maps = net(x, return_features=[net.feature_layer, "652"])
        feats = net.features(x[:2])
        head = net.head(feats)
    assert net.feature_layer == "655"
    assert tuple(feats.shape) == (2, 512, 8, 8)
    assert tuple(maps["652"].shape) == (len(sample), 128, 8, 8)
    assert torch.equal(maps[net.feature_layer][:2], feats)
    assert torch.allclose(head, out[:2], atol=1e-6)
    ref = _embed(shipped, sample)
    assert np.abs(out.numpy() - ref).max() <= TOL, np.abs(out.numpy() - ref).max()
    assert net.num_parameters() == 1_106_814  # OMZ's 1.107 M
    # The tuned weights travel back into ONNX: untouched, the same graph as the shipped one.
    meta = convert_omz.metadata(convert_omz.SOURCE_SHA256)
    assert build_onnx(net.to_graph(), meta).graph == onnx.load(str(SHIPPED)).graph


def test_torch_module_trains(ir_xml: Path, sample: np.ndarray) -> None:
    torch.set_num_threads(1)
    net = IRNet(read_ir(ir_xml))
    feats = net.features(torch.from_numpy(sample[:2]))
    net.head(feats).pow(2).mean().backward()
    w = net.param("408")  # the final 1x1 conv 512 -> 256
    assert w.grad is not None and float(w.grad.abs().sum()) > 0
    assert net.param("Multiply_8794").shape == (
        512,
        1,
        1,
        8,
        8,
    )  # IR layout G x O/G x I/G x kh x kw


def test_shipped_equals_fresh_conversion(
    ir_xml: Path, shipped: ort.InferenceSession, sample: np.ndarray
) -> None:
    fresh = onnx.load_from_string(convert_omz.convert(ir_xml))
    ship = onnx.load(str(SHIPPED))
    assert fresh.graph == ship.graph, (
        "shipped ONNX differs: rerun training/maskid_train/convert_omz.py"
    )
    assert {p.key: p.value for p in fresh.metadata_props} == {
        p.key: p.value for p in ship.metadata_props
    }
    out = _embed(_session(fresh.SerializeToString()), sample)
    assert np.array_equal(out, _embed(shipped, sample))


def test_shipped_contract_and_format() -> None:
    m = onnx.load(str(SHIPPED))
    meta = {p.key: p.value for p in m.metadata_props}
    c = ModelContract.from_metadata(meta)
    assert (c.input_size, c.color_order, c.descriptor_dim) == (128, "BGR", 256)
    assert c.chip_geometry == "similarity" and c.mean == (0.0, 0.0, 0.0) and c.scale == 1.0
    assert meta["licence"] == "Apache-2.0" and meta["source_sha256"] == convert_omz.SOURCE_SHA256
    assert m.ir_version == 8 and m.opset_import[0].version == 17
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert (m.graph.input[0].name, dims) == ("input", ["N", 3, 128, 128])
    dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert (m.graph.output[0].name, dims) == ("descriptor", ["N", 256])
    halves = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    leaky = [n for n in m.graph.node if n.op_type == "LeakyRelu"]  # the 48 one-slope PReLUs
    assert sum(int(np.prod(t.dims)) for t in halves) + len(leaky) == 1_106_814
    assert len(leaky) == 48 and not any(
        t.data_type == onnx.TensorProto.FLOAT for t in m.graph.initializer
    )
    assert SHIPPED.stat().st_size < 2.5e6


def test_embedding_is_discriminative(
    shipped: ort.InferenceSession, faces: tuple[np.ndarray, list[str]]
) -> None:
    chips, who = faces
    d = _embed(shipped, chips)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    cos = d @ d.T
    names = np.array(who)
    same = names[:, None] == names[None, :]
    off = ~np.eye(len(names), dtype=bool)
    gap = cos[same & off].mean() - cos[~same].mean()
    assert gap > 0.3, f"mean same-person cosine exceeds different-person by only {gap:.3f}"
    # and nearly every face's nearest other face is the same person
    nearest = np.where(off, cos, -np.inf).argmax(axis=1)
    assert (names[nearest] == names).mean() >= 0.9


# --- general paths that OMZ 0095 does not exercise, on a small hand-made IR ----------------


def _tiny_ir(tmp: Path) -> Path:
    """An IR v11 with an f32 constant, asymmetric explicit pads, a per-channel PReLU slope
    (4 values, on a 6 x 6 map: numpy broadcasting alone would fail), same_upper pads with an
    even kernel (pads 0 before, 1 after) and a padded AvgPool with ceil rounding."""
    rng = np.random.default_rng(7)
    blob = bytearray()
    layers: list[tuple[str, dict[str, str], list[int], tuple[int, ...]]] = []

    def add(op: str, data: dict[str, str], inputs: list[int], dims: tuple[int, ...]) -> int:
        layers.append((op, data, inputs, dims))
        return len(layers) - 1

    def const(value: np.ndarray, etype: str) -> int:
        raw = value.astype({"f16": "<f2", "f32": "<f4"}[etype]).tobytes()
        data = {"element_type": etype, "shape": ", ".join(map(str, value.shape))}
        data |= {"offset": str(len(blob)), "size": str(len(raw))}
        blob.extend(raw)
        c = add("Const", data, [], value.shape)
        return (
            add("Convert", {"destination_type": "f32"}, [c], value.shape) if etype == "f16" else c
        )

    conv = {"strides": "2, 2", "dilations": "1, 1", "pads_begin": "0, 0", "pads_end": "1, 1"}
    x = add("Parameter", {"shape": "1,4,12,12", "element_type": "f32"}, [], (1, 4, 12, 12))
    w = const(rng.normal(0, 0.1, (4, 4, 3, 3)), "f16")
    x = add("Convolution", conv | {"auto_pad": "explicit"}, [x, w], (1, 4, 6, 6))
    slope = const(np.array([0.25, -0.5, 1.5, 0.0]), "f32")
    x = add("PReLU", {}, [x, slope], (1, 4, 6, 6))
    gw = const(rng.normal(0, 0.3, (4, 1, 1, 2, 2)), "f16")
    same = conv | {"strides": "1, 1", "pads_end": "0, 0", "auto_pad": "same_upper"}
    x = add("GroupConvolution", same, [x, gw], (1, 4, 6, 6))
    x = add(
        "Add",
        {"auto_broadcast": "numpy"},
        [x, const(rng.normal(0, 1, (1, 4, 1, 1)), "f32")],
        (1, 4, 6, 6),
    )
    pool = {"kernel": "3, 3", "strides": "2, 2", "pads_begin": "1, 1", "pads_end": "1, 1"}
    pool |= {"exclude-pad": "true", "auto_pad": "explicit", "rounding_type": "ceil"}
    x = add("AvgPool", pool, [x], (1, 4, 4, 4))
    gate = add("Sigmoid", {}, [x], (1, 4, 4, 4))
    x = add("Multiply", {"auto_broadcast": "numpy"}, [x, gate], (1, 4, 4, 4))
    add("Result", {}, [x], ())

    def dims(d: tuple[int, ...]) -> str:
        return "".join(f"<dim>{v}</dim>" for v in d)

    xml = ['<?xml version="1.0"?>', '<net name="tiny" version="11">', "<layers>"]
    edges = []
    for i, (op, data, inputs, d) in enumerate(layers):
        attrs = " ".join(f'{k}="{v}"' for k, v in data.items())
        xml.append(f'<layer id="{i}" name="l{i}" type="{op}" version="opset1">')
        xml.append(f"<data {attrs} />" if data else "")
        if inputs:
            ports = "".join(
                f'<port id="{k}">{dims(layers[j][3])}</port>' for k, j in enumerate(inputs)
            )
            xml.append(f"<input>{ports}</input>")
            edges += [(j, len(layers[j][2]), i, k) for k, j in enumerate(inputs)]
        if op != "Result":
            xml.append(
                f'<output><port id="{len(inputs)}" precision="FP32">{dims(d)}</port></output>'
            )
        xml.append("</layer>")
    xml.append("</layers><edges>")
    xml += [
        f'<edge from-layer="{a}" from-port="{p}" to-layer="{b}" to-port="{q}" />'
        for a, p, b, q in edges
    ]
    xml.append("</edges></net>")
    path = tmp / "tiny.xml"
    path.write_text("\n".join(xml))
    path.with_suffix(".bin").write_bytes(bytes(blob))
    return path


def test_general_paths_on_a_tiny_ir(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    xml = _tiny_ir(tmp_path)
    graph = read_ir(xml)
    x = np.random.default_rng(3).normal(0, 50, (2, 4, 12, 12)).astype(np.float32)
    got = _embed(_session(build_onnx(graph, {}).SerializeToString()), x)
    assert got.shape == (2, 64)
    with torch.no_grad():
        out = IRNet(graph)(torch.from_numpy(x))
    assert isinstance(out, torch.Tensor)
    assert np.abs(out.numpy() - got).max() <= 1e-5
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("openvino is not installed: ONNX and PyTorch agree, no reference to check")
    import openvino as ov

    compiled = ov.Core().compile_model(
        str(xml), "CPU", config={"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    )
    ref = np.concatenate([np.asarray(compiled(c[None])[0]).reshape(1, -1) for c in x])
    assert np.abs(got - ref).max() <= 1e-5, np.abs(got - ref).max()


# --- the reader refuses what it cannot read -----------------------------------------------


def _copy_ir(
    ir_xml: Path, tmp: Path, xml: str | None = None, bin_bytes: bytes | None = None
) -> Path:
    out = tmp / f"{IR_NAME}.xml"
    out.write_text(xml if xml is not None else ir_xml.read_text())
    data = bin_bytes if bin_bytes is not None else ir_xml.with_suffix(".bin").read_bytes()
    out.with_suffix(".bin").write_bytes(data)
    return out


def _refused(path: Path, *words: str) -> None:
    with pytest.raises(ModelError) as e:
        read_ir(path)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_reader_refuses_truncated_bin(ir_xml: Path, tmp_path: Path) -> None:
    data = ir_xml.with_suffix(".bin").read_bytes()
    _refused(_copy_ir(ir_xml, tmp_path, bin_bytes=data[: len(data) // 2]), "beyond the end")
    _refused(_copy_ir(ir_xml, tmp_path, bin_bytes=b""), "beyond the end")


def test_reader_refuses_bad_xml(ir_xml: Path, tmp_path: Path) -> None:
    text = ir_xml.read_text()
    assert 'type="Sigmoid"' in text
    _refused(
        _copy_ir(ir_xml, tmp_path, text.replace('type="Sigmoid"', 'type="HSigmoid"', 1)),
        "unsupported operation 'HSigmoid'",
    )
    _refused(
        _copy_ir(ir_xml, tmp_path, text.replace('version="11"', 'version="7"', 1)),
        "IR version",
    )
    bad_type = text.replace('element_type="f16"', 'element_type="u1"', 1)
    _refused(_copy_ir(ir_xml, tmp_path, bad_type), "element type 'u1'")
    bad_size = text.replace('offset="12" size="3456"', 'offset="12" size="3454"', 1)
    _refused(_copy_ir(ir_xml, tmp_path, bad_size), "cannot be 3454 bytes")
    bad_pool = text.replace('rounding_type="floor"', 'rounding_type="ceil_torch"', 1)
    _refused(_copy_ir(ir_xml, tmp_path, bad_pool), "rounding_type")
    _refused(_copy_ir(ir_xml, tmp_path, text[: len(text) // 2]), "well-formed")
    _refused(tmp_path / "missing.xml", "cannot read")
