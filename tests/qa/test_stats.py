"""QA store statistics: counts, coverage, draft cost, and review change measured from the history."""

from __future__ import annotations

import difflib
import importlib.util
from pathlib import Path

import pytest

from vlmad.qa.stats import edit_distance, edit_distance_method, qa_stats
from vlmad.qa.store import QAStore, new_item_id, now_iso, template_item_id
from vlmad.records import DraftInfo, Manifest, QAItem, Sample


def item(
    sample: Sample,
    *,
    source: str,
    status: str,
    verdict: str | None,
    answer: str = "No, it is normal.",
    explanation: str = "",
    kind: str = "detection",
    group: str | None = None,
    cost: float | None = None,
    cached: bool = False,
) -> QAItem:
    now = now_iso()
    info = None
    if source == "gpt-draft":
        info = DraftInfo(
            model="gpt-4o",
            prompt_name="qa_draft",
            prompt_version="1",
            prompt_tokens=100,
            completion_tokens=20,
            cost_usd=cost,
            cached=cached,
        )
    return QAItem(
        id=template_item_id(sample.id, kind, 0) if source == "template" else new_item_id(),
        sample_id=sample.id,
        category=sample.category,
        kind=kind,
        question="Is there a defect?",
        answer=answer,
        verdict=verdict,
        explanation=explanation,
        source=source,
        status=status,
        author="gpt-4o" if info else "ana",
        created_at=now,
        updated_at=now,
        draft=info,
        metadata={"draft_group": group} if group else {},
    )


def test_edit_distance_is_normalised_and_says_how() -> None:
    # rapidfuzz is not installed here, so difflib must be what runs; both give 0.25 for one edit in four
    expected = "rapidfuzz-levenshtein" if importlib.util.find_spec("rapidfuzz") else "difflib"
    assert edit_distance_method() == expected
    assert edit_distance("abcd", "abcx") == pytest.approx(0.25)
    assert edit_distance("same", "same") == 0.0 and edit_distance("", "") == 0.0
    assert edit_distance("abc", "xyz") == pytest.approx(1.0)


def test_counts_costs_and_review_change(tmp_path: Path, qa_manifest: Manifest) -> None:
    tests = [s for s in qa_manifest if s.split == "test"]
    good = next(s for s in tests if s.label == "good")
    bad = [s for s in tests if s.is_anomalous][:3]
    drafts = [
        # one reply (group g1) with two items for bad[0], verdict right
        item(bad[0], source="gpt-draft", status="draft", verdict="anomalous", group="g1", cost=0.01),
        item(
            bad[0],
            source="gpt-draft",
            status="draft",
            verdict="anomalous",
            kind="location",
            group="g1",
            cost=0.01,
        ),
        # bad[1]: drafted wrong (normal), a reviewer fixes the verdict and the texts
        item(
            bad[1],
            source="gpt-draft",
            status="draft",
            verdict="normal",
            answer="abcd",
            explanation="wxyz",
            group="g2",
            cost=0.02,
        ),
        # good: drafted right, rejected anyway; served from the cache (costs nothing now)
        item(good, source="gpt-draft", status="draft", verdict="normal", group="g3", cost=0.5, cached=True),
        # bad[2]: the model's reply was unusable
        item(bad[2], source="gpt-draft", status="failed", verdict=None, group="g4", cost=0.03),
    ]
    others = [
        item(good, source="template", status="verified", verdict="normal"),
        item(bad[2], source="manual", status="verified", verdict="anomalous", answer="Yes."),
    ]
    with QAStore(tmp_path / "qa.sqlite") as store:
        store.add(drafts, who="gpt-4o")
        store.put_template([others[0]])
        store.add([others[1]], who="ana", action="import")
        store.review(drafts[0].id, "accept", reviewer="ana")
        store.review(drafts[1].id, "accept", reviewer="ana")
        store.review(
            drafts[2].id,
            "edit",
            reviewer="ana",
            changes={
                "verdict": "anomalous",
                "anomaly_type": "logical",
                "answer": "abcx",
                "explanation": "wxyz",
            },
        )
        store.review(drafts[3].id, "reject", reviewer="ana")
        stats = qa_stats(store, qa_manifest)
        plain = qa_stats(store)

    assert stats.n_items == 7
    assert stats.by_source == {"gpt-draft": 5, "manual": 1, "template": 1}
    assert stats.by_status == {"edited": 1, "failed": 1, "rejected": 1, "verified": 4}
    assert stats.by_source_status["gpt-draft/verified"] == 2 and stats.by_kind == {
        "detection": 6,
        "location": 1,
    }
    assert stats.trusted == 5  # 2 accepted + 1 edited drafts, the template and the manual item
    assert stats.draft == {
        "responses": 4,
        "failed": 1,
        "cached_responses": 1,
        "prompt_tokens": 300,  # g1, g2, g4 (the cached g3 is not spent again)
        "completion_tokens": 60,
        "cost_usd": pytest.approx(0.06),
    }
    review = stats.review
    assert (review.reviewed, review.accepted, review.edited, review.rejected) == (4, 2, 1, 1)
    assert review.kept_rate == pytest.approx(0.75)
    assert (review.verdict_compared, review.verdict_changed) == (3, 1)
    assert review.verdict_agreement == pytest.approx(2 / 3)
    assert review.answer_edit_distance == pytest.approx(0.25)
    assert review.explanation_edit_distance == 0.0
    assert stats.edit_distance_method == edit_distance_method()

    # ground truth: bad[1] was drafted "normal" (wrong) as first version, the others right
    assert stats.draft_label_agreement == pytest.approx(3 / 4)
    assert stats.unknown_samples == 0 and sum(stats.by_label.values()) == 7
    cat = bad[0].category
    assert stats.coverage is not None and stats.coverage[cat]["images"] == 27
    with_qa = {s.id for s in [good, *bad] if s.category == cat}
    assert stats.coverage[cat]["with_qa"] == len(with_qa)
    assert plain.coverage is None and plain.draft_label_agreement is None
    assert plain.review == stats.review
    assert isinstance(stats.to_dict()["review"], dict)


def test_empty_store(tmp_path: Path) -> None:
    with QAStore(tmp_path / "qa.sqlite") as store:
        stats = qa_stats(store)
    assert stats.n_items == 0 and stats.review.verdict_agreement is None
    assert stats.review.answer_edit_distance is None and stats.draft["responses"] == 0


def test_edit_distance_matches_the_method_it_names() -> None:
    a, b = "the nectarine is missing", "a nectarine is missing on the left"
    if edit_distance_method() == "difflib":
        expected = 1 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    else:
        from rapidfuzz.distance import Levenshtein

        expected = Levenshtein.normalized_distance(a, b)
    assert edit_distance(a, b) == pytest.approx(expected) and 0 < edit_distance(a, b) < 1
