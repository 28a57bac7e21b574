"""Template choice for chain-of-image runs: random (seeded), similar (with its similarity), fixed; each
recorded with every prediction."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmad.coi.templates import image_feature, select_templates
from vlmad.data.templates import choose_templates
from vlmad.errors import ConfigError, DatasetError
from vlmad.records import DatasetInfo, Manifest, Sample


def picture(path: Path, seed: int, shift: int = 0) -> Path:
    """A smooth random picture (4 x 4 noise blown up to 64 px), optionally shifted by ``shift`` pixels."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    arr = np.asarray(small.resize((64, 64), Image.Resampling.BILINEAR))
    Image.fromarray(np.roll(arr, shift, axis=1)).save(path)
    return path


@pytest.fixture()
def manifest(tmp_path: Path) -> Manifest:
    """Category "a": three train normals, the test image a copy of train 001 (shifted by 2 pixels)."""
    samples = []
    for i in range(3):
        p = picture(tmp_path / f"train{i}.png", seed=i)
        samples.append(Sample(id=f"a/train/{i:03d}", image_path=p, category="a", split="train", label="good"))
    test = picture(tmp_path / "test.png", seed=1, shift=2)
    samples.append(Sample(id="a/test/000", image_path=test, category="a", split="test", label="logical"))
    same = tmp_path / "same.png"
    shutil.copy(tmp_path / "train2.png", same)
    samples.append(Sample(id="a/test/001", image_path=same, category="a", split="test", label="good"))
    return Manifest(DatasetInfo(name="t", layout="folder", root=tmp_path), samples)


def test_random_is_seeded_and_the_same_as_the_qa_exports(manifest: Manifest) -> None:
    tests = [s for s in manifest if s.split == "test"]
    a = select_templates(manifest, tests, strategy="random", seed=3)
    assert a == select_templates(manifest, tests, strategy="random", seed=3)
    assert {k: v.template_id for k, v in a.items()} == choose_templates(manifest, tests, seed=3)
    assert all(c.strategy == "random" and c.similarity is None for c in a.values())
    assert a["a/test/000"].to_metadata() == {
        "template_sample_id": a["a/test/000"].template_id,
        "template_strategy": "random",
    }


def test_similar_picks_the_nearest_normal_and_records_the_similarity(manifest: Manifest) -> None:
    chosen = select_templates(manifest, strategy="similar")
    assert chosen["a/test/000"].template_id == "a/train/001"
    assert chosen["a/test/001"].template_id == "a/train/002"
    assert chosen["a/test/001"].similarity == pytest.approx(1.0)
    assert 0.0 < chosen["a/test/000"].similarity < 1.0  # type: ignore[operator]
    meta = chosen["a/test/000"].to_metadata()
    assert meta["template_strategy"] == "similar" and meta["template_similarity"] > 0.5
    # a train normal is never its own template
    assert chosen["a/train/002"].template_id != "a/train/002"
    v = image_feature(manifest.get("a/train/000").image_path)
    assert v.shape == (32 * 32,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-9


def test_fixed_strategy_and_its_exception(manifest: Manifest) -> None:
    chosen = select_templates(manifest, strategy="fixed", fixed={"a": "a/train/000"})
    assert chosen["a/test/000"].template_id == "a/train/000" and chosen["a/test/000"].strategy == "fixed"
    own = chosen["a/train/000"]  # the template image itself gets the random choice
    assert own.template_id != "a/train/000" and own.strategy == "random"


def test_bad_settings(manifest: Manifest) -> None:
    with pytest.raises(ConfigError, match="choose one of random, similar, fixed"):
        select_templates(manifest, strategy="nearest")
    with pytest.raises(ConfigError, match="not a normal image"):
        select_templates(manifest, strategy="fixed", fixed={"a": "a/test/000"})
    with pytest.raises(DatasetError, match="no normal image"):
        select_templates(manifest, strategy="similar", pool_splits=("validation",))
