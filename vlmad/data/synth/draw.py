"""Drawing primitives shared by the procedural categories (OpenCV on uint8 RGB arrays).

Everything that draws takes the image to draw on and a ``numpy.random.Generator`` and modifies the image
in place. Defect drawers return the boolean mask of the pixels they changed (never empty, always inside
``within``), which becomes the region's ground truth. Geometry is given in pixels of the image being drawn;
categories derive it from the image size so any size works.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

Color = tuple[int, int, int]


# ---------------------------------------------------------------------------- colours and textures
def jitter_color(rng: np.random.Generator, color: Sequence[int], amount: float = 12.0) -> Color:
    """``color`` with each channel moved by a normal jitter of standard deviation ``amount``, clipped."""
    c = np.clip(np.asarray(color, dtype=np.float64) + rng.normal(0.0, amount, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def noise_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 8) -> np.ndarray:
    """Smooth noise in [-1, 1] of ``shape``: a ``cells`` x ``cells`` random grid upsampled bicubically."""
    h, w = shape
    grid = rng.uniform(-1.0, 1.0, (max(2, cells), max(2, cells))).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(field, -1.0, 1.0)


def textured_fill(
    img: np.ndarray,
    mask: np.ndarray,
    color: Sequence[int],
    rng: np.random.Generator,
    amp: float = 10.0,
    cells: int = 8,
    grain: float = 3.0,
) -> None:
    """Fill ``mask`` with ``color`` modulated by smooth noise (``amp``) and pixel grain (``grain``)."""
    h, w = mask.shape
    field = noise_field(rng, (h, w), cells) * amp
    if grain > 0:
        field = field + rng.normal(0.0, grain, (h, w)).astype(np.float32)
    layer = np.clip(np.asarray(color, np.float32)[None, None, :] + field[..., None], 0, 255).astype(np.uint8)
    img[mask] = layer[mask]


def background(
    rng: np.random.Generator, size: int, color: Sequence[int], amp: float = 8.0, cells: int = 6
) -> np.ndarray:
    """A ``size`` x ``size`` RGB image of ``color`` with a smooth texture."""
    img = np.empty((size, size, 3), np.uint8)
    textured_fill(img, np.ones((size, size), bool), color, rng, amp=amp, cells=cells)
    return img


def shade_vertical(img: np.ndarray, mask: np.ndarray, strength: float = 0.15) -> None:
    """Darken ``mask`` progressively from top to bottom of its bounding box (a simple 3D cue)."""
    ys, _ = np.nonzero(mask)
    if ys.size == 0:
        return
    y0, y1 = ys.min(), ys.max() + 1
    ramp = np.ones(img.shape[0], np.float32)
    ramp[y0:y1] = 1.0 - strength * np.linspace(0.0, 1.0, y1 - y0, dtype=np.float32)
    factor = ramp[:, None, None] * np.ones_like(img, np.float32)
    out = np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)
    img[mask] = out[mask]


# ---------------------------------------------------------------------------- shapes as masks
def ellipse_mask(
    size: int | tuple[int, int], center: Sequence[float], axes: Sequence[float], angle: float = 0.0
) -> np.ndarray:
    """Boolean mask of a filled ellipse (centre and half-axes in pixels, angle in degrees)."""
    h, w = (size, size) if isinstance(size, int) else size
    m = np.zeros((h, w), np.uint8)
    c = (round(center[0]), round(center[1]))
    a = (max(1, round(axes[0])), max(1, round(axes[1])))
    cv2.ellipse(m, c, a, angle, 0, 360, 1, -1, lineType=cv2.LINE_8)
    return m.astype(bool)


def polygon_mask(size: int | tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Boolean mask of a filled polygon given as an (N, 2) array of (x, y) pixel coordinates."""
    h, w = (size, size) if isinstance(size, int) else size
    m = np.zeros((h, w), np.uint8)
    cv2.fillPoly(m, [np.round(points).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return m.astype(bool)


def rect_mask(size: int | tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Boolean mask of the axis-aligned rectangle [x0, x1) x [y0, y1), clipped to the image."""
    h, w = (size, size) if isinstance(size, int) else size
    m = np.zeros((h, w), bool)
    m[max(0, round(y0)) : max(0, round(y1)), max(0, round(x0)) : max(0, round(x1))] = True
    return m


def blob_points(
    rng: np.random.Generator, center: Sequence[float], radius: float, n: int = 12, irregularity: float = 0.35
) -> np.ndarray:
    """Vertices (N, 2) of an irregular closed blob around ``center`` with mean ``radius``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * (1.0 + rng.uniform(-irregularity, irregularity, n))
    return np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)


def random_point_in(rng: np.random.Generator, mask: np.ndarray, margin: int = 0) -> tuple[int, int]:
    """A uniformly chosen (x, y) pixel of ``mask`` eroded by ``margin`` (falls back to ``mask``)."""
    m = mask
    if margin > 0:
        k = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
        eroded = cv2.erode(mask.astype(np.uint8), k).astype(bool)
        if eroded.any():
            m = eroded
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        raise ValueError("random_point_in: empty mask")
    i = int(rng.integers(ys.size))
    return int(xs[i]), int(ys[i])


# ---------------------------------------------------------------------------- words
def location_phrase(mask: np.ndarray) -> str:
    """Where the centroid of ``mask`` lies in the image, in words ("upper left", "centre", ...)."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if ys.size == 0:
        return "nowhere"
    cx, cy = xs.mean() / w, ys.mean() / h
    col = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "")
    row = "upper" if cy < 1 / 3 else ("lower" if cy > 2 / 3 else "")
    if not row and not col:
        return "centre"
    if not row:
        return f"{col} side"
    if not col:
        return f"{row} middle"
    return f"{row} {col}"


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def count_words(n: int, noun: str, plural: str | None = None) -> str:
    """``3, "screw"`` -> ``"three screws"``; ``1`` -> ``"one screw"``; ``0`` -> ``"no screws"``."""
    word = NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)
    return f"{word} {noun if n == 1 else (plural or noun + 's')}"


# ---------------------------------------------------------------------------- generic structural defects
def _clip_nonempty(mask: np.ndarray, within: np.ndarray | None) -> np.ndarray | None:
    if within is not None:
        mask = mask & within
    return mask if mask.any() else None


def scratch(
    img: np.ndarray,
    rng: np.random.Generator,
    within: np.ndarray,
    length: float | None = None,
    width: int | None = None,
    tries: int = 20,
) -> np.ndarray:
    """Draw a thin, slightly curved scratch (lighter or darker than the surface) inside ``within``.

    Returns the mask of the scratch, dilated by one pixel so it covers the visible trace.
    """
    size = img.shape[0]
    length = length or size * rng.uniform(0.08, 0.16)
    width = width or max(1, round(size / 128))
    for _ in range(tries):
        x, y = random_point_in(rng, within, margin=max(1, size // 64))
        ang = rng.uniform(0, np.pi)
        bend = rng.uniform(-0.4, 0.4)
        t = np.linspace(-0.5, 0.5, 9)
        pts = np.stack(
            [
                x + np.cos(ang + bend * t) * t * length,
                y + np.sin(ang + bend * t) * t * length,
            ],
            axis=1,
        )
        m = np.zeros(img.shape[:2], np.uint8)
        cv2.polylines(m, [np.round(pts).astype(np.int32)], False, 1, thickness=width, lineType=cv2.LINE_8)
        mask = _clip_nonempty(m.astype(bool), within)
        if mask is None or mask.sum() < length * 0.5:
            continue
        base = img[mask].astype(np.float32).mean(axis=0)
        shift = 70.0 if base.mean() < 128 else -70.0
        tone = np.clip(base + shift + rng.normal(0, 8, 3), 0, 255)
        img[mask] = tone.astype(np.uint8)
        k = np.ones((3, 3), np.uint8)
        return cv2.dilate(mask.astype(np.uint8), k).astype(bool) & within
    raise RuntimeError("scratch: could not place a scratch inside the given region")


def contamination(
    img: np.ndarray,
    rng: np.random.Generator,
    within: np.ndarray,
    radius: float | None = None,
    color: Sequence[int] | None = None,
    tries: int = 20,
) -> np.ndarray:
    """Draw an irregular stain or foreign particle inside ``within``; returns its mask."""
    size = img.shape[0]
    radius = radius or size * rng.uniform(0.018, 0.035)
    for _ in range(tries):
        c = random_point_in(rng, within, margin=round(radius))
        mask = _clip_nonempty(polygon_mask(img.shape[:2], blob_points(rng, c, radius)), within)
        if mask is None or mask.sum() < 0.5 * np.pi * radius**2 * 0.5:
            continue
        col = color or jitter_color(
            rng, [(60, 40, 20), (30, 30, 30), (200, 190, 60), (110, 140, 60)][rng.integers(4)], 10
        )
        textured_fill(img, mask, col, rng, amp=12, cells=4, grain=4)
        return mask
    raise RuntimeError("contamination: could not place a stain inside the given region")


def dent(
    img: np.ndarray,
    rng: np.random.Generator,
    within: np.ndarray,
    radius: float | None = None,
    tries: int = 20,
) -> np.ndarray:
    """Draw a dent: a shaded elliptical hollow (dark on one side, bright on the other); returns its mask."""
    size = img.shape[0]
    radius = radius or size * rng.uniform(0.025, 0.045)
    for _ in range(tries):
        cx, cy = random_point_in(rng, within, margin=round(radius))
        ang = float(rng.uniform(0, 180))
        ax = (radius, radius * rng.uniform(0.55, 0.9))
        mask = _clip_nonempty(ellipse_mask(img.shape[:2], (cx, cy), ax, ang), within)
        if mask is None:
            continue
        ys, xs = np.nonzero(mask)
        d = ((xs - cx) + (ys - cy)) / (2 * radius)  # gradient across the dent
        factor = (0.6 + 0.35 * (d + 0.5)).clip(0.45, 1.25)[:, None]
        img[ys, xs] = np.clip(img[ys, xs].astype(np.float32) * factor, 0, 255).astype(np.uint8)
        return mask
    raise RuntimeError("dent: could not place a dent inside the given region")


def crack(
    img: np.ndarray,
    rng: np.random.Generator,
    within: np.ndarray,
    length: float | None = None,
    tries: int = 20,
) -> np.ndarray:
    """Draw a jagged dark crack or tear inside ``within``; returns its mask (dilated by one pixel)."""
    size = img.shape[0]
    length = length or size * rng.uniform(0.08, 0.15)
    width = max(1, round(size / 100))
    for _ in range(tries):
        x, y = random_point_in(rng, within, margin=2)
        ang = rng.uniform(0, 2 * np.pi)
        n = 6
        steps = length / n
        pts = [(x, y)]
        for _ in range(n):
            ang += rng.uniform(-0.7, 0.7)
            x, y = x + steps * np.cos(ang), y + steps * np.sin(ang)
            pts.append((x, y))
        m = np.zeros(img.shape[:2], np.uint8)
        cv2.polylines(m, [np.round(pts).astype(np.int32)], False, 1, thickness=width, lineType=cv2.LINE_8)
        mask = _clip_nonempty(m.astype(bool), within)
        if mask is None or mask.sum() < length * 0.5:
            continue
        img[mask] = np.clip(img[mask].astype(np.float32) * 0.3, 0, 255).astype(np.uint8)
        k = np.ones((3, 3), np.uint8)
        return cv2.dilate(mask.astype(np.uint8), k).astype(bool) & within
    raise RuntimeError("crack: could not place a crack inside the given region")
