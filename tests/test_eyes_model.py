"""The eye-region-weighted embedder (maskid-eyes-v1): ONNX vs PyTorch parity on real chips,
its contract, and that its periocular half actually ignores the masked lower face."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from maskid.face import l2_normalize
from maskid.networks.embedder import Embedder
from maskid.networks.registry import EYE_ROWS, EYE_WEIGHTS, EYES_MODEL, model_path
from maskid.pipeline.recognizer import Recognizer


@pytest.fixture(scope="module")
def chips(lfw10: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    from maskid.alignment.dlib_chip import extract_chip

    rec = Recognizer(tmp_path_factory.mktemp("g"), model="dlib-resnet-v1")
    out = []
    for name in ("Colin_Powell", "Hugo_Chavez", "Tony_Blair"):
        found = rec.analyze_in_context(rec.load(lfw10 / name / f"{name}_0003.jpg"))
        faces, source = found.faces, found.source
        assert faces[0].chip_transform is not None
        out.append(extract_chip(source, faces[0].chip_transform))
    return np.stack(out)


def test_onnx_matches_pytorch(chips: np.ndarray) -> None:
    torch = pytest.importorskip("torch", reason="torch is the training extra")
    from maskid.networks.dlib.reader import read_dlib_net, weight_arrays, with_weights
    from maskid.networks.registry import dlib_dat_path
    from maskid_train.dlib_torch import DlibResNet
    from maskid_train.periocular import FusedEmbedder

    full = read_dlib_net(dlib_dat_path())
    eye = full
    if EYE_WEIGHTS.is_file():
        with np.load(EYE_WEIGHTS) as z:
            eye = with_weights(full, [z[f"p{i:03d}"] for i in range(len(z.files))])
    assert len(weight_arrays(eye)) == len(weight_arrays(full))
    ref = FusedEmbedder(DlibResNet(full), DlibResNet(eye)).eval()
    emb = Embedder(EYES_MODEL)
    with torch.inference_mode():
        want = ref(torch.from_numpy(chips).permute(0, 3, 1, 2).float()).numpy()
    got = emb.embed_chips(chips)
    assert np.abs(got - want).max() <= 1e-4
    one = emb.embed_chips(chips[1:2])  # dynamic batch
    assert np.abs(one[0] - got[1]).max() <= 1e-5


def test_contract_and_metadata() -> None:
    model = onnx.load(str(model_path(EYES_MODEL)))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["model_name"] == EYES_MODEL and meta["eye_rows"] == str(EYE_ROWS)
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 3, 150, 150]
    emb = Embedder(EYES_MODEL)
    assert emb.dim == 256 and emb.model_id.startswith(EYES_MODEL)


def test_periocular_half_ignores_the_lower_face(chips: np.ndarray) -> None:
    emb = Embedder(EYES_MODEL)
    scribbled = chips.copy()
    rng = np.random.default_rng(0)
    scribbled[:, EYE_ROWS + 2 :] = rng.integers(0, 255, scribbled[:, EYE_ROWS + 2 :].shape)
    a, b = emb.embed_chips(chips), emb.embed_chips(scribbled)
    eye_cos = np.sum(a[:, 128:] * b[:, 128:], axis=1)
    full_cos = np.sum(a[:, :128] * b[:, :128], axis=1)
    assert (eye_cos > 0.999).all()  # the periocular view never sees below EYE_ROWS (+ blur)
    assert (full_cos < eye_cos).all()  # while the full-face half does


def test_flip_variant_averages_each_branch_over_the_mirror_image(chips: np.ndarray) -> None:
    from maskid.networks.registry import EYES_FLIP_MODEL

    plain, flip = Embedder(EYES_MODEL, threads=1), Embedder(EYES_FLIP_MODEL, threads=1)
    mirrored = np.ascontiguousarray(chips[:, :, ::-1])
    a, m = plain.embed_chips(chips), plain.embed_chips(mirrored)

    # the shipped default is not mirror-invariant: the flip variant really changes descriptors
    assert (np.sum(l2_normalize(a) * l2_normalize(m), axis=1) < 0.999).all()

    want = np.concatenate(
        [l2_normalize(a[:, :128] + m[:, :128]), l2_normalize(a[:, 128:] + m[:, 128:])], axis=1
    )
    got = flip.embed_chips(chips)
    assert np.abs(got - want).max() <= 1e-5
    assert np.abs(flip.embed_chips(mirrored) - got).max() <= 1e-5  # mirror-invariant
    assert np.abs(flip.embed_chips(chips[2:3])[0] - got[2]).max() <= 1e-5  # dynamic batch
    meta = {p.key: p.value for p in onnx.load(str(model_path(EYES_FLIP_MODEL))).metadata_props}
    assert meta["flip_average"] == "true" and meta["model_name"] == EYES_FLIP_MODEL
    assert "flip_average" not in plain.metadata  # the default's file (and gallery id) is unchanged
