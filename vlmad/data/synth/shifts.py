"""Imaging-environment shifts: change how a scene is photographed, not what it shows.

They reproduce the "uniform vs non-uniform imaging" comparisons: an anomaly detector trained on images
taken under fixed conditions over-detects on normal objects photographed differently (wet or shadowed parts
of outdoor concrete blocks; position shift, brightness/contrast change or a changed background when
PatchCore is compared with an object detector). A shift never creates or removes a defect: photometric
shifts leave every mask unchanged; geometric shifts move image, foreground and region masks together.

Shifts are written ``"name:strength,..."`` (see :func:`parse_shifts`); ``strength`` is in [0, 1], 0 leaves
the image unchanged and 1 is strong but still a plausible photograph. :func:`apply_shifts` applies them in a
fixed order whatever the order given: clutter, geometry (position, rotation and perspective combined into
one warp), lighting, shadow, wet, brightness, blur, noise. Everything random comes from the given
``numpy.random.Generator``, so the result is a pure function of (scene, shifts, generator state).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import cv2
import numpy as np

from vlmad.data.synth import draw
from vlmad.data.synth.base import Region, Scene
from vlmad.errors import ConfigError

SHIFT_NAMES: tuple[str, ...] = (
    "brightness",
    "lighting",
    "shadow",
    "wet",
    "position",
    "rotation",
    "perspective",
    "clutter",
    "blur",
    "noise",
)
#: Order of application, fixed whatever the order the shifts are given in.
APPLY_ORDER: tuple[str, ...] = (
    "clutter",
    "position",
    "rotation",
    "perspective",
    "lighting",
    "shadow",
    "wet",
    "brightness",
    "blur",
    "noise",
)
GEOMETRIC: tuple[str, ...] = ("position", "rotation", "perspective")
PHOTOMETRIC: tuple[str, ...] = ("lighting", "shadow", "wet", "brightness", "blur", "noise")
DEFAULT_STRENGTH = 0.5

# Limits at strength 1; at strength s the random parameters are drawn up to s times these.
MAX_SHIFT_FRAC = 0.15  # position: translation as a fraction of the image side
MAX_ANGLE_DEG = 30.0  # rotation about the image centre
MAX_CORNER_FRAC = 0.10  # perspective: displacement of each image corner, fraction of the side
GEOM_TRIES = 8  # resamples of a warp that loses a region, before weakening it
GEOM_WEAKEN = 4  # halvings of the warp before giving up and leaving the geometry unchanged
MIN_KEPT = 0.5  # a warped region (and the foreground) must keep at least this fraction of its area

# N(0, 1) quantiles of 256 equiprobable bins: a uniform random byte -> a normal sample by table lookup,
# several times faster than drawing float normals for every pixel and channel.
_NORMAL_LUT = np.array([NormalDist().inv_cdf((i + 0.5) / 256.0) for i in range(256)], np.float32)
_NORMAL_LUT /= float(_NORMAL_LUT.std())


@dataclass(frozen=True)
class Shift:
    """One imaging shift: ``name`` (one of :data:`SHIFT_NAMES`) and ``strength`` in [0, 1]."""

    name: str
    strength: float = DEFAULT_STRENGTH

    def __post_init__(self) -> None:
        if self.name not in SHIFT_NAMES:
            raise ConfigError(f"unknown imaging shift {self.name!r}; known: {', '.join(SHIFT_NAMES)}")
        s = self.strength
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or not 0 <= s <= 1:
            raise ConfigError(
                f"strength of imaging shift {self.name!r} must be a number in [0, 1], got {s!r}"
            )
        object.__setattr__(self, "strength", float(s))


def parse_shifts(text: str) -> list[Shift]:
    """Parse ``"brightness:0.5,clutter:0.3,blur"`` (strength defaults to 0.5) into shifts, in given order.

    An empty string (or ``"none"``) means no shift. Raises :class:`~vlmad.errors.ConfigError` naming the
    offending item for an unknown name, a strength that is not a number or lies outside [0, 1], an empty
    item, or a shift given twice.
    """
    text = text.strip()
    if not text or text.lower() == "none":
        return []
    shifts: list[Shift] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ConfigError(f"empty item in imaging shifts {text!r} (write e.g. 'brightness:0.5,blur')")
        name, sep, value = (part.strip() for part in item.partition(":"))
        if name not in SHIFT_NAMES:
            raise ConfigError(f"unknown imaging shift {name!r} in {text!r}; known: {', '.join(SHIFT_NAMES)}")
        strength = DEFAULT_STRENGTH
        if sep:
            try:
                strength = float(value)
            except ValueError:
                raise ConfigError(
                    f"strength of imaging shift {name!r} must be a number in [0, 1], got {value!r}"
                ) from None
            if not math.isfinite(strength) or not 0.0 <= strength <= 1.0:
                raise ConfigError(f"strength of imaging shift {name!r} must be in [0, 1], got {value!r}")
        if any(s.name == name for s in shifts):
            raise ConfigError(f"imaging shift {name!r} is given twice in {text!r}")
        shifts.append(Shift(name, strength))
    return shifts


def format_shifts(shifts: Sequence[Shift]) -> str:
    """The inverse of :func:`parse_shifts`: ``"name:strength,..."`` in the given order (exact floats)."""
    return ",".join(f"{s.name}:{s.strength!r}" for s in shifts)


# ============================================================================================ apply
def apply_shifts(scene: Scene, shifts: Sequence[Shift], rng: np.random.Generator) -> Scene:
    """A new scene: ``scene`` photographed under ``shifts`` (the input scene is not modified).

    Image, foreground and every region mask are transformed consistently: geometric shifts warp them all
    with one homography (masks nearest-neighbour, image border replicated), and the warp is resampled (then
    weakened, at last dropped) until every region and the foreground stay non-empty and keep at least
    half their area; photometric shifts change pixels only; clutter is drawn on the background only
    (outside the foreground, and never touching a defect region). What was applied, with its random
    parameters, is appended to ``facts["shifts"]`` (JSON-serialisable). A shift of strength 0 changes
    nothing.
    """
    by_name: dict[str, float] = {}
    for s in shifts:
        if not isinstance(s, Shift):
            raise ConfigError(f"expected Shift objects, got {s!r}")
        if s.name in by_name:
            raise ConfigError(f"imaging shift {s.name!r} is given twice")
        by_name[s.name] = s.strength
    img = scene.image.copy()
    fg = scene.foreground.copy()
    masks = [r.mask.copy() for r in scene.regions]
    facts = copy.deepcopy(scene.facts)
    log: list[dict[str, Any]] = list(facts.get("shifts", []))
    active = {n: v for n, v in by_name.items() if v > 0}

    if "clutter" in active:
        regions = np.zeros_like(fg)
        for m in masks:
            regions |= m
        log.append(_clutter(img, fg, regions, active["clutter"], rng))
    geom = {n: active[n] for n in GEOMETRIC if n in active}
    if geom:
        img, fg, masks, entries = _geometry(img, fg, masks, geom, rng)
        log.extend(entries)
    if any(n in active for n in PHOTOMETRIC):
        # planar (3, H, W) float32: per-pixel factors broadcast over the leading axis (fast inner loops)
        f = np.empty((3, *img.shape[:2]), np.float32)
        for i, c in enumerate(cv2.split(img)):
            f[i] = c
        for name in PHOTOMETRIC:
            if name in active:
                f, entry = _PHOTO[name](f, fg, active[name], rng)
                log.append(entry)
        np.clip(f, 0, 255, out=f)
        img = cv2.merge([c.astype(np.uint8) for c in f])

    facts["shifts"] = log
    regions = [Region(r.defect, m, r.description) for r, m in zip(scene.regions, masks, strict=True)]
    return Scene(img, fg, regions, scene.description, facts)


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform in [lo, hi) as a Python float (NumPy float64 scalars would promote float32 arrays)."""
    return float(rng.uniform(lo, hi))


