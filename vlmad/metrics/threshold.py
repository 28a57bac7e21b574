"""Decision thresholds for score-based detectors, chosen without looking at the test set.

A score-based detector calls an image anomalous iff ``score >= threshold``. Every function here returns a
:class:`Threshold` that records how the value was chosen and from which split, so a report can tell an
honest number from an oracle one:

- :func:`from_normal_quantile`: a quantile of validation normal scores (source ``"validation"``).
- :func:`from_target_fpr`: the smallest threshold whose false-positive rate on validation normal scores is
  at most ``fpr`` (source ``"validation"``).
- :func:`from_validation_f1`: the F1-maximising threshold on a labelled validation split.
- :func:`oracle_f1`: the same on the *test* split; ``oracle=True``, for reporting an upper bound only.
- :func:`fixed`: a value given by the user.
- :func:`calibrate`: dispatch on a method name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmad.metrics.ranking import score_vector
from vlmad.metrics.verdict import anomalous_mask

#: The calibration methods understood by :func:`calibrate`.
METHODS: tuple[str, ...] = ("normal-quantile", "target-fpr", "validation-f1", "oracle-f1", "fixed")
#: Where a threshold's value came from.
SOURCES: tuple[str, ...] = ("validation", "test", "user")


@dataclass(frozen=True)
class Threshold:
    """A decision threshold (anomalous iff ``score >= value``) and how it was obtained.

    ``method`` is one of :data:`METHODS`, ``source`` one of :data:`SOURCES` (the split the value was
    computed on, or ``"user"``); ``oracle`` is True when the value was tuned on the test labels, so any
    test metric computed with it is an oracle number. ``params`` holds the method's inputs and what it
    achieved on the data it was fitted to (plain JSON-ready values). ``float(threshold)`` is ``value``.
    """

    value: float
    method: str
    source: str
    oracle: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown threshold method {self.method!r}; expected one of {list(METHODS)!r}")
        if self.source not in SOURCES:
            raise ValueError(f"unknown threshold source {self.source!r}; expected one of {list(SOURCES)!r}")
        if math.isnan(float(self.value)):
            raise ValueError("threshold value is NaN")

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict[str, Any]:
        """``value``, ``method``, ``source``, ``oracle`` and a copy of ``params``, as JSON-ready values."""
        return {
            "value": float(self.value),
            "method": str(self.method),
            "source": str(self.source),
            "oracle": bool(self.oracle),
            "params": dict(self.params),
        }


def _check_fraction(x: float, name: str) -> float:
    x = float(x)
    if not 0.0 <= x <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {x}")
    return x


def _normal_scores(normal_scores: Any) -> np.ndarray:
    arr = score_vector(normal_scores, "normal_scores")
    if arr.size == 0:
        raise ValueError("normal_scores is empty: calibration needs scores of normal validation images")
    return arr


def from_normal_quantile(normal_scores: Sequence[float] | np.ndarray, q: float = 0.99) -> Threshold:
    """The ``q``-quantile of validation normal scores (``numpy.quantile``, linear interpolation).

    Raises ValueError on empty or NaN scores or ``q`` outside [0, 1].
    """
    q = _check_fraction(q, "q")
    arr = _normal_scores(normal_scores)
    value = float(np.quantile(arr, q))
    return Threshold(value, "normal-quantile", "validation", False, {"q": q, "n_normal": int(arr.size)})


def _allowed_false_positives(fpr: float, n: int) -> int:
    """The largest integer k with ``k / n <= fpr`` in floating point (robust to ``fpr * n`` rounding)."""
    k = min(math.floor(fpr * n), n)
    while k < n and (k + 1) / n <= fpr:
        k += 1
    while k > 0 and k / n > fpr:
        k -= 1
    return k


def from_target_fpr(normal_scores: Sequence[float] | np.ndarray, fpr: float = 0.05) -> Threshold:
    """The smallest threshold flagging at most a fraction ``fpr`` of the given normal scores.

    With ``n`` scores, at most ``k`` (the largest integer with ``k / n <= fpr``) may satisfy
    ``score >= threshold``. Sorting the scores in descending order as ``d``, the value is
    ``nextafter(d[k], +inf)``: it flags exactly the scores strictly above ``d[k]`` (at most ``k``, fewer when
    ``d[k]`` is tied with higher scores: a tied group is never split), and any lower threshold would flag
    ``d[0..k]``, i.e. more than ``k``. ``k = 0`` gives the largest score's ``nextafter`` (no normal flagged).
    When ``fpr`` allows every score to be flagged (``k = n``) the value is the smallest normal score.
    ``params["fpr_realised"]`` is the achieved false-positive rate on these scores.

    Raises ValueError on empty or NaN scores, ``fpr`` outside [0, 1], or when the threshold would have to
    lie above a score of +inf.
    """
    fpr = _check_fraction(fpr, "fpr")
    arr = _normal_scores(normal_scores)
    n = int(arr.size)
    k = _allowed_false_positives(fpr, n)
    desc = np.sort(arr)[::-1]
    if k >= n:
        value = float(desc[-1])
    else:
        if math.isinf(desc[k]) and desc[k] > 0:
            raise ValueError("cannot place a threshold above a normal score of +inf; scores must be finite")
        value = float(np.nextafter(desc[k], np.inf))
    realised = int((arr >= value).sum()) / n
    params = {"fpr": fpr, "n_normal": n, "fpr_realised": realised}
    return Threshold(value, "target-fpr", "validation", False, params)


def _best_f1(labels: Sequence[str], scores: Any, split: str) -> tuple[float, dict[str, Any]]:
    """The distinct score maximising F1 of "anomalous iff score >= t" (highest such score on ties)."""
    is_anom = anomalous_mask(labels)
    arr = score_vector(scores)
    if is_anom.size != arr.size:
        raise ValueError(f"labels has {is_anom.size} entries but scores has {arr.size}")
    n_pos = int(is_anom.sum())
    if n_pos == 0 or n_pos == arr.size:
        cls = "anomalous" if n_pos else "normal"
        raise ValueError(
            f"the {split} split has only {cls} images; an F1 threshold needs both normal and anomalous images"
        )
    order = np.argsort(-arr, kind="stable")
    s = arr[order]
    y = is_anom[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    # Threshold t = s[i] flags s[0..i]; only the last index of each tied group is a candidate.
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    f1 = 2 * tp[last] / (tp[last] + fp[last] + n_pos)  # = 2TP / (2TP + FP + FN)
    best = int(np.argmax(f1))  # first maximum = highest threshold
    i = int(last[best])
    params = {
        "f1": float(f1[best]),
        "precision": float(tp[i] / (i + 1)),
        "recall": float(tp[i] / n_pos),
        "n": int(arr.size),
        "n_anomalous": n_pos,
    }
    return float(s[i]), params


def from_validation_f1(labels: Sequence[str], scores: Sequence[float] | np.ndarray) -> Threshold:
    """The threshold maximising F1 (anomalous = positive) on a labelled *validation* split.

    Every distinct score is a candidate threshold (anomalous iff ``score >= t``); among candidates with
    the same F1 the highest wins. O(n log n). ``params`` records the F1, precision and recall reached.
    Raises ValueError on NaN scores, unknown labels, a length mismatch, empty input, or a split without
    both normal and anomalous images.
    """
    value, params = _best_f1(labels, scores, "validation")
    return Threshold(value, "validation-f1", "validation", False, params)


def oracle_f1(labels: Sequence[str], scores: Sequence[float] | np.ndarray) -> Threshold:
    """The F1-maximising threshold on the *test* split, as in :func:`from_validation_f1`.

    The result has ``source="test"`` and ``oracle=True``: metrics computed with it use the test labels and
    must be reported as oracle numbers.
    """
    value, params = _best_f1(labels, scores, "test")
    return Threshold(value, "oracle-f1", "test", True, params)


def fixed(value: float) -> Threshold:
    """A user-given threshold (source ``"user"``). Raises ValueError if ``value`` is NaN or not a number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a fixed threshold must be a number, got {value!r}") from None
    if math.isnan(v):
        raise ValueError("a fixed threshold must be a number, got NaN")
    return Threshold(v, "fixed", "user", False, {})


