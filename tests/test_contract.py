"""Each model owns its chip geometry: its contract (size, template, colour, normalisation) is
read from its file, and the pipeline warps each face to that model's own template."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from maskid.alignment.warp import reference_warp
from maskid.detection.mtcnn import MtcnnDetector
from maskid.errors import ModelError
from maskid.io.images import load_image
from maskid.networks.contract import ModelContract
from maskid.networks.embedder import Embedder
from maskid.networks.registry import available_models
from maskid.pipeline.recognizer import Recognizer

# The documented templates (OMZ's spec page; the ArcFace 112 template EdgeFace uses).
OMZ = [(0.31556875, 0.46157411), (0.68262292, 0.46157411), (0.50026250, 0.64050536),
       (0.34947188, 0.82469196), (0.65343646, 0.82469196)]  # fmt: skip
ARCFACE = [(38.2946 / 112, 51.6963 / 112), (73.5318 / 112, 51.5014 / 112),
           (56.0252 / 112, 71.7366 / 112), (41.5493 / 112, 92.3655 / 112),
           (70.7299 / 112, 92.2041 / 112)]  # fmt: skip
DOCUMENTED = {
    "omz-face-reid-0095": (128, "BGR", OMZ),
    "edgeface-xs": (112, "RGB", ARCFACE),
    "edgeface-xxs": (112, "RGB", ARCFACE),
}
MODELS = [m for m in available_models() if m != "maskid-eyes-v1-flip"]


@pytest.fixture(scope="module")
def faces(lfw10: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    det = MtcnnDetector(threads=1)
    out = []
    for person in sorted(lfw10.iterdir())[:4]:
        img = load_image(sorted(person.glob("*.jpg"))[0])
        out.append((img, det.detect(img)[0].landmarks))
    return out


@pytest.mark.parametrize("name", [n for n in DOCUMENTED if n in available_models()])
def test_shipped_contract_matches_the_documented_template(name: str) -> None:
    size, colour, template = DOCUMENTED[name]
    c = Embedder(name, threads=1).contract
    assert (c.input_size, c.color_order, c.chip_geometry) == (size, colour, "similarity")
    assert np.allclose(c.chip_template, template, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_chip_puts_the_eyes_on_the_models_template(name: str, faces: list) -> None:
    emb = Embedder(name, threads=1)
    c = emb.contract
    det = MtcnnDetector(threads=1)
    errors, on_chip = [], []
    for img, lm in faces:
        m = emb.chip_transform(lm)
        # chip -> image maps the template's eyes onto the detected eyes (a least-squares fit of
        # five points: a posed face leaves a residual, a wrong template a large one)
        eyes = c.template_px[:2] @ m[:, :2].T + m[:, 2]
        errors.append(np.linalg.norm(eyes - lm[:2], axis=1).max() / np.linalg.norm(lm[1] - lm[0]))
        # and on the chip the model receives, a detector finds the eyes where the template says
        chip = reference_warp(img, m[None], size=c.input_size)[0].transpose(1, 2, 0)
        chip = np.ascontiguousarray(chip.astype(np.uint8))
        pad = c.input_size // 2
        found = det.detect(np.pad(chip, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
        assert found, name
        got = found[0].landmarks[:2] - pad
        on_chip.append(np.linalg.norm(got - c.template_px[:2], axis=1).max() / c.input_size)
    assert max(errors) < 0.3 and np.mean(errors) < 0.15, errors
    assert max(on_chip) < 0.1 and np.mean(on_chip) < 0.05, on_chip


def test_pipeline_uses_each_models_own_geometry_and_colour(faces: list) -> None:
    img, _ = faces[0]
    seen = set()
    for name in [n for n in DOCUMENTED if n in available_models()] + ["dlib-resnet-v1"]:
        emb = Embedder(name, threads=1)
        rec = Recognizer(None, embedder=emb, detector=MtcnnDetector(threads=1))
        face = rec.analyze(img)[0]
        assert face.chip_transform is not None
        assert np.allclose(face.chip_transform, emb.chip_transform(face.landmarks))
        c = emb.contract
        batch = emb.prepare(img, [emb.chip_transform(face.landmarks)])
        assert batch.shape == (1, 3, c.input_size, c.input_size)
        ref = reference_warp(
            img, emb.chip_transform(face.landmarks)[None], size=c.input_size, mean=c.mean,
            scale=c.scale, bgr_out=c.color_order == "BGR",
        )  # fmt: skip
        if c.chip_geometry == "similarity":  # (dlib geometry samples a pyramid level)
            assert np.abs(batch - ref).max() < 1e-5
        seen.add((c.input_size, c.color_order))
        with pytest.raises(ValueError):  # another model's chip size is refused
            emb.embed_chips(np.zeros((1, c.input_size + 2, c.input_size + 2, 3), np.uint8))
    assert len(seen) >= 2 or len(DOCUMENTED) == 0


def test_a_contract_that_contradicts_the_graph_is_refused(tmp_path: Path) -> None:
    name = next((n for n in DOCUMENTED if n in available_models()), None)
    if name is None:
        pytest.skip("no similarity-geometry model is shipped")
    src = Embedder(name, threads=1).path
    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key == "input_size":
            p.value = json.dumps(150)
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(ModelError, match="contract says 150"):
        Embedder(bad, threads=1)
    meta = {p.key: p.value for p in onnx.load(str(src)).metadata_props}
    meta["chip_template"] = "[[0.3, 0.4]]"
    with pytest.raises(ModelError):
        ModelContract.from_metadata(meta)
    meta.pop("chip_template")
    with pytest.raises(ModelError, match="malformed contract"):
        ModelContract.from_metadata(meta)
