"""The EdgeFace XS / XXS port (checkpoint -> maskid's torch module -> ONNX) on real faces: the
shipped ONNX against the float torch module, the float module against the checkpoint's own
dynamic-int8 Linears run in torch, the shipped files against a fresh conversion, discrimination
on lfw10, and clear refusals of broken checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from maskid.alignment.similarity import similarity_chip_transform  # noqa: E402
from maskid.alignment.warp import warp_batch  # noqa: E402
from maskid.detection.mtcnn import MtcnnDetector  # noqa: E402
from maskid.errors import ModelError  # noqa: E402
from maskid.io.images import load_image  # noqa: E402
from maskid.networks.contract import ModelContract  # noqa: E402
from maskid_train import convert_edgeface  # noqa: E402
from maskid_train.edgenext import load_edgeface, read_checkpoint  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "python" / "maskid" / "data" / "models"
VARIANTS = {"edgeface-xs": "edgeface_xs_q.pt", "edgeface-xxs": "edgeface_xxs_q.pt"}
PHOTOS_PER_PERSON = 4
TOL = 1e-4


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(sess: ort.InferenceSession, chips: np.ndarray) -> np.ndarray:
    return np.asarray(sess.run(["descriptor"], {"input": chips})[0])


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def checkpoints(shared_data: Path) -> Path:
    folder = shared_data.parent / "models" / "edgeface"
    if not all((folder / f).is_file() for f in VARIANTS.values()):
        pytest.skip(f"{folder} lacks the EdgeFace checkpoints (they live in ../shared/models)")
    return folder


@pytest.fixture(scope="module")
def faces(lfw10: Path) -> tuple[np.ndarray, np.ndarray]:
    """Normalised chips (N x 3 x 112 x 112) of 4 photos of each lfw10 person, cut as the shipped
    contract says, and who is who."""
    contract = ModelContract.from_metadata(_meta(MODELS / "edgeface-xs.onnx"))
    xxs = ModelContract.from_metadata(_meta(MODELS / "edgeface-xxs.onnx"))
    assert dataclasses.replace(xxs, name=contract.name) == contract  # the same chips serve both
    det = MtcnnDetector(threads=1)
    chips, who = [], []
    for label, person in enumerate(sorted(p for p in lfw10.iterdir() if p.is_dir())):
        for path in sorted(person.glob("*.jpg"))[:PHOTOS_PER_PERSON]:
            image = load_image(path)
            found = det.detect(image)
            if not found:
                continue
            m = similarity_chip_transform(
                found[0].landmarks, contract.template_px, np.asarray(contract.landmark_weights)
            )
            chip = warp_batch(
                image, m[None], size=contract.input_size, mean=contract.mean, scale=contract.scale
            )
            chips.append(chip[0])
            who.append(label)
    assert len(chips) >= 30, f"the detector found only {len(chips)} lfw10 faces"
    return np.stack(chips), np.array(who)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest, checkpoints: Path, faces: tuple) -> dict:
    """One variant: its checkpoint, torch modules, shipped ONNX and their descriptors."""
    name = request.param
    ckpt = checkpoints / VARIANTS[name]
    chips = torch.from_numpy(faces[0])
    float_model = load_edgeface(ckpt)
    int8_model = load_edgeface(ckpt, quantized=True)
    with torch.no_grad():
        ours = float_model(chips).numpy()
        int8 = int8_model(chips).numpy()
    onnx_path = MODELS / f"{name}.onnx"
    return {
        "name": name,
        "ckpt": ckpt,
        "model": float_model,
        "torch": ours,
        "int8": int8,
        "onnx_path": onnx_path,
        "onnx": _run(_session(onnx_path), faces[0]),
    }


# --- the shipped files ---------------------------------------------------------------------


def test_shipped_onnx_contract_and_metadata(variant: dict) -> None:
    path, name = variant["onnx_path"], variant["name"]
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["descriptor"]
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 112, 112]
    assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) == 17
    meta = _meta(path)
    c = ModelContract.from_metadata(meta)
    assert (c.name, c.input_size, c.chip_geometry, c.color_order) == (
        name,
        112,
        "similarity",
        "RGB",
    )
    assert c.mean == (127.5, 127.5, 127.5) and c.scale == pytest.approx(1 / 127.5)
    assert c.descriptor_dim == 512 and c.landmark_weights == (1.0,) * 5
    np.testing.assert_allclose(c.template_px, convert_edgeface.ARCFACE_112, atol=1e-5)
    assert meta["version"] == "edgeface-2024+c1" and meta["licence"] == "BSD-3-Clause"
    assert meta["source"].endswith(f":checkpoints/{variant['ckpt'].name}")
    assert meta["source_sha256"] == convert_edgeface.sha256_file(variant["ckpt"])
    licence = (MODELS / "licences" / "edgeface.LICENSE").read_text(encoding="utf-8")
    assert "BSD 3-Clause License" in licence and "Idiap" in licence.splitlines()[0]


def test_onnx_matches_float_module(variant: dict) -> None:
    """(a) ONNX Runtime on the shipped file == the float torch module, on real faces."""
    assert len(variant["onnx"]) >= 8
    assert variant["onnx"].shape == variant["torch"].shape == (len(variant["torch"]), 512)
    assert np.abs(variant["onnx"] - variant["torch"]).max() <= TOL


def test_float_module_close_to_dynamic_int8_checkpoint(variant: dict) -> None:
    """(b) The float module against the checkpoint's dynamic-int8 Linears run in torch. Those
    quantize every Linear's input on the fly (per tensor, 7-bit with reduce_range), so the two
    are not equal to 1e-4: on lfw10 the per-face cosine is ~0.94-0.98 (mean ~0.95-0.97). The
    weights themselves are equal (dequantized exactly), so the gap is activation rounding."""
    cos = _cos_rows(variant["torch"], variant["int8"])
    assert cos.min() >= 0.9, f"{variant['name']}: float vs int8 cosine min {cos.min():.4f}"
    assert cos.mean() >= 0.93, f"{variant['name']}: float vs int8 cosine mean {cos.mean():.4f}"


def test_reexport_matches_shipped(variant: dict, faces: tuple, tmp_path: Path) -> None:
    """(c) A fresh conversion of the checkpoint gives the shipped file's outputs and metadata."""
    fresh = convert_edgeface.convert(variant["ckpt"], variant["name"], tmp_path)
    assert _meta(fresh) == _meta(variant["onnx_path"])
    again = _run(_session(fresh), faces[0])
    assert np.abs(again - variant["onnx"]).max() <= 1e-6


