"""maskid-eyes-v2: OMZ face-reid-0095 + a trained eye-region branch (training/maskid_train/eyehead.py).

The shipped ONNX must equal the PyTorch modules it was trained as (the IR network from
maskid_train.irnet_torch and the branch from maskid_train.eyehead) on real faces, keep the
backbone's own descriptor as its first half, and weight the eye rows as its metadata says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from maskid.detection.mtcnn import MtcnnDetector
from maskid.io.images import load_image
from maskid.networks.embedder import Embedder
from maskid.networks.registry import BUNDLED_DIR

V2 = BUNDLED_DIR / "maskid-eyes-v2.onnx"
pytestmark = pytest.mark.skipif(not V2.is_file(), reason="maskid-eyes-v2.onnx is not shipped")


@pytest.fixture(scope="module")
def chips(lfw10: Path) -> tuple[Embedder, np.ndarray]:
    emb = Embedder(V2, threads=1)
    det = MtcnnDetector(threads=1)
    batches = []
    for person in sorted(lfw10.iterdir())[:5]:
        for path in sorted(person.glob("*.jpg"))[:2]:
            img = load_image(path)
            face = det.detect(img)[0]
            batches.append(emb.prepare(img, [emb.chip_transform(face.landmarks)]))
    return emb, np.concatenate(batches)


def test_onnx_equals_the_torch_modules_on_real_faces(chips: tuple[Embedder, np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    from maskid_train.eyehead import EXPAND_FEATURE, FEATURE, build_branch
    from maskid_train.irnet_torch import IRNet

    emb, batch = chips
    m = onnx.load(str(V2))
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in m.graph.initializer}
    weights = {k: inits[f"eye/{k}"] for k in ("gd_w", "gd_b", "conv2_w")}
    layer = FEATURE
    if "eye/conv1_w" in inits:  # the branch owns a copy of the expansion conv
        (lrelu,) = [n for n in m.graph.node if n.name == "eye/prelu"]
        weights.update(conv1_w=inits["eye/conv1_w"], conv1_b=inits["eye/conv1_b"])
        weights["alpha"] = np.array([a.f for a in lrelu.attribute if a.name == "alpha"])
        layer = EXPAND_FEATURE
    branch = build_branch(weights)
    rw = inits["eye/row_weights"].reshape(-1)
    with torch.no_grad():
        branch.row_logits.copy_(torch.logit(torch.from_numpy(rw).double()).float())
        net = IRNet.from_ir()
        x = torch.from_numpy(batch)
        full, maps = net(x, return_features=[layer])
        eye = branch(maps[layer])
        w = float(inits["eye/weight"])
        unit = torch.nn.functional.normalize
        want = torch.cat([unit(full, dim=1), w * unit(eye, dim=1)], dim=1).numpy()
    got = emb.embed_batch(batch)
    assert got.shape == (len(batch), 512)
    assert np.abs(got - want).max() <= 1e-4
    meta = {p.key: p.value for p in m.metadata_props}
    assert np.allclose(json.loads(meta["eye_row_weights"]), rw, atol=1e-4)
    assert float(json.loads(meta["eye_weight"])) == pytest.approx(w)


def test_first_half_is_the_backbone_and_the_contract_is_its_own(
    chips: tuple[Embedder, np.ndarray],
) -> None:
    emb, batch = chips
    omz = Embedder("omz-face-reid-0095", threads=1)
    assert emb.contract.chip_template == omz.contract.chip_template
    assert (emb.contract.input_size, emb.contract.color_order) == (128, "BGR")
    base = omz.embed_batch(batch)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    assert np.abs(emb.embed_batch(batch)[:, :256] - base).max() <= 1e-5
    # the branch looks mostly above the nose: the eye rows outweigh the mouth rows
    rows = json.loads(emb.metadata["eye_row_weights"])
    assert min(rows[:4]) > max(rows[6:])
