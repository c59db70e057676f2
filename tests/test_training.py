"""Training code (training/maskid_train): a few real steps, the eye gate, ONNX export parity."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("face_recognition_models", reason="dlib's pretrained .dat is needed")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))

from maskid_train.augment import masked_variants  # noqa: E402
from maskid_train.data import ChipMaker  # noqa: E402
from maskid_train.export import metadata, parity, to_onnx  # noqa: E402
from maskid_train.losses import CosFace, class_centres, cosine_pull  # noqa: E402
from maskid_train.net import Student, build_student  # noqa: E402


@pytest.fixture(scope="module")
def real_chips(lfw10: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chips (6,150,150,3), chip-frame landmarks and labels: 2 photos each of 3 LFW people."""
    maker = ChipMaker()
    chips, lms, labels = [], [], []
    for label, person in enumerate(sorted(p for p in lfw10.iterdir() if p.is_dir())[:3]):
        for f in sorted(person.glob("*.jpg"))[:2]:
            r = maker(str(f), 0.0)
            assert r is not None, f"no face in {f}"
            chips.append(r[0])
            lms.append(r[1])
            labels.append(label)
    return np.stack(chips), np.stack(lms), np.array(labels)


def _nchw(chips: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()


def test_eye_gates_are_identity_at_init(real_chips) -> None:
    from maskid_train.dlib_torch import load_pretrained

    chips = _nchw(real_chips[0])
    student, dlib = build_student("eyes"), load_pretrained()
    with torch.inference_mode():
        assert torch.equal(student(chips), dlib(chips))


def test_training_steps_change_weights_and_loss_is_finite(real_chips) -> None:
    chips, lms, labels = real_chips
    torch.manual_seed(0)
    model = build_student("eyes")
    with torch.inference_mode():
        teacher = model(_nchw(chips)).clone()
    masked = np.stack(
        [masked_variants(c, lm, 1, i)[0] for i, (c, lm) in enumerate(zip(chips, lms, strict=True))]
    )
    x = _nchw(np.concatenate([masked, chips]))
    y = torch.from_numpy(np.concatenate([labels, labels]))
    t = torch.cat([teacher, teacher])
    head = CosFace(class_centres(teacher, torch.from_numpy(labels), 3))
    opt = torch.optim.AdamW([*model.param_groups(1e-4, 1e-2, 1e-4), {"params": head.parameters()}])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    losses = []
    for _ in range(2):
        emb = model(x)
        loss = cosine_pull(emb, t) + 0.1 * head(emb, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    after = model.state_dict()
    assert not torch.equal(before["base.fc.weight"], after["base.fc.weight"])
    assert not torch.equal(before["gates.g8.w"], after["gates.g8.w"])
    assert torch.equal(before["base.stem.0.weight"], after["base.stem.0.weight"])  # frozen


def test_onnx_export_matches_pytorch(real_chips, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = build_student("eyes").eval()
    with torch.no_grad():  # a non-trivial gate, so the export covers it
        for gate in model.gates.values():
            gate.w.fill_(0.7)
            gate.conv.weight.normal_(0, 0.02)
    path = tmp_path / "student.onnx"
    to_onnx(model, path, metadata("test-model", "0", "test", None))
    for batch in (1, 3):
        assert parity(model, path, real_chips[0][:batch]) <= 1e-4
    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    assert props["model_name"] == "test-model"
    assert json.loads(props["input_size"]) == [150, 150]
    assert [i.name for i in m.graph.input] == ["input"]
    assert [o.name for o in m.graph.output] == ["descriptor"]


def test_student_variants() -> None:
    assert isinstance(build_student("plain"), Student)
    assert len(build_student("plain").gates) == 0
    assert set(build_student("g8").gates) == {"g8"}
    with pytest.raises(ValueError):
        build_student("g99")


def test_periocular_resume_ends_where_an_uninterrupted_run_ends(
    real_chips, m2fred: Path, tmp_path: Path
) -> None:
    """Two epochs in one go and one epoch + `--resume` give bit-identical branch weights
    (the checkpoint holds the optimiser, the CosFace centres and both random generators)."""
    from maskid_train import periocular

    chips, lms, labels = real_chips
    cache = tmp_path / "cache"
    (cache / "train").mkdir(parents=True)
    np.save(cache / "train" / "chips.npy", chips)
    pool = [masked_variants(c, lm, 2, i) for i, (c, lm) in enumerate(zip(chips, lms, strict=True))]
    np.save(cache / "train" / "masked_k2.npy", np.stack(pool))
    np.savez(cache / "train" / "meta.npz", labels=labels, names=np.array(["a", "b", "c"]))
    dev = tmp_path / "m2fred"
    dev.mkdir()
    for person in sorted(p for p in m2fred.iterdir() if p.is_dir())[:2]:
        (dev / person.name).symlink_to(person)
    common = ["--cache", str(cache), "--dev", str(dev), "--batch", "4", "--steps", "2"]
    common += ["--lr", "1e-5", "--cosface", "0.05", "--threads", "1"]
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert periocular.main([*common, "--out", str(once), "--epochs", "2"]) == 0
    assert periocular.main([*common, "--out", str(twice), "--epochs", "1"]) == 0
    assert periocular.main([*common, "--out", str(twice), "--epochs", "2", "--resume"]) == 0
    a = torch.load(once / "last.pt", weights_only=False)
    b = torch.load(twice / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    trained = [k for k, v in a["eye"].items() if v.dtype.is_floating_point]
    start = periocular.load_pretrained().state_dict()
    assert any(not torch.equal(a["eye"][k], start[k]) for k in trained)  # it did train
    assert all(torch.equal(a["eye"][k], b["eye"][k]) for k in a["eye"])
    rows = (twice / "epochs.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "0", "1", "2"]  # one header, appended


def test_reproduce_script_refuses_without_the_training_data(tmp_path: Path) -> None:
    import subprocess

    script = REPO / "training" / "reproduce_eyes_v1.sh"
    env = {"PATH": "/usr/bin:/bin", "MASKID_SHARED": str(tmp_path)}
    done = subprocess.run([str(script)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"reproduce_eyes_v1: {tmp_path}/train/glint23 not found (set MASKID_SHARED=.../shared/data)"
    )
    assert done.stdout == ""  # nothing started
