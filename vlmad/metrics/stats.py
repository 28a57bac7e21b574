"""Paired statistics for A/B comparisons of two anomaly-detection methods scored on the same items.

Everything here takes two methods' results aligned item by item (item ``i`` of ``a`` and item ``i`` of
``b`` are the same image / question) and answers "is A different from B, and by how much?":

* :func:`mcnemar_exact` — exact McNemar test on per-item correctness.
* :func:`paired_bootstrap` — paired (optionally cluster) bootstrap of ``statistic(a) - statistic(b)``.
* :func:`paired_bootstrap_metric` — the same for a whole-set metric such as AUROC,
  ``metric(labels, scores_a) - metric(labels, scores_b)``.
* :func:`holm` / :func:`holm_reject` — Holm–Bonferroni correction when several comparisons are made.

Bad input (NaN, length mismatch, empty arrays, non-boolean correctness) raises ``ValueError`` whose message
names the argument. Only numpy is imported at module level; scipy is imported where it is used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlmad.metrics.ranking import score_vector

__all__ = [
    "BootstrapResult",
    "McNemarResult",
    "holm",
    "holm_reject",
    "mcnemar_exact",
    "paired_bootstrap",
    "paired_bootstrap_metric",
]

# Upper bound on the number of group indices held in memory at once (one chunk of resamples).
_MAX_CHUNK_CELLS = 4_000_000
# Number of resamples drawn per chunk when groups are few enough.
_CHUNK_ROWS = 1000


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class McNemarResult:
    """Outcome of :func:`mcnemar_exact`.

    ``only_a`` counts items A got right and B got wrong; ``only_b`` the reverse. ``p_value`` is the
    two-sided exact (binomial) McNemar p-value computed from the discordant pairs only.
    """

    n: int
    both_correct: int
    only_a: int
    only_b: int
    both_wrong: int
    p_value: float
    accuracy_a: float
    accuracy_b: float

    @property
    def discordant(self) -> int:
        """Number of items on which the two methods disagree (``only_a + only_b``)."""
        return self.only_a + self.only_b


@dataclass(frozen=True)
class BootstrapResult:
    """Outcome of :func:`paired_bootstrap` and :func:`paired_bootstrap_metric`.

    ``estimate`` is the A-minus-B difference on the full data; ``low``/``high`` the percentile confidence
    interval at level ``ci``; ``p_value`` the two-sided bootstrap p-value for "difference = 0" (see
    :func:`paired_bootstrap`). ``n_boot`` is the number of resamples drawn, ``n_skipped`` how many of them
    were discarded (always 0 for :func:`paired_bootstrap`), so ``distribution`` holds
    ``n_boot - n_skipped`` bootstrap differences in draw order. ``n_groups`` is the number of resampling
    units (distinct groups, or items when no groups were given).
    """

    estimate: float
    low: float
    high: float
    ci: float
    n_boot: int
    n_groups: int
    p_value: float
    n_skipped: int
    seed: int | None
    distribution: np.ndarray = field(repr=False, compare=False)


# ---------------------------------------------------------------------------------------- validation


def _as_1d(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def _as_bool(x: Any, name: str) -> np.ndarray:
    """1-D bool array from booleans or numbers that are all 0 or 1."""
    arr = _as_1d(x, name)
    if arr.dtype.kind == "b":
        return arr
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold booleans (or 0/1), got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        raise ValueError(f"{name} must hold booleans (or 0/1), found {arr[bad][0]!r}")
    return arr == 1


def _check_same_length(**arrays: np.ndarray | Sequence[Any]) -> None:
    items = list(arrays.items())
    (name0, arr0) = items[0]
    for name, arr in items[1:]:
        if len(arr) != len(arr0):
            raise ValueError(f"{name0} and {name} differ in length: {len(arr0)} vs {len(arr)}")


def _group_codes(groups: Sequence[Any] | np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Map group keys to codes ``0..G-1`` in order of first appearance; no groups -> one item per group."""
    if groups is None:
        return np.arange(n), n
    if isinstance(groups, np.ndarray):
        if groups.ndim != 1:
            raise ValueError(f"groups must be 1-D, got shape {groups.shape}")
        keys = groups.tolist()
    else:
        keys = list(groups)
    if len(keys) != n:
        raise ValueError(f"groups must have one key per item: {len(keys)} keys vs {n} items")
    index: dict[Any, int] = {}
    codes = np.empty(n, dtype=np.intp)
    for i, key in enumerate(keys):
        if isinstance(key, float | np.floating) and math.isnan(key):
            raise ValueError("groups contains NaN")
        try:
            codes[i] = index.setdefault(key, len(index))
        except TypeError as err:
            raise ValueError(f"groups keys must be hashable, got {type(key).__name__}") from err
    return codes, len(index)


