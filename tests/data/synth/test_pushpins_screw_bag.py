"""Tests of the procedural ``pushpins`` and ``screw_bag`` categories (MVTec LOCO-style rules and defects)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vlmad.data.synth.base import Category, Scene
from vlmad.data.synth.categories.pushpins import COLS, PIN_AREA_256, ROWS, Pushpins
from vlmad.data.synth.categories.screw_bag import NORMAL_COUNTS, PART_AREA_256, ScrewBag

CATS: dict[str, Category] = {"pushpins": Pushpins(), "screw_bag": ScrewBag()}
MISSING = {"pushpins": ("missing_pushpin", PIN_AREA_256), "screw_bag": ("missing_part", PART_AREA_256)}


def render(cat: str, seed: int, defect: str | None, size: int = 256) -> Scene:
    return CATS[cat].render(np.random.default_rng(seed), size, defect)


def _many(cat: str, defect: str | None, k: int = 12) -> list[Scene]:
    return [render(cat, seed, defect) for seed in range(k)]


@pytest.mark.parametrize("cat", list(CATS))
def test_only_the_missing_object_saturates_at_its_area(cat: str) -> None:
    c = CATS[cat]
    missing, area = MISSING[cat]
    assert not c.spec(missing).relative_saturation and c.spec(missing).saturation_threshold == area
    for n in c.defect_names():
        if n != missing:
            assert c.spec(n).relative_saturation and c.spec(n).saturation_threshold == 1.0


def _pushpins_normal(f: dict) -> bool:
    return (
        f["pins_per_compartment"] == [[1] * COLS] * ROWS
        and f["pin_count"] == ROWS * COLS
        and f["head_colors"] == {"yellow": ROWS * COLS}
        and f["separators"] == ROWS * (COLS - 1) + (ROWS - 1) * COLS
    )


def test_pushpins_rules() -> None:
    for sc in _many("pushpins", None, 15):
        assert _pushpins_normal(sc.facts) and "nothing is missing or damaged" in sc.description
    for sc in _many("pushpins", "missing_pushpin"):
        counts = np.array(sc.facts["pins_per_compartment"])
        assert counts.max() == 1
        assert (counts == 0).sum() == len(sc.regions) == ROWS * COLS - sc.facts["pin_count"]
        for r in sc.regions:  # the sentence names an empty compartment
            row, col = map(int, re.search(r"row (\d), column (\d)", r.description).groups())
            assert counts[row - 1, col - 1] == 0
            assert r.mask.sum() > PIN_AREA_256  # the whole compartment, bigger than one pin
    for sc in _many("pushpins", "additional_pushpin"):
        counts = np.array(sc.facts["pins_per_compartment"])
        assert counts.min() == 1 and (counts == 2).sum() == len(sc.regions)
        assert sc.facts["pin_count"] == ROWS * COLS + len(sc.regions)
        for r in sc.regions:
            assert r.mask.sum() < 3 * PIN_AREA_256  # one pin (with its anti-aliased fringe)
    for sc in _many("pushpins", "missing_separator"):
        assert sc.facts["separators"] == ROWS * (COLS - 1) + (ROWS - 1) * COLS - 1
        assert sc.facts["pin_count"] == ROWS * COLS
    for sc in _many("pushpins", "wrong_color"):
        colors = sc.facts["head_colors"]
        assert colors["yellow"] == ROWS * COLS - 1 and sum(colors.values()) == ROWS * COLS
        (other,) = set(colors) - {"yellow"}
        assert other in sc.description
    for defect in Pushpins.defect_names("structural"):
        for sc in _many("pushpins", defect, 6):
            assert _pushpins_normal(sc.facts)


def _counts(sc: Scene) -> dict[str, int]:
    return sc.facts["counts"]


def test_screw_bag_rules() -> None:
    for sc in _many("screw_bag", None, 15):
        assert _counts(sc) == NORMAL_COUNTS and sc.facts["screw_lengths"] == ["long", "short"]
        assert "nothing is missing or damaged" in sc.description
    for sc in _many("screw_bag", "missing_part"):
        c = _counts(sc)
        assert sum(c.values()) == 5 and all(c[k] <= n for k, n in NORMAL_COUNTS.items())
        (region,) = sc.regions
        assert region.mask.sum() > 10 * PART_AREA_256  # wherever the part could lie
    for sc in _many("screw_bag", "extra_part"):
        c = _counts(sc)
        assert sum(c.values()) == 7 and all(c[k] >= n for k, n in NORMAL_COUNTS.items())
        assert sc.regions[0].mask.sum() < 2 * PART_AREA_256  # one part
    for sc in _many("screw_bag", "wrong_screw_length"):
        assert sc.facts["screw_lengths"] in (["long", "long"], ["short", "short"])
        assert len(sc.regions) == 2
    for sc in _many("screw_bag", "wrong_part"):
        c = _counts(sc)
        assert c.get("square_nut", 0) + c.get("lock_washer", 0) == 1
        assert c["nut"] + c["washer"] == 3 and sc.facts["parts"] == 6
    for defect in ScrewBag.defect_names("structural"):
        for sc in _many("screw_bag", defect, 6):
            assert _counts(sc) == NORMAL_COUNTS


@pytest.mark.parametrize(
    ("cat", "defect"),
    [
        ("pushpins", "broken_pin"),
        ("pushpins", "front_bent"),
        ("pushpins", "color_spot"),
        ("pushpins", "contamination"),
        ("pushpins", "box_scratch"),
        ("pushpins", "wrong_color"),
        ("screw_bag", "part_scratch"),
        ("screw_bag", "contamination"),
        ("screw_bag", "bag_broken"),
    ],
)
@pytest.mark.parametrize("size", [128, 256, 512])
def test_defect_only_changes_its_region(cat: str, defect: str, size: int) -> None:
    """These defects are drawn on the normal scene of the same seed: pixels change only in the regions."""
    for seed in range(6):
        normal, bad = render(cat, seed, None, size), render(cat, seed, defect, size)
        union = np.zeros(normal.foreground.shape, bool)
        for r in bad.regions:
            union |= r.mask
        changed = (normal.image != bad.image).any(axis=2)
        assert changed.any()
        assert not (changed & ~union).any(), (seed, int((changed & ~union).sum()))
        assert union.sum() < 0.05 * union.size  # small, local defects