def _sym(rng: np.random.Generator, amp: float) -> float:
    """Uniform in [-amp, amp]."""
    return float(rng.uniform(-amp, amp))


# -------------------------------------------------------------------------------------------- clutter
_CLUTTER_COLORS: tuple[draw.Color, ...] = (
    (200, 40, 40),
    (40, 90, 190),
    (230, 200, 40),
    (40, 150, 70),
    (240, 240, 235),
    (30, 30, 35),
    (150, 100, 60),
    (230, 130, 30),
    (130, 130, 140),
    (170, 60, 160),
)


def _clutter(
    img: np.ndarray, fg: np.ndarray, regions: np.ndarray, s: float, rng: np.random.Generator
) -> dict[str, Any]:
    """Random rectangles and ellipses (other things lying around) drawn on the background only.

    A shape may pass under the object (it is clipped by the foreground, plus a small margin), but a shape
    touching a defect region is redrawn elsewhere (up to 6 tries, else dropped): clipping it there would
    trace the outline of, e.g., a missing object's footprint.
    """
    h, w = fg.shape
    side = min(h, w)
    margin = max(1, round(side / 128))
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    keep_out = cv2.dilate(fg.astype(np.uint8), kernel) > 0
    avoid = cv2.dilate(regions.astype(np.uint8), kernel) > 0
    free = np.flatnonzero(~(keep_out | avoid))
    n = max(1, round(s * _u(rng, 3, 8)))
    layer = img.copy()
    paint = np.zeros((h, w), np.uint8)
    shapes = []
    for _ in range(n):
        for _try in range(6):
            if free.size:
                i = int(free[rng.integers(free.size)])
                cx, cy = float(i % w), float(i // w)
            else:
                cx, cy = _u(rng, 0, w), _u(rng, 0, h)
            a = side * _u(rng, 0.03, 0.05 + 0.08 * s)
            b = a * _u(rng, 0.3, 1.0)
            ang = _u(rng, 0, 180)
            kind = "ellipse" if rng.random() < 0.5 else "rectangle"
            if kind == "ellipse":
                pts = cv2.ellipse2Poly(
                    (round(cx), round(cy)), (max(1, round(a)), max(1, round(b))), round(ang), 0, 360, 8
                )
            else:
                pts = np.round(cv2.boxPoints(((cx, cy), (2 * a, 2 * b), ang))).astype(np.int32)
            x, y, bw, bh = cv2.boundingRect(pts)
            x0, y0, x1, y1 = max(0, x - 1), max(0, y - 1), min(w, x + bw + 1), min(h, y + bh + 1)
            if x1 <= x0 or y1 <= y0:
                continue
            crop = np.zeros((y1 - y0, x1 - x0), np.uint8)
            cv2.fillPoly(crop, [pts], 1, offset=(-x0, -y0))
            cv2.polylines(crop, [pts - np.array([x0, y0], np.int32)], True, 1, 1)
            if (crop.astype(bool) & avoid[y0:y1, x0:x1]).any():
                continue
            color = draw.jitter_color(rng, _CLUTTER_COLORS[int(rng.integers(len(_CLUTTER_COLORS)))], 15)
            cv2.fillPoly(layer, [pts], color)
            cv2.polylines(layer, [pts], True, tuple(int(c * 0.6) for c in color), 1)
            paint[y0:y1, x0:x1] |= crop
            shapes.append(
                {
                    "kind": kind,
                    "center": [_r(cx, 1), _r(cy, 1)],
                    "axes": [_r(a, 1), _r(b, 1)],
                    "angle": _r(ang, 1),
                    "color": list(color),
                }
            )
            break
    where = (paint > 0) & ~keep_out
    np.copyto(img, layer, where=where[..., None])
    return {"name": "clutter", "strength": s, "shapes": shapes}


# -------------------------------------------------------------------------------------------- geometry
def _homography(w: int, h: int, p: dict[str, Any]) -> np.ndarray:
    """One 3x3 warp: perspective (corner displacements), then rotation about the centre, then translation."""
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    dst = src + np.asarray(p["corners"], np.float32)
    hp = cv2.getPerspectiveTransform(src, dst).astype(np.float64)
    a = math.radians(p["angle_deg"])
    cx, cy = w / 2.0, h / 2.0
    c, s = math.cos(a), math.sin(a)
    rot = np.array([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0, 0, 1]])
    tr = np.array([[1, 0, p["dx"]], [0, 1, p["dy"]], [0, 0, 1]], np.float64)
    return tr @ rot @ hp


