"""`maskid eval`: open-set identification over two identity-folder trees.

Every image of the enroll tree is enrolled (with the model's synthetic masked copies unless told
otherwise); every probe image is identified against all enrolled identities. Probe identities
not enrolled are impostors. Probes with no face found stay in the counts as errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from maskid.errors import ImageError, MaskidError
from maskid.evaluation.metrics import IdentificationReport, identification_report, roc_curve
from maskid.face import l2_normalize
from maskid.networks.registry import sha256_file
from maskid.pipeline.recognizer import Recognizer, identity_images


@dataclass
class EvalResult:
    model: str
    report: IdentificationReport
    genuine: np.ndarray  # probe-vs-own-identity scores (-inf where no face was found)
    impostor: np.ndarray  # probe-vs-other-identity scores
    scores: np.ndarray | None = None  # (P, I) probe-vs-identity scores (-inf rows: no face)
    truth: np.ndarray | None = None  # (P,) enrolled identity index of each probe, -1 stranger
    probe_ids: list[str] = field(default_factory=list)  # each probe's identity name

    def named_correctly(self, threshold: float) -> np.ndarray:
        """Per probe: its top identity is its own and scores >= threshold (what a user sees)."""
        assert self.scores is not None and self.truth is not None
        top = self.scores.argmax(axis=1)
        return (top == self.truth) & (self.scores.max(axis=1) >= threshold) & (self.truth >= 0)


@dataclass
class DescriptorMemo:
    """Per-photo results of one recognizer (model and mask copies), reused across
    `evaluate_folders` calls: a benchmark scores the same photos under several protocols and
    need not detect and embed them again. None records "no usable face"."""

    enrolled: dict[Path, np.ndarray | None] = field(default_factory=dict)
    probes: dict[Path, np.ndarray | None] = field(default_factory=dict)


def evaluate_folders(
    enroll_dir: Path,
    probe_dir: Path,
    model: str | None = None,
    threshold: float | None = None,
    mask_copies: int | None = None,
    enroll_pattern: str = "*",
    probe_pattern: str = "*",
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    recognizer: Recognizer | None = None,
    memo: DescriptorMemo | None = None,
) -> EvalResult:
    """`memo` (with `recognizer`): reuse and record per-photo descriptors of that recognizer."""
    rec = recognizer or Recognizer(None, model=model, mask_copies=mask_copies)
    if memo is not None and recognizer is None:
        raise ValueError("a memo belongs to one recognizer: pass it too")
    memo = memo if memo is not None else DescriptorMemo()
    enroll = identity_images(Path(enroll_dir), enroll_pattern)
    probes = identity_images(Path(probe_dir), probe_pattern)
    wrap = progress or (lambda x: x)

    names = sorted({name for name, _ in enroll})
    index = {name: i for i, name in enumerate(names)}
    vectors: list[np.ndarray] = []
    owners: list[int] = []
    for name, path in wrap(enroll):
        if path not in memo.enrolled:
            memo.enrolled[path] = _enrollment(rec, path)
        v = memo.enrolled[path]
        if v is None:
            continue  # an enrollment photo without a usable face simply adds nothing
        vectors.append(v)
        owners.extend([index[name]] * len(v))
    if not vectors:
        raise ImageError(f"{enroll_dir}: no face found in any enrollment image")
    gallery = l2_normalize(np.concatenate(vectors))
    owner = np.asarray(owners)

    scores = np.full((len(probes), len(names)), -np.inf)
    no_face = np.zeros(len(probes), bool)
    truth = np.array([index.get(name, -1) for name, _ in probes])
    for i, (_, path) in enumerate(wrap(probes)):
        if path not in memo.probes:
            memo.probes[path] = _probe(rec, path)
        q = memo.probes[path]
        if q is None:
            no_face[i] = True
            continue
        sims = gallery @ l2_normalize(q)
        np.maximum.at(scores[i], owner, sims)
    report = identification_report(scores, truth, no_face, threshold=threshold)

    known = truth >= 0
    genuine = scores[np.flatnonzero(known), truth[known]]
    genuine[no_face[known]] = -np.inf
    mask = np.ones_like(scores, bool)
    mask[np.flatnonzero(known), truth[known]] = False
    mask[no_face] = False
    return EvalResult(
        rec.embedder.name, report, genuine, scores[mask], scores, truth, [n for n, _ in probes]
    )


def _enrollment(rec: Recognizer, path: Path) -> np.ndarray | None:
    """The photo's enrolled vectors (descriptor + masked copies), None without a usable face."""
    try:
        found = rec.enroll_face(rec.load(path))
    except MaskidError:
        return None
    seed = int(sha256_file(path)[:8], 16)  # same masks as `maskid enroll` would draw
    return rec.enrollment_vectors(found, seed)


def _probe(rec: Recognizer, path: Path) -> np.ndarray | None:
    """The descriptor of the photo's largest face, None where no face is found."""
    try:
        faces = rec.analyze(path)
    except MaskidError:
        return None
    return faces[0].descriptor if faces else None


def write_plots(result: EvalResult, out_dir: Path) -> list[Path]:
    """ROC curve and genuine/impostor score histograms as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    far, tar = roc_curve(result.genuine, result.impostor)
    rep = result.report
    paths = []

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.semilogx(np.maximum(far, 1e-5), tar)
    ax.axvline(1e-3, color="grey", ls=":", label="FAR 1e-3")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC ({result.model}): TAR@1e-3 = {rep.tar_at_far_1e_3:.3f}")
    ax.set_xlim(1e-5, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / "roc.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    bins = np.linspace(-0.2, 1.0, 61).tolist()
    g = result.genuine[np.isfinite(result.genuine)]
    ax.hist(result.impostor, bins=bins, density=True, alpha=0.6, label="impostor")
    ax.hist(g, bins=bins, density=True, alpha=0.6, label="genuine")
    ax.axvline(rep.threshold, color="k", ls="--", label=f"threshold {rep.threshold:.3f}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.set_title(f"scores ({result.model}), EER {rep.eer:.3f}")
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "scores.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths
