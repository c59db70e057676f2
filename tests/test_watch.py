"""The camera loop over real footage: a video file and a folder, named by URI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from maskid.cli import main
from maskid.errors import UsageError
from maskid.imageio import load_image
from maskid.recognizer import Recognizer
from maskid.sources import Status, open_source


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, lfw10: Path) -> Path:
    """An MJPG clip: 4 frames of Colin Powell, then 4 of Hugo Chavez (real photos)."""
    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (250, 250))
    assert writer.isOpened()
    for name in ("Colin_Powell", "Hugo_Chavez"):
        for i in (4, 5, 6, 7):
            bgr = cv2.cvtColor(load_image(lfw10 / name / f"{name}_000{i}.jpg"), cv2.COLOR_RGB2BGR)
            writer.write(bgr)
    writer.release()
    return path


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, lfw10: Path) -> Path:
    g = tmp_path_factory.mktemp("g") / "gallery"
    rec = Recognizer(g)
    for name in ("Colin_Powell", "Hugo_Chavez", "Tony_Blair"):
        rec.enroll(name, [lfw10 / name / f"{name}_0002.jpg"])
    return g


def test_video_file_source_ends_with_eos(clip: Path) -> None:
    with open_source(str(clip)) as src:
        assert src.kind == "file"
        frames = list(src)
        assert len(frames) == 8 and frames[0].shape == (250, 250, 3)
        assert src.capture()[0] is Status.EOS


def test_folder_and_file_uri(lfw10: Path) -> None:
    folder = lfw10 / "Tony_Blair"
    with open_source(f"file://{folder}") as src:
        assert src.kind == "folder" and len(list(src)) == len(list(folder.glob("*.jpg")))


@pytest.mark.parametrize("uri", ["", "ftp://example/x", "/no/such/file.mp4", "csi://front"])
def test_bad_uris(uri: str) -> None:
    with pytest.raises(UsageError):
        open_source(uri)


def test_watch_recognizes_people_in_a_clip(clip: Path, gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "annotated.avi"
    result = CliRunner().invoke(
        main,
        ["watch", "--source", str(clip), "--gallery", str(gallery), "--json", "--out", str(out)],
    )
    assert result.exit_code == 0, result.stderr
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert [f["frame"] for f in frames] == list(range(8))
    # The best match per frame (the identity itself also depends on the model's threshold).
    names = [f["faces"][0]["matches"][0]["identity"] for f in frames]
    assert names[:4] == ["Colin_Powell"] * 4 and names[4:] == ["Hugo_Chavez"] * 4
    assert "watched 8 frames, analysed 8" in result.stderr
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    cap.release()


def test_watch_every_other_frame_and_missing_gallery(
    clip: Path, tmp_path: Path, gallery: Path
) -> None:
    result = CliRunner().invoke(
        main, ["watch", "--source", str(clip), "--gallery", str(gallery), "--every", "2"]
    )
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 4
    result = CliRunner().invoke(
        main, ["watch", "--source", str(clip), "--gallery", str(tmp_path / "none")]
    )
    assert result.exit_code == 5 and result.stderr.startswith("maskid: error:")
