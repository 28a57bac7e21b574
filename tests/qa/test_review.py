"""Review of drafts: bulk acceptance with filters, and the one-at-a-time loop with scripted decisions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vlmad.qa.errors import QAError
from vlmad.qa.review import accept_where, review_loop, select_items
from vlmad.qa.store import QAStore, new_item_id, now_iso
from vlmad.records import DraftInfo, Manifest, QAItem, Sample


def draft(sample: Sample, *, verdict: str, kind: str = "detection", status: str = "draft") -> QAItem:
    now = now_iso()
    return QAItem(
        id=new_item_id(),
        sample_id=sample.id,
        category=sample.category,
        kind=kind,
        question="Is there a defect?",
        answer="Yes, it is anomalous." if verdict == "anomalous" else "No, it is normal.",
        verdict=verdict if status != "failed" else None,
        anomaly_type="logical" if verdict == "anomalous" else None,
        explanation="Something is missing." if verdict == "anomalous" else "",
        source="gpt-draft",
        status=status,
        author="gpt-4o",
        created_at=now,
        updated_at=now,
        draft=DraftInfo(model="gpt-4o", prompt_name="qa_draft", prompt_version="1"),
    )


@pytest.fixture
def store(tmp_path: Path, qa_manifest: Manifest) -> Iterator[QAStore]:
    """Drafts for 8 test samples of two categories: right verdicts, two wrong ones, one failed item."""
    cats = qa_manifest.categories[:2]
    picked = [s for s in qa_manifest if s.category in cats and s.split == "test"]
    samples = [s for s in picked if s.label == "good"][:2] + [s for s in picked if s.is_anomalous][:6]
    items = []
    for i, s in enumerate(samples):
        right = "anomalous" if s.is_anomalous else "normal"
        wrong = "normal" if s.is_anomalous else "anomalous"
        items.append(draft(s, verdict=wrong if i in (1, 4) else right))
        items.append(draft(s, verdict=right, kind="description"))
    items.append(draft(samples[0], verdict="normal", status="failed"))
    with QAStore(tmp_path / "qa.sqlite") as st:
        st.add(items, who="gpt-4o")
        yield st


def test_accept_where_filters_and_dry_run(store: QAStore, qa_manifest: Manifest) -> None:
    n_drafts = store.count(status="draft")
    assert n_drafts == 16
    assert accept_where(store, reviewer="ana", dry_run=True) == 16
    assert store.count(status="draft") == 16  # dry run changed nothing
    wrong = accept_where(
        store, reviewer="ana", verdict_matches_label=False, manifest=qa_manifest, dry_run=True
    )
    assert wrong == 2
    kind = accept_where(store, reviewer="ana", kind="description", dry_run=True)
    assert kind == 8
    cat = qa_manifest.categories[0]
    n_cat = store.count(status="draft", category=cat)
    assert accept_where(store, reviewer="ana", category=cat, kind="description", dry_run=True) < n_cat
    accepted = accept_where(store, reviewer="ana", verdict_matches_label=True, manifest=qa_manifest)
    assert accepted == 14
    assert store.count(status="verified") == 14 and store.count(status="draft") == 2
    for item in select_items(store, verdict_matches_label=False, manifest=qa_manifest):
        assert item.verdict != ("anomalous" if qa_manifest.get(item.sample_id).is_anomalous else "normal")
    assert all(i.reviewer == "ana" for i in store.items(status="verified"))
    assert store.count(status="failed") == 1  # failed drafts are never accepted
    assert [h.who for h in store.history() if h.action == "review"] == ["ana"] * 14


def test_accept_where_refuses_bad_requests(store: QAStore) -> None:
    with pytest.raises(QAError, match="manifest"):
        accept_where(store, reviewer="ana", verdict_matches_label=True)
    with pytest.raises(QAError, match="reviewer"):
        accept_where(store, reviewer="  ")
    with pytest.raises(QAError, match="failed"):
        accept_where(store, reviewer="ana", status="failed")


def scripted(answers: list[str]) -> Any:
    it = iter(answers)
    shown: list[str] = []

    def ask(item: QAItem) -> str:
        shown.append(item.id)
        return next(it)

    ask.shown = shown  # type: ignore[attr-defined]
    return ask


def test_review_loop_decisions_quit_and_resume(store: QAStore) -> None:
    undecided = [i.id for i in store.items(status="draft")]
    edits: list[str] = []

    def edit(item: QAItem) -> dict[str, Any] | None:
        edits.append(item.id)
        return {"answer": "Yes: the left compartment lacks a nectarine.", "verdict": "anomalous"}

    ask = scripted(["a", "e", "r", "s", "Accept", "q"])
    summary = review_loop(store, reviewer="bo", ask=ask, edit=edit)
    assert ask.shown == undecided[:6] and edits == [undecided[1]]
    assert (summary.shown, summary.accepted, summary.edited, summary.rejected, summary.skipped) == (
        5,
        2,
        1,
        1,
        1,
    )
    assert summary.quit and summary.remaining == len(undecided) - 4
    assert summary.decided == {
        undecided[0]: "accept",
        undecided[1]: "edit",
        undecided[2]: "reject",
        undecided[4]: "accept",
    }
    assert store.get(undecided[0]).status == "verified"
    edited = store.get(undecided[1])
    assert edited.status == "edited" and edited.answer.startswith("Yes: the left") and edited.reviewer == "bo"
    assert store.get(undecided[2]).status == "rejected"
    assert store.get(undecided[3]).status == "draft"  # skipped: still undecided
    assert store.get(undecided[5]).status == "draft"  # the one quit on

    # resuming goes on with the undecided drafts: the skipped one, then from where the reviewer quit
    ask2 = scripted(["a"] * 100)
    summary2 = review_loop(store, reviewer="bo", ask=ask2, edit=edit)
    assert ask2.shown == [undecided[3], *undecided[5:]]
    assert summary2.accepted == len(undecided) - 4 and not summary2.quit and summary2.remaining == 0
    assert store.count(status="draft") == 0


def test_review_loop_edit_cases_and_limit(store: QAStore) -> None:
    ids = [i.id for i in store.items(status="draft")]
    replies: list[dict[str, Any] | None] = [None, {}, {"verdict": "maybe"}, {"status": "verified"}]

    def edit(item: QAItem) -> dict[str, Any] | None:
        return replies.pop(0)

    summary = review_loop(store, reviewer="cy", ask=scripted(["e", "e", "e", "e"]), edit=edit, limit=4)
    assert summary.shown == 4 and not summary.quit
    # cancelled edit -> skipped; empty edit -> accept; invalid value and fixed field -> problems, skipped
    assert (summary.skipped, summary.accepted, summary.edited) == (3, 1, 0)
    assert [store.get(i).status for i in ids[:4]] == ["draft", "verified", "draft", "draft"]
    assert len(summary.problems) == 2 and summary.problems[0].startswith(ids[2])
    assert "verdict" in summary.problems[0] and "status" in summary.problems[1]
    with pytest.raises(QAError, match="unknown review decision"):
        review_loop(store, reviewer="cy", ask=scripted(["x"]), edit=edit)
    assert store.get(ids[0]).status == "draft"


def test_review_loop_passes_over_items_decided_meanwhile(store: QAStore) -> None:
    ids = [i.id for i in store.items(status="draft", kind="detection")]
    shown: list[str] = []

    def ask(item: QAItem) -> str:
        shown.append(item.id)
        if len(shown) == 1:  # another reviewer accepts the next item while this one is looked at
            store.review(ids[1], "accept", reviewer="other")
        return "s"

    review_loop(store, reviewer="dee", ask=ask, edit=lambda item: None, kind="detection")
    assert shown == [ids[0], *ids[2:]]
