"""A trivial baseline: per-pixel colour statistics of the normal training images.

Every pixel position gets the mean and standard deviation of the (downscaled, blurred) normal images'
colour there; a test pixel's anomaly value is its largest per-channel z-score. It knows nothing about
objects or texture and only works where normal images are aligned, which makes it a floor that real
detectors must beat, not a detector from the literature. The demo uses it to exercise the evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PixelGaussian:
    """Per-pixel Gaussian on colour. ``fit(images)`` on normal RGB uint8 images, then ``predict(images)``
    returns ``(scores, maps)``: per-image max of the map and float32 maps at each image's own size."""

    name = "pixel-gaussian (trivial baseline)"

    def __init__(self, size: int = 64, blur_sigma: float = 1.0, eps: float = 4.0) -> None:
        self.size = size
        self.blur_sigma = blur_sigma
        self.eps = eps

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        import cv2

        small = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA).astype(np.float32)
        return cv2.GaussianBlur(small, (0, 0), self.blur_sigma)

    def fit(self, images: Sequence[np.ndarray]) -> PixelGaussian:
        if len(images) < 2:
            raise ValueError(f"need at least 2 normal images to fit, got {len(images)}")
        stack = np.stack([self._prepare(im) for im in images])
        self.mean_ = stack.mean(axis=0)
        self.std_ = stack.std(axis=0) + self.eps
        return self

    def predict_one(self, image: np.ndarray) -> np.ndarray:
        """The float32 anomaly map of one image, at the image's size."""
        import cv2

        z = np.abs(self._prepare(image) - self.mean_) / self.std_
        amap = z.max(axis=2)
        amap = cv2.resize(amap, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        return cv2.GaussianBlur(amap, (0, 0), 2.0).astype(np.float32)

    def predict(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        maps = [self.predict_one(im) for im in images]
        return np.array([float(m.max()) for m in maps]), maps
