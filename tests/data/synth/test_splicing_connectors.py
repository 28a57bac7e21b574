"""Tests of the procedural ``splicing_connectors`` category (MVTec LOCO-style rules and defects)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from vlmad.data.synth.base import Scene
from vlmad.data.synth.categories.splicing_connectors import CABLE_FOR_CLAMPS, SplicingConnectors

CAT = SplicingConnectors()
ALL = [None, *CAT.defect_names()]


def render(seed: int, defect: str | None, size: int = 256) -> Scene:
    return CAT.render(np.random.default_rng(seed), size, defect)


def test_declaration() -> None:
    names = CAT.defect_names()
    assert len(names) == len(set(names))
    kinds = [CAT.spec(n).kind for n in names]
    # logical first, then structural, several of each
    assert kinds == sorted(kinds)
    assert kinds.count("logical") >= 4 and kinds.count("structural") >= 4
    assert not CAT.spec("missing_cable").relative_saturation
    assert not CAT.spec("missing_connector").relative_saturation
    assert (
        CAT.spec("contamination").relative_saturation
        and CAT.spec("contamination").saturation_threshold == 1.0
    )
    with pytest.raises(KeyError):
        render(0, "no_such_defect")


@pytest.mark.parametrize("defect", ALL)
def test_deterministic(defect: str | None) -> None:
    a, b = render(7, defect), render(7, defect)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.foreground, b.foreground)
    assert a.description == b.description and a.facts == b.facts
    assert len(a.regions) == len(b.regions)
    for ra, rb in zip(a.regions, b.regions, strict=True):
        assert np.array_equal(ra.mask, rb.mask) and ra.description == rb.description


@pytest.mark.parametrize("size", [128, 256, 512])
@pytest.mark.parametrize("defect", CAT.defect_names())
def test_defect_regions(defect: str, size: int) -> None:
    for seed in range(12):
        sc = render(seed, defect, size)
        assert sc.image.shape == (size, size, 3) and sc.image.dtype == np.uint8
        assert sc.foreground.shape == (size, size) and sc.foreground.dtype == bool and sc.foreground.any()
        assert sc.regions, defect
        masks = []
        for r in sc.regions:
            assert r.defect == defect
            assert r.mask.shape == (size, size) and r.mask.dtype == bool
            assert r.mask.any()
            assert r.description and r.description.endswith(".")
            masks.append(r.mask)
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                assert not np.array_equal(masks[i], masks[j])
        assert sc.description
        json.dumps(sc.facts)


def test_normal_images() -> None:
    images = []
    for seed in range(20):
        sc = render(seed, None)
        assert sc.regions == []
        f = sc.facts
        n = f["clamps"]["left"]
        assert n in CABLE_FOR_CLAMPS and f["clamps"]["right"] == n and f["connectors"] == 2
        assert len(f["cables"]) == 1
        cable = f["cables"][0]
        assert cable["color"] == CABLE_FOR_CLAMPS[n] == f["expected_cable_color"]
        assert cable["left_row"] == cable["right_row"]
        assert "nothing is missing or damaged" in sc.description
        images.append(sc.image.astype(np.int16))
    # variation: clamp counts, layout and colours differ between normal images
    assert len({render(s, None).facts["clamps"]["left"] for s in range(20)}) == 3
    diffs = [np.abs(images[i] - images[i + 1]).mean() for i in range(len(images) - 1)]
    assert min(diffs) > 2.0


def _many(defect: str, k: int = 15) -> list[Scene]:
    return [render(seed, defect) for seed in range(k)]


def test_logical_rules_broken() -> None:
    for sc in _many("wrong_cable_color"):
        assert sc.facts["cables"][0]["color"] != sc.facts["expected_cable_color"]
        assert sc.facts["expected_cable_color"] in sc.description
    for sc in _many("clamp_count_mismatch"):
        c = sc.facts["clamps"]
        assert c["left"] != c["right"]
        assert (
            CABLE_FOR_CLAMPS.get(c["left"]) == sc.facts["cables"][0]["color"]
            or CABLE_FOR_CLAMPS.get(c["right"]) == sc.facts["cables"][0]["color"]
        )
    for sc in _many("missing_cable"):
        assert sc.facts["cables"] == []
        assert not (sc.regions[0].mask & sc.foreground).all()
    for sc in _many("cable_wrong_position"):
        cable = sc.facts["cables"][0]
        assert cable["left_row"] != cable["right_row"]
    for sc in _many("extra_cable"):
        assert len(sc.facts["cables"]) == 2
        rows = [c["left_row"] for c in sc.facts["cables"]]
        assert rows[0] != rows[1]
    for sc in _many("missing_connector"):
        assert sc.facts["connectors"] == 1
        assert None in sc.facts["clamps"].values()
        # the region is where the connector should be: mostly empty table now
        m = sc.regions[0].mask
        assert (m & sc.foreground).sum() < 0.5 * m.sum()


def test_structural_defects_keep_rules() -> None:
    for defect in CAT.defect_names("structural"):
        for sc in _many(defect, 6):
            f = sc.facts
            n = f["clamps"]["left"]
            assert f["clamps"]["right"] == n and f["connectors"] == 2 and len(f["cables"]) == 1
            assert f["cables"][0]["color"] == CABLE_FOR_CLAMPS[n]


@pytest.mark.parametrize(
    "defect", ["broken_cable", "contamination", "broken_connector", "open_lever", "color"]
)
def test_structural_defect_only_changes_its_region(defect: str) -> None:
    """These defects are drawn after the normal scene of the same seed: pixels change only in the regions."""
    for seed in range(8):
        normal, bad = render(seed, None), render(seed, defect)
        union = np.zeros(normal.foreground.shape, bool)
        for r in bad.regions:
            union |= r.mask
        changed = (normal.image != bad.image).any(axis=2)
        assert changed.any()
        assert not (changed & ~union).any()
        assert union.sum() < 0.05 * union.size  # small, local defects


def test_render_speed() -> None:
    for d in ALL:  # warm-up
        render(0, d)
    t0 = time.perf_counter()
    k = 0
    for seed in range(3):
        for d in ALL:
            render(seed, d)
            k += 1
    ms = (time.perf_counter() - t0) / k * 1000
    assert ms < 15.0, f"{ms:.1f} ms per render at 256"
