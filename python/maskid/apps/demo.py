"""`maskid demo`: the mission on bundled photos, offline.

1. build a small celebrity gallery (LFW photos), 2. enroll a newcomer from ONE unmasked photo
(no retraining), 3. recognize a photo of the newcomer wearing a real mask, taken on another
day, and 4. write the annotated picture: the enrolled photo beside the masked query, captioned.
The result is reported as it comes out: identity, cosine score and the shipped threshold; if the
model does not name the newcomer, the demo says so. The photos and how they were chosen:
`data/demo/README.md`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2

from maskid.face import Face
from maskid.paths import PACKAGE_DATA

DEMO_DATA = PACKAGE_DATA / "demo"
NEWCOMER = "M2FRED_001"  # the name the demo enrolls the newcomer under
ENROLL_PHOTO = DEMO_DATA / "newcomer" / "M2FRED_001_1-0-0.png"  # session 1, unmasked
QUERY_PHOTO = DEMO_DATA / "newcomer" / "M2FRED_001_3-1-0.png"  # session 3, real mask
CAPTIONS = ("enrolled", "masked query")
PANEL_HEIGHT = 360  # pixels, of each half of the annotated picture


@dataclass
class DemoResult:
    model: str
    enrolled: str  # the newcomer's name
    enroll_photo: Path
    query: Path
    threshold: float
    annotated: Path
    faces: list[Face]  # of the masked query, as `Recognizer.recognize` gives them
    gallery: Path

    @property
    def named(self) -> bool:
        """Whether the newcomer was named (top match, at or above the threshold)."""
        return bool(self.faces) and self.faces[0].identity == self.enrolled


def run_demo(
    out_dir: Path | None = None,
    model: str | None = None,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo into `out_dir` (default: the cache), telling the story through `echo`."""
    from maskid.apps.draw import annotate, side_by_side, write_image
    from maskid.io.images import load_image
    from maskid.paths import cache_dir
    from maskid.pipeline.recognizer import Recognizer

    start = time.perf_counter()
    out = Path(out_dir) if out_dir else cache_dir() / "demo"
    gallery_dir = out / "gallery"
    if gallery_dir.exists():  # the demo always starts from an empty gallery
        shutil.rmtree(gallery_dir)
    rec = Recognizer(gallery_dir, model=model)
    t = rec.threshold
    echo(
        f"model {rec.embedder.name}: scores are cosine similarity; a face is named when its best "
        f"score is at least the model's threshold, {t:.3f}"
    )

    report = rec.build(DEMO_DATA / "celebrities")
    echo(
        f"1. built a celebrity gallery: {report.added} photos of {report.identities} people "
        f"(LFW) -> {gallery_dir}"
    )

    rec.enroll(NEWCOMER, [ENROLL_PHOTO])
    echo(
        f"2. enrolled a newcomer, {NEWCOMER}, from ONE unmasked photo: {ENROLL_PHOTO.name} "
        "(no retraining)"
    )
    echo(
        f"3. the masked query: {QUERY_PHOTO.name}, {NEWCOMER} wearing a real mask, "
        "photographed on another day (M2FRED)"
    )

    query = load_image(QUERY_PHOTO)
    faces = rec.recognize(query, top_k=3)
    echo("4. " + verdict(faces, NEWCOMER, t))

    # Annotate at the panel's size, so that the labels stay sharp on the 128 px crop.
    k = PANEL_HEIGHT / query.shape[0]
    shown = cv2.resize(query, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
    scaled = [replace(f, box=f.box * k, landmarks=f.landmarks * k) for f in faces[:1]]
    picture = side_by_side(
        load_image(ENROLL_PHOTO), annotate(shown, scaled), PANEL_HEIGHT, captions=CAPTIONS
    )
    path = write_image(out / "demo_result.jpg", picture)
    echo(f"annotated picture ({CAPTIONS[0]} | {CAPTIONS[1]}): {path}")
    echo(f"done in {time.perf_counter() - start:.1f} s")
    return DemoResult(
        model=rec.embedder.name,
        enrolled=NEWCOMER,
        enroll_photo=ENROLL_PHOTO,
        query=QUERY_PHOTO,
        threshold=t,
        annotated=path,
        faces=faces,
        gallery=gallery_dir,
    )


def verdict(faces: list[Face], expected: str, threshold: float) -> str:
    """One plain sentence: was the expected person named, with the score and the threshold."""
    if not faces:
        return "NOT RECOGNIZED: no face was found in the masked query (the detector missed it)"
    face = faces[0]
    if not face.matches or face.match_score is None:
        return "NOT RECOGNIZED: the gallery returned no match"
    best, score = face.matches[0], face.match_score
    others = ", ".join(f"{m.identity} {m.score:.3f}" for m in face.matches[1:])
    runners = f"; runners-up: {others}" if others else ""
    if face.identity == expected:
        return (
            f"recognized {expected}: cosine similarity {score:.3f} >= threshold "
            f"{threshold:.3f}{runners}"
        )
    if face.identity is not None:
        return (
            f"WRONG PERSON: named {face.identity} ({score:.3f} >= threshold {threshold:.3f}), "
            f"not {expected}{runners}"
        )
    if best.identity == expected:
        return (
            f"NOT RECOGNIZED: the nearest is {expected} but scores {score:.3f} < threshold "
            f"{threshold:.3f}, so `recognize` reports the face as unknown (a miss of this "
            f"model){runners}"
        )
    return (
        f"NOT RECOGNIZED: unknown; the nearest is {best.identity} ({score:.3f} < threshold "
        f"{threshold:.3f}), not {expected}{runners}"
    )
