"""Small generated images for detector tests: a regular textured surface and clear structural defects.

Normal images share one texture (oriented stripes plus a grid of dots) with small random shifts and noise;
a defect is a dark scratch or a bright blob drawn on a normal image, with its mask. Sizes are small so that a
random-backbone detector fits and predicts in about a second on CPU.
"""

from __future__ import annotations

import numpy as np

SIZE = 64
# the backbone every detector test uses: small, random (no download), fixed seed
TINY_BACKBONE = {"backbone": "resnet18", "layers": (2, 3), "weights": "random", "seed": 0, "image_size": 64}


def normal_image(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = rng.uniform(-1.5, 1.5, 2)
    stripes = 0.5 + 0.5 * np.sin((x + dx + 0.5 * (y + dy)) * 0.6)
    dots = ((np.mod(x + dx, 8) - 4) ** 2 + (np.mod(y + dy, 8) - 4) ** 2 < 3).astype(np.float32)
    base = 90 + 60 * stripes + 40 * dots + rng.normal(0, 4, (size, size))
    rgb = np.stack([base, base * 0.9 + 10, base * 0.8 + 20], axis=2)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def defect_image(seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A normal image with a defect (dark scratch or bright blob) and its boolean mask."""
    rng = np.random.default_rng(10_000 + seed)
    img = normal_image(50_000 + seed, size).astype(np.float32)
    mask = np.zeros((size, size), bool)
    y, x = np.mgrid[0:size, 0:size]
    cx, cy = rng.integers(size // 4, 3 * size // 4, 2)
    if seed % 2 == 0:
        r = size // 8
        mask = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
        img[mask] = [250, 60, 40]
    else:
        angle = rng.uniform(0, np.pi)
        dist = np.abs((x - cx) * np.sin(angle) - (y - cy) * np.cos(angle))
        along = np.abs((x - cx) * np.cos(angle) + (y - cy) * np.sin(angle))
        mask = (dist <= 1.5) & (along <= size // 4)
        img[mask] = 10
    return np.clip(img, 0, 255).astype(np.uint8), mask


def dataset(n_train: int = 10, n_good: int = 6, n_bad: int = 6, size: int = SIZE):
    """``(train, test, labels, masks)``: normal training images, test images, 0/1 labels, masks."""
    train = [normal_image(i, size) for i in range(n_train)]
    test = [normal_image(1000 + i, size) for i in range(n_good)]
    masks = [np.zeros((size, size), bool) for _ in range(n_good)]
    for i in range(n_bad):
        im, m = defect_image(i, size)
        test.append(im)
        masks.append(m)
    labels = np.array([0] * n_good + [1] * n_bad)
    return train, test, labels, masks
