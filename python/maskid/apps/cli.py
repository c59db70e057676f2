"""The `maskid` and `recognize` commands. Library code raises MaskidError; only this module
turns errors into one line on stderr and an exit code (see maskid.errors)."""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from maskid.errors import MaskidError, UsageError

if TYPE_CHECKING:
    from maskid.face import Face
    from maskid.pipeline.recognizer import Recognizer

F = TypeVar("F", bound=Callable[..., Any])

gallery_option = click.option(
    "--gallery",
    "gallery_dir",
    default=None,
    help="Gallery directory, or a gallery server's URI (default: $MASKID_GALLERY, else "
    "~/.local/share/maskid/gallery).",
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


def _summary(help_text: str | None) -> str:
    """The first paragraph of a command's help, on one line and whole (click would cut it)."""
    first = inspect.cleandoc(help_text or "").split("\n\n")[0]
    return " ".join(first.split())


class _Command(click.Command):
    def invoke(self, ctx: click.Context) -> Any:
        return _guarded(super().invoke, ctx)

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.short_help or _summary(self.help)


class _Group(click.Group):
    command_class = _Command

    def invoke(self, ctx: click.Context) -> Any:
        return _guarded(super().invoke, ctx)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maskid")
def main() -> None:
    """Face identification that still works when people wear face masks.

    Start with `maskid demo`; `maskid COMMAND --help` explains each command."""


def _recognizer(gallery_dir: str | None, model: str | None, **kw: Any) -> Recognizer:
    from maskid.pipeline.recognizer import Recognizer

    return Recognizer(gallery_dir, model=model, **kw)


def _default_setting(key: str) -> str:
    """The default model's shipped setting `key` in words, for --help (read, never typed in)."""
    from maskid.networks import registry as models

    try:
        value = models.model_settings(models.DEFAULT_MODEL)[key]
    except MaskidError:
        return "see `maskid models`"
    return f"{value:g} for the default model, {models.DEFAULT_MODEL}"


def _created_note(path: Path) -> str:
    """' (created the directory D)' when writing `path` will create its directory, else ''."""
    parent = path.parent
    if parent.exists():
        return ""
    return f" (created the directory {parent})"


def _progress(desc: str) -> Callable[[Any], Any]:
    from tqdm import tqdm

    return lambda items: tqdm(items, desc=desc, unit="img", file=sys.stderr)


# -- embed ------------------------------------------------------------------------------------
@main.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "--aligned",
    is_flag=True,
    help="IMAGE is a ready face chip of the model's input size (150x150 for the dlib-based "
    "models): no detection.",
)
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def embed(image: Path, aligned: bool, model: str | None, as_json: bool) -> None:
    """Print the descriptor of each face in IMAGE."""
    import numpy as np

    from maskid.io.images import load_image
    from maskid.networks.embedder import Embedder

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
        from maskid.pipeline.recognizer import Recognizer

        found = Recognizer(embedder=embedder).analyze(img)
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
@click.option(
    "--force",
    is_flag=True,
    help="Delete the gallery at --gallery first (also a corrupt one) and build it anew.",
)
def build(dataset: Path, gallery_dir: str | None, model: str | None, force: bool) -> None:
    """Add every photo of DATASET/<name>/* to the gallery.

    One sub-folder per person; re-runs add only new photos. --force rebuilds from scratch."""
    rec = _recognizer(gallery_dir, model)
    if force:
        from maskid.pipeline.recognizer import identity_images

        identity_images(dataset)  # a wrong DATASET must not cost the old gallery
        from maskid.gallery import delete_gallery

        if delete_gallery(rec.gallery_location):
            click.echo(f"--force: deleted the gallery at {rec.gallery_location}", err=True)
    report = rec.build(dataset, progress=_progress("build"))
    for path in report.no_face:
        click.echo(f"skipped (no face): {path}", err=True)
    for path in report.unreadable:
        click.echo(f"skipped (unreadable): {path}", err=True)
    click.echo(
        f"gallery {rec.gallery_location}: added {report.added} photos, "
        f"{report.skipped_known} already present, {len(report.no_face)} without a face, "
        f"{len(report.unreadable)} unreadable; {report.identities} identities"
    )


