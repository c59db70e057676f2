"""The Python pipeline API on real faces: tight crops, coordinates, enroll/recognize."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskid.detection.mtcnn import MtcnnDetector
from maskid.face import iou
from maskid.io.images import load_image
from maskid.pipeline.recognizer import Recognizer


def test_tight_masked_crops_are_found_by_the_pipeline(m2fred: Path, tmp_path: Path) -> None:
    files = sorted(m2fred.glob("*/*-1-0.png"))
    rec = Recognizer(tmp_path / "g")
    cascade = MtcnnDetector()
    found = cascade_found = 0
    for f in files:
        img = load_image(f)
        result = rec.find_faces(img)
        faces, context, pad = result.faces, result.source, result.border
        cascade_found += bool(cascade.detect(context))
        if faces:
            found += 1
            f0 = faces[0]
            # eyes inside the box, left of right, above the mouth; in the bordered frame
            (lx, ly), (rx, ry) = f0.landmarks[0], f0.landmarks[1]
            assert f0.box[0] <= lx < rx <= f0.box[2]
            assert max(ly, ry) < f0.landmarks[3:, 1].min()
            assert pad > 0 and context.shape[0] == img.shape[0] + 2 * pad
    assert found / len(files) >= 0.97
    assert found > cascade_found  # the whole-crop ONet fallback earns its place


def test_analyze_returns_original_coordinates_for_crops(m2fred: Path, tmp_path: Path) -> None:
    path = sorted(m2fred.glob("*/*-0-0.png"))[0]
    img = load_image(path)
    (face,) = Recognizer(tmp_path / "g").analyze(img)[:1]
    h, w = img.shape[:2]
    assert (face.landmarks[:, 0] > 0).all() and (face.landmarks[:, 0] < w).all()
    assert (face.landmarks[:, 1] > 0).all() and (face.landmarks[:, 1] < h).all()
    assert face.descriptor is not None and np.isfinite(face.descriptor).all()


def test_python_api_enroll_then_recognize(lfw10: Path, tmp_path: Path) -> None:
    rec = Recognizer(tmp_path / "gallery")
    for name in ("Colin_Powell", "Hugo_Chavez", "Tony_Blair"):
        rec.enroll(name, [lfw10 / name / f"{name}_0002.jpg"])
    assert rec.identities().keys() == {"Colin_Powell", "Hugo_Chavez", "Tony_Blair"}
    probe = lfw10 / "Hugo_Chavez" / "Hugo_Chavez_0004.jpg"
    (face,) = Recognizer(tmp_path / "gallery").recognize(probe)
    assert face.matches[0].identity == "Hugo_Chavez" and face.match_score == face.matches[0].score
    # The default threshold sits at FAR 1e-3 on masked probes, strict enough that a genuine
    # match may come out "unknown"; it never names anybody else.
    assert face.identity in ("Hugo_Chavez", None)
    assert (face.identity is None) == (face.matches[0].score < rec.threshold)
    (loose,) = Recognizer(tmp_path / "gallery", threshold=0.5).recognize(probe)
    assert loose.identity == "Hugo_Chavez"


def test_stages_and_gallery_from_the_caller(lfw10: Path, tmp_path: Path) -> None:
    """Injected stages: an open gallery object (created empty by the caller), a detector and
    an embedder shared with another recognizer; enrollment writes into that very gallery."""
    from maskid.detection.mtcnn import MtcnnDetector
    from maskid.gallery import open_gallery
    from maskid.networks.embedder import Embedder

    embedder, detector = Embedder(), MtcnnDetector(threads=1)
    gallery = open_gallery(
        tmp_path / "g", embedder_id=embedder.model_id, dim=embedder.dim, create=True
    )
    rec = Recognizer(gallery, detector=detector, embedder=embedder)
    assert rec.gallery_exists() and rec.detector is detector and rec.embedder is embedder
    rec.enroll("Colin_Powell", [lfw10 / "Colin_Powell" / "Colin_Powell_0002.jpg"])
    assert gallery.identities() == {"Colin_Powell": 1 + rec.mask_copies}
    assert not (Path.cwd() / "<gallery object>").exists()
    other = Recognizer(tmp_path / "g", detector=detector, embedder=embedder)
    (face,) = other.recognize(lfw10 / "Colin_Powell" / "Colin_Powell_0004.jpg")
    assert face.matches[0].identity == "Colin_Powell"


def test_enrolled_masked_copies_are_aligned_from_a_detection_on_the_masked_image(
    m2fred: Path, tmp_path: Path
) -> None:
    """Issue 5: a masked copy is aligned as a real masked probe is (landmarks found on the masked
    face), not with the unmasked photo's chip transform."""
    from maskid.detection.tight_crops import detect_in_source
    from maskid.pipeline import recognizer
    from maskid.pipeline.masks import apply_mask

    assert recognizer.COPY_REDETECT
    rec = Recognizer(tmp_path / "g", mask_copies=2)
    moved = 0
    for path in sorted(m2fred.glob("*/1-0-0.png"))[:4]:
        found = rec.enroll_face(load_image(path))
        face, context = found.faces[0], found.source
        assert face.chip_transform is not None
        seed = 1234
        vectors = rec.enrollment_vectors(found, seed)
        assert vectors.shape == (3, rec.embedder.dim)
        rng = np.random.default_rng(seed)
        for k in range(2):
            masked = apply_mask(
                context, face.landmarks, rng=rng,
                raise_top=recognizer.COPY_RAISE_TOP, widen=recognizer.COPY_WIDEN,
            )  # fmt: skip
            # searched as the photo was (a border-free detector sees the crop itself)
            detected = detect_in_source(rec.detector, masked, found.border)
            near = [f for f in detected if iou(f.box, face.box)[0, 0] > 0.4]
            assert near, path  # the detector finds the synthetically masked face
            t = rec.embedder.chip_transform(
                max(near, key=lambda f: iou(f.box, face.box)[0, 0]).landmarks
            )
            assert np.allclose(rec.copy_transform(masked, face, found.border), t)
            moved += not np.allclose(t, face.chip_transform, atol=0.05)
            expected = rec.embedder.embed_image(masked, [t])[0]
            assert np.allclose(vectors[1 + k], expected, atol=1e-5)
    assert moved >= 6  # on real photos the masked face's landmarks differ from the unmasked ones
