"""Merging an adapter into its base, and the ``vlmad train`` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from vlmad.cli.train import app
from vlmad.train import merge_adapter, train
from vlmad.train.data import Collator, Encoder, read_export
from vlmad.train.modeling import load_processor
from vlmad.vlm import VlmError, load_vlm

from .conftest import config


@pytest.fixture(scope="module")
def llava_adapter(
    tiny_models: dict[str, Path], qa_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("merge-run")
    return train(config(tiny_models["llava"], qa_export, out, max_steps=2)).adapter_dir


def test_merged_model_gives_the_adapters_logits(
    tiny_models: dict[str, Path], qa_export: Path, llava_adapter: Path, tmp_path: Path
) -> None:
    merged_dir = merge_adapter(tiny_models["llava"], llava_adapter, tmp_path / "merged")
    merged = load_vlm(merged_dir, device="cpu")
    tuned = load_vlm(tiny_models["llava"], device="cpu", adapter=llava_adapter)
    assert merged.info.random and type(merged.model).__name__ == "LlavaForConditionalGeneration"
    batch = Collator(0)(
        [Encoder(load_processor(str(merged_dir))).encode(read_export(qa_export, "train")[0]).features]
    )
    batch.pop("labels")
    with torch.no_grad():
        a, b = merged.model(**batch).logits, tuned.model(**batch).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert json.loads((merged_dir / "vlmad_merge.json").read_text())["family"] == "llava"


def test_adapter_for_another_base_is_refused(
    tiny_models: dict[str, Path], llava_adapter: Path, tmp_path: Path
) -> None:
    with pytest.raises(VlmError, match="whose architecture differs"):
        merge_adapter(tiny_models["qwen2vl"], llava_adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_cli_preflight_run_and_merge(
    tiny_models: dict[str, Path], qa_export: Path, llava_adapter: Path, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "train": {
                    "model": str(tiny_models["llava"]),
                    "export_dir": str(qa_export),
                    "output_dir": str(tmp_path / "run"),
                    "eval_split": None,
                    "report_to": [],
                    "lr_scheduler": "constant",
                    "logging_steps": 1,
                    "max_length": 1024,
                    "device": "cpu",
                }
            }
        )
    )
    runner = CliRunner()
    res = runner.invoke(app, ["preflight", "--recipe", str(recipe)])
    assert res.exit_code == 0, res.output
    assert "train: 12 records, 12 kept, 0 with problems" in res.output and "tokens per sample" in res.output
    res = runner.invoke(app, ["preflight", "--recipe", str(recipe), "--set", "max_length=20"])
    assert res.exit_code == 1 and "[truncated_into_images]" in res.output

    res = runner.invoke(app, ["run", "--recipe", str(recipe), "--max-steps", "1", "--set", "lora_r=2"])
    assert res.exit_code == 0, res.output
    assert "step 1: loss" in res.output and "1 steps, last loss" in res.output
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()

    res = runner.invoke(
        app,
        [
            "merge",
            "--base",
            str(tiny_models["llava"]),
            "--adapter",
            str(llava_adapter),
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "config.json").is_file()
