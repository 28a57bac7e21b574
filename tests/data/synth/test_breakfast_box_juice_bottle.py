"""Tests of the procedural ``breakfast_box`` and ``juice_bottle`` categories (MVTec LOCO-style rules)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from vlmad.data.synth.base import Category, Scene
from vlmad.data.synth.categories.breakfast_box import FRUIT_AREA_256, TOPPINGS_AREA_256, BreakfastBox
from vlmad.data.synth.categories.juice_bottle import BOTTOM_LABEL_AREA_256, LABEL_AREA_256, JuiceBottle

CATS: dict[str, Category] = {"breakfast_box": BreakfastBox(), "juice_bottle": JuiceBottle()}
CASES = [(c, d) for c, cat in CATS.items() for d in [None, *cat.defect_names()]]
DEFECTS = [(c, d) for c, d in CASES if d is not None]
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


# ---------------------------------------------------------------------------- declarations
@pytest.mark.parametrize("cat", list(CATS))
def test_declaration(cat: str) -> None:
    c = CATS[cat]
    names = c.defect_names()
    assert len(names) == len(set(names))
    kinds = [c.spec(n).kind for n in names]
    assert kinds == sorted(kinds)  # logical first, then structural
    assert kinds.count("logical") >= 4 and kinds.count("structural") >= 4
    for n in c.defect_names("structural"):
        assert c.spec(n).relative_saturation and c.spec(n).saturation_threshold == 1.0
    for (cname, defect), area in MISSING.items():
        if cname == cat:
            assert not c.spec(defect).relative_saturation and c.spec(defect).saturation_threshold == area
    configs = c.defect_configs(512)
    assert [d.pixel_value for d in configs] == list(range(255, 255 - len(names), -1))
    with pytest.raises(KeyError):
        c.render(np.random.default_rng(0), 256, "no_such_defect")


# ---------------------------------------------------------------------------- the contract
@pytest.mark.parametrize(("cat", "defect"), CASES)
def test_deterministic(cat: str, defect: str | None) -> None:
    a, b = render(cat, 7, defect), render(cat, 7, defect)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.foreground, b.foreground)
    assert len(a.regions) == len(b.regions)
    for ra, rb in zip(a.regions, b.regions, strict=True):
        assert np.array_equal(ra.mask, rb.mask) and ra.description == rb.description
    assert a.description == b.description and a.facts == b.facts
    assert not np.array_equal(a.image, render(cat, 8, defect).image)


@pytest.mark.parametrize("size", [128, 256, 384, 512])
@pytest.mark.parametrize(("cat", "defect"), CASES)
def test_scene_contract(cat: str, defect: str | None, size: int) -> None:
    for seed in range(4 if size == 256 else 2):
        sc = render(cat, seed, defect, size)
        assert sc.image.shape == (size, size, 3) and sc.image.dtype == np.uint8
        assert sc.foreground.shape == (size, size) and sc.foreground.dtype == bool
        assert 0.1 < sc.foreground.mean() < 0.9
        assert sc.description.endswith(".")
        json.dumps(sc.facts)
        if defect is None:
            assert sc.regions == []
            continue
        assert sc.regions
        for i, r in enumerate(sc.regions):
            assert r.defect == defect and r.description
            assert r.mask.shape == (size, size) and r.mask.dtype == bool and r.mask.any()
            assert not (r.mask & ~sc.foreground).any()  # the defect lies on the object
            for other in sc.regions[:i]:
                assert not np.array_equal(r.mask, other.mask)


@pytest.mark.parametrize(("cat", "defect"), list(MISSING))
def test_missing_region_matches_saturation_area(cat: str, defect: str) -> None:
    areas = [sc.regions[0].mask.sum() for sc in many(cat, defect, 10)]
    assert 0.75 < np.mean(areas) / MISSING[(cat, defect)] < 1.25


STRUCTURAL = [(c, d) for c, d in DEFECTS if CATS[c].spec(d).kind == "structural"]


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


# ---------------------------------------------------------------------------- variation and speed
@pytest.mark.parametrize("cat", list(CATS))
def test_normal_images_vary(cat: str) -> None:
    scenes = many(cat, None, 6)
    for i in range(len(scenes)):
        for j in range(i):
            diff = np.abs(scenes[i].image.astype(int) - scenes[j].image.astype(int)).mean()
            assert diff > 2.0
    fg = [sc.foreground for sc in scenes]
    assert any(not np.array_equal(fg[0], m) for m in fg[1:])  # position / size jitter


@pytest.mark.parametrize("cat", list(CATS))
def test_render_speed(cat: str) -> None:
    kinds = [None, *CATS[cat].defect_names()]
    times = []
    for i in range(3 * len(kinds)):
        t = time.perf_counter()
        render(cat, 100 + i, kinds[i % len(kinds)])
        times.append(time.perf_counter() - t)
    # the target is well under 10 ms at 256 x 256; allow for a loaded test machine
    assert float(np.median(times)) < 0.02
