"""``vlmad eval``: metric tables, reports and A/B statistics from predictions or anomaly maps."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from vlmad.cli.data import LAYOUT_HELP

if TYPE_CHECKING:
    from vlmad.metrics.evaluate import Evaluation
    from vlmad.records import Manifest, Prediction

app = typer.Typer(help="Evaluate predictions and anomaly maps; compare runs.", no_args_is_help=True)

THRESHOLD_HELP = (
    "Threshold for accuracy/precision/recall: normal-quantile or target-fpr (validation normals), "
    "validation-f1, oracle-f1 (chosen on the test set, labelled as an oracle), fixed, or none."
)
# the columns of the printed summary (every metric is in metrics.csv / metrics.json and the report)
MAIN_METRICS = {
    "image_auroc": "img AUROC",
    "image_ap": "img AP",
    "image_f1_max": "img F1†",
    "pixel_auroc": "px AUROC",
    "pixel_ap": "px AP",
    "au_spro_0.05": "sPRO@.05",
    "verdict_accuracy": "verdict acc",
    "verdict_balanced_accuracy": "verdict bal acc",
    "thr_accuracy": "thr acc",
    "thr_f1": "thr F1",
}


def _print_summary(evaluation: Evaluation, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 150)
    for note in evaluation.notes:
        console.print(f"[yellow]note[/] {note}", soft_wrap=True, highlight=False)
    for cat, thr in evaluation.thresholds.items():
        tag = " [red]ORACLE[/]" if thr.oracle else ""
        console.print(
            f"threshold {cat}: {thr.value:.6g} ({thr.method} on {thr.source}){tag}", highlight=False
        )
    labels = {m: MAIN_METRICS.get(m, "AUPRO@" + m.rsplit("_", 1)[-1]) for m in evaluation.metrics}
    metrics = [m for m in evaluation.metrics if m in MAIN_METRICS or m.startswith("pixel_aupro")]
    for subset in evaluation.subsets:
        table = Table(title=f"{evaluation.method}: {subset} (%)", title_justify="left")
        table.add_column("category")
        for m in metrics:
            table.add_column(labels[m], justify="right")
        for cat in evaluation.categories:
            cells = []
            for m in metrics:
                try:
                    v = evaluation.value(m, cat, subset)
                    cells.append("–" if v != v else f"{100 * v:.2f}")
                except KeyError:
                    cells.append("")
            if any(cells):
                table.add_row(cat, *cells, style="bold" if cat == "mean" else None)
        console.print(table)
    console.print("† threshold chosen on the test set (oracle), as the F1-max convention is", highlight=False)
    console.print(f"tables and report in {out}", soft_wrap=True)


def evaluate_and_report(manifest: Manifest, preds: list[Prediction], out: Path, **options: Any) -> None:
    """Evaluate (progress bar over the maps), write tables and report.html to ``out``, print a summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from vlmad.metrics.evaluate import evaluate
    from vlmad.report.evaluation import add_evaluation_section, save_tables
    from vlmad.report.html import HtmlReport

    with Progress(TextColumn("reading maps"), BarColumn(), MofNCompleteColumn(), transient=True) as bar:
        task = bar.add_task("maps", total=None)
        evaluation = evaluate(
            manifest, preds, progress=lambda d, t: bar.update(task, completed=d, total=t), **options
        )
    out.mkdir(parents=True, exist_ok=True)
    evaluation.save(out)
    save_tables([evaluation], out)
    report = HtmlReport(f"vlmad evaluation: {evaluation.method}", out)
    add_evaluation_section(report, [evaluation], manifest)
    report.save("report.html")
    _print_summary(evaluation, out)


@app.command()
def maps(
    dataset: Path = typer.Option(..., help="Dataset folder (with ground truth) or manifest."),
    maps_dir: Path = typer.Option(
        ..., "--maps", help="Anomaly maps in the dataset's layout (.tiff/.npy/.png)."
    ),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
    scores: Path | None = typer.Option(
        None, help="Predictions JSONL with image scores (default: map maximum)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: <maps>-eval)."),
    method: str | None = typer.Option(None, help="Method name in the tables (default: maps folder name)."),
    fpr_limit: float = typer.Option(0.3, help="FPR limit of AUPRO."),
    allow_missing: bool = typer.Option(False, help="Evaluate the images that have maps; report the rest."),
) -> None:
    """Evaluate anomaly maps the way the MVTec AD and MVTec LOCO evaluators do, and write a report."""
    from vlmad.data import read_dataset
    from vlmad.data.maps import find_map
    from vlmad.data.predictions import read_predictions
    from vlmad.errors import DatasetError
    from vlmad.records import Prediction

    if not maps_dir.is_dir():
        raise DatasetError(maps_dir, "maps folder not found")
    manifest = read_dataset(dataset, layout=layout)
    name = method or maps_dir.resolve().name
    score_of: dict[str, float] = {}
    if scores is not None:
        score_of = {p.sample_id: p.score for p in read_predictions(scores) if p.score is not None}
    preds, missing = [], []
    for s in manifest:
        if s.split != "test":
            continue
        path = find_map(maps_dir, s.image_path, manifest.info.root)
        if path is None:
            missing.append(s)
            continue
        preds.append(Prediction(sample_id=s.id, run_id=name, score=score_of.get(s.id), map_path=path))
    if not preds:
        raise DatasetError(
            maps_dir, "no anomaly map found for any test image (expected <category>/test/<dir>/<name>.tiff)"
        )
    if missing and not allow_missing:
        rel = missing[0].image_path.relative_to(manifest.info.root).with_suffix("")
        raise DatasetError(
            maps_dir,
            f"no map for {len(missing)} of {len(missing) + len(preds)} test images "
            f"(first: {rel}.tiff|.npy|.png); pass --allow-missing to evaluate the rest",
        )
    out = out or maps_dir.with_name(maps_dir.name + "-eval")
    evaluate_and_report(manifest, preds, out, method=name, fpr_limit=fpr_limit, allow_missing=allow_missing)


