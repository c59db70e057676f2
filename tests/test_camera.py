"""The camera loop on real footage: video built from lfw10 photos, read as a file, a folder
and an HTTP stream that drops; tracking, embedding schedule, events, recording, signals."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from maskid.apps.camera import STAGES, CameraOptions, FacePipeline, run_camera
from maskid.apps.cli import main
from maskid.apps.tracker import IouTracker, Track
from maskid.errors import UsageError
from maskid.face import Face, iou
from maskid.io.images import load_image
from maskid.io.video import Status, camera_options, csi_pipeline, has_gstreamer, open_source
from maskid.pipeline.recognizer import Recognizer

PEOPLE = ("Colin_Powell", "Hugo_Chavez")
PER_PERSON = 12


def write_clip(path: Path, lfw10: Path, per_person: int, people: tuple[str, ...] = PEOPLE) -> Path:
    """640x480 MJPG: each person's photo in turn, pasted on a grey frame and sliding 3 px per
    frame; the second person enters on the right (an IoU tracker cannot tell two people apart
    at the same spot across a cut)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (640, 480))
    assert writer.isOpened()
    for k, name in enumerate(people):
        photo = load_image(lfw10 / name / f"{name}_0004.jpg")
        for i in range(per_person):
            frame = np.full((480, 640, 3), 90, np.uint8)
            x = min(40 + 310 * k + 3 * i, 640 - 250)
            frame[100:350, x : x + 250] = photo
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, lfw10: Path) -> Path:
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.avi", lfw10, PER_PERSON)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, lfw10: Path) -> Path:
    g = tmp_path_factory.mktemp("g") / "gallery"
    rec = Recognizer(g)
    for name in (*PEOPLE, "Tony_Blair"):
        rec.enroll(name, [lfw10 / name / f"{name}_0002.jpg"])
    return g


# -- sources ------------------------------------------------------------------------------
def test_video_file_ends_with_eos(clip: Path) -> None:
    with open_source(str(clip)) as src:
        assert src.kind == "file" and not src.live and src.fps == pytest.approx(10.0)
        frames = list(src)
        assert len(frames) == 2 * PER_PERSON and frames[0].shape == (480, 640, 3)
        assert src.capture()[0] is Status.EOS and src.decode_errors == 0


def test_undecodable_frames_are_skipped_and_counted(clip: Path, tmp_path: Path) -> None:
    data = bytearray(clip.read_bytes())
    starts = [i for i in range(len(data) - 3) if data[i : i + 3] == b"\xff\xd8\xff"]
    assert len(starts) == 2 * PER_PERSON
    for k in (5, 6):  # blank two JPEG frames inside the AVI, keeping the container intact
        data[starts[k] : starts[k + 1] - 8] = bytes(starts[k + 1] - 8 - starts[k])
    bad = tmp_path / "bad.avi"
    bad.write_bytes(bytes(data))
    with open_source(str(bad)) as src:
        assert len(list(src)) == 2 * PER_PERSON - 2
        assert src.decode_errors == 2


def test_folder_skips_and_counts_bad_images(lfw10: Path, tmp_path: Path) -> None:
    for p in sorted((lfw10 / "Tony_Blair").glob("*.jpg"))[:2]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "broken.jpg").write_text("not a picture")
    with open_source(f"file://{tmp_path}") as src:
        assert src.kind == "folder" and len(list(src)) == 2 and src.decode_errors == 1


@pytest.mark.parametrize("uri", ["", "ftp://example/x", "/no/such/file.mp4", "csi://front"])
def test_bad_uris(uri: str) -> None:
    with pytest.raises(UsageError):
        open_source(uri)


@pytest.mark.skipif(has_gstreamer(), reason="this OpenCV has GStreamer")
@pytest.mark.parametrize("uri", ["csi://0", "videotestsrc ! videoconvert ! appsink"])
def test_gstreamer_sources_say_what_is_missing(uri: str) -> None:
    with pytest.raises(UsageError, match="GStreamer"):
        open_source(uri)


def test_camera_options_in_the_uri() -> None:
    assert camera_options("csi://0", "width=1920&height=1080&fps=60&flip=2") == {
        "width": 1920,
        "height": 1080,
        "fps": 60,
        "flip": 2,
    }
    pipeline = csi_pipeline(1, width=1920, height=1080, flip=2)
    assert "sensor-id=1" in pipeline and "width=1920, height=1080" in pipeline
    assert "flip-method=2" in pipeline and pipeline.endswith("appsink drop=true max-buffers=1")
    for uri in (
        "0?exposure=3",
        "0?width=0",
        "0?width=wide",
        "/dev/video0?flip=1",
        "csi://0?flip=9",
    ):
        with pytest.raises(UsageError):
            open_source(uri)


