"""Tables of chain-of-image runs: verdict accuracy (document 004's Table 1) and explanation BERTScore.

- :func:`verdict_table`: per run (and optionally per category) the logical / structural accuracy and their
  average, good-image accuracy, balanced accuracy, yes-rate, over-detection, miss rate and parse-failure
  rate, all from :func:`vlmad.metrics.verdict.verdict_metrics`.
- :func:`score_explanations`: per run, BERTScore of the explanations of *correctly detected* anomalous
  images (verdict ``anomalous`` on an anomalous image) against the image's reference description, as in
  seeds/004_102cb39b65a4f1cc.txt; computed with :func:`vlmad.metrics.explain.bertscore`.
- :func:`explanation_pairs`: the (explanation, reference) pairs that BERTScore is computed on.

Predictions are grouped by ``run_id`` (several runs may be passed together). Only samples of ``split``
(default ``test``) count; predictions for other splits are ignored. A prediction for a sample the manifest
lacks, or two predictions with the same (sample, question) in one run, raise :class:`EvaluationError`.
Several questions on one image are several items. Rates with a zero denominator are NaN.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vlmad.metrics.evaluate import EvaluationError
from vlmad.metrics.explain import DEFAULT_MODEL, bertscore, bertscore_settings
from vlmad.metrics.verdict import verdict_metrics
from vlmad.records import LABELS, Manifest, Prediction, Sample

__all__ = [
    "ALL",
    "ExplanationPair",
    "ExplanationRow",
    "VerdictRow",
    "explanation_pairs",
    "reference_description",
    "score_explanations",
    "verdict_table",
]

#: The category / subset name of rows pooled over every category / every anomaly label.
ALL = "all"
NAN = float("nan")


@dataclass(frozen=True)
class VerdictRow:
    """Document 004's Table 1 columns for one run (and one category, or :data:`ALL` pooled).

    Counts: ``n`` items judged (``n_good`` / ``n_logical`` / ``n_structural`` / ``n_anomaly`` by label),
    ``n_missing`` samples of the split (and category) that the run has no prediction for (left out of
    every rate). Rates in [0, 1] or NaN: ``logical_accuracy`` / ``structural_accuracy`` /
    ``anomaly_accuracy`` (images labelled ``anomaly``, where a dataset does not say which kind) /
    ``good_accuracy`` (normal images judged normal); ``average_accuracy`` (mean of logical and structural,
    NaN unless both are present); ``accuracy`` (all items); ``balanced_accuracy``; ``yes_rate`` (items
    judged anomalous); ``over_detection`` (normal items judged anomalous); ``miss_rate`` (anomalous items
    judged normal or unparsed); ``parse_failure_rate`` (verdict unparsed or missing).
    """

    run_id: str
    category: str
    n: int
    n_good: int
    n_logical: int
    n_structural: int
    n_anomaly: int
    n_missing: int
    logical_accuracy: float
    structural_accuracy: float
    average_accuracy: float
    good_accuracy: float
    anomaly_accuracy: float
    accuracy: float
    balanced_accuracy: float
    yes_rate: float
    over_detection: float
    miss_rate: float
    parse_failure_rate: float

    def to_dict(self) -> dict[str, Any]:
        """Plain values (NaN stays ``float('nan')``)."""
        return asdict(self)


@dataclass(frozen=True)
class ExplanationPair:
    """One correctly detected anomalous item: the run's explanation and the sample's reference text.
    ``candidate`` is "" when the prediction has no explanation; ``reference`` is "" when the sample has
    no description."""

    run_id: str
    sample_id: str
    question_id: str | None
    category: str
    label: str
    candidate: str
    reference: str


@dataclass(frozen=True)
class ExplanationRow:
    """Explanation BERTScore of one run on one subset (:data:`ALL` anomalous labels, or one label).

    ``n_anomalous``: anomalous items the run judged; ``n_detected``: of those, judged ``anomalous`` (the
    items BERTScore is computed on, as in document 004); ``n_scored``: detected items with both an
    explanation and a reference; ``n_no_explanation`` / ``n_no_reference``: detected items left out for
    an empty explanation / reference (an item may lack both); ``n_truncated``: scored items truncated to
    the model's token limit. ``precision`` / ``recall`` / ``f1``: means over the scored items (NaN when
    none). ``model``, ``num_layers`` and ``hash`` (bert-score's hash string) identify the setting.
    """

    run_id: str
    subset: str
    n_anomalous: int
    n_detected: int
    n_scored: int
    n_no_explanation: int
    n_no_reference: int
    n_truncated: int
    precision: float
    recall: float
    f1: float
    model: str
    num_layers: int
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """Plain values (NaN stays ``float('nan')``)."""
        return asdict(self)


# ----------------------------------------------------------------------------------------------- helpers
def reference_description(sample: Sample) -> str:
    """The sample's reference text: ``metadata["description"]`` when it is non-empty text, else its
    regions' descriptions (``metadata["regions"][*]["description"]``, duplicates dropped) joined by spaces,
    else ""."""
    meta = sample.metadata or {}
    desc = meta.get("description")
    if isinstance(desc, str) and desc.strip():
        return desc.strip()
    regions = meta.get("regions")
    if not isinstance(regions, list):
        return ""
    parts = [r.get("description") for r in regions if isinstance(r, dict)]
    texts = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
    return " ".join(dict.fromkeys(texts))


def _runs(
    predictions: Iterable[Prediction], manifest: Manifest, split: str | None
) -> dict[str, list[tuple[Prediction, Sample]]]:
    """Predictions grouped by run (first-appearance order), joined with their samples, filtered by split."""
    runs: dict[str, list[tuple[Prediction, Sample]]] = {}
    seen: set[tuple[str, str, str | None]] = set()
    for p in predictions:
        try:
            sample = manifest.get(p.sample_id)
        except KeyError:
            raise EvaluationError(f"run {p.run_id!r}: sample {p.sample_id!r} is not in the dataset") from None
        key = (p.run_id, *p.key)
        if key in seen:
            q = "" if p.question_id is None else f", question {p.question_id!r}"
            raise EvaluationError(f"run {p.run_id!r}: two predictions for sample {p.sample_id!r}{q}")
        seen.add(key)
        runs.setdefault(p.run_id, [])
        if split is None or sample.split == split:
            runs[p.run_id].append((p, sample))
    return runs


def _verdict_row(
    run_id: str, category: str, items: Sequence[tuple[Prediction, Sample]], n_missing: int
) -> VerdictRow:
    counts = {lab: sum(1 for _, s in items if s.label == lab) for lab in LABELS}
    if not items:
        return VerdictRow(run_id, category, 0, 0, 0, 0, 0, n_missing, *([NAN] * 11))
    m = verdict_metrics([s.label for _, s in items], [p.verdict for p, _ in items])
    per = m.accuracy_per_label
    return VerdictRow(
        run_id=run_id,
        category=category,
        n=m.n,
        n_good=counts["good"],
        n_logical=counts["logical"],
        n_structural=counts["structural"],
        n_anomaly=counts["anomaly"],
        n_missing=n_missing,
        logical_accuracy=per.get("logical", NAN),
        structural_accuracy=per.get("structural", NAN),
        average_accuracy=m.logical_structural_average,
        good_accuracy=per.get("good", NAN),
        anomaly_accuracy=per.get("anomaly", NAN),
        accuracy=m.accuracy,
        balanced_accuracy=m.balanced_accuracy,
        yes_rate=m.yes_rate,
        over_detection=m.over_detection,
        miss_rate=m.miss_rate,
        parse_failure_rate=m.parse_failure_rate,
    )


# ------------------------------------------------------------------------------------------------ tables
def verdict_table(
    predictions: Iterable[Prediction],
    manifest: Manifest,
    *,
    split: str | None = "test",
    by_category: bool = False,
) -> list[VerdictRow]:
    """Document 004's Table 1 for every run in ``predictions``: one :data:`ALL` row per run (pooled over
    categories), followed by one row per category (manifest order) when ``by_category``.

    ``split``: the manifest split evaluated (None: every split). A verdict of ``None`` counts as a parse
    failure. Raises :class:`EvaluationError` for an unknown sample or a duplicate prediction.
    """
    runs = _runs(predictions, manifest, split)
    samples = [s for s in manifest if split is None or s.split == split]
    rows: list[VerdictRow] = []
    for run_id, items in runs.items():
        covered = {s.id for _, s in items}
        missing = sum(1 for s in samples if s.id not in covered)
        rows.append(_verdict_row(run_id, ALL, items, missing))
        if by_category:
            for cat in manifest.categories:
                cat_items = [(p, s) for p, s in items if s.category == cat]
                cat_missing = sum(1 for s in samples if s.category == cat and s.id not in covered)
                if cat_items or cat_missing:
                    rows.append(_verdict_row(run_id, cat, cat_items, cat_missing))
    return rows


def explanation_pairs(
    predictions: Iterable[Prediction], manifest: Manifest, *, split: str | None = "test"
) -> list[ExplanationPair]:
    """The correctly detected anomalous items (verdict ``anomalous``, label not ``good``) of every run, with
    the prediction's explanation and the sample's :func:`reference_description`, in input order."""
    pairs = []
    for run_id, items in _runs(predictions, manifest, split).items():
        for p, s in items:
            if s.is_anomalous and p.verdict == "anomalous":
                pairs.append(
                    ExplanationPair(
                        run_id=run_id,
                        sample_id=s.id,
                        question_id=p.question_id,
                        category=s.category,
                        label=s.label,
                        candidate=p.explanation or "",
                        reference=reference_description(s),
                    )
                )
    return pairs


def score_explanations(
    predictions: Iterable[Prediction],
    manifest: Manifest,
    *,
    split: str | None = "test",
    by_label: bool = True,
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    num_layers: int | None = None,
    idf: bool = False,
    rescale: bool = False,
    batch_size: int = 32,
    device: str | None = None,
) -> list[ExplanationRow]:
    """BERTScore of each run's explanations on its correctly detected anomalous items (document 004).

    Returns, per run in first-appearance order, an :data:`ALL` row and, when ``by_label``, one row per
    anomalous label (``logical``, ``structural``, ``anomaly``) of which the run judged at least one item.
    Items with an empty explanation or no reference description are counted and left out, never scored as
    0. The model options are those of :func:`vlmad.metrics.explain.bertscore` (one model load for all
    runs; none when nothing is to be scored). Raises :class:`EvaluationError` for an unknown sample or a
    duplicate prediction, and the errors of :func:`~vlmad.metrics.explain.bertscore`.
    """
    preds = list(predictions)
    runs = _runs(preds, manifest, split)
    pairs = explanation_pairs(preds, manifest, split=split)
    # (precision, recall, f1, truncated) per pair; NaN scores for excluded pairs
    per_item: list[tuple[float, float, float, bool]] = []
    if pairs:
        scores = bertscore(
            [p.candidate for p in pairs],
            [p.reference for p in pairs],
            model=model,
            num_layers=num_layers,
            idf=idf,
            rescale=rescale,
            batch_size=batch_size,
            device=device,
        )
        setting = {"model": scores.model, "num_layers": scores.num_layers, "hash": scores.hash}
        per_item = [
            (pr, rc, f1, any(f.endswith("_truncated") for f in flags))
            for pr, rc, f1, flags in zip(
                scores.precision, scores.recall, scores.f1, scores.flags, strict=True
            )
        ]
    else:
        setting = bertscore_settings(model=model, num_layers=num_layers, idf=idf, rescale=rescale)
    labels = [lab for lab in LABELS if lab != "good" and any(s.label == lab for s in manifest)]
    subsets = [ALL, *labels] if by_label else [ALL]
    rows: list[ExplanationRow] = []
    for run_id, items in runs.items():
        run_pairs = [(pair, sc) for pair, sc in zip(pairs, per_item, strict=True) if pair.run_id == run_id]
        for subset in subsets:
            want = set(labels) if subset == ALL else {subset}
            n_anomalous = sum(1 for _, s in items if s.label in want)
            if subset != ALL and not n_anomalous:
                continue
            chosen = [(pair, sc) for pair, sc in run_pairs if pair.label in want]
            scored = [sc for _, sc in chosen if not math.isnan(sc[2])]
            rows.append(
                ExplanationRow(
                    run_id=run_id,
                    subset=subset,
                    n_anomalous=n_anomalous,
                    n_detected=len(chosen),
                    n_scored=len(scored),
                    n_no_explanation=sum(1 for pair, _ in chosen if not pair.candidate.strip()),
                    n_no_reference=sum(1 for pair, _ in chosen if not pair.reference.strip()),
                    n_truncated=sum(1 for sc in scored if sc[3]),
                    precision=_mean([sc[0] for sc in scored]),
                    recall=_mean([sc[1] for sc in scored]),
                    f1=_mean([sc[2] for sc in scored]),
                    model=str(setting["model"]),
                    num_layers=int(setting["num_layers"]),
                    hash=str(setting["hash"]),
                )
            )
    return rows


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else NAN
