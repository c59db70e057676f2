"""Where maskid keeps things: bundled data, the per-user cache and the default gallery."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parent / "data"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def cache_dir() -> Path:
    """Derived artefacts (converted ONNX models, TensorRT engines): `$MASKID_CACHE` or XDG cache."""
    override = os.environ.get("MASKID_CACHE")
    path = Path(override) if override else _xdg("XDG_CACHE_HOME", ".cache") / "maskid"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_gallery() -> str | Path:
    """The gallery used when `--gallery` is not given: `$MASKID_GALLERY` (a directory or a
    gallery server's URI) or the XDG data dir."""
    override = os.environ.get("MASKID_GALLERY")
    if override:
        return override if "://" in override else Path(override)
    return _xdg("XDG_DATA_HOME", ".local/share") / "maskid" / "gallery"


def shared_data_dir() -> Path | None:
    """The team's research data beside the checkout (`../shared/data`), if present.

    Only tests and benchmarks use it; `$MASKID_SHARED` overrides the location.
    """
    override = os.environ.get("MASKID_SHARED")
    candidates = [Path(override)] if override else []
    here = Path(__file__).resolve()
    candidates += [p / "shared" / "data" for p in here.parents]
    candidates.append(Path.cwd().parent / "shared" / "data")
    for c in candidates:
        if (c / "eval").is_dir() or (c / "demo").is_dir():
            return c
    return None
