"""One streaming engine for every ranking metric: ROC, precision-recall and per-region overlap curves.

Image and pixel AUROC, average precision, F1-max, precision at full recall, AUPRO and sPRO are all read
off one curve: walk the scores from the highest to the lowest and, at each distinct score, accumulate
how many *negative* items (normal images or defect-free pixels), how many *positive* items, and how much
of each extra weight channel (AUPRO: ``1/|region|`` per defect pixel; sPRO: the saturated overlap
increment) have a score at or above it.

:class:`RankAccumulator` collects items through :meth:`~RankAccumulator.update` and builds the
:class:`Curve` in :meth:`~RankAccumulator.compute`. It is exact (ties grouped the way scikit-learn
groups them) while it holds at most ``max_exact`` items (about 5 bytes each, plus 16 per non-zero
weight); past that it folds everything into fixed histograms keyed on the float32 bit pattern of the score
(``2**bits`` bins, relative bin width ``2**-(bits - 9)``), so memory stays bounded however many maps
stream through. A binned curve says so (``Curve.binned``) and carries the largest AUROC error its ties
can cause (``Curve.auroc_error_bound``).

Written here rather than taken from scikit-learn because scikit-learn has neither streaming, weighted
overlap channels, nor a bounded-memory mode, and its stable ``argsort`` is several times slower than
the single ``uint64`` sort used below (see ``bench/metrics.py``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_EXACT = 2**25
DEFAULT_BITS = 20


def check_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    """Return ``scores`` as a 1-D float array; raise ValueError when any is NaN (says how many and where)."""
    arr = np.asarray(scores)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numbers, got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    arr = arr.reshape(-1)
    bad = np.isnan(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        more = f" (and {int(bad.sum()) - 1} more)" if bad.sum() > 1 else ""
        raise ValueError(f"{name}[{first}] is NaN{more}")
    return arr


def score_vector(values: object, name: str = "scores") -> np.ndarray:
    """``values`` as a non-empty 1-D float64 array; ValueError naming ``name`` when it is not 1-D, empty,
    not numbers, or holds NaN. The one score check every metric module uses."""
    if isinstance(values, str | bytes):
        raise ValueError(f"{name} must be a sequence of numbers, got a string")
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numbers: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return check_scores(arr, name).astype(np.float64, copy=False)


def check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a 1-D bool array (True = anomalous); accept bools or 0/1 numbers."""
    arr = np.asarray(labels).reshape(-1)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf" or not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be booleans or 0/1 (1 = anomalous)")
    return arr.astype(bool)


def _float_keys(scores: np.ndarray) -> np.ndarray:
    """Map float32 scores to uint32 keys with the same order (-0.0 and 0.0 share a key)."""
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    negative = bits >> np.uint32(31) == 1
    return np.where(negative, ~bits, bits | np.uint32(0x80000000))


_NEG_INF_KEY = np.uint32(0x007FFFFF)  # _float_keys(-inf)


def _keys_to_float(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys, dtype=np.uint32)
    positive = keys >> np.uint32(31) == 1
    bits = np.where(positive, keys & np.uint32(0x7FFFFFFF), ~keys)
    return bits.view(np.float32).astype(np.float64)


@dataclass(frozen=True)
class Curve:
    """Cumulative counts at each distinct score, highest score first.

    ``thresholds[i]`` is a score (binned: the lower edge of a bin); the items "at or above" it are those
    with ``score >= thresholds[i]``. ``fps[i]`` / ``pps[i]`` count negative / positive items there,
    ``weights[c, i]`` sums weight channel ``c``. All arrays are float64 and non-decreasing.
    """

    thresholds: np.ndarray
    fps: np.ndarray
    pps: np.ndarray
    weights: np.ndarray
    binned: bool
    auroc_error_bound: float = 0.0

    @property
    def n_negative(self) -> float:
        return float(self.fps[-1]) if self.fps.size else 0.0

    @property
    def n_positive(self) -> float:
        return float(self.pps[-1]) if self.pps.size else 0.0