def _warp_mask(m: np.ndarray, hm: np.ndarray) -> np.ndarray:
    h, w = m.shape
    out = cv2.warpPerspective(
        m.astype(np.uint8), hm, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return out.astype(bool)


def _geometry(
    img: np.ndarray, fg: np.ndarray, masks: list[np.ndarray], geom: dict[str, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[dict[str, Any]]]:
    """Warp everything once with the combined position/rotation/perspective homography.

    A warp that empties a region or the foreground, or keeps less than half of one, is resampled
    (``GEOM_TRIES`` times), then weakened by halving its parameters (``GEOM_WEAKEN`` times); if even that
    fails the geometry is left unchanged (recorded as ``scale`` 0).
    """
    h, w = fg.shape
    side = min(h, w)
    checks = [*masks, *([fg] if fg.any() else [])]
    areas = [int(m.sum()) for m in checks]
    tries = 0
    for scale in [1.0] * GEOM_TRIES + [0.5**k for k in range(1, GEOM_WEAKEN + 1)]:
        tries += 1
        p = {
            "dx": _sym(rng, MAX_SHIFT_FRAC * side * geom.get("position", 0.0)) * scale,
            "dy": _sym(rng, MAX_SHIFT_FRAC * side * geom.get("position", 0.0)) * scale,
            "angle_deg": _sym(rng, MAX_ANGLE_DEG * geom.get("rotation", 0.0)) * scale,
            "corners": (
                rng.uniform(-1, 1, (4, 2)) * MAX_CORNER_FRAC * side * geom.get("perspective", 0.0) * scale
            ),
        }
        hm = _homography(w, h, p)
        warped = [_warp_mask(m, hm) for m in checks]
        if all(wm.any() and wm.sum() >= MIN_KEPT * a for wm, a in zip(warped, areas, strict=True)):
            break
    else:
        scale = 0.0
        p = {"dx": 0.0, "dy": 0.0, "angle_deg": 0.0, "corners": np.zeros((4, 2))}
        hm = np.eye(3)
        warped = [m.copy() for m in checks]
    new_masks = warped[: len(masks)]
    new_fg = warped[len(masks)] if len(checks) > len(masks) else np.zeros_like(fg)
    if scale != 0.0:
        img = cv2.warpPerspective(img, hm, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    common = {"tries": tries, "scale": scale, "homography": [[float(f"{v:.9g}") for v in row] for row in hm]}
    entries = []
    if "position" in geom:
        entries.append(
            {
                "name": "position",
                "strength": geom["position"],
                "dx": _r(p["dx"], 2),
                "dy": _r(p["dy"], 2),
                **common,
            }
        )
    if "rotation" in geom:
        entries.append(
            {"name": "rotation", "strength": geom["rotation"], "angle_deg": _r(p["angle_deg"], 2), **common}
        )
    if "perspective" in geom:
        corners = [[_r(x, 2), _r(y, 2)] for x, y in np.asarray(p["corners"])]
        entries.append({"name": "perspective", "strength": geom["perspective"], "corners": corners, **common})
    return img, new_fg, new_masks, entries


# -------------------------------------------------------------------------------------------- photometric
# Each works on a planar float32 (3, H, W) RGB image in 0..255 (clipped once at the end), in place where it
# can, and returns it with its log entry.
def _luma(f: np.ndarray) -> np.ndarray:
    """Rec. 601 luma of a planar RGB image."""
    return 0.299 * f[0] + 0.587 * f[1] + 0.114 * f[2]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.ogrid[0:h, 0:w]
    return xs.astype(np.float32), ys.astype(np.float32)


def _lighting(f: np.ndarray, fg: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Uneven illumination: a linear brightness gradient across the image times an off-centre vignette."""
    h, w = fg.shape
    xs, ys = _grid(h, w)
    half = min(h, w) / 2.0
    theta = float(rng.uniform(0, 2 * math.pi))
    grad = s * _u(rng, 0.2, 0.4)
    vig = s * _u(rng, 0.15, 0.4)
    vx, vy = w / 2 + _sym(rng, 0.25 * w), h / 2 + _sym(rng, 0.25 * h)
    # few full-size temporaries: factor = (1 + grad * clip(g, -1, 1)) * (1 - vig * min(r2, 1))
    factor = (xs - w / 2) * (math.cos(theta) / half) + (ys - h / 2) * (math.sin(theta) / half)
    np.clip(factor, -1.0, 1.0, out=factor)
    factor *= grad
    factor += 1.0
    r2 = (xs - vx) ** 2 * (1 / (2 * half * half)) + (ys - vy) ** 2 * (1 / (2 * half * half))
    np.minimum(r2, 1.0, out=r2)
    r2 *= -vig
    r2 += 1.0
    factor *= r2
    f *= factor
    entry = {
        "name": "lighting",
        "strength": s,
        "gradient_angle_deg": _r(math.degrees(theta), 1),
        "gradient": _r(grad),
        "vignette": _r(vig),
        "vignette_center": [_r(vx, 1), _r(vy, 1)],
    }
    return f, entry


def _shadow(f: np.ndarray, fg: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """One or two soft-edged polygonal cast shadows, each placed over part of the object."""
    h, w = fg.shape
    side = min(h, w)
    # the soft shadow mask is drawn and blurred at half resolution, then upsampled (it is smooth anyway)
    hh, hw = (h + 1) // 2, (w + 1) // 2
    m = np.zeros((hh, hw), np.float32)
    polys = []
    on_object = np.flatnonzero(fg)
    for _ in range(1 if rng.random() < 0.6 else 2):
        if on_object.size:
            i = int(on_object[rng.integers(on_object.size)])
            cx, cy = float(i % w), float(i // w)
        else:
            cx, cy = _u(rng, 0, w), _u(rng, 0, h)
        radius = side * _u(rng, 0.18, 0.38)
        c = (cx + _sym(rng, 0.6 * radius), cy + _sym(rng, 0.6 * radius))
        pts = draw.blob_points(rng, c, radius, n=int(rng.integers(4, 8)), irregularity=0.45)
        cv2.fillPoly(m, [np.round(pts * 0.5).astype(np.int32)], 1.0)
        polys.append([[_r(x, 1), _r(y, 1)] for x, y in pts])
    sigma = side * _u(rng, 0.004, 0.02)
    m = cv2.resize(cv2.GaussianBlur(m, (0, 0), max(0.5, sigma / 2)), (w, h), interpolation=cv2.INTER_LINEAR)
    dark = s * _u(rng, 0.4, 0.6)
    # a shadow is lit by the sky only: a little bluer than the direct light (at most 65 % darker)
    m *= -dark
    factor = np.empty_like(m)
    for i, tint in enumerate((1.08, 1.0, 0.9)):
        np.multiply(m, tint, out=factor)
        factor += 1.0
        f[i] *= factor
    entry = {
        "name": "shadow",
        "strength": s,
        "darkness": _r(dark),
        "edge_sigma": _r(sigma, 2),
        "polygons": polys,
    }
    return f, entry


def _wet(f: np.ndarray, fg: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Irregular wet patches (object and background): darker and a little more saturated, soft edges."""
    h, w = fg.shape
    # two octaves of smooth noise built at low resolution, upsampled once
    sh, sw = max(2, h // 4), max(2, w // 4)
    small = draw.noise_field(rng, (sh, sw), int(rng.integers(4, 8))) + 0.35 * draw.noise_field(
        rng, (sh, sw), 16
    )
    field = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    coverage = s * _u(rng, 0.2, 0.4)
    thr = float(np.quantile(small, 1.0 - coverage))
    alpha = field  # reuse the buffer
    alpha -= thr
    alpha *= 1 / 0.12
    np.clip(alpha, 0.0, 1.0, out=alpha)
    darken = _u(rng, 0.3, 0.45) * (0.4 + 0.6 * s)
    sat = 1.0 + 0.3 * s
    # wet = (lum + (f - lum) * sat) * (1 - darken); out = f + alpha * (wet - f), as two per-pixel fields
    k2 = _luma(f)
    k2 *= alpha
    k2 *= (1.0 - sat) * (1.0 - darken)
    alpha *= sat * (1.0 - darken) - 1.0
    alpha += 1.0  # now k1
    f *= alpha
    f += k2
    entry = {
        "name": "wet",
        "strength": s,
        "coverage": _r(coverage),
        "darken": _r(darken),
        "saturation": _r(sat),
        "threshold": _r(thr),
    }
    return f, entry


def _brightness(f: np.ndarray, fg: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Global brightness offset and contrast gain about mid-grey."""
    gain = math.exp(_sym(rng, s * math.log(1.6)))
    offset = _sym(rng, s * 50.0)
    f *= gain
    f += 128.0 * (1.0 - gain) + offset
    return f, {"name": "brightness", "strength": s, "contrast": _r(gain), "offset": _r(offset, 2)}


def _blur(f: np.ndarray, fg: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Gaussian blur (slight defocus), sigma up to 2.5 px at 256 x 256."""
    sigma = s * _u(rng, 0.5, 1.0) * 2.5 * min(fg.shape) / 256.0
    entry = {"name": "blur", "strength": s, "sigma": _r(sigma)}
    if sigma < 0.05:
        return f, entry
    for c in f:  # each plane is contiguous: blur in place
        cv2.GaussianBlur(c, (0, 0), sigma, dst=c)
    return f, entry


def _noise(f: np.ndarray, fg: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Sensor noise: Gaussian read noise plus shot noise growing with the brightness, per channel."""
    read = s * _u(rng, 0.5, 1.0) * 10.0
    shot = s * _u(rng, 0.5, 1.0) * 0.8
    z = cv2.LUT(rng.integers(0, 256, f.shape, dtype=np.uint8), _NORMAL_LUT)
    sd = np.sqrt(np.maximum(_luma(f), 0.0) * (shot * shot) + read * read)
    z *= sd
    f += z
    return f, {"name": "noise", "strength": s, "read_sigma": _r(read), "shot_gain": _r(shot)}


_PHOTO = {
    "lighting": _lighting,
    "shadow": _shadow,
    "wet": _wet,
    "brightness": _brightness,
    "blur": _blur,
    "noise": _noise,
}