# Two descriptors this similar come from the same photo (re-encoded or renamed at most).
SAME_PHOTO_COSINE = 0.999


def _refuse_duplicates(rec: Recognizer, name: str, images: tuple[Path, ...]) -> None:
    """UsageError if a photo's face is already enrolled under another name (cosine >
    SAME_PHOTO_COSINE: the same photo). Photos that fail here fail again, and are reported, in
    `enroll` itself."""
    if not rec.gallery_exists():
        return
    gallery = rec.gallery()
    if len(gallery) == 0:
        return
    for image in images:
        try:
            face = rec.enroll_face(rec.load(image)).faces[0]
        except MaskidError:
            continue
        assert face.descriptor is not None
        for match in gallery.search(face.descriptor, k=3)[0]:
            if match.identity != name and match.score > SAME_PHOTO_COSINE:
                raise UsageError(
                    f"{image}: this face is already enrolled as {match.identity!r} (cosine "
                    f"{match.score:.4f}: the same photo); enrolling it as {name!r} too would "
                    "make the two names compete. Pass --allow-duplicate if that is intended"
                )


@main.command()
@click.argument("name")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@gallery_option
@model_option
@click.option(
    "--allow-duplicate",
    is_flag=True,
    help="Enroll a photo even if the same face is already enrolled under another name.",
)
def enroll(
    name: str,
    images: tuple[Path, ...],
    gallery_dir: str | None,
    model: str | None,
    allow_duplicate: bool,
) -> None:
    """Add person NAME from one or more unmasked photos.

    No retraining. Under a name already enrolled, the photos are added to that person; a photo
    already enrolled under another name is refused (--allow-duplicate)."""
    from maskid.gallery import validate_name

    name = validate_name(name)
    rec = _recognizer(gallery_dir, model)
    # One name's count, not the whole list: a remote gallery of millions answers it from an index.
    before = rec.gallery().count(name) if rec.gallery_exists() else 0
    if not allow_duplicate:
        _refuse_duplicates(rec, name, images)
    n = rec.enroll(name, images)
    photos = f"{n} photo{'s' if n != 1 else ''}"
    if before:
        # Each photo is stored as its descriptor plus the model's masked copies.
        per_photo = 1 + rec.mask_copies
        now = rec.gallery().count(name)
        total = f"now {now // per_photo}" if now % per_photo == 0 else f"now {now} descriptors"
        click.echo(f"added {photos} to {name!r} ({total}) in {rec.gallery_location}")
    else:
        click.echo(f"enrolled {name!r} from {photos} into {rec.gallery_location}")


@main.command()
@click.argument("name")
@gallery_option
def remove(name: str, gallery_dir: str | None) -> None:
    """Remove person NAME from the gallery."""
    rec = _recognizer(gallery_dir, None)
    n = rec.remove(name)
    click.echo(f"removed {name!r} ({n} descriptors)")


@main.command(name="list")
@gallery_option
def list_identities(gallery_dir: str | None) -> None:
    """List the people in the gallery and their descriptor counts."""
    rec = _recognizer(gallery_dir, None)
    ids = rec.identities()
    for name, count in sorted(ids.items()):
        click.echo(f"{name}\t{count}")
    click.echo(f"{len(ids)} identities in {rec.gallery_location}", err=True)


@main.command()
def models() -> None:
    """List the embedders: chip, threshold, copies, licence (* = default)."""
    import onnx

    from maskid.networks import registry as zoo
    from maskid.networks.contract import ModelContract

    for name in zoo.available_models():
        mark = "*" if name == zoo.DEFAULT_MODEL else " "
        s = zoo.model_settings(name)
        shipped = zoo.BUNDLED_DIR / f"{name}.onnx"
        if shipped.is_file():  # its contract, from the file's own metadata
            meta = {p.key: p.value for p in onnx.load(str(shipped)).metadata_props}
            c = ModelContract.from_metadata(meta, name)
            what = (
                f"{c.input_size}px {c.color_order} chip -> {c.descriptor_dim}-d, "
                f"{meta.get('licence', 'licence: see MODEL_CARD.md')}"
            )
        else:
            what = "150px dlib chip, built on first use from dlib's .dat (CC0)"
        click.echo(
            f"{mark} {name:<20} threshold {float(s['threshold']):.4f}  "
            f"copies {int(s['enroll_mask_copies'])}  {what}"
        )


