"""``vlmad data``: inspect, validate and generate datasets."""

from __future__ import annotations

import time
from pathlib import Path

import typer

app = typer.Typer(help="Inspect, validate and generate datasets.", no_args_is_help=True)

LAYOUT_HELP = "Dataset layout: auto, mvtec_ad, mvtec_loco, visa, folder or manifest."


@app.command()
def info(
    path: Path = typer.Argument(..., help="Dataset folder or manifest (.jsonl / .parquet)."),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
    save: Path | None = typer.Option(None, help="Also write the manifest to this .jsonl or .parquet file."),
) -> None:
    """Print counts per category, split, label and defect type."""
    from rich.console import Console

    from vlmad.data import read_dataset
    from vlmad.report.tables import counts_tables

    manifest = read_dataset(path, layout=layout)
    console = Console()
    console.print(
        f"[bold]{manifest.info.name}[/] ({manifest.info.layout}): {len(manifest)} images, "
        f"{len(manifest.categories)} categories, root {manifest.info.root}",
        soft_wrap=True,
    )
    for table in counts_tables(manifest):
        console.print(table)
    if save is not None:
        manifest.save(save)
        console.print(f"manifest written to {save}", soft_wrap=True)


@app.command()
def validate(
    path: Path = typer.Argument(..., help="Dataset folder or manifest (.jsonl / .parquet)."),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
    workers: int = typer.Option(4, min=1, help="Threads decoding images."),
) -> None:
    """Check every image and mask; list every problem found, then exit 1 if any is an error."""
    from rich.console import Console
    from rich.progress import Progress

    from vlmad.data import read_dataset, validate_manifest
    from vlmad.data.images import Problem

    console = Console(stderr=False)
    problems: list[Problem] = []
    manifest = read_dataset(path, layout=layout, problems=problems)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("checking images and masks", total=len(manifest))
        problems += validate_manifest(
            manifest, workers=workers, progress=lambda n: bar.update(task, completed=n)
        )
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    for p in problems:
        tag = "[red]error[/]" if p.severity == "error" else "[yellow]warning[/]"
        console.print(f"{tag} {p.path}: {p.message}", highlight=False, markup=True, soft_wrap=True)
    n_masks = sum(len(s.mask_paths) for s in manifest)
    console.print(
        f"checked {len(manifest)} images and {n_masks} masks: {len(errors)} errors, {len(warnings)} warnings"
    )
    if errors:
        raise typer.Exit(1)


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (MVTec LOCO AD layout)."),
    recipe: Path | None = typer.Option(
        None, help="YAML recipe (see data_builders/); options below override it."
    ),
    categories: str | None = typer.Option(None, help="Comma-separated categories (default: all five)."),
    size: int | None = typer.Option(None, help="Image side in pixels (default 256)."),
    seed: int | None = typer.Option(None, help="Random seed (default 0)."),
    train_good: int | None = typer.Option(None, help="Normal training images per category."),
    validation_good: int | None = typer.Option(None, help="Normal validation images per category."),
    test_good: int | None = typer.Option(None, help="Normal test images per category."),
    test_logical: int | None = typer.Option(None, help="Logical-anomaly test images per category."),
    test_structural: int | None = typer.Option(None, help="Structural-anomaly test images per category."),
    train_shifts: str | None = typer.Option(
        None, help="Imaging shifts for train/validation, e.g. 'brightness:0.5,clutter:0.3'."
    ),
    test_shifts: str | None = typer.Option(None, help="Imaging shifts for test images."),
    workers: int = typer.Option(2, min=1, help="Worker processes."),
    overwrite: bool = typer.Option(False, help="Replace a dataset generated with other settings."),
) -> None:
    """Generate a LOCO-style dataset with masks, defects_config.json and reference descriptions."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vlmad.data.synth.generate import SynthConfig, generate, load_config, make_config

    counts = {
        k: v
        for k, v in dict(
            train_good=train_good,
            validation_good=validation_good,
            test_good=test_good,
            test_logical=test_logical,
            test_structural=test_structural,
        ).items()
        if v is not None
    }
    overrides = dict(
        categories=categories.split(",") if categories else None,
        size=size,
        seed=seed,
        train_shifts=train_shifts,
        test_shifts=test_shifts,
    )
    config: SynthConfig
    if recipe is not None:
        config = load_config(recipe, **overrides)
        if counts:
            config = make_config(
                **{**config.model_dump(), "counts": {**config.counts.model_dump(), **counts}}
            )
    else:
        config = make_config(**{k: v for k, v in overrides.items() if v is not None}, counts=counts)
    console = Console()
    start = time.perf_counter()
    bar = Progress(
        TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    )
    task = bar.add_task("synth", total=None)
    first = [-1]

    def progress(done: int, total: int) -> None:
        if first[0] < 0:  # the bar appears once generation really starts (not before a config error)
            first[0] = done
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        generate(config, out, workers=workers, overwrite=overwrite, progress=progress)
    finally:
        bar.stop()
    elapsed = time.perf_counter() - start
    total = bar.tasks[0].total or 0
    made = int(total) - max(0, first[0])
    rate = made / elapsed if elapsed > 0 else 0.0
    console.print(
        f"{made} images generated in {elapsed:.1f} s ({rate:.1f} images/s); dataset in {out}", soft_wrap=True
    )
