"""``vlmad eval``: maps in dataset layout, predictions files, A/B comparisons; user errors are one line."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.test_cli import run
from vlmad.data.images import load_image, load_masks
from vlmad.data.maps import load_map, save_map
from vlmad.data.predictions import write_predictions
from vlmad.data.readers import read_dataset
from vlmad.data.synth.generate import generate, make_config
from vlmad.detectors.pixel_gaussian import PixelGaussian
from vlmad.records import Prediction

COUNTS = {"train_good": 3, "validation_good": 3, "test_good": 3, "test_logical": 3, "test_structural": 3}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evalcli") / "data"
    config = make_config(categories=["pushpins", "screw_bag"], size=64, seed=3, counts=COUNTS)
    generate(config, root, workers=1)
    return root


@pytest.fixture(scope="module")
def maps_dir(dataset: Path) -> Path:
    """Baseline maps written as .tiff in the dataset's layout, as other tools write them."""
    out = dataset.parent / "maps"
    m = read_dataset(dataset)
    for cat in m.categories:
        det = PixelGaussian(size=16).fit(
            [load_image(s.image_path) for s in m.filter(category=cat, split="train")]
        )
        for s in m.filter(category=cat, split="test"):
            rel = s.image_path.relative_to(m.info.root).with_suffix(".tiff")
            save_map(out / rel, det.predict_one(load_image(s.image_path))[1])
    return out