def _check_options(n_boot: int, ci: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci!r}")


# ------------------------------------------------------------------------------------------- McNemar


def mcnemar_exact(
    a_correct: Sequence[Any] | np.ndarray, b_correct: Sequence[Any] | np.ndarray
) -> McNemarResult:
    """Exact McNemar test comparing two methods' per-item correctness.

    Args:
        a_correct: per-item correctness of method A (booleans, or 0/1 numbers).
        b_correct: per-item correctness of method B on the same items, in the same order.

    Returns:
        A :class:`McNemarResult`. With ``b = only_a + only_b`` discordant items and
        ``k = min(only_a, only_b)``, ``p_value = min(1, 2 * BinomCDF(k; b, 0.5))``; it is exactly 1.0
        when there are no discordant items.

    Raises:
        ValueError: on empty input, different lengths, NaN, or values other than booleans / 0 / 1.
    """
    a = _as_bool(a_correct, "a_correct")
    b = _as_bool(b_correct, "b_correct")
    _check_same_length(a_correct=a, b_correct=b)

    both_correct = int(np.count_nonzero(a & b))
    only_a = int(np.count_nonzero(a & ~b))
    only_b = int(np.count_nonzero(~a & b))
    both_wrong = int(np.count_nonzero(~a & ~b))
    discordant = only_a + only_b
    if discordant == 0:
        p_value = 1.0
    else:
        from scipy.stats import binom

        p_value = min(1.0, 2.0 * float(binom.cdf(min(only_a, only_b), discordant, 0.5)))
    n = int(a.size)
    return McNemarResult(
        n=n,
        both_correct=both_correct,
        only_a=only_a,
        only_b=only_b,
        both_wrong=both_wrong,
        p_value=p_value,
        accuracy_a=(both_correct + only_a) / n,
        accuracy_b=(both_correct + only_b) / n,
    )


# ----------------------------------------------------------------------------------------- bootstrap


