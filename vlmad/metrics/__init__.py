"""Metrics: image and pixel ranking metrics, AUPRO, sPRO, verdict and thresholded metrics, thresholds,
paired statistics, and the evaluation that turns predictions into tables.

Entry points: :func:`auroc`, :func:`average_precision`, :func:`f1_max`, :func:`precision_at_recall`,
:func:`aupro` (arrays or iterables of maps), the streaming :class:`PixelMetrics` and :class:`SproMetrics`,
:func:`verdict_metrics`, :mod:`vlmad.metrics.threshold`, :mod:`vlmad.metrics.stats` and
:func:`vlmad.metrics.evaluate.evaluate`.
"""

from vlmad.metrics.pixel import PixelMetrics, PixelResult, aupro, pixel_metrics
from vlmad.metrics.ranking import (
    RankAccumulator,
    auroc,
    average_precision,
    f1_max,
    precision_at_recall,
    roc_curve,
)
from vlmad.metrics.spro import SproMetrics, SproResult
from vlmad.metrics.verdict import VerdictMetrics, threshold_metrics, verdict_metrics

__all__ = [
    "PixelMetrics",
    "PixelResult",
    "RankAccumulator",
    "SproMetrics",
    "SproResult",
    "VerdictMetrics",
    "aupro",
    "auroc",
    "average_precision",
    "f1_max",
    "pixel_metrics",
    "precision_at_recall",
    "roc_curve",
    "threshold_metrics",
    "verdict_metrics",
]
