"""The evaluation section of a report: metric tables, curves, score histograms and anomaly-map overlays.

Input is one or more :class:`~vlmad.metrics.evaluate.Evaluation` (one per method) on the same manifest.

- :func:`metric_table` and :func:`loco_table` lay the numbers out as the source papers do: one row per
  category x method (categories in order of appearance, the ``mean`` row last), values in percent with two
  decimals (``0.98765`` -> ``"98.77"``), ``"–"`` for an undefined (NaN) value and ``"n/a"`` for a value
  that was not computed. A value obtained with a threshold chosen on the test set (an oracle number, such
  as F1-max or metrics at an oracle threshold) carries a dagger, ``"77.55 †"``.
- :func:`save_tables` writes the same tables with raw (unformatted) numbers as CSV and JSON.
- :func:`add_evaluation_section` adds everything to an :class:`~vlmad.report.html.HtmlReport`: notes,
  thresholds (oracle ones labelled ORACLE), tables, ROC / PR / PRO curves per category, score histograms
  and best / worst anomaly-map overlays. Parts whose data is absent are left out.

Model text (explanations) reaches the page only as escaped text. Matplotlib is imported lazily with the
Agg backend; nothing is printed.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vlmad.data.images import load_image, load_mask
from vlmad.data.maps import load_map, resize_map
from vlmad.errors import VlmadError
from vlmad.metrics.evaluate import MEAN, Evaluation, ImageResult, MetricRow, json_float
from vlmad.records import LABELS, Manifest
from vlmad.report.html import Card, HtmlReport, pyplot
from vlmad.report.overlay import outline_masks

#: Shown for a metric that is undefined (NaN), e.g. AUROC of a category without anomalous images.
UNDEFINED = "–"
#: Shown for a metric that was not computed for this method and category.
MISSING = "n/a"
#: Appended to values that used a threshold chosen on the test set.
ORACLE_MARK = "†"
ORACLE_LEGEND = (
    f"{ORACLE_MARK} threshold chosen on the test set (oracle): an optimistic upper bound, "
    "not a result a deployed detector could reach."
)
IMAGE_METRICS: tuple[str, ...] = ("image_auroc", "image_f1_max", "image_ap", "image_precision_at_recall_1")
PIXEL_METRICS: tuple[str, ...] = ("pixel_auroc", "pixel_f1_max", "pixel_ap")
#: Metrics that get a Logical / Structural / Average table when a LOCO evaluation has them.
LOCO_METRICS: tuple[str, ...] = ("image_auroc", "au_spro_0.05", "verdict_accuracy")
#: At most this many overlays per category and method.
MAX_CASES = 4
FIG_DPI = 90

_FIXED_LABELS = {
    "image_auroc": "AUROC",
    "image_ap": "AP",
    "image_f1_max": "F1-max",
    "image_precision_at_recall_1": "Precision at recall 1",
    "pixel_auroc": "AUROC",
    "pixel_ap": "AP",
    "pixel_f1_max": "F1-max",
}
# order and short names of the verdict / thresholded metrics (suffix after "verdict_" / "thr_")
_DECISION_ORDER = (
    "accuracy",
    "balanced_accuracy",
    *(f"accuracy_per_label_{lab}" for lab in LABELS),
    "logical_structural_average",
    "precision",
    "recall",
    "f1",
    "yes_rate",
    "over_detection",
    "miss_rate",
    "parse_failure_rate",
)
_DECISION_LABELS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced acc.",
    **{f"accuracy_per_label_{lab}": f"acc. {lab}" for lab in LABELS},
    "logical_structural_average": "acc. L/S average",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "yes_rate": "yes rate",
    "over_detection": "over-detection",
    "miss_rate": "miss rate",
    "parse_failure_rate": "parse failures",
}
# verdict / thresholded metrics of the first of the two HTML tables
_DECISION_FIRST = ("accuracy", "balanced_accuracy", "logical_structural_average", "precision", "recall", "f1")
# counts, not rates: never shown as percentages
_COUNT_METRICS = ("verdict_n", "thr_n")
_LABEL_COLORS = {"good": "#2a7", "logical": "#a3c", "structural": "#d52", "anomaly": "#c33"}
_SUBSET_COLORS = {"all": "#333", "logical": "#a3c", "structural": "#d52"}
_SUBSET_STYLES = {"all": "-", "logical": "--", "structural": ":"}


# ---------------------------------------------------------------------------------------------- formatting
def format_value(value: float | None) -> str:
    """A metric in [0, 1] as a percentage with two decimals (``0.98765`` -> ``"98.77"``); NaN -> ``"–"``,
    None (not computed) -> ``"n/a"``."""
    if value is None:
        return MISSING
    if math.isnan(value):
        return UNDEFINED
    return f"{100 * value:.2f}"


def metric_label(metric: str) -> str:
    """A short column title for a metric name (``pixel_aupro_0.3`` -> ``"AUPRO@0.3"``)."""
    if metric in _FIXED_LABELS:
        return _FIXED_LABELS[metric]
    for prefix, title in (("pixel_aupro_", "AUPRO@"), ("au_spro_", "AU-sPRO@")):
        if metric.startswith(prefix):
            return title + metric[len(prefix) :]
    for prefix in ("verdict_", "thr_"):
        if metric.startswith(prefix):
            rest = metric[len(prefix) :]
            return _DECISION_LABELS.get(rest, rest.replace("_", " "))
    return metric


def _is_oracle_note(note: str) -> bool:
    return "oracle" in note.lower()


# ---------------------------------------------------------------------------------------------- table core
@dataclass
class _Index:
    """Rows of one evaluation by (category, subset, metric), and the per-category rows behind each mean."""

    evaluation: Evaluation
    rows: dict[tuple[str, str, str], MetricRow]
    members: dict[tuple[str, str], list[MetricRow]]

    @classmethod
    def of(cls, ev: Evaluation) -> _Index:
        rows = {(r.category, r.subset, r.metric): r for r in ev.rows}
        members: dict[tuple[str, str], list[MetricRow]] = {}
        for r in ev.rows:
            if r.category != MEAN:
                members.setdefault((r.subset, r.metric), []).append(r)
        return cls(ev, rows, members)

    def is_oracle(self, row: MetricRow) -> bool:
        """True when the row's note says oracle, or it averages rows that are oracle numbers (a category
        mean averages the categories' rows, a LOCO ``average`` the logical and structural rows)."""
        if _is_oracle_note(row.note):
            return True
        if row.subset == "average":
            parts = [self.rows.get((row.category, s, row.metric)) for s in ("logical", "structural")]
        elif row.category == MEAN:
            parts = list(self.members.get((row.subset, row.metric), []))
        else:
            return False
        return any(p is not None and self.is_oracle(p) for p in parts)


