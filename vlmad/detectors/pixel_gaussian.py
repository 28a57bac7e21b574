"""A trivial baseline: per-pixel colour statistics of the normal training images.

Every pixel position gets the mean and standard deviation of the (downscaled, blurred) normal images'
colour there; a test pixel's anomaly value is its largest per-channel z-score. It knows nothing about
objects or texture and only works where normal images are aligned, which makes it a floor that real
detectors must beat, not a detector from the literature.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vlmad.detectors.base import Detector, DetectorError, Progress, register

if TYPE_CHECKING:
    import torch


@register
class PixelGaussian(Detector):
    """Per-pixel Gaussian on colour. ``fit`` on at least two normal images; maps are max z-scores."""

    method = "pixel-gaussian"
    label = "pixel-gaussian (trivial baseline)"
    name = label
    uses_backbone = False

    def __init__(self, size: int = 64, blur_sigma: float = 1.0, eps: float = 4.0) -> None:
        self.size = size
        self.blur_sigma = blur_sigma
        self.eps = eps

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        import cv2

        small = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA).astype(np.float32)
        return cv2.GaussianBlur(small, (0, 0), self.blur_sigma)

    def _fit(self, images: list[np.ndarray], progress: Progress | None) -> None:
        if len(images) < 2:
            raise DetectorError(f"{self.method}: need at least 2 normal images to fit, got {len(images)}")
        stack = np.stack([self._prepare(im) for im in images])
        self.mean_ = stack.mean(axis=0)
        self.std_ = stack.std(axis=0) + self.eps

    def _predict(
        self, images: list[np.ndarray], progress: Progress | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        import cv2

        maps = []
        for im in images:
            z = (np.abs(self._prepare(im) - self.mean_) / self.std_).max(axis=2)
            z = cv2.resize(z, (im.shape[1], im.shape[0]), interpolation=cv2.INTER_LINEAR)
            maps.append(cv2.GaussianBlur(z, (0, 0), 2.0).astype(np.float32))
        return np.array([float(m.max()) for m in maps]), maps

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        import torch

        return {"mean": torch.from_numpy(self.mean_), "std": torch.from_numpy(self.std_)}, {}

    def _set_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        mean, std = tensors["mean"].numpy(), tensors["std"].numpy()
        if mean.shape != (self.size, self.size, 3) or std.shape != mean.shape:
            raise ValueError(f"statistics of shape {mean.shape}, expected {(self.size, self.size, 3)}")
        self.mean_, self.std_ = mean, std
