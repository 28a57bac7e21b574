"""Drawing primitives shared by the procedural categories (OpenCV on uint8 RGB arrays).

Everything that draws takes the image to draw on and a ``numpy.random.Generator`` and modifies the image
in place. Defect drawers return the boolean mask of the pixels they changed (never empty, always inside
``within``), which becomes the region's ground truth. Geometry is given in pixels of the image being drawn;
categories derive it from the image size so any size works.

Speed matters (a scene should render in a few milliseconds at 256 x 256), so the primitives work on the
bounding box of what they draw (:func:`bbox_slices`), in float32 or in saturating 8-bit OpenCV arithmetic,
and copy through masks with ``cv2.copyTo`` rather than boolean indexing of whole images. Functions that
take an image also accept a view of one (``img[bbox_slices(mask)]``); OpenCV writes into such views in
place.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import cv2
import numpy as np

Color = tuple[int, int, int]

#: Sub-pixel bits for OpenCV drawing calls given ``shift=SHIFT``; :func:`fixed` converts coordinates.
SHIFT = 4
#: One pixel in fixed-point units (``1 << SHIFT``): radii and axes are given as ``round(r * ONE)``.
ONE = 1 << SHIFT


# ---------------------------------------------------------------------------- colours
def jitter_color(rng: np.random.Generator, color: Sequence[float], amount: float = 12.0) -> Color:
    """``color`` with each channel moved by a normal jitter of standard deviation ``amount``, clipped."""
    c = np.clip(np.asarray(color, dtype=np.float64) + rng.normal(0.0, amount, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def mix(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, t: float) -> Color:
    """The colour ``(1 - t) * a + t * b``, clipped to [0, 255] and truncated to ints.

    ``mix(c, (255, 255, 255), 0.4)`` lightens ``c`` towards white, ``mix(c, (0, 0, 0), 0.3)`` darkens it.
    """
    c = np.clip((1.0 - t) * np.asarray(a, np.float64)[:3] + t * np.asarray(b, np.float64)[:3], 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def shade(color: Sequence[float] | np.ndarray, k: float) -> Color:
    """``color`` scaled by ``k`` (below 1 darker, above 1 brighter), clipped and truncated to ints."""
    c = np.clip(np.asarray(color, np.float64)[:3] * k, 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


# ---------------------------------------------------------------------------- coordinates and masks
def fixed(pts: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Float (N, 2) pixel coordinates -> int32 fixed-point coordinates for OpenCV calls with ``SHIFT``."""
    return np.rint(np.asarray(pts, np.float64) * ONE).astype(np.int32)


def fixed_pt(p: np.ndarray | Sequence[float]) -> tuple[int, int]:
    """One (x, y) point as a fixed-point tuple for OpenCV calls with ``SHIFT``."""
    return round(float(p[0]) * ONE), round(float(p[1]) * ONE)


def bbox_slices(mask: np.ndarray, pad: int = 0) -> tuple[slice, slice]:
    """Row and column slices of the bounding box of ``mask`` grown by ``pad`` (clipped to the image).

    An empty mask gives empty slices.
    """
    m = mask if mask.dtype == bool else mask != 0
    x, y, bw, bh = cv2.boundingRect(np.ascontiguousarray(m).view(np.uint8))
    if bw == 0 or bh == 0:
        return slice(0, 0), slice(0, 0)
    h, w = mask.shape[:2]
    return slice(max(0, y - pad), min(h, y + bh + pad)), slice(max(0, x - pad), min(w, x + bw + pad))


def _window(shape: tuple[int, ...], pts: np.ndarray, pad: float) -> tuple[slice, slice]:
    """Row and column slices of the box around points (N, 2) grown by ``pad``, clipped to ``shape``."""
    h, w = shape[:2]
    x0, y0 = np.floor(pts.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0) + pad).astype(int) + 1
    return slice(min(h, max(0, y0)), min(h, max(0, y1))), slice(min(w, max(0, x0)), min(w, max(0, x1)))