def _categories(evaluations: Sequence[Evaluation]) -> list[str]:
    cats = list(dict.fromkeys(c for ev in evaluations for c in ev.categories if c != MEAN))
    if any(MEAN in ev.categories for ev in evaluations):
        cats.append(MEAN)
    return cats


@dataclass
class _Cell:
    row: MetricRow | None
    oracle: bool

    @property
    def value(self) -> float | None:
        return None if self.row is None else self.row.value

    def text(self) -> str:
        s = format_value(self.value)
        return f"{s} {ORACLE_MARK}" if self.oracle else s


def _grid(
    evaluations: Sequence[Evaluation], columns: Sequence[tuple[str, str]]
) -> list[tuple[str, str, list[_Cell]]]:
    """(category, method, cells) for every category x method with at least one computed cell; ``columns``
    are (subset, metric) pairs. Categories in order of appearance, ``mean`` last; methods in given order."""
    indexes = [_Index.of(ev) for ev in evaluations]
    out = []
    for cat in _categories(evaluations):
        for idx in indexes:
            cells = []
            for subset, metric in columns:
                row = idx.rows.get((cat, subset, metric))
                cells.append(_Cell(row, row is not None and idx.is_oracle(row)))
            if any(c.row is not None for c in cells):
                out.append((cat, idx.evaluation.method, cells))
    return out


