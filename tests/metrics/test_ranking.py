"""Tests of vlmad.metrics.ranking against independent computations: pairwise Mann–Whitney counts, brute
force over thresholds, hand-computed values and scikit-learn on seeded random data."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from vlmad.metrics.ranking import (
    RankAccumulator,
    area_under,
    auroc,
    average_precision,
    curve_auroc,
    f1_max,
    precision_at_recall,
    roc_curve,
)

# --- independent references ---------------------------------------------------------------------------


def _mw_auroc(labels, scores) -> float:
    """AUROC as the Mann–Whitney statistic: the share of (anomalous, normal) pairs ranked right, ties 1/2."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores)
    pos, neg = s[y], s[~y]
    wins = Fraction(0)
    for p in pos:
        for n in neg:
            if p > n:
                wins += 1
            elif p == n:
                wins += Fraction(1, 2)
    return float(wins / (pos.size * neg.size))


def _confusion(y: np.ndarray, s: np.ndarray, t: float) -> tuple[int, int, int]:
    pred = s >= t
    return int(np.sum(pred & y)), int(np.sum(pred & ~y)), int(np.sum(~pred & y))


def _brute_f1(labels, scores) -> tuple[float, float]:
    """Best F1 over every distinct score used as threshold (anomalous iff score >= t); highest t wins ties."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    best, best_t = -1.0, np.nan
    for t in sorted(set(s.tolist()), reverse=True):
        tp, fp, fn = _confusion(y, s, t)
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best:
            best, best_t = f1, t
    return best, best_t


def _brute_precision_at_recall(labels, scores, recall: float) -> float:
    """Precision at the highest threshold whose recall reaches ``recall``."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    for t in sorted(set(s.tolist()), reverse=True):
        tp, fp, fn = _confusion(y, s, t)
        if tp / (tp + fn) >= recall:
            return tp / (tp + fp)
    raise AssertionError("unreachable: the lowest threshold has recall 1")


def _random_case(seed: int, n: int = 300, decimals: int | None = 1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    y[:2] = [True, False]  # both classes present
    s = rng.normal(size=n) + 0.8 * y
    if decimals is not None:
        s = np.round(s, decimals)  # many ties
    return y, s.astype(dtype)


# --- AUROC --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 1, 0, 1, 1], [0.5, 0.5, 0.5, 0.5, 0.5], 0.5),  # all tied
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),  # perfect separation
        ([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1], 0.0),  # reversed
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),  # one pair ranked wrong
        ([0, 1, 0, 1], [0.2, 0.2, 0.6, 0.9], 0.625),  # (1/2 + 0 + 1 + 1) / 4
        ([1, 0, 0, 0], [3.0, 3.0, 3.0, 1.0], 2 / 3),  # anomaly tied with two normals
    ],
)
def test_auroc_hand_made(labels, scores, expected) -> None:
    assert _mw_auroc(labels, scores) == pytest.approx(expected, abs=1e-15)  # the reference itself
    assert auroc(labels, scores) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_and_pairwise_count(seed: int, decimals: int | None, dtype) -> None:
    y, s = _random_case(seed, decimals=decimals, dtype=dtype)
    got = auroc(y, s)
    assert got == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got == pytest.approx(_mw_auroc(y, s), abs=1e-12)


def test_auroc_accepts_int_bool_and_float_labels_alike() -> None:
    y, s = _random_case(3)
    expected = _mw_auroc(y, s)
    for labels in (y, y.astype(int), y.astype(np.uint8), y.astype(float), y.tolist()):
        assert auroc(labels, s) == pytest.approx(expected, abs=1e-12)
    assert auroc(y, s.tolist()) == pytest.approx(expected, abs=1e-12)  # plain lists of floats
    assert auroc(y, (s * 10).astype(int)) == pytest.approx(_mw_auroc(y, (s * 10).astype(int)), abs=1e-12)


def test_roc_curve_keeps_every_corner_of_sklearns_curve() -> None:
    # Points inside a run of negatives-only thresholds (a horizontal segment) may be left out; every other
    # point of the full curve is kept, and every point kept lies on the full curve.
    y, s = _random_case(4, n=120)
    fpr, tpr = roc_curve(y, s)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    full = set(zip(sk_fpr.round(12), sk_tpr.round(12), strict=True))
    ours = set(zip(fpr.round(12), tpr.round(12), strict=True))
    assert ours <= full
    rises = [i for i in range(1, sk_tpr.size) if sk_tpr[i] > sk_tpr[i - 1]]
    corners = {(sk_fpr[i].round(12), sk_tpr[i].round(12)) for i in rises}
    corners |= {(sk_fpr[i - 1].round(12), sk_tpr[i - 1].round(12)) for i in rises}
    assert corners <= ours
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)


