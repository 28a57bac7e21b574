from __future__ import annotations

import math

import numpy as np
import pytest

from vlmad.metrics.stats import (
    BootstrapResult,
    holm,
    holm_reject,
    mcnemar_exact,
    paired_bootstrap,
    paired_bootstrap_metric,
)

# ------------------------------------------------------------------------------------------- helpers


def _exact_mcnemar(only_a: int, only_b: int) -> float:
    """Independent reference: two-sided exact binomial p-value from math.comb."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def _pairs(both_correct: int, only_a: int, only_b: int, both_wrong: int) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * both_correct + [True] * only_a + [False] * only_b + [False] * both_wrong
    b = [True] * both_correct + [False] * only_a + [True] * only_b + [False] * both_wrong
    return np.array(a), np.array(b)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann–Whitney AUROC by pairwise comparison; ValueError when a class is missing."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("need both classes")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


# ------------------------------------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [(1, 6, 0.125), (0, 5, 0.0625), (6, 1, 0.125), (4, 4, 1.0), (0, 0, 1.0), (3, 4, 1.0)],
)
def test_mcnemar_known_values(only_a: int, only_b: int, expected: float) -> None:
    a, b = _pairs(3, only_a, only_b, 2)
    assert mcnemar_exact(a, b).p_value == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize(("only_a", "only_b"), [(2, 9), (10, 3), (0, 12), (5, 7), (17, 30), (1, 1), (0, 1)])
def test_mcnemar_matches_direct_binomial_sum(only_a: int, only_b: int) -> None:
    a, b = _pairs(5, only_a, only_b, 4)
    assert mcnemar_exact(a, b).p_value == pytest.approx(_exact_mcnemar(only_a, only_b), rel=1e-12, abs=0)


def test_mcnemar_counts_on_hand_made_example() -> None:
    a = [1, 1, 0, 0, 1, 0, 1, 1]
    b = [1, 0, 1, 0, 0, 0, 1, 1]
    r = mcnemar_exact(a, b)
    assert (r.n, r.both_correct, r.only_a, r.only_b, r.both_wrong) == (8, 3, 2, 1, 2)
    assert r.discordant == 3
    assert r.accuracy_a == pytest.approx(5 / 8)
    assert r.accuracy_b == pytest.approx(4 / 8)
    assert r.p_value == pytest.approx(1.0)


def test_mcnemar_accepts_int_and_bool_alike() -> None:
    a, b = _pairs(2, 1, 6, 1)
    assert mcnemar_exact(a.astype(int), b.astype(int)) == mcnemar_exact(a, b)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        ([1, 0, 1], [1, 0], "a_correct and b_correct differ in length: 3 vs 2"),
        ([], [], "a_correct is empty"),
        ([1, 2, 0], [1, 0, 0], "a_correct must hold booleans"),
        ([1, 0], [0.5, 1.0], "b_correct must hold booleans"),
        (["yes", "no"], [1, 0], "a_correct must hold booleans"),
        ([1.0, float("nan")], [1, 0], "a_correct contains NaN"),
    ],
)
def test_mcnemar_rejects_bad_input(a: list, b: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mcnemar_exact(a, b)


# ----------------------------------------------------------------------------------------- bootstrap


def _correctness(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(n) < 0.8, rng.random(n) < 0.7


def test_bootstrap_is_reproducible_for_equal_seeds_and_varies_with_seed() -> None:
    a, b = _correctness(1)
    r1 = paired_bootstrap(a, b, n_boot=500, seed=7)
    r2 = paired_bootstrap(a, b, n_boot=500, seed=7)
    r3 = paired_bootstrap(a, b, n_boot=500, seed=8)
    assert r1 == r2
    assert np.array_equal(r1.distribution, r2.distribution)
    assert not np.array_equal(r1.distribution, r3.distribution)
    assert r1.seed == 7 and r3.seed == 8


def test_bootstrap_estimate_and_interval() -> None:
    a, b = _correctness(2)
    r = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert isinstance(r, BootstrapResult)
    assert r.estimate == pytest.approx(a.mean() - b.mean())
    assert r.low <= r.estimate <= r.high
    assert r.low < r.high
    assert r.n_boot == 2000 and r.n_groups == 200 and r.n_skipped == 0 and r.ci == 0.95
    assert r.distribution.shape == (2000,)
    expected_low, expected_high = np.quantile(r.distribution, [0.025, 0.975])
    assert (r.low, r.high) == (expected_low, expected_high)


def test_bootstrap_p_value_follows_the_documented_rule() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(0.0, 1.0, 60)
    b = a - rng.normal(0.1, 1.0, 60)  # small, noisy difference: p strictly between 0 and 1
    r = paired_bootstrap(a, b, n_boot=1000, seed=1)
    d = r.distribution
    assert r.p_value == pytest.approx(2 * min(np.mean(d <= 0), np.mean(d >= 0)))
    assert 0.0 < r.p_value < 1.0
    strong = paired_bootstrap(np.ones(50), np.zeros(50), n_boot=500)
    assert strong.p_value == 0.0 and strong.low == strong.high == 1.0


def test_identical_methods_give_exact_zero() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=80)
    groups = rng.integers(0, 15, size=80)
    for g in (None, groups):
        r = paired_bootstrap(a, a.copy(), groups=g, n_boot=300)
        assert r.estimate == 0.0 and r.low == 0.0 and r.high == 0.0
        assert np.all(r.distribution == 0.0)
        assert r.p_value == 1.0


def test_groups_widen_the_interval_for_correlated_items() -> None:
    rng = np.random.default_rng(5)
    n_groups, per_group = 20, 5
    a = np.repeat(rng.random(n_groups) < 0.7, per_group)  # items of a group are perfectly correlated
    b = np.repeat(rng.random(n_groups) < 0.5, per_group)
    groups = np.repeat([f"img{i}" for i in range(n_groups)], per_group)
    flat = paired_bootstrap(a, b, n_boot=2000, seed=0)
    clustered = paired_bootstrap(a, b, groups=groups, n_boot=2000, seed=0)
    assert clustered.n_groups == n_groups and flat.n_groups == n_groups * per_group
    assert clustered.estimate == flat.estimate
    assert (clustered.high - clustered.low) > 1.5 * (flat.high - flat.low)


@pytest.mark.parametrize("grouped", [False, True])
def test_vectorised_mean_matches_loop_with_same_draws(grouped: bool) -> None:
    rng = np.random.default_rng(6)
    n = 90
    a = rng.random(n) < 0.75
    b = rng.random(n) < 0.6
    # unequal, interleaved group sizes; 2500 resamples span several chunks
    groups = [f"g{int(k)}" for k in rng.integers(0, 23, size=n)] if grouped else None
    fast = paired_bootstrap(a, b, groups=groups, n_boot=2500, seed=11)
    slow = paired_bootstrap(a, b, groups=groups, statistic=lambda x: float(np.mean(x)), n_boot=2500, seed=11)
    np.testing.assert_allclose(fast.distribution, slow.distribution, rtol=0, atol=1e-12)
    assert fast.estimate == pytest.approx(slow.estimate, abs=1e-12)
    assert fast.low == pytest.approx(slow.low, abs=1e-12)
    assert fast.high == pytest.approx(slow.high, abs=1e-12)
    assert fast.p_value == slow.p_value
    assert fast.n_groups == slow.n_groups


def test_custom_statistic_is_used() -> None:
    a = np.array([0.0, 0.0, 0.0, 10.0])
    b = np.zeros(4)
    r = paired_bootstrap(a, b, statistic=np.median, n_boot=200)
    assert r.estimate == 0.0  # the mean would give 2.5
    assert set(np.unique(r.distribution)) <= {0.0, 5.0, 10.0}


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"a\[\d+\] is NaN"):
        paired_bootstrap([1.0, float("nan")], [1.0, 0.0])
    with pytest.raises(ValueError, match=r"b\[\d+\] is NaN"):
        paired_bootstrap([1.0, 0.0], [float("nan"), 0.0])
    with pytest.raises(ValueError, match="a and b differ in length: 3 vs 2"):
        paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="a is empty"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="groups must have one key per item: 2 keys vs 3 items"):
        paired_bootstrap([1, 0, 1], [1, 0, 0], groups=["x", "y"])
    with pytest.raises(ValueError, match="groups contains NaN"):
        paired_bootstrap([1, 0, 1], [1, 0, 0], groups=[1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap([1, 0], [1, 0], n_boot=0)
    with pytest.raises(ValueError, match="ci"):
        paired_bootstrap([1, 0], [1, 0], ci=1.0)
    with pytest.raises(ValueError, match="statistic returned NaN"):
        paired_bootstrap([1.0, 2.0], [1.0, 0.0], statistic=lambda x: float("nan"), n_boot=5)


# ----------------------------------------------------------------------------------- bootstrap metric


def _scored(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    scores_a = labels * 1.0 + rng.normal(0, 0.6, n)
    scores_b = labels * 0.5 + rng.normal(0, 0.6, n)
    return labels, scores_a, scores_b


def test_metric_bootstrap_estimate_and_reproducibility() -> None:
    labels, sa, sb = _scored(7)
    r = paired_bootstrap_metric(labels, sa, sb, _auroc, n_boot=300, seed=2)
    assert r.estimate == pytest.approx(_auroc(labels, sa) - _auroc(labels, sb), abs=1e-15)
    assert r.low <= r.estimate <= r.high
    assert r.n_skipped == 0 and r.distribution.shape == (300,)
    again = paired_bootstrap_metric(labels, sa, sb, _auroc, n_boot=300, seed=2)
    assert again == r and np.array_equal(again.distribution, r.distribution)
    other = paired_bootstrap_metric(labels, sa, sb, _auroc, n_boot=300, seed=3)
    assert not np.array_equal(other.distribution, r.distribution)


def test_metric_bootstrap_skips_single_class_resamples() -> None:
    # two groups, each of a single class: a resample drawing the same group twice has one class only
    labels = np.array([0, 0, 0, 1, 1, 1])
    sa = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    sb = np.array([0.5, 0.2, 0.9, 0.4, 0.8, 0.6])
    groups = ["neg", "neg", "neg", "pos", "pos", "pos"]
    r = paired_bootstrap_metric(labels, sa, sb, _auroc, groups=groups, n_boot=400, seed=0)
    assert r.n_groups == 2
    assert 100 < r.n_skipped < 300  # about half of the resamples
    assert r.distribution.shape == (400 - r.n_skipped,)
    assert np.all(r.distribution == r.estimate)  # every kept resample holds both groups once


def test_metric_bootstrap_counts_nan_as_skipped_and_fails_if_all_skipped() -> None:
    labels, sa, sb = _scored(8, n=10)

    def nan_metric(y: np.ndarray, s: np.ndarray) -> float:
        return float(s.mean()) if len(set(y.tolist())) == 2 else float("nan")

    r = paired_bootstrap_metric(labels, sa, sb, nan_metric, groups=labels, n_boot=200)
    assert r.n_skipped > 0

    def full_data_only(y: np.ndarray, s: np.ndarray) -> float:
        if np.array_equal(s, sa) or np.array_equal(s, sb):
            return 0.5
        raise ValueError("nope")

    with pytest.raises(ValueError, match="metric failed on all 50 bootstrap resamples"):
        paired_bootstrap_metric(labels, sa, sb, full_data_only, n_boot=50, seed=1)


def test_metric_bootstrap_rejects_bad_input() -> None:
    labels, sa, sb = _scored(9, n=12)
    with pytest.raises(ValueError, match=r"scores_b\[\d+\] is NaN"):
        paired_bootstrap_metric(labels, sa, np.where(labels == 1, np.nan, sb), _auroc)
    with pytest.raises(ValueError, match="labels contains NaN"):
        paired_bootstrap_metric(np.where(labels == 1, np.nan, 0.0), sa, sb, _auroc)
    with pytest.raises(ValueError, match="labels and scores_a differ in length: 12 vs 11"):
        paired_bootstrap_metric(labels, sa[:-1], sb, _auroc)
    with pytest.raises(ValueError, match="labels and scores_b differ in length: 12 vs 10"):
        paired_bootstrap_metric(labels, sa, sb[:-2], _auroc)
    with pytest.raises(ValueError, match="labels is empty"):
        paired_bootstrap_metric([], [], [], _auroc)


# ---------------------------------------------------------------------------------------------- Holm


def test_holm_hand_computed_example() -> None:
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert holm_reject([0.01, 0.04, 0.03, 0.005], alpha=0.05).tolist() == [True, False, False, True]


def test_holm_preserves_order_is_monotone_and_clips() -> None:
    p = np.array([0.5, 0.001, 0.2, 0.04, 0.9])
    adjusted = holm(p)
    # m=5, sorted 0.001,0.04,0.2,0.5,0.9 -> 5p,4p,3p,2p,1p = 0.005, 0.16, 0.6, 1.0, 0.9 -> running max 1.0
    np.testing.assert_allclose(adjusted, [1.0, 0.005, 0.6, 0.16, 1.0], rtol=1e-12)
    order = np.argsort(p)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= p) and adjusted.max() == 1.0
    assert holm([0.3, 0.6]).tolist() == [0.6, 0.6]  # step-down keeps the larger one at 0.6
    assert holm([0.7, 0.6]).tolist() == [1.0, 1.0]  # 2 * 0.6 = 1.2 clipped to 1


def test_holm_edge_cases_and_errors() -> None:
    assert holm([0.02]).tolist() == [0.02]
    assert holm([]).shape == (0,)
    with pytest.raises(ValueError, match="p_values contains NaN"):
        holm([0.1, float("nan")])
    with pytest.raises(ValueError, match=r"p_values must lie in \[0, 1\]"):
        holm([0.1, 1.5])
    with pytest.raises(ValueError, match="alpha"):
        holm_reject([0.1], alpha=0.0)