def metric_table(
    evaluations: Sequence[Evaluation], metrics: Sequence[str], subset: str = "all"
) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of a category x method table of ``metrics`` on one ``subset``.

    Headers are ``["category", "method", *metric titles]`` (titles from :func:`metric_label`). There is one
    row per category and method that has at least one of the metrics, categories in order of appearance
    with the ``mean`` rows last, methods in the order given. Cells are strings: percentages with two
    decimals (``"98.77"``), ``"–"`` for NaN, ``"n/a"`` when not computed, and ``" †"`` appended when the
    value used a threshold chosen on the test set (see :data:`ORACLE_LEGEND`).
    """
    grid = _grid(evaluations, [(subset, m) for m in metrics])
    headers = ["category", "method", *[metric_label(m) for m in metrics]]
    return headers, [[cat, method, *[c.text() for c in cells]] for cat, method, cells in grid]


def _loco_columns(evaluations: Sequence[Evaluation], metric: str) -> list[str]:
    has_all = any(r.subset == "all" and r.metric == metric for ev in evaluations for r in ev.rows)
    return ["logical", "structural", "average", *(["all"] if has_all else [])]


def loco_table(evaluations: Sequence[Evaluation], metric: str) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of one metric per LOCO subset: ``["category", "method", "Logical", "Structural",
    "Average"]`` plus ``"All"`` when the metric was computed on subset ``all``. Rows and cells as in
    :func:`metric_table` (the layout of the MVTec LOCO tables in the papers)."""
    subsets = _loco_columns(evaluations, metric)
    grid = _grid(evaluations, [(s, metric) for s in subsets])
    headers = ["category", "method", *[s.capitalize() for s in subsets]]
    return headers, [[cat, method, *[c.text() for c in cells]] for cat, method, cells in grid]


# ---------------------------------------------------------------------------------------------- table specs
def _present(evaluations: Sequence[Evaluation]) -> list[str]:
    return list(dict.fromkeys(m for ev in evaluations for m in ev.metrics))


def _limit_key(metric: str) -> float:
    try:
        return float(metric.rsplit("_", 1)[1])
    except (IndexError, ValueError):
        return math.inf


def _decision_metrics(evaluations: Sequence[Evaluation], prefix: str) -> list[str]:
    """The verdict_ / thr_ metrics present, in a fixed order, without counts and all-NaN columns."""
    found = [m for m in _present(evaluations) if m.startswith(prefix) and m not in _COUNT_METRICS]
    if prefix == "thr_":  # a threshold always yields a verdict
        found = [m for m in found if m != "thr_parse_failure_rate"]
    order = {f"{prefix}{k}": i for i, k in enumerate(_DECISION_ORDER)}
    found.sort(key=lambda m: order.get(m, len(order)))
    rows = [r for ev in evaluations for r in ev.rows if r.subset == "all"]
    return [m for m in found if any(r.metric == m and not math.isnan(r.value) for r in rows)]


@dataclass(frozen=True)
class _Spec:
    """One table of the report: ``loco`` tables show ``metrics[0]`` per subset, others metrics on ``all``."""

    name: str
    caption: str
    metrics: tuple[str, ...]
    loco: bool = False
    decision: bool = False

    def columns(self, evaluations: Sequence[Evaluation]) -> list[tuple[str, str]]:
        if self.loco:
            return [(s, self.metrics[0]) for s in _loco_columns(evaluations, self.metrics[0])]
        return [("all", m) for m in self.metrics]

    def html_tables(self, evaluations: Sequence[Evaluation]) -> list[tuple[str, list[str], list[list[Any]]]]:
        """(caption, headers, formatted rows) of the table; verdict / thresholded tables are split in two
        (overall figures, then per-label accuracies and rates) so that they fit the page."""
        if self.loco:
            return [(f"{self.caption} (%)", *loco_table(evaluations, self.metrics[0]))]
        first = tuple(m for m in self.metrics if m.split("_", 1)[1] in _DECISION_FIRST)
        if not self.decision or not first or len(first) == len(self.metrics):
            return [(f"{self.caption} (%)", *metric_table(evaluations, self.metrics, "all"))]
        rest = tuple(m for m in self.metrics if m not in first)
        return [
            (f"{self.caption}: overall (%)", *metric_table(evaluations, first, "all")),
            (f"{self.caption}: per label and rates (%)", *metric_table(evaluations, rest, "all")),
        ]


