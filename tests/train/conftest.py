"""Shared fixtures of the training tests: tiny random models of the three families and a small QA export,
built once per session, and a helper that writes a training config for them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from vlmad.train import TrainConfig, make_config

FAMILIES = ("llava", "internvl", "qwen2vl")
# per category: 2 train normals, 1 validation normal, 2 test normals, 2 logical and 2 structural anomalies;
# the QA split (fraction 0.5) moves every anomaly to training: 12 training records, 2 validation, 4 test
COUNTS = {"train_good": 2, "validation_good": 1, "test_good": 2, "test_logical": 2, "test_structural": 2}
ANSWER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{family: directory}`` of tiny random checkpoints."""
    from vlmad.vlm.tiny import build

    root = tmp_path_factory.mktemp("tiny-models")
    return {f: build(f, root / f"tiny-random-{f}") for f in FAMILIES}


@pytest.fixture(scope="session")
def qa_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A QA export (messages + hf formats) of a generated two-category dataset at 64 px."""
    from vlmad.data import read_dataset
    from vlmad.data.synth.generate import generate
    from vlmad.data.synth.generate import make_config as synth_config
    from vlmad.qa.build import BuildSettings, build_qa

    root = tmp_path_factory.mktemp("train-data")
    generate(
        synth_config(size=64, counts=COUNTS, categories=["breakfast_box", "pushpins"]), root / "ds", workers=1
    )
    manifest = read_dataset(root / "ds")
    settings = BuildSettings(fraction=0.5, variants=1, formats=["messages", "hf"])
    build_qa(manifest, root / "export", settings, store_path=root / "qa.sqlite")
    return root / "export"


def copy_export(export: Path, dest: Path, with_hf: bool = True) -> Path:
    """A copy of an export that a test may change."""
    shutil.copytree(export, dest, ignore=None if with_hf else shutil.ignore_patterns("hf"))
    return dest


def config(model: Path, export: Path, out: Path, **values: Any) -> TrainConfig:
    """A fast CPU training config for a tiny model: few steps, no validation or logs unless asked."""
    base: dict[str, Any] = {
        "model": str(model),
        "export_dir": str(export),
        "output_dir": str(out),
        "max_steps": 2,
        "learning_rate": 1e-2,
        "lr_scheduler": "constant",
        "warmup": 0,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "eval_split": None,
        "logging_steps": 1,
        "max_length": 1024,
        "report_to": [],
        "precision": "fp32",
        "device": "cpu",
    }
    base.update(values)
    return make_config("test", **base)
