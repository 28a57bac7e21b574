"""The contract of ``vlmad.data.synth.base`` checked for every procedural category in ``CATEGORIES``.

Declarations, determinism, the scene and region contract at several sizes, unknown defect types and the
variation of normal images. What only holds for some categories (their logical rules, the saturation areas
of their missing objects, which pixels a defect changes) is tested in the per-category files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmad.data.synth.base import Category, Scene
from vlmad.data.synth.categories import CATEGORIES

CATS: dict[str, Category] = {name: cls() for name, cls in CATEGORIES.items()}
CASES = [(c, d) for c, cat in CATS.items() for d in [None, *cat.defect_names()]]
SIZES = [128, 256, 384, 512]
SEEDS = {128: 12, 256: 10, 384: 2, 512: 4}  # scenes per case and size in the contract test
# Categories that lay their parts apart on a bare table: the parts cover less than a tenth of some images,
# and a region may lie on the table (where a missing cable or connector belongs, a cut, an open lever). Every
# other category's object covers at least a tenth of the image and every defect region lies on it.
PARTS_ON_A_TABLE = {"splicing_connectors"}


def render(cat: str, seed: int, defect: str | None, size: int = 256) -> Scene:
    return CATS[cat].render(np.random.default_rng(seed), size, defect)


# ---------------------------------------------------------------------------- declarations
@pytest.mark.parametrize("cat", list(CATS))
def test_declaration(cat: str) -> None:
    c = CATS[cat]
    assert c.name == cat and c.object_name
    names = c.defect_names()
    assert len(names) == len(set(names))
    assert c.defect_names("logical") + c.defect_names("structural") == names  # logical first, then structural
    assert len(c.defect_names("logical")) >= 4 and len(c.defect_names("structural")) >= 4
    for n in names:
        spec = c.spec(n)
        assert spec.name == n
        if spec.relative_saturation:  # any overlap up to the whole region counts
            assert spec.saturation_threshold == 1.0
        else:  # only a missing object saturates at its area, so only logical defects do
            assert spec.kind == "logical" and spec.saturation_threshold > 0
    for size in (128, 256, 512):
        configs = c.defect_configs(size)
        assert [d.defect_name for d in configs] == names
        assert [d.pixel_value for d in configs] == list(range(255, 255 - len(names), -1))
        for d in configs:
            spec = c.spec(d.defect_name)
            assert d.relative_saturation == spec.relative_saturation
            if spec.relative_saturation:
                assert d.saturation_threshold == 1.0
            else:  # given for 256 x 256, scaled by area
                assert d.saturation_threshold == round(spec.saturation_threshold * (size / 256) ** 2)


@pytest.mark.parametrize("cat", list(CATS))
def test_unknown_defect_is_a_key_error(cat: str) -> None:
    with pytest.raises(KeyError, match="no_such_defect"):
        CATS[cat].spec("no_such_defect")
    with pytest.raises(KeyError):
        render(cat, 0, "no_such_defect")


# ---------------------------------------------------------------------------- the contract
@pytest.mark.parametrize(("cat", "defect"), CASES)
def test_deterministic(cat: str, defect: str | None) -> None:
    a, b = render(cat, 7, defect), render(cat, 7, defect)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.foreground, b.foreground)
    assert a.description == b.description and a.facts == b.facts
    assert len(a.regions) == len(b.regions)
    for ra, rb in zip(a.regions, b.regions, strict=True):
        assert ra.defect == rb.defect and ra.description == rb.description
        assert np.array_equal(ra.mask, rb.mask)
    assert not np.array_equal(a.image, render(cat, 8, defect).image)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("cat", "defect"), CASES)
def test_scene_contract(cat: str, defect: str | None, size: int) -> None:
    on_table = cat in PARTS_ON_A_TABLE
    for seed in range(SEEDS[size]):
        sc = render(cat, seed, defect, size)
        assert sc.image.shape == (size, size, 3) and sc.image.dtype == np.uint8
        assert sc.foreground.shape == (size, size) and sc.foreground.dtype == bool
        assert (0.0 if on_table else 0.1) < sc.foreground.mean() < 0.9
        assert sc.description.endswith(".")
        json.dumps(sc.facts)
        if defect is None:
            assert sc.regions == []
            continue
        assert sc.regions, (defect, seed)
        assert "nothing is missing" not in sc.description
        for i, r in enumerate(sc.regions):
            assert r.defect == defect and r.description.endswith(".")
            assert r.mask.shape == (size, size) and r.mask.dtype == bool and r.mask.any()
            assert on_table or not (r.mask & ~sc.foreground).any()  # the defect lies on the object
            for other in sc.regions[:i]:
                assert not np.array_equal(r.mask, other.mask)


@pytest.mark.parametrize("cat", list(CATS))
def test_normal_images_vary(cat: str) -> None:
    scenes = [render(cat, seed, None) for seed in range(20)]
    assert all(sc.regions == [] for sc in scenes)
    images = [sc.image.astype(np.int16) for sc in scenes]
    for i in range(len(scenes)):
        for j in range(i):
            assert np.abs(images[i] - images[j]).mean() > 2.0  # position, pose, colour and texture vary
            assert not np.array_equal(scenes[i].foreground, scenes[j].foreground)  # position / size jitter
