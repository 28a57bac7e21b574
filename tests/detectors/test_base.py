"""The detector contract: registry, input checks, save/load and every way a saved model can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.detectors.images import TINY_BACKBONE, dataset
from vlmad.detectors.base import Detector, DetectorError, build, names
from vlmad.errors import ConfigError, DatasetError


def test_registry_builds_every_method_by_name() -> None:
    assert {"patchcore", "padim", "spade", "ridge", "efficientad", "pixel-gaussian"} <= set(names())
    det = build("patchcore", **TINY_BACKBONE)
    assert det.method == "patchcore" and det.get_params()["backbone"] == "resnet18"
    with pytest.raises(ConfigError, match=r"unknown detector .patchkor.*patchcore"):
        build("patchkor")
    with pytest.raises(ConfigError, match="has no option colour"):
        build("padim", colour=1)


def test_fit_and_predict_check_their_images(tmp_path: Path) -> None:
    train, test, _, _ = dataset(n_train=3, n_good=1, n_bad=1)
    det = build("pixel-gaussian", size=16)
    with pytest.raises(DetectorError, match="zero images"):
        det.fit([])
    with pytest.raises(DetectorError, match=r"mixed sizes: 64x64 \(2 images\), 64x80 \(1 images\)"):
        det.fit([train[0], train[1], np.zeros((80, 64, 3), np.uint8)])
    with pytest.raises(DetectorError, match="predict before fit"):
        det.predict(test)
    with pytest.raises(DetectorError, match="uint8 RGB"):
        det.fit([np.zeros((64, 64), np.float32)])
    det.fit(train)
    with pytest.raises(DetectorError, match="is 32x32 but this pixel-gaussian model was fitted on 64x64"):
        det.predict([np.zeros((32, 32, 3), np.uint8)])
    missing = tmp_path / "nope.png"
    with pytest.raises(DatasetError, match=r"nope\.png"):
        det.predict([missing])


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray], np.ndarray]:
    train, test, _, _ = dataset(n_train=4, n_good=2, n_bad=2)
    det = build("patchcore", **TINY_BACKBONE).fit(train)
    folder = det.save(tmp_path_factory.mktemp("saved") / "model")
    scores, _ = det.predict(test)
    return folder, test, scores


def _copy(folder: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(folder, to)
    return to


def test_a_saved_model_predicts_what_the_fitted_one_did(
    saved: tuple[Path, list[np.ndarray], np.ndarray],
) -> None:
    folder, test, scores = saved
    det = Detector.load(folder)
    assert np.array_equal(det.predict(test)[0], scores)
    settings = json.loads((folder / "detector.json").read_text())
    assert settings["backbone"]["random"] is True and settings["random_backbone"] is True
    assert any("RANDOM BACKBONE" in w for w in settings["warnings"])


def test_a_model_fitted_on_another_backbone_is_refused(
    saved: tuple[Path, list[np.ndarray], np.ndarray], tmp_path: Path
) -> None:
    folder, _, _ = saved
    for key, value, needle in (
        ("seed", 1, "backbone weights differ"),  # same architecture, other (random) weights
        ("backbone", "resnet34", "fitted on backbone resnet18"),
        ("layers", [1, 2], "fitted on backbone resnet18 layers"),
    ):
        bad = _copy(folder, tmp_path / f"bad-{key}")
        settings = json.loads((bad / "detector.json").read_text())
        settings["params"][key] = value
        (bad / "detector.json").write_text(json.dumps(settings))
        with pytest.raises(DetectorError, match=needle):
            Detector.load(bad)


def test_corrupt_or_foreign_saved_models_get_clear_errors(
    saved: tuple[Path, list[np.ndarray], np.ndarray], tmp_path: Path
) -> None:
    folder, _, _ = saved
    with pytest.raises(DetectorError, match=r"not found; is .* a saved vlmad detector"):
        Detector.load(tmp_path)
    bad = _copy(folder, tmp_path / "json")
    (bad / "detector.json").write_text("{ truncated")
    with pytest.raises(DetectorError, match="corrupted settings"):
        Detector.load(bad)
    bad = _copy(folder, tmp_path / "method")
    settings = json.loads((bad / "detector.json").read_text())
    settings["method"] = "nosuch"
    (bad / "detector.json").write_text(json.dumps(settings))
    with pytest.raises(DetectorError, match="unknown detector 'nosuch'"):
        Detector.load(bad)
    bad = _copy(folder, tmp_path / "weights")
    w = bad / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(DetectorError, match="corrupted"):
        Detector.load(bad)
    (bad / "weights.safetensors").unlink()
    with pytest.raises(DetectorError, match="weights file not found"):
        Detector.load(bad)
