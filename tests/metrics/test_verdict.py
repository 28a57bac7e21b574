"""Tests of vlmad.metrics.verdict: every field against hand-computed numbers, NaN cases and validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vlmad.metrics.verdict import VerdictMetrics, threshold_metrics, verdict_metrics

# 11 images: 4 good, 3 logical, 2 structural, 2 anomaly.
LABELS = ["good"] * 4 + ["logical"] * 3 + ["structural"] * 2 + ["anomaly"] * 2
VERDICTS = [
    "normal", "normal", "anomalous", "unparsed",  # good: TN, TN, FP, unparsed
    "anomalous", "normal", None,  # logical: TP, FN, FN (no answer)
    "anomalous", "anomalous",  # structural: TP, TP
    "anomalous", "normal",  # anomaly: TP, FN
]  # fmt: skip


def test_hand_made_example_every_field() -> None:
    m = verdict_metrics(LABELS, VERDICTS)
    assert (m.n, m.n_normal, m.n_anomalous) == (11, 4, 7)
    # TN=2, FP=1, TP=4, FN=3, unparsed=2
    assert m.accuracy == pytest.approx(6 / 11)
    assert m.accuracy_per_label == pytest.approx(
        {"good": 0.5, "logical": 1 / 3, "structural": 1.0, "anomaly": 0.5}
    )
    assert list(m.accuracy_per_label) == ["good", "logical", "structural", "anomaly"]
    assert m.balanced_accuracy == pytest.approx((2 / 4 + 4 / 7) / 2)
    assert m.yes_rate == pytest.approx(5 / 11)
    assert m.parse_failure_rate == pytest.approx(2 / 11)
    assert m.over_detection == pytest.approx(1 / 4)
    assert m.miss_rate == pytest.approx(3 / 7)  # the unparsed logical image counts as a miss
    assert m.precision == pytest.approx(4 / 5)
    assert m.recall == pytest.approx(4 / 7)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 * m.precision * m.recall / (m.precision + m.recall))
    assert m.logical_structural_average == pytest.approx((1 / 3 + 1.0) / 2)


def test_to_dict_is_plain_and_json_ready() -> None:
    d = verdict_metrics(LABELS, VERDICTS).to_dict()
    assert set(d) == {f for f in VerdictMetrics.__dataclass_fields__}
    assert type(d["n"]) is int and type(d["accuracy"]) is float
    assert all(type(v) is float for v in d["accuracy_per_label"].values())
    back = json.loads(json.dumps(d))
    assert back["accuracy_per_label"]["logical"] == pytest.approx(1 / 3)
    nan_dict = verdict_metrics(["good"], ["normal"]).to_dict()
    assert math.isnan(nan_dict["balanced_accuracy"]) and type(nan_dict["recall"]) is float


def test_threshold_metrics_equals_verdict_metrics_on_derived_verdicts() -> None:
    rng = np.random.default_rng(0)
    labels = list(rng.choice(["good", "logical", "structural", "anomaly"], size=60))
    scores = np.round(rng.random(60), 1)
    t = 0.5
    verdicts = ["anomalous" if s >= t else "normal" for s in scores]
    assert threshold_metrics(labels, scores, t) == verdict_metrics(labels, verdicts)
    assert threshold_metrics(labels, scores, t).parse_failure_rate == 0.0


def test_score_equal_to_threshold_is_anomalous() -> None:
    m = threshold_metrics(["good", "anomaly"], [0.5, 0.5], 0.5)
    assert m.yes_rate == 1.0 and m.recall == 1.0 and m.over_detection == 1.0
    m = threshold_metrics(["good", "anomaly"], [0.5, 0.5], np.nextafter(0.5, 1.0))
    assert m.yes_rate == 0.0


def test_threshold_object_is_accepted() -> None:
    from vlmad.metrics.threshold import fixed

    assert threshold_metrics(["good", "anomaly"], [0.2, 0.7], fixed(0.5)).accuracy == 1.0


def test_precision_nan_when_nothing_is_judged_anomalous() -> None:
    m = verdict_metrics(["good", "logical"], ["normal", "unparsed"])
    assert math.isnan(m.precision)
    assert m.recall == 0.0 and m.f1 == 0.0 and m.miss_rate == 1.0
    assert m.balanced_accuracy == pytest.approx(0.5)
    assert math.isnan(m.logical_structural_average)  # structural absent


def test_balanced_accuracy_nan_with_one_class_and_all_normal_input() -> None:
    m = verdict_metrics(["good"] * 4, ["normal", "normal", "anomalous", None])
    assert (m.n, m.n_normal, m.n_anomalous) == (4, 4, 0)
    assert m.accuracy == 0.5 and m.accuracy_per_label == {"good": 0.5}
    assert m.over_detection == 0.25 and m.yes_rate == 0.25 and m.parse_failure_rate == 0.25
    assert m.precision == 0.0  # one anomalous verdict, wrong
    for name in ("balanced_accuracy", "miss_rate", "recall", "f1", "logical_structural_average"):
        assert math.isnan(getattr(m, name)), name
    m = verdict_metrics(["structural", "anomaly"], ["anomalous", "anomalous"])
    assert math.isnan(m.balanced_accuracy) and math.isnan(m.over_detection)
    assert m.precision == 1.0 and m.f1 == 1.0


@pytest.mark.parametrize(
    ("labels", "verdicts", "match"),
    [
        (["good", "bad"], ["normal", "normal"], r"unknown label.*'bad'"),
        (["good", "good"], ["normal", "yes"], r"unknown verdict.*'yes'"),
        (["good", "good"], ["normal", float("nan")], r"unknown verdict.*nan"),
        (["good", "good"], ["normal"], r"labels has 2 entries but verdicts has 1"),
        ([], [], r"empty"),
        ("good", ["normal"] * 4, r"single string"),
    ],
)
def test_verdict_metrics_validation(labels: list, verdicts: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        verdict_metrics(labels, verdicts)


def test_threshold_metrics_validation() -> None:
    with pytest.raises(ValueError, match=r"scores\[2\] is NaN"):
        threshold_metrics(["good"] * 3, [0.1, 0.2, float("nan")], 0.5)
    with pytest.raises(ValueError, match="labels has 2 entries but scores has 3"):
        threshold_metrics(["good"] * 2, [0.1, 0.2, 0.3], 0.5)
    with pytest.raises(ValueError, match="threshold is NaN"):
        threshold_metrics(["good"], [0.1], float("nan"))
    with pytest.raises(ValueError, match="empty"):
        threshold_metrics([], [], 0.5)
