"""`maskid camera`: the embedded camera loop (frames in, names out, all day).

Two layers, as jetson-inference separates its videoSource from its nets:
  `FacePipeline.process(frame)`: detect (every K frames) -> track -> align + embed only the
      tracks that are due -> search -> vote; returns the tracks, events and per-stage times.
      No I/O: the latency benchmark drives it directly.
  `run_camera(...)`: the loop around it: source (reconnecting), overlay, window, recording,
      JSON events, signals.

Events (one JSON object per line with --json): "recognized" when a track is first named (or
found unknown), "changed" when its voted identity changes, "lost" when it leaves, or when its
face is replaced by someone else's at the same spot (its new descriptor falls below the split
margin, `split_margin`: the track ends and a new one starts). Each has the
time, frame, track id, identity (null: unknown), score, box, the latency from the frame's
arrival to the event, per-stage times of that frame (ms) and the loop's FPS.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskid.apps.draw import annotate
from maskid.apps.tracker import IouTracker, Track
from maskid.errors import GalleryError, ImageError, UsageError
from maskid.io.video import RateMeter, Status, open_source
from maskid.pipeline.recognizer import Recognizer

STAGES = ("decode", "detect", "align", "embed", "search")


@dataclass
class CameraOptions:
    detect_every: int = 1  # run the detector on every K-th frame (tracks hold in between)
    embed_every: int = 15  # re-embed a still track every N frames
    move_iou: float = 0.5  # ... or at once when its box moved this much (IoU to last embed)
    votes: int = 5  # recent matches that name a track
    max_refresh: int = 2  # re-embeddings of known tracks per frame (new tracks: always)
    top_k: int = 3
    threshold: float | None = None  # None: the model's own
    # Cosine to the track's recent descriptors below which its face is someone else's
    # (None: measured for the model by `split_margin`; -1 never splits).
    split_margin: float | None = None

    def check(self) -> None:
        counts = (self.detect_every, self.embed_every, self.votes, self.top_k, self.max_refresh)
        if min(counts) < 1:
            raise UsageError(
                "--detect-every, --embed-every, --votes, --max-refresh and --top must be >= 1"
            )
        if not 0 < self.move_iou <= 1:
            raise UsageError("--move-iou must lie in (0, 1]")
        if self.split_margin is not None and not -1 <= self.split_margin <= 1:
            raise UsageError("--split-margin must lie in [-1, 1] (a cosine similarity)")


@dataclass
class FrameResult:
    index: int
    tracks: list[Track]  # visible now
    events: list[dict[str, Any]]
    timings: dict[str, float]  # ms per stage for this frame
    detected: bool  # the detector ran on this frame
    embedded: int  # faces embedded in this frame

    @property
    def total_ms(self) -> float:
        return float(sum(self.timings.values()))


class FacePipeline:
    """Per-frame recognition with tracking, embedding scheduling and voting (no I/O)."""

    def __init__(self, rec: Recognizer, options: CameraOptions | None = None) -> None:
        self.options = options or CameraOptions()
        self.options.check()
        self.rec = rec
        self.gallery = rec.gallery()
        if len(self.gallery) == 0:
            raise GalleryError(f"gallery {rec.gallery_location} is empty; enroll someone first")
        self.threshold = rec.threshold if self.options.threshold is None else self.options.threshold
        self.tracker = IouTracker(
            embed_every=self.options.embed_every,
            move_iou=self.options.move_iou,
            votes=self.options.votes,
            max_refresh=self.options.max_refresh,
        )
        self.rec.detector, self.rec.embedder  # noqa: B018 -- load the models before frame 0
        margin = self.options.split_margin
        self.split_margin = split_margin(rec) if margin is None else margin

    def process(self, frame: np.ndarray, index: int, decode_ms: float = 0.0) -> FrameResult:
        """Recognize the faces of one RGB frame. `decode_ms`: time its capture took."""
        started = time.perf_counter()
        timings = dict.fromkeys(STAGES, 0.0)
        timings["decode"] = decode_ms
        events: list[dict[str, Any]] = []
        detected = index % self.options.detect_every == 0
        if detected:
            with _timed(timings, "detect"):
                # Frames are large: a frame with nobody in it is not searched twice.
                found = self.rec.find_faces(frame, retry_with_border=False)
            # A small frame may come back bordered: tracks keep frame coordinates.
            _, dropped = self.tracker.update(found.to_image_coordinates(), index)
            events += [self._event("lost", t, index) for t in dropped if t.reported]
        due = self.tracker.due(index) if detected else []
        if due:
            faces = [t.face for t in due]
            descriptors = self.rec.describe(frame, faces, timings)
            with _timed(timings, "search"):
                self.rec.match(faces, top_k=self.options.top_k, threshold=self.threshold)
            embedded = []
            for track, d in zip(due, descriptors, strict=True):
                matches = track.face.matches
                similarity = self.tracker.similarity_to_recent(track, d)
                if similarity is not None and similarity < self.split_margin:
                    # Someone else at the same spot: the track ends, a new one starts.
                    if track.reported:
                        events.append(self._event("lost", track, index))
                    track = self.tracker.restart(track, index)
                best = matches[0]
                name = best.identity if best.score >= self.threshold else None
                self.tracker.record(track, name, best.score, index, d)
                track.face.matches = matches
                embedded.append(track)
            latency = decode_ms + (time.perf_counter() - started) * 1000
            for track in embedded:
                if not track.reported or track.identity != track.reported_identity:
                    kind = "changed" if track.reported else "recognized"
                    events.append(self._event(kind, track, index, latency))
                    track.reported, track.reported_identity = True, track.identity
        visible = [t for t in self.tracker.tracks if t.last_seen == self.tracker_frame(index)]
        for t in visible:
            t.face.identity, t.face.match_score = t.identity, t.score
        return FrameResult(index, visible, events, timings, detected, len(due))

    def finish(self, index: int) -> list[dict[str, Any]]:
        """The "lost" events of the tracks still open when the stream ends."""
        events = [self._event("lost", t, index) for t in self.tracker.tracks if t.reported]
        self.tracker.tracks = []
        return events

    def tracker_frame(self, index: int) -> int:
        """The last frame the detector ran on (tracks hold their boxes in between)."""
        return index - index % self.options.detect_every

    def _event(
        self, kind: str, track: Track, index: int, latency_ms: float | None = None
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "event": kind,
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "frame": index,
            "track": track.id,
            "identity": track.identity,
            "score": None if track.score is None else round(track.score, 4),
            "box": [round(float(v), 1) for v in track.box],
            # The latest search, best first: who came closest when the identity is unknown.
            "matches": [
                {"identity": m.identity, "score": round(float(m.score), 4)}
                for m in track.face.matches
            ],
        }
        if latency_ms is not None:
            event["latency_ms"] = round(latency_ms, 1)
        return event


# -- the split margin -------------------------------------------------------------------------
# How far a track's new descriptor may fall from its recent ones before the face is taken for
# someone else's. Cosine scales differ wildly between models (different people score ~0.90 with
# maskid-eyes-v1, ~0.05 with edgeface-xs), so no single number serves every model: the margin is
# measured per model, once (cached by the model's id, i.e. its weights' hash), on the bundled
# LFW photos (`data/demo/celebrities`: 8 people x 3 photos of different occasions): the cosines
# of same-person pairs (24) and of different-person pairs (252) are each summarised by a normal
# distribution, and the margin is where the two fitted distributions cross at equal error
# (same-person pairs below it as likely as different-person pairs above it). Gaussian fits,
# because with 24 same-person pairs the empirical distributions rarely overlap at all.
# Measured so, and checked on the 76 lfw10 photos not bundled (tests/test_camera.py):
#   maskid-eyes-v1: margin 0.928; on all of lfw10 (100 photos) 7.1% of the 450 same-person pairs
#     fall below it and 0.5% of the 4,500 different-person pairs reach it;
#   edgeface-xs: 0.329 (2.0% / 0.0%); omz-face-reid-0095: 0.466 (5.3% / 0.0%).
# Same-person pairs there are photos of different occasions; inside one track (seconds apart)
# they are closer still, so a track rarely splits on its own person. A mask put on or taken off
# in view may split it (a new track under the same name, if named): of 86 same-day unmasked vs
# masked M2FRED pairs (dev half), 17% fall below maskid-eyes-v1's margin, 42% below
# edgeface-xs's, 66% below omz-face-reid-0095's. `--split-margin` overrides; -1 never splits.
SPLIT_RULE = "gauss-eer-v1"  # bump when the measurement changes, so cached margins are redone


def split_margin(rec: Recognizer) -> float:
    """The split margin of `rec`'s embedder (measured once, then read from the cache)."""
    from maskid.paths import cache_dir

    model_id = rec.embedder.model_id
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in model_id)
    path = cache_dir() / "track-margin" / f"{safe}.{SPLIT_RULE}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        doc = json.loads(path.read_text())
        if doc["model_id"] == model_id:
            return float(doc["margin"])
    doc = measure_split_margin(rec)
    doc["model_id"] = model_id
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):  # a read-only cache only costs a re-measurement
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
    return float(doc["margin"])


