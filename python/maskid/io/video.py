"""Camera and video input named by URI, as jetson-utils' videoSource does.

    0, /dev/video0, v4l2:///dev/video0   USB/V4L2 camera
    csi://0                  MIPI CSI camera on a Jetson (GStreamer nvarguscamerasrc)
    (cameras take ?width=1280&height=720&fps=30, and CSI also &flip=0..7)
    rtsp://host/stream       network stream (also rtsps://, rtmp://, http://, https://, udp://)
    "videotestsrc ! ... ! appsink"   a raw GStreamer pipeline (anything containing " ! ")
    file:///path/clip.mp4    video file (also a bare path)
    /path/to/folder          every image in the folder, sorted by name
    /path/to/photo.jpg       a single image

`open_source(uri)` returns a `VideoSource` whose `capture()` gives (Status, RGB frame or None):
OK, TIMEOUT (nothing new yet: ask again), EOS (a file or folder ended), or ERROR (it broke).

Live sources (cameras, streams, pipelines) are read on a thread that keeps only the newest
frame, so a slow consumer sees the present rather than a growing backlog, and a stalled read
cannot hang the caller. `open_source(..., reconnect=True)` wraps them so that a camera that is
unplugged or a stream that drops or stalls is reopened with exponential back-off, forever.
"""

from __future__ import annotations

import enum
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np

from maskid.errors import ImageError, UsageError
from maskid.io.images import IMAGE_SUFFIXES, load_image

LIVE_KINDS = ("csi", "v4l2", "stream", "gstreamer")


def _quiet_opencv() -> None:
    """Reconnect attempts are reported in one line each: keep OpenCV's and FFmpeg's own
    per-attempt warnings out of the log (unless the user set their log levels)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


class Status(enum.Enum):
    OK = "ok"
    TIMEOUT = "timeout"
    EOS = "end of stream"
    ERROR = "error"


class VideoSource:
    """Frames from a camera, stream, video file, folder or image (RGB uint8).

    Counters: `frames` delivered, `decode_errors` (frames or images that failed to decode,
    skipped), `dropped` (live frames replaced by a newer one before they were asked for),
    `reconnects`.
    """

    def __init__(self, uri: str, kind: str) -> None:
        self.uri = uri
        self.kind = kind  # "csi", "v4l2", "stream", "gstreamer", "file", "folder", "image"
        self.frames = 0
        self.decode_errors = 0
        self.dropped = 0
        self.reconnects = 0
        # perf_counter() when the last frame came in: before a file's read, or when a live
        # source's reader thread received it (the loop's latency counts from here).
        self.arrived = 0.0

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS

    @property
    def fps(self) -> float | None:
        """The nominal frame rate of a video file (None where unknown)."""
        return None

    def capture(self, timeout: float = 1.0) -> tuple[Status, np.ndarray | None]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames until the end of the stream (TIMEOUTs are retried, ERROR ends it)."""
        while True:
            status, frame = self.capture()
            if status is Status.OK and frame is not None:
                yield frame
            elif status is not Status.TIMEOUT:
                return

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r}, kind={self.kind!r})"


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def _open_capture(uri: str, target: str | int, api: int, params: list[int]) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(target, api, params) if params else cv2.VideoCapture(target, api)
    if not cap.isOpened():
        raise UsageError(f"cannot open video source {uri!r}")
    return cap