@pytest.mark.skipif(Path("/dev/video0").exists(), reason="this machine has a camera")
def test_missing_camera_is_a_usage_error_or_waits_with_reconnect() -> None:
    with pytest.raises(UsageError, match="cannot open"):
        open_source("0?width=640&height=480")
    notices: list[str] = []
    with open_source("/dev/video0", reconnect=True, notify=notices.append) as src:
        assert src.capture(timeout=0.1) == (Status.TIMEOUT, None)
    assert notices and "retrying in 0.5 s" in notices[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_later(folder: Path, port: int, delay: float) -> Iterator[None]:
    """An HTTP server for `folder` that starts listening only after `delay` seconds."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    started: list[ThreadingHTTPServer] = []

    def start() -> None:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        started.append(server)
        server.serve_forever(poll_interval=0.05)

    timer = threading.Timer(delay, start)
    timer.start()
    try:
        yield
    finally:
        while not started:  # the timer thread runs the server: stop it, then join
            time.sleep(0.01)
        started[0].shutdown()
        started[0].server_close()
        timer.join()


def test_stream_that_is_down_then_drops_is_reopened(
    lfw10: Path, gallery: Path, tmp_path: Path
) -> None:
    """A camera started before its stream exists waits with back-off, then plays; each time the
    (3-frame) stream ends it is reopened, so 7 frames need at least two reconnects."""
    write_clip(tmp_path / "short.avi", lfw10, 3, people=("Colin_Powell",))
    port = _free_port()
    notices: list[str] = []
    events: list[str] = []
    rec = Recognizer(gallery)
    rec.gallery(), rec.detector, rec.embedder  # loaded first: the stream must be down at start
    with serve_later(tmp_path, port, delay=2.0):
        stats = run_camera(
            rec,
            f"http://127.0.0.1:{port}/short.avi",
            max_frames=7,
            display=False,
            as_json=True,
            echo=events.append,
            notify=notices.append,
        )
    assert stats.frames == 7 and stats.stopped_by == "--max-frames"
    assert stats.reconnects >= 2, notices
    assert any("cannot open" in n and "retrying in" in n for n in notices), notices
    assert sum("reconnected" in n for n in notices) == stats.reconnects
    assert json.loads(events[0])["matches"][0]["identity"] == "Colin_Powell"


# -- tracking -----------------------------------------------------------------------------
def _face(x1: float, y1: float, x2: float, y2: float) -> Face:
    return Face(box=np.array([x1, y1, x2, y2], float), score=1.0, landmarks=np.zeros((5, 2)))


def test_iou() -> None:
    a = np.array([[0, 0, 10, 10]])
    assert iou(a, a)[0, 0] == pytest.approx(1.0)
    assert iou(a, np.array([[20, 20, 30, 30]]))[0, 0] == 0.0
    assert iou(a, np.array([[5, 0, 15, 10]]))[0, 0] == pytest.approx(50 / 150)


def test_tracker_links_by_overlap_and_drops_after_misses() -> None:
    tracker = IouTracker(max_missed=1)
    new, _ = tracker.update([_face(0, 0, 100, 100), _face(300, 0, 400, 100)], 0)
    assert [t.id for t in new] == [1, 2]
    # The faces moved a little and swapped order in the detector's list: ids follow the boxes.
    new, dropped = tracker.update([_face(310, 5, 410, 105), _face(8, 4, 108, 104)], 1)
    assert not new and not dropped
    assert {t.id: float(t.box[0]) for t in tracker.tracks} == {1: 8.0, 2: 310.0}
    tracker.update([_face(10, 5, 110, 105)], 2)  # track 2 unseen once: kept
    _, dropped = tracker.update([_face(12, 5, 112, 105)], 3)  # twice: dropped
    assert [t.id for t in dropped] == [2] and [t.id for t in tracker.tracks] == [1]


def test_tracker_schedules_embeddings() -> None:
    tracker = IouTracker(embed_every=5, move_iou=0.5)
    tracker.update([_face(0, 0, 100, 100)], 0)
    (track,) = tracker.due(0)
    tracker.record(track, "Ada", 0.97, 0)
    due = []
    for frame in range(1, 12):
        tracker.update([_face(frame, 0, 100 + frame, 100)], frame)  # drifting slowly
        for t in tracker.due(frame):
            tracker.record(t, "Ada", 0.97, frame)
            due.append(frame)
    assert due == [5, 10]
    tracker.update([_face(60, 0, 160, 100)], 12)  # a jump: IoU to the last embedding < 0.5
    assert tracker.due(12) == [track]


def test_tracker_spreads_refreshes_of_faces_that_appeared_together() -> None:
    tracker = IouTracker(embed_every=3, max_refresh=2)
    faces = [_face(200 * i, 0, 200 * i + 100, 100) for i in range(5)]
    tracker.update(faces, 0)
    assert len(tracker.due(0)) == 5  # new faces are embedded at once, whatever the budget
    for t in tracker.due(0):
        tracker.record(t, None, 0.5, 0)
    refreshed: dict[int, list[int]] = {}
    for frame in range(1, 9):
        tracker.update(faces, frame)
        due = tracker.due(frame)
        assert len(due) <= 2
        for t in due:
            tracker.record(t, None, 0.5, frame)
            refreshed.setdefault(frame, []).append(t.id)
    assert refreshed[3] == [1, 2] and refreshed[4] == [3, 4] and refreshed[5] == [5]
    tracker.update([_face(35, 0, 135, 100), *faces[1:]], 9)  # track 1 moved: it goes first
    assert tracker.due(9)[0].id == 1


def test_track_identity_is_a_vote() -> None:
    track = Track(id=1, face=_face(0, 0, 1, 1), first_frame=0, last_seen=0)
    assert track.identity is None and track.score is None and not track.recognized
    track.votes = deque([("Ada", 0.97), (None, 0.90), ("Ada", 0.99), ("Bob", 0.97)])
    assert track.identity == "Ada" and track.score == pytest.approx(0.98)
    track.votes = deque([("Ada", 0.97), ("Bob", 0.98)])  # a tie goes to the latest
    assert track.identity == "Bob"


# -- the pipeline and the loop ------------------------------------------------------------
def test_pipeline_embeds_on_appearance_and_every_n_frames(clip: Path, gallery: Path) -> None:
    pipeline = FacePipeline(Recognizer(gallery), CameraOptions(embed_every=5))
    results = []
    with open_source(str(clip)) as src:
        for i, frame in enumerate(src):
            results.append(pipeline.process(frame, i))
    assert all(len(r.tracks) == 1 for r in results)
    ids = [r.tracks[0].id for r in results]
    assert ids == [1] * PER_PERSON + [2] * PER_PERSON  # one track per person, a new one at the cut
    embedded = [r.index for r in results if r.embedded]
    assert embedded == [0, 5, 10, 12, 17, 22]  # 6 embeddings for 24 frames
    for r in results:
        assert (r.timings["embed"] > 0) == bool(r.embedded) and r.timings["detect"] > 0
    names = [r.tracks[0].face.matches[0].identity for r in results]
    assert names == [PEOPLE[0]] * PER_PERSON + [PEOPLE[1]] * PER_PERSON


def test_a_track_whose_votes_turn_reports_a_change(
    lfw10: Path, gallery: Path, tmp_path: Path
) -> None:
    """With track splitting off (--split-margin -1), two people at the same spot across a hard
    cut share one IoU track; re-embeddings vote the new name in and a "changed" event reports
    it (threshold -1 so every face gets its nearest name, whatever the model's cosine scale).
    The default splits instead: see below."""
    video = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (640, 480))
    for name in PEOPLE:
        frame = np.full((480, 640, 3), 90, np.uint8)
        frame[100:350, 200:450] = load_image(lfw10 / name / f"{name}_0004.jpg")
        for _ in range(8):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    options = CameraOptions(embed_every=2, votes=3, threshold=-1.0, split_margin=-1.0)
    pipeline = FacePipeline(Recognizer(gallery), options)
    with open_source(str(video)) as src:
        events = [e for i, f in enumerate(src) for e in pipeline.process(f, i).events]
    assert [(e["event"], e["track"], e["identity"]) for e in events] == [
        ("recognized", 1, PEOPLE[0]),
        ("changed", 1, PEOPLE[1]),
    ]
    assert 8 < events[1]["frame"] <= 8 + 2 * 2  # two of three votes after the cut


# People shown one after another at one spot: a queue at a door, or cuts in a video. The rule
# that picks them: two people enrolled in `gallery`, the first lfw10 person not enrolled, and the
# demo's masked newcomer (a real mask, not enrolled). Photos: `_0004` as in the clips above, but
# the stranger's `_0004` shows two bystanders, so theirs is their first photo with one face
# (`_0001`); the newcomer's 128 px crop is scaled and bordered to the size of an LFW face.
SEGMENT = 16  # frames per person: more than --embed-every's default (15), as a person in view
STRANGER = "Ariel_Sharon"


def write_queue(path: Path, lfw10: Path) -> list[tuple[str | None, np.ndarray]]:
    """A 640x480 MJPG clip: each person's photo in turn at the same spot, SEGMENT frames each.
    Returns (enrolled name or None, photo) per person, in order."""
    from maskid.apps.demo import QUERY_PHOTO

    crop = cv2.resize(load_image(QUERY_PHOTO), (120, 120), interpolation=cv2.INTER_AREA)
    masked = cv2.copyMakeBorder(crop, 65, 65, 65, 65, cv2.BORDER_REPLICATE)  # 250 x 250
    people: list[tuple[str | None, np.ndarray]] = [
        (PEOPLE[0], load_image(lfw10 / PEOPLE[0] / f"{PEOPLE[0]}_0004.jpg")),
        (None, load_image(lfw10 / STRANGER / f"{STRANGER}_0001.jpg")),
        (None, masked),
        (PEOPLE[1], load_image(lfw10 / PEOPLE[1] / f"{PEOPLE[1]}_0004.jpg")),
    ]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (640, 480))
    assert writer.isOpened()
    for _, photo in people:
        frame = np.full((480, 640, 3), 90, np.uint8)
        frame[100:350, 200:450] = photo
        for _ in range(SEGMENT):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return people


def test_people_in_turn_at_one_spot_each_get_their_own_track(
    lfw10: Path, gallery: Path, tmp_path: Path
) -> None:
    """Four people, one after another where the last one stood (one IoU track would span them
    all): each new face falls below the split margin against the track's recent descriptors, so
    the track ends ("lost") and a new one starts ("recognized"), once per person, with the
    camera command's defaults."""
    clip = tmp_path / "queue.avi"
    people = write_queue(clip, lfw10)
    args = ["camera", "--source", str(clip), "--gallery", str(gallery), "--json", "--threads", "1"]
    result = CliRunner().invoke(main, [*args, "--no-display"])
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    print([(e["event"], e["frame"], e["track"], e["identity"], e["score"]) for e in events])
    kinds = [(e["event"], e["track"]) for e in events]
    expected = []
    for k in range(len(people)):
        expected += [("recognized", k + 1), ("lost", k + 1)]
    assert kinds == expected
    recognized = [e for e in events if e["event"] == "recognized"]
    threshold = Recognizer(gallery).threshold
    for k, (event, (name, _)) in enumerate(zip(recognized, people, strict=True)):
        # Each person is named (or found unknown) while they are in view, not the one before.
        assert k * SEGMENT <= event["frame"] < (k + 1) * SEGMENT, event
        if name is not None:
            assert event["matches"][0]["identity"] == name
            assert (event["identity"] == name) == (event["score"] >= threshold)
        else:
            assert event["identity"] is None  # not enrolled: nobody's name
    for lost, nxt in zip(events[1::2], recognized[1:], strict=False):
        assert lost["frame"] == nxt["frame"]  # the old track ends where the new one starts


def test_split_margin_separates_people_on_lfw10_photos_not_used_to_measure_it(
    lfw10: Path,
) -> None:
    """The default model's measured margin (on the bundled photos) applied to the lfw10 photos
    that are not bundled (76): different people fall below it, the same person mostly not."""
    from maskid.apps.camera import split_margin
    from maskid.paths import PACKAGE_DATA

    rec = Recognizer(Path("unused"))
    margin = split_margin(rec)
    bundled = {p.name for p in (PACKAGE_DATA / "demo" / "celebrities").glob("*/*.jpg")}
    vectors, who = [], []
    for path in sorted(lfw10.glob("*/*.jpg")):
        if path.name in bundled:
            continue
        faces = rec.analyze(path)
        assert faces, path
        d = faces[0].descriptor
        vectors.append(d / np.linalg.norm(d))
        who.append(path.parent.name)
    sims = np.stack(vectors) @ np.stack(vectors).T
    upper = np.triu_indices(len(who), 1)
    same = (np.array(who)[:, None] == np.array(who)[None, :])[upper]
    kept_apart = float((sims[upper][~same] < margin).mean())
    split_same = float((sims[upper][same] < margin).mean())
    print(f"margin {margin:.4f}: different people split {kept_apart:.4f}, same {split_same:.4f}")
    assert len(who) == 76
    assert kept_apart >= 0.98  # (0.996 for maskid-eyes-v1, 1.000 for edgeface-xs and omz)
    assert split_same <= 0.15  # photos of other occasions (0.097, 0.035, 0.085)


def test_split_margin_option_is_checked(gallery: Path, clip: Path) -> None:
    args = ["camera", "--source", str(clip), "--gallery", str(gallery)]
    bad = CliRunner().invoke(main, [*args, "--split-margin", "1.5"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "--split-margin" in bad.stderr


def test_pipeline_detects_every_k_frames(clip: Path, gallery: Path) -> None:
    pipeline = FacePipeline(Recognizer(gallery), CameraOptions(detect_every=3))
    with open_source(str(clip)) as src:
        results = [pipeline.process(frame, i) for i, frame in enumerate(src)]
    assert [r.index for r in results if r.detected] == list(range(0, 2 * PER_PERSON, 3))
    assert all((r.timings["detect"] > 0) == r.detected for r in results)
    assert all(len(r.tracks) == 1 for r in results)  # tracks hold their box in between


def test_camera_cli_events_and_recording(clip: Path, gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "annotated.mp4"
    args = ["camera", "--source", str(clip), "--gallery", str(gallery), "--json", "--threads", "1"]
    result = CliRunner().invoke(main, [*args, "--output", str(out), "--no-display"])
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["event"], e["track"]) for e in events] == [
        ("recognized", 1),
        ("recognized", 2),
        ("lost", 1),
        ("lost", 2),
    ]
    for event, name in zip(events[:2], PEOPLE, strict=True):
        assert event["matches"][0]["identity"] == name
        assert event["score"] == pytest.approx(event["matches"][0]["score"], abs=1e-4)
        assert (event["identity"] is None) == (event["score"] < Recognizer(gallery).threshold)
        assert set(event["timings_ms"]) == set(STAGES) and event["latency_ms"] > 0
        assert len(event["box"]) == 4 and event["time"].endswith("+00:00")
    assert events[1]["frame"] == PER_PERSON
    assert f"camera: {2 * PER_PERSON} frames" in result.stderr
    assert "stopped by end of stream" in result.stderr
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2 * PER_PERSON
    cap.release()


def test_loop_runs_in_a_worker_thread(clip: Path, gallery: Path) -> None:
    """A library caller may run the loop off the main thread (no signal handlers there)."""
    out: list[object] = []
    worker = threading.Thread(
        target=lambda: out.append(
            run_camera(Recognizer(gallery), str(clip), display=False, echo=lambda _: None)
        )
    )
    worker.start()
    worker.join(timeout=60)
    assert out and out[0].frames == 2 * PER_PERSON  # type: ignore[attr-defined]


def test_camera_cli_errors(clip: Path, gallery: Path, tmp_path: Path) -> None:
    run = CliRunner().invoke
    missing = run(main, ["camera", "--source", str(clip), "--gallery", str(tmp_path / "none")])
    assert missing.exit_code == 5 and missing.stderr.startswith("maskid: error:")
    args = ["camera", "--source", str(clip), "--gallery", str(gallery)]
    for extra in (["--detect-every", "0"], ["--max-frames", "0"], ["--embed-every", "0"]):
        bad = run(main, args + extra)
        assert bad.exit_code == 2 and bad.stderr.count("\n") == 1, bad.stderr
    if "DISPLAY" not in os.environ:
        no_display = run(main, [*args, "--display"])
        assert no_display.exit_code == 2 and "no display" in no_display.stderr
    nosource = run(
        main, ["camera", "--source", str(tmp_path / "none.mp4"), "--gallery", str(gallery)]
    )
    assert nosource.exit_code == 2 and "does not exist" in nosource.stderr


def test_sigterm_stops_cleanly_and_flushes_the_recording(
    lfw10: Path, gallery: Path, tmp_path: Path
) -> None:
    long_clip = write_clip(tmp_path / "long.avi", lfw10, 400, people=("Hugo_Chavez",))
    out = tmp_path / "rec.mp4"
    cmd = [sys.executable, "-m", "maskid.apps.cli", "camera", "--source", str(long_clip)]
    cmd += ["--gallery", str(gallery), "--json", "--output", str(out), "--no-display"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert first["event"] == "recognized"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "stopped by signal" in stderr
    frames = int(stderr.split("camera: ")[1].split(" frames")[0])
    assert 0 < frames < 400
    assert json.loads(stdout.splitlines()[-1])["event"] == "lost"  # open tracks are closed
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames  # the file is complete and playable
    cap.release()
