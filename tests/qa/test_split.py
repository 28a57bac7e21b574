"""The partial-supervision split: exact per-stratum counts, by image, seeded, reported."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vlmad.errors import ConfigError
from vlmad.qa.split import QASplit, n_to_train, partial_supervision_split
from vlmad.records import DatasetInfo, Manifest, Sample


def _sample(sid: str, split: str, label: str, defect: str | None = None, cat: str = "widget") -> Sample:
    return Sample(
        id=sid,
        image_path=Path("/data") / f"{sid}.png",
        category=cat,
        split=split,  # type: ignore[arg-type]
        label=label,  # type: ignore[arg-type]
        defect_type=defect if label != "good" else "good",
    )


@pytest.fixture
def small() -> Manifest:
    """A stratum of exactly 10 scratches, 4 dents, 1 crack; 3 train, 1 validation and 2 test normals."""
    samples = [_sample(f"train/good/{i}", "train", "good") for i in range(3)]
    samples.append(_sample("validation/good/0", "validation", "good"))
    samples += [_sample(f"test/good/{i}", "test", "good") for i in range(2)]
    samples += [_sample(f"test/scratch/{i}", "test", "structural", "scratch") for i in range(10)]
    samples += [_sample(f"test/dent/{i}", "test", "structural", "dent") for i in range(4)]
    samples.append(_sample("test/crack/0", "test", "logical", "crack"))
    return Manifest(DatasetInfo(name="small", layout="manifest", root=Path("/data")), samples)


def _train(split: QASplit, prefix: str) -> list[str]:
    return sorted(s for s, p in split.assignment.items() if p == "train" and s.startswith(prefix))


@pytest.mark.parametrize(
    ("fraction", "scratch", "dent", "crack"), [(0.1, 1, 0, 0), (0.25, 3, 1, 0), (0.5, 5, 2, 1)]
)
def test_exact_counts_per_stratum(
    small: Manifest, fraction: float, scratch: int, dent: int, crack: int
) -> None:
    split = partial_supervision_split(small, fraction=fraction, seed=0)
    assert len(_train(split, "test/scratch/")) == scratch
    assert len(_train(split, "test/dent/")) == dent
    assert len(_train(split, "test/crack/")) == crack
    assert split.counts[("widget", "structural", "scratch")] == {"n": 10, "to_train": scratch}
    assert split.counts[("widget", "structural", "dent")] == {"n": 4, "to_train": dent}
    assert split.counts[("widget", "logical", "crack")] == {"n": 1, "to_train": crack}
    moved = scratch + dent + crack
    assert split.totals == {"train": 3 + moved, "validation": 1, "test": 2 + 15 - moved}


def test_normals_keep_their_side(small: Manifest) -> None:
    split = partial_supervision_split(small, fraction=1.0)
    for s in small:
        if s.label == "good":
            assert split.assignment[s.id] == s.split
        else:
            assert split.assignment[s.id] == "train"
    assert set(partial_supervision_split(small, fraction=0.0).ids("train")) == {
        f"train/good/{i}" for i in range(3)
    }


def test_rounding() -> None:
    assert [n_to_train(0.1, n) for n in (4, 5, 10, 14, 15, 25)] == [0, 1, 1, 1, 2, 3]
    assert n_to_train(0.25, 10) == 3 and n_to_train(1.0, 7) == 7 and n_to_train(0.0, 7) == 0


def test_deterministic_seeded_and_order_free(small: Manifest) -> None:
    a = partial_supervision_split(small, fraction=0.25, seed=7)
    assert a == partial_supervision_split(small, fraction=0.25, seed=7)
    reordered = Manifest(small.info, list(reversed(small.samples)))
    assert partial_supervision_split(reordered, fraction=0.25, seed=7).assignment == a.assignment
    b = partial_supervision_split(small, fraction=0.25, seed=8)
    assert _train(a, "test/scratch/") != _train(b, "test/scratch/")
    assert a.counts == b.counts


def test_generated_dataset_by_image(qa_manifest: Manifest) -> None:
    split = partial_supervision_split(qa_manifest, fraction=0.1, seed=0)
    assert set(split.assignment) == {s.id for s in qa_manifest}
    sides = {part: {qa_manifest.get(sid).image_path for sid in split.ids(part)} for part in split.totals}
    assert not (sides["train"] & sides["test"]) and not (sides["train"] & sides["validation"])
    assert not (sides["validation"] & sides["test"])
    assert sum(len(v) for v in sides.values()) == len(qa_manifest)
    # counts per stratum match the manifest and the assignment
    for (cat, label, defect), c in split.counts.items():
        members = [s for s in qa_manifest if (s.category, s.label, s.defect_type) == (cat, label, defect)]
        assert c["n"] == len(members) > 0
        assert c["to_train"] == math.floor(0.1 * c["n"] + 0.5)
        assert sum(split.assignment[s.id] == "train" for s in members) == c["to_train"]
    strata = {(s.category, s.label, s.defect_type) for s in qa_manifest if s.is_anomalous}
    assert set(split.counts) == strata
    normals_train = sum(1 for s in qa_manifest if s.label == "good" and s.split == "train")
    assert split.totals["train"] == normals_train + sum(c["to_train"] for c in split.counts.values())


def test_summary_is_json(small: Manifest) -> None:
    d = json.loads(json.dumps(partial_supervision_split(small, fraction=0.25, seed=3).to_dict()))
    assert d["fraction"] == 0.25 and d["seed"] == 3 and d["totals"]["train"] == 7
    assert {
        "category": "widget",
        "label": "structural",
        "defect_type": "scratch",
        "n": 10,
        "to_train": 3,
    } in d["strata"]


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_bad_fraction(small: Manifest, fraction: float) -> None:
    with pytest.raises(ConfigError, match="fraction"):
        partial_supervision_split(small, fraction=fraction)
