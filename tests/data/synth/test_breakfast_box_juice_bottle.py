"""Tests of the procedural ``breakfast_box`` and ``juice_bottle`` categories (MVTec LOCO-style rules)."""

from __future__ import annotations

import numpy as np
import pytest

from vlmad.data.synth.base import Category, Scene
from vlmad.data.synth.categories.breakfast_box import FRUIT_AREA_256, TOPPINGS_AREA_256, BreakfastBox
from vlmad.data.synth.categories.juice_bottle import BOTTOM_LABEL_AREA_256, LABEL_AREA_256, JuiceBottle

CATS: dict[str, Category] = {"breakfast_box": BreakfastBox(), "juice_bottle": JuiceBottle()}
# defect type -> expected area at 256 x 256 of its "missing object" region (absolute saturation)
MISSING = {
    ("breakfast_box", "missing_fruit"): FRUIT_AREA_256,
    ("juice_bottle", "missing_label"): LABEL_AREA_256,
    ("juice_bottle", "missing_bottom_label"): BOTTOM_LABEL_AREA_256,
}


def render(cat: str, seed: int, defect: str | None, size: int = 256) -> Scene:
    return CATS[cat].render(np.random.default_rng(seed), size, defect)


def many(cat: str, defect: str | None, k: int = 12, size: int = 256) -> list[Scene]:
    return [render(cat, seed, defect, size) for seed in range(k)]


# ---------------------------------------------------------------------------- missing objects and regions
@pytest.mark.parametrize(("cat", "defect"), list(MISSING))
def test_missing_region_matches_saturation_area(cat: str, defect: str) -> None:
    spec = CATS[cat].spec(defect)
    assert not spec.relative_saturation and spec.saturation_threshold == MISSING[(cat, defect)]
    areas = [sc.regions[0].mask.sum() for sc in many(cat, defect, 10)]
    assert 0.75 < np.mean(areas) / MISSING[(cat, defect)] < 1.25


STRUCTURAL = [(c, d) for c, cat in CATS.items() for d in cat.defect_names("structural")]


@pytest.mark.parametrize(("cat", "defect"), STRUCTURAL)
def test_structural_defect_changes_only_its_region(cat: str, defect: str) -> None:
    # a structural defect is drawn after the whole normal scene, so with the same seed the normal image
    # and the defective one differ exactly in the defect's region
    for seed in range(6):
        normal, bad = render(cat, seed, None), render(cat, seed, defect)
        changed = (normal.image != bad.image).any(axis=2)
        region = np.logical_or.reduce([r.mask for r in bad.regions])
        assert changed.any() and not (changed & ~region).any()
        assert changed.sum() >= 0.3 * region.sum()


# ---------------------------------------------------------------------------- breakfast box rules
def test_breakfast_box_normal_rules() -> None:
    for sc in many("breakfast_box", None, 20):
        f = sc.facts
        assert (f["n_mandarins"], f["n_nectarines"], f["other_fruits"]) == (2, 1, [])
        assert f["n_banana_chips"] >= 5 and f["n_almonds"] >= 4
        assert abs(f["n_banana_chips"] - f["n_almonds"]) <= 1  # fixed proportion
        assert f["overflow"] is False
        assert "two mandarins and one nectarine" in sc.description


def test_breakfast_box_logical_rules_broken() -> None:
    def n_fruit(sc: Scene) -> int:
        return sc.facts["n_mandarins"] + sc.facts["n_nectarines"] + len(sc.facts["other_fruits"])

    for sc in many("breakfast_box", "missing_fruit"):
        assert n_fruit(sc) == 2 and "missing" in sc.description
    for sc in many("breakfast_box", "extra_fruit"):
        assert n_fruit(sc) == 4 and "extra" in sc.description
    for sc in many("breakfast_box", "wrong_fruit"):
        assert n_fruit(sc) == 3 and len(sc.facts["other_fruits"]) == 1
        assert sc.facts["other_fruits"][0] in sc.description
    for sc in many("breakfast_box", "missing_toppings"):
        assert sc.facts["n_banana_chips"] == sc.facts["n_almonds"] == 0
    for sc in many("breakfast_box", "overflow"):
        assert sc.facts["overflow"] is True
        # the spilt granola lies in the left part of the box, the fruit side
        xs = np.nonzero(sc.regions[0].mask)[1]
        assert xs.mean() < sc.image.shape[1] * 0.6


def test_breakfast_box_missing_toppings_saturates_at_toppings_area() -> None:
    spec = CATS["breakfast_box"].spec("missing_toppings")
    assert not spec.relative_saturation and spec.saturation_threshold == TOPPINGS_AREA_256
    # the region is the whole granola surface, the threshold the area the toppings would cover on it
    for sc in many("breakfast_box", "missing_toppings", 4):
        assert sc.regions[0].mask.sum() > 4 * TOPPINGS_AREA_256


def test_breakfast_box_missing_fruit_region_is_empty_floor() -> None:
    sc = render("breakfast_box", 4, "missing_fruit")
    m = sc.regions[0].mask
    # where the fruit should be only the pale box floor shows (no orange fruit colours)
    px = sc.image[m].astype(int)
    assert (px[:, 0] - px[:, 2]).mean() < 40


# ---------------------------------------------------------------------------- juice bottle rules
def test_juice_bottle_normal_rules() -> None:
    scenes = many("juice_bottle", None, 30)
    levels = []
    for sc in scenes:
        f = sc.facts
        assert f["label_fruit"] == f["juice"] and f["fill_status"] == "normal"
        assert f["front_label"] and f["bottom_label"]
        assert abs(f["label_angle"]) <= 1.5 and abs(f["label_shift"]) <= 0.01
        levels.append(f["fill_level"])
    assert {sc.facts["juice"] for sc in scenes} == {"orange", "cherry", "banana"}
    assert max(levels) - min(levels) < 0.08  # a narrow normal band


def test_juice_bottle_logical_rules_broken() -> None:
    normal = [sc.facts["fill_level"] for sc in many("juice_bottle", None, 30)]
    lo, hi = min(normal), max(normal)
    statuses = set()
    for sc in many("juice_bottle", "wrong_fill_level", 16):
        level = sc.facts["fill_level"]
        statuses.add(sc.facts["fill_status"])
        assert level > hi + 0.03 if sc.facts["fill_status"] == "too_high" else level < lo - 0.03
    assert statuses == {"too_high", "too_low"}
    for sc in many("juice_bottle", "label_juice_mismatch"):
        assert sc.facts["label_fruit"] != sc.facts["juice"]
    for sc in many("juice_bottle", "missing_label"):
        assert sc.facts["front_label"] is False and sc.facts["label_fruit"] is None
    for sc in many("juice_bottle", "missing_bottom_label"):
        assert sc.facts["bottom_label"] is False and sc.facts["front_label"] is True
    for sc in many("juice_bottle", "misplaced_label"):
        assert abs(sc.facts["label_angle"]) >= 10 or sc.facts["label_shift"] <= -0.05


def test_juice_bottle_mismatch_region_is_the_icon() -> None:
    sc = render("juice_bottle", 2, "label_juice_mismatch")
    m = sc.regions[0].mask
    assert 50 < m.sum() < LABEL_AREA_256 / 2  # a small part of the label