class _FileSource(VideoSource):
    """A video file, read frame by frame in the caller's thread (nothing is dropped)."""

    # Consecutive undecodable frames after which the rest of the file is taken as lost.
    MAX_BAD_RUN = 50

    def __init__(self, uri: str, path: str) -> None:
        super().__init__(uri, "file")
        self._cap = _open_capture(uri, path, cv2.CAP_ANY, [])
        # Frames in the container (0 where unknown: the first failed read ends the file).
        self._count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._reads = 0
        rate = float(self._cap.get(cv2.CAP_PROP_FPS) or 0)
        self._fps = rate if 0 < rate < 1000 else None

    @property
    def fps(self) -> float | None:
        return self._fps

    def capture(self, timeout: float = 1.0) -> tuple[Status, np.ndarray | None]:
        bad = 0
        self.arrived = time.perf_counter()
        while True:
            ok, frame = self._cap.read()
            self._reads += 1
            if ok and frame is not None:
                # Failed reads between two good frames were frames that did not decode: they
                # were skipped (a failing run that reaches the end is just the end).
                self.decode_errors += bad
                self.frames += 1
                return Status.OK, _to_rgb(frame)
            if self._reads >= self._count or bad >= self.MAX_BAD_RUN:
                return Status.EOS, None
            bad += 1

    def close(self) -> None:
        self._cap.release()


class _LiveSource(VideoSource):
    """A camera, stream or pipeline, read on its own thread; keeps only the newest frame.

    The reader thread owns the capture (OpenCV must not release a capture another thread is
    reading). A source that delivers nothing for `stall_s` seconds, or fails `max_misses`
    reads in a row, reports ERROR.
    """

    def __init__(
        self,
        uri: str,
        kind: str,
        target: str | int,
        api: int,
        params: list[int],
        stall_s: float = 5.0,
        max_misses: int = 25,
        settings: Sequence[tuple[int, float]] = (),
    ) -> None:
        super().__init__(uri, kind)
        self._cap = _open_capture(uri, target, api, params)
        for prop, value in settings:  # a camera's size and rate (it may pick the nearest)
            self._cap.set(prop, value)
        self._stall_s = stall_s
        self._max_misses = max_misses
        self._cond = threading.Condition()
        self._latest: np.ndarray | None = None
        self._latest_at = 0.0
        self._last_frame_at = time.monotonic()
        self._misses = 0
        self._broken = False
        self._stop = False
        self._thread = threading.Thread(target=self._read, name=f"maskid-source {uri}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        cap = self._cap
        try:
            while not self._stop:
                ok, frame = cap.read()
                with self._cond:
                    if ok and frame is not None:
                        if self._latest is not None:
                            self.dropped += 1  # the consumer was slower than the camera
                        self._latest = frame
                        self._latest_at = time.perf_counter()
                        self._last_frame_at = time.monotonic()
                        # Failed reads between two good frames were frames that did not decode
                        # (a run that never ends is a lost source, not bad frames).
                        self.decode_errors += self._misses
                        self._misses = 0
                    else:
                        self._misses += 1
                        if self._misses >= self._max_misses:
                            self._broken = True
                    self._cond.notify_all()
                if self._broken:
                    return
                if not ok:
                    time.sleep(0.02)  # a failing device answers at once: do not spin
        finally:
            cap.release()

    def capture(self, timeout: float = 1.0) -> tuple[Status, np.ndarray | None]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None and not self._broken:
                if time.monotonic() - self._last_frame_at > self._stall_s:
                    self._broken = True  # stalled: nothing new for stall_s seconds
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return Status.TIMEOUT, None
                self._cond.wait(min(left, 0.1))
            if self._latest is None:
                return Status.ERROR, None
            frame, self._latest = self._latest, None
            self.arrived = self._latest_at
        self.frames += 1
        return Status.OK, _to_rgb(frame)

    def close(self) -> None:
        self._stop = True
        # A read blocked in the driver cannot be interrupted; the daemon thread releases the
        # capture when that read returns.
        self._thread.join(timeout=2.0)


class _ImageSource(VideoSource):
    """A folder of images (sorted by name) or a single image, as a finite stream."""

    def __init__(self, uri: str, kind: str, paths: list[Path]) -> None:
        super().__init__(uri, kind)
        self._paths = paths
        self._next = 0

    def capture(self, timeout: float = 1.0) -> tuple[Status, np.ndarray | None]:
        while self._next < len(self._paths):
            path = self._paths[self._next]
            self._next += 1
            self.arrived = time.perf_counter()
            try:
                frame = load_image(path)
            except ImageError:
                self.decode_errors += 1  # a bad file in a folder is skipped, like a bad frame
                continue
            self.frames += 1
            return Status.OK, frame
        return Status.EOS, None


class ReconnectingSource(VideoSource):
    """A live source that is reopened with exponential back-off whenever it breaks, ends or
    cannot be opened (a camera plugged in later, a stream that drops). Never returns ERROR or
    EOS: it returns TIMEOUT while it waits."""

    def __init__(
        self,
        uri: str,
        kind: str,
        opener: Callable[[], VideoSource],
        backoff: tuple[float, float] = (0.5, 30.0),
        notify: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(uri, kind)
        _quiet_opencv()
        self._opener = opener
        self._first, self._max = backoff
        self._delay = self._first
        self._notify = notify or (lambda message: None)
        self._inner: VideoSource | None = None
        self._retry_at = 0.0
        self._opened_once = False
        self._old_counts = (0, 0)

    def _attempt(self) -> None:
        try:
            self._inner = self._opener()
        except UsageError as e:
            self._schedule(str(e))
            return
        if self._opened_once:
            self.reconnects += 1
            self._notify(f"source {self.uri}: reconnected")
        self._opened_once = True
        self._delay = self._first

    def _schedule(self, why: str) -> None:
        self._notify(f"{why}; retrying in {self._delay:.1f} s")
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self._max)

    def capture(self, timeout: float = 1.0) -> tuple[Status, np.ndarray | None]:
        if self._inner is None:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, timeout))
                return Status.TIMEOUT, None
            self._attempt()
            if self._inner is None:
                return Status.TIMEOUT, None
        status, frame = self._inner.capture(timeout)
        if status in (Status.ERROR, Status.EOS):
            self._retire()
            self._schedule(f"source {self.uri}: {status.value}")
            return Status.TIMEOUT, None
        if status is Status.OK:
            self.frames += 1
            self.arrived = self._inner.arrived
        self._sync_counts()
        return status, frame

    def _sync_counts(self) -> None:
        if self._inner is not None:
            now = (self._inner.decode_errors, self._inner.dropped)
            self.decode_errors += now[0] - self._old_counts[0]
            self.dropped += now[1] - self._old_counts[1]
            self._old_counts = now

    def _retire(self) -> None:
        if self._inner is not None:
            self._sync_counts()
            self._inner.close()
            self._inner = None
            self._old_counts = (0, 0)

    def close(self) -> None:
        self._retire()