def measure_split_margin(rec: Recognizer, photos: Path | None = None) -> dict[str, Any]:
    """Measure the split margin (see SPLIT_RULE above) on identity folders of photos (default:
    the bundled LFW celebrities): the equal-error point of normal fits to the same-person and
    different-person cosine similarities. Returns the margin with what it was measured on."""
    from maskid.face import l2_normalize
    from maskid.paths import PACKAGE_DATA
    from maskid.pipeline.recognizer import identity_images

    root = photos or PACKAGE_DATA / "demo" / "celebrities"
    vectors, owners = [], []
    for name, path in identity_images(root):
        faces = rec.analyze(path)
        if faces and faces[0].descriptor is not None:
            vectors.append(faces[0].descriptor)
            owners.append(name)
    who = np.array(owners)
    sims = l2_normalize(np.stack(vectors)) @ l2_normalize(np.stack(vectors)).T
    upper = np.triu_indices(len(who), 1)
    same_mask = (who[:, None] == who[None, :])[upper]
    same, diff = sims[upper][same_mask], sims[upper][~same_mask]
    if len(same) < 2 or len(diff) < 2:
        raise GalleryError(f"{root}: too few photos with a face to measure the split margin")
    ms, ss = float(same.mean()), float(same.std())
    md, sd = float(diff.mean()), float(diff.std())
    margin = (ms * sd + md * ss) / max(ss + sd, 1e-9)
    return {
        "margin": round(margin, 4),
        "rule": SPLIT_RULE,
        "photos": str(root),
        "same_person": {"pairs": len(same), "mean": round(ms, 4), "std": round(ss, 4)},
        "different_people": {"pairs": len(diff), "mean": round(md, 4), "std": round(sd, 4)},
    }


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    t = time.perf_counter()
    yield
    timings[stage] += (time.perf_counter() - t) * 1000