# -- recognize --------------------------------------------------------------------------------
THRESHOLD_HELP = (
    "Cosine similarity at or above which a face is named; below it the face is 'unknown' (its "
    "nearest identity is still shown). Default: the model's shipped threshold ({default}), the "
    "score that only 1 in 1000 comparisons between different people reach on maskid's "
    "development data (photos of other occasions, masked and not, against enrolled ones). "
    "Raise it for fewer false names, "
    "lower it to name more faces."
)


def _recognize_options(f: F) -> F:
    f = click.option(
        "--image",
        "image",
        required=True,
        type=click.Path(path_type=Path),
        help="The photo to search: every face in it is identified (JPEG, PNG, WebP, BMP, TIFF).",
    )(f)
    f = click.option("--top", "top_k", default=5, show_default=True, help="Matches per face.")(f)
    f = click.option(
        "--threshold",
        type=float,
        default=None,
        help=THRESHOLD_HELP.format(default=_default_setting("threshold")),
    )(f)
    f = click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document on stdout (no text)."
    )(f)
    f = click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Where to write the annotated image, .jpg or .png (default: a path in the cache, "
        "printed). A missing directory is created.",
    )(f)
    f = gallery_option(f)
    f = model_option(f)
    return f


def face_record(face: Face) -> dict[str, Any]:
    """One face of `recognize --json` (and `demo --json`)."""
    return {
        "box": [round(float(v), 2) for v in face.box],
        "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
        "identity": face.identity,
        "score": round(float(face.match_score), 6) if face.match_score is not None else None,
        "matches": [
            {"identity": m.identity, "score": round(float(m.score), 6)} for m in face.matches
        ],
    }


def face_line(face: Face, threshold: float) -> str:
    """A face's result in words: 'NAME 0.971 >= 0.963' or 'unknown — nearest: NAME 0.952 <
    0.963', then the runners-up."""
    others = ", ".join(f"{m.identity} {m.score:.3f}" for m in face.matches[1:])
    runners = f"; runners-up: {others}" if others else ""
    if face.match_score is None or not face.matches:
        return "unknown (empty gallery)"
    score = face.match_score
    if face.identity:
        head = f"{face.identity} {score:.3f} >= {threshold:.3f} (cosine similarity >= threshold)"
    else:
        nearest = face.matches[0].identity
        head = (
            f"unknown \u2014 nearest: {nearest} {score:.3f} < {threshold:.3f} "
            "(cosine similarity < threshold)"
        )
    return head + runners


def _check_image_out(out: Path | None) -> None:
    from maskid.apps.draw import can_write_image

    if out is not None and not can_write_image(out):
        raise UsageError(
            f"--out {out}: cannot write a {out.suffix or 'suffix-less'} image; "
            "give a .jpg or .png file name"
        )


def _recognize(
    image: Path,
    top_k: int,
    threshold: float | None,
    as_json: bool,
    out: Path | None,
    gallery_dir: str | None,
    model: str | None,
) -> None:
    from maskid.apps.draw import annotate, default_annotation_path, write_image
    from maskid.errors import NoFaceError
    from maskid.io.images import load_image

    _check_image_out(out)  # before any model is loaded
    rec = _recognizer(gallery_dir, model, threshold=threshold)
    img = load_image(image)
    faces = rec.recognize(img, top_k=top_k)
    if not faces:
        raise NoFaceError(f"{image}: no face found")
    out_path = out or default_annotation_path(image)
    created = _created_note(out_path)
    write_image(out_path, annotate(img, faces))
    if as_json:
        doc = {
            "image": str(image),
            "metric": "cosine similarity",
            "threshold": rec.threshold,
            "annotated": str(out_path),
            "faces": [face_record(f) for f in faces],
        }
        click.echo(json.dumps(doc))
        if created and out is not None:
            click.echo(f"annotated image: {out_path}{created}", err=True)
    else:
        for i, f in enumerate(faces):
            x1, y1, x2, y2 = (round(float(v)) for v in f.box)
            click.echo(f"face {i} [{x1},{y1},{x2},{y2}]: {face_line(f, rec.threshold)}")
        click.echo(f"annotated image: {out_path}{created if out is not None else ''}")


