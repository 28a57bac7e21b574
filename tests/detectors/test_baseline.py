"""The trivial pixel-Gaussian baseline and predict_manifest: one prediction and map per image, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import make_mvtec_ad
from vlmad.data.maps import load_map
from vlmad.data.predictions import read_predictions
from vlmad.data.readers import read_dataset
from vlmad.detectors.pixel_gaussian import PixelGaussian
from vlmad.detectors.run import predict_manifest


def test_pixel_gaussian_scores_the_odd_pixel() -> None:
    rng = np.random.default_rng(0)
    normals = [np.clip(120 + rng.normal(0, 3, (32, 32, 3)), 0, 255).astype(np.uint8) for _ in range(6)]
    det = PixelGaussian(size=16).fit(normals)
    odd = normals[0].copy()
    odd[20:28, 20:28] = 255
    scores, maps = det.predict([normals[1], odd])
    assert maps[1].shape == (32, 32) and maps[1].dtype == np.float32
    assert scores[1] > scores[0]
    assert np.unravel_index(np.argmax(maps[1]), maps[1].shape)[0] >= 16  # the peak lies in the bright square
    with pytest.raises(ValueError, match="at least 2"):
        PixelGaussian().fit(normals[:1])


def test_predict_manifest_writes_every_image_and_resumes(tmp_path: Path) -> None:
    m = read_dataset(make_mvtec_ad(tmp_path / "ad"))
    path = predict_manifest(PixelGaussian, m, tmp_path / "run", "pg", splits=("test",))
    preds = read_predictions(path)
    assert {p.sample_id for p in preds} == {s.id for s in m.filter(split="test")}
    for p in preds:
        assert p.score == pytest.approx(float(load_map(p.map_path).max()))
    # cut the file after the first line: a rerun predicts only what is missing, and the file is whole again
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:10])
    predict_manifest(PixelGaussian, m, tmp_path / "run", "pg", splits=("test",))
    again = read_predictions(path)
    assert sorted(p.sample_id for p in again) == sorted(p.sample_id for p in preds)
    assert again[0] == preds[0]