# --- average precision ----------------------------------------------------------------------------------


def test_average_precision_hand_computed() -> None:
    # thresholds 0.9: P=1 R=1/3 | 0.8: P=1/2 R=1/3 | 0.7: P=2/3 R=2/3 | 0.6 (a tie of 1 and 0): P=3/5 R=1
    # AP = 1/3 * 1 + 0 * 1/2 + 1/3 * 2/3 + 1/3 * 3/5 = 34/45
    labels = [1, 0, 1, 0, 1]
    scores = [0.9, 0.8, 0.7, 0.6, 0.6]
    assert average_precision(labels, scores) == pytest.approx(34 / 45, abs=1e-15)


def test_average_precision_all_tied_is_the_prevalence_and_all_anomalous_is_one() -> None:
    assert average_precision([1, 0, 0, 0], [2.0, 2.0, 2.0, 2.0]) == pytest.approx(0.25, abs=1e-15)
    assert average_precision([1, 1, 1], [0.1, 0.5, 0.2]) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("seed", [0, 5])
def test_average_precision_matches_sklearn(seed: int, decimals: int | None, dtype) -> None:
    y, s = _random_case(seed, decimals=decimals, dtype=dtype)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


# --- F1-max -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize("seed", [0, 6, 7])
def test_f1_max_matches_brute_force(seed: int, decimals: int | None) -> None:
    y, s = _random_case(seed, n=200, decimals=decimals)
    f1, thr = f1_max(y, s)
    ref_f1, ref_thr = _brute_f1(y, s)
    assert f1 == pytest.approx(ref_f1, abs=1e-12)
    assert thr == ref_thr
    tp, fp, fn = _confusion(y, s, thr)  # the returned threshold reproduces the F1
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(f1, abs=1e-12)


def test_f1_max_hand_made_with_ties() -> None:
    labels = [1, 1, 0, 1, 0, 0]
    scores = [0.9, 0.5, 0.5, 0.5, 0.2, 0.1]
    # t=0.9: tp1 fp0 fn2 -> 2/4 = 0.5; t=0.5: tp3 fp1 fn0 -> 6/7; t=0.2: tp3 fp2 -> 6/8; t=0.1: 6/9
    f1, thr = f1_max(labels, scores)
    assert f1 == pytest.approx(6 / 7, abs=1e-15)
    assert thr == 0.5


def test_f1_max_returns_the_highest_of_equally_good_thresholds() -> None:
    # t=4: tp1 fp0 fn1 -> 2/3; t=3: 2/4; t=2: 2/5; t=1: tp2 fp2 fn0 -> 4/6 = 2/3 again
    f1, thr = f1_max([1, 0, 0, 1], [4.0, 3.0, 2.0, 1.0])
    assert f1 == pytest.approx(2 / 3, abs=1e-15)
    assert thr == 4.0


# --- precision at recall --------------------------------------------------------------------------------


def test_precision_at_full_recall_includes_a_normal_tied_with_the_lowest_anomaly() -> None:
    labels = [1, 1, 0, 1, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.5, 0.5, 0.1]
    # the lowest anomaly scores 0.5 and a normal ties with it: flagged 0.9, 0.8, 0.7, 0.5, 0.5 -> 3 / 5
    assert precision_at_recall(labels, scores, recall=1.0) == pytest.approx(3 / 5, abs=1e-15)
    assert precision_at_recall(labels, scores) == pytest.approx(3 / 5, abs=1e-15)  # the default
    # recall 0.5 needs 2 of 3 anomalies: threshold 0.8, nothing normal above it
    assert precision_at_recall(labels, scores, recall=0.5) == pytest.approx(1.0, abs=1e-15)


def test_precision_at_half_recall_with_a_normal_on_top() -> None:
    labels = [0, 1, 0, 1, 1, 0]
    scores = [0.95, 0.9, 0.8, 0.7, 0.3, 0.3]
    assert precision_at_recall(labels, scores, recall=0.5) == pytest.approx(2 / 4, abs=1e-15)
    assert precision_at_recall(labels, scores, recall=1 / 3) == pytest.approx(1 / 2, abs=1e-15)
    assert precision_at_recall(labels, scores, recall=1.0) == pytest.approx(3 / 6, abs=1e-15)