@app.command()
def predictions(
    predictions_file: Path = typer.Argument(..., help="Predictions JSONL (one run)."),
    dataset: Path = typer.Option(..., help="Dataset folder or manifest the predictions refer to."),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
    threshold: str = typer.Option("target-fpr", help=THRESHOLD_HELP),
    q: float = typer.Option(0.99, help="Quantile for normal-quantile."),
    fpr: float = typer.Option(0.05, help="Target false-positive rate for target-fpr."),
    value: float | None = typer.Option(None, help="Threshold value for fixed."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: next to the file)."),
    no_maps: bool = typer.Option(False, help="Ignore anomaly maps (image-level metrics only)."),
    allow_missing: bool = typer.Option(False, help="Evaluate the images that have predictions."),
) -> None:
    """Evaluate one run's predictions (scores, verdicts, maps) on the test split and write a report."""
    from vlmad.data import read_dataset
    from vlmad.data.predictions import read_predictions
    from vlmad.metrics.evaluate import calibrate_thresholds

    manifest = read_dataset(dataset, layout=layout)
    preds = read_predictions(predictions_file)
    thresholds = {}
    if threshold != "none" and any(p.score is not None for p in preds):
        thresholds = calibrate_thresholds(manifest, preds, threshold, q=q, fpr=fpr, value=value)
    out = out or predictions_file.with_name(predictions_file.stem + "-eval")
    evaluate_and_report(
        manifest, preds, out, thresholds=thresholds, use_maps=not no_maps, allow_missing=allow_missing
    )


@app.command()
def compare(
    base: Path = typer.Argument(..., help="Baseline predictions JSONL."),
    others: list[Path] = typer.Argument(
        ..., help="Predictions JSONL of the runs to compare with the baseline."
    ),
    dataset: Path = typer.Option(..., help="Dataset folder or manifest."),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
    metric: str | None = typer.Option(
        None, help="accuracy (verdicts) or image_auroc (scores); default: from data."
    ),
    subset: str = typer.Option("all", help="all, logical or structural (each with the good images)."),
    n_boot: int = typer.Option(10000, min=100, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Also write the comparisons as JSON here."),
) -> None:
    """Paired A/B statistics: McNemar, bootstrap CI of the difference, Holm correction across runs."""
    import json

    from rich.console import Console
    from rich.table import Table

    from vlmad.data import read_dataset
    from vlmad.data.predictions import read_predictions
    from vlmad.errors import ConfigError
    from vlmad.metrics.compare import compare_runs

    manifest = read_dataset(dataset, layout=layout)
    runs: dict[str, list] = {}
    for path in [base, *others]:
        preds = read_predictions(path)
        names = {p.run_id for p in preds}
        if len(names) != 1:
            raise ConfigError(f"{path}: expected one run per file, found {sorted(names) or 'none'}")
        name = names.pop()
        if name in runs:
            raise ConfigError(f"{path}: run {name!r} given twice")
        runs[name] = preds
    base_name = next(iter(runs))
    results = compare_runs(manifest, runs, base_name, metric=metric, subset=subset, n_boot=n_boot, seed=seed)
    table = Table(title=f"against {base_name} ({subset}, {results[0].n_images} images)", title_justify="left")
    for col in (
        "run",
        "metric",
        "base",
        "run value",
        "difference",
        f"{results[0].ci:.0%} CI",
        "p",
        "p (Holm)",
    ):
        table.add_column(col, justify="right" if col != "run" else "left")
    for r in results:
        table.add_row(
            r.other,
            r.metric,
            f"{r.value_base:.4f}",
            f"{r.value_other:.4f}",
            f"{r.difference:+.4f}",
            f"[{r.low:+.4f}, {r.high:+.4f}]",
            f"{r.p_value:.4g}",
            f"{r.p_holm:.4g}",
        )
    Console().print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([r.to_dict() for r in results], indent=1) + "\n", encoding="utf-8")
