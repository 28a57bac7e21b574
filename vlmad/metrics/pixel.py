"""Pixel-level metrics: AUROC, AP, F1-max and AUPRO, streamed one map at a time.

AUPRO follows the MVTec AD evaluator: the ground truth of each image is split into connected components
(8-connectivity); at every threshold, PRO is the mean over all components of the fraction of the
component covered by the thresholded map, FPR is the fraction of defect-free pixels above the threshold;
the area under PRO over FPR up to ``fpr_limit`` (default 0.3), divided by the limit, is AUPRO. The curve
is exact (every distinct score is a threshold), not sampled at a fixed number of thresholds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from vlmad.metrics.ranking import (
    DEFAULT_BITS,
    DEFAULT_MAX_EXACT,
    Curve,
    RankAccumulator,
    area_under,
    check_scores,
    curve_auroc,
    curve_average_precision,
    curve_f1_max,
    roc_points,
)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask (8-connectivity): an int32 label image and their number."""
    import cv2

    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    return labels, n - 1


def check_pair(mask: np.ndarray, amap: np.ndarray, where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validate one (mask, map) pair: same 2-D shape, finite map. Returns (bool mask, float32 map)."""
    mask = np.asarray(mask)
    amap = np.asarray(amap)
    at = f" ({where})" if where else ""
    if mask.ndim != 2 or amap.ndim != 2:
        raise ValueError(f"mask and map must be 2-D, got {mask.shape} and {amap.shape}{at}")
    if mask.shape != amap.shape:
        raise ValueError(f"mask shape {mask.shape} differs from map shape {amap.shape}{at}; resize the map")
    check_scores(amap.reshape(-1), f"anomaly map values{at}")
    return mask.astype(bool), amap.astype(np.float32, copy=False)


@dataclass(frozen=True)
class PixelResult:
    """Pixel-level metrics of a set of maps. NaN where undefined (e.g. AUPRO without any defect pixel)."""

    auroc: float
    ap: float
    f1_max: float
    f1_threshold: float
    aupro: float
    fpr_limit: float
    n_images: int
    n_pixels: int
    n_defect_pixels: int
    n_regions: int
    binned: bool
    auroc_error_bound: float

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


class PixelMetrics:
    """Streaming pixel AUROC / AP / F1-max / AUPRO (torchmetrics style: ``update`` then ``compute``).

    Memory: exact while at most ``max_exact`` pixels were seen (about 13 bytes each, plus about 30 bytes
    each while computing); beyond that the pixels are folded into histograms of ``2**bits`` bins and
    memory stays at about ``32 * 2**bits`` bytes however many maps follow (``PixelResult.binned``).
    """

    def __init__(
        self, fpr_limit: float = 0.3, max_exact: int | None = DEFAULT_MAX_EXACT, bits: int = DEFAULT_BITS
    ) -> None:
        if not 0 < fpr_limit <= 1:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
        self.fpr_limit = fpr_limit
        self._acc = RankAccumulator(channels=1, max_exact=max_exact, bits=bits)
        self.n_images = 0
        self.n_regions = 0

    def update(self, mask: np.ndarray, amap: np.ndarray) -> None:
        """Add one image (2-D mask and map of equal shape) or a batch of shape (N, H, W)."""
        mask = np.asarray(mask)
        amap = np.asarray(amap)
        if mask.ndim == 3 and amap.ndim == 3 and mask.shape[0] == amap.shape[0]:
            for i in range(mask.shape[0]):
                self.update(mask[i], amap[i])
            return
        mask, amap = check_pair(mask, amap, f"image {self.n_images}")
        labels, n = components(mask)
        pro = np.zeros(mask.shape, dtype=np.float64)
        if n:
            areas = np.bincount(labels.reshape(-1), minlength=n + 1).astype(np.float64)
            inv = np.zeros(n + 1, dtype=np.float64)
            inv[1:] = 1.0 / areas[1:]
            pro = inv[labels]
        self._acc.update(amap.reshape(-1), ~mask.reshape(-1), pro.reshape(1, -1))
        self.n_images += 1
        self.n_regions += n

    def curve(self) -> Curve:
        return self._acc.compute()

    def compute(self) -> PixelResult:
        curve = self._acc.compute()
        has_both = curve.n_positive > 0 and curve.n_negative > 0
        nan = float("nan")
        auroc = curve_auroc(curve) if has_both else nan
        ap = curve_average_precision(curve) if curve.n_positive > 0 else nan
        f1, thr = curve_f1_max(curve) if curve.n_positive > 0 else (nan, nan)
        aupro = pro_area(curve, self.fpr_limit) if has_both else nan
        return PixelResult(
            auroc=auroc,
            ap=ap,
            f1_max=f1,
            f1_threshold=thr,
            aupro=aupro,
            fpr_limit=self.fpr_limit,
            n_images=self.n_images,
            n_pixels=len(self._acc),
            n_defect_pixels=int(curve.n_positive),
            n_regions=self.n_regions,
            binned=curve.binned,
            auroc_error_bound=curve.auroc_error_bound,
        )


def pro_area(curve: Curve, fpr_limit: float, channel: int = 0) -> float:
    """Normalised area under the overlap channel's curve (PRO or sPRO) over FPR, up to ``fpr_limit``."""
    fpr, pro = roc_points(curve, channel=channel)
    return area_under(fpr, pro, fpr_limit)


def _pairs(masks: Iterable[np.ndarray] | np.ndarray, maps: Iterable[np.ndarray] | np.ndarray):
    if isinstance(masks, np.ndarray) and isinstance(maps, np.ndarray) and masks.shape != maps.shape:
        raise ValueError(f"masks shape {masks.shape} differs from maps shape {maps.shape}")
    return zip(masks, maps, strict=True)


def pixel_metrics(
    masks: Iterable[np.ndarray] | np.ndarray,
    maps: Iterable[np.ndarray] | np.ndarray,
    fpr_limit: float = 0.3,
    max_exact: int | None = DEFAULT_MAX_EXACT,
) -> PixelResult:
    """All pixel metrics for boolean masks and float maps, arrays of shape (N, H, W) or iterables of 2-D
    arrays (consumed one pair at a time; see :class:`PixelMetrics` for the memory bound)."""
    metric = PixelMetrics(fpr_limit=fpr_limit, max_exact=max_exact)
    for mask, amap in _pairs(masks, maps):
        metric.update(mask, amap)
    if metric.n_images == 0:
        raise ValueError("no masks and maps given")
    return metric.compute()


def aupro(
    masks: Iterable[np.ndarray] | np.ndarray, maps: Iterable[np.ndarray] | np.ndarray, fpr_limit: float = 0.3
) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by the limit (MVTec AD AUPRO).

    ``masks``: booleans, ``maps``: floats, both (N, H, W) or iterables of (H, W). Raises ValueError when
    there is no defect pixel or no defect-free pixel, on NaN values and on shape mismatches.
    """
    result = pixel_metrics(masks, maps, fpr_limit=fpr_limit)
    if np.isnan(result.aupro):
        raise ValueError("AUPRO needs at least one defect pixel and one defect-free pixel")
    return result.aupro
