"""Screw bag: a clear plastic bag holding a fixed set of parts (MVTec LOCO ``screw_bag``).

The scene is a top view of a crinkled transparent bag (heat seal at the top, specular creases) lying on a
light surface. As in MVTec LOCO the bag holds exactly one long screw, one short screw, two hexagon nuts and
two washers, at random positions and orientations that barely touch. The logical rules are the counts and
kinds of the parts; where they lie does not matter.

Logical anomalies
    ``missing_part``        one part is missing (a screw, a nut or a washer). A missing part has no fixed
                            place in a bag, so, following MVTec LOCO's idea for such cases, the region is
                            every place it could lie: the free inside of the bag (bag interior minus the parts
                            present). sPRO saturates at the area of a typical part (``PART_AREA_256``), so
                            finding any part-sized patch of that region counts as fully found.
    ``extra_part``          one additional part of a normal kind; region = the additional part.
    ``wrong_screw_length``  two long or two short screws instead of one of each; the mismatch is between the
                            two screws (neither alone is wrong), so both screws are regions.
    ``wrong_part``          a nut replaced by a square nut, or a washer by a toothed lock washer; region = the
                            foreign part.

Structural anomalies
    ``bag_broken``     a tear in the bag film; region = the opening, its torn edges and the flap.
    ``bent_screw``     a screw's shaft is bent; region = the shaft from the kink to the tip.
    ``part_scratch``   a scratch on a screw, nut or washer; region = the scratch.
    ``contamination``  a stain or particle on the bag; region = the stain.

Defect choices draw from a second generator seeded from the first, so a structural defect is drawn on
the normal scene of the same seed (same layout, colours and film); for ``part_scratch``, ``contamination``
and ``bag_broken`` the pixels differ from that scene only inside the region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from vlmad.data.synth import draw
from vlmad.data.synth.base import Category, DefectSpec, Region, Scene
from vlmad.data.synth.draw import ONE, SHIFT, fixed, fixed_pt

_AA = cv2.LINE_AA
_LIGHT = np.array([-0.6, -0.8])  # direction towards the light in image coordinates (from the upper left)

#: The normal content of a bag, as in MVTec LOCO screw_bag.
NORMAL_COUNTS: dict[str, int] = {"long_screw": 1, "short_screw": 1, "nut": 2, "washer": 2}
_NOUNS: dict[str, tuple[str, str]] = {
    "long_screw": ("long screw", "long screws"),
    "short_screw": ("short screw", "short screws"),
    "nut": ("nut", "nuts"),
    "washer": ("washer", "washers"),
    "square_nut": ("square nut", "square nuts"),
    "lock_washer": ("toothed lock washer", "toothed lock washers"),
}
#: wrong_part: which normal kind each foreign part replaces.
_REPLACES = {"square_nut": "nut", "lock_washer": "washer"}
_REPLACED_NAME = {"nut": "hexagon nuts", "washer": "plain washers"}

#: Mean area in pixels of one part (long screw, short screw, nut, washer equally weighted) at 256 x 256,
#: measured over many renders. A missing part saturates sPRO at this many pixels.
PART_AREA_256 = 650.0


@dataclass(eq=False)
class _Part:
    """One part. Screws: ``center`` is the middle of the straight screw, ``angle`` points head -> tip."""

    kind: str
    center: np.ndarray
    angle: float
    scale: float  # the image size, all dimensions are fractions of it
    bend: float = 0.0  # screws: bend of the shaft (radians) at ``bend_at`` (fraction of the shaft length)
    bend_at: float = 0.5
    extra: bool = False  # the additional part of extra_part

    # -- dimensions (fractions of the image size)
    @property
    def is_screw(self) -> bool:
        return self.kind in ("long_screw", "short_screw")

    @property
    def d(self) -> float:
        """Shaft diameter of a screw."""
        return 0.032 * self.scale

    @property
    def shaft(self) -> float:
        return (0.30 if self.kind == "long_screw" else 0.17) * self.scale

    @property
    def head(self) -> tuple[float, float]:
        """Head length (along the axis) and width of a screw."""
        return 0.8 * self.d, 1.85 * self.d

    @property
    def radius(self) -> float:
        """Outer radius of a round part (circumradius of a nut)."""
        return {"nut": 0.05, "washer": 0.058, "square_nut": 0.052, "lock_washer": 0.06}[
            self.kind
        ] * self.scale

    # -- geometry
    def _u(self, a: float) -> np.ndarray:
        return np.array([np.cos(a), np.sin(a)])

    def screw_points(self) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """Back of the head, head/shaft joint, and the shaft as a list of (start, end) segments."""
        u = self._u(self.angle)
        hl, _ = self.head
        total = hl + self.shaft
        back = self.center - u * total / 2
        joint = back + u * hl
        if self.bend == 0.0:
            return back, joint, [(joint, joint + u * self.shaft)]
        knee = joint + u * self.shaft * self.bend_at
        tip = knee + self._u(self.angle + self.bend) * self.shaft * (1 - self.bend_at)
        return back, joint, [(joint, knee), (knee, tip)]

    def circles(self) -> np.ndarray:
        """(N, 3) circles (x, y, r) covering the part, for the no-overlap placement test."""
        if not self.is_screw:
            return np.array([[self.center[0], self.center[1], self.radius]])
        back, joint, segs = self.screw_points()
        _, hw = self.head
        out = [[*((back + joint) / 2), hw * 0.6]]
        r = self.d * 0.6
        rows = [np.array(out)]
        for a, b in segs:
            n = max(2, int(np.ceil(np.linalg.norm(b - a) / r)) + 1)
            t = np.linspace(0, 1, n)[:, None]
            rows.append(np.concatenate([a + (b - a) * t, np.full((n, 1), r)], axis=1))
        return np.concatenate(rows)

    def _quad(self, a: np.ndarray, b: np.ndarray, w0: float, w1: float | None = None) -> np.ndarray:
        """Quad from ``a`` to ``b`` with widths ``w0`` at ``a`` and ``w1`` at ``b``."""
        w1 = w0 if w1 is None else w1
        u = (b - a) / max(1e-9, float(np.linalg.norm(b - a)))
        n = np.array([-u[1], u[0]])
        return np.stack([a + n * w0 / 2, b + n * w1 / 2, b - n * w1 / 2, a - n * w0 / 2])

    def outline(self) -> list[np.ndarray]:
        """Polygons whose union is the part's footprint (holes included)."""
        c, r = self.center, self.radius if not self.is_screw else 0.0
        if self.kind == "nut":
            a = self.angle + np.arange(6) * np.pi / 3
            return [c + r * np.stack([np.cos(a), np.sin(a)], 1)]
        if self.kind == "square_nut":
            a = self.angle + np.pi / 4 + np.arange(4) * np.pi / 2
            return [c + r * np.stack([np.cos(a), np.sin(a)], 1)]
        if self.kind == "washer":
            a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            return [c + r * np.stack([np.cos(a), np.sin(a)], 1)]
        if self.kind == "lock_washer":
            a = self.angle + np.linspace(0, 2 * np.pi, 24, endpoint=False)
            rr = np.where(np.arange(24) % 2 == 0, r, r * 0.8)
            return [c + rr[:, None] * np.stack([np.cos(a), np.sin(a)], 1)]
        back, joint, segs = self.screw_points()
        _, hw = self.head
        polys = [self._quad(back, joint, hw)]
        for i, (a, b) in enumerate(segs):
            if i == len(segs) - 1:  # tapered tip over the last 0.6 d
                u = (b - a) / np.linalg.norm(b - a)
                cut = b - u * 0.6 * self.d
                polys += [self._quad(a, cut, self.d), self._quad(cut, b, self.d, 0.55 * self.d)]
            else:
                polys.append(self._quad(a, b, self.d))
        return polys

    def hole_radius(self) -> float:
        return {"nut": 0.42, "square_nut": 0.4, "washer": 0.5, "lock_washer": 0.48}.get(self.kind, 0.0) * (
            self.radius if not self.is_screw else 0.0
        )

    def mask(self, size: int) -> np.ndarray:
        """Footprint of the part (holes included: the hole is part of the object)."""
        m = np.zeros((size, size), np.uint8)
        polys = self.outline()
        cv2.fillPoly(m, [fixed(p) for p in polys], 1, cv2.LINE_8, SHIFT)
        if len(polys) > 2:  # bent screw: fill the joint at the knee
            _, _, segs = self.screw_points()
            cv2.circle(m, fixed_pt(segs[0][1]), round(self.d / 2 * ONE), 1, -1, cv2.LINE_8, SHIFT)
        return m.astype(bool)

    def surface(self, size: int) -> np.ndarray:
        """Metal surface of the part: the footprint minus the hole."""
        m = self.mask(size).astype(np.uint8)
        if self.hole_radius() > 0:
            cv2.circle(m, fixed_pt(self.center), round(self.hole_radius() * ONE), 0, -1, cv2.LINE_8, SHIFT)
        return m.astype(bool)

    # -- drawing
    def draw(self, img: np.ndarray, holes: np.ndarray, metal: np.ndarray) -> None:
        """Draw the part on ``img`` (anti-aliased) and mark its hole in ``holes`` (uint8)."""
        if self.is_screw:
            self._draw_screw(img, metal)
            return
        c, r = self.center, self.radius
        edge = draw.shade(metal, 0.45)
        if self.kind in ("nut", "square_nut"):
            poly = self.outline()[0]
            k = len(poly)
            tris = []
            for i in range(k):  # facets lit by their outward normal
                a, b = poly[i], poly[(i + 1) % k]
                mid = (a + b) / 2 - c
                nrm = mid / max(1e-9, float(np.linalg.norm(mid)))
                tris.append((np.stack([c, a, b]), draw.shade(metal, 0.82 + 0.32 * float(nrm @ _LIGHT))))
            for tri, col in tris:
                cv2.fillPoly(img, [fixed(tri)], col, _AA, SHIFT)
            top = 0.82 if self.kind == "nut" else 0.7
            cv2.circle(img, fixed_pt(c), round(r * top * ONE), draw.shade(metal, 1.05), -1, _AA, SHIFT)
            cv2.polylines(img, [fixed(poly)], True, edge, 1, _AA, SHIFT)
            hr = self.hole_radius()
            cv2.circle(holes, fixed_pt(c), round(hr * ONE), 1, -1, cv2.LINE_8, SHIFT)
            cv2.circle(
                img,
                fixed_pt(c),
                round((hr + 0.06 * r) * ONE),
                draw.shade(metal, 0.4),
                max(1, round(0.12 * r)),
                _AA,
                SHIFT,
            )
            return
        # washers: a ring lit on the upper left, dark on the lower right
        if self.kind == "lock_washer":
            cv2.fillPoly(img, [fixed(self.outline()[0])], draw.shade(metal, 0.95), _AA, SHIFT)
            cv2.polylines(img, [fixed(self.outline()[0])], True, edge, 1, _AA, SHIFT)
            ring_r = 0.65 * r
        else:
            cv2.circle(img, fixed_pt(c), round(r * ONE), draw.shade(metal, 0.95), -1, _AA, SHIFT)
            ring_r = 0.75 * r
        light_deg = float(np.rad2deg(np.arctan2(_LIGHT[1], _LIGHT[0])))
        th = max(1, round(0.22 * r))
        axes = (round(ring_r * ONE), round(ring_r * ONE))
        lit = draw.mix(metal, (255, 255, 255), 0.55)
        cv2.ellipse(img, fixed_pt(c), axes, light_deg, -55, 55, lit, th, _AA, SHIFT)
        cv2.ellipse(img, fixed_pt(c), axes, light_deg + 180, -55, 55, draw.shade(metal, 0.7), th, _AA, SHIFT)
        if self.kind == "washer":
            cv2.circle(img, fixed_pt(c), round(r * ONE), edge, 1, _AA, SHIFT)
        hr = self.hole_radius()
        cv2.circle(holes, fixed_pt(c), round(hr * ONE), 1, -1, cv2.LINE_8, SHIFT)
        cv2.circle(img, fixed_pt(c), round((hr + 0.03 * r) * ONE), edge, 1, _AA, SHIFT)

    def _draw_screw(self, img: np.ndarray, metal: np.ndarray) -> None:
        back, joint, segs = self.screw_points()
        _, hw = self.head
        d = self.d
        base, dark = draw.shade(metal, 0.92), draw.shade(metal, 0.5)
        light = draw.mix(metal, (255, 255, 255), 0.6)
        # head, seen from the side: a middle face and two darker side faces of the hexagon
        cv2.fillPoly(img, [fixed(self._quad(back, joint, hw))], draw.shade(metal, 0.75), _AA, SHIFT)
        cv2.fillPoly(img, [fixed(self._quad(back, joint, hw * 0.5))], draw.shade(metal, 1.08), _AA, SHIFT)
        cv2.polylines(img, [fixed(self._quad(back, joint, hw))], True, dark, 1, _AA, SHIFT)
        polys = self.outline()[1:]
        cv2.fillPoly(img, [fixed(p) for p in polys], base, _AA, SHIFT)
        if len(segs) > 1:
            cv2.circle(img, fixed_pt(segs[0][1]), round(d / 2 * ONE), base, -1, _AA, SHIFT)
        # a highlight along the lit side, then the thread crossing it
        lines_hi, threads = [], []
        pitch = 0.34 * d
        for a, b in segs:
            length = float(np.linalg.norm(b - a))
            u = (b - a) / length
            n = np.array([-u[1], u[0]])
            side = -1.0 if float(n @ _LIGHT) < 0 else 1.0
            lines_hi.append(np.stack([a + n * side * 0.2 * d, b - u * 0.4 * d + n * side * 0.2 * d]))
            ts = np.arange(pitch * 0.6, length - 0.5 * d, pitch)[:, None]
            p0 = a + u * ts - n * 0.5 * d  # one slanted line per turn of the thread
            threads.extend(fixed(np.stack([p0, p0 + u * pitch * 0.5 + n * d], axis=1)))
        cv2.polylines(img, [fixed(p) for p in lines_hi], False, light, max(1, round(d * 0.18)), _AA, SHIFT)
        cv2.polylines(img, threads, False, dark, 1, _AA, SHIFT)
        for p in polys:
            cv2.polylines(img, [fixed(p)], True, draw.shade(metal, 0.55), 1, _AA, SHIFT)


