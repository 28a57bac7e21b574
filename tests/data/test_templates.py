"""Template-image choice: same category, normal, from the pool splits, never the image itself; seeded."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import make_loco
from vlmad.data import read_dataset
from vlmad.data.templates import choose_templates
from vlmad.errors import ConfigError, DatasetError
from vlmad.records import Manifest


@pytest.fixture(scope="module")
def loco(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    root = make_loco(tmp_path_factory.mktemp("loco"), categories=("pushpins", "screw_bag"))
    return read_dataset(root)


def test_every_sample_gets_a_train_normal_of_its_category(loco: Manifest) -> None:
    chosen = choose_templates(loco)
    assert set(chosen) == {s.id for s in loco}
    for sid, tid in chosen.items():
        s, t = loco.get(sid), loco.get(tid)
        assert tid != sid
        assert t.category == s.category
        assert t.label == "good" and t.split == "train"
    # the train normals are templates of each other, never of themselves
    assert chosen["pushpins/train/good/000"] in {"pushpins/train/good/001", "pushpins/train/good/002"}


def test_choice_is_stable_whatever_else_is_asked(loco: Manifest) -> None:
    full = choose_templates(loco, seed=3)
    tests = [s for s in loco if s.split == "test"]
    part = choose_templates(loco, tests[:2], seed=3)
    assert part == {s.id: full[s.id] for s in tests[:2]}
    assert choose_templates(loco, list(reversed(tests)), seed=3) == {s.id: full[s.id] for s in tests}


def test_seed_changes_the_choice_and_is_reproducible(loco: Manifest) -> None:
    runs = [choose_templates(loco, seed=seed) for seed in range(8)]
    assert runs[0] == choose_templates(loco, seed=0)
    assert len({tuple(sorted(r.items())) for r in runs}) > 1


def test_fixed_strategy(loco: Manifest) -> None:
    fixed = {"pushpins": "pushpins/train/good/001", "screw_bag": "screw_bag/train/good/002"}
    chosen = choose_templates(loco, strategy="fixed", fixed=fixed)
    for sid, tid in chosen.items():
        if sid in fixed.values():
            # the template image itself gets another normal of its category
            assert tid != sid and loco.get(tid).category == loco.get(sid).category
        else:
            assert tid == fixed[loco.get(sid).category]


@pytest.mark.parametrize(
    ("fixed", "message"),
    [
        (
            {"pushpins": "pushpins/test/logical_anomalies/000", "screw_bag": "screw_bag/train/good/000"},
            "normal",
        ),
        ({"pushpins": "screw_bag/train/good/000", "screw_bag": "screw_bag/train/good/001"}, "category"),
        ({"pushpins": "nope", "screw_bag": "screw_bag/train/good/001"}, "not in the manifest"),
        ({"pushpins": "pushpins/train/good/000"}, "screw_bag"),
    ],
)
def test_fixed_strategy_is_checked(loco: Manifest, fixed: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        choose_templates(loco, strategy="fixed", fixed=fixed)


def test_no_normal_in_pool_names_the_category(loco: Manifest) -> None:
    no_train = loco.filter(split=("validation", "test"))
    with pytest.raises(DatasetError, match="'pushpins' has no normal image"):
        choose_templates(no_train)


def test_a_lone_normal_cannot_be_its_own_template(loco: Manifest) -> None:
    # the validation pool holds one image per category: fine for others, an error for itself
    tests = [s for s in loco if s.split == "test"]
    chosen = choose_templates(loco, tests, pool_splits=("validation",))
    assert set(chosen.values()) == {"pushpins/validation/good/000", "screw_bag/validation/good/000"}
    with pytest.raises(DatasetError, match="only one normal image"):
        choose_templates(loco, [loco.get("pushpins/validation/good/000")], pool_splits=("validation",))


def test_unknown_strategy(loco: Manifest) -> None:
    with pytest.raises(ConfigError, match="nearest"):
        choose_templates(loco, strategy="nearest")
    with pytest.raises(ConfigError, match="fixed"):
        choose_templates(loco, strategy="fixed")


def test_paths_are_those_of_the_manifest(loco: Manifest) -> None:
    chosen = choose_templates(loco)
    assert all(Path(loco.get(t).image_path).is_file() for t in chosen.values())
