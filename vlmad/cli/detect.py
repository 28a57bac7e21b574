"""``vlmad detect``: fit patch detectors on normal images, predict anomaly maps, evaluate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from vlmad.cli.data import LAYOUT_HELP

if TYPE_CHECKING:
    from vlmad.records import Manifest

app = typer.Typer(help="Patch detectors (PatchCore, PaDiM, SPADE, ridge, EfficientAD).", no_args_is_help=True)

OPTION_HELP = "Method option as key=value (repeatable), e.g. -O coreset_ratio=0.05 -O layers=2,3."
CATEGORY_HELP = "Category to use, or 'all'."


def _value(text: str) -> Any:
    """A command-line option value: JSON when it parses (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        low = text.strip().lower()
        if low in ("none", "null"):
            return None
        return text


def parse_options(pairs: list[str] | None, **common: Any) -> dict[str, Any]:
    """``["k=v", ...]`` plus the common flags that were given (not None) -> constructor options."""
    from vlmad.errors import ConfigError

    options = {k: v for k, v in common.items() if v is not None}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"option {pair!r}: expected key=value")
        key, _, text = pair.partition("=")
        options[key.strip().replace("-", "_")] = _value(text.strip())
    return options


def _categories(manifest: Manifest, category: str) -> list[str]:
    from vlmad.errors import ConfigError

    if category == "all":
        return list(manifest.categories)
    if category not in manifest.categories:
        raise ConfigError(
            f"category {category!r} is not in the dataset; it has: {', '.join(manifest.categories)}"
        )
    return [category]


def _warn(warnings: list[str]) -> None:
    """Warnings (a random backbone above all) in bold on stderr: they must not scroll by unnoticed."""
    from rich.console import Console

    console = Console(stderr=True)
    for w in warnings:
        console.print(f"[bold red]WARNING[/] {w}", soft_wrap=True, highlight=False)


