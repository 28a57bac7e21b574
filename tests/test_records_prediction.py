"""Tests of vlmad.records.Prediction: validation, immutability and the per-run key."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from vlmad.records import Prediction


def test_minimal_prediction_has_defaults() -> None:
    p = Prediction(sample_id="cat/test/good/000", run_id="run")
    assert p.score is None and p.verdict is None and p.map_path is None
    assert p.explanation is None and p.question_id is None and p.metadata == {}


def test_map_path_string_becomes_path() -> None:
    p = Prediction(sample_id="a", run_id="r", map_path="maps/a.npy")
    assert isinstance(p.map_path, Path) and p.map_path == Path("maps/a.npy")


def test_extra_field_rejected() -> None:
    with pytest.raises(ValidationError, match="label"):
        Prediction(sample_id="a", run_id="r", label="good")


@pytest.mark.parametrize("bad", [float("nan"), np.float64("nan"), np.float32("nan"), "NaN"])
def test_nan_score_rejected(bad: object) -> None:
    with pytest.raises(ValidationError, match="NaN"):
        Prediction(sample_id="a", run_id="r", score=bad)
    with pytest.raises(ValidationError, match="NaN"):
        Prediction.model_validate({"sample_id": "a", "run_id": "r", "score": bad})


@pytest.mark.parametrize("score", [0.0, -3.5, 1e30, 7])
def test_finite_scores_kept(score: float) -> None:
    p = Prediction(sample_id="a", run_id="r", score=score)
    assert p.score == score and isinstance(p.score, float)


@pytest.mark.parametrize("verdict", ["normal", "anomalous", "unparsed", None])
def test_known_verdicts_accepted(verdict: str | None) -> None:
    assert Prediction(sample_id="a", run_id="r", verdict=verdict).verdict == verdict


@pytest.mark.parametrize("verdict", ["yes", "Anomalous", "", "good"])
def test_bad_verdict_rejected(verdict: str) -> None:
    with pytest.raises(ValidationError, match="verdict"):
        Prediction(sample_id="a", run_id="r", verdict=verdict)


def test_missing_required_fields_rejected() -> None:
    with pytest.raises(ValidationError, match="run_id"):
        Prediction(sample_id="a")
    with pytest.raises(ValidationError, match="sample_id"):
        Prediction(run_id="r")


def test_prediction_is_frozen() -> None:
    p = Prediction(sample_id="a", run_id="r", score=1.0)
    with pytest.raises(ValidationError):
        p.score = 2.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        p.verdict = "anomalous"  # type: ignore[misc]
    assert p.score == 1.0 and p.verdict is None
    # a copy with changes is the way to get a different prediction
    q = p.model_copy(update={"score": 2.0})
    assert q.score == 2.0 and p.score == 1.0


def test_prediction_compares_by_value() -> None:
    a = Prediction(sample_id="a", run_id="r", score=1.0)
    b = Prediction(sample_id="a", run_id="r", score=1.0)
    assert a == b
    assert b != Prediction(sample_id="a", run_id="r", score=2.0)


def test_key_is_sample_and_question() -> None:
    assert Prediction(sample_id="a", run_id="r").key == ("a", None)
    assert Prediction(sample_id="a", run_id="r", question_id="q1").key == ("a", "q1")
    # the run is not part of the key: keys are unique within one run
    assert Prediction(sample_id="a", run_id="r1").key == Prediction(sample_id="a", run_id="r2").key
    assert Prediction(sample_id="a", run_id="r", question_id="q1").key != (
        Prediction(sample_id="a", run_id="r", question_id="q2").key
    )


def test_json_round_trip() -> None:
    p = Prediction(
        sample_id="a",
        run_id="r",
        score=0.25,
        verdict="unparsed",
        map_path=Path("m/a.npy"),
        explanation="<b>x</b> ü",
        question_id="q",
        metadata={"tokens": 3, "nested": {"k": [1, 2]}},
    )
    q = Prediction.model_validate_json(p.model_dump_json())
    assert q == p
    assert not math.isnan(q.score)  # type: ignore[arg-type]