@pytest.mark.parametrize("recall", [0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed", [0, 8])
def test_precision_at_recall_matches_brute_force(seed: int, recall: float) -> None:
    y, s = _random_case(seed, n=150, decimals=1)
    assert precision_at_recall(y, s, recall) == pytest.approx(
        _brute_precision_at_recall(y, s, recall), abs=1e-12
    )


@pytest.mark.parametrize("recall", [0.0, -0.1, 1.5])
def test_precision_at_recall_rejects_out_of_range_recall(recall: float) -> None:
    with pytest.raises(ValueError, match="recall"):
        precision_at_recall([0, 1], [0.1, 0.2], recall=recall)


# --- errors -------------------------------------------------------------------------------------------

ALL_FUNCS = [auroc, average_precision, f1_max, precision_at_recall]


@pytest.mark.parametrize("func", ALL_FUNCS)
def test_nan_score_raises_naming_nan(func) -> None:
    with pytest.raises(ValueError, match="NaN"):
        func([0, 1, 1], [0.1, float("nan"), 0.3])
    with pytest.raises(ValueError, match="NaN"):
        func([0, 1, 1], np.array([0.1, np.nan, 0.3], dtype=np.float32))


@pytest.mark.parametrize("func", ALL_FUNCS)
def test_length_mismatch_raises(func) -> None:
    with pytest.raises(ValueError):
        func([0, 1, 1], [0.1, 0.2])


@pytest.mark.parametrize("func", ALL_FUNCS)
def test_empty_raises(func) -> None:
    with pytest.raises(ValueError):
        func([], [])


@pytest.mark.parametrize("func", ALL_FUNCS)
@pytest.mark.parametrize("labels", [[0, 2, 1], [-1, 0, 1], [0.5, 1, 0], ["a", "b", "a"]])
def test_labels_not_zero_one_raise(func, labels) -> None:
    with pytest.raises(ValueError):
        func(labels, [0.1, 0.2, 0.3])


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1], [False, False]])
def test_auroc_single_class_raises(labels) -> None:
    with pytest.raises(ValueError):
        auroc(labels, np.linspace(0, 1, len(labels)))
    with pytest.raises(ValueError):
        roc_curve(labels, np.linspace(0, 1, len(labels)))


@pytest.mark.parametrize("func", [average_precision, f1_max, precision_at_recall])
def test_no_anomaly_raises_for_precision_based_metrics(func) -> None:
    with pytest.raises(ValueError):
        func([0, 0, 0], [0.1, 0.2, 0.3])


def test_non_numeric_scores_raise() -> None:
    with pytest.raises(ValueError):
        auroc([0, 1], ["a", "b"])


# --- RankAccumulator ------------------------------------------------------------------------------------


def _assert_curves_equal(a, b) -> None:
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    np.testing.assert_array_equal(a.fps, b.fps)
    np.testing.assert_array_equal(a.pps, b.pps)
    np.testing.assert_allclose(a.weights, b.weights, rtol=0, atol=1e-9)
    assert a.binned == b.binned


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_in_chunks_equals_one_update(dtype) -> None:
    rng = np.random.default_rng(11)
    n = 2000
    s = np.round(rng.normal(size=n), 1).astype(dtype)
    neg = rng.random(n) < 0.7
    w = rng.random((2, n))
    one = RankAccumulator(channels=2)
    one.update(s, neg, w)
    many = RankAccumulator(channels=2)
    cuts = np.sort(rng.choice(np.arange(1, n), size=60, replace=False))
    cuts = np.concatenate(([0], cuts, [cuts[-1]], [n]))  # one empty chunk too
    for a, b in itertools.pairwise(cuts):
        many.update(s[a:b], neg[a:b], w[:, a:b])
    assert len(many) == len(one) == n
    _assert_curves_equal(many.compute(), one.compute())
    c = one.compute()
    assert not c.binned and c.auroc_error_bound == 0.0
    # cumulative counts at each distinct score, highest first, against a direct count
    uniq = np.unique(s.astype(np.float64))[::-1]
    np.testing.assert_array_equal(c.thresholds, uniq)
    np.testing.assert_array_equal(c.fps, [np.sum(neg & (s >= t)) for t in uniq])
    np.testing.assert_array_equal(c.pps, [np.sum(~neg & (s >= t)) for t in uniq])
    np.testing.assert_allclose(c.weights[1], [w[1][s >= t].sum() for t in uniq], rtol=1e-6)