def overlay(frame: np.ndarray, result: FrameResult, fps: float) -> np.ndarray:
    """The frame with each track's box, id, name and score, and the stage times and FPS."""
    faces = [t.face for t in result.tracks]
    out = annotate(frame, faces, labels=[f"#{t.id}" for t in result.tracks])
    lines = [f"{fps:5.1f} fps  faces {len(faces)}"]
    lines.append("  ".join(f"{s} {result.timings[s]:.1f}" for s in STAGES) + " ms")
    scale = max(0.45, frame.shape[1] / 1400)
    thick = 1 if scale < 0.8 else 2
    sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0] for t in lines]
    line_h = max(h for _, h in sizes) + int(8 * scale / 0.45)
    width = max(w for w, _ in sizes) + 12
    panel = out[: line_h * len(lines) + 8, :width]
    panel[:] = (panel * 0.35).astype(np.uint8)  # darken under the text so it reads on any scene
    for k, text in enumerate(lines):
        y = line_h * (k + 1)
        cv2.putText(
            out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA
        )
    return out


class VideoOut:
    """Annotated frames to a video file, opened lazily at the first frame's size."""

    def __init__(self, path: Path, fps: float = 15.0) -> None:
        self.path = path
        self.fps = fps
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size = (0, 0)

    def write(self, frame_rgb: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mp4 = self.path.suffix.lower() == ".mp4"
            fourcc = cv2.VideoWriter.fourcc(*("mp4v" if mp4 else "MJPG"))
            self._size = (frame_rgb.shape[1], frame_rgb.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise ImageError(f"{self.path}: cannot write a video here (use .mp4 or .avi)")
        if (frame_rgb.shape[1], frame_rgb.shape[0]) != self._size:  # folders mix photo sizes
            frame_rgb = cv2.resize(frame_rgb, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()  # writes the container's index: the file is playable
            self._writer = None


class Window:
    """An OpenCV window, where this OpenCV has a GUI and a display exists."""

    NAME = "maskid"

    @staticmethod
    def available() -> bool:
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            return False
        for line in cv2.getBuildInformation().splitlines():
            if line.strip().startswith("GUI:"):
                return "NONE" not in line
        return False

    def show(self, frame_rgb: np.ndarray) -> bool:
        """Show the frame; False when the user pressed q / Esc or closed the window."""
        cv2.imshow(self.NAME, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        closed = cv2.getWindowProperty(self.NAME, cv2.WND_PROP_VISIBLE) < 1
        return key not in (ord("q"), 27) and not closed

    def close(self) -> None:
        # It may never have been shown (no frame came) or the user closed it already.
        with contextlib.suppress(cv2.error):
            cv2.destroyWindow(self.NAME)


@contextmanager
def _stop_on_signals(stop: list[bool]) -> Iterator[None]:
    """SIGINT / SIGTERM end the loop after the current frame (so the recording is flushed)."""

    def handler(signum: int, _frame: object) -> None:
        stop[0] = True

    if threading.current_thread() is not threading.main_thread():
        yield  # Python delivers signals to the main thread only: the caller handles them there
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class LoopStats:
    frames: int = 0
    events: int = 0
    decode_errors: int = 0
    dropped: int = 0
    reconnects: int = 0
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    elapsed_s: float = 0.0
    stopped_by: str = "end of stream"

    def summary(self) -> str:
        fps = self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0
        stages = ", ".join(
            f"{s} {np.mean(v):.1f}" for s, v in self.stage_ms.items() if v and np.mean(v) > 0
        )
        return (
            f"camera: {self.frames} frames in {self.elapsed_s:.1f} s ({fps:.1f} fps), "
            f"{self.events} events, {self.decode_errors} undecodable frames skipped, "
            f"{self.dropped} live frames dropped, {self.reconnects} reconnects; "
            f"mean ms per frame: {stages or '-'}; stopped by {self.stopped_by}"
        )


def run_camera(
    rec: Recognizer,
    source: str,
    options: CameraOptions | None = None,
    output: Path | None = None,
    as_json: bool = False,
    display: bool | None = None,
    max_frames: int | None = None,
    echo: Callable[[str], None] = print,
    notify: Callable[[str], None] = print,
) -> LoopStats:
    """Run the loop until the source ends, max_frames, q/Esc, SIGINT or SIGTERM.

    display None: a window where one can be shown. Events go to `echo` (JSON lines with
    as_json, else one readable line each); source notices (reconnects) go to `notify`.
    """
    if max_frames is not None and max_frames < 1:
        raise UsageError("--max-frames must be >= 1")
    if display and not Window.available():
        raise UsageError(
            "no display here (or this OpenCV has no GUI, as opencv-python-headless); "
            "use --no-display, --output or --json"
        )
    pipeline = FacePipeline(rec, options)  # fails on an empty gallery before opening a camera
    window = Window() if (display or (display is None and Window.available())) else None
    stats = LoopStats()
    meter = RateMeter()
    stop = [False]
    start = time.perf_counter()
    src = open_source(source, reconnect=True, notify=notify)
    # A file is recorded at its own rate; a live source at a nominal 15 fps.
    video = VideoOut(output, fps=src.fps or 15.0) if output is not None else None
    try:
        with _stop_on_signals(stop), src:
            while not stop[0] and (max_frames is None or stats.frames < max_frames):
                status, frame = src.capture(timeout=0.5)
                # From the frame's arrival: a file's read and decode; for a live source, the
                # time the newest frame waited for the loop (its decode ran on the reader thread).
                decode_ms = (time.perf_counter() - src.arrived) * 1000
                if status is Status.TIMEOUT:
                    continue
                if status is not Status.OK or frame is None:
                    break  # a file or folder ended (live sources reconnect instead)
                result = pipeline.process(frame, stats.frames, decode_ms)
                stats.frames += 1
                fps = meter.tick()
                for s in STAGES:
                    stats.stage_ms[s].append(result.timings[s])
                for event in result.events:
                    event["timings_ms"] = {s: round(result.timings[s], 2) for s in STAGES}
                    event["fps"] = round(fps, 1)
                    echo(json.dumps(event) if as_json else _event_line(event))
                stats.events += len(result.events)
                if video is not None or window is not None:
                    picture = overlay(frame, result, fps)
                    if video is not None:
                        video.write(picture)
                    if window is not None and not window.show(picture):
                        stats.stopped_by = "window closed"
                        break
            for event in pipeline.finish(stats.frames):
                echo(json.dumps(event) if as_json else _event_line(event))
                stats.events += 1
            if stop[0]:
                stats.stopped_by = "signal"
            elif max_frames is not None and stats.frames >= max_frames:
                stats.stopped_by = "--max-frames"
            stats.decode_errors, stats.dropped = src.decode_errors, src.dropped
            stats.reconnects = src.reconnects
    finally:
        if video is not None:
            video.close()
        if window is not None:
            window.close()
    stats.elapsed_s = time.perf_counter() - start
    return stats


def _event_line(event: dict[str, Any]) -> str:
    who = event["identity"] or "unknown"
    score = "-" if event["score"] is None else f"{event['score']:.3f}"
    if event["identity"] is None and event["matches"]:  # as `recognize` says it
        who, score = f"unknown \u2014 nearest: {event['matches'][0]['identity']}", score
    latency = f"  ({event['latency_ms']:.0f} ms)" if "latency_ms" in event else ""
    return f"{event['time']}  frame {event['frame']}  #{event['track']} {event['event']}: {who} {score}{latency}"
