"""run_zeroshot: every image scored once, resumable, AnomalyCLIP never trained on a tested category."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmad.data.predictions import read_predictions
from vlmad.data.readers import read_dataset
from vlmad.data.synth.generate import generate, make_config
from vlmad.errors import ConfigError
from vlmad.records import Manifest
from vlmad.zeroshot.clip import Clip, ZeroShotError
from vlmad.zeroshot.run import run_zeroshot

COUNTS = {"train_good": 3, "validation_good": 1, "test_good": 2, "test_logical": 1, "test_structural": 2}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    root = tmp_path_factory.mktemp("zsrun") / "data"
    generate(
        make_config(categories=["pushpins", "screw_bag", "breakfast_box"], size=64, seed=3, counts=COUNTS),
        root,
        workers=1,
    )
    return read_dataset(root)


def _scored(m: Manifest, cats: list[str] | None = None) -> set[str]:
    return {s.id for s in m if s.split in ("validation", "test") and (cats is None or s.category in cats)}


def test_winclip_scores_every_image_once_and_resumes(
    manifest: Manifest, tiny_clip: Clip, tmp_path: Path
) -> None:
    out = tmp_path / "winclip"
    first = run_zeroshot("winclip", manifest, out, tiny_clip, categories=["pushpins"], k_shot=2)
    preds = read_predictions(first.predictions)
    assert {p.sample_id for p in preds} == _scored(manifest, ["pushpins"]) and first.n_predicted == len(preds)
    assert all(p.run_id == "WinCLIP+ (2-shot) [tiny random CLIP]" for p in preds)
    assert all(p.metadata["random_clip"] and p.metadata["k_shot"] == 2 for p in preds)
    assert all(p.map_path is not None and (out / p.map_path).is_file() for p in preds)
    assert any("TINY RANDOM CLIP" in w for w in first.warnings)
    again = run_zeroshot("winclip", manifest, out, tiny_clip, categories=["pushpins"], k_shot=2)
    assert again.n_predicted == 0
    lines = first.predictions.read_text().splitlines(keepends=True)  # interrupted: last record lost
    first.predictions.write_text("".join(lines[:-1]))
    resumed = run_zeroshot("winclip", manifest, out, tiny_clip, categories=["pushpins"], k_shot=2)
    assert resumed.n_predicted == 1 and len(read_predictions(first.predictions)) == len(preds)


def test_musc_scores_a_category_together_and_resumes_only_the_missing(
    manifest: Manifest, tiny_clip: Clip, tmp_path: Path
) -> None:
    out = tmp_path / "musc"
    first = run_zeroshot("musc", manifest, out, tiny_clip, categories=["screw_bag"])
    preds = {p.sample_id: p for p in read_predictions(first.predictions)}
    assert set(preds) == _scored(manifest, ["screw_bag"])
    lines = first.predictions.read_text().splitlines(keepends=True)
    first.predictions.write_text("".join(lines[:-2]))
    resumed = run_zeroshot("musc", manifest, out, tiny_clip, categories=["screw_bag"])
    after = {p.sample_id: p for p in read_predictions(first.predictions)}
    assert resumed.n_predicted == 2 and set(after) == set(preds)
    for sid, p in after.items():  # the category rescored as a whole gives the same scores
        assert p.score == pytest.approx(preds[sid].score, rel=1e-5)


def test_anomalyclip_trains_in_folds_that_never_see_the_tested_category(
    manifest: Manifest, tiny_clip: Clip, tmp_path: Path
) -> None:
    out = tmp_path / "anomalyclip"
    options = {"epochs": 1, "batch_size": 4}
    result = run_zeroshot("anomalyclip", manifest, out, tiny_clip, options=options)
    assert set(result.trained_on) == set(manifest.categories)
    for cat, trained in result.trained_on.items():
        assert cat not in trained and trained
    assert {p.sample_id for p in read_predictions(result.predictions)} == _scored(manifest)
    assert (out / "models" / "fold-0" / "anomalyclip.json").is_file()
    assert any("trained on" in w for w in result.warnings)
    # the saved prompts are reused on resume; other options are refused rather than silently mixed
    assert run_zeroshot("anomalyclip", manifest, out, tiny_clip, options=options).fit_seconds == 0.0
    (out / "predictions.jsonl").unlink()
    with pytest.raises(ZeroShotError, match="remove it to retrain"):
        run_zeroshot("anomalyclip", manifest, out, tiny_clip, options={**options, "epochs": 2})


def test_bad_requests_are_clear(manifest: Manifest, tiny_clip: Clip, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="WinCLIP"):
        run_zeroshot("musc", manifest, tmp_path / "a", tiny_clip, k_shot=1)
    with pytest.raises(ConfigError, match="unknown zero-shot method"):
        run_zeroshot("clipsy", manifest, tmp_path / "b", tiny_clip)
    with pytest.raises(ConfigError, match="not in the dataset"):
        run_zeroshot("winclip", manifest, tmp_path / "c", tiny_clip, categories=["bottle"])
    with pytest.raises(ZeroShotError, match="needs 9 normal training images"):
        run_zeroshot("winclip", manifest, tmp_path / "d", tiny_clip, categories=["pushpins"], k_shot=9)
    with pytest.raises(ZeroShotError, match="must not overlap"):
        run_zeroshot("anomalyclip", manifest, tmp_path / "e", tiny_clip, train_manifest=manifest)
    with pytest.raises(ZeroShotError, match="one category"):
        run_zeroshot("anomalyclip", manifest, tmp_path / "f", tiny_clip, categories=["pushpins"])