class RankAccumulator:
    """Streaming store of (score, negative flag, weight channels) items; see the module docstring.

    ``update`` takes 1-D scores, a same-length boolean ``negative`` (True for normal items, False for
    anomalous ones), and ``weights`` of shape ``(channels, n)`` (non-negative floats, usually zero on most
    items: only their non-zero entries are kept). Memory is bounded by ``max_exact`` items in exact mode
    (about 5 bytes per item plus 16 per non-zero weight; ``compute`` needs about 30 more bytes per item
    while it runs) and by ``(2 + channels) * 8 * 2**bits`` bytes once binned.
    """

    def __init__(
        self, channels: int = 0, max_exact: int | None = DEFAULT_MAX_EXACT, bits: int = DEFAULT_BITS
    ):
        if not 8 <= bits <= 24:
            raise ValueError(f"bits must be between 8 and 24, got {bits}")
        self.channels = channels
        self.max_exact = max_exact
        self.bits = bits
        self._scores: list[np.ndarray] = []
        self._negative: list[np.ndarray] = []
        # per chunk and channel: (positions within the chunk, values) of the non-zero weights
        self._weights: list[list[tuple[np.ndarray, np.ndarray]]] = []
        self._n = 0
        self._hist: np.ndarray | None = None  # (2 + channels, 2**bits): negatives, positives, channels

    def __len__(self) -> int:
        return self._n

    @property
    def binned(self) -> bool:
        return self._hist is not None

    def update(self, scores: np.ndarray, negative: np.ndarray, weights: np.ndarray | None = None) -> None:
        scores = check_scores(scores)
        negative = np.asarray(negative, dtype=bool).reshape(-1)
        if negative.shape != scores.shape:
            raise ValueError(f"{scores.size} scores but {negative.size} labels")
        sparse: list[tuple[np.ndarray, np.ndarray]] = []
        if self.channels:
            if weights is None:
                raise ValueError(f"this accumulator needs {self.channels} weight channel(s)")
            weights = np.asarray(weights, dtype=np.float64).reshape(self.channels, -1)
            if weights.shape[1] != scores.size:
                raise ValueError(f"{scores.size} scores but weights for {weights.shape[1]} items")
            for c in range(self.channels):
                nz = np.flatnonzero(weights[c])
                sparse.append((nz, weights[c][nz]))
        if scores.dtype != np.float32:
            scores = scores.astype(np.float64)
        self._n += scores.size
        if self._hist is None and (self.max_exact is None or self._n <= self.max_exact):
            self._scores.append(scores)
            self._negative.append(negative)
            self._weights.append(sparse)
            return
        if self._hist is None:
            self._hist = np.zeros((2 + self.channels, 2**self.bits), dtype=np.float64)
            for chunk in zip(self._scores, self._negative, self._weights, strict=True):
                self._add_to_hist(*chunk)
            self._scores, self._negative, self._weights = [], [], []
        self._add_to_hist(scores, negative, sparse)

    def _add_to_hist(
        self, scores: np.ndarray, negative: np.ndarray, sparse: list[tuple[np.ndarray, np.ndarray]]
    ) -> None:
        assert self._hist is not None
        size = 2**self.bits
        bins = (_float_keys(scores) >> np.uint32(32 - self.bits)).astype(np.intp)
        self._hist[0] += np.bincount(bins, weights=negative, minlength=size)
        self._hist[1] += np.bincount(bins, weights=~negative, minlength=size)
        for c, (pos, val) in enumerate(sparse):
            self._hist[2 + c] += np.bincount(bins[pos], weights=val, minlength=size)

    def compute(self) -> Curve:
        """Build the :class:`Curve` over everything seen so far (the accumulator stays usable).

        Exact mode keeps the points where the curve can turn: every distinct score held by a positive
        item or a non-zero weight, and the last score of each run of scores held by negatives only.
        Areas, AP, F1-max and precision at a recall equal those on the full list of distinct scores.
        """
        if self._hist is not None:
            return self._binned_curve()
        if not self._scores:
            empty = np.zeros(0)
            return Curve(empty, empty, empty, np.zeros((self.channels, 0)), binned=False)
        n = self._n
        if len(self._negative) > 1:  # consolidate once, so later calls do not hold two copies
            self._negative = [np.concatenate(self._negative)]
        negative = self._negative[0]
        order, change, values_at = _descending(self._scores, n)
        ends = np.empty(int(np.count_nonzero(change)) + 1, dtype=np.int64)  # last position of each group
        ends[:-1] = np.flatnonzero(change)
        ends[-1] = n - 1
        del change
        neg_sorted = np.empty(n, dtype=bool)
        for a in range(0, n, _CHUNK):
            neg_sorted[a : a + _CHUNK] = negative[order[a : a + _CHUNK]]
        pos_at = np.flatnonzero(~neg_sorted)  # sorted positions of the positive items
        del neg_sorted
        channel_at: list[np.ndarray] = []
        channel_cum: list[np.ndarray] = []
        if self.channels:
            rank = np.empty(n, dtype=np.int64)  # sorted position of each original index
            for a in range(0, n, _CHUNK):
                rank[order[a : a + _CHUNK]] = np.arange(a, min(a + _CHUNK, n))
            offsets = np.cumsum([0] + [s.size for s in self._scores])
            for c in range(self.channels):
                pos = rank[
                    np.concatenate([w[c][0] + off for w, off in zip(self._weights, offsets, strict=False)])
                ]
                val = np.concatenate([w[c][1] for w in self._weights])
                o = np.argsort(pos, kind="stable")
                channel_at.append(pos[o])
                channel_cum.append(np.cumsum(val[o]))
            del rank
        active = np.unique(np.searchsorted(ends, np.concatenate([pos_at, *channel_at])))
        kept_groups = np.unique(np.concatenate([active, active - 1, [ends.size - 1]]))
        kept = ends[kept_groups[kept_groups >= 0]]
        pps = np.searchsorted(pos_at, kept, side="right").astype(np.float64)
        fps = (kept + 1) - pps
        chans = np.zeros((self.channels, kept.size))
        for c in range(self.channels):
            if channel_at[c].size:
                i = np.searchsorted(channel_at[c], kept, side="right") - 1
                chans[c] = np.where(i >= 0, channel_cum[c][np.maximum(i, 0)], 0.0)
        return Curve(values_at(kept), fps, pps, chans, binned=False)

    def _binned_curve(self) -> Curve:
        assert self._hist is not None
        used = np.flatnonzero(self._hist[:2].sum(axis=0) > 0)[::-1]
        hist = self._hist[:, used]
        # the lowest bin's edge would decode past -inf into NaN bit patterns: clamp it to -inf's key
        edges = _keys_to_float(np.maximum(used.astype(np.uint32) << np.uint32(32 - self.bits), _NEG_INF_KEY))
        cum = np.cumsum(hist, axis=1)
        n_neg, n_pos = cum[0, -1], cum[1, -1]
        bound = float((hist[0] * hist[1]).sum() / (2 * n_neg * n_pos)) if n_neg and n_pos else 0.0
        return Curve(edges, cum[0], cum[1], cum[2:], binned=True, auroc_error_bound=bound)


