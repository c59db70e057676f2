"""Open-set identification metrics from similarity scores (higher = more similar).

Conventions: a probe that produced no descriptor (no face found) is an error, never dropped:
its genuine score is -inf (rejected at every threshold) and it misses every rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class IdentificationReport:
    rank1: float
    rank5: float
    tar_at_far_1e_3: float
    tar_at_far_1e_2: float
    eer: float
    threshold: float  # operating threshold (score >= threshold means "same person")
    far_at_threshold: float
    frr_at_threshold: float
    n_probes: int
    n_known: int
    n_no_face: int
    n_genuine: int
    n_impostor: int
    # Open set, per probe at the operating threshold: DIR, the share of enrolled people's probes
    # named correctly (top identity right and scoring >= threshold); false alarms, the share of
    # strangers' probes (identity not enrolled) given a name (NaN when there are none).
    n_unknown: int = 0
    dir_at_threshold: float = float("nan")
    false_alarm_at_threshold: float = float("nan")

    def as_dict(self) -> dict[str, float | int | None]:
        def maybe(v: float) -> float | None:  # JSON has no NaN
            return None if np.isnan(v) else v

        return {
            "rank1": self.rank1,
            "rank5": self.rank5,
            "tar_at_far_1e-3": self.tar_at_far_1e_3,
            "tar_at_far_1e-2": self.tar_at_far_1e_2,
            "eer": self.eer,
            "threshold": self.threshold,
            "far_at_threshold": self.far_at_threshold,
            "frr_at_threshold": self.frr_at_threshold,
            "n_probes": self.n_probes,
            "n_known": self.n_known,
            "n_no_face": self.n_no_face,
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "n_unknown": self.n_unknown,
            "dir_at_threshold": maybe(self.dir_at_threshold),
            "false_alarm_at_threshold": maybe(self.false_alarm_at_threshold),
        }


def rank_k(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Fraction of probes whose true identity is among the k best-scoring identities.

    scores: (P, I) probe-vs-identity scores (rows of -inf for probes without a face);
    truth: (P,) index of the true identity in [0, I).
    """
    if len(truth) == 0:
        return float("nan")
    true_scores = scores[np.arange(len(truth)), truth]
    # Rank = number of identities scoring strictly higher; ties count in the probe's favour.
    better = (scores > true_scores[:, None]).sum(axis=1)
    hit = (better < k) & np.isfinite(true_scores)
    return float(hit.mean())


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """Smallest threshold whose false accept rate (impostor >= t) does not exceed `far`."""
    imp = np.sort(impostor[np.isfinite(impostor)])[::-1]
    if len(imp) == 0:
        return float("-inf")
    allowed = int(np.floor(far * len(imp)))  # impostors that may pass
    if allowed >= len(imp):
        return float(imp[-1])
    # Threshold just above the (allowed+1)-th highest impostor score.
    return float(np.nextafter(imp[allowed], np.inf))


