"""The detector section of a report: the source documents' table layouts and the imaging-shift study.

- Document 000's layout: one row per method, image AUROC / F1 / AP then pixel AUROC / F1 / AP / AUPRO
  (mean over categories, percent).
- Document 001's layout: pixel ROCAUC / PRO and the total scoring time in seconds.
- Document 002's layout: pixel AUROC beside pixel AP (AUPR), the metric that exposes what AUROC hides when
  few pixels are anomalous.
- The imaging study: one row per condition (uniform; train uniform, test shifted; both shifted) with the
  same columns as document 000, and the drop against the uniform condition.

Warnings (a random backbone above all) are shown as error notes at the top of the section.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vlmad.report.evaluation import format_value

if TYPE_CHECKING:
    from vlmad.detectors.study import ShiftResult
    from vlmad.metrics.evaluate import Evaluation
    from vlmad.report.html import HtmlReport

DOC000_COLUMNS: tuple[tuple[str, str], ...] = (
    ("image_auroc", "img AUROC"),
    ("image_f1_max", "img F1†"),
    ("image_ap", "img AP"),
    ("pixel_auroc", "px AUROC"),
    ("pixel_f1_max", "px F1†"),
    ("pixel_ap", "px AP"),
    ("pixel_aupro_0.3", "AUPRO"),
)
DOC001_COLUMNS: tuple[tuple[str, str], ...] = (("pixel_auroc", "pixel ROCAUC"), ("pixel_aupro_0.3", "PRO"))
DOC002_COLUMNS: tuple[tuple[str, str], ...] = (("pixel_auroc", "pixel AUROC"), ("pixel_ap", "pixel AUPR"))


def _value(ev: Evaluation, metric: str) -> float:
    try:
        return ev.value(metric)
    except KeyError:
        return math.nan


def layout_table(
    evaluations: Sequence[Evaluation],
    columns: Sequence[tuple[str, str]],
    extra: dict[str, list[Any]] | None = None,
) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows (one per method; mean over categories, percent) of ``columns``; ``extra`` adds
    columns ``{header: one value per evaluation}`` after them."""
    headers = ["method", *[label for _, label in columns], *(extra or {})]
    rows = []
    for i, ev in enumerate(evaluations):
        row: list[Any] = [ev.method, *[format_value(_value(ev, m)) for m, _ in columns]]
        row += [vals[i] for vals in (extra or {}).values()]
        rows.append(row)
    return headers, rows


def add_detector_section(
    report: HtmlReport,
    evaluations: Sequence[Evaluation],
    warnings: Sequence[str] = (),
    scoring_seconds: Sequence[float] | None = None,
    n_scored: int | None = None,
    shift: Sequence[ShiftResult] = (),
    title: str = "Detectors and zero-shot baselines in the source documents' layouts",
) -> None:
    """Add the documents' tables for ``evaluations`` (one per method, same dataset), the imaging study
    ``shift`` and every warning. ``scoring_seconds`` (one per evaluation) is the wall time of predicting
    ``n_scored`` images, feature extraction included."""
    report.heading(title)
    for w in warnings:
        report.note(w, "error")
    if evaluations:
        report.paragraph(
            "Mean over categories, in percent. † F1 at the best threshold on the test set (the F1-max "
            "convention of document 000): an optimistic upper bound."
        )
        report.table(
            *layout_table(evaluations, DOC000_COLUMNS), caption="Document 000 layout (image, then pixel)"
        )
        extra = None
        if scoring_seconds is not None:
            extra = {f"scoring time (s, {n_scored} images)": [round(float(s), 2) for s in scoring_seconds]}
        report.table(
            *layout_table(evaluations, DOC001_COLUMNS, extra),
            caption="Document 001 layout (accuracy and cost)",
        )
        report.table(
            *layout_table(evaluations, DOC002_COLUMNS), caption="Document 002 layout (AUROC vs AUPR)"
        )
    if shift:
        add_shift_section(report, shift)


def add_shift_section(report: HtmlReport, results: Sequence[ShiftResult]) -> None:
    """The imaging study: document 000's columns per condition and the change against ``uniform``."""
    report.subheading("Uniform vs shifted imaging (documents 000 and 003)")
    first = results[0]
    shifts = next((r.test_shifts for r in results if r.test_shifts), "")
    report.paragraph(
        f"The same generated scenes imaged three ways; shifts: {shifts or 'none'}. Categories: "
        f"{', '.join(first.manifest.categories)}. Thresholds come from each condition's validation normals."
    )
    headers, rows = layout_table([r.evaluation for r in results], DOC000_COLUMNS)
    headers[0] = "condition"
    for r, row in zip(results, rows, strict=True):
        row[0] = r.condition
    report.table(headers, rows, caption=f"{first.evaluation.method.split(' [')[0]}: mean over categories (%)")
    base = first.evaluation
    drop_rows = []
    for r in results[1:]:
        cells = []
        for metric, _ in DOC000_COLUMNS:
            a, b = _value(base, metric), _value(r.evaluation, metric)
            cells.append("–" if math.isnan(a) or math.isnan(b) else f"{100 * (b - a):+.2f}")
        drop_rows.append([r.condition, *cells])
    report.table(
        ["condition", *[label for _, label in DOC000_COLUMNS]],
        drop_rows,
        caption="Change against uniform imaging (percentage points)",
    )
