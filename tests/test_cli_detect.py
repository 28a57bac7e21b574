"""``vlmad detect``: fit, predict and run write records the evaluation reads; user errors are one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import run
from vlmad.data.predictions import read_predictions
from vlmad.data.readers import read_dataset
from vlmad.data.synth.generate import generate, make_config

COUNTS = {"train_good": 4, "validation_good": 2, "test_good": 2, "test_logical": 1, "test_structural": 2}
TINY = ["--backbone", "resnet18", "--weights", "random", "--image-size", "64"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("detectcli") / "data"
    generate(
        make_config(categories=["pushpins", "screw_bag"], size=64, seed=4, counts=COUNTS), root, workers=1
    )
    return root


def one_line_error(r: object, *needles: str) -> None:
    assert r.returncode == 2, r.stderr  # type: ignore[attr-defined]
    err = r.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err and err.startswith("error:"), err
    for n in needles:
        assert n in err, err


def test_fit_predict_and_run_write_records_the_evaluation_reads(dataset: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    r = run("detect", "fit", "--dataset", str(dataset), "--method", "patchcore", "--out", str(models), *TINY)
    assert r.returncode == 0, r.stderr
    assert "RANDOM BACKBONE" in r.stderr  # said loudly, once per run
    assert sorted(p.name for p in models.iterdir()) == ["pushpins", "screw_bag"]
    out = tmp_path / "pred"
    r = run("detect", "predict", "--model", str(models), "--dataset", str(dataset), "--out", str(out))
    assert r.returncode == 0, r.stderr
    preds = read_predictions(out / "predictions.jsonl")
    m = read_dataset(dataset)
    assert {p.sample_id for p in preds} == {s.id for s in m.filter(split=["validation", "test"])}
    assert all(p.metadata["random_backbone"] and p.map_path.is_file() for p in preds)
    # a second predict resumes: nothing new, the same file
    before = (out / "predictions.jsonl").read_text()
    assert (
        run(
            "detect", "predict", "--model", str(models), "--dataset", str(dataset), "--out", str(out)
        ).returncode
        == 0
    )
    assert (out / "predictions.jsonl").read_text() == before
    # run = fit + predict + evaluate for one category; same model options give the same scores
    rdir = tmp_path / "run"
    r = run(
        "detect",
        "run",
        "--dataset",
        str(dataset),
        "--method",
        "patchcore",
        "--category",
        "pushpins",
        "--out",
        str(rdir),
        *TINY,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads((rdir / "eval" / "metrics.json").read_text())["rows"]
    assert {x["category"] for x in rows} == {"pushpins", "mean"}
    assert (rdir / "eval" / "report.html").is_file() and (rdir / "models" / "pushpins" / "fit.json").is_file()
    got = {p.sample_id: p.score for p in read_predictions(rdir / "predictions.jsonl")}
    ref = {p.sample_id: p.score for p in preds if p.sample_id in got}
    assert got.keys() == ref.keys() and all(got[k] == pytest.approx(ref[k], rel=1e-5) for k in got)


def test_user_errors_are_one_line(dataset: Path, tmp_path: Path) -> None:
    one_line_error(
        run("detect", "fit", "--dataset", str(dataset), "--method", "nosuch", "--out", str(tmp_path / "x")),
        "unknown detector 'nosuch'",
        "patchcore",
    )
    one_line_error(
        run(
            "detect",
            "fit",
            "--dataset",
            str(dataset),
            "--method",
            "padim",
            "--out",
            str(tmp_path / "x"),
            "-O",
            "bogus=1",
        ),
        "padim has no option bogus",
    )
    # a folder whose training images have mixed sizes
    mixed = tmp_path / "mixed"
    shutil.copytree(dataset / "pushpins", mixed / "pushpins")
    first = sorted((mixed / "pushpins" / "train" / "good").iterdir())[0]
    Image.fromarray(np.zeros((80, 64, 3), np.uint8)).save(first)
    one_line_error(
        run(
            "detect",
            "fit",
            "--dataset",
            str(mixed),
            "--method",
            "patchcore",
            "--out",
            str(tmp_path / "y"),
            *TINY,
        ),
        "mixed sizes",
    )
    # a saved model: corrupted weights, a model fitted on other image sizes, a missing model
    model = tmp_path / "model"
    r = run(
        "detect",
        "fit",
        "--dataset",
        str(dataset),
        "--category",
        "pushpins",
        "--method",
        "pixel-gaussian",
        "--out",
        str(model),
    )
    assert r.returncode == 0, r.stderr
    other = tmp_path / "other"
    generate(make_config(categories=["pushpins"], size=96, seed=4, counts=COUNTS), other, workers=1)
    one_line_error(
        run(
            "detect", "predict", "--model", str(model), "--dataset", str(other), "--out", str(tmp_path / "p1")
        ),
        "fitted on 64x64 images",
    )
    weights = model / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")
    one_line_error(
        run(
            "detect",
            "predict",
            "--model",
            str(model),
            "--dataset",
            str(dataset),
            "--out",
            str(tmp_path / "p2"),
        ),
        "corrupted",
    )
    one_line_error(
        run(
            "detect",
            "predict",
            "--model",
            str(tmp_path / "none"),
            "--dataset",
            str(dataset),
            "--out",
            str(tmp_path / "p3"),
        ),
        "not a saved detector",
    )


def test_methods_lists_the_registry() -> None:
    r = run("detect", "methods")
    assert r.returncode == 0, r.stderr
    for name in ("patchcore", "padim", "spade", "ridge", "efficientad", "pixel-gaussian"):
        assert name in r.stdout
