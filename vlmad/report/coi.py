"""The chain-of-image section of a report: document 004's tables for each model x prompt, a per-prompt
chart like its Figure 3, the explanation quality, the A/B comparisons and example answers.

Model text (explanations, raw replies) is untrusted: it reaches the page only through
:class:`~vlmad.report.html.HtmlReport`, which escapes every text. Runs of tiny random models are marked
``(TINY RANDOM)`` wherever they appear, with a warning note.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vlmad.coi.evaluate import (
    CoiRow,
    ExplanationQuality,
    ab_table,
    is_random_run,
    run_label,
    score_table,
    split_run_id,
)
from vlmad.data.images import load_image
from vlmad.records import Manifest, Prediction
from vlmad.report.html import Card, HtmlReport, pyplot

if TYPE_CHECKING:
    from vlmad.metrics.compare import Comparison

__all__ = ["add_coi_section", "pct"]

_EXAMPLE_CHARS = 600


def pct(value: float | None, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage string ("54.3"); "–" for NaN or None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.{digits}f}"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _short(text: str | None, limit: int = _EXAMPLE_CHARS) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table1(report: HtmlReport, rows: Sequence[CoiRow]) -> None:
    header = [
        "model",
        "prompt",
        "Logical",
        "Structural",
        "Average",
        "Good",
        "balanced acc.",
        "yes-rate",
        "over-detection",
        "miss rate",
        "unparsed",
        "failed items",
        "AUROC",
        "images",
    ]
    body = []
    for r in rows:
        v = r.verdict
        model = f"{r.model} (TINY RANDOM)" if r.random else r.model
        body.append(
            [
                model,
                r.prompt,
                pct(v.logical_accuracy),
                pct(v.structural_accuracy),
                pct(v.average_accuracy),
                pct(v.good_accuracy),
                pct(v.balanced_accuracy),
                pct(v.yes_rate),
                pct(v.over_detection),
                pct(v.miss_rate),
                pct(v.parse_failure_rate),
                r.n_failed,
                _num(r.auroc),
                v.n,
            ]
        )
    report.table(
        header,
        body,
        caption="Accuracy (%) on logical and structural anomalies and their average, as in document 004's "
        "Table 1; good-image accuracy (over-detection check); AUROC of the yes/no score where the model "
        "gives one. Unparsed and failed answers count as wrong.",
    )


def _figure3(report: HtmlReport, rows: Sequence[CoiRow]) -> None:
    """Grouped bars per prompt (logical / structural / good accuracy), one panel per model."""
    import numpy as np

    models = list(dict.fromkeys(r.model for r in rows))
    plt = pyplot()
    fig, axes = plt.subplots(
        1,
        len(models),
        figsize=(max(4.0, 1.6 + 1.5 * max(1, len(rows) // len(models))) * len(models), 3.4),
        squeeze=False,
    )
    colours = {"Logical": "#a3c", "Structural": "#d52", "Good": "#2a7"}
    for ax, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r.model == model]
        x = np.arange(len(mine))
        width = 0.26
        for k, (name, attr) in enumerate(
            (
                ("Logical", "logical_accuracy"),
                ("Structural", "structural_accuracy"),
                ("Good", "good_accuracy"),
            )
        ):
            values = [getattr(r.verdict, attr) for r in mine]
            heights = [0.0 if math.isnan(v) else 100 * v for v in values]
            ax.bar(x + (k - 1) * width, heights, width, label=name, color=colours[name])
        ax.set_xticks(x, [r.prompt or r.run_id for r in mine], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy (%)")
        random = any(r.random for r in mine)
        ax.set_title(model + (" (TINY RANDOM)" if random else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path = report.save_figure(fig, "coi_per_prompt_accuracy")
    report.figure(
        path,
        "Accuracy per prompt on logical, structural and good images (like document 004's Figure 3); "
        "prompt design moves logical-anomaly accuracy more than structural, good images stay high.",
    )


def _explanations(report: HtmlReport, rows: Sequence[ExplanationQuality], random: dict[str, bool]) -> None:
    body = []
    for q in rows:
        b, d = q.bertscore, q.diversity
        body.append(
            [
                run_label(q.run_id, random.get(q.run_id, False)),
                b.n_anomalous,
                b.n_detected,
                b.n_scored,
                pct(b.f1),
                pct(b.precision),
                pct(b.recall),
                _num(d.get("distinct_1")),
                _num(d.get("distinct_2")),
                _num(d.get("mean_pairwise_cosine")),
            ]
        )
    setting = rows[0].bertscore.hash if rows else ""
    report.table(
        [
            "run",
            "anomalous images",
            "detected",
            "scored",
            "BERTScore F1",
            "P",
            "R",
            "distinct-1",
            "distinct-2",
            "mean pairwise cosine",
        ],
        body,
        caption="Explanation quality on correctly detected anomalies (document 004): BERTScore (x100) "
        f"against the reference description ({setting}); diversity of the same explanations "
        "(higher distinct-n and lower pairwise similarity = more diverse).",
    )


def _ab(report: HtmlReport, rows: Sequence[Comparison], random: dict[str, bool], alpha: float) -> None:
    body = []
    for c in rows:
        body.append(
            [
                run_label(c.base, random.get(c.base, False)),
                run_label(c.other, random.get(c.other, False)),
                c.subset,
                c.n_images,
                pct(c.value_base),
                pct(c.value_other),
                pct(c.difference),
                f"[{pct(c.low)}, {pct(c.high)}]",
                _num(c.p_value, 4),
                _num(c.p_holm, 4),
                "yes" if c.p_holm <= alpha else "no",
            ]
        )
    n_boot, seed = (rows[0].n_boot, rows[0].seed) if rows else (0, 0)
    report.table(
        [
            "A (base)",
            "B",
            "subset",
            "images",
            "acc. A",
            "acc. B",
            "B - A",
            f"{int(100 * rows[0].ci) if rows else 95}% CI",
            "McNemar p",
            "Holm p",
            f"significant (Holm p <= {alpha})",
        ],
        body,
        caption=f"A/B of every pair of runs: accuracy difference (percentage points) with a paired bootstrap "
        f"CI resampling images ({n_boot} resamples, seed {seed}), exact McNemar p-value, Holm-corrected over "
        "all rows. Subsets: all test images, or only the logical / structural / good ones.",
    )


def _examples(
    report: HtmlReport,
    manifest: Manifest,
    predictions: Sequence[Prediction],
    examples: int,
    random: dict[str, bool],
) -> None:
    by_sample: dict[str, list[Prediction]] = {}
    for p in predictions:
        by_sample.setdefault(p.sample_id, []).append(p)
    shown = 0
    for label in ("logical", "structural", "good", "anomaly"):
        if shown >= examples:
            break
        sample = next((s for s in manifest if s.label == label and s.id in by_sample), None)
        if sample is None:
            continue
        shown += 1
        preds = by_sample[sample.id]
        report.subheading(f"Example: {sample.id} ({label})")
        cards = []
        template_id = next((p.metadata.get("template_sample_id") for p in preds), None)
        if isinstance(template_id, str):
            try:
                tpl = manifest.get(template_id)
                cards.append(Card(load_image(tpl.image_path), title="template (normal)", caption=tpl.id))
            except KeyError:
                pass
        cards.append(Card(load_image(sample.image_path), title="test image", caption=sample.id, tag=label))
        report.grid(cards, max_side=192)
        body = []
        for p in preds:
            correct = (p.verdict == "anomalous") if sample.is_anomalous else (p.verdict == "normal")
            status = str(p.metadata.get("status", ""))
            error = p.metadata.get("error")
            body.append(
                [
                    run_label(p.run_id, random.get(p.run_id, False)),
                    p.verdict or "",
                    "yes" if correct else "no",
                    status + (f": {error}" if error else ""),
                    _short(p.explanation),
                    _short(p.metadata.get("raw")),
                ]
            )
        reference = str(sample.metadata.get("description") or "")
        report.table(
            ["run", "verdict", "correct", "status", "explanation", "reply (final step)"],
            body,
            caption=f"Reference: {_short(reference, 300)}" if reference else "",
        )


def add_coi_section(
    report: HtmlReport,
    manifest: Manifest,
    predictions: Sequence[Prediction],
    *,
    scores: Sequence[CoiRow] | None = None,
    explanations: Sequence[ExplanationQuality] | None = None,
    comparisons: Sequence[Comparison] | None = None,
    examples: int = 3,
    warnings: Sequence[str] = (),
    alpha: float = 0.05,
    title: str = "Chain-of-image prompting (document 004, training-free part)",
) -> None:
    """Add the chain-of-image section for ``predictions`` (one or several runs) on ``manifest``.

    ``scores`` (Table 1 rows) and ``comparisons`` (A/B rows) are computed when not given
    (:func:`vlmad.coi.evaluate.score_table`, :func:`~vlmad.coi.evaluate.ab_table`); ``explanations``
    (BERTScore and diversity, which need the text encoder) are shown only when given. ``examples``: how many
    images (one logical, one structural, one good, ...) are shown with every run's answer. ``warnings``:
    extra notes shown first. Runs of tiny random models are flagged.
    """
    preds = list(predictions)
    rows = list(scores) if scores is not None else score_table(preds, manifest)
    rows = [r for r in rows if r.verdict.category == "all"]
    runs: dict[str, list[Prediction]] = {}
    for p in preds:
        runs.setdefault(p.run_id, []).append(p)
    random = {rid: is_random_run(ps) for rid, ps in runs.items()}
    report.heading(title)
    report.paragraph(
        "Each test image is shown to the model after a normal template image of the same category; the model "
        "compares them step by step (prompts P1-P3 of document 004, or a plain prompt without steps) and "
        "answers normal or anomalous with an explanation. Models: "
        + ", ".join(dict.fromkeys(split_run_id(r)[0] for r in runs))
        + "."
    )
    for w in warnings:
        report.note(w, "warning")
    tiny = [rid for rid, flag in random.items() if flag]
    if tiny:
        report.note(
            "TINY RANDOM models: "
            + ", ".join(tiny)
            + " are randomly initialised tiny models; their answers, scores and accuracies show that the "
            "pipeline runs, never how well a model detects anomalies.",
            "warning",
        )
    if not rows:
        report.note("No chain-of-image predictions on the test split.", "warning")
        return
    _table1(report, rows)
    _figure3(report, rows)
    if explanations:
        _explanations(report, explanations, random)
    ab = (
        list(comparisons) if comparisons is not None else (ab_table(preds, manifest) if len(runs) > 1 else [])
    )
    if ab:
        _ab(report, ab, random, alpha)
    if examples > 0:
        _examples(report, manifest, preds, examples, random)
