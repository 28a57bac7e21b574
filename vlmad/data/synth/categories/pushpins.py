"""Pushpins: a transparent compartment box with exactly one pushpin per compartment (MVTec LOCO ``pushpins``).

The scene is a top view of a clear plastic box standing on a dark surface. The box is split by thin
transparent separators into a fixed grid of ``ROWS`` x ``COLS`` compartments (3 x 5, as in MVTec LOCO), and
every compartment holds exactly one pushpin lying on its side: a yellow plastic grip, a flat disc and a
short metal needle, at a random position and orientation inside its compartment. The logical rules (from
MVTec LOCO) are: one pin per compartment, every separator present, and all pins of the same colour.

Logical anomalies
    ``missing_pushpin``     one or two compartments are empty; region = the empty compartment's interior
                            (where the pin should be), saturating at the area of one pin as MVTec LOCO does.
    ``additional_pushpin``  one (or two) compartments hold a second pin; the two pins lie side by side;
                            region = the extra pin.
    ``missing_separator``   one separator between two neighbouring compartments is missing; region = the
                            footprint of the missing wall segment.
    ``wrong_color``         one pin has a head of a colour no normal pin has (red, blue, green or white
                            instead of yellow); region = its grip and disc.

Structural anomalies
    ``broken_pin``    the needle of a pin is broken off; region = where the lost needle part should be.
    ``front_bent``    the needle tip is bent sideways; region = the straight and the bent needle tip.
    ``color_spot``    a discoloured spot on a pin's grip; region = the spot.
    ``contamination`` a foreign particle or stain on the floor of the box; region = the stain.
    ``box_scratch``   a scratch in the plastic floor of the box; region = the scratch.

Defect choices draw from a second generator seeded from the first, so the structural defects (and
``wrong_color``) are drawn on exactly the normal scene of the same seed: their pixels differ from it only
inside the regions. Region masks include the anti-aliased fringe of what the defect drew.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from vlmad.data.synth import draw
from vlmad.data.synth.base import Category, DefectSpec, Region, Scene
from vlmad.data.synth.draw import ONE, SHIFT, fixed, fixed_pt

ROWS = 3
COLS = 5

_AA = cv2.LINE_AA
# Elliptical parts of a pin: (position along the pin, half-axis along it, half-axis across it), as
# fractions of the pin's length.
_CAP = (0.04, 0.03, 0.115)  # the rounded back end of the grip
_DISC = (0.535, 0.035, 0.21)  # the flat disc (flange) between grip and needle
_DISC_HIGHLIGHT = (0.53, 0.018, 0.13)

#: Area in pixels of one pushpin at 256 x 256 (measured over many renders: grip + disc + needle). A missing
#: pin's region is its whole compartment, and sPRO saturates at one pin's area, as MVTec LOCO does.
PIN_AREA_256 = 205.0

#: Normal pins all share one colour (yellow, as in MVTec LOCO); wrong_color uses one of the others.
_NORMAL_COLOR = ("yellow", (228, 192, 38))
_WRONG_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (205, 40, 40)),
    ("blue", (45, 90, 215)),
    ("green", (45, 165, 70)),
    ("white", (236, 236, 230)),
)
_SPOT_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("brown", (120, 62, 22)),
    ("pale", (250, 246, 215)),
    ("dark", (55, 50, 40)),
    ("orange", (225, 110, 25)),
)
_DIRT_COLORS: tuple[tuple[int, int, int], ...] = (
    (190, 178, 150),
    (135, 92, 52),
    (205, 205, 210),
    (160, 150, 70),
)


@dataclass(eq=False)
class _Pin:
    """One pushpin: centre (image pixels), axis angle (radians, needle direction), length, head colour."""

    center: np.ndarray
    angle: float
    length: float
    color: tuple[int, int, int]
    row: int
    col: int
    needle_end: float = 1.0  # fraction of the length where the needle ends (< 1 when broken)
    bend: float = 0.0  # bend angle of the needle tip (radians), 0 = straight
    bend_at: float = 0.78  # fraction of the length where the tip is bent

    def __post_init__(self) -> None:
        self._c = (float(self.center[0]), float(self.center[1]))
        self._d = (float(np.cos(self.angle)), float(np.sin(self.angle)))

    def copy_straight(self) -> _Pin:
        """The same pin with an intact, straight needle (where the needle should be)."""
        return _Pin(self.center, self.angle, self.length, self.color, self.row, self.col)

    def axis(self) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = self._d
        return np.array([dx, dy]), np.array([-dy, dx])

    def at(self, t: float, s: float = 0.0) -> np.ndarray:
        """Image point at ``t`` (fraction of the length from the back end) and ``s`` (fraction, across)."""
        (cx, cy), (dx, dy), L = self._c, self._d, self.length
        a, b = (t - 0.5) * L, s * L
        return np.array([cx + dx * a - dy * b, cy + dy * a + dx * b])

    def grip_poly(
        self, s0: float = -0.115, s1: float = 0.115, t0: float = 0.03, t1: float = 0.5
    ) -> np.ndarray:
        """The grip as a slightly tapered quad between cross offsets ``s0..s1`` (fractions of the length)."""
        grow = 1.15  # the grip widens a little towards the disc
        return np.stack([self.at(t0, s0), self.at(t1, s0 * grow), self.at(t1, s1 * grow), self.at(t0, s1)])

    def ellipse(
        self,
        img: np.ndarray,
        part: tuple[float, float, float],
        color: tuple[int, int, int] | int,
        s: float = 0.0,
        line_type: int = _AA,
    ) -> None:
        """Fill an elliptical ``part`` (``_CAP``, ``_DISC``...: position ``t`` along the pin and half-axes
        along and across it, all fractions of the length), moved ``s`` across the pin."""
        t, a, b = part
        L = self.length
        axes = (round(a * L * ONE), round(b * L * ONE))
        ang = float(np.rad2deg(self.angle))
        cv2.ellipse(img, fixed_pt(self.at(t, s)), axes, ang, 0, 360, color, -1, line_type, SHIFT)

    def needle_points(self) -> list[np.ndarray]:
        """Polyline of the needle: from the disc to its end (bent tip as a second segment)."""
        start = self.at(0.55)
        if self.bend == 0.0 or self.needle_end <= self.bend_at:
            return [start, self.at(self.needle_end)]
        knee = self.at(self.bend_at)
        a = self.angle + self.bend
        tip = knee + np.array([np.cos(a), np.sin(a)]) * (self.needle_end - self.bend_at) * self.length
        return [start, knee, tip]


class Pushpins(Category):
    """A 3 x 5 compartment box with one yellow pushpin per compartment (see the module docstring)."""

    name: ClassVar[str] = "pushpins"
    object_name: ClassVar[str] = "pushpin box"
    defects: ClassVar[tuple[DefectSpec, ...]] = (
        DefectSpec("missing_pushpin", "logical", PIN_AREA_256, relative_saturation=False),
        DefectSpec("additional_pushpin", "logical"),
        DefectSpec("missing_separator", "logical"),
        DefectSpec("wrong_color", "logical"),
        DefectSpec("broken_pin", "structural"),
        DefectSpec("front_bent", "structural"),
        DefectSpec("color_spot", "structural"),
        DefectSpec("contamination", "structural"),
        DefectSpec("box_scratch", "structural"),
    )

    # ------------------------------------------------------------------ rendering
    def render(self, rng: np.random.Generator, size: int, defect: str | None) -> Scene:
        """Draw the box, its separators and pins; apply ``defect`` (see the module docstring) if given."""
        if defect is not None:
            self.spec(defect)  # KeyError for unknown types
        # Defect choices draw from their own stream, so a structural defect is drawn on exactly the normal
        # scene of the same seed (its pixels change only inside the defect regions).
        drng = np.random.default_rng(rng.integers(2**63))
        s = size
        geo = _BoxGeometry(rng, s)
        img = draw.background(rng, s, draw.jitter_color(rng, (30, 30, 34), 4), amp=6.0, cells=5, grain=1.5)

        # --- the box: transparent plastic -> a light haze over the dark surface, with a soft sheen
        box = draw.polygon_mask(s, geo.world(geo.outer_poly()))
        haze = draw.jitter_color(rng, (150, 156, 165), 6)
        alpha = float(rng.uniform(0.14, 0.22))
        sheen = draw.background(rng, s, haze, amp=10.0 / alpha, cells=4, grain=0)  # +-10 after blending
        sl = draw.bbox_slices(box)
        draw.blend(img[sl], sheen[sl], alpha, box[sl])

        # --- which compartments hold how many pins (the logical rule: exactly one each)
        counts = np.ones((ROWS, COLS), int)
        empty: list[tuple[int, int]] = []
        extra: list[tuple[int, int]] = []
        if defect == "missing_pushpin":
            n = 1 if drng.random() < 0.75 else 2
            for k in drng.choice(ROWS * COLS, n, replace=False):
                empty.append((int(k) // COLS, int(k) % COLS))
        elif defect == "additional_pushpin":
            n = 1 if drng.random() < 0.8 else 2
            for k in drng.choice(ROWS * COLS, n, replace=False):
                extra.append((int(k) // COLS, int(k) % COLS))
        for r, c in empty:
            counts[r, c] = 0
        for r, c in extra:
            counts[r, c] = 2

        base = draw.jitter_color(rng, _NORMAL_COLOR[1], 8)
        pins: list[_Pin] = []
        for r in range(ROWS):
            for c in range(COLS):
                if counts[r, c] >= 1:
                    pins.append(geo.place_pin(rng, r, c, draw.jitter_color(rng, base, 4)))

        regions: list[Region] = []
        colors = [_NORMAL_COLOR[0]] * len(pins)
        target = pins[int(drng.integers(len(pins)))]
        where = f"row {target.row + 1}, column {target.col + 1}"
        spot: tuple[str, tuple[int, int, int]] | None = None
        if defect == "wrong_color":
            cname, ccol = _WRONG_COLORS[int(drng.integers(len(_WRONG_COLORS)))]
            target.color = draw.jitter_color(drng, ccol, 6)
            colors[pins.index(target)] = cname
        elif defect == "broken_pin":
            target.needle_end = float(drng.uniform(0.62, 0.74))
        elif defect == "front_bent":
            target.bend_at = float(drng.uniform(0.72, 0.82))
            target.bend = float(drng.choice([-1.0, 1.0]) * drng.uniform(0.6, 1.2))
        elif defect == "color_spot":
            spot = _SPOT_COLORS[int(drng.integers(len(_SPOT_COLORS)))]

        extra_pins: list[_Pin] = []
        for r, c in extra:  # the compartment's pin and the extra one lie side by side
            k = next(i for i, p in enumerate(pins) if (p.row, p.col) == (r, c))
            pins[k], second = geo.place_pair(drng, r, c, (pins[k].color, draw.jitter_color(drng, base, 4)))
            extra_pins.append(second)
        _draw_shadows(img, [*pins, *extra_pins])
        for p in [*pins, *extra_pins]:
            _draw_pin(img, p)

        # --- separators and rim, drawn over everything in the box (pins never reach them)
        missing_wall: tuple[str, int, int] | None = None
        if defect == "missing_separator":
            k = int(drng.integers(ROWS * (COLS - 1) + (ROWS - 1) * COLS))
            if k < ROWS * (COLS - 1):
                missing_wall = ("v", k // (COLS - 1), k % (COLS - 1))
            else:
                k -= ROWS * (COLS - 1)
                missing_wall = ("h", k // COLS, k % COLS)
        geo.draw_walls(img, rng, missing_wall)

        # --- regions of the logical anomalies
        if defect == "missing_pushpin":
            for r, c in empty:
                regions.append(
                    Region(
                        defect,
                        geo.compartment_mask(r, c),
                        f"The compartment in row {r + 1}, column {c + 1} holds no pushpin.",
                    )
                )
        elif defect == "additional_pushpin":
            for p in extra_pins:
                regions.append(
                    Region(
                        defect,
                        _pin_mask(s, p, grow=True),
                        f"The compartment in row {p.row + 1}, column {p.col + 1} "
                        "holds an additional second pushpin.",
                    )
                )
        elif defect == "missing_separator":
            assert missing_wall is not None
            kind, i, j = missing_wall
            if kind == "v":
                between = f"row {i + 1}, columns {j + 1} and {j + 2}"
            else:
                between = f"rows {i + 1} and {i + 2}, column {j + 1}"
            text = f"The separator between the compartments in {between} is missing."
            regions.append(Region(defect, geo.wall_mask(kind, i, j), text))
        elif defect == "wrong_color":
            regions.append(
                Region(
                    defect,
                    _pin_mask(s, target, needle=False, grow=True),
                    f"The pushpin in {where} has a "
                    f"{colors[pins.index(target)]} head instead of a yellow one.",
                )
            )
        # --- regions of the structural anomalies
        elif defect == "broken_pin":
            m = _needle_mask(s, target.copy_straight(), t0=target.needle_end - 0.07, dilate=2)
            regions.append(Region(defect, m, f"The needle of the pushpin in {where} is broken off."))
        elif defect == "front_bent":  # where the tip should be and where it is now
            m = _needle_mask(s, target.copy_straight(), t0=target.bend_at - 0.05, dilate=2)
            m |= _needle_mask(s, target, t0=target.bend_at, dilate=2)
            regions.append(Region(defect, m, f"The needle tip of the pushpin in {where} is bent."))
        elif defect == "color_spot":
            assert spot is not None
            grip = _pin_mask(s, target, needle=False, flange=False)
            radius = target.length * float(drng.uniform(0.12, 0.17))
            m = draw.contamination(img, drng, grip, radius=radius, color=draw.jitter_color(drng, spot[1], 8))
            regions.append(
                Region(
                    defect,
                    m,
                    f"The head of the pushpin in {where} has {draw.article(spot[0])} {spot[0]} discoloured "
                    "spot.",
                )
            )
        elif defect == "contamination":
            floor = geo.floor_mask()
            radius = s * float(drng.uniform(0.014, 0.028))
            col = draw.jitter_color(drng, _DIRT_COLORS[int(drng.integers(len(_DIRT_COLORS)))], 8)
            m = draw.contamination(img, drng, floor, radius=radius, color=col)
            r, c = geo.compartment_of(m)
            regions.append(
                Region(
                    defect, m, f"There is a contamination in the compartment in row {r + 1}, column {c + 1}."
                )
            )
        elif defect == "box_scratch":
            pins_all = np.zeros((s, s), bool)
            for p in pins:
                pins_all |= _pin_mask(s, p)
            within = geo.floor_mask() & ~draw.dilate(pins_all, 2)
            m = draw.scratch(img, drng, within, length=s * float(drng.uniform(0.07, 0.13)))
            regions.append(
                Region(
                    defect,
                    m,
                    f"There is a scratch on the floor of the pushpin box, {draw.where_phrase(m, of=None)}.",
                )
            )

        all_colors = colors + [_NORMAL_COLOR[0]] * len(extra_pins)
        facts = {
            "rows": ROWS,
            "columns": COLS,
            "pins_per_compartment": counts.tolist(),
            "pin_count": int(counts.sum()),
            "head_colors": {c: all_colors.count(c) for c in sorted(set(all_colors))},
            "separators": geo.n_separators - (1 if missing_wall else 0),
        }
        if missing_wall is not None:
            facts["missing_separator"] = list(missing_wall)
        if defect is None:
            description = (
                f"A transparent pushpin box with {ROWS * COLS} compartments in {ROWS} rows and {COLS} "
                "columns, each holding exactly one yellow pushpin; nothing is missing or damaged."
            )
        else:
            description = " ".join(r.description for r in regions)
        return Scene(image=img, foreground=box, regions=regions, description=description, facts=facts)


# ---------------------------------------------------------------------- box geometry
class _BoxGeometry:
    """The box in its own frame (centred, axis-aligned) plus the small rotation/shift into the image."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        s = size
        self.size = s
        self.hw = s * float(rng.uniform(0.43, 0.455))
        self.hh = self.hw * float(rng.uniform(0.6, 0.64))
        self.rim = s * 0.024
        self.sep = max(2.0, s * 0.012)
        self.cw = (2 * self.hw - 2 * self.rim - (COLS - 1) * self.sep) / COLS
        self.ch = (2 * self.hh - 2 * self.rim - (ROWS - 1) * self.sep) / ROWS
        slack_x = s / 2 - self.hw - s * 0.02
        slack_y = s / 2 - self.hh - s * 0.06
        self.center = np.array(
            [s / 2 + rng.uniform(-1, 1) * slack_x * 0.5, s / 2 + rng.uniform(-1, 1) * slack_y * 0.6]
        )
        theta = np.deg2rad(rng.uniform(-2.5, 2.5))
        self.rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        self.theta = float(theta)
        self.n_separators = ROWS * (COLS - 1) + (ROWS - 1) * COLS

    # -- frames
    def world(self, pts: np.ndarray) -> np.ndarray:
        """Box-frame points (N, 2) -> image pixels."""
        return np.asarray(pts, np.float64) @ self.rot.T + self.center

    def local(self, pts: np.ndarray) -> np.ndarray:
        """Image pixels (N, 2) -> box-frame points."""
        return (np.asarray(pts, np.float64) - self.center) @ self.rot

    def outer_poly(self) -> np.ndarray:
        """The box outline with slightly rounded corners (box frame)."""
        return draw.rounded_rect_points(-self.hw, -self.hh, self.hw, self.hh, self.rim * 0.9, steps=5)

    def cell(self, r: int, c: int) -> tuple[float, float, float, float]:
        """Interior rectangle (x0, y0, x1, y1) of compartment (r, c) in the box frame."""
        x0 = -self.hw + self.rim + c * (self.cw + self.sep)
        y0 = -self.hh + self.rim + r * (self.ch + self.sep)
        return x0, y0, x0 + self.cw, y0 + self.ch

    def compartment_mask(self, r: int, c: int) -> np.ndarray:
        return draw.polygon_mask(self.size, self.world(draw.rect_points(*self.cell(r, c))))

    def floor_mask(self) -> np.ndarray:
        """All compartment interiors."""
        m = np.zeros((self.size, self.size), np.uint8)
        cv2.fillPoly(
            m,
            [fixed(self.world(draw.rect_points(*self.cell(r, c)))) for r in range(ROWS) for c in range(COLS)],
            1,
            cv2.LINE_8,
            SHIFT,
        )
        return m.astype(bool)

    def compartment_of(self, mask: np.ndarray) -> tuple[int, int]:
        """The compartment (row, col) holding the centroid of ``mask``."""
        ys, xs = np.nonzero(mask)
        x, y = self.local(np.array([[xs.mean(), ys.mean()]]))[0]
        c = int(np.clip((x + self.hw - self.rim) // (self.cw + self.sep), 0, COLS - 1))
        r = int(np.clip((y + self.hh - self.rim) // (self.ch + self.sep), 0, ROWS - 1))
        return r, c

    def wall_rect(self, kind: str, i: int, j: int, full: bool = True) -> np.ndarray:
        """A separator segment: ``("v", row, col)`` right of (row, col); ``("h", row, col)`` below it.

        ``full`` extends it over the junctions with the crossing separators (drawing); otherwise it is just
        the segment between the two compartments (the footprint used as a region when it is missing).
        """
        x0, y0, x1, y1 = self.cell(i, j)
        e = self.sep if full else 0.0
        if kind == "v":
            return draw.rect_points(x1, y0 - e, x1 + self.sep, y1 + e)
        return draw.rect_points(x0 - e, y1, x1 + e, y1 + self.sep)

    def wall_mask(self, kind: str, i: int, j: int) -> np.ndarray:
        """Footprint of a missing separator, widened by one pixel on each side."""
        m = np.zeros((self.size, self.size), np.uint8)
        cv2.fillPoly(m, [fixed(self.world(self.wall_rect(kind, i, j, full=False)))], 1, cv2.LINE_8, SHIFT)
        return draw.dilate(m)

    def draw_walls(
        self, img: np.ndarray, rng: np.random.Generator, missing: tuple[str, int, int] | None
    ) -> None:
        """Separators (every one except ``missing``) and the rim: clear plastic with a bright edge."""
        wall = draw.jitter_color(rng, (112, 118, 128), 6)
        light = draw.mix(wall, (255, 255, 255), 0.66)
        dark = draw.shade(wall, 0.55)
        walls = [("v", i, j) for i in range(ROWS) for j in range(COLS - 1)]
        walls += [("h", i, j) for i in range(ROWS - 1) for j in range(COLS)]
        walls = [w for w in walls if w != missing]
        polys = [self.world(self.wall_rect(*w)) for w in walls]
        cv2.fillPoly(img, [fixed(p) for p in polys], wall, _AA, SHIFT)
        for (kind, _, _), p in zip(walls, polys, strict=True):
            # light catches the left/top edge of each separator; the other edge is a darker line
            a, b = (p[0], p[3]) if kind == "v" else (p[0], p[1])
            c, d = (p[1], p[2]) if kind == "v" else (p[3], p[2])
            cv2.line(img, fixed_pt(a), fixed_pt(b), light, 1, _AA, SHIFT)
            cv2.line(img, fixed_pt(c), fixed_pt(d), dark, 1, _AA, SHIFT)
        # rim: outer outline minus the interior rectangle
        outer = self.world(self.outer_poly())
        inner = self.world(
            draw.rect_points(-self.hw + self.rim, -self.hh + self.rim, self.hw - self.rim, self.hh - self.rim)
        )
        rim = np.zeros(img.shape[:2], np.uint8)
        cv2.fillPoly(rim, [fixed(outer)], 1, cv2.LINE_8, SHIFT)
        cv2.fillPoly(rim, [fixed(inner)], 0, cv2.LINE_8, SHIFT)
        sl = draw.bbox_slices(rim)
        draw.blend(img[sl], draw.shade(wall, 1.12), 0.75, rim[sl])
        cv2.polylines(img, [fixed(inner)], True, light, 1, _AA, SHIFT)
        cv2.polylines(img, [fixed(outer)], True, dark, 1, _AA, SHIFT)
        # a long specular streak along the upper rim
        y = -self.hh + self.rim * 0.45
        cv2.line(
            img,
            fixed_pt(self.world([[-self.hw * 0.8, y]])[0]),
            fixed_pt(self.world([[self.hw * 0.3, y]])[0]),
            (225, 228, 232),
            1,
            _AA,
            SHIFT,
        )

    # -- pins
    def _pin_extent(self, length: float, angle_local: float) -> tuple[float, float]:
        half_w = 0.22 * length  # half-width of the disc, the widest part
        ex = 0.5 * length * abs(np.cos(angle_local)) + half_w * abs(np.sin(angle_local))
        ey = 0.5 * length * abs(np.sin(angle_local)) + half_w * abs(np.cos(angle_local))
        return ex, ey

    def _pin_length(self, rng: np.random.Generator) -> float:
        return min(self.cw, self.ch) * float(rng.uniform(0.74, 0.8))

    def place_pin(
        self,
        rng: np.random.Generator,
        r: int,
        c: int,
        color: tuple[int, int, int],
        rect: tuple[float, float, float, float] | None = None,
        angle: float | None = None,
    ) -> _Pin:
        """A pin at a random position inside compartment (r, c) (or ``rect`` of it), in the box frame.

        The orientation is uniform unless ``angle`` (box frame, radians) is given. The pin stays fully
        inside the rectangle with a small margin when it fits; otherwise it is centred.
        """
        x0, y0, x1, y1 = rect or self.cell(r, c)
        length = self._pin_length(rng)
        margin = 0.05 * min(self.cw, self.ch)
        ang = float(rng.uniform(-np.pi, np.pi)) if angle is None else angle
        ex, ey = self._pin_extent(length, ang)
        lo = np.array([x0 + ex + margin, y0 + ey + margin])
        hi = np.array([x1 - ex - margin, y1 - ey - margin])
        mid = (lo + hi) / 2
        p = mid + (np.maximum(hi - lo, 0) / 2) * rng.uniform(-1, 1, 2)
        return _Pin(self.world(p[None])[0], ang + self.theta, length, color, r, c)

    def place_pair(
        self, rng: np.random.Generator, r: int, c: int, colors: tuple[tuple[int, int, int], ...]
    ) -> tuple[_Pin, _Pin]:
        """Two pins side by side in compartment (r, c): each in one half, lying along the halves."""
        x0, y0, x1, y1 = self.cell(r, c)
        pins = []
        if rng.random() < 0.5:  # left and right halves, pins roughly vertical
            xm = (x0 + x1) / 2
            halves = [(x0, y0, xm, y1), (xm, y0, x1, y1)]
            base = np.pi / 2
        else:  # upper and lower halves, pins roughly horizontal
            ym = (y0 + y1) / 2
            halves = [(x0, y0, x1, ym), (x0, ym, x1, y1)]
            base = 0.0
        for half, col in zip(halves, colors, strict=True):
            ang = base + float(rng.uniform(-0.15, 0.15)) + (np.pi if rng.random() < 0.5 else 0.0)
            pins.append(self.place_pin(rng, r, c, col, rect=half, angle=ang))
        return pins[0], pins[1]


# ---------------------------------------------------------------------- pins
def _draw_shadows(img: np.ndarray, pins: list[_Pin]) -> None:
    """Hard drop shadows of the pins' heads (grip and disc), offset down-right, darkening what lies below."""
    heads = np.zeros(img.shape[:2], bool)
    for p in pins:
        heads |= _pin_mask(img.shape[0], p, needle=False)
    off = max(1, round(float(np.mean([p.length for p in pins])) * 0.05))
    draw.drop_shadow(img, heads, (off, off), darkness=0.375)


def _draw_pin(img: np.ndarray, p: _Pin) -> None:
    """A pushpin lying on its side: soft shadow, metal needle, yellow grip with grooves, flat disc."""
    L = p.length
    d, n = p.axis()
    light_dir = np.array([-0.7, -0.7])
    hs = 1.0 if float(n @ light_dir) > 0 else -1.0  # which side of the axis faces the light
    size = img.shape[0]
    nw = max(1, round(size / 110))
    col = np.asarray(p.color, np.float64)
    hi = draw.mix(col, (255, 255, 255), 0.55)
    lo = draw.shade(col, 0.62)
    base = draw.shade(col, 1.0)

    # needle (under the disc)
    pts = p.needle_points()
    steel, steel_hi = (168, 170, 176), (232, 234, 238)
    draw.stroke(
        img, np.array(pts), [(nw, steel), (max(1.0, nw * 0.4), steel_hi)] if nw > 1 else [(nw, steel)]
    )
    if p.needle_end < 1.0:  # broken: a short jagged, darker stub end
        e = pts[-1]
        cv2.line(
            img,
            fixed_pt(e - d * L * 0.03 + n * L * 0.025),
            fixed_pt(e + n * -L * 0.02),
            (95, 95, 100),
            1,
            _AA,
            SHIFT,
        )

    # grip: base, shaded side, highlight stripe, back cap, grooves
    p.ellipse(img, _CAP, lo)
    cv2.fillPoly(img, [fixed(p.grip_poly())], base, _AA, SHIFT)
    lo_s = (-0.115, -0.06) if hs > 0 else (0.06, 0.115)
    hi_s = (0.02, 0.065) if hs > 0 else (-0.065, -0.02)
    cv2.fillPoly(img, [fixed(p.grip_poly(*lo_s))], lo, _AA, SHIFT)
    cv2.fillPoly(img, [fixed(p.grip_poly(*hi_s, t0=0.06, t1=0.47))], hi, _AA, SHIFT)
    for t in (0.12, 0.18):
        cv2.line(img, fixed_pt(p.at(t, -0.11)), fixed_pt(p.at(t, 0.11)), lo, 1, _AA, SHIFT)
    # disc: a flat flange seen edge-on, with a highlight on its lit side
    p.ellipse(img, _DISC, lo)
    p.ellipse(img, _DISC_HIGHLIGHT, hi, s=0.04 * hs)


def _pin_mask(size: int, p: _Pin, needle: bool = True, flange: bool = True, grow: bool = False) -> np.ndarray:
    """Pixels of a pin: grip and back cap, optionally the disc and the needle.

    ``grow`` adds the anti-aliased fringe (two pixels), so the mask covers every pixel the pin drew.
    """
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [fixed(p.grip_poly())], 1, cv2.LINE_8, SHIFT)
    p.ellipse(m, _CAP, 1, line_type=cv2.LINE_8)
    if flange:
        p.ellipse(m, _DISC, 1, line_type=cv2.LINE_8)
    if needle:
        nw = max(1, round(size / 110))
        cv2.polylines(m, [fixed(np.array(p.needle_points()))], False, 1, nw, cv2.LINE_8, SHIFT)
    return draw.dilate(m, 2) if grow else m.view(bool)


def _needle_mask(size: int, p: _Pin, t0: float, dilate: int = 1) -> np.ndarray:
    """Pixels of the needle of ``p`` from ``t0`` (fraction of the length) to its end, dilated."""
    pts = p.needle_points()
    # keep the polyline beyond t0: from the knee of a bent needle, else from the point at t0
    pts = [pts[1], pts[2]] if len(pts) == 3 and t0 >= p.bend_at - 1e-9 else [p.at(t0), *pts[1:]]
    nw = max(1, round(size / 110))
    m = np.zeros((size, size), np.uint8)
    cv2.polylines(m, [fixed(np.array(pts))], False, 1, nw + 2 * dilate, cv2.LINE_8, SHIFT)
    return m.astype(bool)
