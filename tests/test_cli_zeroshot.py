"""``vlmad zeroshot``: run writes records and an evaluation; a tiny CLIP is flagged; errors are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import run
from tests.test_cli_detect import one_line_error
from vlmad.data.predictions import read_predictions
from vlmad.data.synth.generate import generate, make_config

COUNTS = {"train_good": 2, "validation_good": 1, "test_good": 1, "test_logical": 1, "test_structural": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("zscli")
    generate(make_config(categories=["pushpins"], size=64, seed=5, counts=COUNTS), base / "data", workers=1)
    r = run("zeroshot", "tiny-clip", str(base / "clip"))
    assert r.returncode == 0 and "RANDOM" in r.stdout, r.stderr
    return base / "data", base / "clip"


def test_run_writes_predictions_and_evaluation(setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, clip = setup
    out = tmp_path / "run"
    r = run(
        "zeroshot",
        "run",
        "--dataset",
        str(data),
        "--method",
        "winclip",
        "--clip",
        str(clip),
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert "TINY RANDOM CLIP" in r.stderr
    preds = read_predictions(out / "predictions.jsonl")
    assert len(preds) == 1 + 4 and all(p.metadata["random_clip"] for p in preds)
    rows = json.loads((out / "eval" / "metrics.json").read_text())["rows"]
    assert {r["category"] for r in rows} == {"pushpins", "mean"}
    assert json.loads((out / "run.json").read_text())["clip"]["random_clip"] is True


def test_methods_lists_the_registry() -> None:
    r = run("zeroshot", "methods")
    assert r.returncode == 0
    for name in ("winclip", "anomalyclip", "musc"):
        assert name in r.stdout


def test_user_errors_are_one_line(setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, clip = setup
    base = ["zeroshot", "run", "--dataset", str(data), "--out", str(tmp_path / "x"), "--clip", str(clip)]
    one_line_error(run(*base, "--method", "clipsy"), "unknown zero-shot method", "winclip")
    one_line_error(run(*base, "--method", "musc", "--k-shot", "1"), "WinCLIP")
    one_line_error(run(*base, "--method", "anomalyclip"), "one category")
    one_line_error(run(*base, "--method", "winclip", "-O", "bogus=1"), "bogus")
    missing = ["zeroshot", "run", "--dataset", str(data), "--out", str(tmp_path / "y"), "--method", "winclip"]
    one_line_error(run(*missing, "--clip", str(tmp_path / "no-clip")), "cannot be read")
