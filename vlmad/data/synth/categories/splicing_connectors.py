"""Splicing connectors, modelled on the MVTec LOCO AD category ``splicing_connectors``.

A scene shows two lever-clamp splicing connectors (transparent housing, one orange lever per clamp) lying
left and right on a grey table, joined by one cable. The logical rules are those of MVTec LOCO:

- both connectors have the SAME number of clamps, 2, 3 or 5;
- the cable colour is fixed by the clamp count: 2 clamps -> yellow, 3 -> blue, 5 -> red;
- exactly one cable joins the connectors, and it enters the SAME clamp position (counted from the top of
  each connector) on both sides.

Logical anomalies break one rule (wrong cable colour, clamp count mismatch, missing cable, cable in
different clamp rows, extra cable, missing connector); structural anomalies damage a part (torn cable
insulation, cut cable, contamination, broken housing, open lever, discoloured housing).

Geometry is derived from the image size through ``u = size / 256`` (pixels per unit of a 256 image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from vlmad.data.synth import draw
from vlmad.data.synth.base import Category, DefectSpec, Region, Scene

#: MVTec LOCO rule: the cable colour tells how many clamps each connector of the pair has.
CABLE_FOR_CLAMPS: dict[int, str] = {2: "yellow", 3: "blue", 5: "red"}
CLAMP_COUNTS: tuple[int, ...] = (2, 3, 5)
CABLE_RGB: dict[str, draw.Color] = {
    "yellow": (226, 194, 36),
    "blue": (36, 88, 196),
    "red": (196, 36, 34),
    # colours no connector pair uses (LOCO's "unknown cable colour")
    "green": (40, 138, 62),
    "black": (36, 36, 40),
    "white": (234, 234, 228),
}
UNKNOWN_COLORS: tuple[str, ...] = ("green", "black", "white")
COPPER: draw.Color = (196, 120, 56)
TINTS: dict[str, draw.Color] = {
    "pinkish": (226, 110, 150),
    "bluish": (80, 118, 226),
    "yellowish": (222, 196, 60),
    "brownish": (140, 92, 52),
}

# Typical areas at 256 x 256 (measured over normal scenes) used as absolute sPRO saturation thresholds
# for the "missing object" defects, as MVTec LOCO does.
_CABLE_AREA_256 = 1600.0
_CONNECTOR_AREA_256 = 3700.0


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, p3: np.ndarray, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _normals(pts: np.ndarray) -> np.ndarray:
    """Unit normals (left of the direction of travel) of a polyline."""
    d = np.gradient(pts, axis=0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    return np.stack([-d[:, 1], d[:, 0]], axis=1)


@dataclass
class _Block:
    """Geometry of one connector. Local frame: x across (inner side, facing the cable, at +W/2), y along
    the clamps (row 0 at the top). ``sign`` mirrors the right connector so its inner side faces left."""

    side: str
    n: int
    cx: float
    cy: float
    ang: float
    u: float

    @property
    def sign(self) -> float:
        return 1.0 if self.side == "left" else -1.0

    @property
    def pitch(self) -> float:
        return 19.0 * self.u

    @property
    def width(self) -> float:
        return 54.0 * self.u

    @property
    def margin(self) -> float:
        return 5.0 * self.u

    @property
    def height(self) -> float:
        return self.n * self.pitch + 2 * self.margin

    def to_img(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        x, y = pts[:, 0] * self.sign, pts[:, 1]
        c, s = np.cos(self.ang), np.sin(self.ang)
        return np.stack([self.cx + c * x - s * y, self.cy + s * x + c * y], axis=1)

    def row_y(self, k: int) -> float:
        return -self.height / 2 + self.margin + (k + 0.5) * self.pitch

    def entry(self, k: int) -> np.ndarray:
        """Image point where a cable leaves clamp ``k`` (middle of the inner edge of that row)."""
        return self.to_img([[self.width / 2, self.row_y(k)]])[0]

    def inward(self) -> np.ndarray:
        """Unit vector (image frame) pointing from the connector towards the cable side."""
        return np.array([np.cos(self.ang), np.sin(self.ang)]) * self.sign

    def body(self) -> np.ndarray:
        return self.to_img(
            draw.rounded_rect_points(
                -self.width / 2, -self.height / 2, self.width / 2, self.height / 2, 4.0 * self.u, 4
            )
        )

    def lever(self, k: int) -> np.ndarray:
        w, y, h = self.width, self.row_y(k), self.pitch / 2 - 1.6 * self.u
        return self.to_img(draw.rect_points(-w / 2 + 1.5 * self.u, y - h, -w / 2 + 0.55 * w, y + h))


@dataclass
class _Cable:
    color: str
    rgb: draw.Color
    pts: np.ndarray  # centreline, (M, 2)
    left_row: int | None
    right_row: int | None


class SplicingConnectors(Category):
    """Two lever-clamp splicing connectors joined by one cable (MVTec LOCO ``splicing_connectors``).

    Rules (MVTec LOCO): equal clamp counts (2, 3 or 5), cable colour fixed by the count (yellow, blue, red),
    one cable, entering the same clamp position on both connectors.
    """

    name: ClassVar[str] = "splicing_connectors"
    object_name: ClassVar[str] = "splicing connectors"
    defects: ClassVar[tuple[DefectSpec, ...]] = (
        DefectSpec("wrong_cable_color", "logical"),
        DefectSpec("clamp_count_mismatch", "logical"),
        DefectSpec("missing_cable", "logical", _CABLE_AREA_256, relative_saturation=False),
        DefectSpec("cable_wrong_position", "logical"),
        DefectSpec("extra_cable", "logical"),
        DefectSpec("missing_connector", "logical", _CONNECTOR_AREA_256, relative_saturation=False),
        DefectSpec("broken_cable", "structural"),
        DefectSpec("cable_cut", "structural"),
        DefectSpec("contamination", "structural"),
        DefectSpec("broken_connector", "structural"),
        DefectSpec("open_lever", "structural"),
        DefectSpec("color", "structural"),
    )

    # ------------------------------------------------------------------------------------------ render
    def render(self, rng: np.random.Generator, size: int, defect: str | None) -> Scene:
        """Draw one scene (see :meth:`Category.render`); ``defect`` must be None or a declared name."""
        if defect is not None:
            self.spec(defect)  # KeyError listing the known types
        u = size / 256.0
        n = int(rng.choice(CLAMP_COUNTS))
        n_left = n_right = n
        expected = CABLE_FOR_CLAMPS[n]
        wrong_side = str(rng.choice(["left", "right"]))
        if defect == "clamp_count_mismatch":
            other = int(rng.choice([m for m in CLAMP_COUNTS if m != n]))
            n_left, n_right = (other, n) if wrong_side == "left" else (n, other)

        # ---- layout: two connectors, small jitter of position and rotation
        half_gap = rng.uniform(0.27, 0.31) * size
        yc = size / 2 + rng.uniform(-0.06, 0.06) * size
        blocks = {
            "left": _Block(
                "left",
                n_left,
                size / 2 - half_gap + rng.uniform(-3, 3) * u,
                yc + rng.uniform(-0.04, 0.04) * size,
                np.deg2rad(rng.uniform(-9, 9)),
                u,
            ),
            "right": _Block(
                "right",
                n_right,
                size / 2 + half_gap + rng.uniform(-3, 3) * u,
                yc + rng.uniform(-0.04, 0.04) * size,
                np.deg2rad(rng.uniform(-9, 9)),
                u,
            ),
        }
        present = {"left": True, "right": True}
        if defect == "missing_connector":
            present[wrong_side] = False

        # ---- cables (geometry only)
        n_min = min(n_left, n_right)
        row = int(rng.integers(n_min))
        sag = rng.choice([-1.0, 1.0]) * rng.uniform(0.04, 0.16) * size
        cw = max(3, round(9 * u))
        cable_color = expected
        if defect == "wrong_cable_color":
            if rng.random() < 0.7:
                cable_color = str(rng.choice([c for c in ("yellow", "blue", "red") if c != expected]))
            else:
                cable_color = str(rng.choice(UNKNOWN_COLORS))
        left_row, right_row = row, row
        if defect == "cable_wrong_position":
            right_row = int(rng.choice([k for k in range(n) if k != row]))
        loose_end: str | None = wrong_side if defect == "missing_connector" else None
        cables = [
            self._cable(rng, blocks, cable_color, left_row, right_row, sag, cw, size, loose_end=loose_end)
        ]
        if defect == "extra_cable":
            row2 = int(rng.choice([k for k in range(n) if k != row]))
            sag2 = -np.sign(sag) * rng.uniform(0.05, 0.16) * size
            color2 = str(rng.choice(["yellow", "blue", "red"]))
            cables.append(self._cable(rng, blocks, color2, row2, row2, sag2, cw, size))
        missing_cable = cables[0] if defect == "missing_cable" else None
        drawn_cables = [c for c in cables if c is not missing_cable]

        # cable_cut: the cable is drawn in two pieces with a gap
        cut: tuple[int, int] | None = None
        if defect == "cable_cut":
            cut = self._cut_span(rng, cables[0].pts, cw)

        # ---- background with soft shadows of the objects
        body_masks = {s: draw.polygon_mask(size, b.body()) for s, b in blocks.items() if present[s]}
        cable_masks = [
            self._cable_mask(size, c.pts, cw, cut if i == 0 else None) for i, c in enumerate(cables)
        ]
        occ = np.zeros((size, size), bool)
        for m in body_masks.values():
            occ |= m
        for c, m in zip(cables, cable_masks, strict=True):
            if c is not missing_cable:
                occ |= m
        grey = rng.uniform(112, 140)
        table_rgb = draw.jitter_color(rng, (grey, grey + 3, grey + 5), 3)
        img = draw.background(rng, size, table_rgb, amp=7, cells=6, grain=3.0)
        # soft shadows under and below-right of the objects
        offset = (max(1, round(2 * u)), max(1, round(3 * u)))
        draw.drop_shadow(img, occ, offset, blur=max(1.0, 1.4 * u), darkness=0.32)
        base = img.copy()  # table with shadows, used where the housing broke off

        # ---- connectors
        body_rgb = draw.jitter_color(rng, (210, 214, 216), 5)
        lever_rgb = draw.jitter_color(rng, (236, 118, 28), 8)
        plugged: dict[str, dict[int, draw.Color]] = {"left": {}, "right": {}}
        for c in drawn_cables:
            if c.left_row is not None:
                plugged["left"][c.left_row] = c.rgb
            if c.right_row is not None:
                plugged["right"][c.right_row] = c.rgb
        for s, b in blocks.items():
            if present[s]:
                self._draw_block(img, rng, b, body_masks[s], body_rgb, lever_rgb, plugged[s])

        # ---- cables
        for i, (c, m) in enumerate(zip(cables, cable_masks, strict=True)):
            if c is missing_cable:
                continue
            self._draw_cable(img, c, cw, u, cut if i == 0 else None)
            if c.right_row is None or c.left_row is None:
                loose = c.pts if c.right_row is None else c.pts[::-1]  # loose end last
                self._stripped_tip(img, loose, cw)
                cable_masks[i] = m | self._tip_mask(size, loose, cw)

        foreground = np.zeros((size, size), bool)
        for m in body_masks.values():
            foreground |= m
        for c, m in zip(cables, cable_masks, strict=True):
            if c is not missing_cable:
                foreground |= m

        facts: dict[str, Any] = {
            "clamps": {
                "left": n_left if present["left"] else None,
                "right": n_right if present["right"] else None,
            },
            "connectors": sum(present.values()),
            "cables": [
                {
                    "color": c.color,
                    "left_row": None if c.left_row is None else c.left_row + 1,
                    "right_row": None if c.right_row is None else c.right_row + 1,
                }
                for c in drawn_cables
            ],
            "expected_cable_color": expected,
        }
        if defect is None:
            desc = (
                f"Two {draw.number_word(n)}-clamp splicing connectors joined by one {expected} cable that "
                f"enters the {draw.ORDINALS[row]} clamp on both sides; nothing is missing or damaged."
            )
            return Scene(img, foreground, [], desc, facts)

        ctx = _Ctx(
            img=img,
            base=base,
            rng=rng,
            u=u,
            n=n,
            n_left=n_left,
            n_right=n_right,
            expected=expected,
            wrong_side=wrong_side,
            blocks=blocks,
            body_masks=body_masks,
            cables=cables,
            cable_masks=cable_masks,
            cw=cw,
            foreground=foreground,
            lever_rgb=lever_rgb,
            cut=cut,
        )
        regions = self._defect_regions(defect, ctx)
        facts["defect"] = defect
        desc = " ".join(r.description for r in regions)
        return Scene(img, ctx.foreground, regions, desc, facts)

    # ------------------------------------------------------------------------------------------ geometry
    @staticmethod
    def _cable(
        rng: np.random.Generator,
        blocks: dict[str, _Block],
        color: str,
        left_row: int,
        right_row: int,
        sag: float,
        cw: int,
        size: int,
        loose_end: str | None = None,
    ) -> _Cable:
        """A cable from clamp ``left_row`` of the left connector to ``right_row`` of the right one.

        With ``loose_end`` ("left"/"right") that end stops short of the (missing) connector and lies loose.
        """
        bl, br = blocks["left"], blocks["right"]
        p0, p3 = bl.entry(left_row), br.entry(right_row)
        dl, dr = bl.inward(), br.inward()
        if loose_end == "left":
            p0 = p0 + dl * rng.uniform(0.05, 0.11) * size + np.array([0, rng.uniform(-0.06, 0.06) * size])
            dl = dl + rng.normal(0, 0.25, 2)
        elif loose_end == "right":
            p3 = p3 + dr * rng.uniform(0.05, 0.11) * size + np.array([0, rng.uniform(-0.06, 0.06) * size])
            dr = dr + rng.normal(0, 0.25, 2)
        # two cubic Bezier pieces meeting smoothly at a sagging middle point; each end leaves its clamp
        # straight out of the housing
        mid = (p0 + p3) / 2 + np.array([rng.uniform(-0.03, 0.03) * size, sag])
        along = (p3 - p0) / max(float(np.linalg.norm(p3 - p0)), 1e-9)
        a0 = rng.uniform(0.35, 0.5) * float(np.linalg.norm(mid - p0))
        a3 = rng.uniform(0.35, 0.5) * float(np.linalg.norm(p3 - mid))
        am = 0.3 * float(np.linalg.norm(p3 - p0))
        first = _bezier(p0, p0 + dl * a0, mid - along * am, mid, 22)
        second = _bezier(mid, mid + along * am, p3 + dr * a3, p3, 22)
        pts = np.concatenate([first, second[1:]])
        rgb = draw.jitter_color(rng, CABLE_RGB[color], 7)
        return _Cable(
            color,
            rgb,
            pts,
            None if loose_end == "left" else left_row,
            None if loose_end == "right" else right_row,
        )

    @staticmethod
    def _cut_span(rng: np.random.Generator, pts: np.ndarray, cw: int) -> tuple[int, int]:
        """Indices (i0, i1) of the cable centreline removed by a cut: a gap of 1.5-3 cable widths."""
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        t = rng.uniform(0.3, 0.7) * s[-1]
        gap = rng.uniform(2.0, 3.5) * cw
        i0 = int(np.searchsorted(s, t - gap / 2))
        i1 = max(i0 + 1, int(np.searchsorted(s, t + gap / 2)))
        return i0, min(i1, len(pts) - 1)

    @staticmethod
    def _cable_mask(size: int, pts: np.ndarray, cw: int, cut: tuple[int, int] | None) -> np.ndarray:
        m = np.zeros((size, size), np.uint8)
        t = cw + 2
        if cut is None:
            draw.polyline(m, pts, 1, t)
        else:
            draw.polyline(m, pts[: cut[0] + 1], 1, t)
            draw.polyline(m, pts[cut[1] :], 1, t)
        return m.astype(bool)

    # ------------------------------------------------------------------------------------------ drawing
    @staticmethod
    def _draw_block(
        img: np.ndarray,
        rng: np.random.Generator,
        b: _Block,
        body: np.ndarray,
        body_rgb: draw.Color,
        lever_rgb: draw.Color,
        plugged: dict[int, draw.Color],
    ) -> None:
        """Transparent housing with clamp dividers, one orange lever per clamp, and wire entries."""
        u, w, n = b.u, b.width, b.n
        outline = b.body()
        draw.textured_fill(img, body, draw.jitter_color(rng, body_rgb, 3), rng, amp=6, cells=3, grain=2)
        t = max(1, round(u))
        ys = np.array([b.row_y(k) for k in range(n)])
        hl = b.pitch / 2 - 1.6 * u
        x0, x1 = -w / 2 + 1.5 * u, -w / 2 + 0.55 * w

        def rects(xa: float, ya: np.ndarray, xb: float, yb: np.ndarray) -> list[np.ndarray]:
            pts = np.stack(
                [
                    np.stack([np.full_like(ya, xa), ya], 1),
                    np.stack([np.full_like(ya, xb), ya], 1),
                    np.stack([np.full_like(ya, xb), yb], 1),
                    np.stack([np.full_like(ya, xa), yb], 1),
                ],
                1,
            )
            return list(np.round(b.to_img(pts).reshape(-1, 4, 2)).astype(np.int32))

        def fill(polys: list[np.ndarray], color: draw.Color) -> None:
            cv2.fillPoly(img, polys, color, lineType=cv2.LINE_8)

        # inner part slightly darker: the clamp springs seen through the transparent housing
        top, bot = -b.height / 2 + b.margin, b.height / 2 - b.margin
        fill(
            rects(-0.02 * w, np.array([top]), w / 2 - 2 * u, np.array([bot])),
            draw.mix(body_rgb, (60, 64, 70), 0.12),
        )
        dark = draw.mix(body_rgb, (40, 44, 48), 0.45)
        if n > 1:  # dividers between clamps
            yd = top + np.arange(1, n) * b.pitch
            seg = np.stack(
                [
                    np.stack([np.full_like(yd, -w / 2 + u), yd], 1),
                    np.stack([np.full_like(yd, w / 2 - u), yd], 1),
                ],
                1,
            )
            cv2.polylines(
                img,
                list(np.round(b.to_img(seg).reshape(-1, 2, 2)).astype(np.int32)),
                False,
                draw.mix(body_rgb, (40, 44, 48), 0.25),
                thickness=t,
            )
        # levers with a lit top edge, a shaded bottom edge and two grip ridges
        fill(rects(x0, ys - hl, x1, ys + hl), lever_rgb)
        fill(rects(x0, ys - hl, x1, ys - hl + 1.6 * u), draw.mix(lever_rgb, (255, 255, 255), 0.35))
        fill(rects(x0, ys + hl - 1.6 * u, x1, ys + hl), draw.mix(lever_rgb, (0, 0, 0), 0.3))
        ridge = draw.mix(lever_rgb, (0, 0, 0), 0.35)
        for gx in (x0 + 3.5 * u, x0 + 6.5 * u):
            fill(rects(gx - 0.5 * t, ys - hl + 2.5 * u, gx + 0.5 * t, ys + hl - 2.5 * u), ridge)
        # wire entries: dark when empty; insulation and copper seen through the housing when plugged
        hy, cy = 0.27 * b.pitch, 0.13 * b.pitch
        empty = np.array([k not in plugged for k in range(n)])
        if empty.any():
            ye = ys[empty]
            fill(rects(0.22 * w, ye - hy, w / 2 - 1.5 * u, ye + hy), draw.mix(dark, (0, 0, 0), 0.3))
        for k, rgb in plugged.items():
            y = ys[k : k + 1]
            fill(rects(0.22 * w, y - hy, w / 2, y + hy), draw.mix(rgb, body_rgb, 0.3))
            fill(rects(-0.04 * w, y - cy, 0.22 * w, y + cy), draw.mix(COPPER, body_rgb, 0.3))
        draw.polyline(img, outline, dark, t, closed=True)

    @staticmethod
    def _draw_cable(img: np.ndarray, c: _Cable, cw: int, u: float, cut: tuple[int, int] | None) -> None:
        """A round insulated cable: dark outline, body colour, and a thin highlight along one side."""
        pieces = [c.pts] if cut is None else [c.pts[: cut[0] + 1], c.pts[cut[1] :]]
        hi = draw.mix(c.rgb, (255, 255, 255), 0.45)
        edge = draw.mix(c.rgb, (0, 0, 0), 0.45)
        for p in pieces:
            draw.polyline(img, p, edge, cw + 2)
        for p in pieces:
            draw.polyline(img, p, c.rgb, cw)
            if len(p) > 2:
                draw.polyline(img, p[1:-1] + _normals(p)[1:-1] * (0.22 * cw), hi, max(1, round(0.28 * cw)))

    @staticmethod
    def _stripped_tip(img: np.ndarray, pts: np.ndarray, cw: int) -> None:
        """Bare copper end of a cable whose last point is ``pts[-1]`` (a cable not held by a clamp)."""
        draw.polyline(img, SplicingConnectors._tip(pts, cw), COPPER, max(1, round(0.45 * cw)))

    @staticmethod
    def _tip(pts: np.ndarray, cw: int) -> np.ndarray:
        d = pts[-1] - pts[-3]
        d /= max(float(np.linalg.norm(d)), 1e-9)
        return np.stack([pts[-1], pts[-1] + d * 1.7 * cw])

    @staticmethod
    def _tip_mask(size: int, pts: np.ndarray, cw: int) -> np.ndarray:
        m = np.zeros((size, size), np.uint8)
        draw.polyline(m, SplicingConnectors._tip(pts, cw), 1, max(1, round(0.45 * cw)) + 2)
        return m.astype(bool)

    # ------------------------------------------------------------------------------------------ defects
    def _defect_regions(self, defect: str, x: _Ctx) -> list[Region]:
        size = x.img.shape[0]
        n = draw.number_word(x.n)
        if defect == "wrong_cable_color":
            c = x.cables[0]
            if c.color in UNKNOWN_COLORS:
                text = (
                    f"The cable is {c.color}, a colour no connector pair uses; a {n}-clamp pair "
                    f"needs a {x.expected} cable."
                )
            else:
                text = (
                    f"The cable is {c.color} although both connectors have {n} clamps; a "
                    f"{n}-clamp pair needs a {x.expected} cable."
                )
            return [Region(defect, x.cable_masks[0], text)]
        if defect == "clamp_count_mismatch":
            s = x.wrong_side
            other = "right" if s == "left" else "left"
            m_wrong = x.n_left if s == "left" else x.n_right
            text = (
                f"The {s} connector has {draw.number_word(m_wrong)} clamps but the {other} one has {n}; both "
                f"connectors must have the same number of clamps, and the {x.expected} cable belongs to a "
                f"{n}-clamp pair."
            )
            return [Region(defect, x.body_masks[s], text)]
        if defect == "missing_cable":
            text = (
                f"No cable joins the two {n}-clamp connectors; a {x.expected} cable should run between them."
            )
            return [Region(defect, x.cable_masks[0], text)]
        if defect == "cable_wrong_position":
            c = x.cables[0]
            assert c.left_row is not None and c.right_row is not None
            text = (
                f"The cable enters the {draw.ORDINALS[c.left_row]} clamp of the left connector but the "
                f"{draw.ORDINALS[c.right_row]} clamp of the right connector; it must join the same clamp "
                "position on both sides."
            )
            return [Region(defect, x.cable_masks[0], text)]
        if defect == "extra_cable":
            c = x.cables[1]
            assert c.left_row is not None
            text = (
                f"A second, {c.color} cable joins the {draw.ORDINALS[c.left_row]} clamps of the two "
                "connectors; a pair is joined by exactly one cable."
            )
            return [Region(defect, x.cable_masks[1], text)]
        if defect == "missing_connector":
            s = x.wrong_side
            mask = draw.polygon_mask(size, x.blocks[s].body())
            text = (
                f"The {s} connector is missing; the {x.cables[0].color} cable ends loose with its bare "
                "copper end showing."
            )
            return [Region(defect, mask, text)]
        if defect == "broken_cable":
            return [self._broken_cable(x)]
        if defect == "cable_cut":
            return [self._cable_cut(x)]
        if defect == "contamination":
            regions = []
            sides = list(x.body_masks)
            x.rng.shuffle(sides)
            for s in sides[: 1 if x.rng.random() < 0.7 else 2]:
                mask = draw.contamination(x.img, x.rng, x.body_masks[s])
                regions.append(
                    Region(defect, mask, f"There is a stain on the {s} connector {draw.where_phrase(mask)}.")
                )
            return regions
        if defect == "broken_connector":
            return [self._broken_connector(x)]
        if defect == "open_lever":
            return [self._open_lever(x)]
        if defect == "color":
            return [self._discolour(x)]
        raise KeyError(defect)  # unreachable: checked by spec() in render

    def _broken_cable(self, x: _Ctx) -> Region:
        """Insulation torn open over a short stretch, copper strands showing."""
        c, rng, cw = x.cables[0], x.rng, x.cw
        pts = c.pts
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        t = rng.uniform(0.25, 0.75) * s[-1]
        length = rng.uniform(2.0, 3.5) * cw
        i0 = int(np.searchsorted(s, t - length / 2))
        i1 = max(i0 + 3, int(np.searchsorted(s, t + length / 2)))
        p = pts[i0:i1]
        nrm = _normals(pts)[i0:i1]
        k = len(p)
        taper = np.sin(np.linspace(0.15, np.pi - 0.15, k))
        a = cw / 2 * (0.55 + 0.45 * taper) * rng.uniform(0.7, 1.1, k)
        b = cw / 2 * (0.55 + 0.45 * taper) * rng.uniform(0.7, 1.1, k)
        poly = np.concatenate([p + nrm * a[:, None], (p - nrm * b[:, None])[::-1]])
        size = x.img.shape[0]
        hole = draw.polygon_mask(size, poly) & x.cable_masks[0]
        draw.textured_fill(x.img, hole, draw.jitter_color(rng, COPPER, 10), rng, amp=18, cells=6, grain=10)
        strands = np.zeros((size, size), np.uint8)
        for off in (-0.25, 0.05, 0.3):
            draw.polyline(strands, p + nrm * off * cw + rng.normal(0, 0.3, p.shape), 1, 1)
        x.img[strands.astype(bool) & hole] = draw.mix(COPPER, (60, 30, 10), 0.5)
        x.img[~hole & draw.dilate(hole) & x.cable_masks[0]] = draw.mix(
            c.rgb, (255, 255, 255), 0.25
        )  # frayed edge
        mask = draw.dilate(hole) & x.cable_masks[0]
        return Region(
            "broken_cable",
            mask,
            f"The insulation of the {c.color} cable is torn open {draw.where_phrase(mask)}, exposing the "
            "copper strands.",
        )

    def _cable_cut(self, x: _Ctx) -> Region:
        """The cable is drawn in two pieces (see render); the gap and the bare copper ends are the region."""
        c, cw = x.cables[0], x.cw
        assert x.cut is not None
        i0, i1 = x.cut
        size = x.img.shape[0]
        gap = self._cable_mask(size, c.pts, cw, None) & ~x.cable_masks[0]
        strands = np.zeros((size, size), np.uint8)
        thick = max(1, round(0.2 * cw))
        # bare copper strands splaying from both cut ends into the gap
        for end, towards in ((c.pts[i0], c.pts[min(i0 + 1, i1)]), (c.pts[i1], c.pts[max(i1 - 1, i0)])):
            d = towards - end
            d = d / max(float(np.linalg.norm(d)), 1e-9)
            for spread in (-0.35, 0.0, 0.35):
                r = np.array([d[0] - spread * d[1], d[1] + spread * d[0]])
                seg = np.stack([end, end + r * 0.8 * cw])
                draw.polyline(x.img, seg, COPPER, thick)
                draw.polyline(strands, seg, 1, thick + 2)
        x.foreground |= strands.astype(bool)
        mask = draw.dilate(gap | strands.astype(bool))
        return Region(
            "cable_cut",
            mask,
            f"The {c.color} cable is cut through {draw.where_phrase(mask)}; its two ends do not touch.",
        )

    def _broken_connector(self, x: _Ctx) -> Region:
        """A corner of one housing broken off (the table shows through), or a crack in the housing."""
        rng = x.rng
        s = str(rng.choice(list(x.body_masks)))
        b, body = x.blocks[s], x.body_masks[s]
        size = x.img.shape[0]
        if rng.random() < 0.35:
            mask = draw.crack(x.img, rng, body)
            return Region(
                "broken_connector",
                mask,
                f"The housing of the {s} connector is cracked {draw.where_phrase(mask)}.",
            )
        w, h, u = b.width, b.height, b.u
        sx, sy = rng.choice([-1.0, 1.0]), rng.choice([-1.0, 1.0])
        a, c = rng.uniform(0.3, 0.55) * w, rng.uniform(0.25, 0.45) * w
        p_top = np.array([sx * (w / 2 - a), sy * h / 2])
        p_side = np.array([sx * w / 2, sy * (h / 2 - c)])
        t = np.linspace(0, 1, 6)[1:-1, None]
        inner = p_top + (p_side - p_top) * t
        inner = inner - np.array([sx, sy]) * rng.uniform(0.5, 3.5, (len(t), 1)) * u  # jagged, bulging inwards
        edge = np.concatenate([p_top[None], inner, p_side[None]])
        poly = np.concatenate([edge, [[sx * (w / 2 + 3 * u), sy * (h / 2 + 3 * u)]]])
        chip = draw.polygon_mask(size, b.to_img(poly)) & body
        x.img[chip] = x.base[chip]
        x.foreground &= ~chip
        m = np.zeros((size, size), np.uint8)
        draw.polyline(m, b.to_img(edge), 1, max(1, round(u)))
        line = m.astype(bool) & body & ~chip
        x.img[line] = (245, 245, 242)  # fracture surface of the clear plastic catches the light
        mask = draw.dilate(chip | line) & (body | draw.dilate(chip))
        cen = b.to_img(poly.mean(axis=0, keepdims=True))[0]
        vert = "upper" if cen[1] < b.cy else "lower"
        hor = "left" if cen[0] < b.cx else "right"
        return Region(
            "broken_connector",
            mask,
            f"A piece of the housing of the {s} connector has broken off at its {vert} {hor} corner.",
        )

    def _open_lever(self, x: _Ctx) -> Region:
        """One lever raised: its slot shows dark, the lever sticks out beyond the outer edge."""
        rng = x.rng
        s = str(rng.choice(list(x.body_masks)))
        b = x.blocks[s]
        plugged_rows = {c.left_row if s == "left" else c.right_row for c in x.cables}
        rows = [k for k in range(b.n) if k not in plugged_rows] or list(range(b.n))
        k = int(rng.choice(rows))
        size = x.img.shape[0]
        w, u, y = b.width, b.u, b.row_y(k)
        h = b.pitch / 2 - 1.6 * u
        slot = b.lever(k)
        draw.fill_polygon(x.img, slot, (58, 60, 64))
        ext = rng.uniform(0.3, 0.45) * w
        pivot = -w / 2 + 0.5 * w
        far = -w / 2 - ext
        # the raised lever seen from above-ish: widening towards its free end (perspective), its dark
        # underside showing along one edge, grip ridges at the free end
        lever = np.array([[pivot, y - h], [far, y - h - 2 * u], [far, y + h + 2 * u], [pivot, y + h]])
        under = np.array(
            [[pivot, y + h - 2 * u], [far, y + h - 0.5 * u], [far, y + h + 2 * u], [pivot, y + h]]
        )
        draw.fill_polygon(x.img, b.to_img(lever), draw.mix(x.lever_rgb, (255, 255, 255), 0.12))
        tip = np.array(
            [
                [far + 0.35 * ext, y - h - 1.4 * u],
                [far, y - h - 2 * u],
                [far, y + h + 2 * u],
                [far + 0.35 * ext, y + h + 1.4 * u],
            ]
        )
        draw.fill_polygon(x.img, b.to_img(tip), draw.mix(x.lever_rgb, (255, 255, 255), 0.3))
        draw.fill_polygon(x.img, b.to_img(under), draw.mix(x.lever_rgb, (0, 0, 0), 0.45))
        for gx in (far + 3 * u, far + 6 * u):
            ridge = [[gx, y - h], [gx, y + h - 1.5 * u]]
            draw.polyline(x.img, b.to_img(ridge), draw.mix(x.lever_rgb, (0, 0, 0), 0.35), max(1, round(u)))
        draw.polyline(
            x.img, b.to_img(lever), draw.mix(x.lever_rgb, (0, 0, 0), 0.5), max(1, round(u)), closed=True
        )
        m = np.zeros((size, size), np.uint8)
        draw.fill_polygon(m, slot, 1)
        draw.fill_polygon(m, b.to_img(lever), 1)
        mask = m.astype(bool)
        x.foreground |= mask
        mask = draw.dilate(mask, max(1, round(u)))  # the outline is round(u) px wide, centred on the edge
        return Region(
            "open_lever", mask, f"The lever of the {draw.ORDINALS[k]} clamp of the {s} connector is open."
        )

    def _discolour(self, x: _Ctx) -> Region:
        """A translucent coloured patch on a housing (the texture underneath stays visible)."""
        rng = x.rng
        s = str(rng.choice(list(x.body_masks)))
        body = x.body_masks[s]
        b = x.blocks[s]
        size = x.img.shape[0]
        # centred on the clear housing (wire-entry half), where a tint shows; it may spread onto the levers
        housing = draw.polygon_mask(
            size, b.to_img(draw.rect_points(0.05 * b.width, -b.height / 2, b.width / 2, b.height / 2))
        )
        housing &= body
        r = rng.uniform(0.04, 0.065) * size
        for _ in range(20):
            c = draw.random_point_in(rng, housing)
            mask = draw.polygon_mask(size, draw.blob_points(rng, c, r, irregularity=0.3)) & body
            if mask.sum() > 0.8 * r * r:
                break
        name = str(rng.choice(list(TINTS)))
        sl = draw.bbox_slices(mask)
        draw.blend(x.img[sl], draw.jitter_color(rng, TINTS[name], 8), rng.uniform(0.5, 0.65), mask[sl])
        return Region(
            "color",
            mask,
            f"The housing of the {s} connector has a {name} discoloured patch {draw.where_phrase(mask)}.",
        )


@dataclass
class _Ctx:
    """Everything the defect drawers need from :meth:`SplicingConnectors.render`."""

    img: np.ndarray
    base: np.ndarray
    rng: np.random.Generator
    u: float
    n: int
    n_left: int
    n_right: int
    expected: str
    wrong_side: str
    blocks: dict[str, _Block]
    body_masks: dict[str, np.ndarray]
    cables: list[_Cable]
    cable_masks: list[np.ndarray]
    cw: int
    foreground: np.ndarray
    lever_rgb: draw.Color
    cut: tuple[int, int] | None