def _paste(shape: tuple[int, ...], sl: tuple[slice, slice], local: np.ndarray) -> np.ndarray:
    """A full-size boolean mask of ``shape[:2]`` that is ``local`` inside the window ``sl``."""
    full = np.zeros(shape[:2], bool)
    full[sl] = local
    return full


def _binary(mask: np.ndarray) -> np.ndarray:
    """``mask`` as a 0/1 uint8 array (a view when it is boolean)."""
    return mask.view(np.uint8) if mask.dtype == bool else (mask != 0).view(np.uint8)


def dilate(mask: np.ndarray, r: int = 1) -> np.ndarray:
    """Boolean ``mask`` grown by ``r`` pixels (a (2r+1) x (2r+1) square structuring element)."""
    if r <= 0:
        return mask.astype(bool)
    return cv2.dilate(_binary(mask), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).view(bool)


def erode(mask: np.ndarray, r: int = 1) -> np.ndarray:
    """Boolean ``mask`` shrunk by ``r`` pixels (pixels beyond the array's border count as inside)."""
    if r <= 0:
        return mask.astype(bool)
    return cv2.erode(_binary(mask), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).view(bool)


def fill_polygon(img: np.ndarray, pts: np.ndarray, color: Sequence[float] | float) -> None:
    """Fill the polygon (N, 2) of pixel coordinates (rounded, no anti-aliasing) into ``img`` in place."""
    cv2.fillPoly(img, [np.round(pts).astype(np.int32)], color, lineType=cv2.LINE_8)


def polyline(
    img: np.ndarray, pts: np.ndarray, color: Sequence[float] | float, thickness: int = 1, closed: bool = False
) -> None:
    """Draw the polyline (N, 2) of pixel coordinates (rounded, no anti-aliasing) into ``img`` in place."""
    pts32 = np.round(pts).astype(np.int32)
    cv2.polylines(img, [pts32], closed, color, thickness=max(1, int(thickness)), lineType=cv2.LINE_8)


def ellipse_mask(
    size: int | tuple[int, int], center: Sequence[float], axes: Sequence[float], angle: float = 0.0
) -> np.ndarray:
    """Boolean mask of a filled ellipse (centre and half-axes in pixels, angle in degrees)."""
    h, w = (size, size) if isinstance(size, int) else size
    m = np.zeros((h, w), np.uint8)
    c = (round(center[0]), round(center[1]))
    a = (max(1, round(axes[0])), max(1, round(axes[1])))
    cv2.ellipse(m, c, a, angle, 0, 360, 1, -1, lineType=cv2.LINE_8)
    return m.view(bool)


def polygon_mask(size: int | tuple[int, int], points: np.ndarray) -> np.ndarray:
    """Boolean mask of a filled polygon given as an (N, 2) array of (x, y) pixel coordinates."""
    h, w = (size, size) if isinstance(size, int) else size
    m = np.zeros((h, w), np.uint8)
    fill_polygon(m, points, 1)
    return m.view(bool)