def _table_specs(evaluations: Sequence[Evaluation]) -> list[_Spec]:
    present = _present(evaluations)
    specs = []
    image = tuple(m for m in IMAGE_METRICS if m in present)
    if image:
        specs.append(_Spec("image_metrics", "Image level, every anomaly vs good", image))
    aupro = sorted((m for m in present if m.startswith("pixel_aupro_")), key=_limit_key)
    pixel = tuple(m for m in PIXEL_METRICS if m in present) + tuple(aupro)
    if pixel:
        specs.append(_Spec("pixel_metrics", "Pixel level, every anomaly vs good", pixel))
    spro = tuple(sorted((m for m in present if m.startswith("au_spro_")), key=_limit_key))
    if spro:
        specs.append(_Spec("spro_metrics", "AU-sPRO per FPR limit, every anomaly vs good", spro))
    for metric in LOCO_METRICS:
        if any(r.subset == "average" and r.metric == metric for ev in evaluations for r in ev.rows):
            title = {"image_auroc": "image AUROC", "verdict_accuracy": "verdict accuracy"}.get(
                metric, metric_label(metric)
            )
            caption = f"MVTec LOCO {title}: logical / structural anomalies vs good, and their average"
            specs.append(_Spec(f"loco_{metric}", caption, (metric,), loco=True))
    verdict = tuple(_decision_metrics(evaluations, "verdict_"))
    if verdict:
        specs.append(
            _Spec("verdict_metrics", "Verdicts (the method's own yes / no answers)", verdict, decision=True)
        )
    thr = tuple(_decision_metrics(evaluations, "thr_"))
    if thr:
        specs.append(_Spec("threshold_metrics", "Scores at the calibrated threshold", thr, decision=True))
    return specs


