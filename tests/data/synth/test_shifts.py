"""Tests of the imaging-environment shifts (vlmad.data.synth.shifts)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vlmad.data.synth import draw
from vlmad.data.synth.base import Region, Scene
from vlmad.data.synth.shifts import (
    APPLY_ORDER,
    GEOMETRIC,
    PHOTOMETRIC,
    SHIFT_NAMES,
    Shift,
    apply_shifts,
    format_shifts,
    parse_shifts,
)
from vlmad.errors import ConfigError


def make_scene(seed: int = 0, size: int = 256) -> Scene:
    """A textured table with a grey block (foreground), a stain on it and a 'missing item' footprint."""
    rng = np.random.default_rng(seed)
    img = draw.background(rng, size, (120, 124, 128))
    s = size / 256
    block = draw.rect_mask(size, 70 * s, 80 * s, 170 * s, 180 * s)
    draw.textured_fill(img, block, (200, 60, 50), rng)
    stain = draw.contamination(img, rng, block)
    missing = draw.ellipse_mask(size, (215 * s, 60 * s), (20 * s, 14 * s))
    regions = [
        Region("contamination", stain, "There is a stain on the block."),
        Region("missing_item", missing, "The item in the upper right is missing."),
    ]
    return Scene(img, block, regions, "A block.", {"count": 1})


def _snapshot(sc: Scene) -> tuple:
    return (
        sc.image.copy(),
        sc.foreground.copy(),
        [r.mask.copy() for r in sc.regions],
        json.dumps(sc.facts, sort_keys=True),
    )


def _same(a: Scene, b: Scene) -> bool:
    return (
        np.array_equal(a.image, b.image)
        and np.array_equal(a.foreground, b.foreground)
        and len(a.regions) == len(b.regions)
        and all(np.array_equal(x.mask, y.mask) for x, y in zip(a.regions, b.regions, strict=True))
    )


# ------------------------------------------------------------------------------------------ parsing
def test_parse_and_format_round_trip() -> None:
    shifts = parse_shifts("brightness:0.5, clutter:0.3,blur")
    assert shifts == [Shift("brightness", 0.5), Shift("clutter", 0.3), Shift("blur", 0.5)]
    text = format_shifts(shifts)
    assert text == "brightness:0.5,clutter:0.3,blur:0.5"
    assert parse_shifts(text) == shifts
    odd = [Shift("noise", 0.1 + 0.2), Shift("wet", 1), Shift("rotation", 0)]
    assert parse_shifts(format_shifts(odd)) == odd
    everything = [Shift(n, 1.0) for n in SHIFT_NAMES]
    assert parse_shifts(format_shifts(everything)) == everything
    assert parse_shifts("") == [] and parse_shifts("  ") == [] and parse_shifts("none") == []
    assert format_shifts([]) == ""


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sunshine:0.5", "sunshine"),
        ("blur:abc", "abc"),
        ("blur:", "blur"),
        ("blur:nan", "blur"),
        ("blur:1.5", "[0, 1]"),
        ("noise:-0.1", "[0, 1]"),
        ("blur,blur:0.2", "twice"),
        ("blur,,noise", "empty"),
    ],
)
def test_parse_errors(text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        parse_shifts(text)
    assert needle in str(err.value)


def test_shift_validates() -> None:
    with pytest.raises(ConfigError, match="unknown imaging shift"):
        Shift("fog", 0.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        Shift("blur", 2.0)
    assert Shift("blur").strength == 0.5
    with pytest.raises(ConfigError, match="twice"):
        apply_shifts(make_scene(), [Shift("blur"), Shift("blur", 0.2)], np.random.default_rng(0))


# ------------------------------------------------------------------------------------------ apply
@pytest.mark.parametrize("name", [*SHIFT_NAMES, "all"])
def test_deterministic_and_input_untouched(name: str) -> None:
    scene = make_scene(1)
    before = _snapshot(scene)
    shifts = [Shift(n, 0.8) for n in SHIFT_NAMES] if name == "all" else [Shift(name, 0.8)]
    a = apply_shifts(scene, shifts, np.random.default_rng(5))
    b = apply_shifts(scene, shifts, np.random.default_rng(5))
    assert _same(a, b) and a.facts == b.facts
    after = _snapshot(scene)
    assert all(np.array_equal(x, y) for x, y in zip(before[:2], after[:2], strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(before[2], after[2], strict=True))
    assert before[3] == after[3]
    assert a is not scene and a.image is not scene.image and a.foreground is not scene.foreground
    assert all(x.mask is not y.mask for x, y in zip(a.regions, scene.regions, strict=True))
    assert not np.array_equal(a.image, scene.image)  # it does something
    assert [r.defect for r in a.regions] == [r.defect for r in scene.regions]
    assert a.description == scene.description and a.facts["count"] == 1


def test_strength_zero_is_identity() -> None:
    scene = make_scene(2)
    out = apply_shifts(scene, [Shift(n, 0.0) for n in SHIFT_NAMES], np.random.default_rng(0))
    assert _same(out, scene)
    assert out.facts["shifts"] == []
    assert _same(apply_shifts(scene, [], np.random.default_rng(0)), scene)


def test_facts_record_in_fixed_order() -> None:
    scene = make_scene(3)
    given = list(reversed(SHIFT_NAMES))
    out = apply_shifts(scene, [Shift(n, 0.6) for n in given], np.random.default_rng(1))
    names = [e["name"] for e in out.facts["shifts"]]
    assert names == list(APPLY_ORDER)
    json.dumps(out.facts)
    for e in out.facts["shifts"]:
        assert e["strength"] == 0.6
        assert len(e) > 2  # random parameters are recorded
    # applying again appends to the record
    again = apply_shifts(out, [Shift("blur", 0.3)], np.random.default_rng(2))
    assert [e["name"] for e in again.facts["shifts"]] == [*APPLY_ORDER, "blur"]


def test_geometric_masks_stay_valid() -> None:
    shifts = [Shift(n, 1.0) for n in GEOMETRIC]
    moved = 0
    for seed in range(60):
        scene = make_scene(seed % 4)
        out = apply_shifts(scene, shifts, np.random.default_rng(seed))
        assert out.image.shape == scene.image.shape and out.image.dtype == np.uint8
        assert out.foreground.shape == scene.foreground.shape and out.foreground.dtype == bool
        assert out.foreground.sum() >= 0.5 * scene.foreground.sum()
        for r, r0 in zip(out.regions, scene.regions, strict=True):
            assert r.mask.shape == r0.mask.shape and r.mask.dtype == bool
            assert r.mask.any()
            assert r.mask.sum() >= 0.5 * r0.mask.sum()
        moved += int(not np.array_equal(out.foreground, scene.foreground))
        entries = out.facts["shifts"]
        assert [e["name"] for e in entries] == list(GEOMETRIC)
        assert len({json.dumps(e["homography"]) for e in entries}) == 1  # one combined warp
    assert moved >= 55


def test_geometric_warp_is_consistent() -> None:
    """Image and masks move together: warped foreground pixels still show the red block."""
    scene = make_scene(0)
    for seed in range(10):
        out = apply_shifts(
            scene, [Shift("rotation", 1.0), Shift("position", 1.0)], np.random.default_rng(seed)
        )
        px = out.image[out.foreground].astype(int)
        red = (px[:, 0] > px[:, 1] + 60) | out.regions[0].mask[out.foreground]
        assert red.mean() > 0.9


def test_geometric_fallback_keeps_tiny_corner_region() -> None:
    scene = make_scene(0)
    corner = np.zeros_like(scene.foreground)
    corner[0:4, 0:4] = True
    scene.regions.append(Region("speck", corner, "A speck in the corner."))
    scales = []
    for seed in range(20):
        out = apply_shifts(scene, [Shift(n, 1.0) for n in GEOMETRIC], np.random.default_rng(seed))
        for r, r0 in zip(out.regions, scene.regions, strict=True):
            assert r.mask.any() and r.mask.sum() >= 0.5 * r0.mask.sum()
        e = out.facts["shifts"][0]
        assert e["tries"] >= 1 and 0.0 <= e["scale"] <= 1.0
        scales.append(e["scale"])
    assert min(scales) < 1.0  # the weaker fallback warp was needed at least once


def test_clutter_only_on_background() -> None:
    for seed in range(30):
        scene = make_scene(seed % 3)
        out = apply_shifts(scene, [Shift("clutter", 1.0)], np.random.default_rng(seed))
        changed = (out.image != scene.image).any(axis=2)
        assert changed.any()
        assert not (changed & scene.foreground).any()
        for r in scene.regions:  # not even next to a region: that would trace its outline
            near = cv2.dilate(r.mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            assert not (changed & near).any()
        assert np.array_equal(out.foreground, scene.foreground)
        assert out.facts["shifts"][0]["shapes"]


@pytest.mark.parametrize("name", PHOTOMETRIC)
def test_photometric_shifts_leave_masks(name: str) -> None:
    for seed in range(5):
        scene = make_scene(seed)
        out = apply_shifts(scene, [Shift(name, 1.0)], np.random.default_rng(seed))
        assert np.array_equal(out.foreground, scene.foreground)
        for r, r0 in zip(out.regions, scene.regions, strict=True):
            assert np.array_equal(r.mask, r0.mask) and r.description == r0.description
        assert not np.array_equal(out.image, scene.image)


def test_photometric_effects_have_the_intended_direction() -> None:
    scene = make_scene(4)
    fg = scene.foreground
    base = scene.image.astype(float)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        shadow = apply_shifts(scene, [Shift("shadow", 1.0)], rng).image.astype(float)
        darker = (shadow.mean(axis=2) < base.mean(axis=2) - 20) & fg
        assert darker.any()  # the cast shadow falls on part of the object
        wet = apply_shifts(scene, [Shift("wet", 1.0)], rng).image.astype(float)
        assert wet.mean() < base.mean() and (wet <= base + 12).mean() > 0.97  # only darkens
        blur = apply_shifts(scene, [Shift("blur", 1.0)], rng).image.astype(float)
        assert np.abs(np.diff(blur, axis=1)).mean() < np.abs(np.diff(base, axis=1)).mean()
        noise = apply_shifts(scene, [Shift("noise", 1.0)], rng).image.astype(float)
        assert 2.0 < np.abs(noise - base).mean() < 20.0
    weak = apply_shifts(scene, [Shift("brightness", 0.1)], np.random.default_rng(0)).image.astype(float)
    strong = apply_shifts(scene, [Shift("brightness", 1.0)], np.random.default_rng(0)).image.astype(float)
    assert np.abs(weak - base).mean() < np.abs(strong - base).mean()


def test_other_sizes() -> None:
    for size in (128, 200, 512):
        scene = make_scene(0, size)
        out = apply_shifts(scene, [Shift(n, 1.0) for n in SHIFT_NAMES], np.random.default_rng(0))
        assert out.image.shape == (size, size, 3)
        assert all(r.mask.any() for r in out.regions)
