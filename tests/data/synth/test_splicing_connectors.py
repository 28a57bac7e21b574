"""Tests of the procedural ``splicing_connectors`` category (MVTec LOCO-style rules and defects)."""

from __future__ import annotations

import numpy as np
import pytest

from vlmad.data.synth.base import Scene
from vlmad.data.synth.categories.splicing_connectors import CABLE_FOR_CLAMPS, SplicingConnectors

CAT = SplicingConnectors()


def render(seed: int, defect: str | None, size: int = 256) -> Scene:
    return CAT.render(np.random.default_rng(seed), size, defect)


def test_missing_objects_saturate_at_their_area() -> None:
    absolute = [n for n in CAT.defect_names() if not CAT.spec(n).relative_saturation]
    assert absolute == ["missing_cable", "missing_connector"]


def test_normal_images() -> None:
    clamp_counts = set()
    for seed in range(20):
        sc = render(seed, None)
        f = sc.facts
        n = f["clamps"]["left"]
        clamp_counts.add(n)
        assert n in CABLE_FOR_CLAMPS and f["clamps"]["right"] == n and f["connectors"] == 2
        assert len(f["cables"]) == 1
        cable = f["cables"][0]
        assert cable["color"] == CABLE_FOR_CLAMPS[n] == f["expected_cable_color"]
        assert cable["left_row"] == cable["right_row"]
        assert "nothing is missing or damaged" in sc.description
    # variation: all three clamp counts occur between normal images
    assert len(clamp_counts) == 3


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


@pytest.mark.parametrize("size", [256, 512])
@pytest.mark.parametrize(
    "defect", ["broken_cable", "contamination", "broken_connector", "open_lever", "color"]
)
def test_structural_defect_only_changes_its_region(defect: str, size: int) -> None:
    """These defects are drawn after the normal scene of the same seed: pixels change only in the regions."""
    for seed in range(16):  # at 512 an outline wider than the region's margin shows on some seeds only
        normal, bad = render(seed, None, size), render(seed, defect, size)
        union = np.zeros(normal.foreground.shape, bool)
        for r in bad.regions:
            union |= r.mask
        changed = (normal.image != bad.image).any(axis=2)
        assert changed.any()
        assert not (changed & ~union).any()
        assert union.sum() < 0.05 * union.size  # small, local defects
