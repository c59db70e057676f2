"""`maskid demo`: the four steps of the product on bundled photos, offline.

1. build a small celebrity gallery, 2. (the embedder was trained beforehand, see MODEL_CARD),
3. enroll a newcomer from one unmasked photo, 4. recognize a different photo of the newcomer
wearing a (synthetic) mask, and write the annotated picture beside the enrolled photo.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maskid.paths import PACKAGE_DATA

DEMO_DATA = PACKAGE_DATA / "demo"
NEWCOMER = "Tony_Blair"


def run_demo(
    out_dir: Path | None = None,
    model: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, object]:
    from maskid.draw import annotate, side_by_side, write_image
    from maskid.imageio import load_image
    from maskid.masks import apply_mask
    from maskid.paths import cache_dir
    from maskid.recognizer import Recognizer

    start = time.perf_counter()
    out = Path(out_dir) if out_dir else cache_dir() / "demo"
    gallery_dir = out / "gallery"
    if gallery_dir.exists():  # the demo always starts from an empty gallery
        import shutil

        shutil.rmtree(gallery_dir)
    rec = Recognizer(gallery_dir, model=model)
    echo(
        f"model: {rec.embedder.name}  (scores are cosine similarity, threshold {rec.threshold:.3f})"
    )

    report = rec.build(DEMO_DATA / "celebrities")
    echo(
        f"1. built a celebrity gallery: {report.added} photos of {report.identities} people "
        f"-> {gallery_dir}"
    )

    enroll_path = DEMO_DATA / "newcomer" / f"{NEWCOMER}_enroll.jpg"
    rec.enroll(NEWCOMER, [enroll_path])
    echo(f"2. enrolled {NEWCOMER} from one unmasked photo: {enroll_path.name} (no retraining)")

    query = load_image(DEMO_DATA / "newcomer" / f"{NEWCOMER}_query.jpg")
    faces = rec.analyze(query)
    masked = apply_mask(query, faces[0].landmarks, rng=np.random.default_rng(7), style="surgical")
    write_image(out / "query_masked.jpg", masked)
    echo(
        f"3. made a masked query from a different photo of {NEWCOMER} "
        "(synthetic mask from maskid.masks: no real masked photo can be bundled)"
    )

    result = rec.recognize(masked, top_k=3)
    face = result[0]
    best = face.matches[0]
    runners = ", ".join(f"{m.identity} {m.score:.3f}" for m in face.matches[1:])
    verdict = (
        "accepted" if face.identity else "below the threshold, so `recognize` reports it as unknown"
    )
    echo(
        f"4. recognized the masked photo: nearest {best.identity}, cosine similarity "
        f"{best.score:.3f} ({verdict}; threshold {rec.threshold:.3f}); runners-up: {runners}"
    )
    enrolled = load_image(enroll_path)
    picture = side_by_side(enrolled, annotate(masked, result))
    path = write_image(out / "demo_result.jpg", picture)
    echo(f"annotated picture (enrolled photo | masked query): {path}")
    echo(f"done in {time.perf_counter() - start:.1f} s")
    return {
        "identity": face.identity,
        "nearest": best.identity,
        "score": face.match_score,
        "expected": NEWCOMER,
        "picture": str(path),
    }