@main.command(name="recognize")
@_recognize_options
def recognize_cmd(**kw: Any) -> None:
    """Who is in the photo? Name, cosine score, runners-up per face."""
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
@click.option(
    "--enroll",
    "enroll_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of identity sub-folders (ENROLL/<name>/*.jpg): every photo is enrolled.",
)
@click.option(
    "--probe",
    "probe_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder of identity sub-folders to identify; people not in --enroll are strangers.",
)
@model_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print the metrics as one JSON document on stdout."
)
@click.option(
    "--output",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the metrics' JSON document to this file.",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write roc.png and scores.png (genuine/impostor histograms) into this folder.",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Threshold to report FAR/FRR and the open-set rates at (default: the model's "
    "shipped one, as `recognize` uses).",
)
@click.option(
    "--mask-copies",
    type=click.IntRange(min=0),
    default=None,
    show_default="the model's own: " + _default_setting("enroll_mask_copies"),
    help="Synthetically masked copies enrolled beside each photo.",
)
@click.option("--pattern", default="*", help="Glob for image files inside identity folders.")
@click.option("--probe-pattern", default=None, help="Glob for probe files (default: --pattern).")
def evaluate(
    enroll_dir: Path,
    probe_dir: Path,
    model: str | None,
    as_json: bool,
    output: Path | None,
    plots_dir: Path | None,
    threshold: float | None,
    mask_copies: int | None,
    pattern: str,
    probe_pattern: str | None,
) -> None:
    """Measure accuracy: enroll ENROLL, identify every PROBE photo.

    Open-set identification: rank-1/5, TAR at FAR 1e-3 and 1e-2, EER, and FAR/FRR at the
    model's shipped threshold (or --threshold)."""
    from maskid.apps.evaluate import evaluate_folders, write_plots
    from maskid.evaluation.metrics import threshold_at_far
    from maskid.pipeline.recognizer import Recognizer

    rec = Recognizer(None, model=model, mask_copies=mask_copies)
    shipped = threshold is None
    op = rec.threshold if threshold is None else threshold
    result = evaluate_folders(
        enroll_dir,
        probe_dir,
        threshold=op,
        enroll_pattern=pattern,
        probe_pattern=probe_pattern or pattern,
        progress=_progress("eval"),
        recognizer=rec,
    )
    report = result.report
    # For reference only: the threshold these probes' own impostors would give (FAR 1e-3).
    fitted = threshold_at_far(result.impostor, 1e-3)
    source = "the model's shipped threshold" if shipped else "--threshold"
    doc = {
        "model": result.model,
        **report.as_dict(),
        "threshold_source": "model" if shipped else "--threshold",
        "fitted_threshold_far_1e-3": fitted if math.isfinite(fitted) else None,
    }
    say = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    say(
        f"model {result.model}: {report.n_probes} probes ({report.n_known} of enrolled people, "
        f"{report.n_no_face} without a face found)"
    )
    say(f"rank-1 {report.rank1:.4f}  rank-5 {report.rank5:.4f}")
    say(
        f"TAR@FAR=1e-3 {report.tar_at_far_1e_3:.4f}  TAR@FAR=1e-2 {report.tar_at_far_1e_2:.4f}  "
        f"EER {report.eer:.4f}"
    )
    say(
        f"at threshold {report.threshold:.4f} ({source}; cosine): "
        f"FAR {report.far_at_threshold:.5f} FRR {report.frr_at_threshold:.4f}"
    )
    if report.n_unknown:
        say(
            f"open set at the threshold: {report.dir_at_threshold:.4f} of enrolled people's probes "
            f"named correctly, {report.false_alarm_at_threshold:.4f} of {report.n_unknown} "
            "strangers' probes given a name"
        )
    say(
        f"fitted on these probes, for reference only (not used above): threshold {fitted:.4f} "
        f"at FAR 1e-3 among their {report.n_impostor} impostor pairs"
    )
    if as_json:
        click.echo(json.dumps(doc))
    if output:
        created = _created_note(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(doc, indent=2))
        click.echo(f"wrote {output}{created}", err=as_json)
    if plots_dir:
        created = "" if plots_dir.exists() else f" (created the directory {plots_dir})"
        for p in write_plots(result, plots_dir):
            click.echo(f"wrote {p}{created}", err=as_json)
            created = ""