def test_compute_leaves_the_accumulator_usable() -> None:
    acc = RankAccumulator()
    acc.update(np.array([0.1, 0.9]), np.array([True, False]))
    assert curve_auroc(acc.compute()) == 1.0
    acc.update(np.array([0.95]), np.array([True]))
    assert curve_auroc(acc.compute()) == pytest.approx(0.5)


def test_accumulator_requires_weights_for_channels_and_checks_lengths() -> None:
    acc = RankAccumulator(channels=1)
    with pytest.raises(ValueError):
        acc.update(np.array([0.1, 0.2]), np.array([True, False]))
    with pytest.raises(ValueError):
        acc.update(np.array([0.1, 0.2]), np.array([True, False]), np.ones((1, 3)))
    with pytest.raises(ValueError):
        acc.update(np.array([0.1, 0.2]), np.array([True]), np.ones((1, 2)))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.array([0.1, np.nan]), np.array([True, False]), np.ones((1, 2)))
    for bits in (7, 25):
        with pytest.raises(ValueError):
            RankAccumulator(bits=bits)


@pytest.mark.parametrize(("bits", "decimals"), [(20, None), (12, None), (10, 2)])
def test_binned_mode_is_within_its_error_bound(bits: int, decimals: int | None) -> None:
    rng = np.random.default_rng(12)
    n = 5000
    y = rng.random(n) < 0.4
    s = rng.normal(size=n) + 0.7 * y
    if decimals is not None:
        s = np.round(s, decimals)
    s = s.astype(np.float32)
    acc = RankAccumulator(max_exact=100, bits=bits)
    for chunk in np.array_split(np.arange(n), 37):  # crosses max_exact on the way
        acc.update(s[chunk], ~y[chunk])
    curve = acc.compute()
    assert acc.binned and curve.binned
    assert (curve.n_negative, curve.n_positive) == (np.sum(~y), np.sum(y))
    exact = roc_auc_score(y, s)
    assert abs(curve_auroc(curve) - exact) <= curve.auroc_error_bound + 1e-12
    if bits <= 12:
        assert curve.auroc_error_bound > 0  # coarse bins do merge scores: the bound is not vacuous
    assert curve.auroc_error_bound < (0.001 if bits >= 20 else 0.05)
    # binned thresholds are lower bin edges: the items counted "at or above" really are >= them
    np.testing.assert_array_equal(curve.fps, [np.sum(~y & (s >= t)) for t in curve.thresholds])
    np.testing.assert_array_equal(curve.pps, [np.sum(y & (s >= t)) for t in curve.thresholds])


def test_binned_mode_with_negative_scores_and_weights() -> None:
    rng = np.random.default_rng(13)
    n = 3000
    y = rng.random(n) < 0.5
    s = (rng.normal(size=n) - 3.0 + 0.5 * y).astype(np.float32)  # mostly negative scores
    w = rng.random((1, n))
    acc = RankAccumulator(channels=1, max_exact=100, bits=14)
    acc.update(s, ~y, w)
    curve = acc.compute()
    assert curve.binned
    assert abs(curve_auroc(curve) - roc_auc_score(y, s)) <= curve.auroc_error_bound + 1e-12
    assert curve.weights[0, -1] == pytest.approx(w.sum(), rel=1e-6)
    np.testing.assert_array_equal(curve.fps, [np.sum(~y & (s >= t)) for t in curve.thresholds])
    assert np.all(np.diff(curve.thresholds) < 0)


def test_binned_mode_with_infinite_scores() -> None:
    rng = np.random.default_rng(14)
    n = 400
    y = rng.random(n) < 0.5
    s = rng.normal(size=n).astype(np.float32)
    s[:20] = -np.inf
    s[20:40] = np.inf
    acc = RankAccumulator(max_exact=100)
    acc.update(s, ~y)
    curve = acc.compute()
    assert curve.binned
    assert abs(curve_auroc(curve) - _mw_auroc(y, s)) <= curve.auroc_error_bound + 1e-12
    assert curve.thresholds[0] == np.inf and curve.thresholds[-1] == -np.inf
    assert not np.isnan(curve.thresholds).any()
    np.testing.assert_array_equal(curve.fps, [np.sum(~y & (s >= t)) for t in curve.thresholds])