def save_tables(evaluations: Sequence[Evaluation], folder: str | Path) -> dict[str, Path]:
    """Write every table of the report with raw numbers (fractions, not percentages) into ``folder``.

    Tables (only those whose metrics exist): ``image_metrics``, ``pixel_metrics``, ``spro_metrics``,
    ``loco_<metric>`` (LOCO evaluations: columns logical / structural / average / all),
    ``verdict_metrics`` and ``threshold_metrics``. Each is written as ``<name>.csv`` (columns ``category``,
    ``method`` and one per metric or subset; NaN as ``nan``, not computed as an empty cell) and
    ``<name>.json`` (``{"table", "columns", "rows": [{"category", "method", "values": {column: number or
    null for NaN}, "oracle": [columns that used a test-set threshold]}]}``; columns not computed are left
    out of ``values``). Returns ``{file name: path}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for spec in _table_specs(evaluations):
        cols = spec.columns(evaluations)
        names = [s if spec.loco else m for s, m in cols]
        grid = _grid(evaluations, cols)
        csv_path = folder / f"{spec.name}.csv"
        with csv_path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["category", "method", *names])
            for cat, method, cells in grid:
                w.writerow([cat, method, *["" if c.value is None else repr(c.value) for c in cells]])
        rows = [
            {
                "category": cat,
                "method": method,
                "values": {n: json_float(c.value) for n, c in zip(names, cells, strict=True) if c.row},
                "oracle": [n for n, c in zip(names, cells, strict=True) if c.oracle],
            }
            for cat, method, cells in grid
        ]
        payload = {"table": spec.name, "caption": spec.caption, "columns": names, "rows": rows}
        json_path = folder / f"{spec.name}.json"
        json_path.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
        written[csv_path.name] = csv_path
        written[json_path.name] = json_path
    return written


# ---------------------------------------------------------------------------------------------- figures
_PANELS = (  # kind, title, x label, y label, metric for the legend, its short name
    ("roc", "Image ROC", "false-positive rate", "true-positive rate", "image_auroc", "AUROC"),
    ("pr", "Image precision-recall", "recall", "precision", "image_ap", "AP"),
    ("pro", "Pixel PRO", "false-positive rate", "per-region overlap", "pixel_aupro_", "AUPRO"),
)


def _curve_value(idx: _Index, category: str, subset: str, metric: str) -> float | None:
    if metric.endswith("_"):  # a prefix: the first such metric (e.g. pixel_aupro_0.3)
        found = [
            r for (c, s, m), r in idx.rows.items() if c == category and s == subset and m.startswith(metric)
        ]
        return found[0].value if found else None
    row = idx.rows.get((category, subset, metric))
    return None if row is None else row.value


def curves_figure(report: HtmlReport, evaluations: Sequence[Evaluation], category: str) -> Path | None:
    """One figure for ``category`` with image ROC, image PR and pixel PRO panels (only those with data),
    one line per subset and method, the legend giving the area (AUROC, AP, normalised AUPRO) in percent.
    Saved as a PNG asset of ``report``; returns its path, or None when no curve exists."""
    indexes = [_Index.of(ev) for ev in evaluations]
    subsets = ("all", "logical", "structural")
    panels = [
        p for p in _PANELS if any((category, s, p[0]) in ev.curves for ev in evaluations for s in subsets)
    ]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    several = len(evaluations) > 1
    for ax, (kind, title, xlabel, ylabel, metric, short) in zip(axes[0], panels, strict=True):
        for k, idx in enumerate(indexes):
            for subset in subsets:
                xy = idx.evaluation.curves.get((category, subset, kind))
                if xy is None:
                    continue
                value = _curve_value(idx, category, subset, metric)
                name = f"{idx.evaluation.method} {subset}" if several else subset
                label = f"{name} ({short} {format_value(value)})"
                color = f"C{k % 10}" if several else _SUBSET_COLORS.get(subset, "#333")
                ax.plot(xy[0], xy[1], _SUBSET_STYLES.get(subset, "-"), color=color, lw=1.4, label=label)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], color="#bbb", lw=0.8, zorder=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right" if kind != "pr" else "lower left")
    fig.suptitle(category, fontsize=10)
    fig.tight_layout()
    return report.save_figure(fig, f"curves_{category}", FIG_DPI)


def histogram_figure(report: HtmlReport, evaluation: Evaluation) -> Path | None:
    """Score histograms per category (one panel each) of ``evaluation``'s test images, one colour per
    label (``good`` = normal), with the category's threshold as a dashed line when there is one. Infinite
    scores are left out. Saved as a PNG asset; returns its path, or None when no image has a finite score."""
    by_cat: dict[str, list[ImageResult]] = {}
    for im in evaluation.images:
        if im.score is not None and math.isfinite(im.score):
            by_cat.setdefault(im.category, []).append(im)
    if not by_cat:
        return None
    plt = pyplot()
    n = len(by_cat)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.5 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (cat, images) in zip(axes.flat, by_cat.items(), strict=False):
        scores = np.array([im.score for im in images], dtype=np.float64)
        edges = np.histogram_bin_edges(scores, bins=min(30, max(6, len(scores) // 3)))
        for label in LABELS:
            vals = [im.score for im in images if im.label == label]
            if vals:
                name = "normal" if label == "good" else label
                ax.hist(
                    vals, bins=edges, alpha=0.55, color=_LABEL_COLORS[label], label=f"{name} ({len(vals)})"
                )
        thr = evaluation.thresholds.get(cat)
        if thr is not None:
            ax.axvline(
                float(thr.value),
                color="#000",
                ls="--",
                lw=1,
                label="threshold (ORACLE)" if thr.oracle else "threshold",
            )
        ax.set_title(cat, fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5)
    fig.tight_layout()
    return report.save_figure(fig, f"histograms_{evaluation.method}", FIG_DPI)


# ---------------------------------------------------------------------------------------------- overlays
def heat_overlay(image: np.ndarray, amap: np.ndarray, lo: float, hi: float, alpha: float = 0.6) -> np.ndarray:
    """``image`` (H, W, 3 uint8 RGB) with ``amap`` blended on top as a jet heat map.

    The map is resized to the image, scaled so that ``lo`` maps to 0 and ``hi`` to 1 (clipped), and blended
    with a per-pixel opacity of ``alpha`` times that value: values at or below ``lo`` leave the image as it
    is, values at ``hi`` are shown red at opacity ``alpha``. Returns a new uint8 RGB image.
    """
    amap = resize_map(np.asarray(amap, dtype=np.float32), image.shape[:2])
    span = hi - lo
    norm = np.clip((amap - lo) / span, 0.0, 1.0) if span > 0 else np.zeros(amap.shape, np.float32)
    heat = cv2.applyColorMap((norm * 255).round().astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    a = (alpha * norm)[..., None]
    out = image.astype(np.float32) * (1 - a) + heat * a
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def _score(im: ImageResult) -> float:
    return -math.inf if im.score is None else float(im.score)


def pick_cases(images: Sequence[ImageResult], limit: int = MAX_CASES) -> list[tuple[str, ImageResult]]:
    """Up to ``limit`` telling images of one category, as (title, image), without repeats.

    With scores, in this order: the anomalous image with the lowest score (worst: missed), the normal
    image with the highest score (worst: false alarm), the anomalous image with the highest score (best:
    detected) and the normal image with the lowest score (best: normal). Without scores the same four
    roles are filled by verdicts (the first anomalous image judged not anomalous, and so on).
    """
    anom = [im for im in images if im.label != "good"]
    norm = [im for im in images if im.label == "good"]
    picks: list[tuple[str, ImageResult | None]]
    if any(im.score is not None for im in images):
        anom = sorted((im for im in anom if im.score is not None), key=_score)
        norm = sorted((im for im in norm if im.score is not None), key=_score)
        picks = [
            ("worst: missed anomaly", anom[0] if anom else None),
            ("worst: false alarm", norm[-1] if norm else None),
            ("best: detected anomaly", anom[-1] if anom else None),
            ("best: normal", norm[0] if norm else None),
        ]
    else:

        def first(group: list[ImageResult], flagged: bool) -> ImageResult | None:
            return next((im for im in group if im.verdict and (im.verdict == "anomalous") == flagged), None)

        picks = [
            ("worst: missed anomaly", first(anom, False)),
            ("worst: false alarm", first(norm, True)),
            ("best: detected anomaly", first(anom, True)),
            ("best: normal", first(norm, False)),
        ]
    out: list[tuple[str, ImageResult]] = []
    seen: set[str] = set()
    for title, im in picks:
        if im is not None and im.sample_id not in seen:
            seen.add(im.sample_id)
            out.append((title, im))
    return out[:limit]


def _caption(im: ImageResult, max_chars: int = 300) -> str:
    parts = [im.sample_id, f"label {im.label}"]
    if im.score is not None:
        parts.append(f"score {im.score:.4g}")
    if im.verdict is not None:
        parts.append(f"verdict {im.verdict}")
    text = " · ".join(parts)
    if im.explanation:
        expl = " ".join(im.explanation.split())
        if len(expl) > max_chars:
            expl = expl[: max_chars - 1] + "…"
        text += f" — {expl}"
    return text


def _masks(sample_mask_paths: Sequence[Path], shape: tuple[int, int]) -> list[np.ndarray]:
    masks = []
    for p in sample_mask_paths:
        m = load_mask(p)
        if m.shape != shape:
            m = cv2.resize(m.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        masks.append(m)
    return masks


def _map_range(maps: Sequence[np.ndarray], scores: Sequence[float]) -> tuple[float, float]:
    """The colour range of one category: the range of its image scores when they are on the maps' scale
    (scores that are map maxima), else the range of the shown maps' values."""
    pix_lo = min(float(m.min()) for m in maps)
    pix_hi = max(float(m.max()) for m in maps)
    if scores:
        s_lo, s_hi = min(scores), max(scores)
        tol = 1e-6 * max(1.0, abs(pix_hi - pix_lo))
        if s_hi > s_lo and pix_lo - tol <= s_lo and s_hi <= pix_hi + tol:
            return s_lo, s_hi
    return pix_lo, pix_hi


