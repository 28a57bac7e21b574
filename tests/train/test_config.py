"""Recipes: the shipped ones load, errors name the file and the field, overrides are typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmad.errors import ConfigError
from vlmad.train import load_train_recipe, parse_overrides

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "train").glob("*.yaml"))


def test_shipped_recipes_load() -> None:
    names = {p.name for p in RECIPES}
    assert {"doc004_llava15_7b.yaml", "doc004_internvl_8b.yaml", "tiny_llava.yaml"} <= names
    for path in RECIPES:
        cfg = load_train_recipe(path)
        assert cfg.method in ("lora", "qlora", "full")
        if cfg.deepspeed is not None:  # resolved next to the recipe
            assert Path(cfg.deepspeed).is_file() and Path(cfg.deepspeed).parent == ROOT / "train"
    for name, family in (("doc004_llava15_7b.yaml", "llava"), ("doc004_internvl_8b.yaml", "internvl")):
        cfg = load_train_recipe(ROOT / "train" / name)  # document 004: LoRA, 30 epochs, lr 1e-4, DeepSpeed
        assert (cfg.family, cfg.method, cfg.epochs, cfg.learning_rate) == (family, "lora", 30, 1e-4)
        assert cfg.deepspeed is not None


def test_deepspeed_configs() -> None:
    stages = {}
    for name in ("ds_zero2.json", "ds_zero3.json", "ds_zero3_offload.json"):
        cfg = json.loads((ROOT / "train" / name).read_text())
        zero = cfg["zero_optimization"]
        stages[name] = (zero["stage"], "offload_param" in zero)
        assert (
            cfg["train_micro_batch_size_per_gpu"] == "auto" and cfg["gradient_accumulation_steps"] == "auto"
        )
        if zero["stage"] == 3:  # saving gathers the sharded weights
            assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert stages == {
        "ds_zero2.json": (2, False),
        "ds_zero3.json": (3, False),
        "ds_zero3_offload.json": (3, True),
    }


def test_recipe_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  model: m\n  export_dir: e\n  output_dir: o\n  lora_rank: 8\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: lora_rank: Extra inputs are not permitted"):
        load_train_recipe(path)
    path.write_text("train:\n  model: m\n  export_dir: e\n  output_dir: o\n  best_metric: f1\n")
    with pytest.raises(ConfigError, match=r"best_metric: .*choose from accuracy"):
        load_train_recipe(path)
    path.write_text(
        "train:\n  model: m\n  export_dir: e\n  output_dir: o\n  eval_steps: 10\n  save_steps: 15\n"
    )
    with pytest.raises(ConfigError, match="multiple of eval_steps"):
        load_train_recipe(path)
    path.write_text("qa_build: {}\n")
    with pytest.raises(ConfigError, match="needs a 'train:' mapping"):
        load_train_recipe(path)
    with pytest.raises(ConfigError, match="cannot read recipe"):
        load_train_recipe(tmp_path / "missing.yaml")
    path.write_text("train:\n  model: m\n  export_dir: e\n  output_dir: o\n  deepspeed: nowhere.json\n")
    with pytest.raises(ConfigError, match="no such DeepSpeed config file"):
        load_train_recipe(path)


def test_overrides_are_yaml_typed(tmp_path: Path) -> None:
    values = parse_overrides(
        ["max_steps=5", "lora_targets=[q_proj, v_proj]", "budgets={test: {max_pixels: 4096}}"]
    )
    assert values == {
        "max_steps": 5,
        "lora_targets": ["q_proj", "v_proj"],
        "budgets": {"test": {"max_pixels": 4096}},
    }
    cfg = load_train_recipe(ROOT / "train" / "tiny_llava.yaml", **values, output_dir=str(tmp_path))
    assert cfg.max_steps == 5 and cfg.budgets["test"].max_pixels == 4096 and cfg.output_dir == tmp_path
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["max_steps"])