def rates(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> tuple[float, float]:
    """(FAR, FRR) at a threshold; -inf genuine scores (no face) are false rejects."""
    far = float((impostor >= threshold).mean()) if len(impostor) else float("nan")
    frr = float((genuine < threshold).mean()) if len(genuine) else float("nan")
    return far, frr


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float:
    t = threshold_at_far(impostor, far)
    return 1.0 - rates(genuine, impostor, t)[1]


def roc_curve(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAR and TAR at every distinct finite score used as a threshold (descending)."""
    finite = np.concatenate([genuine[np.isfinite(genuine)], impostor[np.isfinite(impostor)]])
    thresholds = np.unique(finite)[::-1]
    g = np.sort(genuine)
    i = np.sort(impostor)
    tar = (len(g) - np.searchsorted(g, thresholds, side="left")) / max(len(g), 1)
    far = (len(i) - np.searchsorted(i, thresholds, side="left")) / max(len(i), 1)
    return far, tar


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> float:
    far, tar = roc_curve(genuine, impostor)
    if len(far) == 0:
        return float("nan")
    frr = 1.0 - tar
    j = int(np.argmin(np.abs(far - frr)))
    return float((far[j] + frr[j]) / 2.0)


def open_set_rates(
    scores: np.ndarray, probe_truth: np.ndarray, no_face: np.ndarray, threshold: float
) -> tuple[float, float]:
    """(DIR, false-alarm rate) at `threshold`; see `IdentificationReport`. A probe without a face
    is a miss if its person is enrolled and raises no alarm if not."""
    found = ~no_face
    best = np.where(found, scores.max(axis=1, initial=-np.inf), -np.inf)
    named = found & (best >= threshold)
    known = probe_truth >= 0
    top = scores.argmax(axis=1) if scores.shape[1] else np.zeros(len(scores), int)
    dir_ = float((named & (top == probe_truth))[known].mean()) if known.any() else float("nan")
    alarm = float(named[~known].mean()) if (~known).any() else float("nan")
    return dir_, alarm


def identification_report(
    scores: np.ndarray,
    probe_truth: np.ndarray,
    no_face: np.ndarray,
    threshold: float | None = None,
    far_target: float = 1e-3,
) -> IdentificationReport:
    """Summarise an open-set run.

    scores: (P, I) probe-vs-identity similarity (max over each identity's enrolled descriptors);
    probe_truth: (P,) identity index, or -1 for probes whose identity is not enrolled (impostors);
    no_face: (P,) bool, probes where no face was found (their scores row is ignored).
    The operating threshold is `threshold` if given, else the one at `far_target`.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    scores[no_face] = -np.inf
    known = probe_truth >= 0
    genuine_mask = np.zeros_like(scores, dtype=bool)
    genuine_mask[np.flatnonzero(known), probe_truth[known]] = True
    genuine = scores[genuine_mask]
    # Impostor comparisons: every probe-vs-identity pair that is not genuine, from probes with a
    # face (a probe with no face raises no false accept).
    impostor = scores[~genuine_mask & ~no_face[:, None]]
    op = threshold if threshold is not None else threshold_at_far(impostor, far_target)
    far, frr = rates(genuine, impostor, op)
    dir_, alarm = open_set_rates(scores, probe_truth, no_face, op)
    return IdentificationReport(
        rank1=rank_k(scores[known], probe_truth[known], 1),
        rank5=rank_k(scores[known], probe_truth[known], 5),
        tar_at_far_1e_3=tar_at_far(genuine, impostor, 1e-3),
        tar_at_far_1e_2=tar_at_far(genuine, impostor, 1e-2),
        eer=equal_error_rate(genuine, impostor),
        threshold=float(op),
        far_at_threshold=far,
        frr_at_threshold=frr,
        n_probes=len(probe_truth),
        n_known=int(known.sum()),
        n_no_face=int(no_face.sum()),
        n_genuine=len(genuine),
        n_impostor=len(impostor),
        n_unknown=int((~known).sum()),
        dir_at_threshold=dir_,
        false_alarm_at_threshold=alarm,
    )


BOOTSTRAP_KEYS = ("rank1", "tar_at_far_1e-3", "tar_at_far_1e-2", "eer")


def identity_bootstrap(
    s0: np.ndarray,
    s1: np.ndarray,
    truth: np.ndarray,
    no_face: np.ndarray,
    keys: tuple[str, ...] = BOOTSTRAP_KEYS,
    n: int = 300,
) -> dict[str, list[float]]:
    """Scores s1 minus s0 on the same probes: [full-set delta, 5th, 95th percentile] of each
    metric over resamples of the probe identities (the paired yardstick of every comparison)."""
    ids = np.unique(truth[truth >= 0])

    def metric(s: np.ndarray, idx: np.ndarray) -> np.ndarray:
        r = identification_report(s[idx], truth[idx], no_face[idx]).as_dict()
        return np.array([r[k] for k in keys])

    def delta(sel: np.ndarray) -> np.ndarray:
        idx = np.concatenate([np.flatnonzero(truth == i) for i in sel])
        return metric(s1, idx) - metric(s0, idx)

    rng = np.random.default_rng(0)
    draws = np.array([delta(rng.choice(ids, len(ids))) for _ in range(n)])
    lo, hi = np.percentile(draws, [5, 95], axis=0)
    full = delta(ids)
    return {k: [float(full[j]), float(lo[j]), float(hi[j])] for j, k in enumerate(keys)}
