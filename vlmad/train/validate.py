"""Validation during training: detection by generation and yes/no scores on a held-out split, and the loss.

For each validation record the model answers the record's first question (or ``eval_question``) about its
template and test images, role-labelled as in training. The reply is read with
:func:`vlmad.coi.parse.parse_verdict` ("yes" = anomalous) and scored with :func:`vlmad.metrics.verdict
.verdict_metrics` against the record's label; the next-token yes/no score
(:func:`vlmad.vlm.yes_no_scores`) gives the AUROC (:func:`vlmad.metrics.ranking.auroc`). The answer-token
loss over the full conversations is computed as well. Metric names (``eval_`` prefixed in logs):

``accuracy``, ``accuracy_good`` / ``accuracy_logical`` / ``accuracy_structural`` / ``accuracy_anomaly``
(labels present), ``balanced_accuracy``, ``logical_structural_average``, ``auroc`` (NaN with one class),
``yes_rate``, ``parse_failure_rate``, ``answer_mass``, ``loss``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from vlmad.train.data import Collator, Encoder, TrainRecord

if TYPE_CHECKING:
    from vlmad.vlm import VLM, ImageBudget


def stratified_pick(records: Sequence[TrainRecord], fraction: float, seed: int) -> list[TrainRecord]:
    """A seeded subset with ``fraction`` (0..1) of each label's records, at least one of each label that has
    two or more (so a small validation set still holds every label), in the records' order."""
    groups: dict[str, list[TrainRecord]] = {}
    for r in records:
        groups.setdefault(str(r.label), []).append(r)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for label in sorted(groups):
        group = sorted(groups[label], key=lambda r: r.index)
        n = round(fraction * len(group))
        if fraction > 0 and n == 0 and len(group) >= 2:
            n = 1
        chosen.update(id(r) for r in rng.sample(group, min(n, len(group))))
    return [r for r in records if id(r) in chosen]


def eval_loss(
    model: Any, encoder: Encoder, records: Sequence[TrainRecord], batch_size: int, device: Any
) -> float:
    """Mean answer-token cross-entropy of ``model`` over ``records`` (teacher forcing, no gradients)."""
    import torch

    collate = Collator(encoder.tokenizer.pad_token_id or 0)
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(records), batch_size):
            feats = [encoder.encode(r).features for r in records[start : start + batch_size]]
            batch = collate(feats)
            labels = batch.pop("labels").to(device)
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
            dtype = model.get_input_embeddings().weight.dtype
            for k in ("pixel_values", "pixel_values_videos"):
                if k in batch and batch[k].is_floating_point():
                    batch[k] = batch[k].to(dtype)
            logits = model(**batch, use_cache=False).logits.float()
            shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.shape[-1]),
                shift_labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            count += int((shift_labels != -100).sum())
    return total / count if count else math.nan


def detection_metrics(
    vlm: VLM,
    encoder: Encoder,
    records: Sequence[TrainRecord],
    *,
    budgets: Mapping[str, ImageBudget] | None = None,
    question: str | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 4,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, float]:
    """Detection accuracy (per label) of generated answers and the yes/no score AUROC on ``records``.

    Every record needs a ``label``. Records are grouped by their role labels (one group in an export).
    """
    from vlmad.coi.parse import parse_verdict
    from vlmad.metrics.ranking import auroc
    from vlmad.metrics.verdict import verdict_metrics
    from vlmad.vlm import VlmRequest, generate, yes_no_scores

    groups: dict[tuple[tuple[str, str], ...], list[tuple[int, VlmRequest]]] = {}
    for i, rec in enumerate(records):
        conv = encoder.conversation(rec)
        req = VlmRequest(question or conv.question, {r: str(p) for r, p in conv.images.items()})
        groups.setdefault(tuple(sorted(conv.labels.items())), []).append((i, req))
    verdicts: list[str | None] = [None] * len(records)
    scores: list[float] = [math.nan] * len(records)
    masses: list[float] = [math.nan] * len(records)
    done = 0
    for labels, items in groups.items():
        role_labels = dict(labels)
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            reqs = [req for _, req in chunk]
            gens = generate(
                vlm, reqs, max_new_tokens, budgets=budgets, role_labels=role_labels, batch_size=batch_size
            )
            yn = yes_no_scores(vlm, reqs, budgets=budgets, role_labels=role_labels, batch_size=batch_size)
            for (i, _), g, s in zip(chunk, gens, yn, strict=True):
                verdicts[i] = parse_verdict(g.text).verdict
                scores[i] = s.p_anomalous
                masses[i] = s.answer_mass
            done += len(chunk)
            if progress is not None:
                progress("validation", done, len(records))
    labels_ = [str(r.label) for r in records]
    vm = verdict_metrics(labels_, verdicts)
    out: dict[str, float] = {
        "accuracy": vm.accuracy,
        "balanced_accuracy": vm.balanced_accuracy,
        "logical_structural_average": vm.logical_structural_average,
        "yes_rate": vm.yes_rate,
        "parse_failure_rate": vm.parse_failure_rate,
        "answer_mass": float(sum(masses) / len(masses)) if masses else math.nan,
    }
    for lab, acc in vm.accuracy_per_label.items():
        out[f"accuracy_{lab}"] = acc
    positive = [lab != "good" for lab in labels_]
    out["auroc"] = auroc(positive, scores) if 0 < sum(positive) < len(positive) else math.nan
    return out
