"""Juice bottle: a glass bottle seen from the front, modelled on MVTec LOCO ``juice_bottle``.

Logical rules (as in MVTec LOCO): the bottle holds one of three juices (orange, cherry or banana), filled up
to the lower neck within a narrow band; the front label sits centred on the body, upright, and its fruit
icon shows the fruit of the juice; a small second label sits below it.

Logical anomalies: ``wrong_fill_level`` (juice far above or below the normal band; region = the rows of the
bottle between the normal and the actual level), ``label_juice_mismatch`` (the icon shows another fruit than
the juice; region = the icon), ``missing_label`` (no front label; region = its expected footprint),
``missing_bottom_label`` (no second label; region = its expected footprint) and ``misplaced_label`` (front
label shifted far up or tilted; region = the label together with its expected footprint).

Structural anomalies: ``contamination`` (a foreign particle floating in the juice), ``damaged_label`` (a torn
corner or a tear in the front label), ``scratch`` (a scratch on the glass) and ``broken_cap`` (a piece broken
out of the cap).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

from vlmad.data.synth import draw
from vlmad.data.synth.base import Category, DefectSpec, Region, Scene

# Juice colours (RGB, jittered per image) and the colour of the fruit icon for each kind.
_JUICE = {
    "orange": (238, 128, 18),
    "cherry": (128, 14, 32),
    "banana": (236, 224, 168),
}
_FRUITS = tuple(_JUICE)
# Expected label areas in pixels at 256 x 256 (absolute sPRO saturation of the "missing" defects, as MVTec
# LOCO does for missing objects): the front label is about 0.27 x 0.22 and the bottom label 0.2 x 0.06 of
# the image side.
LABEL_AREA_256 = 4000.0
BOTTOM_LABEL_AREA_256 = 850.0


@dataclass
class _Geometry:
    """Bottle geometry in pixels (y grows downwards)."""

    cx: float
    hw: float  # half width of the body
    nw: float  # half width of the neck
    y_top: float  # top of the neck (mouth)
    y_neck: float  # where the neck meets the shoulder
    y_shoulder: float  # where the shoulder meets the straight body
    y_bottom: float
    glass: float  # wall thickness

    def half_width(self, y: np.ndarray) -> np.ndarray:
        """Outer half width of the bottle at heights ``y``."""
        t = np.clip((y - self.y_neck) / (self.y_shoulder - self.y_neck), 0.0, 1.0)
        hw = self.nw + (self.hw - self.nw) * (0.5 - 0.5 * np.cos(np.pi * t))
        # rounded heel
        rc = self.hw * 0.22
        heel = np.clip((y - (self.y_bottom - rc)) / rc, 0.0, 1.0)
        return hw - rc * (1.0 - np.sqrt(1.0 - heel**2))

    def outline(self, inset: float = 0.0, top_inset: float = 0.0, bottom_inset: float = 0.0) -> np.ndarray:
        """Closed polygon (N, 2) of the bottle silhouette shrunk by ``inset`` at the sides."""
        ys = np.linspace(self.y_top + top_inset, self.y_bottom - bottom_inset, 64)
        hw = np.maximum(self.half_width(ys) - inset, 1.0)
        left = np.stack([self.cx - hw, ys], axis=1)
        right = np.stack([self.cx + hw, ys], axis=1)[::-1]
        return np.concatenate([left, right])


class JuiceBottle(Category):
    """Front view of a juice bottle with a fruit label and a small bottom label."""

    name: ClassVar[str] = "juice_bottle"
    object_name: ClassVar[str] = "juice bottle"
    defects: ClassVar[tuple[DefectSpec, ...]] = (
        DefectSpec("wrong_fill_level", "logical"),
        DefectSpec("label_juice_mismatch", "logical"),
        DefectSpec("missing_label", "logical", LABEL_AREA_256, relative_saturation=False),
        DefectSpec("missing_bottom_label", "logical", BOTTOM_LABEL_AREA_256, relative_saturation=False),
        DefectSpec("misplaced_label", "logical"),
        DefectSpec("contamination", "structural"),
        DefectSpec("damaged_label", "structural"),
        DefectSpec("scratch", "structural"),
        DefectSpec("broken_cap", "structural"),
    )

    def render(self, rng: np.random.Generator, size: int, defect: str | None) -> Scene:
        """Draw one bottle; ``defect`` is None (normal) or one of :attr:`defects` (``KeyError`` otherwise)."""
        if defect is not None:
            self.spec(defect)
        s = float(size)
        tone = np.clip(np.array([34, 36, 42], np.float32) + rng.normal(0, 5), 0, 255)
        img = draw.background(rng, size, tone, amp=7, cells=4, grain=2.5)
        bg = img.copy()

        k = rng.uniform(0.96, 1.03)
        g = _Geometry(
            cx=s * (0.5 + rng.uniform(-0.02, 0.02)),
            hw=s * 0.17 * k,
            nw=s * 0.058 * k,
            y_top=s * (0.17 + rng.uniform(-0.01, 0.01)),
            y_neck=0.0,
            y_shoulder=0.0,
            y_bottom=s * (0.955 + rng.uniform(-0.01, 0.008)),
            glass=max(1.0, s * 0.011),
        )
        g.y_neck = g.y_top + s * 0.12 * k
        g.y_shoulder = g.y_neck + s * 0.14 * k
        bottle = draw.polygon_mask(size, g.outline())
        interior = draw.polygon_mask(size, g.outline(g.glass, top_inset=g.glass, bottom_inset=s * 0.02))

        # --- glass: the background seen through a faintly tinted bottle ------------------------------
        sl = draw.bbox_slices(bottle, pad=2)
        sub = img[sl]
        glass = sub.astype(np.float32) * 0.55 + np.array([150, 165, 172], np.float32) * 0.45
        glass_rim = bottle[sl] & ~interior[sl]
        glass[glass_rim] = glass[glass_rim] * 0.7 + 70
        np.copyto(sub, glass.astype(np.uint8), where=bottle[sl][..., None])

        # --- juice, filled to a level within the normal band just below the neck -------------------
        juice = str(rng.choice(_FRUITS))
        # MVTec LOCO: the fill level is a logical property; the normal band is narrow.
        band = (g.y_neck - s * 0.035 * k, g.y_neck - s * 0.005 * k)
        band_mid = 0.5 * (band[0] + band[1])
        fill_status = "normal"
        if defect == "wrong_fill_level":
            if rng.random() < 0.5:
                fill_status, y_fill = "too_high", g.y_top + s * rng.uniform(0.012, 0.03)
            else:
                fill_status, y_fill = "too_low", g.y_shoulder + s * rng.uniform(-0.03, 0.02)
        else:
            y_fill = rng.uniform(*band)
        juice_mask = interior.copy()
        juice_mask[: round(y_fill)] = False
        jcol = np.clip(np.asarray(_JUICE[juice], np.float32) + rng.normal(0, 6, 3), 0, 255)
        draw.textured_fill(img, juice_mask, jcol, rng, amp=9, cells=4, grain=2.0)
        yf = round(y_fill)
        hwf = float(g.half_width(np.array([y_fill]))[0] - g.glass)
        surface = tuple(float(c) for c in np.minimum(255, jcol * 1.25 + 25))
        cv2.line(img, (round(g.cx - hwf), yf), (round(g.cx + hwf), yf), surface, max(1, round(s / 160)))

        # --- labels ----------------------------------------------------------------------------------
        label_w, label_h = g.hw * 1.6, s * 0.22 * k
        label_cy = g.y_shoulder + s * 0.04 + label_h / 2
        label_nominal = (g.cx, label_cy)
        icon_fruit = juice
        if defect == "label_juice_mismatch":
            icon_fruit = str(rng.choice([f for f in _FRUITS if f != juice]))
        # normal jitter of the label: a pixel or two and a degree or so
        dx, dy = s * rng.uniform(-0.008, 0.008), s * rng.uniform(-0.008, 0.008)
        angle = rng.uniform(-1.5, 1.5)
        if defect == "misplaced_label":
            mode = int(rng.integers(3))
            if mode in (0, 2):
                dy = -s * rng.uniform(0.055, 0.075)
            if mode in (1, 2):
                angle = float(rng.choice([-1, 1])) * rng.uniform(10.0, 18.0)
        nominal_front = draw.polygon_mask(size, _centred_rect(label_nominal, label_w, label_h))
        front = icon = None
        if defect != "missing_label":
            front, icon = self._draw_label(
                img, rng, (g.cx + dx, label_cy + dy), label_w, label_h, angle, icon_fruit, s, bottle
            )
        bl_w, bl_h = g.hw * 1.2, s * 0.06 * k
        bl_c = (
            g.cx + s * rng.uniform(-0.004, 0.004),
            g.y_bottom - s * 0.12 - bl_h / 2 + s * rng.uniform(-0.004, 0.004),
        )
        nominal_bottom = draw.polygon_mask(size, _centred_rect(bl_c, bl_w, bl_h))
        bottom = None
        if defect != "missing_bottom_label":
            bottom = self._draw_bottom_label(img, rng, bl_c, bl_w, bl_h, s)

        # --- 3D look: cylinder shading and a highlight stripe, then the cap ---------------------------
        self._shade_bottle(img, bottle, g)
        cap = self._draw_cap(img, rng, g, s)
        foreground = bottle | cap

        labels = np.zeros((size, size), bool)
        for m in (front, bottom):
            if m is not None:
                labels |= m
        regions: list[Region] = []
        if defect == "wrong_fill_level":
            rows = np.zeros((size, size), bool)
            lo, hi = sorted((round(y_fill), round(band_mid)))
            rows[lo:hi] = True
            m = interior & rows
            text = (
                "too high, up into the neck"
                if fill_status == "too_high"
                else "too low, leaving the shoulder empty"
            )
            regions.append(Region(defect, m, f"The juice bottle is filled {text}."))
        elif defect == "label_juice_mismatch":
            assert icon is not None
            regions.append(
                Region(
                    defect,
                    icon,
                    f"The label shows {draw.article(icon_fruit)} {icon_fruit} but the bottle "
                    f"holds {juice} juice.",
                )
            )
        elif defect == "missing_label":
            regions.append(Region(defect, nominal_front, "The front label with the fruit icon is missing."))
        elif defect == "missing_bottom_label":
            regions.append(
                Region(defect, nominal_bottom, "The small label at the bottom of the bottle is missing.")
            )
        elif defect == "misplaced_label":
            assert front is not None
            how = []
            if abs(dy) > s * 0.03:
                how.append("shifted up towards the shoulder")
            if abs(angle) > 5:
                how.append("tilted")
            regions.append(Region(defect, front | nominal_front, f"The front label is {' and '.join(how)}."))
        elif defect == "contamination":
            visible = juice_mask & ~labels
            dark = float(jcol.mean()) < 110
            col = draw.jitter_color(rng, (214, 206, 150) if dark else (48, 36, 24), 10)
            rad = s * rng.uniform(0.014, 0.022)
            m = draw.contamination(img, rng, visible, radius=rad, color=col)
            regions.append(
                Region(defect, m, f"A foreign particle floats in the juice {draw.where_phrase(m)}.")
            )
        elif defect == "damaged_label":
            assert front is not None
            m = self._tear(img, rng, front, s)
            regions.append(Region(defect, m, f"The front label is torn {draw.where_phrase(m)}."))
        elif defect == "scratch":
            ln, wd = s * rng.uniform(0.08, 0.14), max(1, round(s / 128))
            m = draw.scratch(img, rng, bottle & ~labels, length=ln, width=wd)
            regions.append(Region(defect, m, f"There is a scratch on the glass {draw.where_phrase(m)}."))
        elif defect == "broken_cap":
            m = self._break_cap(img, rng, cap, bg, s)
            regions.append(Region(defect, m, "A piece is broken out of the cap of the bottle."))

        level = (interior.any(axis=1).nonzero()[0].max() - y_fill) / max(1.0, g.y_bottom - g.y_top)
        facts: dict[str, Any] = {
            "juice": juice,
            "label_fruit": None if front is None else icon_fruit,
            "fill_level": round(float(level), 3),
            "fill_status": fill_status,
            "front_label": front is not None,
            "bottom_label": bottom is not None,
            "label_shift": round(float(dy / s), 3),
            "label_angle": round(float(angle), 1),
        }
        if defect is None:
            description = (
                f"A juice bottle filled with {juice} juice up to the neck, with a front label showing "
                f"{draw.article(juice)} {juice} and a small label below it; nothing is missing, misplaced or "
                "damaged."
            )
        else:
            description = " ".join(r.description for r in regions)
        return Scene(img, foreground, regions, description, facts)

    # ------------------------------------------------------------------ parts
    @staticmethod
    def _draw_label(
        img: np.ndarray,
        rng: np.random.Generator,
        center: tuple[float, float],
        w: float,
        h: float,
        angle: float,
        fruit: str,
        s: float,
        body: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw the front label (upright, then rotated by ``angle``); returns (label mask, icon mask)."""
        size = img.shape[0]
        layer = np.zeros((size, size, 3), np.uint8)
        lmask = np.zeros((size, size), np.uint8)
        imask = np.zeros((size, size), np.uint8)
        cx, cy = center
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        paper = tuple(float(c) for c in draw.jitter_color(rng, (240, 236, 222), 4))
        draw.fill_rounded_rect(layer, x0, y0, x1, y1, s * 0.01, paper)
        draw.fill_rounded_rect(lmask, x0, y0, x1, y1, s * 0.01, 1)
        # a thin coloured frame
        frame = (60, 110, 60)
        inset = s * 0.012
        cv2.rectangle(
            layer,
            (round(x0 + inset), round(y0 + inset)),
            (round(x1 - inset), round(y1 - inset)),
            frame,
            max(1, round(s / 256)),
        )
        # the fruit icon in the upper part
        icx, icy, r = cx, y0 + h * 0.4, h * 0.2
        _draw_icon(layer, imask, fruit, (icx, icy), r, s)
        # two lines of "text" under the icon
        ty = y0 + h * 0.74
        for line, width in ((0, 0.62), (1, 0.42)):
            yy = ty + line * h * 0.11
            xx = cx - w * width / 2
            while xx < cx + w * width / 2:
                wl = w * rng.uniform(0.07, 0.16)
                xe = min(xx + wl, cx + w * width / 2)
                cv2.rectangle(
                    layer, (round(xx), round(yy)), (round(xe), round(yy + h * 0.045)), (70, 70, 70), -1
                )
                xx = xe + w * 0.035
        if abs(angle) > 0.05:
            rot = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
            layer = cv2.warpAffine(layer, rot, (size, size), flags=cv2.INTER_LINEAR)
            lmask = cv2.warpAffine(lmask, rot, (size, size), flags=cv2.INTER_NEAREST)
            imask = cv2.warpAffine(imask, rot, (size, size), flags=cv2.INTER_NEAREST)
        lab = lmask.view(bool) & body
        np.copyto(img, layer, where=lab[..., None])
        return lab, imask.view(bool) & lab

    @staticmethod
    def _draw_bottom_label(
        img: np.ndarray, rng: np.random.Generator, center: tuple[float, float], w: float, h: float, s: float
    ) -> np.ndarray:
        """The small band label near the bottom ("100 % juice"); returns its mask."""
        size = img.shape[0]
        cx, cy = center
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        m = np.zeros((size, size), np.uint8)
        cv2.rectangle(m, (round(x0), round(y0)), (round(x1), round(y1)), 1, -1)
        mask = m.view(bool)
        draw.textured_fill(
            img, mask, draw.jitter_color(rng, (228, 222, 204), 4), rng, amp=3, cells=3, grain=1.5
        )
        # a coloured stripe and a short "text"
        cv2.rectangle(
            img, (round(x0), round(y0 + h * 0.12)), (round(x1), round(y0 + h * 0.22)), (60, 110, 60), -1
        )
        tw = w * 0.5
        cv2.rectangle(
            img,
            (round(cx - tw / 2), round(cy - h * 0.05)),
            (round(cx + tw / 2), round(cy + h * 0.22)),
            (60, 60, 60),
            -1,
        )
        return mask

    @staticmethod
    def _shade_bottle(img: np.ndarray, bottle: np.ndarray, g: _Geometry) -> None:
        """Cylinder shading across the bottle and a soft vertical highlight on its left."""
        sl = draw.bbox_slices(bottle)
        xs = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)
        u = (xs - g.cx) / g.hw
        factor = 1.0 - 0.38 * np.clip(np.abs(u), 0, 1) ** 3
        highlight = 70.0 * np.exp(-(((u + 0.55) / 0.09) ** 2)) + 25.0 * np.exp(-(((u - 0.62) / 0.05) ** 2))
        draw.scale_pixels(img[sl], factor[None, :], bottle[sl], highlight[None, :])

    @staticmethod
    def _draw_cap(img: np.ndarray, rng: np.random.Generator, g: _Geometry, s: float) -> np.ndarray:
        """A ribbed metal cap on the mouth; returns its mask."""
        size = img.shape[0]
        cw = g.nw * 1.22
        y0, y1 = g.y_top - s * 0.065, g.y_top + s * 0.012
        m = np.zeros((size, size), np.uint8)
        draw.fill_rounded_rect(m, g.cx - cw, y0, g.cx + cw, y1, s * 0.008, 1)
        mask = m.view(bool)
        base = draw.jitter_color(
            rng, [(190, 192, 196), (200, 168, 70), (70, 72, 78)][int(rng.integers(3))], 6
        )
        draw.textured_fill(img, mask, base, rng, amp=5, cells=3, grain=2.0)
        sl = draw.bbox_slices(mask)
        xs = np.arange(sl[1].start, sl[1].stop, dtype=np.float32)
        u = (xs - g.cx) / cw
        ribs = 1.0 + 0.12 * np.sin(xs * (2 * np.pi / max(2.0, s / 90)))
        factor = (1.0 - 0.45 * np.abs(u) ** 2) * ribs + 0.25 * np.exp(-(((u + 0.45) / 0.15) ** 2))
        draw.scale_pixels(img[sl], factor[None, :], mask[sl])
        # a dark seam between cap and glass
        cv2.line(img, (round(g.cx - cw), round(y1)), (round(g.cx + cw), round(y1)), (40, 40, 40), 1)
        return mask

    @staticmethod
    def _tear(img: np.ndarray, rng: np.random.Generator, label: np.ndarray, s: float) -> np.ndarray:
        """A torn-off corner (showing the bottle beneath in a darker tone) or a dark tear line."""
        if rng.random() < 0.5:
            return draw.crack(img, rng, label, length=s * rng.uniform(0.07, 0.11))
        ys, xs = np.nonzero(label)
        corner = int(rng.integers(4))
        sx, sy = (1 if corner in (1, 3) else -1), (1 if corner in (2, 3) else -1)
        px = xs[np.argmax(sx * xs + sy * ys)]
        py = ys[np.argmax(sx * xs + sy * ys)]
        r = s * rng.uniform(0.05, 0.07)
        pts = draw.blob_points(rng, (px, py), r, n=12, irregularity=0.35)
        torn = draw.polygon_mask(img.shape[:2], pts) & label
        if not torn.any():
            return draw.crack(img, rng, label)
        sl = draw.bbox_slices(torn, pad=2)
        sub = img[sl]
        beneath = np.asarray(draw.jitter_color(rng, (150, 120, 90), 8), np.float32)
        out = np.clip(sub.astype(np.float32) * 0.35 + beneath * 0.5, 0, 255).astype(np.uint8)
        np.copyto(sub, out, where=torn[sl][..., None])
        # the paper edge of the tear: a bright fibrous rim around the hole on the remaining label
        edge = draw.dilate(torn) & label & ~torn
        img[edge] = (250, 248, 240)
        return torn | edge

    @staticmethod
    def _break_cap(
        img: np.ndarray, rng: np.random.Generator, cap: np.ndarray, bg: np.ndarray, s: float
    ) -> np.ndarray:
        """Bite an irregular piece out of the top of the cap (background shows through)."""
        ys, xs = np.nonzero(cap)
        top = ys.min()
        row = xs[ys == top]
        px = float(rng.uniform(row.min(), row.max()))
        r = s * rng.uniform(0.022, 0.03)
        piece = draw.polygon_mask(img.shape[:2], draw.blob_points(rng, (px, top), r, n=10, irregularity=0.35))
        piece &= cap
        if not piece.any():
            piece = draw.ellipse_mask(img.shape[:2], (px, top + 1), (r, r)) & cap
        np.copyto(img, bg, where=piece[..., None])
        edge = draw.dilate(piece) & cap & ~piece
        img[edge] = (img[edge].astype(np.float32) * 0.45).astype(np.uint8)
        return piece | edge