def _case_cards(
    evaluation: Evaluation, manifest: Manifest, category: str, with_maps: bool
) -> tuple[list[Card], str, list[str]]:
    """Cards of the picked cases of one category, a line on the colour scale, and problems met."""
    images = [im for im in evaluation.images if im.category == category]
    if with_maps:
        images = [im for im in images if im.map_path]
    problems: list[str] = []
    loaded = []
    for title, im in pick_cases(images):
        try:
            sample = manifest.get(im.sample_id)
        except KeyError:
            problems.append(f"{im.sample_id}: not in the manifest")
            continue
        try:
            image = load_image(sample.image_path)
            masks = _masks(sample.mask_paths, image.shape[:2])
            amap = load_map(im.map_path) if with_maps and im.map_path else None
        except (VlmadError, OSError) as e:
            problems.append(str(e))
            continue
        loaded.append((title, im, image, masks, amap))
    scale = ""
    maps = [x[4] for x in loaded if x[4] is not None]
    lo = hi = 0.0
    if maps:
        scores = [im.score for im in images if im.score is not None]
        lo, hi = _map_range(maps, scores)
        scale = f"Heat map colour scale: {lo:.4g} (transparent) to {hi:.4g} (red), the same for every image."
    cards = []
    for title, im, image, masks, amap in loaded:
        shown = heat_overlay(image, amap, lo, hi) if amap is not None else image
        cards.append(Card(outline_masks(shown, masks), title=title, caption=_caption(im), tag=im.label))
    return cards, scale, problems


