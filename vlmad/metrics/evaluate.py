"""Turn one method's predictions on a manifest's test split into metric tables, curves and per-image scores.

:func:`evaluate` computes, for every category and every subset (``logical`` = logical vs good,
``structural`` = structural vs good, ``all`` = every anomaly vs good; LOCO tables also get ``average``,
the mean of logical and structural), the image-level ranking metrics (from scores, or the maximum of the
anomaly map as the MVTec evaluators do), thresholded and verdict metrics, and, when maps exist, pixel
AUROC / AP / F1-max / AUPRO and, for datasets with ``defects_config.json``, AU-sPRO. A ``mean`` row
averages categories. Maps are read one at a time (bounded memory, see :mod:`vlmad.metrics.pixel`).

Problems are never turned into silent numbers: NaN scores are rejected when a prediction is read,
predictions for samples the manifest lacks are an error, missing predictions or maps are an error unless
``allow_missing`` is set (then they are excluded and ``Evaluation.notes`` says how many), maps of another
size than their mask are resized bilinearly and the notes say how many, and a metric that is undefined
(e.g. a category with no anomalous image) is NaN with a note.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vlmad.data.images import image_size, load_masks, mask_values
from vlmad.data.maps import load_map, resize_map
from vlmad.errors import DatasetError, VlmadError
from vlmad.metrics.pixel import PixelMetrics
from vlmad.metrics.ranking import (
    DEFAULT_MAX_EXACT,
    Curve,
    curve_auroc,
    curve_average_precision,
    curve_f1_max,
    curve_precision_at_recall,
    pr_points,
    rank_curve,
    roc_points,
)
from vlmad.metrics.spro import SPRO_LIMITS, SproMetrics
from vlmad.metrics.threshold import Threshold
from vlmad.metrics.verdict import threshold_metrics, verdict_metrics
from vlmad.records import DefectConfig, Manifest, Prediction, Sample

SUBSET_LABELS: dict[str, tuple[str, ...]] = {
    "logical": ("logical",),
    "structural": ("structural",),
    "all": ("logical", "structural", "anomaly"),
}
MEAN = "mean"
CURVE_POINTS = 512


class EvaluationError(VlmadError):
    """Predictions and ground truth do not fit together (missing, unknown or duplicate samples)."""


@dataclass(frozen=True)
class MetricRow:
    """One number of a table: ``method`` x ``category`` (or ``mean``) x ``subset`` x ``metric``."""

    method: str
    category: str
    subset: str
    metric: str
    value: float
    n_normal: int
    n_anomalous: int
    note: str = ""


@dataclass(frozen=True)
class ImageResult:
    """One test image as the evaluation saw it (used for histograms and best/worst overlays)."""

    sample_id: str
    category: str
    label: str
    score: float | None
    verdict: str | None
    map_path: str | None
    explanation: str | None


@dataclass
class Evaluation:
    """Everything one method's evaluation produced. ``curves[(category, subset, kind)] = (x, y)`` with
    kind ``roc`` (FPR, TPR), ``pr`` (recall, precision) or ``pro`` / ``pixel_roc`` (FPR, overlap / TPR)."""

    method: str
    rows: list[MetricRow] = field(default_factory=list)
    images: list[ImageResult] = field(default_factory=list)
    curves: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def value(self, metric: str, category: str = MEAN, subset: str = "all") -> float:
        """The value of one metric; KeyError when it was not computed."""
        for r in self.rows:
            if r.metric == metric and r.category == category and r.subset == subset:
                return r.value
        raise KeyError(f"{metric} for {category}/{subset} was not computed")

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(r.metric for r in self.rows))

    @property
    def categories(self) -> list[str]:
        return list(dict.fromkeys(r.category for r in self.rows))

    @property
    def subsets(self) -> list[str]:
        return list(dict.fromkeys(r.subset for r in self.rows))

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``metrics.csv`` (one row per number) and ``metrics.json`` (rows, thresholds, notes)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = folder / "metrics.csv", folder / "metrics.json"
        fields = list(MetricRow.__dataclass_fields__)
        with csv_path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for r in self.rows:
                w.writerow(asdict(r))
        payload = {
            "method": self.method,
            "rows": [{**asdict(r), "value": json_float(r.value)} for r in self.rows],
            "thresholds": {c: t.to_dict() for c, t in self.thresholds.items()},
            "notes": self.notes,
        }
        json_path.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
        return {"csv": csv_path, "json": json_path}


def json_float(v: float | None) -> float | None:
    """A number for JSON: NaN (undefined) and None become null."""
    return None if v is None or math.isnan(v) else float(v)


def _thin(x: np.ndarray, y: np.ndarray, n: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    if x.size <= n:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, n).round().astype(int))
    return x[idx], y[idx]


def _subsets(labels: set[str]) -> list[str]:
    out = [s for s in ("logical", "structural") if s in labels]
    return [*out, "all"]


def _in_subset(label: str, subset: str) -> bool:
    return label == "good" or label in SUBSET_LABELS[subset]


def _regions(
    sample: Sample, configs: list[DefectConfig], shape: tuple[int, int]
) -> list[tuple[np.ndarray, DefectConfig]]:
    """Each mask file of a LOCO-style sample as one (bool region, defect config), every file read once."""
    by_value = {c.pixel_value: c for c in configs}
    out = []
    for p in sample.mask_paths:
        values = mask_values(p)
        if values.shape != shape:
            raise DatasetError(
                p, f"mask is {values.shape[1]}x{values.shape[0]} but the image is {shape[1]}x{shape[0]}"
            )
        nz = values[values > 0]
        if nz.size == 0:
            continue
        value = int(np.bincount(nz).argmax())
        if value not in by_value:
            raise DatasetError(p, f"mask value {value} is not in the category's defects_config.json")
        out.append((values > 0, by_value[value]))
    return out


def index_predictions(
    manifest: Manifest, predictions: Iterable[Prediction], allow_missing: bool = False
) -> tuple[dict[str, list[Prediction]], list[str]]:
    """Group predictions by test sample and check that they cover the test split. Returns (groups, notes).

    Predictions on train or validation samples are left out (they serve threshold calibration) and a note
    says how many. Raises :class:`EvaluationError` for samples the manifest does not have, for several
    runs mixed in one list, and for test images without a prediction unless ``allow_missing``.
    """
    split_of = {s.id: s.split for s in manifest}
    test_ids = [s.id for s in manifest if s.split == "test"]
    groups: dict[str, list[Prediction]] = defaultdict(list)
    unknown: list[str] = []
    other_split = 0
    runs: set[str] = set()
    seen: set[tuple[str, str, str | None]] = set()
    for p in predictions:
        runs.add(p.run_id)
        if (p.run_id, *p.key) in seen:
            raise EvaluationError(f"two predictions for sample {p.sample_id!r} (question {p.question_id!r})")
        seen.add((p.run_id, *p.key))
        split = split_of.get(p.sample_id)
        if split is None:
            unknown.append(p.sample_id)
        elif split != "test":
            other_split += 1
        else:
            groups[p.sample_id].append(p)
    if len(runs) > 1:
        raise EvaluationError(f"predictions of several runs mixed: {sorted(runs)}; evaluate one at a time")
    if unknown:
        raise EvaluationError(
            f"{len(unknown)} prediction(s) name samples that are not in the dataset "
            f"(first: {unknown[0]!r}); is this the right dataset?"
        )
    missing = [i for i in test_ids if i not in groups]
    notes = []
    if other_split:
        notes.append(f"{other_split} prediction(s) on train/validation images are not scored.")
    if missing and not allow_missing:
        raise EvaluationError(
            f"no prediction for {len(missing)} of {len(test_ids)} test images (first: {missing[0]!r}); "
            "pass allow_missing to evaluate the rest"
        )
    if missing:
        notes.append(f"{len(missing)} of {len(test_ids)} test images have no prediction and are excluded.")
    return dict(groups), notes


def calibrate_thresholds(
    manifest: Manifest,
    predictions: Iterable[Prediction],
    method: str,
    *,
    q: float = 0.99,
    fpr: float = 0.05,
    value: float | None = None,
) -> dict[str, Threshold]:
    """One threshold per category from the predictions' scores, without looking at the test labels.

    ``normal-quantile`` and ``target-fpr`` use the scores of normal *validation* images, ``validation-f1``
    the validation images of both classes; ``oracle-f1`` uses the *test* images (labelled as an oracle);
    ``fixed`` uses ``value`` everywhere. Raises :class:`EvaluationError` naming the category when the
    data a method needs is absent (e.g. no scored validation image).
    """
    from vlmad.metrics.threshold import calibrate

    preds = [p for p in predictions if p.score is not None and p.question_id is None]
    by_id = {p.sample_id: p.score for p in preds}
    split = "test" if method == "oracle-f1" else "validation"
    out: dict[str, Threshold] = {}
    for category in manifest.categories:
        samples = [s for s in manifest if s.category == category and s.split == split and s.id in by_id]
        if method == "fixed":
            out[category] = calibrate("fixed", value=value)
            continue
        if not samples:
            raise EvaluationError(
                f"{category}: no scored {split} image to calibrate a {method} threshold on "
                "(predict the validation split too, or choose another threshold method)"
            )
        labels = [s.label for s in samples]
        scores = [by_id[s.id] for s in samples]
        normals = [v for s, v in zip(samples, scores, strict=True) if not s.is_anomalous]
        try:
            out[category] = calibrate(
                method, normal_scores=normals or None, labels=labels, scores=scores, q=q, fpr=fpr
            )
        except ValueError as e:
            raise EvaluationError(f"{category}: cannot calibrate a {method} threshold: {e}") from None
    return out


def evaluate(
    manifest: Manifest,
    predictions: Iterable[Prediction],
    *,
    method: str | None = None,
    thresholds: dict[str, Threshold] | None = None,
    use_maps: bool = True,
    fpr_limit: float = 0.3,
    spro_limits: Sequence[float] = SPRO_LIMITS,
    allow_missing: bool = False,
    max_exact: int | None = DEFAULT_MAX_EXACT,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Evaluate one run's predictions on ``manifest``'s test split; see the module docstring.

    ``thresholds`` maps a category to the threshold used for thresholded metrics (accuracy, precision,
    recall, F1 at that threshold); calibrate them on validation data with :mod:`vlmad.metrics.threshold`.
    An oracle threshold is allowed and labelled in every row it produced. ``progress(done, total)`` is
    called after each image whose map was read.
    """
    preds = list(predictions)
    groups, notes = index_predictions(manifest, preds, allow_missing)
    run_ids = {p.run_id for p in preds}
    result = Evaluation(method=method or (next(iter(run_ids)) if run_ids else "method"), notes=notes)
    result.thresholds = dict(thresholds or {})
    test = [s for s in manifest if s.split == "test" and s.id in groups]
    total_maps = sum(1 for s in test for p in groups[s.id] if p.map_path is not None and use_maps)
    done_maps = 0
    resized = 0

    for category in dict.fromkeys(s.category for s in test):
        samples = [s for s in test if s.category == category]
        subsets = _subsets({s.label for s in samples})
        configs = manifest.info.defects.get(category, [])
        scored: list[tuple[Sample, float]] = []
        verdicts: list[tuple[Sample, Prediction]] = []
        pixel = {sub: PixelMetrics(fpr_limit, max_exact=max_exact) for sub in subsets}
        spro = {sub: SproMetrics(spro_limits, max_exact=max_exact) for sub in subsets} if configs else {}
        n_maps = 0
        for s in samples:
            image_preds = groups[s.id]
            with_map = [p for p in image_preds if p.map_path is not None]
            if len(with_map) > 1 or sum(p.score is not None for p in image_preds) > 1:
                raise EvaluationError(f"sample {s.id!r} has several scores or maps; give one per image")
            score = next((p.score for p in image_preds if p.score is not None), None)
            amap = None
            if with_map and use_maps:
                amap = load_map(with_map[0].map_path)  # type: ignore[arg-type]
                shape = image_size(s.image_path)[::-1]
                if amap.shape != shape:
                    amap = resize_map(amap, shape)
                    resized += 1
                if score is None:
                    score = float(amap.max())
                if configs:
                    regions = _regions(s, configs, shape)
                    mask = np.logical_or.reduce([r for r, _ in regions]) if regions else np.zeros(shape, bool)
                else:
                    regions, mask = [], load_masks(s.mask_paths, shape)
                for sub in subsets:
                    if _in_subset(s.label, sub):
                        pixel[sub].update(mask, amap)
                        if configs:
                            spro[sub].update(amap, regions)
                n_maps += 1
                done_maps += 1
                if progress:
                    progress(done_maps, total_maps)
            if score is not None:
                scored.append((s, score))
            verdicts.extend((s, p) for p in image_preds if p.verdict is not None)
            first = image_preds[0]
            result.images.append(
                ImageResult(
                    sample_id=s.id,
                    category=category,
                    label=s.label,
                    score=score,
                    verdict=next((p.verdict for p in image_preds if p.verdict is not None), None),
                    map_path=str(with_map[0].map_path) if with_map else None,
                    explanation=first.explanation,
                )
            )
        if scored and len(scored) < len(samples):
            raise EvaluationError(
                f"{category}: {len(samples) - len(scored)} of {len(samples)} images have no score and no map"
            )
        if 0 < n_maps < len(samples):
            raise EvaluationError(
                f"{category}: anomaly maps exist for only {n_maps} of {len(samples)} test images; "
                "give a map for every image (or none)"
            )
        for sub in subsets:
            members = [s for s in samples if _in_subset(s.label, sub)]
            n_norm = sum(not s.is_anomalous for s in members)
            n_anom = len(members) - n_norm

            add = _RowAdder(result, category, sub, n_norm, n_anom)
            if scored:
                in_sub = [(s, v) for s, v in scored if _in_subset(s.label, sub)]
                _image_rows(result, category, sub, in_sub, add)
            if verdicts:
                items = [(s, p) for s, p in verdicts if _in_subset(s.label, sub)]
                vm = verdict_metrics([s.label for s, _ in items], [p.verdict for _, p in items])
                for k, v in _flat(vm.to_dict()).items():
                    add(f"verdict_{k}", v)
            if n_maps:
                _pixel_rows(result, category, sub, pixel[sub], add)
                if configs:
                    sp = spro[sub].compute()
                    for lim, v in sp.au_spro.items():
                        add(f"au_spro_{lim:g}", v, "binned" if sp.binned else "")
        if "logical" in subsets and "structural" in subsets:
            _average_rows(result, category)
    if resized:
        result.notes.append(
            f"{resized} anomaly map(s) differed in size from their image; resized bilinearly."
        )
    _mean_rows(result)
    return result