def _centred_rect(center: tuple[float, float], w: float, h: float) -> np.ndarray:
    """Corners (4, 2) of the upright ``w`` x ``h`` rectangle around ``center`` (a label's footprint)."""
    return draw.rect_points(center[0] - w / 2, center[1] - h / 2, center[0] + w / 2, center[1] + h / 2)


def _draw_icon(
    layer: np.ndarray, mask: np.ndarray, fruit: str, c: tuple[float, float], r: float, s: float
) -> None:
    """Draw the fruit icon ``fruit`` of radius about ``r`` at ``c`` onto ``layer`` and into ``mask``."""
    cx, cy = c
    leaf = (70, 150, 50)
    stem = (90, 70, 30)
    lw = max(1, round(s / 200))

    def ell(
        center: tuple[float, float], axes: tuple[float, float], ang: float, color: tuple[int, int, int]
    ) -> None:
        cc = (round(center[0]), round(center[1]))
        ax = (max(1, round(axes[0])), max(1, round(axes[1])))
        cv2.ellipse(layer, cc, ax, ang, 0, 360, color, -1)
        cv2.ellipse(mask, cc, ax, ang, 0, 360, 1, -1)

    def line(p: tuple[float, float], q: tuple[float, float], color: tuple[int, int, int]) -> None:
        a, b = (round(p[0]), round(p[1])), (round(q[0]), round(q[1]))
        cv2.line(layer, a, b, color, lw + 1)
        cv2.line(mask, a, b, 1, lw + 1)

    if fruit == "orange":
        ell((cx, cy + r * 0.1), (r * 0.9, r * 0.88), 0, (240, 130, 20))
        ell((cx - r * 0.3, cy - r * 0.3), (r * 0.22, r * 0.15), -30, (250, 180, 90))
        ell((cx + r * 0.25, cy - r * 0.85), (r * 0.35, r * 0.16), -25, leaf)
    elif fruit == "cherry":
        left, right = (cx - r * 0.42, cy + r * 0.4), (cx + r * 0.45, cy + r * 0.5)
        top = (cx + r * 0.15, cy - r * 0.85)
        line(left, top, stem)
        line(right, top, stem)
        ell(left, (r * 0.48, r * 0.48), 0, (190, 20, 40))
        ell(right, (r * 0.48, r * 0.48), 0, (170, 16, 36))
        ell((top[0] + r * 0.3, top[1]), (r * 0.3, r * 0.13), 20, leaf)
    else:  # banana: a thick crescent (an ellipse with an offset ellipse taken out) with brown tips
        outer = np.zeros_like(mask)
        cv2.ellipse(
            outer, (round(cx), round(cy - r * 0.45)), (round(r * 1.1), round(r * 1.15)), 0, 8, 172, 1, -1
        )
        inner = np.zeros_like(mask)
        cv2.ellipse(
            inner, (round(cx), round(cy - r * 0.75)), (round(r * 1.05), round(r * 0.95)), 0, 0, 180, 1, -1
        )
        crescent = outer.view(bool) & ~inner.view(bool)
        layer[crescent] = (245, 212, 55)
        mask[crescent] = 1
        for sx in (-1, 1):
            tip = (cx + sx * r * 1.06, cy - r * 0.3)
            ell(tip, (r * 0.12, r * 0.12), 0, stem)
