"""The trivial pixel-Gaussian baseline and the run layer: one prediction and map per image, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import make_mvtec_ad
from vlmad.data.maps import load_map
from vlmad.data.predictions import read_predictions
from vlmad.data.readers import read_dataset
from vlmad.detectors.base import Detector, DetectorError
from vlmad.detectors.pixel_gaussian import PixelGaussian
from vlmad.detectors.run import model_dirs, predict_manifest, run_detector


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
    with pytest.raises(DetectorError, match="at least 2"):
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
    assert [p.sample_id for p in again] == [p.sample_id for p in preds]
    assert [p.score for p in again] == pytest.approx([p.score for p in preds])


def test_run_detector_saves_models_records_metadata_and_reuses_models(tmp_path: Path) -> None:
    m = read_dataset(make_mvtec_ad(tmp_path / "ad"))
    out = tmp_path / "run"
    result = run_detector("pixel-gaussian", m, out, options={"size": 8}, splits=("test",))
    assert set(result.models) == {"bottle", "screw"} and result.n_predicted == 8
    preds = read_predictions(result.predictions)
    assert all(p.metadata["detector"] == "pixel-gaussian" for p in preds)
    dirs = model_dirs(out / "models")
    assert set(dirs) == {"bottle", "screw"}
    assert set(model_dirs(dirs["bottle"])) == {"bottle"}  # a single model folder names its category
    det = Detector.load(dirs["bottle"])
    bottle = [s for s in m.filter(split="test") if s.category == "bottle"]
    scores, _ = det.predict([s.image_path for s in bottle])
    by_id = {p.sample_id: p.score for p in preds}
    assert scores.tolist() == pytest.approx([by_id[s.id] for s in bottle])
    run = json.loads((out / "run.json").read_text())
    assert run["categories"]["bottle"]["params"]["size"] == 8
    # a finished run is not refitted; an interrupted one reuses its saved model, unless options differ
    assert run_detector("pixel-gaussian", m, out, options={"size": 8}, splits=("test",)).n_predicted == 0
    lines = result.predictions.read_text().splitlines(keepends=True)
    result.predictions.write_text("".join(lines[:2]))
    with pytest.raises(DetectorError, match="other options"):
        run_detector("pixel-gaussian", m, out, options={"size": 16}, splits=("test",))
    assert run_detector("pixel-gaussian", m, out, options={"size": 8}, splits=("test",)).n_predicted == 6


def test_run_detector_applies_an_object_mask_and_records_it(tmp_path: Path) -> None:
    from PIL import Image

    from tests.detectors.images import defect_image, normal_image
    from vlmad.records import DatasetInfo, Manifest, Sample

    root = tmp_path / "ds"
    samples = []
    for i in range(4):
        p = root / "tex" / "train" / "good" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(normal_image(i, 96)).save(p)
        samples.append(Sample(id=f"tex/train/{i}", image_path=p, category="tex", split="train", label="good"))
    for i in range(2):
        p = root / "tex" / "test" / "bad" / f"{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(defect_image(i, 96)[0]).save(p)
        samples.append(
            Sample(id=f"tex/test/{i}", image_path=p, category="tex", split="test", label="structural")
        )
    m = Manifest(DatasetInfo(name="tex", root=root, layout="folder", categories=["tex"]), samples)
    plain = run_detector("pixel-gaussian", m, tmp_path / "plain", splits=("test",))
    masked = run_detector(
        "pixel-gaussian",
        m,
        tmp_path / "masked",
        splits=("test",),
        object_mask={"method": "orb", "factor": 0.5},
    )
    a, b = read_predictions(plain.predictions), read_predictions(masked.predictions)
    for p, q in zip(a, b, strict=True):
        assert q.metadata["object_mask"] == "orb" and q.metadata["mask_factor"] == 0.5
        assert "mask_fallback" in q.metadata and 0 < q.metadata["mask_coverage"] <= 1
        mp, mq = load_map(p.map_path), load_map(q.map_path)
        # inside the mask the map is unchanged, outside it is halved: never larger, equal somewhere
        assert np.all(mq <= mp + 1e-6) and np.any(np.isclose(mq, mp))
        if q.metadata["mask_coverage"] < 1:
            assert np.any(np.isclose(mq, 0.5 * mp) & (mp > 0))
    assert json.loads((tmp_path / "masked" / "run.json").read_text())["object_mask"]["method"] == "orb"
