"""Scoring and A/B comparison of chain-of-image runs (``vlmad coi score`` / ``vlmad coi compare``).

- :func:`score_table`: document 004's Table 1 per run (logical / structural accuracy and their average,
  good-image accuracy; balanced accuracy, yes-rate, over-detection, miss and parse-failure rates, from
  :func:`vlmad.coi.score.verdict_table`), with image AUROC where every prediction of the run has a score
  (local models' yes/no score), overall and for logical / structural images against the good ones.
- :func:`explanation_table`: explanation BERTScore on the correctly detected anomalous images
  (:func:`vlmad.coi.score.score_explanations`, as in document 004) and the diversity of those explanations
  (:func:`vlmad.metrics.explain.diversity`: distinct-1/2 and mean pairwise cosine similarity).
- :func:`ab_table`: for every pair of runs (prompts and models), the accuracy difference with a paired
  bootstrap CI resampling whole images and an exact McNemar p-value
  (:func:`vlmad.metrics.compare.compare_runs`), on all test images and on the logical, structural and
  good images alone; p-values are Holm-corrected over every row of the table (one family).
- :func:`read_runs`: predictions of run folders or predictions files.

Correctness follows :mod:`vlmad.metrics.verdict`: an unparsed verdict (a failed item included) is never
correct, on normal images as on anomalous ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vlmad.coi.score import (
    ALL,
    ExplanationRow,
    VerdictRow,
    explanation_pairs,
    score_explanations,
    verdict_table,
)
from vlmad.metrics.compare import Comparison, compare_runs
from vlmad.metrics.evaluate import EvaluationError
from vlmad.metrics.explain import DEFAULT_MODEL, diversity
from vlmad.metrics.stats import holm
from vlmad.records import Manifest, Prediction

__all__ = [
    "AB_SUBSETS",
    "SCOPES",
    "CoiRow",
    "ExplanationQuality",
    "ab_table",
    "explanation_table",
    "is_random_run",
    "read_runs",
    "run_label",
    "score_table",
    "split_run_id",
]

#: A/B subsets: every test image, or only the images of one label.
AB_SUBSETS: dict[str, tuple[str, ...]] = {
    "all": ("good", "logical", "structural", "anomaly"),
    "logical": ("logical",),
    "structural": ("structural",),
    "good": ("good",),
}
#: Which pairs :func:`ab_table` compares: every pair, pairs of one model (prompts), pairs of one prompt.
SCOPES: tuple[str, ...] = ("all", "prompts", "models")
NAN = float("nan")


@dataclass(frozen=True)
class CoiRow:
    """One run's line of Table 1: ``model`` / ``prompt`` (split from the run id), the :class:`VerdictRow`,
    image ``auroc`` (all test images) and ``auroc_logical`` / ``auroc_structural`` (those anomalies against
    the good images), NaN without scores on every item or without both classes; ``n_scored`` items with a
    score; ``n_failed`` items with no usable reply (status failed / refused / empty); ``random``: the model
    is a tiny random one (TINY RANDOM)."""

    run_id: str
    model: str
    prompt: str
    verdict: VerdictRow
    auroc: float
    auroc_logical: float
    auroc_structural: float
    n_scored: int
    n_failed: int
    random: bool

    def to_dict(self) -> dict[str, Any]:
        """Flat plain values (the verdict row's fields inlined)."""
        d: dict[str, Any] = {"run_id": self.run_id, "model": self.model, "prompt": self.prompt}
        d.update({k: v for k, v in self.verdict.to_dict().items() if k != "run_id"})
        d.update(
            auroc=self.auroc,
            auroc_logical=self.auroc_logical,
            auroc_structural=self.auroc_structural,
            n_scored=self.n_scored,
            n_failed=self.n_failed,
            random=self.random,
        )
        return d


@dataclass(frozen=True)
class ExplanationQuality:
    """Explanation quality of one run: its BERTScore row (:data:`~vlmad.coi.score.ALL` subset) and the
    :func:`~vlmad.metrics.explain.diversity` of the same explanations (those of the correctly detected
    anomalous images)."""

    run_id: str
    bertscore: ExplanationRow
    diversity: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        d = {"run_id": self.run_id}
        d.update({f"bertscore_{k}": v for k, v in self.bertscore.to_dict().items() if k != "run_id"})
        d.update({f"diversity_{k}": v for k, v in self.diversity.items()})
        return d


# ----------------------------------------------------------------------------------------------- helpers
def read_runs(paths: Iterable[str | Path]) -> list[Prediction]:
    """The predictions of run folders (their ``predictions.jsonl``) and predictions files, in order.

    Raises :class:`~vlmad.errors.DatasetError` for a missing or malformed file (naming it and the line)."""
    from vlmad.coi.runner import PREDICTIONS_FILE
    from vlmad.data.predictions import read_predictions

    out: list[Prediction] = []
    for p in paths:
        path = Path(p)
        out.extend(read_predictions(path / PREDICTIONS_FILE if path.is_dir() else path))
    return out


def split_run_id(run_id: str) -> tuple[str, str]:
    """``(model, prompt)`` of a run id ``<model>/<prompt>``; ``(run_id, "")`` without a slash."""
    model, sep, prompt = run_id.rpartition("/")
    return (model, prompt) if sep else (run_id, "")


def is_random_run(predictions: Iterable[Prediction]) -> bool:
    """Whether any of the predictions comes from a tiny random model (``metadata["random_vlm"]``)."""
    return any(bool(p.metadata.get("random_vlm")) for p in predictions)


def run_label(run_id: str, random: bool) -> str:
    """The run id as shown in reports: marked ``(TINY RANDOM)`` for tiny random models."""
    return f"{run_id} (TINY RANDOM)" if random else run_id


def _by_run(predictions: Iterable[Prediction]) -> dict[str, list[Prediction]]:
    runs: dict[str, list[Prediction]] = {}
    for p in predictions:
        runs.setdefault(p.run_id, []).append(p)
    return runs


def _auroc(items: Sequence[tuple[Prediction, bool]]) -> float:
    from vlmad.metrics.ranking import auroc

    if not items or any(p.score is None for p, _ in items):
        return NAN
    labels = [y for _, y in items]
    if all(labels) or not any(labels):
        return NAN
    return float(auroc(labels, [float(p.score) for p, _ in items]))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ tables
def score_table(
    predictions: Iterable[Prediction],
    manifest: Manifest,
    *,
    split: str | None = "test",
    by_category: bool = False,
) -> list[CoiRow]:
    """Table 1 for every run in ``predictions`` (first-appearance order); with ``by_category`` each run's
    pooled row is followed by its per-category rows (AUROC per category too). Raises
    :class:`EvaluationError` for an unknown sample or duplicate predictions."""
    preds = list(predictions)
    rows = verdict_table(preds, manifest, split=split, by_category=by_category)
    runs = _by_run(preds)
    out: list[CoiRow] = []
    for row in rows:
        items = [
            (p, manifest.get(p.sample_id))
            for p in runs[row.run_id]
            if (split is None or manifest.get(p.sample_id).split == split)
        ]
        if row.category != ALL:
            items = [(p, s) for p, s in items if s.category == row.category]
        pairs = [(p, s.is_anomalous) for p, s in items]
        model, prompt = split_run_id(row.run_id)
        out.append(
            CoiRow(
                run_id=row.run_id,
                model=model,
                prompt=prompt,
                verdict=row,
                auroc=_auroc(pairs),
                auroc_logical=_auroc(
                    [(p, s.is_anomalous) for p, s in items if s.label in ("good", "logical")]
                ),
                auroc_structural=_auroc(
                    [(p, s.is_anomalous) for p, s in items if s.label in ("good", "structural")]
                ),
                n_scored=sum(1 for p, _ in items if p.score is not None),
                n_failed=sum(
                    1 for p, _ in items if p.metadata.get("status") in ("failed", "refused", "empty")
                ),
                random=is_random_run(runs[row.run_id]),
            )
        )
    return out


def explanation_table(
    predictions: Iterable[Prediction],
    manifest: Manifest,
    *,
    split: str | None = "test",
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    num_layers: int | None = None,
    embeddings: bool = True,
    device: str | None = None,
) -> list[ExplanationQuality]:
    """Per run: BERTScore of the explanations of correctly detected anomalous images against the images'
    reference descriptions (document 004) and the diversity of those explanations. ``model`` /
    ``num_layers`` / ``device``: the BERTScore and sentence-embedding model (default: the packaged
    all-MiniLM-L6-v2, offline); ``embeddings=False`` skips the embedding similarity of the diversity."""
    preds = list(predictions)
    rows = score_explanations(
        preds, manifest, split=split, by_label=False, model=model, num_layers=num_layers, device=device
    )
    pairs = explanation_pairs(preds, manifest, split=split)
    out = []
    for row in rows:
        texts = [p.candidate for p in pairs if p.run_id == row.run_id]
        div = diversity(texts, model=model, embeddings=embeddings, device=device)
        out.append(ExplanationQuality(row.run_id, row, div))
    return out


def _pairs(run_ids: Sequence[str], scope: str) -> list[tuple[str, str]]:
    out = []
    for i, a in enumerate(run_ids):
        for b in run_ids[i + 1 :]:
            ma, pa = split_run_id(a)
            mb, pb = split_run_id(b)
            if scope == "prompts" and ma != mb:
                continue
            if scope == "models" and pa != pb:
                continue
            out.append((a, b))
    return out


def _for_compare(
    preds: Sequence[Prediction], manifest: Manifest, labels: tuple[str, ...]
) -> list[Prediction]:
    """The test-split predictions on images of ``labels`` (``compare_runs`` counts an unparsed verdict as
    wrong on every image, as :mod:`vlmad.metrics.verdict` does)."""
    out = []
    for p in preds:
        s = manifest.get(p.sample_id)
        if s.split == "test" and s.label in labels:
            out.append(p)
    return out


def ab_table(
    predictions: Iterable[Prediction],
    manifest: Manifest,
    *,
    subsets: Sequence[str] = ("all", "logical", "structural", "good"),
    scope: str = "all",
    n_boot: int = 10000,
    ci: float = 0.95,
    seed: int = 0,
) -> list[Comparison]:
    """Accuracy A/B of every pair of runs (in run-id order: ``base`` is the earlier run id,
    ``difference = other - base``) on the test images of each subset of :data:`AB_SUBSETS`.

    Each comparison is :func:`vlmad.metrics.compare.compare_runs` on the images both runs judged: exact
    McNemar p-value and a paired bootstrap CI resampling images; ``p_holm`` is Holm-corrected over all
    returned rows. ``scope``: ``all`` pairs, ``prompts`` (pairs of the same model) or ``models`` (pairs
    of the same prompt). A subset without images is left out. Seeded: the same input gives the same table.
    Raises :class:`EvaluationError` for an unknown sample, subset or scope.
    """
    if scope not in SCOPES:
        raise EvaluationError(f"unknown A/B scope {scope!r}; expected one of {', '.join(SCOPES)}")
    bad = [s for s in subsets if s not in AB_SUBSETS]
    if bad:
        raise EvaluationError(f"unknown A/B subset {bad[0]!r}; expected one of {', '.join(AB_SUBSETS)}")
    # sorted by run id: a concurrent run appends its records in arrival order, which differs between runs
    runs = dict(sorted(_by_run(predictions).items()))
    for preds in runs.values():
        for p in preds:
            try:
                manifest.get(p.sample_id)
            except KeyError:
                raise EvaluationError(
                    f"run {p.run_id!r}: sample {p.sample_id!r} is not in the dataset"
                ) from None
    rows: list[Comparison] = []
    for a, b in _pairs(list(runs), scope):
        for subset in subsets:
            pa = _for_compare(runs[a], manifest, AB_SUBSETS[subset])
            pb = _for_compare(runs[b], manifest, AB_SUBSETS[subset])
            common = {p.key for p in pa} & {p.key for p in pb}
            if not common:
                continue
            pa = [p for p in pa if p.key in common]
            pb = [p for p in pb if p.key in common]
            (c,) = compare_runs(
                manifest, {a: pa, b: pb}, a, metric="accuracy", subset="all", n_boot=n_boot, ci=ci, seed=seed
            )
            rows.append(replace(c, subset=subset))
    adjusted = holm([c.p_value for c in rows]) if rows else []
    return [replace(c, p_holm=float(p)) for c, p in zip(rows, adjusted, strict=True)]


def finite(value: float) -> bool:
    """Whether ``value`` is a finite number (not NaN / inf)."""
    return isinstance(value, int | float) and math.isfinite(value)