def _add_cases(report: HtmlReport, evaluations: Sequence[Evaluation], manifest: Manifest) -> None:
    several = len(evaluations) > 1
    for with_maps in (True, False):
        chosen = [
            ev
            for ev in evaluations
            if (
                any(im.map_path for im in ev.images)
                if with_maps
                else not any(im.map_path for im in ev.images) and any(im.explanation for im in ev.images)
            )
        ]
        if not chosen:
            continue
        if with_maps:
            report.subheading("Anomaly maps: best and worst cases")
            report.paragraph(
                "Per category: the anomalous image with the lowest score (missed) and the normal image with "
                "the highest score (false alarm), then the highest-scored anomalous and lowest-scored normal "
                "image. Heat map over the image, ground-truth regions outlined."
            )
        else:
            report.subheading("Best and worst cases (no anomaly maps)")
            report.paragraph("Ground-truth regions outlined; the method's explanation below each image.")
        for ev in chosen:
            for cat in dict.fromkeys(im.category for im in ev.images):
                cards, scale, problems = _case_cards(ev, manifest, cat, with_maps)
                if not cards and not problems:
                    continue
                report.paragraph(f"{cat} — {ev.method}" if several else cat)
                for p in problems:
                    report.note(f"{ev.method}: {p}", "warning")
                if scale:
                    report.paragraph(scale)
                if cards:
                    report.grid(cards)


# ---------------------------------------------------------------------------------------------- section
def _add_thresholds(report: HtmlReport, evaluations: Sequence[Evaluation]) -> None:
    rows = []
    oracle: list[str] = []
    for ev in evaluations:
        for cat, t in ev.thresholds.items():
            rows.append(
                [ev.method, cat, f"{float(t.value):.6g}", t.method, t.source, "ORACLE" if t.oracle else "no"]
            )
            if t.oracle:
                oracle.append(f"{ev.method} / {cat}")
    if not rows:
        return
    report.subheading("Thresholds")
    if oracle:
        report.note(
            f"ORACLE thresholds ({', '.join(oracle)}): chosen on the test set; every metric computed with "
            f"them is marked {ORACLE_MARK} and is an optimistic upper bound.",
            "error",
        )
    report.table(["method", "category", "threshold", "calibration", "source", "oracle"], rows)


