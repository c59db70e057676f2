"""The pipeline: detect -> align -> embed -> match, over one gallery.

Every stage writes onto the `Face` records (insightface's stage protocol), so a caller can stop
after any stage: `analyze()` gives descriptors, `recognize()` adds identities and scores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from maskid.errors import ImageError, MaskidError, NoFaceError
from maskid.face import Face, Match, iou
from maskid.models import sha256_file

# The stages (onnxruntime, OpenCV, hnswlib, PIL) load only when used: `maskid list` and
# `maskid remove` need none of them.
if TYPE_CHECKING:
    from maskid.detect import Detector
    from maskid.embedder import Embedder
    from maskid.gallery import Gallery

ImageInput = str | Path | np.ndarray

# Images whose shorter side is at most this many pixels are treated as tight face crops.
SMALL_IMAGE = 400

# Enrollment's synthetically masked copies (see `Recognizer._enrollment_vectors`): where the mask
# sits (`maskid.masks.apply_mask`'s raise_top/widen), and whether a copy is aligned from a
# detection on the masked image (as a real masked probe is) or with the unmasked photo's chip.
COPY_RAISE_TOP = 0.0
COPY_WIDEN = 0.0
COPY_REDETECT = True
COPY_MIN_IOU = 0.4


def identity_images(root: Path, pattern: str = "*") -> list[tuple[str, Path]]:
    """(identity, image path) for every image matching `pattern` in root/<identity>/."""
    from maskid.imageio import IMAGE_SUFFIXES

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


def l2_normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


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
        gallery: str | Path | None = None,
        model: str | None = None,
        threshold: float | None = None,
        mask_copies: int | None = None,
        threads: int | None = None,
        detector: Detector | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        """`detector`/`embedder`: stages built by the caller (e.g. with their own thread counts,
        or shared between recognizers); by default they are built on first use."""
        from maskid import models
        from maskid.paths import default_gallery_dir

        self.gallery_dir = Path(gallery) if gallery is not None else default_gallery_dir()
        self.model_name = embedder.name if embedder is not None else model or models.DEFAULT_MODEL
        self._threshold = threshold
        self._mask_copies = mask_copies
        self.threads = threads  # CPU threads per model (None: each model's default)
        self._detector: Detector | None = detector
        self._embedder: Embedder | None = embedder
        self._gallery: Gallery | None = None
        self._gallery_checked = False  # whether _gallery was checked against the embedder

    # -- stages ---------------------------------------------------------------------------
    @property
    def detector(self) -> Detector:
        if self._detector is None:
            from maskid.detect import Detector

            self._detector = Detector() if self.threads is None else Detector(threads=self.threads)
        return self._detector

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            from maskid.embedder import Embedder

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
        """Synthetically masked copies enrolled beside each photo (see maskid.masks)."""
        if self._mask_copies is not None:
            return self._mask_copies
        return int(self.embedder.enroll_mask_copies)

    def load(self, image: ImageInput) -> np.ndarray:
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ImageError("image array must be uint8 HxWx3 RGB")
            return image
        from maskid.imageio import load_image

        return load_image(image)

    def detect(self, image: np.ndarray) -> tuple[list[Face], np.ndarray, int]:
        """Faces (largest first), the image the chips should come from, and its border.

        Tight face crops leave the detector no context: small images are searched with a 50%
        edge-replicated border (and any image where nothing was found is tried again so), and
        the chips are then cut from the bordered image, as dlib's reference pipeline does.
        Returned boxes and landmarks are in the coordinates of the bordered image.
        """
        import cv2

        h, w = image.shape[:2]
        if min(h, w) > SMALL_IMAGE:
            faces = self.detector.detect(image)
            if faces:
                return faces, image, 0
        pad = max(h, w) // 2
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        faces = self.detector.detect(padded)
        if not faces and max(h, w) <= SMALL_IMAGE:
            # A tight crop is itself the face box: let ONet score it directly (it recovers most
            # masked crops the cascade's early stages reject), at the crop's size and a bit less.
            cx, cy = pad + w / 2, pad + h / 2
            boxes = [[cx - s, cy - s, cx + s, cy + s] for s in (max(h, w) / 2, 0.45 * max(h, w))]
            faces = self.detector.score_boxes(padded, np.array(boxes))[:1]
        return faces, padded, pad

    def embed(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        """Align and embed `faces` of `image` in one batch; writes `chip_transform`/`descriptor`.

        Each face is warped to the embedder's own chip geometry (its contract)."""
        if not faces:
            return np.zeros((0, self.embedder.dim), np.float32)
        transforms = [self.embedder.chip_transform(f.landmarks) for f in faces]
        descriptors = self.embedder.embed_image(image, transforms)
        for f, m, d in zip(faces, transforms, descriptors, strict=True):
            f.chip_transform = m
            f.descriptor = d
        return descriptors

    def analyze_in_context(self, image: np.ndarray) -> tuple[list[Face], np.ndarray]:
        """Detect and embed; faces are in the coordinates of the returned (maybe bordered) image."""
        faces, source, _ = self.detect(image)
        self.embed(source, faces)
        return faces, source

    def analyze(self, image: ImageInput) -> list[Face]:
        """Detect every face (largest first) and compute its descriptor.

        Boxes, landmarks and chip transforms are in the pixel coordinates of `image`.
        """
        img = self.load(image)
        faces, source, pad = self.detect(img)
        self.embed(source, faces)
        if pad:
            shift = np.array([[0, 0, pad], [0, 0, pad]], dtype=np.float64)
            for f in faces:
                f.box = f.box - pad
                f.landmarks = f.landmarks - pad
                if f.chip_transform is not None:
                    f.chip_transform = f.chip_transform - shift
        return faces

    # -- gallery --------------------------------------------------------------------------
    def gallery(self, create: bool = False) -> Gallery:
        """The gallery, checked to hold this recognizer's embedder's descriptors."""
        from maskid.gallery import Gallery

        if self._gallery is None or (create and not self._gallery_exists()):
            self._gallery = Gallery.open(
                self.gallery_dir,
                embedder_id=self.embedder.model_id,
                dim=self.embedder.dim,
                create=create,
            )
        elif not self._gallery_checked:
            self._gallery.check_embedder(self.embedder.model_id, self.embedder.dim)
        self._gallery_checked = True
        return self._gallery

    def _gallery_any_model(self) -> Gallery:
        """The gallery for what does not depend on the model (removing a name): opened without
        building the embedder (no ONNX Runtime) to check it against the gallery's metadata."""
        from maskid.gallery import Gallery

        if self._gallery is None:
            self._gallery = Gallery.open(self.gallery_dir)
            self._gallery_checked = False
        return self._gallery

    def _gallery_exists(self) -> bool:
        from maskid.gallery import Gallery

        return Gallery.exists(self.gallery_dir)

    def _enrollment_vectors(self, image: np.ndarray, face: Face, seed: int) -> np.ndarray:
        """The face's descriptor plus those of synthetically masked copies of it."""
        if face.descriptor is None or face.chip_transform is None:
            raise ValueError("embed the face before enrolling it")
        vectors = [face.descriptor]
        transform = face.chip_transform
        if self.mask_copies > 0:
            from maskid.masks import apply_mask

            # Random styles/colours, seeded by the photo so a re-run enrolls the same copies.
            rng = np.random.default_rng(seed)
            for _ in range(self.mask_copies):
                m = apply_mask(
                    image, face.landmarks, rng=rng, raise_top=COPY_RAISE_TOP, widen=COPY_WIDEN
                )
                t = self._copy_transform(m, face) if COPY_REDETECT else transform
                vectors.append(self.embedder.embed_image(m, [t])[0])
        return np.stack(vectors)

    def _copy_transform(self, masked: np.ndarray, face: Face) -> np.ndarray:
        """The chip transform of a synthetically masked copy of `face`, aligned as a real masked
        probe is: from the landmarks the detector finds on the masked image (the detection whose
        box overlaps `face.box` most, IoU >= `COPY_MIN_IOU`); `face`'s own transform if none.

        `masked` is in the coordinates `face` was detected in (`enroll_face`'s context image,
        already bordered for a tight crop, as a probe's image is before detection)."""
        assert face.chip_transform is not None
        best, best_iou = None, COPY_MIN_IOU
        for f in self.detector.detect(masked):
            overlap = float(iou(f.box, face.box)[0, 0])
            if overlap >= best_iou:
                best, best_iou = f, overlap
        return face.chip_transform if best is None else self.embedder.chip_transform(best.landmarks)

    def enroll_face(self, image: np.ndarray) -> tuple[Face, np.ndarray]:
        """The single face of an enrollment photo (several faces is an error: whose is it?),
        with the image it is located in (see `analyze_in_context`)."""
        faces, source = self.analyze_in_context(image)
        if not faces:
            raise NoFaceError("no face found")
        if len(faces) > 1 and faces[1].size > 0.25 * faces[0].size:
            raise NoFaceError(f"{len(faces)} faces found; enroll from a photo of one person")
        return faces[0], source

    def enroll(self, name: str, images: Iterable[ImageInput]) -> int:
        """Add a person from one or more photos; returns the number of photos enrolled."""
        items = []
        for image in images:
            try:
                face, context = self.enroll_face(self.load(image))
            except NoFaceError as e:
                raise NoFaceError(f"{_label(image)}: {e}") from None
            source = _source(image)
            seed = int(source["sha256"][:8], 16)
            items.append((self._enrollment_vectors(context, face, seed), source))
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
        from maskid.gallery import Gallery

        return Gallery.read_identities(self.gallery_dir)[0]

    def recognize(
        self, image: ImageInput, top_k: int = 5, threshold: float | None = None
    ) -> list[Face]:
        """Identify every face in the image: `identity` is None below the threshold."""
        gallery = self.gallery()
        faces = self.analyze(image)
        if not faces:
            return faces
        t = self.threshold if threshold is None else threshold
        queries = np.stack([f.descriptor for f in faces if f.descriptor is not None])
        results: list[list[Match]] = gallery.search(queries, k=top_k)
        for f, matches in zip(faces, results, strict=True):
            f.matches = matches
            best = matches[0] if matches else None
            f.match_score = best.score if best else None
            f.identity = best.identity if best and best.score >= t else None
        return faces

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
                    faces, context = self.analyze_in_context(self.load(path))
                except MaskidError:
                    report.unreadable.append(str(path))
                    continue
                if not faces:
                    report.no_face.append(str(path))
                    continue
                # Dataset photos often show bystanders: the largest face is the subject.
                seed = int(source["sha256"][:8], 16)
                vectors = self._enrollment_vectors(context, faces[0], seed)
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
