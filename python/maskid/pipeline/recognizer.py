"""The pipeline: find faces -> describe (align + embed) -> match, over one gallery.

The Recognizer is the one pipeline: the CLI, the camera loop, `maskid eval`, the benchmarks and
training all call its public steps (`find_faces`, `describe`, `match`, `enrollment_vectors`) and
take its stages from the caller when they need their own (`detector=`, `embedder=`,
`gallery=`). Every step writes onto the `Face` records (insightface's stage protocol), so a
caller can stop after any of them: `analyze()` gives descriptors, `recognize()` adds identities.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from maskid.errors import ImageError, MaskidError, NoFaceError
from maskid.face import Face, Match, iou
from maskid.networks.registry import sha256_file

# The stages (onnxruntime, OpenCV, hnswlib, PIL) load only when used: `maskid list` and
# `maskid remove` need none of them.
if TYPE_CHECKING:
    from maskid.detection import FaceDetector
    from maskid.gallery import GalleryBackend
    from maskid.networks.embedder import Embedder

ImageInput = str | Path | np.ndarray

# Enrollment's synthetically masked copies (see `Recognizer.enrollment_vectors`): where the mask
# sits (`maskid.pipeline.masks.apply_mask`'s raise_top/widen), and whether a copy is aligned from a
# detection on the masked image (as a real masked probe is) or with the unmasked photo's chip.
COPY_RAISE_TOP = 0.0
COPY_WIDEN = 0.0
COPY_REDETECT = True
COPY_MIN_IOU = 0.4


def identity_images(root: Path, pattern: str = "*") -> list[tuple[str, Path]]:
    """(identity, image path) for every image matching `pattern` in root/<identity>/."""
    from maskid.io.images import IMAGE_SUFFIXES

    if not root.is_dir():
        raise ImageError(f"{root}: not a directory of identity folders")
    items = [
        (person.name, p)
        for person in sorted(root.iterdir())
        if person.is_dir()
        for p in sorted(person.glob(pattern))
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise ImageError(f"{root}: no images matching {pattern!r} in identity sub-folders")
    return items


@dataclass
class FoundFaces:
    """`find_faces`' result: the faces (largest first) in the coordinates of `source`, which is
    the image itself or, for a tight crop, the image with a `border` of edge-replicated pixels
    (chips are cut from `source`, so the border's context helps alignment too)."""

    faces: list[Face]
    source: np.ndarray
    border: int = 0

    def to_image_coordinates(self) -> list[Face]:
        """The faces with boxes, landmarks and chip transforms shifted into the input image's
        own pixel coordinates (a no-op without a border)."""
        if self.border:
            b = self.border
            shift = np.array([[0, 0, b], [0, 0, b]], dtype=np.float64)
            for f in self.faces:
                f.box = f.box - b
                f.landmarks = f.landmarks - b
                if f.chip_transform is not None:
                    f.chip_transform = f.chip_transform - shift
            self.border = 0
        return self.faces


@dataclass
class BuildReport:
    added: int = 0
    skipped_known: int = 0
    no_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    identities: int = 0


class Recognizer:
    """Face identification against a gallery. Models load lazily on first use.

    >>> rec = Recognizer("my-gallery")
    >>> rec.enroll("Ada", ["ada.jpg"])
    >>> [(f.identity, f.match_score) for f in rec.recognize("masked.jpg")]
    """

    def __init__(
        self,
        gallery: str | os.PathLike[str] | GalleryBackend | None = None,
        model: str | None = None,
        threshold: float | None = None,
        mask_copies: int | None = None,
        threads: int | None = None,
        detector: FaceDetector | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        """gallery: where the gallery lives (a directory, or a URI its backend understands; the
            default directory when None), or an open gallery object.
        model: the embedder by name or path (the shipped default when None).
        threshold, mask_copies: override the model's measured operating settings.
        threads: CPU threads per model (None: each model's default).
        detector, embedder: stages built by the caller (with their own settings, or shared
            between recognizers); by default they are built on first use.
        """
        from maskid.networks import registry as models
        from maskid.paths import default_gallery

        self._gallery: GalleryBackend | None = None
        self._gallery_checked = False  # whether _gallery was checked against the embedder
        self._gallery_given = False  # an open gallery from the caller: never reopened here
        if gallery is None:
            self.gallery_location: str | Path = default_gallery()
        elif isinstance(gallery, str | os.PathLike):
            from maskid.gallery import as_location

            self.gallery_location = as_location(gallery)
        else:
            self._gallery, self._gallery_given = gallery, True
            self.gallery_location = str(getattr(gallery, "location", "<gallery object>"))
        self.model_name = embedder.name if embedder is not None else model or models.DEFAULT_MODEL
        self._threshold = threshold
        self._mask_copies = mask_copies
        self.threads = threads
        self._detector: FaceDetector | None = detector
        self._embedder: Embedder | None = embedder

    # -- stages ---------------------------------------------------------------------------
    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            from maskid.detection import default_detector

            self._detector = default_detector(self.threads)
        return self._detector

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from maskid.networks.embedder import Embedder

            self._embedder = Embedder(self.model_name, threads=self.threads)
        return self._embedder

    @property
    def threshold(self) -> float:
        """Cosine-similarity threshold below which a face is "unknown"."""
        if self._threshold is not None:
            return self._threshold
        return float(self.embedder.threshold)

    @property
    def mask_copies(self) -> int:
        """Synthetically masked copies enrolled beside each photo (see maskid.pipeline.masks)."""
        if self._mask_copies is not None:
            return self._mask_copies
        return int(self.embedder.enroll_mask_copies)

    # -- the steps ------------------------------------------------------------------------
    def load(self, image: ImageInput) -> np.ndarray:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ImageError("image array must be uint8 HxWx3 RGB")
            return image
        from maskid.io.images import load_image

        return load_image(image)

    def find_faces(self, image: np.ndarray, retry_with_border: bool = True) -> FoundFaces:
        """Detect the faces of an RGB image, tight face crops included (see
        `maskid.detection.tight_crops`). `retry_with_border=False` skips the second search of a
        large image where nothing was found (a camera frame with nobody in it)."""
        from maskid.detection.tight_crops import find_faces

        faces, source, border = find_faces(self.detector, image, retry_with_border)
        return FoundFaces(faces, source, border)

    def describe(
        self,
        image: np.ndarray,
        faces: Sequence[Face],
        timings: dict[str, float] | None = None,
    ) -> np.ndarray:
        """Align and embed `faces` of `image` in one batch, each warped to the embedder's own
        chip geometry (its contract); writes `chip_transform` and `descriptor` on each face.

        timings: if given, gets the milliseconds spent in "align" and "embed" added to it."""
        embedder = self.embedder
        if not faces:
            return np.zeros((0, embedder.dim), np.float32)
        t0 = time.perf_counter()
        transforms = [embedder.chip_transform(f.landmarks) for f in faces]
        batch = embedder.prepare(image, transforms)
        t1 = time.perf_counter()
        descriptors = embedder.embed_batch(batch)
        if timings is not None:
            timings["align"] = timings.get("align", 0.0) + (t1 - t0) * 1000
            timings["embed"] = timings.get("embed", 0.0) + (time.perf_counter() - t1) * 1000
        for f, m, d in zip(faces, transforms, descriptors, strict=True):
            f.chip_transform = m
            f.descriptor = d
        return descriptors

    def match(
        self, faces: Sequence[Face], top_k: int = 5, threshold: float | None = None
    ) -> list[Face]:
        """Search the gallery for each described face: writes `matches` (best first),
        `match_score`, and `identity` (None below the threshold)."""
        faces = list(faces)
        if not faces:
            return faces
        gallery = self.gallery()
        t = self.threshold if threshold is None else threshold
        if any(f.descriptor is None for f in faces):
            raise ValueError("describe the faces before matching them")
        queries = np.stack([f.descriptor for f in faces if f.descriptor is not None])
        results: list[list[Match]] = gallery.search(queries, k=top_k)
        for f, matches in zip(faces, results, strict=True):
            f.matches = matches
            best = matches[0] if matches else None
            f.match_score = best.score if best else None
            f.identity = best.identity if best and best.score >= t else None
        return faces

    def analyze_in_context(self, image: np.ndarray) -> FoundFaces:
        """Find and describe; faces stay in the coordinates of the (maybe bordered) source."""
        found = self.find_faces(image)
        self.describe(found.source, found.faces)
        return found

    def analyze(self, image: ImageInput) -> list[Face]:
        """Find every face (largest first) and compute its descriptor.

        Boxes, landmarks and chip transforms are in the pixel coordinates of `image`.
        """
        return self.analyze_in_context(self.load(image)).to_image_coordinates()

    def recognize(
        self, image: ImageInput, top_k: int = 5, threshold: float | None = None
    ) -> list[Face]:
        """Identify every face in the image: `identity` is None below the threshold."""
        self.gallery()  # a missing or mismatched gallery is an error before any work
        return self.match(self.analyze(image), top_k, threshold)

    # -- gallery --------------------------------------------------------------------------
    def gallery(self, create: bool = False) -> GalleryBackend:
        """The gallery, checked to hold this recognizer's embedder's descriptors."""
        from maskid.gallery import open_gallery

        reopen = create and not self._gallery_given and not self._gallery_exists()
        if self._gallery is None or reopen:
            self._gallery = open_gallery(
                self.gallery_location,
                embedder_id=self.embedder.model_id,
                dim=self.embedder.dim,
                create=create,
            )
        elif not self._gallery_checked:
            self._gallery.check_embedder(self.embedder.model_id, self.embedder.dim)
        self._gallery_checked = True
        return self._gallery

    def gallery_exists(self) -> bool:
        return self._gallery is not None or self._gallery_exists()

    def _gallery_any_model(self) -> GalleryBackend:
        """The gallery for what does not depend on the model (removing a name): opened without
        building the embedder (no ONNX Runtime) to check it against the gallery's metadata."""
        from maskid.gallery import open_gallery

        if self._gallery is None:
            self._gallery = open_gallery(self.gallery_location)
            self._gallery_checked = False
        return self._gallery

    def _gallery_exists(self) -> bool:
        from maskid.gallery import gallery_exists

        return gallery_exists(self.gallery_location)

    # -- enrollment -----------------------------------------------------------------------
    def enrollment_vectors(
        self, found: FoundFaces, seed: int, face: Face | None = None
    ) -> np.ndarray:
        """The descriptor of `face` (by default the largest of `found`, as `enroll_face` and
        `analyze_in_context` return it) plus those of `mask_copies` synthetically masked copies
        of it (random styles and colours drawn from `seed`, so a re-run enrolls the same copies)."""
        face = found.faces[0] if face is None else face
        image = found.source
        if face.descriptor is None or face.chip_transform is None:
            raise ValueError("describe the face before enrolling it")
        vectors = [face.descriptor]
        if self.mask_copies > 0:
            from maskid.pipeline.masks import apply_mask

            rng = np.random.default_rng(seed)
            for _ in range(self.mask_copies):
                m = apply_mask(
                    image, face.landmarks, rng=rng, raise_top=COPY_RAISE_TOP, widen=COPY_WIDEN
                )
                t = (
                    self.copy_transform(m, face, found.border)
                    if COPY_REDETECT
                    else face.chip_transform
                )
                vectors.append(self.embedder.embed_image(m, [t])[0])
        return np.stack(vectors)

    def copy_transform(self, masked: np.ndarray, face: Face, border: int = 0) -> np.ndarray:
        """The chip transform of a synthetically masked copy of `face`, aligned as a real masked
        probe is: from the landmarks the detector finds on the masked image (the detection whose
        box overlaps `face.box` most, IoU >= `COPY_MIN_IOU`); `face`'s own transform if none.

        `masked` is in the coordinates `face` was found in (the source image, bordered by
        `border` for a tight crop), and is searched as the photo was (`detect_in_source`)."""
        from maskid.detection.tight_crops import detect_in_source

        assert face.chip_transform is not None
        best, best_iou = None, COPY_MIN_IOU
        for f in detect_in_source(self.detector, masked, border):
            overlap = float(iou(f.box, face.box)[0, 0])
            if overlap >= best_iou:
                best, best_iou = f, overlap
        return face.chip_transform if best is None else self.embedder.chip_transform(best.landmarks)

    def enroll_face(self, image: np.ndarray) -> FoundFaces:
        """The described faces of an enrollment photo, which must show one person (a second
        face of comparable size is an error: whose is it?); the subject is `faces[0]`, in the
        coordinates of `source` (see `analyze_in_context`)."""
        found = self.analyze_in_context(image)
        faces = found.faces
        if not faces:
            raise NoFaceError("no face found")
        if len(faces) > 1 and faces[1].size > 0.25 * faces[0].size:
            raise NoFaceError(f"{len(faces)} faces found; enroll from a photo of one person")
        return found

    def enroll(self, name: str, images: Iterable[ImageInput]) -> int:
        """Add a person from one or more photos; returns the number of photos enrolled."""
        items = []
        for image in images:
            try:
                found = self.enroll_face(self.load(image))
            except NoFaceError as e:
                raise NoFaceError(f"{_label(image)}: {e}") from None
            source = _source(image)
            seed = int(source["sha256"][:8], 16)
            items.append((self.enrollment_vectors(found, seed), source))
        gallery = self.gallery(create=True)
        with gallery.batch() as batch:
            for vectors, source in items:
                batch.add(name, vectors, [source] * len(vectors))
        return len(items)

    def remove(self, name: str) -> int:
        """Remove person `name` (any model's gallery: no network is loaded)."""
        return int(self._gallery_any_model().remove(name))

    def identities(self) -> dict[str, int]:
        """Name -> descriptors enrolled, from the gallery's metadata (no network or index is
        loaded unless the gallery is already open)."""
        if self._gallery is not None:
            return dict(self._gallery.identities())
        from maskid.gallery import read_identities

        return read_identities(self.gallery_location)

    def build(
        self,
        dataset: str | Path,
        progress: Callable[[Iterable[Path]], Iterable[Path]] | None = None,
    ) -> BuildReport:
        """Add every image of DATASET/<identity>/* not yet in the gallery (one commit)."""
        work = identity_images(Path(dataset))
        gallery = self.gallery(create=True)
        report = BuildReport()
        paths = [p for _, p in work]
        iterator = progress(paths) if progress else paths
        with gallery.batch() as batch:
            for (name, _), path in zip(work, iterator, strict=True):
                source = _source(path)
                if gallery.has_source(source["sha256"]):
                    report.skipped_known += 1
                    continue
                try:
                    found = self.analyze_in_context(self.load(path))
                except MaskidError:
                    report.unreadable.append(str(path))
                    continue
                if not found.faces:
                    report.no_face.append(str(path))
                    continue
                # Dataset photos often show bystanders: the largest face is the subject.
                seed = int(source["sha256"][:8], 16)
                vectors = self.enrollment_vectors(found, seed)
                batch.add(name, vectors, [source] * len(vectors))
                report.added += 1
        report.identities = len(gallery.identities())
        return report


def _label(image: ImageInput) -> str:
    return str(image) if not isinstance(image, np.ndarray) else "<array>"


def _source(image: ImageInput) -> dict[str, str]:
    if isinstance(image, np.ndarray):
        return {"path": "<array>", "sha256": hashlib.sha256(image.tobytes()).hexdigest()}
    path = Path(image)
    return {"path": str(path.resolve()), "sha256": sha256_file(path)}