def _summary(ev: Evaluation) -> str:
    n = len(ev.images)
    n_maps = sum(im.map_path is not None for im in ev.images)
    n_scores = sum(im.score is not None for im in ev.images)
    n_verdicts = sum(im.verdict is not None for im in ev.images)
    n_anom = sum(im.label != "good" for im in ev.images)
    return (
        f"{ev.method}: {n} test images ({n_anom} anomalous); {n_scores} with a score, {n_maps} with an "
        f"anomaly map, {n_verdicts} with a verdict."
    )


def add_evaluation_section(
    report: HtmlReport, evaluations: Sequence[Evaluation], manifest: Manifest, title: str = "Evaluation"
) -> None:
    """Add the evaluation of one or more methods on ``manifest``'s test split to ``report``.

    In order: a summary line per method; each evaluation's notes (warnings); the thresholds with their
    calibration method and source, oracle ones labelled ORACLE under an error note; the metric tables
    (image level, pixel level, AU-sPRO, LOCO logical / structural / average, verdicts, thresholded; only
    those whose metrics exist; oracle values marked with a dagger explained once above them); per category
    a figure of ROC / PR / PRO curves; score histograms per method; and per category and method up to
    :data:`MAX_CASES` best and worst anomaly-map overlays (for methods without maps but with explanations,
    the same cases without heat map). Images come from ``manifest`` (looked up by sample id); images or
    maps that cannot be read are reported as warnings and skipped. All text is escaped by the report.
    """
    evaluations = list(evaluations)
    report.heading(title)
    if not evaluations:
        report.note("No evaluation to show.", "warning")
        return
    for ev in evaluations:
        report.paragraph(_summary(ev))
    notes = [(ev.method, n) for ev in evaluations for n in ev.notes]
    for method, n in notes:
        report.note(f"{method}: {n}", "warning")
    _add_thresholds(report, evaluations)

    specs = _table_specs(evaluations)
    if specs:
        report.subheading("Metrics")
        tables = [t for spec in specs for t in spec.html_tables(evaluations)]
        legend = any(ORACLE_MARK in str(c) for _, _, rows in tables for r in rows for c in r)
        report.paragraph(
            "Values in percent; – undefined (e.g. no anomalous image), n/a not computed; mean = mean over "
            "categories." + (f" {ORACLE_LEGEND}" if legend else "")
        )
        for caption, headers, rows in tables:
            report.table(headers, rows, caption=caption)

    categories = [c for c in _categories(evaluations) if c != MEAN]
    curve_paths = [(c, curves_figure(report, evaluations, c)) for c in categories]
    if any(p for _, p in curve_paths):
        report.subheading("Curves")
        for cat, path in curve_paths:
            if path is not None:
                report.figure(path, caption=f"{cat}: image ROC, image PR and pixel PRO (FPR up to the limit)")

    hist_paths = [(ev.method, histogram_figure(report, ev)) for ev in evaluations]
    if any(p for _, p in hist_paths):
        report.subheading("Score histograms")
        for method, path in hist_paths:
            if path is not None:
                report.figure(path, caption=f"{method}: test image scores per category and label")

    _add_cases(report, evaluations, manifest)


__all__ = [
    "IMAGE_METRICS",
    "LOCO_METRICS",
    "MAX_CASES",
    "ORACLE_LEGEND",
    "ORACLE_MARK",
    "add_evaluation_section",
    "curves_figure",
    "format_value",
    "heat_overlay",
    "histogram_figure",
    "loco_table",
    "metric_label",
    "metric_table",
    "pick_cases",
    "save_tables",
]