def test_eval_maps_matches_an_independent_computation(dataset: Path, maps_dir: Path, tmp_path: Path) -> None:
    r = run("eval", "maps", "--dataset", str(dataset), "--maps", str(maps_dir), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    assert "px AUROC" in r.stdout and "AUPRO@0.3" in r.stdout and "mean" in r.stdout
    rows = json.loads((tmp_path / "o" / "metrics.json").read_text())["rows"]
    got = {(x["category"], x["subset"], x["metric"]): x["value"] for x in rows}
    m = read_dataset(dataset)
    tests = m.filter(category="pushpins", split="test", label=["good", "logical"])
    maps = [load_map(maps_dir / s.image_path.relative_to(m.info.root).with_suffix(".tiff")) for s in tests]
    labels = [s.is_anomalous for s in tests]
    assert got[("pushpins", "logical", "image_auroc")] == pytest.approx(
        roc_auc_score(labels, [a.max() for a in maps]), abs=1e-12
    )
    masks = [load_masks(s.mask_paths, a.shape) for s, a in zip(tests, maps, strict=True)]
    assert got[("pushpins", "logical", "pixel_auroc")] == pytest.approx(
        roc_auc_score(np.concatenate([k.ravel() for k in masks]), np.concatenate([a.ravel() for a in maps])),
        abs=1e-9,
    )
    assert ("mean", "average", "au_spro_0.05") in got
    assert (tmp_path / "o" / "report.html").is_file() and (tmp_path / "o" / "metrics.csv").is_file()


def test_eval_maps_missing_and_resized_maps(dataset: Path, maps_dir: Path, tmp_path: Path) -> None:
    partial = tmp_path / "maps"
    shutil.copytree(maps_dir, partial)
    victim = next(partial.rglob("*.tiff"))
    victim.unlink()
    r = run("eval", "maps", "--dataset", str(dataset), "--maps", str(partial), "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no map for 1 of" in r.stderr and "--allow-missing" in r.stderr
    # a smaller map is resized to the mask size, and the output says so
    other = next(partial.rglob("*.tiff"))
    save_map(other, load_map(other)[::2, ::2])
    r = run(
        "eval",
        "maps",
        "--dataset",
        str(dataset),
        "--maps",
        str(partial),
        "--allow-missing",
        "--out",
        str(tmp_path / "b"),
    )
    assert r.returncode == 0, r.stderr
    notes = json.loads((tmp_path / "b" / "metrics.json").read_text())["notes"]
    assert any("no prediction" in n for n in notes) and any("resized" in n for n in notes)


def test_eval_maps_user_errors(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for args in (
        ("--maps", str(tmp_path / "nope")),
        ("--maps", str(tmp_path / "empty")),
    ):
        r = run("eval", "maps", "--dataset", str(dataset), *args)
        assert r.returncode == 2, r.stdout
        assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def _verdict_run(dataset: Path, name: str, flip_every: int, path: Path) -> Path:
    m = read_dataset(dataset)
    preds = []
    for i, s in enumerate(m.filter(split="test")):
        right = "anomalous" if s.is_anomalous else "normal"
        wrong = "normal" if s.is_anomalous else "anomalous"
        preds.append(Prediction(sample_id=s.id, run_id=name, verdict=wrong if i % flip_every == 0 else right))
    return write_predictions(path, preds)


def test_eval_predictions_and_compare(dataset: Path, tmp_path: Path) -> None:
    a = _verdict_run(dataset, "vlm-a", 2, tmp_path / "a.jsonl")
    b = _verdict_run(dataset, "vlm-b", 5, tmp_path / "b.jsonl")
    r = run("eval", "predictions", str(a), "--dataset", str(dataset), "--out", str(tmp_path / "ea"))
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "ea" / "metrics.json").read_text())["rows"]
    acc = next(
        x
        for x in rows
        if x["metric"] == "verdict_accuracy" and x["category"] == "pushpins" and x["subset"] == "all"
    )
    assert acc["value"] == pytest.approx(4 / 9)  # items 0, 2, 4, 6, 8 of 9 flipped

    def compare(out: Path) -> subprocess.CompletedProcess[str]:
        return run(
            "eval", "compare", str(a), str(b), "--dataset", str(dataset), "--n-boot", "500", "--out", str(out)
        )

    r = compare(tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    (c,) = json.loads((tmp_path / "c.json").read_text())
    assert c["base"] == "vlm-a" and c["other"] == "vlm-b" and c["metric"] == "accuracy"
    assert c["value_base"] == pytest.approx(9 / 18) and c["value_other"] == pytest.approx(14 / 18)
    assert c["low"] <= c["difference"] <= c["high"] and 0 < c["p_value"] <= 1
    # reproducible: the same seed gives the same numbers
    r2 = compare(tmp_path / "d.json")
    assert r2.returncode == 0 and json.loads((tmp_path / "d.json").read_text()) == [c]


def test_eval_predictions_thresholds_never_leak_unless_oracle(
    dataset: Path, maps_dir: Path, tmp_path: Path
) -> None:
    m = read_dataset(dataset)
    preds = [
        Prediction(sample_id=s.id, run_id="scores", score=float(i % 7) + (2.0 if s.is_anomalous else 0.0))
        for i, s in enumerate(m.filter(split=["validation", "test"]))
    ]
    path = write_predictions(tmp_path / "p.jsonl", preds)
    r = run("eval", "predictions", str(path), "--dataset", str(dataset), "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert {t["source"] for t in data["thresholds"].values()} == {"validation"}
    assert "ORACLE" not in r.stdout
    r = run(
        "eval",
        "predictions",
        str(path),
        "--dataset",
        str(dataset),
        "--threshold",
        "oracle-f1",
        "--out",
        str(tmp_path / "o"),
    )
    assert r.returncode == 0, r.stderr and "ORACLE" in r.stdout
    rows = json.loads((tmp_path / "o" / "metrics.json").read_text())["rows"]
    assert all(
        "ORACLE" in x["note"] for x in rows if x["metric"].startswith("thr_") and x["category"] != "mean"
    )
    # a NaN score is refused with the file and line, not evaluated
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text().replace('"score": 2.0', '"score": NaN', 1))
    r = run("eval", "predictions", str(bad), "--dataset", str(dataset))
    assert r.returncode == 2 and "bad.jsonl: line" in r.stderr and "Traceback" not in r.stderr


def test_eval_maps_mask_of_another_size_is_named(dataset: Path, maps_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    mask = next((data / "pushpins" / "ground_truth").rglob("*.png"))
    Image.open(mask).resize((32, 32)).save(mask)
    r = run("eval", "maps", "--dataset", str(data), "--maps", str(maps_dir), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(mask) in r.stderr and "mask is 32x32 but the image is 64x64" in r.stderr
