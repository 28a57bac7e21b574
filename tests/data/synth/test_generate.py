from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlmad.data import load_image, mask_values, read_dataset, validate_manifest
from vlmad.data.synth.categories import CATEGORIES, get_category
from vlmad.data.synth.generate import SynthConfig, generate, load_config, make_config
from vlmad.errors import ConfigError

SMALL = {"train_good": 2, "validation_good": 1, "test_good": 2, "test_logical": 3, "test_structural": 3}


def small_config(**kw) -> SynthConfig:
    return make_config(**{"size": 128, "counts": SMALL, **kw})


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(small_config(), out, workers=1)
    return out


def test_loco_layout_read_back(dataset: Path) -> None:
    m = read_dataset(dataset)
    assert m.info.layout == "mvtec_loco"
    assert m.categories == list(CATEGORIES)
    for cat in CATEGORIES:
        c = m.filter(category=cat)
        assert c.counts("split", "label") == {
            ("train", "good"): 2,
            ("validation", "good"): 1,
            ("test", "good"): 2,
            ("test", "logical"): 3,
            ("test", "structural"): 3,
        }
        cfg = json.loads((dataset / cat / "defects_config.json").read_text())
        assert cfg == [d.model_dump() for d in get_category(cat).defect_configs(128)]
        assert (dataset / cat / "ground_truth" / "logical_anomalies" / "000" / "000.png").is_file()
    assert validate_manifest(m) == []


def test_every_anomaly_mask_is_nonempty_inside_and_carries_its_pixel_value(dataset: Path) -> None:
    m = read_dataset(dataset)
    records = {
        r["image"]: r for r in map(json.loads, (dataset / "descriptions.jsonl").read_text().splitlines())
    }
    assert len(records) == len(m)
    for s in m:
        rec = records[s.image_path.relative_to(dataset).as_posix()]
        assert s.metadata["description"] == rec["description"] and rec["description"]
        img = load_image(s.image_path)
        assert img.shape == (128, 128, 3)
        if not s.is_anomalous:
            assert s.mask_paths == () and rec["regions"] == []
            continue
        assert s.defect_type == rec["defect_type"]  # recovered from mask pixel values alone
        value = {d.defect_name: d.pixel_value for d in m.info.defects[s.category]}[rec["defect_type"]]
        assert len(s.mask_paths) == len(rec["regions"]) >= 1
        for mp in s.mask_paths:
            v = mask_values(mp)
            assert v.shape == img.shape[:2]
            assert set(np.unique(v).tolist()) == {0, value}
            assert (v > 0).sum() > 0


def test_defect_types_cycle_over_anomalies() -> None:
    cfg = make_config(categories=["pushpins"], counts={**SMALL, "test_logical": 10, "test_structural": 10})
    from vlmad.data.synth.generate import plan

    jobs = [j for j in plan(cfg) if j.label != "good"]
    cat = get_category("pushpins")
    assert {j.defect for j in jobs if j.label == "logical"} == set(cat.defect_names("logical"))
    assert {j.defect for j in jobs if j.label == "structural"} == set(cat.defect_names("structural"))


def test_deterministic_and_independent_of_workers(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(small_config(), again, workers=2)
    assert tree(again) == tree(dataset)
    other = tmp_path / "other"
    generate(small_config(seed=1), other, workers=1)
    a, b = tree(other), tree(dataset)

    def layout(t: dict[str, bytes]) -> set[str]:
        # every file, but a ground-truth mask only as its image's folder: how many regions an anomaly has
        # (one or two stains, one or two missing pins...) is drawn from the seed like its pixels
        return {k.rsplit("/", 1)[0] + "/" if "/ground_truth/" in k else k for k in t}

    assert layout(a) == layout(b)  # same layout, other pixels
    assert a["pushpins/train/good/000.png"] != b["pushpins/train/good/000.png"]


def test_resume_after_interruption(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    calls = []

    def stop_after_some(done: int, total: int) -> None:
        calls.append(done)
        if done == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(small_config(), out, workers=1, progress=stop_after_some)
    partial = len(list(out.rglob("*.png")))
    assert partial > 0
    seen = []
    generate(small_config(), out, workers=1, progress=lambda d, t: seen.append(d))
    assert seen[0] == 17  # finished images were kept, not regenerated
    assert tree(out) == tree(dataset)


def test_refuses_other_config_and_foreign_folders(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "x"
    generate(small_config(categories=["juice_bottle"]), out)
    with pytest.raises(ConfigError, match="other settings"):
        generate(small_config(categories=["juice_bottle"], seed=3), out)
    generate(small_config(categories=["juice_bottle"], seed=3), out, overwrite=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no vlmad synthetic dataset"):
        generate(small_config(), foreign)


def test_config_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown categories"):
        make_config(categories=["toaster"])
    with pytest.raises(ConfigError, match="size"):
        make_config(size=8)
    with pytest.raises(ConfigError):
        make_config(test_shifts="sunburn:0.5")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("synth:\n  counts: {train_good: -1}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: counts.train_good"):
        load_config(recipe)


def test_recipes_in_repo_load() -> None:
    root = Path(__file__).resolve().parents[3] / "data_builders"
    recipes = sorted(root.glob("*.yaml"))
    assert recipes
    kinds = set()
    for r in recipes:  # each recipe is either a synthetic-data recipe or a QA build recipe
        if "qa_build:" in r.read_text():
            from vlmad.qa.build import load_build_recipe

            load_build_recipe(r)
            kinds.add("qa")
        else:
            load_config(r)
            kinds.add("synth")
    assert kinds == {"qa", "synth"}


def test_test_shifts_apply_to_test_only(tmp_path: Path) -> None:
    counts = {"train_good": 1, "validation_good": 0, "test_good": 1, "test_logical": 1, "test_structural": 0}
    base = tmp_path / "base"
    shifted = tmp_path / "shifted"
    generate(make_config(categories=["pushpins"], size=128, counts=counts), base)
    generate(
        make_config(categories=["pushpins"], size=128, counts=counts, test_shifts="clutter:1,shadow:1"),
        shifted,
    )
    a, b = tree(base), tree(shifted)
    assert a["pushpins/train/good/000.png"] == b["pushpins/train/good/000.png"]
    assert a["pushpins/test/good/000.png"] != b["pushpins/test/good/000.png"]
    recs = [json.loads(x) for x in (shifted / "descriptions.jsonl").read_text().splitlines()]
    test_rec = next(r for r in recs if r["image"] == "pushpins/test/good/000.png")
    assert [s["name"] for s in test_rec["facts"]["shifts"]] == ["clutter", "shadow"]
