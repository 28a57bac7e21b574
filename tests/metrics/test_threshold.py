"""Tests of vlmad.metrics.threshold: target FPR with ties, quantiles, F1 thresholds against brute force."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from vlmad.metrics.threshold import (
    Threshold,
    calibrate,
    fixed,
    from_normal_quantile,
    from_target_fpr,
    from_validation_f1,
    oracle_f1,
)

# --- target FPR -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 1])  # continuous scores, then heavily tied ones
@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.1, 0.29, 0.5, 0.9])
def test_target_fpr_is_the_smallest_threshold_within_fpr(fpr: float, decimals: int | None) -> None:
    rng = np.random.default_rng(7)
    s = rng.normal(size=137)
    if decimals is not None:
        s = np.round(s, decimals)
    t = from_target_fpr(s, fpr)
    assert (t.method, t.source, t.oracle) == ("target-fpr", "validation", False)
    realised = np.mean(s >= t.value)
    assert realised <= fpr
    assert t.params["fpr_realised"] == pytest.approx(realised)
    below = s[s < t.value]
    assert below.size  # fpr < 1 here, so some normal score lies below the threshold
    assert np.mean(s >= below.max()) > fpr  # the next smaller distinct normal score is too low
    assert np.mean(s >= np.nextafter(t.value, -np.inf)) > fpr  # and so is anything lower


def test_target_fpr_goes_above_a_tied_group() -> None:
    s = np.array([9.0, 5.0, 5.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    t = from_target_fpr(s, 0.2)  # two false positives allowed; flagging any 5 would flag all three
    assert t.value == np.nextafter(5.0, np.inf)
    assert np.sum(s >= t.value) == 1
    t = from_target_fpr(s, 0.4)  # four allowed: the whole group of 5s fits
    assert t.value == np.nextafter(1.0, np.inf) and np.sum(s >= t.value) == 4


def test_target_fpr_zero_flags_no_normal_and_one_flags_all() -> None:
    s = [0.3, 0.9, 0.1, 0.9]
    t = from_target_fpr(s, 0.0)
    assert t.value == np.nextafter(0.9, np.inf) and not np.any(np.array(s) >= t.value)
    assert from_target_fpr(s, 1.0).value == 0.1


def test_target_fpr_is_exact_where_fpr_times_n_rounds_down() -> None:
    s = np.arange(100.0)  # 0.29 * 100 == 28.999999999999996 in floating point, but 29 / 100 <= 0.29
    t = from_target_fpr(s, 0.29)
    assert np.sum(s >= t.value) == 29 and t.params["fpr_realised"] == 0.29


# --- normal quantile --------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_normal_quantile_matches_numpy(q: float) -> None:
    s = np.random.default_rng(1).normal(size=50)
    t = from_normal_quantile(s, q)
    assert t.value == float(np.quantile(s, q))
    assert (t.method, t.source, t.oracle, t.params) == ("normal-quantile", "validation", False, {
        "q": q, "n_normal": 50
    })  # fmt: skip


@pytest.mark.parametrize("fit", [from_normal_quantile, from_target_fpr])
def test_normal_score_validation(fit) -> None:
    with pytest.raises(ValueError, match="normal_scores is empty"):
        fit([])
    with pytest.raises(ValueError, match=r"normal_scores\[1\] is NaN"):
        fit([0.1, float("nan")])
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
            fit([0.1, 0.2], bad)


# --- F1 thresholds ----------------------------------------------------------------------------------------


def brute_force_f1(labels: list[str], scores: np.ndarray) -> tuple[float, Fraction]:
    """Exact F1 at every distinct score, highest threshold winning ties."""
    y = np.array([lab != "good" for lab in labels])
    best_t, best_f1 = None, Fraction(-1)
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp, fp, fn = int(np.sum(pred & y)), int(np.sum(pred & ~y)), int(np.sum(~pred & y))
        f1 = Fraction(2 * tp, 2 * tp + fp + fn)
        if f1 > best_f1:
            best_t, best_f1 = t, f1
    assert best_t is not None
    return best_t, best_f1


def random_split(seed: int, n: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    anom = rng.random(n) < 0.4
    anom[:2] = [True, False]  # both classes present
    scores = np.round(rng.normal(size=n) + 0.8 * anom, 1)  # rounded: many ties
    labels = [str(rng.choice(["logical", "structural", "anomaly"])) if a else "good" for a in anom]
    return labels, scores


@pytest.mark.parametrize("seed", range(8))
def test_f1_thresholds_match_brute_force_and_sklearn(seed: int) -> None:
    from sklearn.metrics import precision_recall_curve

    labels, scores = random_split(seed, 30 + 25 * seed)
    t_val = from_validation_f1(labels, scores)
    t_orc = oracle_f1(labels, scores)
    best_t, best_f1 = brute_force_f1(labels, scores)
    assert t_val.value == best_t and t_orc.value == best_t
    assert t_val.params["f1"] == pytest.approx(float(best_f1), abs=1e-12)

    y = np.array([lab != "good" for lab in labels])
    p, r, th = precision_recall_curve(y, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * p * r / (p + r))[:-1]  # the last point (P=1, R=0) has no threshold
    assert f1.max() == pytest.approx(t_val.params["f1"], abs=1e-12)
    assert th[np.isclose(f1, f1.max(), rtol=0, atol=1e-12)].max() == t_val.value

    pred = scores >= t_val.value
    assert t_val.params["precision"] == pytest.approx(np.sum(pred & y) / np.sum(pred))
    assert t_val.params["recall"] == pytest.approx(np.sum(pred & y) / np.sum(y))


def test_f1_threshold_ties_go_to_the_highest_threshold() -> None:
    # t=0.9: TP=1, FP=0, FN=1 -> F1 = 2/3; t=0.5: TP=2, FP=2, FN=0 -> F1 = 2/3; t=0.1: 4/7.
    labels = ["anomaly", "good", "good", "logical", "good"]
    scores = [0.9, 0.5, 0.5, 0.5, 0.1]
    t = from_validation_f1(labels, scores)
    assert t.value == 0.9 and t.params["f1"] == pytest.approx(2 / 3)


def test_oracle_and_validation_provenance() -> None:
    labels, scores = random_split(0, 40)
    v, o = from_validation_f1(labels, scores), oracle_f1(labels, scores)
    assert (v.method, v.source, v.oracle) == ("validation-f1", "validation", False)
    assert (o.method, o.source, o.oracle) == ("oracle-f1", "test", True)


def test_f1_threshold_validation() -> None:
    with pytest.raises(ValueError, match="validation split has only normal images"):
        from_validation_f1(["good", "good"], [0.1, 0.2])
    with pytest.raises(ValueError, match="test split has only anomalous images"):
        oracle_f1(["logical", "anomaly"], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"scores\[0\] is NaN"):
        from_validation_f1(["good", "logical"], [float("nan"), 0.2])
    with pytest.raises(ValueError, match="labels has 2 entries but scores has 3"):
        from_validation_f1(["good", "logical"], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"unknown label.*'ok'"):
        from_validation_f1(["good", "ok"], [0.1, 0.2])


# --- fixed, Threshold, calibrate --------------------------------------------------------------------------


def test_fixed_and_threshold_record() -> None:
    t = fixed(0.25)
    assert (t.value, t.method, t.source, t.oracle) == (0.25, "fixed", "user", False)
    assert float(t) == 0.25
    with pytest.raises(ValueError, match="NaN"):
        fixed(float("nan"))
    with pytest.raises(ValueError, match="must be a number"):
        fixed("high")  # type: ignore[arg-type]
    d = from_target_fpr([0.1, 0.2, 0.3], 0.4).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {"value", "method", "source", "oracle", "params"} and type(d["value"]) is float
    with pytest.raises(ValueError, match="unknown threshold method 'best'"):
        Threshold(0.5, "best", "user")
    with pytest.raises(ValueError, match="unknown threshold source 'train'"):
        Threshold(0.5, "fixed", "train")
    with pytest.raises(AttributeError):
        t.value = 1.0  # type: ignore[misc]  # frozen


def test_calibrate_dispatches_to_each_method() -> None:
    labels, scores = random_split(3, 50)
    normal = scores[[lab == "good" for lab in labels]]
    assert calibrate("normal-quantile", normal_scores=normal, q=0.9) == from_normal_quantile(normal, 0.9)
    assert calibrate("target-fpr", normal_scores=normal, fpr=0.1) == from_target_fpr(normal, 0.1)
    assert calibrate("validation-f1", labels=labels, scores=scores) == from_validation_f1(labels, scores)
    assert calibrate("oracle-f1", labels=labels, scores=scores) == oracle_f1(labels, scores)
    assert calibrate("fixed", value=0.3) == fixed(0.3)
    assert calibrate("normal-quantile", normal_scores=normal).params["q"] == 0.99
    assert calibrate("target-fpr", normal_scores=normal).params["fpr"] == 0.05


@pytest.mark.parametrize(
    ("method", "kwargs", "match"),
    [
        ("normal-quantile", {}, r"calibrate\('normal-quantile'\) needs normal_scores"),
        ("target-fpr", {"labels": ["good"], "scores": [0.1]}, r"needs normal_scores"),
        ("validation-f1", {}, r"calibrate\('validation-f1'\) needs labels and scores"),
        ("oracle-f1", {"labels": ["good", "logical"]}, r"needs scores$"),
        ("fixed", {}, r"calibrate\('fixed'\) needs value"),
        ("f1", {"value": 0.5}, r"unknown threshold method 'f1'.*'validation-f1'"),
    ],
)
def test_calibrate_errors(method: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        calibrate(method, **kwargs)
