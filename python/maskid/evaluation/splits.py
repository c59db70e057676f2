"""The identity splits every model choice and report uses, fixed before any choice (issue 12).

- M2FRED (`eval/m2fred`, real masks): sorted ids, even positions "dev", odd positions "test".
  Test is never used for a choice; it is the report.
- RMFD (`train/rmfd`, real masks): sorted ids at positions 1, 5, 9, ... (a quarter) are dev and
  never trained on; the rest are training data.
- LFW (`train/lfw`, photos of other occasions): sorted ids at positions 7, 27, 47, ... (a
  twentieth) are dev (threshold calibration across occasions) and never trained on.
glint23 and celeba are training data only.
"""

from __future__ import annotations

from pathlib import Path


def m2fred_halves(ids: list[str]) -> dict[str, list[str]]:
    """Identity-disjoint halves of M2FRED: sorted ids, even positions dev, odd test."""
    s = sorted(ids)
    return {"dev": s[0::2], "test": s[1::2], "all": s}


def rmfd_dev(ids: list[str]) -> list[str]:
    """The RMFD identities held out of training for dev choices (a quarter)."""
    return sorted(ids)[1::4]


def lfw_dev(ids: list[str]) -> list[str]:
    """The LFW (train/lfw) identities held out of training for threshold calibration."""
    return sorted(ids)[7::20]


def identity_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def training_identities(shared_data: Path) -> dict[str, list[str]]:
    """Per training source, the identities a model may be trained on (dev ids removed)."""
    train = shared_data / "train"
    out = {}
    for source in ("glint23", "celeba", "lfw", "rmfd"):
        ids = identity_dirs(train / source)
        held = set(rmfd_dev(ids)) if source == "rmfd" else set()
        held |= set(lfw_dev(ids)) if source == "lfw" else set()
        out[source] = [i for i in ids if i not in held]
    return out