@dataclass(frozen=True)
class _RowAdder:
    """Appends rows for one category x subset."""

    result: Evaluation
    category: str
    subset: str
    n_normal: int
    n_anomalous: int

    def __call__(self, metric: str, value: float, note: str = "") -> None:
        r = MetricRow(
            self.result.method,
            self.category,
            self.subset,
            metric,
            float(value),
            self.n_normal,
            self.n_anomalous,
            note,
        )
        self.result.rows.append(r)


def _flat(d: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update({f"{k}_{kk}": float(vv) for kk, vv in v.items()})
        elif isinstance(v, int | float) and not isinstance(v, bool) and k != "n" and not k.startswith("n_"):
            out[k] = float(v)
    return out


def _image_rows(
    result: Evaluation, category: str, sub: str, scored: list[tuple[Sample, float]], add: _RowAdder
) -> None:
    labels = np.array([s.is_anomalous for s, _ in scored])
    scores = np.array([v for _, v in scored], dtype=np.float64)
    nan = float("nan")
    if labels.all() or not labels.any():
        note = "undefined: no normal image" if labels.all() else "undefined: no anomalous image"
        for m in ("image_auroc", "image_ap", "image_f1_max", "image_precision_at_recall_1"):
            add(m, nan, note)
    else:
        curve = rank_curve(labels, scores)
        f1, thr = curve_f1_max(curve)
        add("image_auroc", curve_auroc(curve))
        add("image_ap", curve_average_precision(curve))
        add("image_f1_max", f1, "oracle: threshold chosen on the test set")
        add("image_f1_max_threshold", thr, "oracle")
        add("image_precision_at_recall_1", curve_precision_at_recall(curve, 1.0)[0], "oracle")
        _store_curves(result, category, sub, curve)
    thr_obj = result.thresholds.get(category)
    if thr_obj is not None:
        tm = threshold_metrics([s.label for s, _ in scored], scores, thr_obj.value)
        note = f"threshold {thr_obj.method} on {thr_obj.source}" + (" (ORACLE)" if thr_obj.oracle else "")
        for k, v in _flat(tm.to_dict()).items():
            add(f"thr_{k}", v, note)


def _store_curves(result: Evaluation, category: str, sub: str, curve: Curve, prefix: str = "") -> None:
    fpr, tpr = roc_points(curve)
    result.curves[(category, sub, f"{prefix}roc")] = _thin(fpr, tpr)
    precision, recall = pr_points(curve)
    result.curves[(category, sub, f"{prefix}pr")] = _thin(recall, precision)


def _pixel_rows(result: Evaluation, category: str, sub: str, metric: PixelMetrics, add: _RowAdder) -> None:
    r = metric.compute()
    note = f"binned (AUROC within {r.auroc_error_bound:.1e})" if r.binned else ""
    if r.n_defect_pixels == 0:
        note = "undefined: no defect pixel"
    add("pixel_auroc", r.auroc, note)
    add("pixel_ap", r.ap, note)
    add("pixel_f1_max", r.f1_max, "oracle: threshold chosen on the test set")
    add(f"pixel_aupro_{r.fpr_limit:g}", r.aupro, note)
    if r.n_defect_pixels and r.auroc == r.auroc:
        curve = metric.curve()
        fpr, tpr = roc_points(curve)
        result.curves[(category, sub, "pixel_roc")] = _thin(fpr, tpr)
        fpr, pro = roc_points(curve, channel=0)
        keep = fpr <= max(r.fpr_limit, 1e-9)
        result.curves[(category, sub, "pro")] = _thin(fpr[keep], pro[keep])


def _average_rows(result: Evaluation, category: str) -> None:
    rows = [r for r in result.rows if r.category == category]
    by = {(r.subset, r.metric): r for r in rows}
    for metric in dict.fromkeys(r.metric for r in rows):
        lo, st = by.get(("logical", metric)), by.get(("structural", metric))
        if lo and st:
            note = "mean of logical and structural" + _oracle_tag((lo, st))
            value = (lo.value + st.value) / 2
            n_anom = lo.n_anomalous + st.n_anomalous
            result.rows.append(
                MetricRow(result.method, category, "average", metric, value, lo.n_normal, n_anom, note)
            )


def _oracle_tag(rows: Iterable[MetricRow]) -> str:
    """ " (ORACLE)" when any source row came from a threshold chosen on the test set."""
    return " (ORACLE)" if any("ORACLE" in r.note for r in rows) else ""


def _mean_rows(result: Evaluation) -> None:
    groups: dict[tuple[str, str], list[MetricRow]] = defaultdict(list)
    for r in result.rows:
        groups[(r.subset, r.metric)].append(r)
    n_cat = len({r.category for r in result.rows})
    for (sub, metric), rows in groups.items():
        values = [r.value for r in rows if not math.isnan(r.value)]
        if metric.endswith("_threshold"):
            continue
        note = "mean over categories" + _oracle_tag(rows)
        if len(values) < len(rows):
            note += f" ({len(rows) - len(values)} undefined left out)"
        if len(rows) < n_cat:
            note += f" ({n_cat - len(rows)} categories lack this subset)"
        result.rows.append(
            MetricRow(
                result.method,
                MEAN,
                sub,
                metric,
                float(np.mean(values)) if values else float("nan"),
                sum(r.n_normal for r in rows),
                sum(r.n_anomalous for r in rows),
                note,
            )
        )