_CHUNK = 1 << 20


def _descending(
    chunks: list[np.ndarray], n: int
) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Sort the scores in ``chunks`` from highest to lowest.

    Returns ``order`` (original index at each sorted position), ``change`` (``change[i]``: sorted
    positions ``i`` and ``i + 1`` hold different scores) and a function giving the score at sorted
    positions. float32 scores are sorted as one ``uint64`` array filled chunk by chunk (order-preserving
    key in the high half, original index in the low half): several times faster than ``argsort``, and
    without full-size temporaries.
    """
    if all(c.dtype == np.float32 for c in chunks) and n < 2**32:
        packed = np.empty(n, dtype=np.uint64)
        halves = packed.view(np.uint32).reshape(n, 2)
        lo, hi = (0, 1) if sys.byteorder == "little" else (1, 0)
        off = 0
        for c in chunks:
            halves[off : off + c.size, hi] = _float_keys(c)
            halves[off : off + c.size, lo] = np.arange(off, off + c.size, dtype=np.uint32)
            off += c.size
        packed.sort()
        desc = halves[::-1]
        keys = desc[:, hi]
        return desc[:, lo], keys[1:] != keys[:-1], lambda pos: _keys_to_float(keys[pos])
    scores = np.concatenate(chunks).astype(np.float64, copy=False)
    order = np.argsort(scores, kind="stable")[::-1]
    ordered = scores[order]
    return order, ordered[1:] != ordered[:-1], lambda pos: ordered[pos]


# --- reading metrics off a curve ---------------------------------------------------------------------


def roc_points(curve: Curve, channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) starting at (0, 0); TPR uses positives, or weight ``channel`` normalised by its total."""
    if curve.n_negative == 0:
        raise ValueError("undefined without normal (negative) items")
    tp = curve.pps if channel is None else curve.weights[channel]
    total = tp[-1] if tp.size else 0.0
    if total == 0:
        raise ValueError("undefined without anomalous (positive) items")
    fpr = np.concatenate(([0.0], curve.fps / curve.n_negative))
    tpr = np.concatenate(([0.0], tp / total))
    return fpr, tpr