def rect_mask(size: int | tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Boolean mask of the axis-aligned rectangle [x0, x1) x [y0, y1), clipped to the image."""
    h, w = (size, size) if isinstance(size, int) else size
    m = np.zeros((h, w), bool)
    m[max(0, round(y0)) : max(0, round(y1)), max(0, round(x0)) : max(0, round(x1))] = True
    return m


def rect_points(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Corners (4, 2) of the rectangle [x0, x1] x [y0, y1], clockwise on screen from (x0, y0)."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def rounded_rect_points(
    x0: float, y0: float, x1: float, y1: float, r: float, steps: int | None = None
) -> np.ndarray:
    """Vertices (N, 2) of the rectangle [x0, x1] x [y0, y1] with corners rounded by radius ``r``.

    Each corner is an arc of ``steps`` vertices (by default about one per pixel of radius, at least 4).
    The points can be transformed (rotated, moved) before drawing them.
    """
    r = max(0.0, min(float(r), (x1 - x0) / 2, (y1 - y0) / 2))
    n = max(4, round(r)) if steps is None else max(2, steps)
    # corners in order of increasing angle: lower right, lower left, upper left, upper right (y down)
    angles = (np.arange(4)[:, None] * (0.5 * np.pi) + np.linspace(0.0, 0.5 * np.pi, n)).ravel()
    pts = np.empty((4 * n, 2), np.float64)
    pts[:, 0] = np.repeat([x1 - r, x0 + r, x0 + r, x1 - r], n) + r * np.cos(angles)
    pts[:, 1] = np.repeat([y1 - r, y1 - r, y0 + r, y0 + r], n) + r * np.sin(angles)
    return pts


def fill_rounded_rect(
    arr: np.ndarray, x0: float, y0: float, x1: float, y1: float, r: float, value: Sequence[float] | float
) -> None:
    """Fill the rectangle [x0, x1] x [y0, y1] with corners rounded by ``r`` into ``arr`` (in place).

    ``arr`` may be an image (``value`` a colour) or a single-channel mask or factor map (``value`` a number).
    """
    fill_polygon(arr, rounded_rect_points(x0, y0, x1, y1, r), value)


def rounded_rect_mask(
    size: int | tuple[int, int], x0: float, y0: float, x1: float, y1: float, r: float
) -> np.ndarray:
    """Boolean mask of the rectangle [x0, x1] x [y0, y1] with corners rounded by radius ``r``."""
    h, w = (size, size) if isinstance(size, int) else size
    m = np.zeros((h, w), np.uint8)
    fill_rounded_rect(m, x0, y0, x1, y1, r, 1)
    return m.view(bool)


def blob_points(
    rng: np.random.Generator, center: Sequence[float], radius: float, n: int = 12, irregularity: float = 0.35
) -> np.ndarray:
    """Vertices (N, 2) of an irregular closed blob around ``center`` with mean ``radius``."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * (1.0 + rng.uniform(-irregularity, irregularity, n))
    return np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)


def random_point_in(rng: np.random.Generator, mask: np.ndarray, margin: int = 0) -> tuple[int, int]:
    """A uniformly chosen (x, y) pixel of ``mask`` eroded by ``margin`` (falls back to ``mask``).

    Works on the bounding box of ``mask`` and picks by rejection sampling (the first of a batch of uniform
    candidates that hits the mask, which is uniform over the mask), so large masks cost no more than small
    ones; very sparse masks fall back to listing their pixels.
    """
    sl = bbox_slices(mask, pad=max(0, margin))
    m = mask[sl]
    if m.dtype != bool:
        m = m != 0
    if not m.any():
        raise ValueError("random_point_in: empty mask")
    if margin > 0:
        eroded = erode(m, margin)
        if eroded.any():
            m = eroded
    h, w = m.shape
    ys = rng.integers(0, h, 64)
    xs = rng.integers(0, w, 64)
    hits = np.flatnonzero(m[ys, xs])
    if hits.size:
        y, x = int(ys[hits[0]]), int(xs[hits[0]])
    else:
        py, px = np.nonzero(m)
        i = int(rng.integers(py.size))
        y, x = int(py[i]), int(px[i])
    return x + sl[1].start, y + sl[0].start


