"""Breakfast box: a two-compartment box seen from above, modelled on MVTec LOCO ``breakfast_box``.

Logical rules (as in MVTec LOCO): the left compartment holds exactly two mandarins and one nectarine; the
right compartment holds granola topped with banana chips and almonds in a fixed proportion (about as many
chips as almonds); nothing from the granola side lies in the fruit side.

Logical anomalies: ``missing_fruit`` (one of the three fruits is absent; region = its expected footprint),
``extra_fruit`` (a fourth fruit; region = that fruit), ``wrong_fruit`` (one fruit is of a kind that does not
belong in the box; region = that fruit), ``missing_toppings`` (granola without banana chips or almonds;
region = the granola surface where they belong) and ``overflow`` (granola spilt over the divider into the
fruit compartment; region = the spilt granola).

Structural anomalies: ``box_damage`` (a crack or a torn-out notch in the box wall), ``contamination`` (a
foreign stain or particle in the box), ``bruised_fruit`` (a dark soft spot on a fruit) and ``scratch`` (a
scratch on the bare box surface).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from vlmad.data.synth import draw
from vlmad.data.synth.base import Category, DefectSpec, Region, Scene

# Colours of the items, RGB (jittered per image).
_MANDARIN = (240, 132, 24)
_NECTARINE_BASE = (236, 170, 62)
_NECTARINE_BLUSH = (178, 34, 44)
# Fruits that never belong in the box (``wrong_fruit``): name -> (colour, axis ratio, blush colour or None).
_WRONG_FRUITS: dict[str, tuple[tuple[int, int, int], float, tuple[int, int, int] | None]] = {
    "green apple": ((146, 196, 64), 0.95, None),
    "lemon": ((246, 222, 58), 0.74, None),
    "plum": ((92, 38, 92), 0.9, (60, 20, 70)),
    "kiwi": ((128, 96, 52), 0.8, None),
}
_GRANOLA = (172, 118, 58)
_CHIP = (242, 230, 184)
_ALMOND = (150, 92, 50)

# Typical areas at 256 x 256 used as absolute sPRO saturation thresholds (LOCO saturates "missing"
# defects at the area of the missing object): one fruit, and all toppings of one box together.
FRUIT_AREA_256 = 1800.0
TOPPINGS_AREA_256 = 1300.0


def _gray_jitter(rng: np.random.Generator, color: tuple[int, int, int], amount: float) -> np.ndarray:
    """``color`` with a common brightness jitter and a small per-channel one (no strong hue shifts)."""
    c = np.asarray(color, np.float32) + rng.normal(0.0, amount) + rng.normal(0.0, amount * 0.25, 3)
    return np.clip(c, 0, 255).astype(np.float32)


def shade_sphere(img: np.ndarray, mask: np.ndarray, center: tuple[float, float], radius: float) -> None:
    """Shade the round object ``mask`` like a lit sphere (light from the upper left, soft specular spot)."""
    sl = draw.bbox_slices(mask)
    ys = np.arange(sl[0].start, sl[0].stop, dtype=np.float32)[:, None]
    xs = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)[None, :]
    nx = (xs - center[0]) / radius
    ny = (ys - center[1]) / radius
    nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.0, 1.0))
    lam = np.clip(nx * -0.49 + ny * -0.6 + nz * 0.76, 0.0, 1.0)
    factor = 0.45 + 0.7 * lam
    spec = np.clip(lam - 0.9, 0.0, 1.0) * 350.0
    draw.scale_pixels(img[sl], factor, mask[sl], spec)


def _cast_shadow(img: np.ndarray, mask: np.ndarray, offset: float, darkness: float) -> None:
    """A soft drop shadow of ``mask`` about ``offset`` pixels down and right (edge blur grows with it)."""
    off = max(1, round(offset))
    draw.drop_shadow(img, mask, (off, off), blur=max(1.0, off / 1.5), darkness=darkness)


def granola_texture(
    img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, s: float, base: np.ndarray
) -> None:
    """Paint granola into ``mask``: toasted lumps with darker gaps, lighter oat flakes and grain."""
    sl = draw.bbox_slices(mask)
    sub = img[sl]
    gm = mask[sl]
    h, w = gm.shape
    if h == 0 or w == 0:
        return
    # lumps: a coarse random grid upsampled linearly reads as clusters with darker gaps between them
    cell = max(2, round(s / 60))
    gh, gw = h // cell + 2, w // cell + 2
    coarse = rng.random((gh, gw), dtype=np.float32) * 2 - 1
    lumps = cv2.resize(coarse, (gw * cell, gh * cell), interpolation=cv2.INTER_LINEAR)[:h, :w]
    field = lumps * 40 + (rng.random((h, w), dtype=np.float32) - 0.5) * 22
    # the variation is strongest in red and weakest in blue (toasted brown)
    chans = [
        cv2.convertScaleAbs(field, alpha=t, beta=float(b))
        for t, b in zip((1.0, 0.8, 0.55), base, strict=True)
    ]
    layer = cv2.merge(chans)
    # oat flakes: small light ellipses drawn on the layer (a plain loop over pre-drawn random numbers)
    n = int(np.count_nonzero(gm) / (s * s) * 700)
    px = rng.uniform(0, w, n).round().astype(int).tolist()
    py = rng.uniform(0, h, n).round().astype(int).tolist()
    ax = np.maximum(1, (s * rng.uniform(0.006, 0.011, n)).round()).astype(int)
    ay = np.maximum(1, (ax * rng.uniform(0.45, 0.75, n)).round()).astype(int).tolist()
    ang = rng.uniform(0, 180, n).tolist()
    cols = np.minimum(255, np.outer(rng.uniform(0.85, 1.1, n), (214, 180, 118))).tolist()
    for i, a in enumerate(ax.tolist()):
        cv2.ellipse(layer, (px[i], py[i]), (a, ay[i]), ang[i], 0, 360, cols[i], -1)
    cv2.copyTo(layer, gm.view(np.uint8), sub)


@dataclass
class _Fruit:
    kind: str  # "mandarin", "nectarine" or a key of _WRONG_FRUITS
    center: tuple[float, float]
    radius: float
    mask: np.ndarray | None = None


@dataclass
class _Box:
    box: np.ndarray  # whole box
    left: np.ndarray  # fruit compartment floor
    right: np.ndarray  # granola compartment floor
    left_rect: tuple[float, float, float, float]
    right_rect: tuple[float, float, float, float]


class BreakfastBox(Category):
    """Top view of a breakfast box: fruit on the left, granola with toppings on the right."""

    name: ClassVar[str] = "breakfast_box"
    object_name: ClassVar[str] = "breakfast box"
    defects: ClassVar[tuple[DefectSpec, ...]] = (
        DefectSpec("missing_fruit", "logical", FRUIT_AREA_256, relative_saturation=False),
        DefectSpec("extra_fruit", "logical"),
        DefectSpec("wrong_fruit", "logical"),
        DefectSpec("missing_toppings", "logical", TOPPINGS_AREA_256, relative_saturation=False),
        DefectSpec("overflow", "logical"),
        DefectSpec("box_damage", "structural"),
        DefectSpec("contamination", "structural"),
        DefectSpec("bruised_fruit", "structural"),
        DefectSpec("scratch", "structural"),
    )

    # ------------------------------------------------------------------ scene
    def render(self, rng: np.random.Generator, size: int, defect: str | None) -> Scene:
        """Draw one box; ``defect`` is None (normal) or one of :attr:`defects` (``KeyError`` otherwise)."""
        if defect is not None:
            self.spec(defect)
        s = float(size)
        img = draw.background(rng, size, _gray_jitter(rng, (60, 63, 70), 8), amp=6, cells=5)
        bg_ref = img.copy()
        box = self._draw_box(img, rng, size)

        # --- fruit compartment -----------------------------------------------------------------
        fruits = self._layout_fruits(rng, box, s, 4 if defect == "extra_fruit" else 3)
        kinds = ["mandarin", "mandarin", "nectarine"]
        rng.shuffle(kinds)
        if defect == "extra_fruit":
            kinds.append(str(rng.choice(["mandarin", "nectarine"])))
        for f, k in zip(fruits, kinds, strict=True):
            f.kind = k
        special: _Fruit | None = None  # the fruit the defect is about
        if defect == "missing_fruit":
            special = fruits.pop(int(rng.integers(3)))
        elif defect == "extra_fruit":
            special = fruits[-1]
        elif defect == "wrong_fruit":
            special = fruits[int(rng.integers(3))]
            special.kind = str(rng.choice(list(_WRONG_FRUITS)))

        # --- granola compartment -----------------------------------------------------------------
        granola_tone = _gray_jitter(rng, _GRANOLA, 8)
        granola = self._draw_granola(img, rng, box, s, granola_tone)
        if defect == "missing_toppings":
            n_chips = n_almonds = 0
        else:
            n_chips = int(rng.integers(5, 8))
            n_almonds = n_chips + int(rng.integers(-1, 2))
            self._draw_toppings(img, rng, granola, s, n_chips, n_almonds)

        spill = None
        if defect == "overflow":
            spill = self._draw_spill(img, rng, box, s, fruits, granola_tone)

        # Fruits are drawn last: they lie on top of anything spilt.
        fruit_union = np.zeros((size, size), bool)
        for f in fruits:
            self._draw_fruit(img, rng, f, s)
            fruit_union |= f.mask  # type: ignore[arg-type]
        if special is not None and defect == "missing_fruit":
            r = special.radius * (1.06 if special.kind == "nectarine" else 1.0)
            special.mask = draw.ellipse_mask(size, special.center, (r, r))

        foreground = box.box.copy()
        regions: list[Region] = []
        facts: dict[str, Any] = {}

        # --- defects ---------------------------------------------------------------------------
        if defect in ("missing_fruit", "extra_fruit", "wrong_fruit"):
            assert special is not None and special.mask is not None
            m, kind, where = special.mask, special.kind, draw.where_phrase(special.mask)
            text = {
                "missing_fruit": f"A {kind} is missing from the fruit compartment, {where}.",
                "extra_fruit": f"There is an extra {kind} in the fruit compartment, {where}.",
                "wrong_fruit": f"A {kind}, which does not belong in the box, lies in the fruit compartment "
                f"{where}.",
            }[defect]
            regions.append(Region(defect, m, text))
        elif defect == "missing_toppings":
            regions.append(
                Region(
                    defect,
                    granola.copy(),
                    "The granola in the right compartment has no banana chips and no almonds on it.",
                )
            )
        elif defect == "overflow":
            assert spill is not None
            m = spill & ~box.right & ~fruit_union
            regions.append(
                Region(
                    defect,
                    m,
                    f"Granola has spilt over the divider into the fruit compartment {draw.where_phrase(m)}.",
                )
            )
        elif defect == "box_damage":
            m = self._box_damage(img, rng, box, bg_ref, size)
            regions.append(Region(defect, m, f"The wall of the box is damaged {draw.where_phrase(m)}."))
        elif defect == "contamination":
            rad = s * rng.uniform(0.02, 0.035)
            m = draw.contamination(img, rng, box.box & ~fruit_union, radius=rad)
            regions.append(Region(defect, m, f"There is a foreign stain in the box {draw.where_phrase(m)}."))
        elif defect == "bruised_fruit":
            f = fruits[int(rng.integers(len(fruits)))]
            assert f.mask is not None
            m = self._bruise(img, rng, f, s)
            regions.append(Region(defect, m, f"The {f.kind} {draw.where_phrase(f.mask)} has a dark bruise."))
        elif defect == "scratch":
            ln, wd = s * rng.uniform(0.1, 0.18), max(1, round(s / 128))
            m = draw.scratch(img, rng, box.box & ~granola & ~fruit_union, length=ln, width=wd)
            regions.append(Region(defect, m, f"There is a scratch on the box {draw.where_phrase(m)}."))

        n_mand = sum(f.kind == "mandarin" for f in fruits)
        n_nect = sum(f.kind == "nectarine" for f in fruits)
        others = sorted(f.kind for f in fruits if f.kind not in ("mandarin", "nectarine"))
        facts.update(
            n_mandarins=n_mand,
            n_nectarines=n_nect,
            other_fruits=others,
            n_banana_chips=n_chips,
            n_almonds=n_almonds,
            overflow=spill is not None,
        )
        if defect is None:
            description = (
                "A breakfast box with two mandarins and one nectarine on the left and granola with banana "
                "chips and almonds on the right; nothing is missing, extra or damaged."
            )
        else:
            description = " ".join(r.description for r in regions)
        return Scene(img, foreground, regions, description, facts)

    # ------------------------------------------------------------------ parts
    @staticmethod
    def _draw_box(img: np.ndarray, rng: np.random.Generator, size: int) -> _Box:
        """The box: an off-white tray with a raised rim and a divider, placed with a small jitter."""
        s = float(size)
        w = s * rng.uniform(0.86, 0.92)
        h = s * rng.uniform(0.60, 0.66)
        cx = s / 2 + s * rng.uniform(-0.02, 0.02)
        cy = s / 2 + s * rng.uniform(-0.03, 0.03)
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        wall = s * rng.uniform(0.032, 0.04)
        # LOCO's box: the fruit side is slightly narrower than the granola side.
        xm = x0 + w * rng.uniform(0.45, 0.48)
        box = draw.rounded_rect_mask(size, x0, y0, x1, y1, s * 0.03)
        _cast_shadow(img, box, s * 0.015, 0.45)
        tone = _gray_jitter(rng, (232, 228, 216), 6)
        draw.textured_fill(img, box, tone, rng, amp=5, cells=6, grain=2.0)
        left_rect = (x0 + wall, y0 + wall, xm - wall / 2, y1 - wall)
        right_rect = (xm + wall / 2, y0 + wall, x1 - wall, y1 - wall)
        left = draw.rounded_rect_mask(size, *left_rect, s * 0.018)
        right = draw.rounded_rect_mask(size, *right_rect, s * 0.018)
        off = max(1, round(s * 0.012))
        factor = np.ones((size, size), np.float32)
        for rx0, ry0, rx1, ry1 in (left_rect, right_rect):
            # the floor lies lower than the rim; the wall casts a shadow on its upper and left edge
            draw.fill_rounded_rect(factor, rx0, ry0, rx1, ry1, s * 0.018, 0.74)
            draw.fill_rounded_rect(factor, rx0 + off, ry0 + off, rx1, ry1, s * 0.018, 0.92)
        sl = draw.bbox_slices(box)
        draw.scale_pixels(img[sl], factor[sl])
        return _Box(box, left, right, left_rect, right_rect)

    @staticmethod
    def _layout_fruits(rng: np.random.Generator, box: _Box, s: float, n: int) -> list[_Fruit]:
        """Fruit centres in the left compartment: a zig-zag of three, or a 2 x 2 grid of four."""
        x0, y0, x1, y1 = box.left_rect
        cw, ch = x1 - x0, y1 - y0
        r = min(cw * 0.26, ch * 0.17) * rng.uniform(0.95, 1.05)
        if n == 3:
            flip = bool(rng.integers(2))
            xs = [0.32, 0.68, 0.32] if flip else [0.68, 0.32, 0.68]
            ys = [0.19, 0.5, 0.81]
        else:
            xs = [0.3, 0.7, 0.3, 0.7]
            ys = [0.22, 0.27, 0.73, 0.78]
        fruits = []
        for fx, fy in zip(xs, ys, strict=True):
            c = (x0 + cw * (fx + rng.uniform(-0.04, 0.04)), y0 + ch * (fy + rng.uniform(-0.025, 0.025)))
            fruits.append(_Fruit("mandarin", c, r * rng.uniform(0.94, 1.04)))
        if n == 4:
            order = rng.permutation(4)
            fruits = [fruits[i] for i in order]
        return fruits

    @staticmethod
    def _draw_fruit(img: np.ndarray, rng: np.random.Generator, f: _Fruit, s: float) -> None:
        """Draw one fruit (with drop shadow and sphere shading); sets ``f.mask``."""
        size = img.shape[0]
        ang = float(rng.uniform(0, 180))
        r = f.radius
        if f.kind == "mandarin":
            axes = (r, r * rng.uniform(0.9, 0.97))
            color, blush, grain = _gray_jitter(rng, _MANDARIN, 8), None, 7.0
        elif f.kind == "nectarine":
            r *= 1.06
            axes = (r, r * rng.uniform(0.93, 0.99))
            color, blush, grain = _gray_jitter(rng, _NECTARINE_BASE, 8), _NECTARINE_BLUSH, 2.5
        else:
            base, ratio, blush = _WRONG_FRUITS[f.kind]
            axes = (r * (1.1 if ratio < 0.8 else 1.0), r * ratio)
            color, grain = draw.jitter_color(rng, base, 8), 3.0 if f.kind != "kiwi" else 9.0
        mask = draw.ellipse_mask(size, f.center, axes, ang)
        _cast_shadow(img, mask, s * 0.012, 0.4)
        sl = draw.bbox_slices(mask)
        draw.textured_fill(img, mask, color, rng, amp=8, cells=5, grain=grain)
        if blush is not None:
            a = np.clip(draw.noise_field(rng, mask[sl].shape, 4) * 0.7 + 0.55, 0, 1)
            draw.blend(img[sl], blush, a, mask[sl])
        if f.kind == "nectarine":  # the suture line of a stone fruit
            t = np.linspace(-0.8, 0.8, 9)
            ca, sa = np.cos(np.radians(ang + 90)), np.sin(np.radians(ang + 90))
            bow = r * 0.18
            pts = np.stack(
                [
                    f.center[0] + ca * t * r - sa * bow * (1 - t * t),
                    f.center[1] + sa * t * r + ca * bow * (1 - t * t),
                ],
                axis=1,
            )
            line = np.zeros(mask[sl].shape, np.uint8)
            origin = np.array([sl[1].start, sl[0].start])
            draw.polyline(line, pts - origin, 1, max(1, round(s / 200)))
            draw.scale_pixels(img[sl], 0.86, line.view(bool) & mask[sl])
        shade_sphere(img, mask, f.center, r)
        # stem / calyx
        sx = f.center[0] + rng.uniform(-0.15, 0.15) * r
        sy = f.center[1] + rng.uniform(-0.15, 0.15) * r
        stem = (90, 100, 40) if f.kind in ("mandarin", "green apple") else (80, 60, 30)
        cv2.circle(img, (round(sx), round(sy)), max(1, round(r * 0.09)), stem, -1)
        f.mask = mask

    @staticmethod
    def _draw_granola(
        img: np.ndarray, rng: np.random.Generator, box: _Box, s: float, tone: np.ndarray
    ) -> np.ndarray:
        """Fill the right compartment with granola; returns the granola mask."""
        size = img.shape[0]
        x0, y0, x1, y1 = box.right_rect
        inset = s * 0.008
        gran = (
            draw.rounded_rect_mask(size, x0 + inset, y0 + inset, x1 - inset, y1 - inset, s * 0.02) & box.right
        )
        granola_texture(img, gran, rng, s, tone)
        return gran

    @staticmethod
    def _draw_toppings(
        img: np.ndarray, rng: np.random.Generator, granola: np.ndarray, s: float, n_chips: int, n_almonds: int
    ) -> None:
        """Scatter ``n_chips`` banana chips and ``n_almonds`` almonds over the granola."""
        chip_r = s * 0.027
        alm = (s * 0.024, s * 0.013)
        k = max(1, round(chip_r * 1.1))
        inner = draw.erode(granola, k)
        ys, xs = np.nonzero(inner)
        placed: list[tuple[float, float]] = []
        items = ["chip"] * n_chips + ["almond"] * n_almonds
        rng.shuffle(items)
        for item in items:
            best = None
            for _ in range(12):  # keep toppings from piling up
                i = int(rng.integers(ys.size))
                p = (float(xs[i]), float(ys[i]))
                d = min((np.hypot(p[0] - q[0], p[1] - q[1]) for q in placed), default=1e9)
                if best is None or d > best[0]:
                    best = (d, p)
                if d > chip_r * 2.2:
                    break
            assert best is not None
            cx, cy = best[1]
            placed.append((cx, cy))
            c = (round(cx), round(cy))
            if item == "chip":
                r = chip_r * rng.uniform(0.85, 1.1)
                cv2.circle(img, (c[0] + 1, c[1] + 1), round(r), (90, 60, 30), -1)  # shadow
                cv2.circle(img, c, round(r), draw.jitter_color(rng, (206, 176, 112), 8), -1)
                cv2.circle(img, c, max(1, round(r * 0.8)), draw.jitter_color(rng, _CHIP, 8), -1)
                for _ in range(3):
                    dx, dy = rng.uniform(-0.35, 0.35, 2) * r
                    cv2.circle(
                        img, (round(cx + dx), round(cy + dy)), max(1, round(r * 0.1)), (170, 140, 90), -1
                    )
            else:
                ang = float(rng.uniform(0, 180))
                ax = (max(1, round(alm[0] * rng.uniform(0.9, 1.1))), max(1, round(alm[1])))
                cv2.ellipse(img, (c[0] + 1, c[1] + 1), ax, ang, 0, 360, (70, 40, 20), -1)
                cv2.ellipse(img, c, ax, ang, 0, 360, draw.jitter_color(rng, _ALMOND, 8), -1)
                hi = (max(1, round(ax[0] * 0.6)), max(1, round(ax[1] * 0.35)))
                cv2.ellipse(img, (c[0] - 1, c[1] - 1), hi, ang, 0, 360, (185, 128, 80), -1)

    @staticmethod
    def _draw_spill(
        img: np.ndarray, rng: np.random.Generator, box: _Box, s: float, fruits: list[_Fruit], tone: np.ndarray
    ) -> np.ndarray:
        """A heap of granola lying over the divider and into the fruit compartment; returns its mask.

        The heap goes where the fruits leave most room next to the divider, so that it stays visible.
        """
        size = img.shape[0]
        lx1 = box.left_rect[2]
        y0, y1 = box.left_rect[1], box.left_rect[3]
        r = s * rng.uniform(0.075, 0.095)
        cands = rng.uniform(y0 + 0.15 * (y1 - y0), y1 - 0.15 * (y1 - y0), 6)
        cx = lx1 - r * rng.uniform(0.4, 0.7)
        room = [min(np.hypot(cx - f.center[0], cy - f.center[1]) - f.radius for f in fruits) for cy in cands]
        cy = float(cands[int(np.argmax(room))])
        pts = draw.blob_points(rng, (cx, cy), r, n=14, irregularity=0.3)
        pts[:, 0] = np.minimum(pts[:, 0], box.right_rect[0] + r * 0.6)
        spill = draw.polygon_mask(size, pts) & box.box
        _cast_shadow(img, spill, s * 0.008, 0.35)
        granola_texture(img, spill, rng, s, tone)
        # a few flakes and crumbs scattered around the heap
        for _ in range(int(r)):
            a = rng.uniform(0, 2 * np.pi)
            d = r * rng.uniform(0.3, 1.1)
            p = (round(cx + np.cos(a) * d), round(cy + np.sin(a) * d))
            if 0 <= p[0] < size and 0 <= p[1] < size and box.left[p[1], p[0]]:
                cv2.circle(img, p, max(1, round(s * 0.006)), draw.jitter_color(rng, (200, 160, 100), 15), -1)
                spill[max(0, p[1] - 2) : p[1] + 3, max(0, p[0] - 2) : p[0] + 3] = True
        return spill & box.box

    @staticmethod
    def _box_damage(
        img: np.ndarray, rng: np.random.Generator, box: _Box, bg: np.ndarray, size: int
    ) -> np.ndarray:
        """A crack in the wall, or a notch torn out of the outer rim; returns the changed pixels."""
        wall = box.box & ~box.left & ~box.right
        s = float(size)
        if rng.random() < 0.5:
            return draw.crack(img, rng, wall, length=s * rng.uniform(0.06, 0.1))
        # a torn notch: pick a point on the outer edge and bite an irregular piece out of the rim
        edge = wall & ~draw.erode(box.box)
        x, y = draw.random_point_in(rng, edge)
        r = s * rng.uniform(0.025, 0.035)
        bite = draw.polygon_mask(size, draw.blob_points(rng, (x, y), r, n=10, irregularity=0.4))
        bite &= box.box & ~box.left & ~box.right
        if not bite.any():
            return draw.crack(img, rng, wall)
        img[bite] = bg[bite]
        # a dark torn edge around the bite, inside the box
        rim = draw.dilate(bite) & box.box & ~bite
        img[rim] = (img[rim].astype(np.float32) * 0.55).astype(np.uint8)
        return bite | rim

    @staticmethod
    def _bruise(img: np.ndarray, rng: np.random.Generator, f: _Fruit, s: float) -> np.ndarray:
        """A soft dark-brown bruise on the fruit ``f``; returns its mask."""
        assert f.mask is not None
        r = f.radius * rng.uniform(0.3, 0.45)
        cx, cy = draw.random_point_in(rng, f.mask, margin=max(1, round(r * 0.8)))
        m = draw.ellipse_mask(
            img.shape[0], (cx, cy), (r, r * rng.uniform(0.6, 0.9)), float(rng.uniform(0, 180))
        )
        m &= f.mask
        sl = draw.bbox_slices(m, pad=1)
        yy, xx = np.mgrid[sl[0], sl[1]].astype(np.float32)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
        a = np.clip(1.5 - d, 0.55, 0.95) * (1 + 0.25 * draw.noise_field(rng, d.shape, 3))
        draw.blend(img[sl], draw.jitter_color(rng, (74, 40, 18), 6), a, m[sl])
        return m
