"""Statistics of a QA store: what it holds, what drafting cost, and how much review changed the drafts.

The review-change measures compare each model draft's first version (its history ``create`` entry) with
its version now, so they say how much a person had to correct: how often the verdict survived review and
how far edited answers and explanations moved (normalised edit distance, 0 = unchanged, 1 = all new).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from vlmad.qa.review import label_verdict
from vlmad.records import Manifest, QAItem

if TYPE_CHECKING:
    from vlmad.qa.store import QAStore


def _edit_distance_function() -> tuple[str, Callable[[str, str], float]]:
    # rapidfuzz gives the true normalised Levenshtein distance (edits / length of the longer text) and is
    # fast on long texts; it is not a vlmad dependency and is not installed in this project's environment
    # (checked with `pip list`), so the standard library's difflib is the fallback that normally runs here:
    # 1 - SequenceMatcher.ratio() (Ratcliff/Obershelp matching blocks), also 0 for equal texts and 1 for
    # texts with nothing in common, but not the same number as Levenshtein. QAStats.edit_distance_method
    # records which one produced the figures, so numbers from different environments are not mixed up.
    try:
        from rapidfuzz.distance import Levenshtein
    except ImportError:

        def difflib_distance(a: str, b: str) -> float:
            return 1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()

        return "difflib", difflib_distance
    return "rapidfuzz-levenshtein", lambda a, b: float(Levenshtein.normalized_distance(a, b))


def edit_distance(a: str, b: str) -> float:
    """Normalised edit distance in [0, 1] between two texts (see :func:`edit_distance_method`)."""
    return _edit_distance_function()[1](a, b)


def edit_distance_method() -> str:
    """``"rapidfuzz-levenshtein"`` when rapidfuzz is importable, else ``"difflib"``."""
    return _edit_distance_function()[0]


@dataclass
class ReviewChange:
    """How review changed the model drafts (``gpt-draft`` items), from the store's history.

    - ``reviewed``: drafts a person decided on (verified, edited or rejected); ``accepted`` / ``edited`` /
      ``rejected`` split them; ``kept_rate`` = (accepted + edited) / reviewed.
    - ``verdict_agreement``: over kept drafts (verified or edited), the share whose final verdict equals
      the drafted verdict (per item); ``verdict_changed`` counts the others.
    - ``answer_edit_distance`` / ``explanation_edit_distance``: mean normalised edit distance between the
      drafted and final text over edited items; ``None`` when there is nothing to average.
    """

    reviewed: int = 0
    accepted: int = 0
    edited: int = 0
    rejected: int = 0
    kept_rate: float | None = None
    verdict_compared: int = 0
    verdict_changed: int = 0
    verdict_agreement: float | None = None
    answer_edit_distance: float | None = None
    explanation_edit_distance: float | None = None


@dataclass
class QAStats:
    """Counts and measures of one QA store (see :func:`qa_stats`).

    - ``n_items`` and counts ``by_source``, ``by_status``, ``by_category``, ``by_kind``,
      ``by_source_status`` (``"source/status"`` keys), ``trusted`` (items an export takes by default).
    - With a manifest: ``by_label`` (items per ground-truth label of their image), ``coverage`` per category
      (``images``, ``with_qa``, ``with_trusted_qa``), ``unknown_samples`` (items whose sample is not in it)
      and ``draft_label_agreement`` (share of drafted verdicts, as first drafted, that match the label).
    - ``draft``: ``responses`` (model replies stored, one per sample and run), ``failed``,
      ``cached_responses``, ``prompt_tokens``, ``completion_tokens``, ``cost_usd`` (of replies not served
      from the cache; ``None`` when no price was known).
    - ``review``: :class:`ReviewChange`; ``edit_distance_method`` says how edit distances were computed.
    """

    n_items: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    by_status: dict[str, int] = field(default_factory=dict)
    by_category: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)
    by_source_status: dict[str, int] = field(default_factory=dict)
    trusted: int = 0
    by_label: dict[str, int] | None = None
    coverage: dict[str, dict[str, int]] | None = None
    unknown_samples: int | None = None
    draft_label_agreement: float | None = None
    draft: dict[str, Any] = field(default_factory=dict)
    review: ReviewChange = field(default_factory=ReviewChange)
    edit_distance_method: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return asdict(self)


def _counts(values: Any) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def qa_stats(store: QAStore, manifest: Manifest | None = None) -> QAStats:
    """Compute :class:`QAStats` for every item of ``store`` (ground-truth measures need ``manifest``).

    Reads the store only. A draft's first version is its history ``create`` (or ``import``) entry; a draft
    without one (history lost) is compared with itself, i.e. counted as unchanged.
    """
    method, distance = _edit_distance_function()
    items = store.items()
    stats = QAStats(n_items=len(items), edit_distance_method=method)
    stats.by_source = _counts(i.source for i in items)
    stats.by_status = _counts(i.status for i in items)
    stats.by_category = _counts(i.category for i in items)
    stats.by_kind = _counts(i.kind for i in items)
    stats.by_source_status = _counts(f"{i.source}/{i.status}" for i in items)
    stats.trusted = sum(i.trusted for i in items)

    drafts = [i for i in items if i.source == "gpt-draft"]
    first = _first_versions(store) if drafts else {}
    stats.draft = _draft_costs(drafts)
    stats.review = _review_change(drafts, first, distance)
    if manifest is not None:
        _ground_truth_measures(stats, items, drafts, first, manifest)
    return stats


def _first_versions(store: QAStore) -> dict[str, dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for entry in store.history():
        if entry.action in ("create", "import") and entry.after is not None and entry.item_id not in first:
            first[entry.item_id] = entry.after
    return first


def _draft_costs(drafts: list[QAItem]) -> dict[str, Any]:
    groups: dict[str, QAItem] = {}
    for item in drafts:
        group = item.metadata.get("draft_group") if isinstance(item.metadata, dict) else None
        groups.setdefault(str(group) if group else item.id, item)
    paid = [i for i in groups.values() if i.draft is not None and not i.draft.cached]
    costs = [i.draft.cost_usd for i in paid if i.draft is not None and i.draft.cost_usd is not None]
    return {
        "responses": len(groups),
        "failed": sum(i.status == "failed" for i in groups.values()),
        "cached_responses": sum(i.draft is not None and i.draft.cached for i in groups.values()),
        "prompt_tokens": sum(i.draft.prompt_tokens for i in paid if i.draft is not None),
        "completion_tokens": sum(i.draft.completion_tokens for i in paid if i.draft is not None),
        "cost_usd": sum(costs) if costs else None,
    }


def _review_change(
    drafts: list[QAItem], first: dict[str, dict[str, Any]], distance: Callable[[str, str], float]
) -> ReviewChange:
    change = ReviewChange()
    answer_d: list[float] = []
    explanation_d: list[float] = []
    for item in drafts:
        if item.status not in ("verified", "edited", "rejected"):
            continue
        change.reviewed += 1
        if item.status == "rejected":
            change.rejected += 1
            continue
        if item.status == "verified":
            change.accepted += 1
        else:
            change.edited += 1
        original = first.get(item.id) or item.model_dump(mode="json")
        if original.get("verdict") is not None:
            change.verdict_compared += 1
            change.verdict_changed += original.get("verdict") != item.verdict
        if item.status == "edited":
            answer_d.append(distance(str(original.get("answer") or ""), item.answer))
            explanation_d.append(distance(str(original.get("explanation") or ""), item.explanation))
    if change.reviewed:
        change.kept_rate = (change.accepted + change.edited) / change.reviewed
    if change.verdict_compared:
        change.verdict_agreement = 1.0 - change.verdict_changed / change.verdict_compared
    change.answer_edit_distance = _mean(answer_d)
    change.explanation_edit_distance = _mean(explanation_d)
    return change


def _ground_truth_measures(
    stats: QAStats,
    items: list[QAItem],
    drafts: list[QAItem],
    first: dict[str, dict[str, Any]],
    manifest: Manifest,
) -> None:
    labels = {s.id: s.label for s in manifest.samples}
    stats.by_label = _counts(labels[i.sample_id] for i in items if i.sample_id in labels)
    stats.unknown_samples = sum(i.sample_id not in labels for i in items)
    with_qa = {i.sample_id for i in items if i.status not in ("rejected", "failed")}
    with_trusted = {i.sample_id for i in items if i.trusted}
    coverage: dict[str, dict[str, int]] = {}
    for s in manifest.samples:
        row = coverage.setdefault(s.category, {"images": 0, "with_qa": 0, "with_trusted_qa": 0})
        row["images"] += 1
        row["with_qa"] += s.id in with_qa
        row["with_trusted_qa"] += s.id in with_trusted
    stats.coverage = coverage
    agree: list[float] = []
    for item in drafts:
        verdict = (first.get(item.id) or {}).get("verdict", item.verdict)
        if verdict is None or item.sample_id not in labels:
            continue
        agree.append(float(verdict == label_verdict(labels[item.sample_id])))
    stats.draft_label_agreement = _mean(agree)
