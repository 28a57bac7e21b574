"""Draw ground-truth mask outlines on images for reports."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Distinct outline colours (RGB), one per region in order.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 40, 40),
    (40, 220, 255),
    (255, 220, 0),
    (255, 0, 255),
    (0, 255, 120),
    (255, 140, 0),
)


def outline_masks(
    image: np.ndarray, masks: Sequence[np.ndarray], thickness: int | None = None, halo: bool = True
) -> np.ndarray:
    """A copy of ``image`` (H, W, 3 uint8 RGB) with the outline of each bool mask drawn in its own colour.

    With ``halo`` each outline gets a dark border first, so it stays visible on surfaces of its own colour.
    """
    out = image.copy()
    t = thickness or max(1, round(image.shape[0] / 200))
    for i, m in enumerate(masks):
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if halo:
            cv2.drawContours(out, contours, -1, (0, 0, 0), t + 2, lineType=cv2.LINE_AA)
        cv2.drawContours(out, contours, -1, PALETTE[i % len(PALETTE)], t, lineType=cv2.LINE_AA)
    return out