def calibrate(
    method: str,
    *,
    normal_scores: Sequence[float] | np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    scores: Sequence[float] | np.ndarray | None = None,
    q: float = 0.99,
    fpr: float = 0.05,
    value: float | None = None,
) -> Threshold:
    """A threshold by method name (one of :data:`METHODS`).

    ``"normal-quantile"`` (uses ``normal_scores``, ``q``), ``"target-fpr"`` (``normal_scores``, ``fpr``),
    ``"validation-f1"`` and ``"oracle-f1"`` (``labels``, ``scores``), ``"fixed"`` (``value``). Inputs a
    method does not use are ignored. Raises ValueError on an unknown method or when an input the method
    needs is missing (the message names it), and whatever the method itself raises.
    """

    def need(**inputs: Any) -> None:
        missing = [name for name, v in inputs.items() if v is None]
        if missing:
            raise ValueError(f"calibrate({method!r}) needs {' and '.join(missing)}")

    if method == "normal-quantile":
        need(normal_scores=normal_scores)
        return from_normal_quantile(normal_scores, q)  # type: ignore[arg-type]
    if method == "target-fpr":
        need(normal_scores=normal_scores)
        return from_target_fpr(normal_scores, fpr)  # type: ignore[arg-type]
    if method in ("validation-f1", "oracle-f1"):
        need(labels=labels, scores=scores)
        fit = from_validation_f1 if method == "validation-f1" else oracle_f1
        return fit(labels, scores)  # type: ignore[arg-type]
    if method == "fixed":
        need(value=value)
        return fixed(value)  # type: ignore[arg-type]
    raise ValueError(f"unknown threshold method {method!r}; expected one of {list(METHODS)!r}")