class ScrewBag(Category):
    """A bag with one long screw, one short screw, two nuts and two washers (see the module docstring)."""

    name: ClassVar[str] = "screw_bag"
    object_name: ClassVar[str] = "screw bag"
    defects: ClassVar[tuple[DefectSpec, ...]] = (
        DefectSpec("missing_part", "logical", PART_AREA_256, relative_saturation=False),
        DefectSpec("extra_part", "logical"),
        DefectSpec("wrong_screw_length", "logical"),
        DefectSpec("wrong_part", "logical"),
        DefectSpec("bag_broken", "structural"),
        DefectSpec("bent_screw", "structural"),
        DefectSpec("part_scratch", "structural"),
        DefectSpec("contamination", "structural"),
    )

    def render(self, rng: np.random.Generator, size: int, defect: str | None) -> Scene:
        """Draw the surface, the parts and the bag film; apply ``defect`` (see the module docstring)."""
        if defect is not None:
            self.spec(defect)
        # Defect choices draw from their own stream, so a structural defect is drawn on the normal scene of
        # the same seed (the same layout, colours and film).
        drng = np.random.default_rng(rng.integers(2**63))
        s = size
        bag = _Bag(rng, s)
        img = draw.background(rng, s, draw.jitter_color(rng, (206, 205, 200), 5), amp=6.0, cells=5, grain=1.5)

        # --- what goes in the bag
        kinds = [k for k, n in NORMAL_COUNTS.items() for _ in range(n)]
        extra_kind = missing_kind = foreign = None
        if defect == "missing_part":
            missing_kind = str(drng.choice(list(NORMAL_COUNTS)))
            kinds.remove(missing_kind)
        elif defect == "extra_part":
            extra_kind = str(drng.choice(list(NORMAL_COUNTS)))
        elif defect == "wrong_screw_length":
            keep = "long_screw" if drng.random() < 0.5 else "short_screw"
            kinds = [keep if k.endswith("screw") else k for k in kinds]
        elif defect == "wrong_part":
            foreign = "square_nut" if drng.random() < 0.5 else "lock_washer"
            kinds.remove(_REPLACES[foreign])
            kinds.append(foreign)
        parts: list[_Part] = []
        order = sorted(
            kinds, key=lambda k: ("long_screw", "short_screw").index(k) if k.endswith("screw") else 2
        )
        if extra_kind is not None:
            order.append(extra_kind)
        for i, kind in enumerate(order):
            part = bag.place(rng, kind, parts)
            part.extra = extra_kind is not None and i == len(order) - 1
            parts.append(part)
        screws = [p for p in parts if p.is_screw]
        if defect == "bent_screw":  # bent after placement, so the layout is that of the normal scene
            bent = screws[int(drng.integers(2))]
            amount = float(drng.uniform(0.3, 0.55))
            bent.bend_at = float(drng.uniform(0.4, 0.65))
            bent.bend = 0.0
            others = np.concatenate([p.circles() for p in parts if p is not bent])
            gaps = []
            for sign in (1.0, -1.0):  # bend towards the side with more room, staying inside the bag
                bent.bend = sign * amount
                gaps.append(bag.room(bent.circles(), others))
            free = [g >= 0 for g in gaps]
            sign = float(drng.choice([1.0, -1.0])) if all(free) else (1.0 if gaps[0] >= gaps[1] else -1.0)
            bent.bend = sign * amount
            while bag.room(bent.circles(), np.zeros((0, 3))) < 0 and abs(bent.bend) > 0.1:
                bent.bend *= 0.7  # never bend out of the bag
                gaps.append(_clearance(bent.circles(), others))
            free = [g >= 0 for g in gaps]
            sign = float(drng.choice([1.0, -1.0])) if all(free) else (1.0 if gaps[0] >= gaps[1] else -1.0)
            bent.bend = sign * amount

        # --- soft shadows, parts, holes showing the surface below
        grey = float(rng.uniform(-12, 12))  # zinc-plated steel: one brightness, a faint blue tint
        metal = np.asarray(draw.jitter_color(rng, (148 + grey, 151 + grey, 158 + grey), 2), np.float64)
        _draw_shadows(img, parts)
        under = img.copy()
        holes = np.zeros((s, s), np.uint8)
        for p in parts:
            p.draw(img, holes, np.clip(metal + rng.normal(0, 4), 0, 255))
        np.copyto(img, under, where=holes.astype(bool)[..., None])

        regions: list[Region] = []
        if defect == "part_scratch":
            p = parts[int(drng.integers(len(parts)))]
            m = _scratch_part(img, drng, p)
            regions.append(
                Region(
                    defect,
                    m,
                    f"There is a scratch on the {_NOUNS[p.kind][0]} {draw.where_phrase(m, of='the bag')}.",
                )
            )

        # --- the bag film over everything inside it
        pre_film = img.copy()
        bag.draw_film(img, rng)

        if defect == "missing_part":
            assert missing_kind is not None
            present = draw.dilate(_parts_mask(s, parts), max(3, round(s * 0.02)) // 2)
            free = bag.interior_mask() & ~present
            n_left = NORMAL_COUNTS[missing_kind] - 1
            noun, plural = _NOUNS[missing_kind]
            if n_left == 0:
                text = f"The screw bag holds no {noun}; one {noun} is missing."
            else:
                text = (
                    f"The screw bag holds only {draw.count_words(n_left, noun, plural)} instead of "
                    f"{draw.count_words(NORMAL_COUNTS[missing_kind], noun, plural)}; one {noun} is missing."
                )
            regions.append(Region(defect, free, text))
        elif defect == "extra_part":
            p = next(q for q in parts if q.extra)
            noun, plural = _NOUNS[p.kind]
            n = NORMAL_COUNTS[p.kind]
            m = p.mask(s)
            now, normal = draw.count_words(n + 1, noun, plural), draw.count_words(n, noun, plural)
            where = draw.where_phrase(m, of="the bag")
            text = f"There is an additional {noun} {where}: the screw bag holds {now} instead of {normal}."
            regions.append(Region(defect, m, text))
        elif defect == "wrong_screw_length":
            noun = _NOUNS[screws[0].kind][0]
            for p in screws:
                m = p.mask(s)
                regions.append(
                    Region(
                        defect,
                        m,
                        f"The {noun} {draw.where_phrase(m, of='the bag')} is one of two {noun}s; the bag "
                        "should hold one long and one short screw.",
                    )
                )
        elif defect == "wrong_part":
            assert foreign is not None
            p = next(q for q in parts if q.kind == foreign)
            m = p.mask(s)
            replaced = _REPLACES[foreign]
            regions.append(
                Region(
                    defect,
                    m,
                    f"A {_NOUNS[foreign][0]} {draw.where_phrase(m, of='the bag')} replaces one of the two "
                    f"{_REPLACED_NAME[replaced]}.",
                )
            )
        elif defect == "bent_screw":
            p = next(q for q in screws if q.bend)
            m = _bent_region(s, p) & bag.mask
            regions.append(
                Region(
                    defect,
                    m,
                    f"The {_NOUNS[p.kind][0]} {draw.where_phrase(p.mask(s), of='the bag')} is bent.",
                )
            )
        elif defect == "contamination":
            col = draw.jitter_color(
                drng, [(70, 50, 30), (45, 45, 45), (150, 120, 40), (95, 120, 60)][int(drng.integers(4))], 8
            )
            m = draw.contamination(
                img, drng, bag.interior_mask(), radius=s * float(drng.uniform(0.016, 0.03)), color=col
            )
            regions.append(
                Region(
                    defect, m, f"There is a contamination on the screw bag {draw.where_phrase(m, of=None)}."
                )
            )
        elif defect == "bag_broken":
            keep_out = draw.dilate(_parts_mask(s, parts), 2)
            m = bag.tear(img, pre_film, drng, bag.interior_mask() & ~keep_out)
            regions.append(Region(defect, m, f"The screw bag is torn {draw.where_phrase(m, of=None)}."))

        counts = {k: sum(p.kind == k for p in parts) for k in (*NORMAL_COUNTS, *_REPLACES)}
        facts = {
            "counts": {k: v for k, v in counts.items() if k in NORMAL_COUNTS or v},
            "screws": len(screws),
            "screw_lengths": sorted("long" if p.kind == "long_screw" else "short" for p in screws),
            "parts": len(parts),
        }
        if defect is None:
            description = (
                "A transparent screw bag holding one long screw, one short screw, two hexagon nuts and two "
                "washers; nothing is missing or damaged."
            )
        elif defect == "wrong_screw_length":
            noun = _NOUNS[screws[0].kind][1]
            description = f"The screw bag holds two {noun} instead of one long and one short screw."
        else:
            description = " ".join(r.description for r in regions)
        return Scene(image=img, foreground=bag.mask, regions=regions, description=description, facts=facts)


def _bent_region(size: int, p: _Part) -> np.ndarray:
    """The bent part of a screw: the shaft from just before the kink to the tip, dilated by a pixel."""
    _, _, segs = p.screw_points()
    knee, tip = segs[-1]
    u = (tip - knee) / np.linalg.norm(tip - knee)
    u0 = (segs[0][1] - segs[0][0]) / np.linalg.norm(segs[0][1] - segs[0][0])
    m = np.zeros((size, size), np.uint8)
    pts = np.stack([knee - u0 * p.d, knee, tip])
    cv2.polylines(m, [fixed(pts)], False, 1, max(1, round(p.d)) + 2, cv2.LINE_8, SHIFT)
    return m.astype(bool) | (p.mask(size) & _halfplane(size, knee - u0 * p.d, u))


def _scratch_part(img: np.ndarray, rng: np.random.Generator, p: _Part) -> np.ndarray:
    """A bright scratch (bare metal) across the surface of ``p``; returns its mask dilated by one pixel."""
    s = img.shape[0]
    surf = p.surface(s)
    width = max(1, round(s / 220))
    for _ in range(20):
        if p.is_screw:  # along the shaft, slightly askew
            a0, b0 = p.screw_points()[2][0]
            x, y = a0 + (b0 - a0) * float(rng.uniform(0.3, 0.7))
            length = p.shaft * float(rng.uniform(0.35, 0.55))
            a = p.angle + float(rng.uniform(-0.3, 0.3))
        else:
            x, y = draw.random_point_in(rng, surf)
            length = p.radius * float(rng.uniform(1.2, 1.8))
            a = float(rng.uniform(0, np.pi))
        u = np.array([np.cos(a), np.sin(a)]) * length / 2
        bend = np.array([-u[1], u[0]]) * float(rng.uniform(-0.15, 0.15))
        pts = np.stack([np.array([x, y]) - u, np.array([x, y]) + bend, np.array([x, y]) + u])
        m = np.zeros((s, s), np.uint8)
        cv2.polylines(m, [fixed(pts)], False, 1, width, cv2.LINE_8, SHIFT)
        mb = m.astype(bool) & surf
        if mb.sum() < length * 0.4:
            continue
        tone = float(rng.uniform(232, 250))
        img[mb] = np.array([tone, tone, min(255.0, tone + 3)], np.uint8)
        return draw.dilate(mb) & p.mask(s)
    raise RuntimeError("part_scratch: could not place a scratch on the part")


def _halfplane(size: int, origin: np.ndarray, u: np.ndarray) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size]
    return ((xs - origin[0]) * u[0] + (ys - origin[1]) * u[1]) >= 0


