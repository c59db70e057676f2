"""Open-set metrics on constructed score matrices whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from maskid.evaluation.metrics import (
    equal_error_rate,
    identification_report,
    rank_k,
    rates,
    tar_at_far,
    threshold_at_far,
)


def test_rank_k_counts_identities_scoring_higher() -> None:
    scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.5, 0.4], [0.1, 0.2, 0.3]])
    truth = np.array([0, 2, 0])  # ranks: 1, 2, 3
    assert rank_k(scores, truth, 1) == 1 / 3
    assert rank_k(scores, truth, 2) == 2 / 3
    assert rank_k(scores, truth, 3) == 1.0


def test_probe_without_face_misses_every_rank() -> None:
    scores = np.array([[-np.inf, -np.inf]])
    assert rank_k(scores, np.array([1]), 2) == 0.0


def test_threshold_at_far_allows_at_most_the_requested_false_accepts() -> None:
    rng = np.random.default_rng(0)
    impostor = rng.normal(0.0, 0.1, 20_000)
    for far in (1e-3, 1e-2, 0.1):
        t = threshold_at_far(impostor, far)
        measured = (impostor >= t).mean()
        assert measured <= far
        assert measured > far - 2 / len(impostor)  # and not much stricter than needed


def test_separable_scores_give_perfect_tar_and_zero_eer() -> None:
    genuine = np.linspace(0.6, 0.9, 50)
    impostor = np.linspace(-0.2, 0.4, 5000)
    assert tar_at_far(genuine, impostor, 1e-3) == 1.0
    assert equal_error_rate(genuine, impostor) == 0.0


def test_identical_distributions_give_eer_near_half() -> None:
    rng = np.random.default_rng(1)
    s = rng.normal(size=(2, 4000))
    assert abs(equal_error_rate(s[0], s[1]) - 0.5) < 0.03


def test_report_open_set_and_no_face_accounting() -> None:
    # 3 identities; probes: two known (one correct, one not), one impostor, one without a face.
    scores = np.array(
        [
            [0.9, 0.2, 0.1],  # truth 0: correct
            [0.7, 0.3, 0.2],  # truth 1: wrong (0 wins)
            [0.5, 0.1, 0.0],  # impostor
            [0.9, 0.9, 0.9],  # truth 2, but no face: ignored scores, counted as an error
        ]
    )
    truth = np.array([0, 1, -1, 2])
    no_face = np.array([False, False, False, True])
    rep = identification_report(scores, truth, no_face, threshold=0.6)
    assert rep.n_probes == 4 and rep.n_known == 3 and rep.n_no_face == 1
    assert rep.rank1 == 1 / 3
    assert rep.n_genuine == 3
    # impostor pairs: 2 from probe 0, 2 from probe 1, 3 from the impostor probe.
    assert rep.n_impostor == 7
    far, frr = rates(
        np.array([0.9, 0.3, -np.inf]), np.array([0.2, 0.1, 0.7, 0.2, 0.5, 0.1, 0.0]), 0.6
    )
    assert (rep.far_at_threshold, rep.frr_at_threshold) == (far, frr) == (1 / 7, 2 / 3)


def test_heldout_split_is_identity_disjoint_deterministic_and_balanced() -> None:
    import importlib.util
    from pathlib import Path

    from maskid.evaluation.splits import lfw_dev, m2fred_halves, rmfd_dev

    ids = [f"{i:03d}" for i in range(43)]
    halves = m2fred_halves(ids[::-1])  # input order does not matter
    assert halves == m2fred_halves(ids)
    dev, test = set(halves["dev"]), set(halves["test"])
    assert not dev & test and dev | test == set(ids) and halves["all"] == ids
    assert (len(dev), len(test)) == (22, 21)
    assert halves["dev"][:3] == ["000", "002", "004"]
    assert rmfd_dev(ids[::-1]) == rmfd_dev(ids) and len(rmfd_dev(ids)) == 11
    assert len(lfw_dev([f"{i:04d}" for i in range(1652)])) == 83
    # training/experiments/heldout.py (the settings search over a descriptor cache) splits the same way
    path = Path(__file__).resolve().parents[1] / "training" / "experiments" / "heldout.py"
    spec = importlib.util.spec_from_file_location("heldout_search", path)
    assert spec is not None and spec.loader is not None
    heldout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heldout)
    assert heldout.split_identities(ids[::-1]) == halves


def test_training_identities_leave_out_every_dev_identity(shared_data) -> None:
    from maskid.evaluation.splits import identity_dirs, lfw_dev, rmfd_dev, training_identities

    train = training_identities(shared_data)
    rmfd = identity_dirs(shared_data / "train" / "rmfd")
    lfw = identity_dirs(shared_data / "train" / "lfw")
    assert not set(train["rmfd"]) & set(rmfd_dev(rmfd)) and len(rmfd_dev(rmfd)) == 43
    assert not set(train["lfw"]) & set(lfw_dev(lfw)) and len(lfw_dev(lfw)) == 83
    assert len(train["rmfd"]) + 43 == len(rmfd) and len(train["lfw"]) + 83 == len(lfw)
    assert len(train["glint23"]) == 23


def test_identity_bootstrap_is_paired_and_signed() -> None:
    from maskid.evaluation.metrics import identity_bootstrap

    rng = np.random.default_rng(3)
    truth = np.repeat(np.arange(6), 3)
    s0 = rng.uniform(0.0, 0.5, (len(truth), 6))
    s0[np.arange(len(truth)), truth] += 0.3  # most probes right, some wrong
    same = identity_bootstrap(s0, s0, truth, np.zeros(len(truth), bool), n=50)
    assert all(v == [0.0, 0.0, 0.0] for v in same.values())
    s1 = s0.copy()
    s1[np.arange(len(truth)), truth] = 2.0  # every probe right now
    better = identity_bootstrap(s0, s1, truth, np.zeros(len(truth), bool), n=50)
    r0 = float(np.mean(s0.argmax(1) == truth))
    assert r0 < 1.0  # the draw leaves some probes wrong, so there is something to gain
    assert better["rank1"][0] == pytest.approx(1.0 - r0) and better["rank1"][1] >= 0


def test_open_set_dir_and_false_alarms_are_per_probe() -> None:
    scores = np.array(
        [
            [0.9, 0.2, 0.1],  # truth 0: named correctly at 0.6
            [0.7, 0.3, 0.2],  # truth 1: named, but wrongly (0 wins): not a detection
            [0.5, 0.1, 0.0],  # a stranger: an alarm only once the threshold drops below 0.5
            [0.9, 0.9, 0.9],  # truth 2, no face: a miss
            [0.95, 0.1, 0.1],  # a stranger without a face found: never an alarm
        ]
    )
    truth = np.array([0, 1, -1, 2, -1])
    no_face = np.array([False, False, False, True, True])
    strict = identification_report(scores, truth, no_face, threshold=0.6)
    assert strict.n_unknown == 2
    assert (strict.dir_at_threshold, strict.false_alarm_at_threshold) == (1 / 3, 0.0)
    loose = identification_report(scores, truth, no_face, threshold=0.4)
    assert (loose.dir_at_threshold, loose.false_alarm_at_threshold) == (1 / 3, 1 / 2)
    closed = identification_report(scores[:2], truth[:2], no_face[:2], threshold=0.6)
    assert closed.n_unknown == 0 and closed.as_dict()["false_alarm_at_threshold"] is None
    assert closed.dir_at_threshold == 1 / 2
