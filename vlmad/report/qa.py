"""The QA section of a report: what the QA build stored and exported, and example question-answer pairs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from vlmad.data.images import load_image
from vlmad.records import Manifest, QAItem
from vlmad.report.html import Card, HtmlReport


def add_qa_section(
    report: HtmlReport,
    items: Sequence[QAItem],
    manifest: Manifest,
    *,
    split_counts: dict[str, int],
    export_counts: dict[str, dict[str, int]],
    templates: dict[str, str] | None = None,
    examples: int = 4,
) -> None:
    """Counts by kind and source, the split and export sizes, and ``examples`` images (template beside test)
    with their QA turns. Item text is escaped by :class:`HtmlReport` (model drafts are untrusted)."""
    report.heading("QA annotations (document 004's QA-augmented dataset)")
    kinds = Counter((it.kind, it.source, it.status) for it in items)
    report.table(
        ["kind", "source", "status", "items"],
        [[k, s, st, n] for (k, s, st), n in sorted(kinds.items())],
        caption="QA items in the store",
    )
    rows = [
        [part, split_counts.get(part, 0), c.get("records", 0), c.get("turns", 0)]
        for part, c in export_counts.items()
    ]
    report.table(
        ["split", "images", "exported conversations", "exported QA turns"],
        rows,
        caption="Partial-supervision split (all training normals + a share of each test anomaly type go to "
        "training, by image) and the training exports (LLaVA JSON, messages JSONL, Hugging Face dataset)",
    )
    by_sample: dict[str, list[QAItem]] = {}
    for it in items:
        by_sample.setdefault(it.sample_id, []).append(it)
    shown = 0
    for label in ("logical", "structural", "good"):
        sample = next((s for s in manifest if s.label == label and s.id in by_sample), None)
        if sample is None or shown >= examples:
            continue
        shown += 1
        report.subheading(f"{sample.id} ({label})")
        cards = []
        tpl = (templates or {}).get(sample.id)
        if tpl is not None:
            cards.append(
                Card(load_image(manifest.get(tpl).image_path), title="template (normal)", caption=tpl)
            )
        cards.append(Card(load_image(sample.image_path), title="test image", caption=sample.id, tag=label))
        report.grid(cards, max_side=192)
        turns = by_sample[sample.id][:6]
        report.table(
            ["kind", "source", "question", "answer"],
            [[t.kind, t.source, t.question, t.answer] for t in turns],
        )
