"""Review of model-drafted QA: a person accepts, edits or rejects each draft (the library side of
``vlmad qa review``).

Source document 004 verifies every GPT-drafted QA text by hand before it is used for training. Two ways:

- :func:`accept_where`: accept, in bulk, the drafts that match filters (for instance those whose verdict
  agrees with the ground-truth label), after looking at a sample of them;
- :func:`review_loop`: go through undecided drafts one at a time; the caller supplies ``ask`` (which
  decision) and ``edit`` (the changed fields), the CLI from the terminal and ``$EDITOR``, tests from a
  script.

Every decision is its own store transaction (:meth:`QAStore.review`), so quitting, a crash or Ctrl-C keeps
every decision made; the next review starts again from the drafts still undecided.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlmad.qa.errors import QAError
from vlmad.records import Manifest, QAItem

if TYPE_CHECKING:
    from vlmad.qa.store import QAStore

#: decisions ``ask`` may return (the first letter or the whole word, any case)
DECISIONS: dict[str, str] = {
    "a": "accept",
    "accept": "accept",
    "e": "edit",
    "edit": "edit",
    "r": "reject",
    "reject": "reject",
    "s": "skip",
    "skip": "skip",
    "q": "quit",
    "quit": "quit",
}
#: statuses a review can act on (failed drafts have nothing to review: they are re-drafted instead)
_REVIEWABLE = ("draft", "verified", "edited")

Filter = str | Iterable[str] | None


def _as_set(value: Filter) -> set[str] | None:
    return None if value is None else ({value} if isinstance(value, str) else set(value))


def _statuses(status: Filter) -> list[str]:
    wanted = _as_set(status)
    if wanted is None:
        return list(_REVIEWABLE)
    bad = sorted(wanted - set(_REVIEWABLE))
    if bad:
        raise QAError(
            f"cannot review items in status {', '.join(bad)}; reviewable statuses: {', '.join(_REVIEWABLE)}"
        )
    return sorted(wanted)


def _check_reviewer(reviewer: str) -> str:
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise QAError("a review needs the reviewer's name (reviewer must be a non-empty string)")
    return reviewer.strip()


def label_verdict(label: str) -> str:
    """The verdict a ground-truth label implies: ``normal`` for ``good``, else ``anomalous``."""
    return "normal" if label == "good" else "anomalous"


def select_items(
    store: QAStore,
    *,
    source: Filter = "gpt-draft",
    status: Filter = "draft",
    category: Filter = None,
    kind: Filter = None,
    sample_ids: Filter = None,
    verdict_matches_label: bool | None = None,
    manifest: Manifest | None = None,
) -> list[QAItem]:
    """The reviewable items matching every filter, in store order (sample id, creation time, id).

    ``status`` must name reviewable statuses only (draft, verified, edited; default ``draft``).
    ``verdict_matches_label``: ``True`` keeps items whose verdict equals the one implied by their sample's
    ground-truth label, ``False`` those that disagree, ``None`` both; it needs ``manifest`` (else
    :class:`QAError`), and items whose sample is not in the manifest are left out when it is set.
    """
    statuses = _statuses(status)
    if verdict_matches_label is not None and manifest is None:
        raise QAError("verdict_matches_label needs the manifest (the ground-truth labels)")
    items = store.items(source=source, status=statuses, category=category, kind=kind, sample_ids=sample_ids)
    if verdict_matches_label is None:
        return items
    assert manifest is not None
    kept = []
    for item in items:
        try:
            label = manifest.get(item.sample_id).label
        except KeyError:
            continue
        if item.verdict is not None and (item.verdict == label_verdict(label)) == verdict_matches_label:
            kept.append(item)
    return kept


def accept_where(
    store: QAStore,
    *,
    reviewer: str,
    source: Filter = "gpt-draft",
    status: Filter = "draft",
    category: Filter = None,
    kind: Filter = None,
    sample_ids: Filter = None,
    verdict_matches_label: bool | None = None,
    manifest: Manifest | None = None,
    dry_run: bool = False,
) -> int:
    """Accept every item matching the filters (see :func:`select_items`) as ``reviewer``; returns how many.

    With ``dry_run`` nothing changes and the return value is how many would be accepted. Each acceptance is
    one transaction, so an interrupted bulk accept keeps what it did. An empty reviewer -> :class:`QAError`.
    """
    reviewer = _check_reviewer(reviewer)
    items = select_items(
        store,
        source=source,
        status=status,
        category=category,
        kind=kind,
        sample_ids=sample_ids,
        verdict_matches_label=verdict_matches_label,
        manifest=manifest,
    )
    if dry_run:
        return len(items)
    for item in items:
        store.review(item.id, "accept", reviewer=reviewer)
    return len(items)


@dataclass
class ReviewSummary:
    """What one :func:`review_loop` did.

    ``shown`` items were answered (the one the reviewer quit on is not counted); each was ``accepted``,
    ``edited``, ``rejected`` or ``skipped`` (skip, a cancelled edit, or an invalid edit: the item stays
    undecided). ``quit`` is true when the
    reviewer quit before the end; ``remaining`` counts the items still matching the filters afterwards
    (the undecided ones, for the default ``status="draft"``). ``problems`` lists refused edits as
    ``"<item id>: <reason>"``. ``decided`` maps item id -> decision taken in this loop.
    """

    shown: int = 0
    accepted: int = 0
    edited: int = 0
    rejected: int = 0
    skipped: int = 0
    quit: bool = False
    remaining: int = 0
    problems: list[str] = field(default_factory=list)
    decided: dict[str, str] = field(default_factory=dict)


def review_loop(
    store: QAStore,
    *,
    reviewer: str,
    ask: Callable[[QAItem], str],
    edit: Callable[[QAItem], dict[str, Any] | None],
    source: Filter = "gpt-draft",
    status: Filter = "draft",
    category: Filter = None,
    kind: Filter = None,
    sample_ids: Filter = None,
    verdict_matches_label: bool | None = None,
    manifest: Manifest | None = None,
    limit: int | None = None,
) -> ReviewSummary:
    """Review the items matching the filters one at a time, in store order.

    For each item (re-read from the store first; one decided meanwhile by someone else is passed over),
    ``ask(item)`` returns a decision: ``a``/``accept``, ``e``/``edit``, ``r``/``reject``, ``s``/``skip``
    or ``q``/``quit`` (any case); anything else -> :class:`QAError`. For an edit, ``edit(item)`` returns
    the fields to change (see :meth:`QAStore.review`), or ``None`` to cancel (the item is skipped); an edit
    that changes nothing is recorded as an acceptance, and one the store refuses is skipped and noted in
    ``problems``. Each decision is stored at once (one transaction), so quitting (or an exception from
    ``ask``/``edit``) keeps every decision made, and calling again continues with the undecided items.
    ``limit`` stops after that many items were shown.
    """
    from vlmad.qa.errors import QAStoreError

    reviewer = _check_reviewer(reviewer)
    wanted = _statuses(status)
    filters: dict[str, Any] = {
        "source": source,
        "status": status,
        "category": category,
        "kind": kind,
        "sample_ids": sample_ids,
        "verdict_matches_label": verdict_matches_label,
        "manifest": manifest,
    }
    summary = ReviewSummary()
    for listed in select_items(store, **filters):
        if limit is not None and summary.shown >= limit:
            break
        item = store.get(listed.id)
        if item.status not in wanted:
            continue  # decided meanwhile (another reviewer, or a bulk accept)
        summary.shown += 1
        answer = ask(item)
        decision = DECISIONS.get(answer.strip().lower()) if isinstance(answer, str) else None
        if decision is None:
            raise QAError(
                f"unknown review decision {answer!r}; expected a(ccept), e(dit), r(eject), s(kip), q(uit)"
            )
        if decision == "quit":
            summary.shown -= 1  # shown but not decided: it is still undecided
            summary.quit = True
            break
        if decision == "skip":
            summary.skipped += 1
            continue
        if decision == "edit":
            changes = edit(item)
            if changes is None:
                summary.skipped += 1
                continue
            current = item.model_dump(mode="json")
            changes = {k: v for k, v in changes.items() if current.get(k, object()) != v}
            if not changes:
                decision = "accept"
            else:
                try:
                    store.review(item.id, "edit", reviewer=reviewer, changes=changes)
                except QAStoreError as e:
                    summary.problems.append(f"{item.id}: {e.problem}")
                    summary.skipped += 1
                    continue
                summary.edited += 1
                summary.decided[item.id] = "edit"
                continue
        store.review(item.id, decision, reviewer=reviewer)
        if decision == "accept":
            summary.accepted += 1
        else:
            summary.rejected += 1
        summary.decided[item.id] = decision
    summary.remaining = len(select_items(store, **filters))
    return summary
