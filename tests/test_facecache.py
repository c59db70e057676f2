"""The face cache (training/maskid_train/facecache.py): detect -> chips equal the product's."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from maskid.networks.contract import ModelContract
from maskid_train import facecache  # training/ is on pytest's pythonpath (pyproject.toml)


@pytest.fixture(scope="module")
def faces(tmp_path_factory, shared_data, lfw10, m2fred) -> dict:
    # The first person of m2fred has masked and unmasked sessions; three lfw10 photos.
    out = tmp_path_factory.mktemp("facecache") / "faces.npz"
    got = facecache.detect_all(
        shared_data, out, ["demo/lfw10", "eval/m2fred"], limit=7, progress=False
    )
    got["_out"] = out
    return got


def _omz() -> ModelContract:
    return ModelContract(
        name="omz-face-reid-0095", **facecache.KNOWN_CONTRACTS["omz-face-reid-0095"]
    )


def test_detect_records_product_faces(faces, shared_data) -> None:
    from maskid.detection.mtcnn import MtcnnDetector
    from maskid.io.images import load_image
    from maskid.pipeline.recognizer import Recognizer

    assert bool(faces["complete"]) and int(faces["n_done"]) == 14
    assert set(faces["source"]) == {"lfw10", "m2fred"}
    m2 = faces["source"] == "m2fred"
    assert faces["masked"][m2].any() and (~faces["masked"][m2]).any()
    assert not faces["masked"][~m2].any()
    assert faces["found"].mean() > 0.8
    # Landmarks are in the original image: the product's, less its border.
    rec = Recognizer(None, threads=1, detector=MtcnnDetector(threads=1))  # as the cache pins it
    for i in (0, 8):
        img = load_image(shared_data / str(faces["path"][i]))
        found = rec.find_faces(img)
        got, pad = found.faces, found.border
        assert pad == faces["pad"][i] and pad == max(img.shape[:2]) // 2
        np.testing.assert_allclose(faces["landmarks"][i], got[0].landmarks - pad)
        np.testing.assert_allclose(faces["box"][i], got[0].box - pad)


def test_detect_resumes(faces, shared_data, tmp_path) -> None:
    partial = {k: v for k, v in faces.items() if not k.startswith("_")}
    partial["n_done"], partial["complete"] = np.int64(5), np.bool_(False)
    partial["found"] = partial["found"].copy()
    partial["found"][5:] = False
    out = tmp_path / "faces.npz"
    facecache._atomic_savez(out, partial)
    again = facecache.detect_all(
        shared_data, out, ["demo/lfw10", "eval/m2fred"], limit=7, progress=False
    )
    assert bool(again["complete"])
    np.testing.assert_array_equal(again["found"], faces["found"])
    np.testing.assert_allclose(again["landmarks"], faces["landmarks"])


def test_chips_equal_product_preprocessing(faces, shared_data, tmp_path) -> None:
    from maskid.alignment.similarity import model_chip_transform
    from maskid.detection.mtcnn import MtcnnDetector
    from maskid.io.images import load_image
    from maskid.networks.embedder import Embedder
    from maskid.pipeline.recognizer import Recognizer

    contract = _omz()
    out = tmp_path / "chips.npy"
    facecache.make_chips(faces, shared_data, contract, out, masked_copies=2, progress=False)
    chips, index = facecache.load_chips(tmp_path / "chips")
    assert chips.dtype == np.uint8 and chips.shape[1:] == (128, 128, 3)
    # lfw10 and m2fred are no training sources: no masked copies of them.
    assert len(chips) == int(faces["found"].sum()) and (index["copy"] == 0).all()
    assert index["contract"] == contract

    rec = Recognizer(None, threads=1, detector=MtcnnDetector(threads=1))  # as the cache pins it
    for j in (0, len(chips) - 1):
        img = load_image(shared_data / str(index["path"][j]))
        found = rec.find_faces(img)
        got, context = found.faces, found.source
        m = model_chip_transform(got[0].landmarks, contract)
        # The product's preprocessing for this contract, and raw RGB chips (mean 0, scale 1).
        fake = SimpleNamespace(_size=128, contract=contract)
        ref = Embedder.prepare(fake, context, [m])  # type: ignore[arg-type]
        np.testing.assert_array_equal(facecache.model_input(chips[j : j + 1], contract), ref)
        raw = ModelContract(**{**vars(contract), "color_order": "RGB"})
        ref_rgb = Embedder.prepare(SimpleNamespace(_size=128, contract=raw), context, [m])  # type: ignore[arg-type]
        np.testing.assert_array_equal(chips[j], ref_rgb[0].transpose(1, 2, 0).astype(np.uint8))
        # EdgeFace's normalisation: the same float32 input as the product's.
        edge = ModelContract(name="edgeface-xs", **facecache.KNOWN_CONTRACTS["edgeface-xs"])
        m_e = model_chip_transform(got[0].landmarks, edge)
        e_ref = Embedder.prepare(SimpleNamespace(_size=112, contract=edge), context, [m_e])  # type: ignore[arg-type]
        e_chip = facecache.cut_chip(context, m_e, 112)[None]
        np.testing.assert_allclose(facecache.model_input(e_chip, edge), e_ref, atol=1e-6)
        # The stored transform maps the chip into the original image; landmarks agree with it.
        a, t = index["transform"][j][:, :2], index["transform"][j][:, 2]
        lm = index["chip_landmarks"][j] @ a.T + t
        np.testing.assert_allclose(lm, faces["landmarks"][index["face"][j]], atol=1e-3)


def test_masked_copies_change_only_below_the_eyes(faces, shared_data, tmp_path) -> None:
    # Present the lfw10 photos as a training source: unmasked training photos get copies.
    train = dict(faces)
    train["source"] = np.where(faces["source"] == "lfw10", "lfw", faces["source"])
    out = tmp_path / "chips.npy"
    facecache.make_chips(train, shared_data, _omz(), out, masked_copies=2, progress=False)
    chips, index = facecache.load_chips(out)
    lfw_rows = np.flatnonzero(index["source"] == "lfw")
    assert len(lfw_rows) == 3 * int((train["found"] & (train["source"] == "lfw")).sum())
    assert not (index["copy"][index["source"] == "m2fred"] > 0).any()
    for face in np.unique(index["face"][lfw_rows]):
        rows = np.flatnonzero(index["face"] == face)
        assert sorted(index["copy"][rows]) == [0, 1, 2]
        base = chips[rows[index["copy"][rows] == 0][0]].astype(int)
        eye_y = index["chip_landmarks"][rows[0]][:2, 1].max()
        for r in rows[index["copy"][rows] > 0]:
            diff = np.abs(chips[r].astype(int) - base).max(axis=2)
            assert diff.any(), "the masked copy equals the photo"
            changed_rows = np.flatnonzero(diff.max(axis=1) > 0)
            assert changed_rows.min() > eye_y, (changed_rows.min(), eye_y)
        # Copies are reproducible (seeded by path and copy number).
        np.testing.assert_array_equal(
            facecache.copy_seed("a.jpg", 1), facecache.copy_seed("a.jpg", 1)
        )
        assert facecache.copy_seed("a.jpg", 1) != facecache.copy_seed("a.jpg", 2)


def test_dev_identities_never_in_train(shared_data) -> None:
    from maskid.evaluation.splits import identity_dirs, lfw_dev, rmfd_dev

    items = facecache.list_items(shared_data, ["train/rmfd", "train/lfw", "eval/m2fred"])
    n = len(items["path"])
    index = {**items, "copy": np.zeros(n, np.int16)}
    # Each photo also as a synthetic copy: copies of dev people stay out of train too.
    index = {k: np.concatenate([v, v]) for k, v in index.items()}
    index["copy"][n:] = 1
    splits = facecache.split_rows(index, shared_data)
    train = splits["train"]
    held = set(rmfd_dev(identity_dirs(shared_data / "train" / "rmfd")))
    held_lfw = set(lfw_dev(identity_dirs(shared_data / "train" / "lfw")))
    tr_src, tr_id = index["source"][train], index["identity"][train]
    assert not any(i in held for i in tr_id[tr_src == "rmfd"])
    assert not any(i in held_lfw for i in tr_id[tr_src == "lfw"])
    assert "m2fred" not in set(tr_src)
    assert (index["copy"][train] == 1).any()
    for name in ("rmfd-dev", "lfw-dev", "m2fred-dev", "m2fred-test"):
        rows = splits[name]
        assert len(rows) and (index["copy"][rows] == 0).all()
        assert not np.intersect1d(rows, train).size
    assert set(index["identity"][splits["rmfd-dev"]]) == held
    assert not set(index["identity"][splits["m2fred-dev"]]) & set(
        index["identity"][splits["m2fred-test"]]
    )
    # Every photo is in exactly one split.
    all_rows = np.concatenate(list(splits.values()))
    assert len(all_rows) == len(np.unique(all_rows))
    assert (index["copy"][all_rows] == 0).sum() == n
