"""`maskid watch`: the camera loop (capture -> recognize -> render -> report), as
jetson-inference's detectnet loop: one line (or JSON document) per analysed frame."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from maskid.draw import annotate
from maskid.errors import ImageError, UsageError
from maskid.face import Face
from maskid.recognizer import Recognizer
from maskid.sources import RateMeter, Status, open_source


def frame_report(index: int, faces: list[Face]) -> dict[str, object]:
    return {
        "frame": index,
        "faces": [
            {
                "box": [round(float(v), 1) for v in f.box],
                "identity": f.identity,
                "score": None if f.match_score is None else round(float(f.match_score), 4),
                "matches": [
                    {"identity": m.identity, "score": round(float(m.score), 4)}
                    for m in f.matches[:3]
                ],
            }
            for f in faces
        ],
    }


def run_watch(
    rec: Recognizer,
    uri: str,
    every: int = 1,
    max_frames: int | None = None,
    out: Path | None = None,
    as_json: bool = False,
    echo: Callable[[str], None] = print,
) -> str:
    """Run until the source ends (or max_frames); returns a one-line summary."""
    if every < 1:
        raise UsageError("--every must be >= 1")
    rec.gallery()  # fail before opening a camera when there is no gallery
    video = VideoOut(out) if out is not None else None
    meter = RateMeter()
    analysed = seen = 0
    start = time.perf_counter()
    with open_source(uri) as source:
        while max_frames is None or seen < max_frames:
            status, frame = source.capture()
            if status is Status.TIMEOUT:
                continue
            if status is not Status.OK or frame is None:
                if status is Status.ERROR:
                    echo(f"source {uri}: {status.value} after {seen} frames")
                break
            seen += 1
            if (seen - 1) % every:
                continue
            faces = rec.recognize(frame)
            analysed += 1
            fps = meter.tick()
            report = frame_report(seen - 1, faces)
            if as_json:
                echo(json.dumps(report))
            elif faces:
                names = "; ".join(f"{f.identity or 'unknown'} {f.match_score:.3f}" for f in faces)
                echo(f"frame {seen - 1}: {names}" + (f"  ({fps:.1f} fps)" if fps else ""))
            if video is not None:
                video.write(annotate(frame, faces))
    if video is not None:
        video.close()
    elapsed = time.perf_counter() - start
    rate = analysed / elapsed if elapsed > 0 else 0.0
    return f"watched {seen} frames, analysed {analysed} ({rate:.1f} per second)"


class VideoOut:
    """Annotated frames to a video file, opened lazily at the first frame's size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: cv2.VideoWriter | None = None
        self._size = (0, 0)

    def write(self, frame_rgb: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            mp4 = self.path.suffix.lower() == ".mp4"
            fourcc = cv2.VideoWriter.fourcc(*("mp4v" if mp4 else "MJPG"))
            self._size = (frame_rgb.shape[1], frame_rgb.shape[0])
            self._writer = cv2.VideoWriter(str(self.path), fourcc, 15.0, self._size)
            if not self._writer.isOpened():
                raise ImageError(f"{self.path}: cannot write a video here (use .mp4 or .avi)")
        if (frame_rgb.shape[1], frame_rgb.shape[0]) != self._size:  # folders mix photo sizes
            frame_rgb = cv2.resize(frame_rgb, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
