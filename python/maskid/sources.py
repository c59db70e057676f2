"""Camera and video input named by URI, as jetson-utils' videoSource does.

    csi://0                  MIPI CSI camera on a Jetson (GStreamer nvarguscamerasrc)
    v4l2:///dev/video0       USB/V4L2 camera (also a bare /dev/video0, or a bare index "0")
    rtsp://host/stream       network stream (also http://, https://, rtmp://)
    file:///path/clip.mp4    video file (also a bare path)
    /path/to/folder          every image in the folder, sorted by name
    /path/to/photo.jpg       a single image

`open_source(uri)` returns a `VideoSource` whose `capture()` gives (Status, RGB frame or None):
OK, TIMEOUT (a live source gave nothing this time: try again), EOS (a file or folder ended), or
ERROR (the source broke).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np

from maskid.errors import ImageError, UsageError
from maskid.imageio import IMAGE_SUFFIXES, load_image


class Status(enum.Enum):
    OK = "ok"
    TIMEOUT = "timeout"
    EOS = "end of stream"
    ERROR = "error"


class VideoSource:
    """Frames from a camera, stream, video file, folder or image (RGB uint8)."""

    def __init__(self, uri: str, kind: str) -> None:
        self.uri = uri
        self.kind = kind  # "csi", "v4l2", "stream", "file", "folder", "image"
        self.frames = 0

    def capture(self) -> tuple[Status, np.ndarray | None]:
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


class _CaptureSource(VideoSource):
    """OpenCV VideoCapture: cameras, streams and video files."""

    def __init__(self, uri: str, kind: str, target: str | int, api: int, retries: int) -> None:
        super().__init__(uri, kind)
        self._cap = cv2.VideoCapture(target, api)
        if not self._cap.isOpened():
            hint = ""
            if kind == "csi":
                hint = " (needs OpenCV built with GStreamer, as on JetPack)"
            raise UsageError(f"cannot open video source {uri!r}{hint}")
        self._live = kind in ("csi", "v4l2", "stream")
        self._retries = retries
        self._misses = 0

    def capture(self) -> tuple[Status, np.ndarray | None]:
        ok, frame = self._cap.read()
        if not ok or frame is None:
            if not self._live:
                return Status.EOS, None
            self._misses += 1
            # A live source that keeps failing has gone away (unplugged camera, dead stream).
            return (Status.ERROR if self._misses > self._retries else Status.TIMEOUT), None
        self._misses = 0
        self.frames += 1
        if frame.ndim == 2:
            return Status.OK, cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        return Status.OK, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._cap.release()


class _ImageSource(VideoSource):
    """A folder of images (sorted by name) or a single image, as a finite stream."""

    def __init__(self, uri: str, kind: str, paths: list[Path]) -> None:
        super().__init__(uri, kind)
        self._paths = paths
        self._next = 0

    def capture(self) -> tuple[Status, np.ndarray | None]:
        while self._next < len(self._paths):
            path = self._paths[self._next]
            self._next += 1
            try:
                frame = load_image(path)
            except ImageError:
                continue  # a bad file in a folder is skipped, like a dropped frame
            self.frames += 1
            return Status.OK, frame
        return Status.EOS, None


def _csi_pipeline(sensor: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM), width={width}, "
        f"height={height}, framerate={fps}/1 ! nvvidconv ! video/x-raw, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1"
    )


def open_source(uri: str, retries: int = 50) -> VideoSource:
    """Open a camera, stream, video file, folder or image by URI (see the module docstring)."""
    text = str(uri).strip()
    if not text:
        raise UsageError("empty video source URI")
    parsed = urlparse(text)
    scheme = parsed.scheme.lower() if len(parsed.scheme) > 1 else ""  # "C:" is not a scheme
    if scheme == "csi":
        sensor = (parsed.netloc or parsed.path.strip("/")) or "0"
        if not sensor.isdigit():
            raise UsageError(f"bad CSI camera URI {uri!r} (expected csi://0)")
        return _CaptureSource(text, "csi", _csi_pipeline(int(sensor)), cv2.CAP_GSTREAMER, retries)
    if scheme == "v4l2" or (not scheme and text.startswith("/dev/video")) or text.isdigit():
        device: str | int = int(text) if text.isdigit() else (parsed.path or text)
        return _CaptureSource(text, "v4l2", device, cv2.CAP_V4L2, retries)
    if scheme in ("rtsp", "rtsps", "rtmp", "http", "https", "udp"):
        return _CaptureSource(text, "stream", text, cv2.CAP_FFMPEG, retries)
    if scheme and scheme != "file":
        raise UsageError(f"unknown video source protocol {scheme!r} in {uri!r}")
    path = Path(parsed.path if scheme == "file" else text)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UsageError(f"{path}: no images in this folder")
        return _ImageSource(text, "folder", images)
    if not path.exists():
        raise UsageError(f"video source {uri!r} does not exist")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _ImageSource(text, "image", [path])
    return _CaptureSource(text, "file", str(path), cv2.CAP_ANY, retries)


class RateMeter:
    """Frames per second over a sliding window (for the camera loop's status line)."""

    def __init__(self, window: int = 30) -> None:
        self._times: list[float] = []
        self._window = window

    def tick(self) -> float:
        self._times.append(time.perf_counter())
        self._times = self._times[-self._window :]
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])
