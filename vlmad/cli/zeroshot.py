"""``vlmad zeroshot``: CLIP zero-shot baselines (WinCLIP, AnomalyCLIP, MuSc) over a dataset, evaluated."""

from __future__ import annotations

from pathlib import Path

import typer

from vlmad.cli.data import LAYOUT_HELP
from vlmad.cli.detect import CATEGORY_HELP, OPTION_HELP, _categories, _progress, evaluate_run, parse_options

app = typer.Typer(help="CLIP zero-shot baselines (WinCLIP, AnomalyCLIP, MuSc).", no_args_is_help=True)

CLIP_HELP = (
    "CLIP model: a Hub id or a local directory of a transformers CLIPModel (default: "
    "openai/clip-vit-base-patch16). `vlmad zeroshot tiny-clip DIR` writes a tiny random one to try offline."
)


@app.command()
def run(
    dataset: Path = typer.Option(..., help="Dataset folder or manifest."),
    method: str = typer.Option(..., help="winclip, anomalyclip or musc (see `vlmad zeroshot methods`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: predictions.jsonl, maps/, eval/."),
    clip: str = typer.Option("openai/clip-vit-base-patch16", help=CLIP_HELP),
    category: str = typer.Option("all", help=CATEGORY_HELP),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
    option: list[str] = typer.Option(None, "--option", "-O", help=OPTION_HELP),
    k_shot: int = typer.Option(0, help="WinCLIP+: normal training images per category as references."),
    train_dataset: Path | None = typer.Option(
        None, help="AnomalyCLIP: auxiliary annotated dataset to train the prompts on (default: two folds)."
    ),
    device: str | None = typer.Option(None, help="cpu, cuda (default: a GPU when present)."),
    trust_remote_code: bool = typer.Option(
        False, help="Allow the checkpoint's own code (only if you trust it)."
    ),
    run_id: str | None = typer.Option(None, help="Run name in records and tables (default: the method)."),
    threshold: str = typer.Option("target-fpr", help="Threshold calibration (see `vlmad eval predictions`)."),
    fpr: float = typer.Option(0.05, help="Target FPR on the validation normals for target-fpr."),
) -> None:
    """Score validation and test images of one or all categories, evaluate and write a report; resumes."""
    from vlmad.data import read_dataset
    from vlmad.zeroshot.base import method_class
    from vlmad.zeroshot.clip import Clip
    from vlmad.zeroshot.run import run_zeroshot

    method_class(method)  # an unknown name fails before any model loads
    manifest = read_dataset(dataset, layout=layout)
    cats = _categories(manifest, category)
    options = parse_options(option)
    aux = read_dataset(train_dataset, layout=layout) if train_dataset is not None else None
    model = Clip.load(clip, device=device, trust_remote_code=trust_remote_code)
    with _progress() as update:
        result = run_zeroshot(
            method,
            manifest,
            out,
            model,
            run_id=run_id,
            options=options,
            categories=cats,
            k_shot=k_shot,
            train_manifest=aux,
            progress=update,
        )
    evaluate_run(manifest, cats, category, result.predictions, result.warnings, out, threshold, fpr)


@app.command()
def methods() -> None:
    """List the zero-shot method names."""
    from vlmad.zeroshot.base import method_class, names

    for name in names():
        cls = method_class(name)
        trained = " (trains prompts on auxiliary annotated data)" if cls.requires_fit else ""
        typer.echo(f"{name:12s} {cls.label}{trained}")


@app.command("tiny-clip")
def tiny_clip(
    directory: Path = typer.Argument(..., help="Folder to write the model to."),
    seed: int = typer.Option(0, help="Initialisation seed."),
) -> None:
    """Write a tiny randomly initialised CLIP (the real architecture) for offline tries and tests."""
    from vlmad.zeroshot.clip import make_tiny_clip

    path = make_tiny_clip(directory, seed=seed)
    typer.echo(f"{path}: a tiny RANDOM CLIP; its scores show that methods run, not how well they detect")
