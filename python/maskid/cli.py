"""The `maskid` and `recognize` commands. Library code raises MaskidError; only this module
turns errors into one line on stderr and an exit code (see maskid.errors)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from maskid.errors import MaskidError

if TYPE_CHECKING:
    from maskid.recognizer import Recognizer

F = TypeVar("F", bound=Callable[..., Any])

gallery_option = click.option(
    "--gallery",
    "gallery_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Gallery directory (default: $MASKID_GALLERY, else ~/.local/share/maskid/gallery).",
)
model_option = click.option(
    "--model",
    default=None,
    help="Embedder name, .onnx file or TensorRT .engine (`maskid models` lists the names; "
    "default: the shipped one).",
)


def _fail(message: str, code: int) -> None:
    click.echo(f"maskid: error: {message}", err=True)
    sys.exit(code)


def _guarded(invoke: Callable[[click.Context], Any], ctx: click.Context) -> Any:
    """Run a command, mapping user errors to one line + exit code, never a traceback."""
    try:
        return invoke(ctx)
    except MaskidError as e:
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
        raise
    except Exception as e:  # a bug, not the user's fault: one line unless debugging
        if os.environ.get("MASKID_DEBUG"):
            raise
        _fail(f"internal error: {type(e).__name__}: {e} (MASKID_DEBUG=1 shows the trace)", 1)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        return _guarded(super().invoke, ctx)


class _Command(click.Command):
    def invoke(self, ctx: click.Context) -> Any:
        return _guarded(super().invoke, ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maskid")
def main() -> None:
    """Face identification that still works when people wear face masks."""


def _recognizer(gallery_dir: Path | None, model: str | None, **kw: Any) -> Recognizer:
    from maskid.recognizer import Recognizer

    return Recognizer(gallery_dir, model=model, **kw)


def _progress(desc: str) -> Callable[[Any], Any]:
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=desc, unit="img", file=sys.stderr)


# -- embed ------------------------------------------------------------------------------------
@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--aligned", is_flag=True, help="IMAGE is a ready 150x150 face chip: no detection.")
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def embed(image: Path, aligned: bool, model: str | None, as_json: bool) -> None:
    """Print the descriptor of each face in IMAGE."""
    import numpy as np

    from maskid.embedder import Embedder
    from maskid.imageio import load_image

    img = load_image(image)
    embedder = Embedder(model) if model else Embedder()
    faces: list[dict[str, Any]] = []
    if aligned:
        size = embedder.input_size
        if img.shape[:2] != (size, size):
            raise MaskidError(
                f"{image}: --aligned needs a {size}x{size} chip, got {img.shape[1]}x{img.shape[0]}"
            )
        d = embedder.embed_chips(img[None])[0]
        faces.append({"box": [0, 0, size, size], "descriptor": d})
    else:
        rec = _recognizer(None, model)
        rec._embedder = embedder
        found = rec.analyze(img)
        if not found:
            from maskid.errors import NoFaceError

            raise NoFaceError(f"{image}: no face found")
        faces = [{"box": f.box, "descriptor": f.descriptor} for f in found]
    rows = [
        {
            "box": [round(float(v), 2) for v in f["box"]],
            "descriptor": [float(v) for v in np.asarray(f["descriptor"])],
        }
        for f in faces
    ]
    if as_json:
        click.echo(json.dumps({"model": embedder.name, "faces": rows}))
    else:
        for i, f in enumerate(rows):
            click.echo(f"face {i} box={f['box']}")
            click.echo(" ".join(f"{v:.6f}" for v in f["descriptor"]))


# -- gallery management -----------------------------------------------------------------------
@main.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@gallery_option
@model_option
def build(dataset: Path, gallery_dir: Path | None, model: str | None) -> None:
    """Add every photo of DATASET/<identity>/* to the gallery (only new photos on re-runs)."""
    rec = _recognizer(gallery_dir, model)
    report = rec.build(dataset, progress=_progress("build"))
    for path in report.no_face:
        click.echo(f"skipped (no face): {path}", err=True)
    for path in report.unreadable:
        click.echo(f"skipped (unreadable): {path}", err=True)
    click.echo(
        f"gallery {rec.gallery_dir}: added {report.added} photos, "
        f"{report.skipped_known} already present, {len(report.no_face)} without a face, "
        f"{len(report.unreadable)} unreadable; {report.identities} identities"
    )


@main.command()
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@gallery_option
@model_option
def enroll(
    name: str, images: tuple[Path, ...], gallery_dir: Path | None, model: str | None
) -> None:
    """Add person NAME from one or more unmasked photos (no retraining)."""
    rec = _recognizer(gallery_dir, model)
    n = rec.enroll(name, images)
    click.echo(f"enrolled {name!r} from {n} photo(s) into {rec.gallery_dir}")


@main.command()
@click.argument("name")
@gallery_option
def remove(name: str, gallery_dir: Path | None) -> None:
    """Remove person NAME from the gallery."""
    rec = _recognizer(gallery_dir, None)
    n = rec.remove(name)
    click.echo(f"removed {name!r} ({n} descriptors)")


@main.command(name="list")
@gallery_option
def list_identities(gallery_dir: Path | None) -> None:
    """List the people in the gallery with their number of descriptors."""
    rec = _recognizer(gallery_dir, None)
    ids = rec.identities()
    for name, count in sorted(ids.items()):
        click.echo(f"{name}\t{count}")
    click.echo(f"{len(ids)} identities in {rec.gallery_dir}", err=True)


@main.command()
def models() -> None:
    """List the available embedders (the default is marked *)."""
    from maskid import models as zoo

    for name in zoo.available_models():
        mark = "*" if name == zoo.DEFAULT_MODEL else " "
        click.echo(f"{mark} {name}")


# -- recognize --------------------------------------------------------------------------------
def _recognize_options(f: F) -> F:
    f = click.option("--image", "image", required=True, type=click.Path(path_type=Path))(f)
    f = click.option("--top", "top_k", default=5, show_default=True, help="Matches per face.")(f)
    f = click.option(
        "--threshold",
        type=float,
        default=None,
        help="Cosine similarity below which a face is 'unknown' (default: the model's, "
        "set at FAR 1e-3 on the dev set). Raise it for fewer false matches.",
    )(f)
    f = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")(f)
    f = click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Where to write the annotated image (default: printed cache path).",
    )(f)
    f = gallery_option(f)
    f = model_option(f)
    return f


def _recognize(
    image: Path,
    top_k: int,
    threshold: float | None,
    as_json: bool,
    out: Path | None,
    gallery_dir: Path | None,
    model: str | None,
) -> None:
    from maskid.draw import annotate, default_annotation_path, write_image
    from maskid.errors import NoFaceError
    from maskid.imageio import load_image

    rec = _recognizer(gallery_dir, model, threshold=threshold)
    img = load_image(image)
    faces = rec.recognize(img, top_k=top_k)
    if not faces:
        raise NoFaceError(f"{image}: no face found")
    out_path = out or default_annotation_path(image)
    write_image(out_path, annotate(img, faces))
    if as_json:
        doc = {
            "image": str(image),
            "metric": "cosine similarity",
            "threshold": rec.threshold,
            "annotated": str(out_path),
            "faces": [
                {
                    "box": [round(float(v), 2) for v in f.box],
                    "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in f.landmarks],
                    "identity": f.identity,
                    "score": round(float(f.match_score), 6) if f.match_score is not None else None,
                    "matches": [
                        {"identity": m.identity, "score": round(float(m.score), 6)}
                        for m in f.matches
                    ],
                }
                for f in faces
            ],
        }
        click.echo(json.dumps(doc))
    else:
        for i, f in enumerate(faces):
            name = f.identity or "unknown"
            x1, y1, x2, y2 = (round(float(v)) for v in f.box)
            others = ", ".join(f"{m.identity} {m.score:.3f}" for m in f.matches[1:])
            click.echo(
                f"face {i} [{x1},{y1},{x2},{y2}]: {name}  "
                f"(cosine similarity {f.match_score:.3f}, threshold {rec.threshold:.3f})"
                + (f"; runners-up: {others}" if others else "")
            )
        click.echo(f"annotated image: {out_path}")


@main.command(name="recognize")
@_recognize_options
def recognize_cmd(**kw: Any) -> None:
    """Who is in the photo? Prints identity, cosine score and runners-up per face."""
    _recognize(**kw)


@click.command(
    name="recognize",
    cls=_Command,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@_recognize_options
def recognize_main(**kw: Any) -> None:
    """Who is in the photo? (same as `maskid recognize`)."""
    _recognize(**kw)


# -- evaluation and demo ----------------------------------------------------------------------
@main.command(name="eval")
@click.option("--enroll", "enroll_dir", required=True, type=click.Path(path_type=Path))
@click.option("--probe", "probe_dir", required=True, type=click.Path(path_type=Path))
@model_option
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--threshold", type=float, default=None, help="Operating threshold to report.")
@click.option("--mask-copies", type=int, default=None, help="Masked copies per enrolled photo.")
@click.option("--pattern", default="*", help="Glob for image files inside identity folders.")
@click.option("--probe-pattern", default=None, help="Glob for probe files (default: --pattern).")
def evaluate(
    enroll_dir: Path,
    probe_dir: Path,
    model: str | None,
    json_path: Path | None,
    plots_dir: Path | None,
    threshold: float | None,
    mask_copies: int | None,
    pattern: str,
    probe_pattern: str | None,
) -> None:
    """Open-set evaluation: enroll every image of ENROLL, identify every image of PROBE."""
    from maskid.evaluate import evaluate_folders, write_plots

    result = evaluate_folders(
        enroll_dir,
        probe_dir,
        model=model,
        threshold=threshold,
        mask_copies=mask_copies,
        enroll_pattern=pattern,
        probe_pattern=probe_pattern or pattern,
        progress=_progress("eval"),
    )
    report = result.report
    click.echo(
        f"model {result.model}: {report.n_probes} probes ({report.n_known} of enrolled people, "
        f"{report.n_no_face} without a face found)"
    )
    click.echo(f"rank-1 {report.rank1:.4f}  rank-5 {report.rank5:.4f}")
    click.echo(
        f"TAR@FAR=1e-3 {report.tar_at_far_1e_3:.4f}  TAR@FAR=1e-2 {report.tar_at_far_1e_2:.4f}  "
        f"EER {report.eer:.4f}"
    )
    click.echo(
        f"threshold {report.threshold:.4f} (cosine): FAR {report.far_at_threshold:.5f} "
        f"FRR {report.frr_at_threshold:.4f}"
    )
    if report.n_unknown:
        click.echo(
            f"open set at the threshold: {report.dir_at_threshold:.4f} of enrolled people's probes "
            f"named correctly, {report.false_alarm_at_threshold:.4f} of {report.n_unknown} "
            "strangers' probes given a name"
        )
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"model": result.model, **report.as_dict()}, indent=2))
        click.echo(f"wrote {json_path}")
    if plots_dir:
        for p in write_plots(result, plots_dir):
            click.echo(f"wrote {p}")


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@model_option
def demo(out_dir: Path | None, model: str | None) -> None:
    """The whole story on bundled photos: build, enroll one person, recognize them masked."""
    from maskid.demo import run_demo

    run_demo(out_dir, model=model, echo=click.echo)


@main.command()
@click.option(
    "--source",
    required=True,
    help="0 or /dev/video0 (USB camera), csi://0 (Jetson CSI), rtsp://... or http://..., "
    "a GStreamer pipeline ('... ! appsink'), a video file, or a folder of images.",
)
@gallery_option
@model_option
@click.option("--threshold", type=float, default=None, help="As for `recognize`.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Record the annotated frames (.mp4 or .avi).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON line per recognition event.")
@click.option(
    "--display/--no-display",
    default=None,
    help="Show an annotated window (default: when a display and a GUI-enabled OpenCV exist).",
)
@click.option("--detect-every", default=1, show_default=True, help="Detect on every K-th frame.")
@click.option(
    "--embed-every",
    default=15,
    show_default=True,
    help="Re-embed a tracked face every N frames (and at once when its box moves).",
)
@click.option("--votes", default=5, show_default=True, help="Recent matches that name a track.")
@click.option(
    "--max-refresh",
    default=2,
    show_default=True,
    help="Re-embeddings of already-named faces per frame (new faces are always embedded).",
)
@click.option("--max-frames", type=int, default=None, help="Stop after this many frames.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads per model (default: the models' own; lower it beside other work).",
)
def camera(
    source: str,
    gallery_dir: Path | None,
    model: str | None,
    threshold: float | None,
    output: Path | None,
    as_json: bool,
    display: bool | None,
    detect_every: int,
    embed_every: int,
    votes: int,
    max_refresh: int,
    max_frames: int | None,
    threads: int | None,
) -> None:
    """The camera loop: track faces, name them, report events; runs until the source ends,
    q/Esc in the window, Ctrl-C or SIGTERM. Live sources are reopened when they drop."""
    from maskid.camera import CameraOptions, run_camera

    rec = _recognizer(gallery_dir, model, threshold=threshold, threads=threads)
    options = CameraOptions(
        detect_every=detect_every,
        embed_every=embed_every,
        votes=votes,
        max_refresh=max_refresh,
        threshold=threshold,
    )
    stats = run_camera(
        rec,
        source,
        options,
        output=output,
        as_json=as_json,
        display=display,
        max_frames=max_frames,
        echo=lambda line: click.echo(line),
        notify=lambda line: click.echo(line, err=True),
    )
    click.echo(stats.summary(), err=True)


@main.command()
def backends() -> None:
    """What this installation can run on (C++ core, CUDA, TensorRT, ONNX Runtime providers)."""
    from maskid.preprocess import backends as probe

    for key, value in probe().items():
        click.echo(f"{key}: {value}")


if __name__ == "__main__":
    main()