@contextmanager
def _progress() -> Iterator[Any]:
    """A rich progress bar; yields ``update(phase, done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


def _common(
    backbone: str | None, layers: str | None, weights: str | None, image_size: int | None, device: str | None
) -> dict[str, Any]:
    from vlmad.detectors.features import parse_layers

    return {
        "backbone": backbone,
        "layers": list(parse_layers(layers)) if layers is not None else None,
        "weights": weights,
        "image_size": image_size,
        "device": device,
    }


BACKBONE_HELP = "Backbone (timm name or torchvision/<name>); default: the method's (wide_resnet50_2)."
WEIGHTS_HELP = "Backbone weights: auto, pretrained, random, or a .safetensors/.pth file."


@app.command()
def fit(
    dataset: Path = typer.Option(..., help="Dataset folder or manifest."),
    method: str = typer.Option(..., help="Detector name (see `vlmad detect methods`)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Model folder (with --category all: one per category)."
    ),
    category: str = typer.Option("all", help=CATEGORY_HELP),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
    option: list[str] = typer.Option(None, "--option", "-O", help=OPTION_HELP),
    backbone: str | None = typer.Option(None, help=BACKBONE_HELP),
    layers: str | None = typer.Option(None, help="Feature layers, e.g. 2,3."),
    weights: str | None = typer.Option(None, help=WEIGHTS_HELP),
    image_size: int | None = typer.Option(None, help="Square input size of the network."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1 (default: a GPU when present)."),
) -> None:
    """Fit a detector on the normal training images of one or all categories and save it."""
    from vlmad.data import read_dataset
    from vlmad.detectors.run import fit_category, save_fitted

    manifest = read_dataset(dataset, layout=layout)
    cats = _categories(manifest, category)
    options = parse_options(option, **_common(backbone, layers, weights, image_size, device))
    warned: list[str] = []
    for cat in cats:
        with _progress() as update:
            det = fit_category(method, manifest, cat, options, lambda d, t, c=cat: update(f"fit {c}", d, t))
        target = out if category != "all" else out / cat
        save_fitted(det, target, manifest, cat)
        new = [w for w in det.warnings if w not in warned]
        _warn(new)
        warned += new
        typer.echo(f"{det.label} fitted on {cat} -> {target}")


@app.command()
def predict(
    model: Path = typer.Option(..., help="A saved detector, or a folder of them (one per category)."),
    dataset: Path = typer.Option(..., help="Dataset folder or manifest."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: predictions.jsonl and maps/."),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
    split: str = typer.Option("validation,test", help="Splits to predict, comma-separated."),
    run_id: str | None = typer.Option(None, help="Run name in the records (default: the method)."),
    device: str | None = typer.Option(None, help="cpu, cuda (default: a GPU when present)."),
) -> None:
    """Predict scores and anomaly maps with saved detectors; resumes an interrupted run."""
    from vlmad.data import read_dataset
    from vlmad.data.predictions import PredictionWriter
    from vlmad.detectors.run import load_fitted, model_dirs, predict_samples
    from vlmad.errors import ConfigError

    manifest = read_dataset(dataset, layout=layout)
    splits = [s.strip() for s in split.split(",") if s.strip()]
    models = model_dirs(model)
    if "" in models:  # one model without fit.json: it applies to a dataset of one category only
        if len(manifest.categories) != 1:
            raise ConfigError(f"{model}: no fit.json names the model's category; the dataset has several")
        models = {manifest.categories[0]: models[""]}
    unknown = [c for c in models if c not in manifest.categories]
    if unknown:
        raise ConfigError(f"{model}: models for {', '.join(unknown)}, which the dataset does not have")
    total = sum(1 for s in manifest if s.category in models and s.split in splits)
    n_done = 0
    warned: list[str] = []
    writer_run = run_id
    with _progress() as update:
        for cat, mdir in models.items():
            det, _ = load_fitted(mdir, device=device)
            new = [w for w in det.warnings if w not in warned]
            _warn(new)
            warned += new
            writer_run = writer_run or det.method
            samples = [s for s in manifest if s.category == cat and s.split in splits]
            with PredictionWriter(out / "predictions.jsonl", writer_run) as writer:
                base = sum(1 for s in samples if (s.id, None) in writer.done) + n_done
                predict_samples(
                    det, samples, out, writer, progress=lambda n, b=base: update("predict", b + n, total)
                )
            n_done += len(samples)
    typer.echo(f"{total} images predicted -> {out / 'predictions.jsonl'}")


@app.command()
def run(
    dataset: Path = typer.Option(..., help="Dataset folder or manifest."),
    method: str = typer.Option(..., help="Detector name (see `vlmad detect methods`)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Run folder: models/, predictions.jsonl, maps/, eval/."
    ),
    category: str = typer.Option("all", help=CATEGORY_HELP),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
    option: list[str] = typer.Option(None, "--option", "-O", help=OPTION_HELP),
    backbone: str | None = typer.Option(None, help=BACKBONE_HELP),
    layers: str | None = typer.Option(None, help="Feature layers, e.g. 2,3."),
    weights: str | None = typer.Option(None, help=WEIGHTS_HELP),
    image_size: int | None = typer.Option(None, help="Square input size of the network."),
    device: str | None = typer.Option(None, help="cpu, cuda (default: a GPU when present)."),
    run_id: str | None = typer.Option(None, help="Run name in records and tables (default: the method)."),
    threshold: str = typer.Option("target-fpr", help="Threshold calibration (see `vlmad eval predictions`)."),
    fpr: float = typer.Option(0.05, help="Target FPR on the validation normals for target-fpr."),
    object_mask: str = typer.Option(
        "none", help="Object mask from keypoint matching (document 002): none, akaze, orb or brisk."
    ),
    mask_factor: float = typer.Option(0.8, help="Scores outside the object mask are multiplied by this."),
) -> None:
    """Fit per category, predict validation and test images, evaluate and write a report; resumes."""
    from vlmad.data import read_dataset
    from vlmad.detectors.run import run_detector

    manifest = read_dataset(dataset, layout=layout)
    cats = _categories(manifest, category)
    options = parse_options(option, **_common(backbone, layers, weights, image_size, device))
    with _progress() as update:
        result = run_detector(
            method,
            manifest,
            out,
            run_id=run_id,
            options=options,
            categories=cats,
            progress=update,
            object_mask=None if object_mask == "none" else {"method": object_mask, "factor": mask_factor},
        )
    evaluate_run(manifest, cats, category, result.predictions, result.warnings, out, threshold, fpr)


def evaluate_run(
    manifest: Manifest,
    cats: list[str],
    category: str,
    predictions: Path,
    warnings: list[str],
    out: Path,
    threshold: str,
    fpr: float,
) -> None:
    """The end of a ``run`` command: calibrate thresholds, evaluate into ``out/eval`` and print the report,
    with the run's warnings before and after it (they must not scroll by)."""
    from vlmad.cli.eval import evaluate_and_report
    from vlmad.data.predictions import read_predictions
    from vlmad.metrics.evaluate import calibrate_thresholds

    _warn(warnings)
    preds = read_predictions(predictions)
    sub = manifest.filter(category=cats) if category != "all" else manifest
    thresholds = calibrate_thresholds(sub, preds, threshold, fpr=fpr) if threshold != "none" else {}
    evaluate_and_report(sub, preds, out / "eval", thresholds=thresholds)
    _warn(warnings)


@app.command()
def methods() -> None:
    """List the detector names and their options."""
    from vlmad.detectors.base import detector_class, names

    for name in names():
        cls = detector_class(name)
        typer.echo(f"{name:16s} {cls.label}: {', '.join(cls.param_names())}")
