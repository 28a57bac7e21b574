"""MVTec LOCO AD's saturated per-region overlap (sPRO) and its area, AU-sPRO, streamed one map at a time.

In MVTec LOCO each ground-truth mask file of a test image is one defect region ``A`` with a defect type
from ``defects_config.json``. Its saturation area is ``s = t * |A|`` when the type's saturation is
relative, else ``s = min(t, |A|)``. At a threshold, the region's sPRO is ``min(|P ∩ A| / s, 1)`` where
``P`` is the set of pixels whose score reaches the threshold; sPRO is the mean over all regions; FPR is
the fraction of pixels that lie in no region of their image (over all images, good ones included) that
reach the threshold. AU-sPRO is the area under sPRO over FPR up to a limit, divided by the limit.

Because ``min(count / s, 1)`` only grows while a region's ``ceil(s)`` highest-scoring pixels are being
passed, each region pixel gets the increment its rank within the region contributes; summing those
increments in score order gives the exact sPRO curve at every distinct score (the official evaluator
samples it at a fixed set of thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vlmad.metrics.pixel import pro_area
from vlmad.metrics.ranking import DEFAULT_BITS, DEFAULT_MAX_EXACT, RankAccumulator, check_scores
from vlmad.records import DefectConfig

SPRO_LIMITS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.3, 1.0)


def saturation_area(area: int, config: DefectConfig) -> float:
    """The number of covered pixels at which a region of ``area`` pixels counts as fully found."""
    if config.relative_saturation:
        return config.saturation_threshold * area
    return min(config.saturation_threshold, float(area))


def region_increments(scores: np.ndarray, saturation: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel sPRO increments of one region: ``(order, w)`` with ``w[i]`` the increment of pixel
    ``order[i]`` (pixels in descending score order), ``sum(w) == 1``."""
    order = np.argsort(scores, kind="stable")[::-1]
    rank = np.arange(1, scores.size + 1, dtype=np.float64)
    cum = np.minimum(rank, saturation) / saturation
    return order, np.diff(cum, prepend=0.0)


@dataclass(frozen=True)
class SproResult:
    """AU-sPRO at each FPR limit (NaN without any region or without any defect-free pixel)."""

    au_spro: dict[float, float]
    n_images: int
    n_regions: int
    binned: bool
    skipped_regions: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "au_spro": {str(k): v for k, v in self.au_spro.items()},
            "n_images": self.n_images,
            "n_regions": self.n_regions,
            "binned": self.binned,
            "skipped_regions": self.skipped_regions,
        }


class SproMetrics:
    """Streaming AU-sPRO. ``update(amap, regions)`` with ``regions`` a list of (bool mask, DefectConfig).

    Memory as :class:`~vlmad.metrics.pixel.PixelMetrics`: exact up to ``max_exact`` pixels, then bounded
    histograms.
    """

    def __init__(
        self,
        limits: Sequence[float] = SPRO_LIMITS,
        max_exact: int | None = DEFAULT_MAX_EXACT,
        bits: int = DEFAULT_BITS,
    ) -> None:
        for lim in limits:
            if not 0 < lim <= 1:
                raise ValueError(f"FPR limits must be in (0, 1], got {lim}")
        self.limits = tuple(limits)
        self._acc = RankAccumulator(channels=1, max_exact=max_exact, bits=bits)
        self.n_images = 0
        self.n_regions = 0
        self.skipped_regions = 0

    def update(self, amap: np.ndarray, regions: Sequence[tuple[np.ndarray, DefectConfig]] = ()) -> None:
        """Add one image: its 2-D map and its defect regions (none for a good image).

        A region mask of another shape than the map raises ValueError; an empty region (no pixel) cannot
        be found at any threshold and is counted in ``skipped_regions`` rather than silently dropped.
        """
        amap = np.asarray(amap, dtype=np.float32)
        if amap.ndim != 2:
            raise ValueError(f"an anomaly map is 2-D, got shape {amap.shape}")
        flat = check_scores(amap.reshape(-1), f"anomaly map values (image {self.n_images})")
        defect = np.zeros(flat.size, dtype=bool)
        weight = np.zeros(flat.size, dtype=np.float64)
        for mask, config in regions:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != amap.shape:
                raise ValueError(
                    f"region mask {mask.shape} and map {amap.shape} differ in shape (image {self.n_images})"
                )
            idx = np.flatnonzero(mask.reshape(-1))
            if idx.size == 0:
                self.skipped_regions += 1
                continue
            order, inc = region_increments(flat[idx], saturation_area(idx.size, config))
            weight[idx[order]] += inc
            defect[idx] = True
            self.n_regions += 1
        self._acc.update(flat, ~defect, weight.reshape(1, -1))
        self.n_images += 1

    def compute(self) -> SproResult:
        curve = self._acc.compute()
        usable = self.n_regions > 0 and curve.n_negative > 0
        values = {lim: pro_area(curve, lim) if usable else float("nan") for lim in self.limits}
        return SproResult(
            au_spro=values,
            n_images=self.n_images,
            n_regions=self.n_regions,
            binned=curve.binned,
            skipped_regions=self.skipped_regions,
        )