# ---------------------------------------------------------------------------- textures and shading
def noise_field(rng: np.random.Generator, shape: tuple[int, int], cells: int = 8) -> np.ndarray:
    """Smooth float32 noise in [-1, 1] of ``shape``: a ``cells`` x ``cells`` random grid, upsampled bicubic.

    Large fields are upsampled bicubically to a quarter of the resolution and bilinearly from there (the
    same look at a tenth of the cost).
    """
    h, w = shape
    n = max(2, cells)
    grid = rng.random((n, n), dtype=np.float32)
    grid *= 2.0
    grid -= 1.0
    if min(h, w) >= 8 * n:
        mid = cv2.resize(grid, (w // 4, h // 4), interpolation=cv2.INTER_CUBIC)
        field = cv2.resize(mid, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(field, -1.0, 1.0, out=field)


def _texture(
    rng: np.random.Generator,
    shape: tuple[int, int],
    color: Sequence[float] | np.ndarray,
    amp: float,
    cells: int,
    grain: float,
) -> np.ndarray:
    """An (H, W, 3) uint8 layer: ``color`` + ``amp`` x :func:`noise_field` + uniform grain of sd ``grain``.

    Built in saturating 8-bit OpenCV arithmetic around a mid-grey of 128, so ``amp`` is capped at 127 and
    ``amp`` + 1.75 ``grain`` beyond about 127 saturates the texture's extremes.
    """
    h, w = shape
    f8 = cv2.convertScaleAbs(noise_field(rng, (h, w), cells), alpha=min(float(amp), 127.0), beta=128.0)
    offset = 128.0
    if grain > 0:
        spread = round(grain * 12**0.5)  # a uniform variable on [0, spread] has standard deviation ``grain``
        g = np.frombuffer(rng.bytes(h * w), np.uint8).reshape(h, w)
        cv2.add(f8, cv2.convertScaleAbs(g, alpha=spread / 255.0), dst=f8)
        offset += spread / 2
    layer = cv2.cvtColor(f8, cv2.COLOR_GRAY2RGB)
    shift = [round(float(v) - offset) for v in np.asarray(color, np.float64)[:3]]
    # two saturating steps with non-negative scalars (OpenCV's fast path): + the positive, - the negative
    cv2.add(layer, (max(0, shift[0]), max(0, shift[1]), max(0, shift[2]), 0), dst=layer)
    cv2.subtract(layer, (max(0, -shift[0]), max(0, -shift[1]), max(0, -shift[2]), 0), dst=layer)
    return layer


def textured_fill(
    img: np.ndarray,
    mask: np.ndarray,
    color: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    amp: float = 10.0,
    cells: int = 8,
    grain: float = 3.0,
) -> None:
    """Fill ``mask`` with ``color`` modulated by smooth noise (``amp``) and pixel grain (``grain``, sd).

    The noise spans the bounding box of ``mask`` (``cells`` x ``cells`` grid cells across it); only that box
    is computed and written. ``amp`` is capped at 127. Does nothing for an empty mask.
    """
    sl = bbox_slices(mask)
    m = mask[sl]
    if m.size == 0:
        return
    layer = _texture(rng, m.shape, color, amp, cells, grain)
    cv2.copyTo(layer, _binary(m), img[sl])


def background(
    rng: np.random.Generator,
    size: int,
    color: Sequence[float] | np.ndarray,
    amp: float = 8.0,
    cells: int = 6,
    grain: float = 3.0,
) -> np.ndarray:
    """A ``size`` x ``size`` RGB image of ``color`` with a smooth texture (as :func:`textured_fill`)."""
    return _texture(rng, (size, size), color, amp, cells, grain)


def scale_pixels(
    img: np.ndarray,
    factor: float | np.ndarray,
    mask: np.ndarray | None = None,
    add: np.ndarray | None = None,
) -> None:
    """In place: ``img = img * factor (+ add)`` where ``mask`` (everywhere if None), saturated to uint8.

    ``img`` is an (H, W, 3) uint8 array or view; ``factor`` (in [0, 2), resolution 1/127) and ``add`` (in
    [0, 255]) are floats or float arrays broadcastable to (H, W): a full map, one row (per column) or one
    column (per row).
    """
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        return
    f8 = cv2.convertScaleAbs(np.broadcast_to(np.asarray(factor, np.float32), (h, w)), alpha=127.0)
    out = cv2.multiply(img, cv2.cvtColor(f8, cv2.COLOR_GRAY2RGB), scale=1.0 / 127.0)
    if add is not None:
        a8 = cv2.convertScaleAbs(np.broadcast_to(np.asarray(add, np.float32), (h, w)))
        cv2.add(out, cv2.cvtColor(a8, cv2.COLOR_GRAY2RGB), dst=out)
    if mask is None:
        img[...] = out
    else:
        cv2.copyTo(out, _binary(mask), img)


def blend(
    img: np.ndarray,
    color: Sequence[float] | float | np.ndarray,
    alpha: float | np.ndarray,
    mask: np.ndarray | None = None,
) -> None:
    """In place: ``img = (1 - alpha) * img + alpha * color`` where ``mask`` (everywhere if None).

    ``color`` is one colour (or grey level) or an image of ``img``'s shape; ``alpha`` is a number or a float
    map broadcastable to (H, W). Pass views cropped to the mask's bounding box to keep it cheap.
    """
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        return
    other = np.asarray(color)
    if np.ndim(alpha) == 0:
        if other.shape != img.shape:
            c = np.broadcast_to(np.clip(np.rint(other.astype(np.float64)), 0, 255), (3,))
            other = np.empty_like(img)
            other[...] = c.astype(np.uint8)
        a = float(alpha)
        out = cv2.addWeighted(img, 1.0 - a, other.astype(np.uint8, copy=False), a, 0.0)
    else:
        a = np.broadcast_to(np.asarray(alpha, np.float32), (h, w))[..., None]
        mixed = img.astype(np.float32) * (1.0 - a) + other.astype(np.float32) * a
        out = np.clip(mixed, 0, 255).astype(np.uint8)
    if mask is None:
        img[...] = out
    else:
        cv2.copyTo(out, _binary(mask), img)


def drop_shadow(
    img: np.ndarray, mask: np.ndarray, offset: tuple[int, int], blur: float = 0.0, darkness: float = 0.35
) -> None:
    """Darken ``img`` under ``mask`` moved by ``offset`` = (dx, dy) pixels: the shadow an object casts.

    ``blur`` is the Gaussian sigma of the shadow's edge (0: hard); the shadow darkens by up to ``darkness``
    (0..1). Call it before drawing the object itself, which then covers its own shadow.
    """
    dx, dy = int(offset[0]), int(offset[1])
    sl = bbox_slices(mask, pad=abs(dx) + abs(dy) + int(np.ceil(3 * blur)) + 1)
    m = _binary(mask[sl])
    h, w = m.shape
    if h == 0 or w == 0:
        return
    sh = np.zeros((h, w), np.float32)
    sh[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = m[
        max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)
    ]
    if blur > 0:
        sh = cv2.GaussianBlur(sh, (0, 0), blur)
    sh *= -darkness
    sh += 1.0
    scale_pixels(img[sl], sh)


def shade_vertical(img: np.ndarray, mask: np.ndarray, strength: float = 0.15) -> None:
    """Darken ``mask`` progressively from top to bottom of its bounding box (a simple 3D cue)."""
    sl = bbox_slices(mask)
    n = sl[0].stop - sl[0].start
    if n == 0:
        return
    ramp = 1.0 - strength * np.linspace(0.0, 1.0, n, dtype=np.float32)
    scale_pixels(img[sl], ramp[:, None], mask[sl])


def stroke(img: np.ndarray, pts: np.ndarray, layers: Sequence[tuple[float, Sequence[float]]]) -> None:
    """Draw an anti-aliased polyline through ``pts`` (N, 2) with exact per-pixel coverage.

    ``layers`` are (width, colour) pairs painted in order (e.g. a body, then a thinner highlight). Unlike
    ``cv2.polylines`` the result depends only on each pixel's distance to the line, so a polyline cut short
    or bent at some point draws the very same pixels as the full straight one everywhere away from that
    point (a defect then changes pixels only near where it is).
    """
    pts = np.asarray(pts, np.float64)
    pad = max(wd for wd, _ in layers) / 2 + 1.5
    sy, sx = _window(img.shape, pts, pad)
    if sy.start >= sy.stop or sx.start >= sx.stop:
        return
    xs = np.arange(sx.start, sx.stop, dtype=np.float32)[None, :]
    ys = np.arange(sy.start, sy.stop, dtype=np.float32)[:, None]
    dist = None
    for a, b in itertools.pairwise(pts):
        ab = b - a
        t = np.clip(((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1]) / max(1e-9, float(ab @ ab)), 0.0, 1.0)
        dd = np.hypot(xs - (a[0] + t * ab[0]), ys - (a[1] + t * ab[1]))
        dist = dd if dist is None else np.minimum(dist, dd)
    assert dist is not None
    patch = img[sy, sx].astype(np.float32)
    for width, color in layers:
        alpha = np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)[..., None]
        patch += (np.asarray(color, np.float32) - patch) * alpha
    img[sy, sx] = (patch + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------- words
def location_phrase(mask: np.ndarray) -> str:
    """Where the centroid of ``mask`` lies in the image, in words ("upper left", "centre", ...)."""
    mo = cv2.moments(np.ascontiguousarray(_binary(mask)), binaryImage=True)
    h, w = mask.shape
    if mo["m00"] == 0:
        return "nowhere"
    cx, cy = mo["m10"] / mo["m00"] / w, mo["m01"] / mo["m00"] / h
    col = "left" if cx < 1 / 3 else ("right" if cx > 2 / 3 else "")
    row = "upper" if cy < 1 / 3 else ("lower" if cy > 2 / 3 else "")
    if not row and not col:
        return "centre"
    if not row:
        return f"{col} side"
    if not col:
        return f"{row} middle"
    return f"{row} {col}"


def where_phrase(mask: np.ndarray, of: str | None = "the image") -> str:
    """:func:`location_phrase` as an adverbial: "in the upper left of the image", "on the left side of the
    image", "in the centre of the image"; ``of`` names what the location is in ("the bag"), None drops it
    ("in the upper left"). An empty mask gives "nowhere"."""
    loc = location_phrase(mask)
    if loc == "nowhere":
        return loc
    prep = "on" if loc.endswith("side") else "in"
    return f"{prep} the {loc}" + (f" of {of}" if of else "")


def article(word: str) -> str:
    """The indefinite article for ``word``: "an" before a vowel letter ("an orange"), else "a"."""
    return "an" if word[:1].lower() in ("a", "e", "i", "o", "u") else "a"


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def number_word(n: int) -> str:
    """``3`` -> ``"three"``, ``0`` -> ``"no"``; digits beyond ten or below zero."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def count_words(n: int, noun: str, plural: str | None = None) -> str:
    """``3, "screw"`` -> ``"three screws"``; ``1`` -> ``"one screw"``; ``0`` -> ``"no screws"``."""
    return f"{number_word(n)} {noun if n == 1 else (plural or noun + 's')}"


# ---------------------------------------------------------------------------- generic structural defects
# Each drawer picks a spot in ``within``, then works on a small window around it (never on the whole
# image), and returns the full-size mask of what it changed.


def _place(failure: str, tries: int, attempt: Callable[[], np.ndarray | None]) -> np.ndarray:
    """Call ``attempt`` (which draws and returns its mask, or None when the spot was unusable) up to
    ``tries`` times; ``RuntimeError(failure)`` when no attempt succeeded."""
    for _ in range(tries):
        mask = attempt()
        if mask is not None:
            return mask
    raise RuntimeError(failure)


def _line_defect(
    img: np.ndarray, within: np.ndarray, pts: np.ndarray, width: int, min_pixels: float
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The window around polyline ``pts`` and its pixels of ``within`` (None if fewer than ``min_pixels``)."""
    sl = _window(img.shape, pts, width / 2 + 2)
    local = np.zeros((sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), np.uint8)
    polyline(local, pts - (sl[1].start, sl[0].start), 1, width)
    m = local.view(bool) & within[sl]
    return (sl, m) if m.sum() >= max(1.0, min_pixels) else None


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

    def attempt() -> np.ndarray | None:
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
        found = _line_defect(img, within, pts, width, length * 0.5)
        if found is None:
            return None
        sl, m = found
        sub = img[sl]
        base = sub[m].astype(np.float32).mean(axis=0)
        shift = 70.0 if base.mean() < 128 else -70.0
        sub[m] = np.clip(base + shift + rng.normal(0, 8, 3), 0, 255).astype(np.uint8)
        return _paste(img.shape, sl, dilate(m) & within[sl])

    return _place("scratch: could not place a scratch inside the given region", tries, attempt)


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

    def attempt() -> np.ndarray | None:
        x, y = random_point_in(rng, within, margin=2)
        ang = rng.uniform(0, 2 * np.pi)
        n = 6
        steps = length / n
        pts = [(x, y)]
        for _ in range(n):
            ang += rng.uniform(-0.7, 0.7)
            x, y = x + steps * np.cos(ang), y + steps * np.sin(ang)
            pts.append((x, y))
        found = _line_defect(img, within, np.array(pts), width, length * 0.5)
        if found is None:
            return None
        sl, m = found
        scale_pixels(img[sl], 0.3, m)
        return _paste(img.shape, sl, dilate(m) & within[sl])

    return _place("crack: could not place a crack inside the given region", tries, attempt)


def contamination(
    img: np.ndarray,
    rng: np.random.Generator,
    within: np.ndarray,
    radius: float | None = None,
    color: Sequence[float] | None = None,
    tries: int = 20,
) -> np.ndarray:
    """Draw an irregular stain or foreign particle inside ``within``; returns its mask."""
    size = img.shape[0]
    radius = radius or size * rng.uniform(0.018, 0.035)

    def attempt() -> np.ndarray | None:
        c = random_point_in(rng, within, margin=round(radius))
        pts = blob_points(rng, c, radius)
        sl = _window(img.shape, pts, 1)
        m = polygon_mask(
            (sl[0].stop - sl[0].start, sl[1].stop - sl[1].start), pts - (sl[1].start, sl[0].start)
        )
        m &= within[sl]
        if not m.any() or m.sum() < 0.5 * np.pi * radius**2 * 0.5:
            return None
        col = color or jitter_color(
            rng, [(60, 40, 20), (30, 30, 30), (200, 190, 60), (110, 140, 60)][rng.integers(4)], 10
        )
        textured_fill(img[sl], m, col, rng, amp=12, cells=4, grain=4)
        return _paste(img.shape, sl, m)

    return _place("contamination: could not place a stain inside the given region", tries, attempt)


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

    def attempt() -> np.ndarray | None:
        cx, cy = random_point_in(rng, within, margin=round(radius))
        ang = float(rng.uniform(0, 180))
        ax = (radius, radius * rng.uniform(0.55, 0.9))
        sl = _window(img.shape, np.array([[cx, cy]], np.float64), radius + 2)
        y0, x0 = sl[0].start, sl[1].start
        shape = (sl[0].stop - y0, sl[1].stop - x0)
        m = ellipse_mask(shape, (cx - x0, cy - y0), ax, ang) & within[sl]
        if not m.any():
            return None
        yy = np.arange(y0, sl[0].stop, dtype=np.float32)[:, None]
        xx = np.arange(x0, sl[1].stop, dtype=np.float32)[None, :]
        d = ((xx - cx) + (yy - cy)) / (2 * radius)  # gradient across the dent
        scale_pixels(img[sl], np.clip(0.6 + 0.35 * (d + 0.5), 0.45, 1.25), m)
        return _paste(img.shape, sl, m)

    return _place("dent: could not place a dent inside the given region", tries, attempt)