def test_small_stream_stays_exact_below_max_exact() -> None:
    acc = RankAccumulator(max_exact=100)
    acc.update(np.arange(100.0), np.arange(100) % 2 == 0)
    assert not acc.binned and not acc.compute().binned
    acc.update(np.array([1.5]), np.array([True]))
    assert acc.binned and acc.compute().binned


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sign_zero_and_infinity_ordering(dtype) -> None:
    scores = np.array([-np.inf, -1e30, -2.5, -0.0, 0.0, 1e-30, 3.0, np.inf, -2.5, 0.0, -0.0], dtype=dtype)
    labels = np.array([0, 1, 1, 0, 1, 1, 0, 1, 0, 0, 1])  # no two negatives-only groups in a row: all kept
    assert auroc(labels, scores) == pytest.approx(_mw_auroc(labels, scores), abs=1e-12)
    acc = RankAccumulator()
    acc.update(scores, labels == 0)
    curve = acc.compute()
    # -0.0 and 0.0 are one group; -inf / inf are the extremes
    expected = np.array([np.inf, 3.0, 1e-30, 0.0, -2.5, -1e30, -np.inf], dtype=dtype).astype(np.float64)
    np.testing.assert_array_equal(curve.thresholds, expected)
    zero = int(np.flatnonzero(curve.thresholds == 0.0)[0])
    assert curve.fps[zero] - curve.fps[zero - 1] == 2  # the normal -0.0 and 0.0
    assert curve.pps[zero] - curve.pps[zero - 1] == 2  # the anomalous 0.0 and -0.0


def test_negative_scores_are_ranked_by_value() -> None:
    # a bit-pattern sort without the sign fix would rank -3 above -1
    assert auroc([0, 0, 1, 1], np.array([-4.0, -3.0, -2.0, -1.0], dtype=np.float32)) == 1.0
    assert auroc([1, 1, 0, 0], np.array([-4.0, -3.0, -2.0, -1.0], dtype=np.float32)) == 0.0
    assert auroc([0, 1, 0, 1], np.array([-1e-3, 1e-3, -2e-3, 2e-3])) == 1.0


def test_float64_below_float32_resolution_is_ranked_exactly() -> None:
    k = np.random.default_rng(15).permutation(40)  # shuffled, so no sort can get it right by accident
    s = 1.0 + k * 1e-12  # all equal once cast to float32
    y = k >= 20
    assert np.unique(s.astype(np.float32)).size == 1
    assert auroc(y, s) == 1.0
    assert auroc(~y, s) == 0.0
    acc = RankAccumulator(max_exact=None)
    acc.update(s, ~y)
    # the 20 positives' distinct scores, then the run of negatives collapses to its last score
    assert acc.compute().thresholds.size == 21
    f1, thr = f1_max(y, s)
    assert f1 == 1.0 and thr == 1.0 + 20 * 1e-12


# --- area under a curve with an FPR limit ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fpr", "tpr", "limit", "expected"),
    [
        # piecewise (0,0)-(0.2,0.5)-(0.6,0.7)-(1,1); at 0.4 the curve is 0.6 by interpolation
        ([0, 0.2, 0.6, 1], [0, 0.5, 0.7, 1], 0.4, (0.2 * 0.5 / 2 + 0.2 * (0.5 + 0.6) / 2) / 0.4),
        ([0, 0.2, 0.6, 1], [0, 0.5, 0.7, 1], 0.2, (0.2 * 0.5 / 2) / 0.2),  # limit on a knot
        ([0, 0.2, 0.6, 1], [0, 0.5, 0.7, 1], 1.0, 0.05 + 0.4 * 1.2 / 2 + 0.4 * 1.7 / 2),
        ([0, 0.5, 1], [0, 1, 1], 0.1, (0.1 * 0.2 / 2) / 0.1),  # limit before the first knot
        ([0, 0, 0.5, 1], [0, 0.4, 1, 1], 0.1, (0.1 * (0.4 + 0.52) / 2) / 0.1),  # vertical start
        ([0, 0.3, 0.3, 1], [0, 0.2, 0.8, 1], 0.3, (0.3 * 0.2 / 2) / 0.3),  # vertical jump at the limit
        ([0, 0.3, 0.3, 1], [0, 0.2, 0.8, 1], 0.65, (0.03 + 0.35 * (0.8 + 0.9) / 2) / 0.65),
    ],
)
def test_area_under_with_limit(fpr, tpr, limit, expected) -> None:
    got = area_under(np.array(fpr, dtype=float), np.array(tpr, dtype=float), limit)
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("limit", [0.0, -0.1, 1.01])
def test_area_under_rejects_bad_limits(limit: float) -> None:
    with pytest.raises(ValueError):
        area_under(np.array([0.0, 1.0]), np.array([0.0, 1.0]), limit)