def _index_chunks(rng: np.random.Generator, n_boot: int, n_groups: int) -> Iterator[np.ndarray]:
    """Yield ``(rows, n_groups)`` arrays of group indices drawn with replacement, ``n_boot`` rows in all.

    Both the vectorised and the loop paths consume this generator, so for a given seed they see exactly
    the same resamples.
    """
    rows = max(1, min(_CHUNK_ROWS, _MAX_CHUNK_CELLS // n_groups))
    done = 0
    while done < n_boot:
        k = min(rows, n_boot - done)
        yield rng.integers(0, n_groups, size=(k, n_groups))
        done += k


class _Resampler:
    """Turns a row of drawn group indices into the item indices of that cluster-bootstrap sample."""

    def __init__(self, codes: np.ndarray, n_groups: int) -> None:
        self.identity = n_groups == codes.size and np.array_equal(codes, np.arange(codes.size))
        self.order = np.argsort(codes, kind="stable")
        self.counts = np.bincount(codes, minlength=n_groups)
        self.starts = np.concatenate(([0], np.cumsum(self.counts)[:-1]))

    def items(self, row: np.ndarray) -> np.ndarray:
        if self.identity:
            return row
        lens = self.counts[row]
        offsets = np.cumsum(lens) - lens
        pos = np.repeat(self.starts[row] - offsets, lens) + np.arange(int(lens.sum()))
        return self.order[pos]


def _summarise(
    estimate: float,
    dist: np.ndarray,
    *,
    ci: float,
    n_boot: int,
    n_groups: int,
    n_skipped: int,
    seed: int | None,
) -> BootstrapResult:
    alpha = 1.0 - ci
    low, high = np.quantile(dist, [alpha / 2.0, 1.0 - alpha / 2.0])
    p_value = min(1.0, 2.0 * min(float(np.mean(dist <= 0.0)), float(np.mean(dist >= 0.0))))
    return BootstrapResult(
        estimate=float(estimate),
        low=float(low),
        high=float(high),
        ci=float(ci),
        n_boot=int(n_boot),
        n_groups=int(n_groups),
        p_value=p_value,
        n_skipped=int(n_skipped),
        seed=seed,
        distribution=dist,
    )


def paired_bootstrap(
    a: Sequence[Any] | np.ndarray,
    b: Sequence[Any] | np.ndarray,
    groups: Sequence[Any] | np.ndarray | None = None,
    statistic: Callable[[np.ndarray], float] | None = None,
    n_boot: int = 10000,
    ci: float = 0.95,
    seed: int | None = 0,
) -> BootstrapResult:
    """Paired (cluster) bootstrap of the difference ``statistic(a) - statistic(b)`` (A minus B).

    Args:
        a: per-item values of method A (e.g. 0/1 correctness, per-item scores); booleans are read as 0/1.
        b: per-item values of method B on the same items, aligned item by item with ``a``.
        groups: optional per-item group keys (any hashable, e.g. image ids). Each resample draws whole
            groups with replacement (cluster bootstrap), so items sharing a group stay together; without
            groups every item is its own group. A and B are always resampled with the same indices.
        statistic: function of a 1-D float array returning a float; default: the mean. The default uses a
            vectorised path (per-group sums and counts, exact for the item mean of a cluster resample); a
            custom statistic is evaluated resample by resample. Both paths draw identical resamples for the
            same seed, so ``statistic=lambda x: float(np.mean(x))`` reproduces the default up to rounding.
        n_boot: number of bootstrap resamples (drawn in chunks to bound memory).
        ci: confidence level of the percentile interval, in (0, 1).
        seed: seed for ``numpy.random.default_rng``; the same seed and inputs give an identical result.

    Returns:
        A :class:`BootstrapResult` with ``estimate`` = the difference on the full data, ``low``/``high`` =
        the ``(1-ci)/2`` and ``1-(1-ci)/2`` quantiles of the bootstrap differences, and ``p_value`` =
        ``min(1, 2 * min(frac(diff <= 0), frac(diff >= 0)))`` over the bootstrap differences — a two-sided
        test of "difference = 0" whose resolution is ``1/n_boot`` (0.0 means no resample reached 0).

    Raises:
        ValueError: on empty input, length mismatches (the message gives both lengths), NaN in ``a``,
            ``b`` or ``groups``, bad ``n_boot``/``ci``, or a statistic that yields NaN.
    """
    a_arr = score_vector(a, "a")
    b_arr = score_vector(b, "b")
    _check_same_length(a=a_arr, b=b_arr)
    _check_options(n_boot, ci)
    codes, n_groups = _group_codes(groups, a_arr.size)
    rng = np.random.default_rng(seed)

    dist = np.empty(n_boot, dtype=np.float64)
    filled = 0
    if statistic is None:
        estimate = float(np.mean(a_arr) - np.mean(b_arr))
        diff_sums = np.bincount(codes, weights=a_arr - b_arr, minlength=n_groups)
        counts = np.bincount(codes, minlength=n_groups)
        for idx in _index_chunks(rng, n_boot, n_groups):
            k = idx.shape[0]
            dist[filled : filled + k] = diff_sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
            filled += k
    else:
        estimate = float(statistic(a_arr)) - float(statistic(b_arr))
        resampler = _Resampler(codes, n_groups)
        for idx in _index_chunks(rng, n_boot, n_groups):
            for row in idx:
                items = resampler.items(row)
                dist[filled] = float(statistic(a_arr[items])) - float(statistic(b_arr[items]))
                filled += 1
    if math.isnan(estimate) or np.isnan(dist).any():
        raise ValueError("statistic returned NaN on the data or on a bootstrap resample")
    return _summarise(estimate, dist, ci=ci, n_boot=n_boot, n_groups=n_groups, n_skipped=0, seed=seed)


def paired_bootstrap_metric(
    labels: Sequence[Any] | np.ndarray,
    scores_a: Sequence[Any] | np.ndarray,
    scores_b: Sequence[Any] | np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    groups: Sequence[Any] | np.ndarray | None = None,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int | None = 0,
) -> BootstrapResult:
    """Paired (cluster) bootstrap of ``metric(labels, scores_a) - metric(labels, scores_b)`` (A minus B).

    For whole-set metrics that do not decompose over items, such as AUROC or AP. Each resample draws
    groups (or items, without ``groups``) with replacement and recomputes the metric for both methods on
    the same resampled items.

    Args:
        labels: per-item ground truth, passed to ``metric`` unchanged (resampled); must not contain NaN.
        scores_a: per-item scores of method A.
        scores_b: per-item scores of method B, aligned item by item with ``scores_a`` and ``labels``.
        metric: ``metric(labels, scores) -> float``. A resample on which it raises ``ValueError`` (e.g.
            only one class drawn) or returns NaN for either method is skipped and counted in
            ``n_skipped``. On the full data it must succeed.
        groups: optional per-item group keys; whole groups are resampled together (cluster bootstrap).
        n_boot: number of resamples drawn, skipped ones included.
        ci: confidence level of the percentile interval, in (0, 1).
        seed: seed for ``numpy.random.default_rng``; the same seed and inputs give an identical result.

    Returns:
        A :class:`BootstrapResult`; interval and p-value are computed over the ``n_boot - n_skipped``
        kept resamples exactly as in :func:`paired_bootstrap`.

    Raises:
        ValueError: on empty input, length mismatches, NaN in any argument, bad ``n_boot``/``ci``, a NaN
            metric on the full data, or when every resample is skipped. A ``ValueError`` from ``metric`` on
            the full data propagates.
    """
    y = _as_1d(labels, "labels")
    if y.dtype.kind == "f" and np.isnan(y).any():
        raise ValueError("labels contains NaN")
    sa = score_vector(scores_a, "scores_a")
    sb = score_vector(scores_b, "scores_b")
    _check_same_length(labels=y, scores_a=sa, scores_b=sb)
    _check_options(n_boot, ci)
    codes, n_groups = _group_codes(groups, y.size)
    rng = np.random.default_rng(seed)

    estimate = float(metric(y, sa)) - float(metric(y, sb))
    if math.isnan(estimate):
        raise ValueError("metric returned NaN on the full data")

    resampler = _Resampler(codes, n_groups)
    kept: list[float] = []
    n_skipped = 0
    for idx in _index_chunks(rng, n_boot, n_groups):
        for row in idx:
            items = resampler.items(row)
            y_s = y[items]
            try:
                diff = float(metric(y_s, sa[items])) - float(metric(y_s, sb[items]))
            except ValueError:
                n_skipped += 1
                continue
            if math.isnan(diff):
                n_skipped += 1
                continue
            kept.append(diff)
    if not kept:
        raise ValueError(f"metric failed on all {n_boot} bootstrap resamples (e.g. a single class each time)")
    dist = np.asarray(kept, dtype=np.float64)
    return _summarise(estimate, dist, ci=ci, n_boot=n_boot, n_groups=n_groups, n_skipped=n_skipped, seed=seed)


# ---------------------------------------------------------------------------------------------- Holm


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the order of the input.

    With ``m`` p-values sorted ascending, the ``i``-th (1-based) adjusted value is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))`` (monotone step-down), then mapped back to input order.
    Rejecting where the adjusted value is ``<= alpha`` controls the family-wise error rate at ``alpha``.

    Args:
        p_values: 1-D p-values in [0, 1]. An empty input gives an empty array (an empty family).

    Raises:
        ValueError: on NaN, values outside [0, 1], or input that is not 1-D.
    """
    # Written by hand: statsmodels (multipletests) is not a dependency of vlmad.
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be a 1-D array, got shape {p.shape}")
    if p.size == 0:
        return np.empty(0, dtype=np.float64)
    if np.isnan(p).any():
        raise ValueError("p_values contains NaN")
    if ((p < 0.0) | (p > 1.0)).any():
        raise ValueError("p_values must lie in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m, dtype=np.float64)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


def holm_reject(p_values: Sequence[float] | np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Boolean array, in input order: which hypotheses Holm's procedure rejects at family-wise ``alpha``.

    Equivalent to ``holm(p_values) <= alpha``.

    Raises:
        ValueError: as :func:`holm`, or when ``alpha`` is not in (0, 1).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    return holm(p_values) <= alpha
