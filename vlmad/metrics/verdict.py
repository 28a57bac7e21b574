"""Image-level metrics for methods that give a verdict per image rather than (or as well as) a score.

A vision-language model asked "is this image anomalous?" answers yes or no; its parsed answer is a
*verdict*: ``"normal"``, ``"anomalous"``, ``"unparsed"`` (the model answered but no verdict could be read
from the answer) or ``None`` (no answer at all, treated exactly like ``"unparsed"``). Ground-truth labels
are the strings of :data:`vlmad.records.LABELS`; every label except ``"good"`` is anomalous.

- :func:`verdict_metrics` scores a list of verdicts against labels.
- :func:`threshold_metrics` turns scores into verdicts ("anomalous" iff ``score >= threshold``) and scores
  those, so score-based and verdict-based methods are reported with the same numbers.

Conventions: the anomalous class is the positive class. An unparsed verdict is never correct; on an
anomalous image it counts as a miss (a false negative), on a normal image it is neither correct nor an
over-detection. A rate whose denominator is zero is NaN, never 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vlmad.metrics.ranking import score_vector
from vlmad.records import LABELS

if TYPE_CHECKING:
    from vlmad.metrics.threshold import Threshold

Verdict = Literal["normal", "anomalous", "unparsed"]

#: The verdict strings; ``None`` is accepted as well and means "no answer".
VERDICTS: tuple[str, ...] = ("normal", "anomalous", "unparsed")

NAN = float("nan")


@dataclass(frozen=True)
class VerdictMetrics:
    """Image-level metrics of a set of verdicts; every rate is a float in [0, 1] or NaN where undefined.

    Counts: ``n`` images, of which ``n_normal`` are labelled ``good`` and ``n_anomalous`` are not.

    - ``accuracy``: fraction of all images with the correct verdict (an unparsed verdict is wrong).
    - ``accuracy_per_label``: for each label present (in :data:`LABELS` order) the fraction correct; a
      ``good`` image is correct when judged ``"normal"``, any other when judged ``"anomalous"``.
    - ``balanced_accuracy``: mean of the accuracy on normal and on anomalous images; NaN if either class
      is absent.
    - ``yes_rate``: fraction of all images judged ``"anomalous"``.
    - ``parse_failure_rate``: fraction of all images whose verdict is ``"unparsed"`` or ``None``.
    - ``over_detection``: fraction of normal images judged ``"anomalous"`` (the false-positive rate; an
      unparsed normal image is not counted); NaN without normal images.
    - ``miss_rate``: fraction of anomalous images judged ``"normal"`` *or unparsed*, i.e. every anomalous
      image not flagged (``1 - recall``); NaN without anomalous images.
    - ``precision``: correct ``"anomalous"`` verdicts over all ``"anomalous"`` verdicts; NaN when no image is
      judged anomalous.
    - ``recall``: anomalous images judged ``"anomalous"`` over anomalous images; NaN without anomalous
      images.
    - ``f1``: ``2 TP / (2 TP + FP + FN)`` (equal to the harmonic mean of precision and recall where both are
      defined, and 0 when nothing anomalous is found); NaN without anomalous images.
    - ``logical_structural_average``: mean of ``accuracy_per_label["logical"]`` and
      ``accuracy_per_label["structural"]`` when both labels are present, else NaN (the Logical / Structural
      / Average accuracy reported for MVTec LOCO).
    """

    n: int
    n_normal: int
    n_anomalous: int
    accuracy: float
    accuracy_per_label: dict[str, float]
    balanced_accuracy: float
    yes_rate: float
    parse_failure_rate: float
    over_detection: float
    miss_rate: float
    precision: float
    recall: float
    f1: float
    logical_structural_average: float

    def to_dict(self) -> dict[str, Any]:
        """The metrics as plain ``int`` / ``float`` values (JSON-ready; NaN stays ``float('nan')``)."""
        return {
            "n": int(self.n),
            "n_normal": int(self.n_normal),
            "n_anomalous": int(self.n_anomalous),
            "accuracy": float(self.accuracy),
            "accuracy_per_label": {str(k): float(v) for k, v in self.accuracy_per_label.items()},
            "balanced_accuracy": float(self.balanced_accuracy),
            "yes_rate": float(self.yes_rate),
            "parse_failure_rate": float(self.parse_failure_rate),
            "over_detection": float(self.over_detection),
            "miss_rate": float(self.miss_rate),
            "precision": float(self.precision),
            "recall": float(self.recall),
            "f1": float(self.f1),
            "logical_structural_average": float(self.logical_structural_average),
        }


def _as_list(values: Any, name: str) -> list[Any]:
    if isinstance(values, str | bytes):
        raise ValueError(f"{name} must be a sequence of values, got a single string {values!r}")
    try:
        return list(values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence, got {type(values).__name__}") from None


def _bad_values(values: list[Any], allowed: set[Any]) -> list[Any]:
    bad: list[Any] = []
    for v in values:
        ok = (v is None and None in allowed) or (isinstance(v, str) and v in allowed)
        if not ok and v not in bad:
            bad.append(v)
    return bad


def anomalous_mask(labels: Sequence[str], name: str = "labels") -> np.ndarray:
    """Validate image labels and return a boolean array, True where the label is anomalous (not ``good``).

    Raises ValueError if ``labels`` is empty or holds a value that is not one of :data:`LABELS`.
    """
    values = _as_list(labels, name)
    if not values:
        raise ValueError(f"{name} is empty: there are no images to evaluate")
    bad = _bad_values(values, set(LABELS))
    if bad:
        raise ValueError(f"unknown label(s) in {name}: {bad!r}; expected one of {list(LABELS)!r}")
    return np.array([v != "good" for v in values], dtype=bool)


def _rate(num: int, den: int) -> float:
    return num / den if den else NAN


def verdict_metrics(labels: Sequence[str], verdicts: Sequence[str | None]) -> VerdictMetrics:
    """Metrics of per-image ``verdicts`` against ground-truth ``labels`` (see :class:`VerdictMetrics`).

    ``labels[i]`` is one of :data:`LABELS`; ``verdicts[i]`` is ``"normal"``, ``"anomalous"``, ``"unparsed"``
    or ``None`` (no answer, counted like ``"unparsed"``). Raises ValueError on empty input, a length
    mismatch, or an unknown label or verdict (the message lists the bad values).
    """
    label_list = _as_list(labels, "labels")
    verdict_list = _as_list(verdicts, "verdicts")
    if len(label_list) != len(verdict_list):
        raise ValueError(f"labels has {len(label_list)} entries but verdicts has {len(verdict_list)}")
    is_anom = anomalous_mask(label_list)
    bad = _bad_values(verdict_list, {*VERDICTS, None})
    if bad:
        raise ValueError(
            f"unknown verdict(s): {bad!r}; expected one of {list(VERDICTS)!r} or None (no answer)"
        )

    said_anom = np.array([v == "anomalous" for v in verdict_list], dtype=bool)
    said_norm = np.array([v == "normal" for v in verdict_list], dtype=bool)
    unparsed = ~(said_anom | said_norm)
    correct = np.where(is_anom, said_anom, said_norm)

    n = len(label_list)
    n_anom = int(is_anom.sum())
    n_norm = n - n_anom
    tp = int((is_anom & said_anom).sum())
    fp = int((~is_anom & said_anom).sum())
    fn = n_anom - tp  # anomalous images judged normal or unparsed
    tn = int((~is_anom & said_norm).sum())

    label_arr = np.array(label_list, dtype=object)
    per_label = {
        lab: float(correct[label_arr == lab].mean()) for lab in LABELS if bool((label_arr == lab).any())
    }
    acc_norm = _rate(tn, n_norm)
    acc_anom = _rate(tp, n_anom)
    balanced = NAN if math.isnan(acc_norm) or math.isnan(acc_anom) else (acc_norm + acc_anom) / 2
    if "logical" in per_label and "structural" in per_label:
        ls_avg = (per_label["logical"] + per_label["structural"]) / 2
    else:
        ls_avg = NAN
    return VerdictMetrics(
        n=n,
        n_normal=n_norm,
        n_anomalous=n_anom,
        accuracy=float(correct.mean()),
        accuracy_per_label=per_label,
        balanced_accuracy=balanced,
        yes_rate=float(said_anom.mean()),
        parse_failure_rate=float(unparsed.mean()),
        over_detection=_rate(fp, n_norm),
        miss_rate=_rate(fn, n_anom),
        precision=_rate(tp, tp + fp),
        recall=acc_anom,
        f1=_rate(2 * tp, 2 * tp + fp + fn) if n_anom else NAN,
        logical_structural_average=ls_avg,
    )


def threshold_metrics(
    labels: Sequence[str], scores: Sequence[float] | np.ndarray, threshold: float | Threshold
) -> VerdictMetrics:
    """Metrics of the decision "anomalous iff ``score >= threshold``", via :func:`verdict_metrics`.

    ``threshold`` is a number or a :class:`vlmad.metrics.threshold.Threshold`. Every score yields a verdict,
    so ``parse_failure_rate`` is 0. Raises ValueError on a NaN score (naming its index) or threshold, a
    length mismatch, empty input or an unknown label.
    """
    arr = score_vector(scores)
    t = float(threshold)
    if math.isnan(t):
        raise ValueError("threshold is NaN")
    label_list = _as_list(labels, "labels")
    if len(label_list) != arr.size:
        raise ValueError(f"labels has {len(label_list)} entries but scores has {arr.size}")
    verdicts = ["anomalous" if s >= t else "normal" for s in arr.tolist()]
    return verdict_metrics(label_list, verdicts)