def has_gstreamer() -> bool:
    """Whether this OpenCV can run GStreamer pipelines (JetPack's can; PyPI's wheels cannot)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


CAMERA_OPTIONS = ("width", "height", "fps", "flip")


def camera_options(uri: str, query: str) -> dict[str, int]:
    """`?width=1280&height=720&fps=30&flip=2` of a camera URI (flip: nvvidconv's flip-method,
    CSI only), as non-negative integers; UsageError on anything else."""
    options: dict[str, int] = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if key not in CAMERA_OPTIONS:
            raise UsageError(
                f"unknown camera option {key!r} in {uri!r} (known: {', '.join(CAMERA_OPTIONS)})"
            )
        value = values[-1]
        if not value.isdigit() or (key != "flip" and int(value) == 0):
            raise UsageError(f"camera option {key}={value!r} in {uri!r} is not a valid number")
        options[key] = int(value)
    if options.get("flip", 0) > 7:
        raise UsageError(f"flip must be 0..7 (nvvidconv flip-method) in {uri!r}")
    return options


def csi_pipeline(
    sensor: int, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0
) -> str:
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={width}, "
        f"height={height}, framerate={fps}/1 ! nvvidconv flip-method={flip} ! "
        "video/x-raw, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1"
    )


def _need_gstreamer(uri: str) -> None:
    if not has_gstreamer():
        raise UsageError(
            f"video source {uri!r} needs OpenCV built with GStreamer (JetPack's is; the PyPI "
            "wheels are not: see docs/jetson.md)"
        )


def open_source(
    uri: str,
    reconnect: bool = False,
    stall_s: float = 5.0,
    notify: Callable[[str], None] | None = None,
) -> VideoSource:
    """Open a camera, stream, pipeline, video file, folder or image by URI (module docstring).

    A malformed URI, a missing file or an unsupported protocol raises UsageError at once. With
    `reconnect`, a live source that cannot be opened (yet) or breaks later is retried with
    back-off (`notify` hears about each attempt) instead of raising or ending.
    """
    text = str(uri).strip()
    if not text:
        raise UsageError("empty video source URI")
    live = _live_spec(text, stall_s)
    if live is not None:
        kind, opener = live
        if reconnect:
            return ReconnectingSource(text, kind, opener, notify=notify)
        return opener()
    parsed = urlparse(text)
    path = Path(parsed.path if parsed.scheme.lower() == "file" else text)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UsageError(f"{path}: no images in this folder")
        return _ImageSource(text, "folder", images)
    if not path.exists():
        raise UsageError(f"video source {uri!r} does not exist")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _ImageSource(text, "image", [path])
    return _FileSource(text, str(path))


def _live_spec(text: str, stall_s: float) -> tuple[str, Callable[[], VideoSource]] | None:
    """(kind, opener) for a live source URI; None for files and folders; UsageError if bad."""
    parsed = urlparse(text)
    scheme = parsed.scheme.lower() if len(parsed.scheme) > 1 else ""  # "C:" is not a scheme

    def live(
        kind: str,
        target: str | int,
        api: int,
        params: list[int] | None = None,
        settings: Sequence[tuple[int, float]] = (),
    ) -> tuple[str, Callable[[], VideoSource]]:
        return kind, lambda: _LiveSource(
            text, kind, target, api, params or [], stall_s, settings=settings
        )

    if " ! " in text:
        _need_gstreamer(text)
        return live("gstreamer", text, cv2.CAP_GSTREAMER)
    if scheme == "csi":
        sensor = (parsed.netloc or parsed.path.strip("/")) or "0"
        if not sensor.isdigit():
            raise UsageError(f"bad CSI camera URI {text!r} (expected csi://0)")
        options = camera_options(text, parsed.query)
        _need_gstreamer(text)
        return live("csi", csi_pipeline(int(sensor), **options), cv2.CAP_GSTREAMER)
    index = not scheme and parsed.path.isdigit()
    if scheme == "v4l2" or (not scheme and parsed.path.startswith("/dev/video")) or index:
        options = camera_options(text, parsed.query)
        if "flip" in options:
            raise UsageError(f"flip is a CSI camera option, not one of {text!r}")
        props = {"width": cv2.CAP_PROP_FRAME_WIDTH, "height": cv2.CAP_PROP_FRAME_HEIGHT}
        props["fps"] = cv2.CAP_PROP_FPS
        settings = [(props[k], float(v)) for k, v in options.items()]
        device: str | int = int(parsed.path) if index else parsed.path
        return live("v4l2", device, cv2.CAP_V4L2, settings=settings)
    if scheme in ("rtsp", "rtsps", "rtmp", "http", "https", "udp"):
        # FFmpeg's own timeouts, so a dead host does not block an open or a read for minutes.
        ms = max(1000, int(stall_s * 1000))
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return live("stream", text, cv2.CAP_FFMPEG, timeouts)
    if scheme and scheme != "file":
        raise UsageError(f"unknown video source protocol {scheme!r} in {text!r}")
    return None


class RateMeter:
    """Events per second over a sliding window (the camera loop's FPS)."""

    def __init__(self, window: int = 30) -> None:
        self._times: list[float] = []
        self._window = window

    def tick(self) -> float:
        self._times.append(time.perf_counter())
        self._times = self._times[-self._window :]
        return self.rate

    @property
    def rate(self) -> float:
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])
