"""Scoring and A/B of chain-of-image runs on synthetic predictions: Table 1 rows with AUROC, explanation
quality, Holm-corrected pairwise comparisons per subset."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vlmad.coi.evaluate import ab_table, explanation_table, score_table, split_run_id
from vlmad.metrics.evaluate import EvaluationError
from vlmad.metrics.ranking import auroc
from vlmad.metrics.stats import holm
from vlmad.records import DatasetInfo, Manifest, Prediction, Sample

LABELS = ["good"] * 6 + ["logical"] * 6 + ["structural"] * 6


@pytest.fixture()
def manifest(tmp_path: Path) -> Manifest:
    samples = [
        Sample(
            id=f"c/test/{i:02d}",
            image_path=tmp_path / f"{i}.png",
            category="c",
            split="test",
            label=lab,  # type: ignore[arg-type]
            metadata={"description": f"The part {i} is broken on the left."} if lab != "good" else {},
        )
        for i, lab in enumerate(LABELS)
    ]
    samples.append(
        Sample(id="c/train/00", image_path=tmp_path / "t.png", category="c", split="train", label="good")
    )
    return Manifest(DatasetInfo(name="t", layout="folder", root=tmp_path), samples)


def run(run_id: str, verdicts: str, scores: list[float] | None = None, **meta: Any) -> list[Prediction]:
    """``verdicts``: one letter per test image: n(ormal), a(nomalous), u(nparsed), f(ailed)."""
    names = {"n": "normal", "a": "anomalous", "u": "unparsed", "f": "unparsed"}
    out = []
    for i, v in enumerate(verdicts):
        status = {"n": "answered", "a": "answered", "u": "unparsed", "f": "failed"}[v]
        out.append(
            Prediction(
                sample_id=f"c/test/{i:02d}",
                run_id=run_id,
                verdict=names[v],  # type: ignore[arg-type]
                score=None if scores is None else scores[i],
                explanation=f"The part {i} is broken on the left side." if v == "a" else None,
                metadata={"status": status, **meta},
            )
        )
    return out


#                 good    logical structural
A = run("m/p1", "nnnnnuaaaannaaaaaa", scores=[0.1, 0.2, 0.1, 0.3, 0.2, 0.9] + [0.8] * 12)
B = run("m/p2", "nnnnnaaaannnaaaaaf")
C = run("m2/p1", "nnnaaaaaaaaaaaaann", random_vlm=True)


def test_score_table_is_table1_with_auroc(manifest: Manifest) -> None:
    rows = score_table(A + B + C, manifest)
    assert [(r.model, r.prompt) for r in rows] == [("m", "p1"), ("m", "p2"), ("m2", "p1")]
    a, b, c = rows
    assert a.verdict.logical_accuracy == pytest.approx(4 / 6)
    assert a.verdict.structural_accuracy == pytest.approx(1.0)
    assert a.verdict.average_accuracy == pytest.approx((4 / 6 + 1) / 2)
    assert a.verdict.good_accuracy == pytest.approx(5 / 6)  # the unparsed normal image is wrong
    assert a.verdict.parse_failure_rate == pytest.approx(1 / 18)
    labels = np.array([lab != "good" for lab in LABELS])
    assert a.auroc == pytest.approx(auroc(labels, [p.score for p in A]))
    assert a.auroc_logical == pytest.approx(auroc(labels[:12], [p.score for p in A[:12]]))
    assert a.n_scored == 18 and not a.random
    assert math.isnan(b.auroc) and b.n_failed == 1 and b.verdict.over_detection == pytest.approx(1 / 6)
    assert c.random and c.to_dict()["logical_accuracy"] == pytest.approx(1.0)
    by_cat = score_table(A, manifest, by_category=True)
    assert [r.verdict.category for r in by_cat] == ["all", "c"]
    assert split_run_id("tiny+lora/coi_p2") == ("tiny+lora", "coi_p2")


def test_ab_table_every_pair_every_subset_holm_corrected(manifest: Manifest) -> None:
    rows = ab_table(A + B + C, manifest, n_boot=2000, seed=1)
    assert len(rows) == 3 * 4
    assert [(r.base, r.other) for r in rows[::4]] == [("m/p1", "m/p2"), ("m/p1", "m2/p1"), ("m/p2", "m2/p1")]
    assert [r.subset for r in rows[:4]] == ["all", "logical", "structural", "good"]
    assert np.allclose([r.p_holm for r in rows], holm([r.p_value for r in rows]))
    assert all(r.p_holm >= r.p_value for r in rows)
    table1 = {r.run_id: r.verdict for r in score_table(A + B + C, manifest)}
    for r in rows:
        for run_id, value in ((r.base, r.value_base), (r.other, r.value_other)):
            v = table1[run_id]
            expected = {
                "all": v.accuracy,
                "logical": v.logical_accuracy,
                "structural": v.structural_accuracy,
                "good": v.good_accuracy,
            }[r.subset]
            assert value == pytest.approx(expected), (run_id, r.subset)
        assert r.difference == pytest.approx(r.value_other - r.value_base)
        assert r.low <= r.difference <= r.high and r.metric == "accuracy"
    n_images = {"all": 18, "logical": 6, "structural": 6, "good": 6}
    assert all(r.n_images == n_images[r.subset] for r in rows)
    # logical subset, A vs B: A right on 4, B on 3, all of B's right ones also right in A -> 1 discordant
    ab_logical = rows[1]
    assert (ab_logical.only_base_correct, ab_logical.only_other_correct) == (1, 0)
    assert ab_logical.p_value == pytest.approx(1.0)
    assert ab_table(A + B + C, manifest, n_boot=2000, seed=1) == rows  # seeded

    prompts = ab_table(A + B + C, manifest, scope="prompts", subsets=["all"], n_boot=500)
    assert [(r.base, r.other) for r in prompts] == [("m/p1", "m/p2")]
    models = ab_table(A + B + C, manifest, scope="models", subsets=["all"], n_boot=500)
    assert [(r.base, r.other) for r in models] == [("m/p1", "m2/p1")]
    with pytest.raises(EvaluationError, match="scope"):
        ab_table(A + B, manifest, scope="everything")
    with pytest.raises(EvaluationError, match="subset"):
        ab_table(A + B, manifest, subsets=["missing"])


def test_ab_table_compares_the_images_both_runs_judged(manifest: Manifest) -> None:
    rows = ab_table(A + B[:9], manifest, subsets=["all", "structural"], n_boot=500)
    assert [(r.subset, r.n_images) for r in rows] == [("all", 9)]  # no structural image in common


def test_explanation_table_bertscore_and_diversity(manifest: Manifest) -> None:
    rows = explanation_table(A + B, manifest)
    assert [q.run_id for q in rows] == ["m/p1", "m/p2"]
    a = rows[0]
    assert a.bertscore.n_detected == 10 and a.bertscore.n_scored == 10
    assert 0.5 < a.bertscore.f1 <= 1.0
    assert a.diversity["n"] == 10 and 0 < a.diversity["distinct_1"] < 1
    assert -1.0 <= a.diversity["mean_pairwise_cosine"] <= 1.0
    d = a.to_dict()
    assert d["bertscore_f1"] == a.bertscore.f1 and "diversity_distinct_2" in d