@pytest.mark.parametrize("key", ["onnx", "int8"])
def test_discriminative_on_real_faces(variant: dict, faces: tuple, key: str) -> None:
    """(d) Same-person pairs are far more alike than different-person pairs (a wrong port gives
    near-random descriptors and a gap near 0; the float port measures ~0.6 on lfw10)."""
    e = variant[key] / np.linalg.norm(variant[key], axis=1, keepdims=True)
    sim = e @ e.T
    who = faces[1]
    same = (who[:, None] == who[None]) & ~np.eye(len(who), dtype=bool)
    diff = who[:, None] != who[None]
    gap = sim[same].mean() - sim[diff].mean()
    assert gap > 0.3, f"{variant['name']} {key}: same - different cosine = {gap:.3f}"


def test_features_and_head_split(variant: dict, faces: tuple) -> None:
    model = variant["model"]
    x = torch.from_numpy(faces[0][:2])
    with torch.no_grad():
        f = model.features(x)
        stages = model.stage_features(x)
        out = model.head(f)
    dims = model.config.dims
    assert f.shape == (2, dims[-1], 3, 3)
    assert [tuple(s.shape[1:]) for s in stages] == [
        (dims[0], 28, 28),
        (dims[1], 14, 14),
        (dims[2], 7, 7),
        (dims[3], 3, 3),
    ]
    assert torch.equal(stages[-1], f)
    np.testing.assert_allclose(out.numpy(), variant["torch"][:2], atol=1e-5)


# --- refusals ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xxs_state(checkpoints: Path) -> dict:
    return read_checkpoint(checkpoints / VARIANTS["edgeface-xxs"])


def test_rejects_missing_and_corrupt_files(checkpoints: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_edgeface(tmp_path / "nope.pt")
    data = (checkpoints / VARIANTS["edgeface-xxs"]).read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="corrupt"):
        load_edgeface(bad)
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(ModelError, match="state dict"):
        load_edgeface(other)


def _saved(sd: dict, tmp_path: Path) -> Path:
    path = tmp_path / "edited.pt"
    torch.save({"model." + k: v for k, v in sd.items()}, path)
    return path


def test_rejects_wrong_shapes_and_missing_keys(xxs_state: dict, tmp_path: Path) -> None:
    sd = dict(xxs_state)
    sd["stages.1.blocks.0.norm.weight"] = torch.ones(47)
    with pytest.raises(ModelError, match=r"stages\.1\.blocks\.0\.norm\.weight"):
        load_edgeface(_saved(sd, tmp_path))
    sd = dict(xxs_state)
    del sd["stages.2.blocks.5.xca.temperature"]
    with pytest.raises(ModelError, match=r"xca\.temperature"):
        load_edgeface(_saved(sd, tmp_path))
    sd = dict(xxs_state)
    sd["head.fc._packed_params._packed_params"] = (
        torch.quantize_per_tensor(torch.zeros(512, 100), 0.1, 0, torch.qint8),
        torch.zeros(512),
    )
    with pytest.raises(ModelError, match=r"head\.fc"):
        load_edgeface(_saved(sd, tmp_path))


def test_loaded_config_follows_the_checkpoint(xxs_state: dict, checkpoints: Path) -> None:
    xs = load_edgeface(checkpoints / VARIANTS["edgeface-xs"]).config
    xxs = load_edgeface(checkpoints / VARIANTS["edgeface-xxs"]).config
    assert xs.dims == (32, 64, 100, 192) and [len(s) for s in xs.stages] == [3, 3, 9, 3]
    assert xxs.dims == (24, 48, 88, 168) and [len(s) for s in xxs.stages] == [2, 2, 6, 2]
    for cfg in (xs, xxs):
        kinds = [[b.kind for b in s] for s in cfg.stages]
        assert all(k[-1] == "sdta" and set(k[:-1]) <= {"conv"} for k in kinds[1:])
        assert kinds[0] == ["conv"] * len(kinds[0])
        pos = [b.pos_hidden for s in cfg.stages for b in s if b.kind == "sdta"]
        assert pos == [32, 0, 0]  # the Fourier positional encoding only in stage 1
    assert xs.embedding_dim == xxs.embedding_dim == 512
