"""Camera-loop latency: maskid's FacePipeline vs a face_recognition-style dlib loop, same run.

Scenes are MJPG videos composed from real LFW photos (../shared/data/demo/lfw10, else the few
bundled with the package, so it also runs on a device without the team's data): 640x480 and
1280x720 frames with 1, 5 and 20 faces that drift a few pixels per frame, decoded from disk as
a camera loop would. Gallery: one other photo of each of the 10 people.

Rows per scene:
  maskid         the camera loop's pipeline (detect every frame with the product's detector,
                 maskid.detection.default_detector(): MTCNN; track, embed a face when it
                 appears and every 15 frames after, search hnswlib)
  maskid/cascade the same loop with the cascade detector (MASKID_DETECTOR=cascade)
  maskid/every   the same without the tracker's savings (every face embedded every frame)
  dlib           what face_recognition does per frame: HOG detector (upsample 1), 5-point shape
                 predictor, dlib ResNet descriptor for every face, nearest known encoding

Figures: per-frame end-to-end latency p50 / p95 (decode + detect + align + embed + search),
steady-state FPS (1000 / mean latency after the first frame), first-appearance latency (the
first frame, where every face is new: frame in -> names out), per-stage means, faces found per
frame. The "dlib/maskid" column is the ratio of p50 latencies measured in this run.

Usage: python benchmarks/latency.py [--quick] [--json PATH] [--png PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from maskid.apps.camera import STAGES, CameraOptions, FacePipeline
from maskid.detection.cascade import CascadeDetector
from maskid.errors import NoFaceError
from maskid.io.images import load_image
from maskid.io.video import open_source
from maskid.paths import PACKAGE_DATA, shared_data_dir
from maskid.pipeline.recognizer import Recognizer

SIZES = ((640, 480), (1280, 720))
FACE_COUNTS = (1, 5, 20)
GRIDS = {1: (1, 1), 5: (3, 2), 20: (5, 4)}


def people(lfw10: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(d.glob("*.jpg")) for d in sorted(lfw10.iterdir()) if d.is_dir()}


def compose_video(
    path: Path, size: tuple[int, int], n_faces: int, frames: int, photos: list[Path]
) -> None:
    """n_faces face crops on a grid, each drifting on its own small circle."""
    w, h = size
    cols, rows = GRIDS[n_faces]
    cell_w, cell_h = w // cols, h // rows
    side = min(int(0.75 * min(cell_w, cell_h)), 220)  # a desk camera's face, not a close-up
    crops = []
    for p in photos[:n_faces]:
        img = load_image(p)  # LFW: 250x250, the face in the middle ~120 px
        crops.append(cv2.resize(img[45:205, 45:205], (side, side), interpolation=cv2.INTER_AREA))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, size)
    if not writer.isOpened():
        raise SystemExit(f"cannot write {path}")
    for t in range(frames):
        frame = np.full((h, w, 3), 70, np.uint8)
        for i, crop in enumerate(crops):
            cx = (i % cols) * cell_w + (cell_w - side) // 2
            cy = (i // cols) * cell_h + (cell_h - side) // 2
            phase = 2 * np.pi * (t / 60 + i / n_faces)
            x = int(np.clip(cx + 4 * np.cos(phase), 0, w - side))
            y = int(np.clip(cy + 4 * np.sin(phase), 0, h - side))
            frame[y : y + side, x : x + side] = crop
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def summarize(latency: list[float], stages: dict[str, list[float]], found: list[int]) -> dict:
    lat = np.asarray(latency)
    steady = lat[1:] if len(lat) > 1 else lat
    return {
        "frames": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "first_frame_ms": float(lat[0]),
        "fps": float(1000.0 / steady.mean()),
        "stages_ms": {s: float(np.mean(v)) for s, v in stages.items()},
        "faces_found": float(np.mean(found)),
    }


def run_maskid(rec: Recognizer, video: Path, options: CameraOptions, frames: int) -> dict:
    pipeline = FacePipeline(rec, options)
    latency: list[float] = []
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    found, embedded = [], []
    with open_source(str(video)) as src:
        for i in range(frames):
            t = time.perf_counter()
            _, frame = src.capture()
            assert frame is not None
            decode_ms = (time.perf_counter() - t) * 1000
            result = pipeline.process(frame, i, decode_ms)
            latency.append(result.total_ms)
            for s in STAGES:
                stages[s].append(result.timings[s])
            found.append(len(result.tracks))
            embedded.append(result.embedded)
    out = summarize(latency, stages, found)
    out["embedded_per_frame"] = float(np.mean(embedded))
    return out


class DlibLoop:
    """face_recognition's per-frame recipe, with dlib-bin's own calls (the baseline)."""

    def __init__(self, gallery_photos: dict[str, Path]) -> None:
        import dlib
        import face_recognition_models as frm

        self.detector = dlib.get_frontal_face_detector()
        self.shapes = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.net = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
        names, known = [], []
        for name, path in gallery_photos.items():
            img = load_image(path)
            rects = self.detector(img, 1)
            if rects:
                names.append(name)
                shape = self.shapes(img, rects[0])
                known.append(np.array(self.net.compute_face_descriptor(img, shape)))
        self.names, self.known = names, np.stack(known)

    def run(self, video: Path, frames: int) -> dict:
        latency: list[float] = []
        stages: dict[str, list[float]] = {s: [] for s in STAGES}
        found = []
        with open_source(str(video)) as src:
            for _ in range(frames):
                times = dict.fromkeys(STAGES, 0.0)
                t = time.perf_counter()
                _, frame = src.capture()
                assert frame is not None
                t = _lap(times, "decode", t)
                rects = self.detector(frame, 1)  # face_recognition's default upsample
                t = _lap(times, "detect", t)
                shapes = [self.shapes(frame, r) for r in rects]
                t = _lap(times, "align", t)
                codes = [np.array(self.net.compute_face_descriptor(frame, s)) for s in shapes]
                t = _lap(times, "embed", t)
                for code in codes:  # face_recognition.compare_faces: distance to every known
                    np.argmin(np.linalg.norm(self.known - code, axis=1))
                _lap(times, "search", t)
                latency.append(sum(times.values()))
                for s in STAGES:
                    stages[s].append(times[s])
                found.append(len(rects))
        out = summarize(latency, stages, found)
        out["embedded_per_frame"] = out["faces_found"]
        return out


def _lap(times: dict[str, float], stage: str, t: float) -> float:
    now = time.perf_counter()
    times[stage] += (now - t) * 1000
    return now


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenes = report["scenes"]
    labels = [f"{s['size']}\n{s['faces']} face{'s' if s['faces'] > 1 else ''}" for s in scenes]
    x = np.arange(len(scenes))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.2
    colors = (
        ("maskid", "tab:green"),
        ("maskid/cascade", "tab:blue"),
        ("maskid/every", "tab:olive"),
        ("dlib", "tab:red"),
    )
    for k, (row, color) in enumerate(colors):
        p50 = [s[row]["p50_ms"] for s in scenes]
        p95 = [s[row]["p95_ms"] for s in scenes]
        left.bar(x + (k - 1.5) * width, p50, width, color=color, label=f"{row} p50")
        left.scatter(x + (k - 1.5) * width, p95, color="black", marker="_", s=120, zorder=3)
    left.set_yscale("log")
    left.set_xticks(x, labels, fontsize=8)
    left.set_ylabel("per-frame latency, ms (log; bars p50, ticks p95)")
    left.axhline(40, ls="--", lw=1, color="grey")
    left.text(x[0] - 0.45, 41, "40 ms = 25 fps", va="bottom", ha="left", fontsize=8, color="grey")
    left.legend(fontsize=8)
    left.set_title("maskid vs face_recognition-style dlib, same run")
    bottom = np.zeros(len(scenes))
    for stage in STAGES:
        vals = np.array([s["maskid"]["stages_ms"][stage] for s in scenes])
        right.bar(x, vals, 0.6, bottom=bottom, label=stage)
        bottom += vals
    right.set_xticks(x, labels, fontsize=8)
    right.set_ylabel("mean ms per frame")
    right.set_title("maskid per-stage breakdown")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few frames per scene (< 1 minute)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--png", type=Path, help="chart (default: beside --json, else not drawn)")
    ap.add_argument("--frames", type=int, help="frames per scene for maskid (default 30 / 150)")
    args = ap.parse_args()
    shared = shared_data_dir()
    lfw10 = shared / "demo" / "lfw10" if shared else PACKAGE_DATA / "missing"
    if not lfw10.is_dir():
        lfw10 = PACKAGE_DATA / "demo" / "celebrities"
        print(f"../shared not found: using the bundled demo photos in {lfw10}")
    frames = args.frames or (30 if args.quick else 150)
    dlib_frames = {1: 4, 5: 3, 20: 2} if args.quick else {1: 20, 5: 10, 20: 5}
    every_frames = min(frames, 10 if args.quick else 40)

    photos = people(lfw10)
    with tempfile.TemporaryDirectory(prefix="maskid-latency-") as tmp:
        rec = Recognizer(Path(tmp) / "gallery")
        enroll = {}
        for name, paths in tqdm(photos.items(), desc="enroll", leave=False):
            for path in paths:  # the first photo with exactly one face
                try:
                    rec.enroll(name, [path])
                except NoFaceError:
                    continue
                enroll[name] = path
                paths.remove(path)
                break
        # Faces in the video: other photos of the same people, cycling through the 10 people.
        video_photos = [
            photos[n][(k // len(photos)) % len(photos[n])] for k, n in enumerate(list(photos) * 2)
        ]
        baseline = DlibLoop(enroll)
        cascade = Recognizer(
            Path(tmp) / "gallery", detector=CascadeDetector(), embedder=rec.embedder
        )
        scenes = []
        todo = [(size, n) for size in SIZES for n in FACE_COUNTS]
        for size, n in tqdm(todo, desc="scenes"):
            video = Path(tmp) / f"{size[0]}x{size[1]}_{n}.avi"
            compose_video(video, size, n, frames, video_photos)
            run_maskid(rec, video, CameraOptions(), 2)  # warm-up: caches, thread pools
            scene: dict[str, Any] = {"size": f"{size[0]}x{size[1]}", "faces": n}
            scene["maskid"] = run_maskid(rec, video, CameraOptions(), frames)
            run_maskid(cascade, video, CameraOptions(), 2)
            scene["maskid/cascade"] = run_maskid(cascade, video, CameraOptions(), every_frames)
            scene["maskid/every"] = run_maskid(
                rec, video, CameraOptions(embed_every=1, max_refresh=1000), every_frames
            )
            scene["dlib"] = baseline.run(video, dlib_frames[n])
            scene["ratio_dlib_over_maskid_p50"] = (
                scene["dlib"]["p50_ms"] / scene["maskid"]["p50_ms"]
            )
            scenes.append(scene)

    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "quick": args.quick,
        "model": rec.model_name,
        "scenes": scenes,
    }
    rows = ["maskid", "maskid/cascade", "maskid/every", "dlib"]
    head = (
        f"{'scene':<16}{'pipeline':<14}{'p50 ms':>8}{'p95 ms':>8}{'first ms':>9}{'fps':>7}"
        f"{'found':>7}{'emb/fr':>7}  " + " ".join(f"{s:>6}" for s in STAGES) + "  dlib/maskid"
    )
    print(head)
    print("-" * len(head))
    for s in scenes:
        for row in rows:
            r = s[row]
            ratio = f"{s['ratio_dlib_over_maskid_p50']:.1f}x" if row == "maskid" else ""
            print(
                f"{s['size'] + ' ' + str(s['faces']) + 'f':<16}{row:<14}{r['p50_ms']:>8.1f}"
                f"{r['p95_ms']:>8.1f}{r['first_frame_ms']:>9.1f}{r['fps']:>7.1f}"
                f"{r['faces_found']:>7.1f}{r['embedded_per_frame']:>7.2f}  "
                + " ".join(f"{r['stages_ms'][st]:>6.1f}" for st in STAGES)
                + f"  {ratio}"
            )
    one = next(s for s in scenes if s["size"] == "640x480" and s["faces"] == 1)
    print(
        f"\ntargets (640x480, one face): steady FPS {one['maskid']['fps']:.1f} (>= 25), "
        f"first appearance {one['maskid']['first_frame_ms']:.1f} ms (<= 60), "
        f"detection {one['maskid']['stages_ms']['detect']:.1f} ms (<= 10; cascade "
        f"{one['maskid/cascade']['stages_ms']['detect']:.1f}); "
        f"dlib: {one['dlib']['fps']:.1f} FPS, {one['dlib']['first_frame_ms']:.1f} ms"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    png = args.png or (args.json.with_suffix(".png") if args.json else None)
    if png:
        plot(report, png)
        print(f"chart: {png}")


if __name__ == "__main__":
    main()