def area_under(fpr: np.ndarray, tpr: np.ndarray, limit: float = 1.0) -> float:
    """Trapezoidal area under a curve with non-decreasing ``fpr`` up to ``limit``, divided by ``limit``.

    The point at ``fpr == limit`` is linearly interpolated, as in the MVTec AD / LOCO evaluators.
    """
    if not 0 < limit <= 1:
        raise ValueError(f"FPR limit must be in (0, 1], got {limit}")
    if limit < 1:
        cut = int(np.searchsorted(fpr, limit, side="right"))
        if cut < fpr.size:
            x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], tpr[cut - 1], tpr[cut]
            y = y0 + (y1 - y0) * (limit - x0) / (x1 - x0) if x1 > x0 else y1
            fpr = np.append(fpr[:cut], limit)
            tpr = np.append(tpr[:cut], y)
    return float(np.trapezoid(tpr, fpr) / limit)


def curve_auroc(curve: Curve) -> float:
    fpr, tpr = roc_points(curve)
    return area_under(fpr, tpr)


def pr_points(curve: Curve) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) at each threshold, highest threshold first."""
    if curve.n_positive == 0:
        raise ValueError("undefined without anomalous (positive) items")
    tp, fp = curve.pps, curve.fps
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 1.0)
    return precision, tp / curve.n_positive


def curve_average_precision(curve: Curve) -> float:
    """Step-wise AP as scikit-learn defines it: sum over thresholds of (R_i - R_{i-1}) * P_i."""
    precision, recall = pr_points(curve)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def curve_f1_max(curve: Curve) -> tuple[float, float]:
    """Best F1 over thresholds and the highest threshold reaching it (anomalous iff score >= threshold)."""
    if curve.n_positive == 0:
        raise ValueError("undefined without anomalous (positive) items")
    f1 = 2 * curve.pps / (curve.pps + curve.fps + curve.n_positive)
    best = int(np.argmax(f1))
    return float(f1[best]), float(curve.thresholds[best])


def curve_precision_at_recall(curve: Curve, recall: float = 1.0) -> tuple[float, float]:
    """Precision at the highest threshold whose recall reaches ``recall``, and that threshold."""
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    precision, rec = pr_points(curve)
    i = int(np.searchsorted(rec, recall - 1e-12, side="left"))
    i = min(i, rec.size - 1)
    return float(precision[i]), float(curve.thresholds[i])


# --- functional API on arrays --------------------------------------------------------------------------


def rank_curve(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> Curve:
    """The exact :class:`Curve` of labelled scores (True/1 = anomalous), validated."""
    y = check_labels(np.asarray(labels))
    s = check_scores(np.asarray(scores))
    if y.size != s.size:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if y.size == 0:
        raise ValueError("no samples")
    acc = RankAccumulator(max_exact=None)
    acc.update(s, ~y)
    return acc.compute()


def auroc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (ties count half, as in scikit-learn). Labels: True/1 = anomalous.

    Raises ValueError on NaN scores, mismatched lengths, or when only one class is present.
    """
    return curve_auroc(rank_curve(labels, scores))


def average_precision(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Average precision (area under the PR curve, step-wise as scikit-learn); anomalous = positive."""
    return curve_average_precision(rank_curve(labels, scores))


def f1_max(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """``(best F1, threshold)`` over all thresholds; anomalous iff ``score >= threshold``."""
    return curve_f1_max(rank_curve(labels, scores))


def precision_at_recall(
    labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray, recall: float = 1.0
) -> float:
    """Precision at the highest threshold that reaches ``recall`` (1.0: the threshold missing no anomaly)."""
    return curve_precision_at_recall(rank_curve(labels, scores), recall)[0]


def roc_curve(
    labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) arrays from (0, 0) to (1, 1)."""
    return roc_points(rank_curve(labels, scores))
