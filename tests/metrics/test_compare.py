"""A/B comparisons of runs: the right statistic per kind of run, Holm across runs, strict item matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.fixtures import make_mvtec_ad
from vlmad.data.readers import read_dataset
from vlmad.metrics.compare import compare_runs
from vlmad.metrics.evaluate import EvaluationError
from vlmad.records import Manifest, Prediction


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return read_dataset(make_mvtec_ad(tmp_path_factory.mktemp("cmp") / "ad"))


def _scores(m: Manifest, name: str, noise: float, seed: int) -> list[Prediction]:
    rng = np.random.default_rng(seed)
    return [
        Prediction(sample_id=s.id, run_id=name, score=float(s.is_anomalous) + noise * rng.normal())
        for s in m.filter(split="test")
    ]


def test_score_runs_compare_auroc_and_holm_adjusts(manifest: Manifest) -> None:
    runs = {
        "base": _scores(manifest, "base", 2.0, 0),
        "good": _scores(manifest, "good", 0.1, 1),
        "same": _scores(manifest, "same", 2.0, 2),
    }
    res = compare_runs(manifest, runs, "base", n_boot=300, seed=4)
    assert [r.other for r in res] == ["good", "same"] and {r.metric for r in res} == {"image_auroc"}
    tests = manifest.filter(split="test")
    y = [s.is_anomalous for s in tests]
    for r in res:
        base = roc_auc_score(y, [p.score for p in runs["base"]])
        other = roc_auc_score(y, [p.score for p in runs[r.other]])
        assert r.value_base == pytest.approx(base) and r.value_other == pytest.approx(other)
        assert r.difference == pytest.approx(other - base)
    # Holm: the smaller p is multiplied by 2, the larger kept monotone; never below the raw p
    raw = sorted(r.p_value for r in res)
    adj = sorted(r.p_holm for r in res)
    assert adj[0] == pytest.approx(min(1.0, 2 * raw[0]))
    assert all(h >= p for h, p in zip(adj, raw, strict=True))
    assert compare_runs(manifest, runs, "base", n_boot=300, seed=4) == res


def test_runs_must_cover_the_same_items(manifest: Manifest) -> None:
    a = _scores(manifest, "a", 1.0, 0)
    b = _scores(manifest, "b", 1.0, 1)[1:]
    with pytest.raises(EvaluationError, match="cover different items"):
        compare_runs(manifest, {"a": a, "b": b}, "a")
    with pytest.raises(EvaluationError, match="not among"):
        compare_runs(manifest, {"a": a}, "x")
    verdicts = [Prediction(sample_id=p.sample_id, run_id="v", verdict="normal") for p in a]
    with pytest.raises(EvaluationError, match="verdicts on every item, or scores"):
        compare_runs(manifest, {"a": a, "v": verdicts}, "a")


def test_questions_on_one_image_stay_together(manifest: Manifest, tmp_path: Path) -> None:
    tests = manifest.filter(split="test")

    def run(name: str, wrong_every: int) -> list[Prediction]:
        out = []
        for i, s in enumerate(tests):
            for q in ("q1", "q2", "q3"):
                right = "anomalous" if s.is_anomalous else "normal"
                verdict = (
                    ("normal" if right == "anomalous" else "anomalous") if i % wrong_every == 0 else right
                )
                out.append(Prediction(sample_id=s.id, run_id=name, verdict=verdict, question_id=q))
        return out

    (r,) = compare_runs(manifest, {"a": run("a", 2), "b": run("b", 1000)}, "a", n_boot=500, seed=0)
    assert r.metric == "accuracy" and r.n_items == 3 * len(tests) and r.n_images == len(tests)
    wrong_a = sum(1 for i in range(len(tests)) if i % 2 == 0)
    assert r.value_base == pytest.approx(1 - wrong_a / len(tests))
    assert r.only_other_correct == 3 * (wrong_a - 1) and r.only_base_correct == 0  # item 0 wrong in both
    assert r.low <= r.difference <= r.high


def test_unparsed_verdict_is_wrong_on_normal_images_too(tmp_path: Path) -> None:
    """An unparsed answer is never correct (as in vlmad.metrics.verdict), also on a good image."""
    m = read_dataset(make_mvtec_ad(tmp_path, categories=("bottle",)))
    test = [s for s in m if s.split == "test"]
    truth = ["anomalous" if s.is_anomalous else "normal" for s in test]
    a = [Prediction(sample_id=s.id, run_id="a", verdict=v) for s, v in zip(test, truth, strict=True)]
    b = [
        Prediction(sample_id=s.id, run_id="b", verdict="unparsed" if not s.is_anomalous else v)
        for s, v in zip(test, truth, strict=True)
    ]
    (row,) = compare_runs(m, {"a": a, "b": b}, "a", n_boot=200)
    n_good = sum(not s.is_anomalous for s in test)
    assert row.value_base == 1.0
    assert row.value_other == pytest.approx(1 - n_good / len(test))