def _clearance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest gap in pixels between the circles (N, 3) ``a`` and (M, 3) ``b`` (negative: they overlap)."""
    d = np.linalg.norm(a[:, None, :2] - b[None, :, :2], axis=2) - a[:, None, 2] - b[None, :, 2]
    return float(d.min())


def _parts_mask(size: int, parts: list[_Part]) -> np.ndarray:
    """The union of the footprints of ``parts``."""
    m = np.zeros((size, size), bool)
    for p in parts:
        m |= p.mask(size)
    return m


def _draw_shadows(img: np.ndarray, parts: list[_Part]) -> None:
    """Soft shadows of the parts, offset down-right, darkening the surface by up to a third."""
    s = img.shape[0]
    offset = (max(1, round(s * 0.008)), max(1, round(s * 0.0096)))
    draw.drop_shadow(img, _parts_mask(s, parts), offset, blur=max(0.8, s / 230), darkness=1 / 3)


# ---------------------------------------------------------------------- the bag
class _Bag:
    """The bag: a slightly wobbly, slightly rotated rectangle with a heat seal along its top."""

    def __init__(self, rng: np.random.Generator, size: int) -> None:
        s = size
        self.size = s
        self.hw = s * float(rng.uniform(0.405, 0.435))
        self.hh = s * float(rng.uniform(0.38, 0.42))
        self.seal = s * float(rng.uniform(0.045, 0.06))
        self.center = np.array([s / 2, s / 2]) + rng.uniform(-1, 1, 2) * s * 0.025
        th = np.deg2rad(rng.uniform(-4, 4))
        self.theta = float(th)
        self.rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        # outline: a rectangle walked in small steps, pushed in and out a little (crinkled film)
        n_side = 14
        t = np.linspace(-1, 1, n_side, endpoint=False)
        top = np.stack([t * self.hw, -np.full_like(t, self.hh)], 1)
        right = np.stack([np.full_like(t, self.hw), t * self.hh], 1)
        bottom = np.stack([-t * self.hw, np.full_like(t, self.hh)], 1)
        left = np.stack([-np.full_like(t, self.hw), -t * self.hh], 1)
        pts = np.concatenate([top, right, bottom, left])
        centre_dir = -pts / np.linalg.norm(pts, axis=1, keepdims=True)
        wobble = rng.uniform(0, s * 0.008, len(pts))
        wobble[::n_side] = 0  # keep the corners sharp
        self.outline_local = pts + centre_dir * wobble[:, None]
        self.outline = self.world(self.outline_local)
        self.mask = draw.polygon_mask(s, self.outline)

    def world(self, pts: np.ndarray) -> np.ndarray:
        return np.asarray(pts, np.float64) @ self.rot.T + self.center

    def interior_local(self) -> tuple[float, float, float, float]:
        """Where parts may lie (box frame): inside the bag, below the seal, away from the edges."""
        m = self.size * 0.03
        return -self.hw + m, -self.hh + self.seal + m, self.hw - m, self.hh - m

    def interior_mask(self) -> np.ndarray:
        x0, y0, x1, y1 = self.interior_local()
        return draw.polygon_mask(self.size, self.world(draw.rect_points(x0, y0, x1, y1)))

    def place(
        self,
        rng: np.random.Generator,
        kind: str,
        others: list[_Part],
        bend: float = 0.0,
        bend_at: float = 0.5,
    ) -> _Part:
        """A part of ``kind`` at a random pose inside the bag, not touching ``others`` when possible."""
        s = self.size
        x0, y0, x1, y1 = self.interior_local()
        have = np.concatenate([p.circles() for p in others]) if others else np.zeros((0, 3))
        best, best_gap = None, -np.inf
        for _ in range(80):
            ang = float(rng.uniform(-np.pi, np.pi))
            part = _Part(kind, np.zeros(2), ang, float(s), bend=bend, bend_at=bend_at)
            circ = part.circles()
            # extents of the part in the bag frame around its centre (the rotation is small: use the bbox)
            local = (circ[:, :2]) @ self.rot  # part centred at the origin, in the bag frame
            ex0 = float((local[:, 0] - circ[:, 2]).min())
            ex1 = float((local[:, 0] + circ[:, 2]).max())
            ey0 = float((local[:, 1] - circ[:, 2]).min())
            ey1 = float((local[:, 1] + circ[:, 2]).max())
            if ex1 - ex0 > x1 - x0 or ey1 - ey0 > y1 - y0:
                continue
            c_local = np.array([rng.uniform(x0 - ex0, x1 - ex1), rng.uniform(y0 - ey0, y1 - ey1)])
            part = _Part(kind, self.world(c_local[None])[0], ang, float(s), bend=bend, bend_at=bend_at)
            if not len(have):
                return part
            gap = _clearance(part.circles(), have)
            if gap >= s * 0.012:
                return part
            if gap > best_gap:
                best, best_gap = part, gap
        assert best is not None
        return best

    def room(self, circles: np.ndarray, others: np.ndarray) -> float:
        """Smallest clearance (pixels) of ``circles`` (N, 3) to ``others`` and to the bag's inner edge."""
        x0, y0, x1, y1 = self.interior_local()
        local = (circles[:, :2] - self.center) @ self.rot
        r = circles[:, 2]
        edge = np.minimum.reduce(
            [local[:, 0] - r - x0, x1 - local[:, 0] - r, local[:, 1] - r - y0, y1 - local[:, 1] - r]
        )
        gap = float(edge.min())
        if len(others):
            gap = min(gap, _clearance(circles, others))
        return gap

    def draw_film(self, img: np.ndarray, rng: np.random.Generator) -> None:
        """Haze, specular creases and highlights of the film, the heat seal and the bag's edges."""
        s = self.size
        bag = self.mask
        # soft highlights (drawn small, upscaled) and sharp creases (bright line, dark line beside it)
        small = max(16, s // 4)
        soft = np.zeros((small, small), np.float32)
        f = small / s
        for _ in range(int(rng.integers(3, 7))):
            c = self.world(rng.uniform(-1, 1, (1, 2)) * [self.hw, self.hh])[0] * f
            ax = (
                max(1, round(rng.uniform(0.05, 0.2) * small)),
                max(1, round(rng.uniform(0.01, 0.04) * small)),
            )
            cv2.ellipse(
                soft,
                (round(c[0]), round(c[1])),
                ax,
                float(rng.uniform(0, 180)),
                0,
                360,
                float(rng.uniform(0.12, 0.3)),
                -1,
                cv2.LINE_AA,
            )
        soft = cv2.GaussianBlur(soft, (5, 5), 0)
        light = cv2.resize(soft, (s, s), interpolation=cv2.INTER_LINEAR)
        creases = np.zeros((s, s), np.float32)
        for _ in range(int(rng.integers(6, 12))):
            a = rng.uniform(0, np.pi)
            length = rng.uniform(0.15, 0.5) * s
            c0 = self.world(rng.uniform(-0.9, 0.9, (1, 2)) * [self.hw, self.hh])[0]
            t = np.linspace(-0.5, 0.5, 7)[:, None]
            wob = rng.normal(0, 0.02 * s, (7, 1))
            u, n = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
            pts = c0 + t * length * u + wob * n
            off = n * max(1.0, s / 200)
            cv2.polylines(creases, [fixed(pts + off)], False, -float(rng.uniform(0.08, 0.18)), 1, _AA, SHIFT)
            cv2.polylines(creases, [fixed(pts)], False, float(rng.uniform(0.35, 0.8)), 1, _AA, SHIFT)
        light += cv2.GaussianBlur(creases, (3, 3), 0)
        light += float(rng.uniform(0.06, 0.12))  # overall haze of the film
        light *= bag
        # screen towards white where light > 0, darken where < 0: out = img * (1 - pos + neg) + 255 * pos
        # (8-bit arithmetic: OpenCV saturates; about four times faster than float)
        pos = np.maximum(light, 0.0)
        gain = cv2.convertScaleAbs(1.0 - pos + np.minimum(light, 0.0), alpha=255.0)
        lift = cv2.convertScaleAbs(pos, alpha=255.0)
        cv2.multiply(img, cv2.cvtColor(gain, cv2.COLOR_GRAY2RGB), dst=img, scale=1 / 255)
        cv2.add(img, cv2.cvtColor(lift, cv2.COLOR_GRAY2RGB), dst=img)
        # heat seal along the top: a denser band with fine ribs
        y0, y1 = -self.hh, -self.hh + self.seal
        band = self.world(draw.rect_points(-self.hw, y0, self.hw, y1))
        bm = np.zeros((s, s), np.uint8)
        cv2.fillPoly(bm, [fixed(band)], 1, cv2.LINE_8, SHIFT)
        seal = bm.view(bool) & bag
        sl = draw.bbox_slices(seal)
        draw.blend(img[sl], 238, 0.38, seal[sl])
        step = max(2.0, s / 90)
        ribs = [
            self.world(np.array([[-self.hw, y], [self.hw, y]]))
            for y in np.arange(y0 + step, y1 - step / 2, step)
        ]
        cv2.polylines(img, [fixed(r) for r in ribs], False, (196, 198, 200), 1, _AA, SHIFT)
        edge = self.world(np.array([[-self.hw, y1], [self.hw, y1]]))
        cv2.polylines(img, [fixed(edge)], False, (150, 152, 156), 1, _AA, SHIFT)
        # the film's edge: a thin bright rim and a darker outline
        cv2.polylines(img, [fixed(self.outline)], True, (120, 122, 126), 1, _AA, SHIFT)
        inner = self.center + (self.outline - self.center) * (1 - 2.0 / max(self.hw, self.hh))
        cv2.polylines(img, [fixed(inner)], True, (245, 246, 248), 1, _AA, SHIFT)

    def tear(
        self, img: np.ndarray, pre_film: np.ndarray, rng: np.random.Generator, within: np.ndarray
    ) -> np.ndarray:
        """Tear the film open inside ``within``: the bare surface shows, with white stretched edges and a
        curled flap. Returns the region (opening, edges and flap)."""
        s = self.size
        if not within.any():
            within = self.interior_mask()
        for _ in range(20):
            cx, cy = draw.random_point_in(rng, within, margin=max(1, round(s * 0.03)))
            a = rng.uniform(0, np.pi)
            u, n = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
            length = s * rng.uniform(0.13, 0.21)
            width = s * rng.uniform(0.03, 0.05)
            k = 9
            t = np.linspace(-0.5, 0.5, k)
            prof = np.sin(np.linspace(0, np.pi, k)) * width / 2
            upper = (
                np.array([cx, cy]) + t[:, None] * length * u + (prof * rng.uniform(0.6, 1.3, k))[:, None] * n
            )
            lower = (
                np.array([cx, cy]) + t[:, None] * length * u - (prof * rng.uniform(0.6, 1.3, k))[:, None] * n
            )
            hole = np.concatenate([upper, lower[::-1]])
            # the flap: a triangle of film folded back beside the opening
            mid = upper[k // 2]
            flap = np.stack([upper[k // 2 - 2], upper[k // 2 + 2], mid + n * width * rng.uniform(0.8, 1.4)])
            m_hole = draw.polygon_mask(s, hole)
            if not (m_hole & within).any():
                continue
            before = img.copy()
            np.copyto(img, (pre_film * 0.85).astype(np.uint8), where=m_hole[..., None])
            m_flap = draw.polygon_mask(s, flap)
            folded = m_flap & ~m_hole
            sl = draw.bbox_slices(folded)
            draw.blend(img[sl], 242, 0.55, folded[sl])
            edge = max(1, round(s / 200))
            cv2.polylines(img, [fixed(hole)], True, (250, 250, 252), edge, _AA, SHIFT)
            cv2.polylines(img, [fixed(flap)], True, (215, 216, 220), 1, _AA, SHIFT)
            # grown to cover the anti-aliased torn edge drawn on the outline
            region = draw.dilate(m_hole | m_flap, edge // 2 + 2) & self.mask
            np.copyto(img, before, where=~region[..., None])  # the tear stays inside the bag
            return region
        raise RuntimeError("tear: could not place a tear in the bag")