@main.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the demo's gallery and annotated picture (default: the cache, printed).",
)
@model_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document on stdout (the story goes to stderr).",
)
def demo(out_dir: Path | None, model: str | None, as_json: bool) -> None:
    """Demo: enroll a newcomer, recognize them in a real mask.

    On bundled photos, offline: builds a small celebrity gallery, enrolls a newcomer from one
    unmasked photo and recognizes a photo of them wearing a real mask; prints the identity,
    score and threshold, and writes the annotated picture."""
    from maskid.apps.demo import run_demo

    created = _created_note(out_dir / "x") if out_dir is not None else ""
    result = run_demo(out_dir, model=model, echo=lambda line: click.echo(line, err=as_json))
    if created:
        click.echo(f"wrote into {out_dir}{created}", err=as_json)
    if as_json:
        doc = {
            "enrolled": result.enrolled,
            "query": str(result.query),
            "threshold": result.threshold,
            "annotated": str(result.annotated),
            "faces": [face_record(f) for f in result.faces],
        }
        click.echo(json.dumps(doc))


@main.command()
@click.option(
    "--source",
    required=True,
    help="0 or /dev/video0 (USB camera), csi://0 (Jetson CSI), rtsp://... or http://..., "
    "a GStreamer pipeline ('... ! appsink'), a video file, or a folder of images. Cameras "
    "take ?width=&height=&fps= (CSI also &flip=0..7), e.g. csi://0?width=1280&height=720&fps=30.",
)
@gallery_option
@model_option
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="As for `recognize` (default: the model's shipped threshold).",
)
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
    "--split-margin",
    type=float,
    default=None,
    help="Cosine similarity to a track's recent faces below which its new face is someone "
    "else's: the track ends (lost) and a new one starts (default: measured once per model on "
    "the bundled photos; -1 never splits).",
)
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
    gallery_dir: str | None,
    model: str | None,
    threshold: float | None,
    output: Path | None,
    as_json: bool,
    display: bool | None,
    detect_every: int,
    embed_every: int,
    votes: int,
    split_margin: float | None,
    max_refresh: int,
    max_frames: int | None,
    threads: int | None,
) -> None:
    """Run the camera loop: track faces, name them, report events.

    It runs until the stream ends; it stops at the end of a file or folder, on q/Esc in the window, Ctrl-C or SIGTERM; live
    sources are reopened when they drop."""
    from maskid.apps.camera import CameraOptions, run_camera

    if output is not None and output.suffix.lower() not in (".mp4", ".avi"):
        raise UsageError(f"--output {output}: record to a .mp4 or .avi file")
    options = CameraOptions(
        detect_every=detect_every,
        embed_every=embed_every,
        votes=votes,
        max_refresh=max_refresh,
        threshold=threshold,
        split_margin=split_margin,
    )
    options.check()
    rec = _recognizer(gallery_dir, model, threshold=threshold, threads=threads)
    created = _created_note(output) if output is not None else ""
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
    if output is not None and stats.frames:
        click.echo(f"recorded {output}{created}", err=True)


@main.command()
def backends() -> None:
    """Report the C++ core, CUDA, TensorRT and ONNX Runtime support.

    What this installation can run on: the compiled parts and the ONNX Runtime providers."""
    from maskid.alignment.warp import backends as probe

    for key, value in probe().items():
        click.echo(f"{key}: {value}")


if __name__ == "__main__":
    main()
