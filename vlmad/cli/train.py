"""``vlmad train``: fine-tune a VLM on a QA export (LoRA / QLoRA / full, DeepSpeed), check data, merge
adapters.

Multi-GPU: ``deepspeed --no_local_rank --num_gpus N $(which vlmad) train run --recipe R`` or
``accelerate launch --num_processes N -m vlmad train run --recipe R``; every rank runs the same command and
rank 0 prints and writes the files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import typer

from vlmad.cli.detect import _progress

app = typer.Typer(
    help="Fine-tune VLMs on QA exports: LoRA/QLoRA/full, DeepSpeed, validation, adapter merging.",
    no_args_is_help=True,
)

RECIPE_HELP = "A training recipe (train/tiny_llava.yaml, train/doc004_llava15_7b.yaml, ...)."
SET_HELP = "Override a recipe field: key=value (YAML value), repeatable, e.g. --set max_steps=100."


def _config(
    recipe: Path,
    sets: list[str] | None,
    output_dir: Path | None = None,
    model: str | None = None,
    export_dir: Path | None = None,
    allow_drop: bool | None = None,
    deepspeed: str | None = None,
    max_steps: int | None = None,
) -> Any:
    from vlmad.train.config import load_train_recipe, parse_overrides

    overrides = parse_overrides(sets)
    named = {
        "output_dir": output_dir,
        "model": model,
        "export_dir": export_dir,
        "allow_drop": allow_drop,
        "deepspeed": deepspeed,
        "max_steps": max_steps,
    }
    overrides.update({k: v for k, v in named.items() if v is not None})
    return load_train_recipe(recipe, **overrides)


def _rank0() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def _fmt(logs: dict[str, float]) -> str | None:
    """One line per logged training or validation step."""
    step = int(logs.get("step", 0))
    if any(k.startswith("eval_") for k in logs):
        keys = ["accuracy", "accuracy_good", "accuracy_logical", "accuracy_structural", "auroc", "loss"]
        parts = []
        for k in keys:
            v = logs.get(f"eval_{k}")
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                parts.append(f"{k} {v:.3f}")
        return f"step {step} validation: " + ", ".join(parts)
    if "loss" in logs:
        lr = logs.get("learning_rate")
        return f"step {step}: loss {logs['loss']:.4f}" + (f", lr {lr:.2e}" if lr is not None else "")
    return None


@app.command()
def run(
    recipe: Path = typer.Option(..., "--recipe", "-r", help=RECIPE_HELP),
    sets: list[str] = typer.Option(None, "--set", "-s", help=SET_HELP),
    output_dir: Path | None = typer.Option(None, "--out", "-o", help="Output folder (recipe: output_dir)."),
    model: str | None = typer.Option(None, help="Model: a local folder or a Hub id (recipe: model)."),
    export_dir: Path | None = typer.Option(None, "--export", help="QA export folder (recipe: export_dir)."),
    allow_drop: bool | None = typer.Option(
        None, "--allow-drop/--no-allow-drop", help="Train without the samples the pre-flight check lists."
    ),
    deepspeed: str | None = typer.Option(None, help="DeepSpeed config (train/ds_zero3.json, ...)."),
    max_steps: int | None = typer.Option(None, help="Stop after this many optimizer steps."),
    local_rank: int = typer.Option(-1, "--local_rank", "--local-rank", hidden=True),
) -> None:
    """Train from a recipe: pre-flight check, training with validation, adapter in OUT/adapter; resumes."""
    from rich.console import Console

    from vlmad.train.trainer import train

    config = _config(recipe, sets, output_dir, model, export_dir, allow_drop, deepspeed, max_steps)
    console = Console()
    main = _rank0()

    def log(logs: dict[str, float]) -> None:
        line = _fmt(logs)
        if line and main:
            console.print(line, highlight=False)

    with _progress() as update:
        result = train(config, progress=update if main else None, on_log=log)
    if main:
        typer.echo(result.preflight.summary())
        for w in result.warnings:
            typer.echo(f"warning: {w}", err=True)
        typer.echo(result.summary())


@app.command()
def preflight(
    recipe: Path = typer.Option(..., "--recipe", "-r", help=RECIPE_HELP),
    sets: list[str] = typer.Option(None, "--set", "-s", help=SET_HELP),
    model: str | None = typer.Option(None, help="Model: a local folder or a Hub id (recipe: model)."),
    export_dir: Path | None = typer.Option(None, "--export", help="QA export folder (recipe: export_dir)."),
    show: int = typer.Option(20, help="Problems to list (all are counted)."),
) -> None:
    """Check every training and validation sample as training would (processor only, no weights load).

    Exit code 1 when a sample has a problem.
    """
    from vlmad.train.trainer import run_preflight

    config = _config(recipe, sets, model=model, export_dir=export_dir)
    with _progress() as update:
        check = run_preflight(config, progress=update)
    bad = False
    for report in (check.report, check.eval_report):
        if report is None:
            continue
        typer.echo(report.summary())
        for p in report.problems[:show]:
            typer.echo(f"  - [{p.kind}] {p.message}")
        if len(report.problems) > show:
            typer.echo(f"  ... and {len(report.problems) - show} more")
        bad = bad or bool(report.problems)
    if bad:
        typer.echo(
            "fix the export or the settings, or train with --allow-drop to leave these samples out", err=True
        )
        raise typer.Exit(1)


@app.command()
def merge(
    base: str = typer.Option(..., help="The base model the adapter was trained on (folder or Hub id)."),
    adapter: Path = typer.Option(..., help="The adapter folder (OUT/adapter of a training run)."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the merged model."),
    dtype: str | None = typer.Option(None, help="float32, bfloat16, float16 (default: the base's)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
) -> None:
    """Merge a LoRA adapter into its base model: a checkpoint that loads without peft."""
    from vlmad.train.merge import merge_adapter

    path = merge_adapter(base, adapter, out, dtype=dtype, overwrite=overwrite)
    typer.echo(f"merged {adapter} into {base} -> {path}")


@app.command("tiny-model")
def tiny_model(
    family: str = typer.Argument(..., help="llava, internvl or qwen2vl."),
    directory: Path = typer.Argument(..., help="Folder to write the model to."),
    seed: int = typer.Option(0, help="Initialisation seed."),
) -> None:
    """Write a tiny RANDOM model of a family's real architecture, for offline runs of the training recipes."""
    from vlmad.vlm.tiny import build

    path = build(family, directory, seed=seed)
    typer.echo(f"{path}: a tiny RANDOM {family} model; training it shows the pipeline runs, nothing more")
