"""``vlmad demo``: the offline end-to-end pipeline on the embedded defaults."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Output folder."),
    workers: int = typer.Option(2, min=1, help="Worker processes for data generation."),
    seed: int = typer.Option(0, help="Seed of the generated dataset."),
) -> None:
    """Generate LOCO-style demo data and write runs/demo/ (manifest, report.html)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from vlmad.demo import DEMO_SYNTH, DemoContext, run_demo

    console = Console()
    start = time.perf_counter()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        def on_stage(name: str, summary: str, seconds: float) -> None:
            if name in tasks:
                bar.remove_task(tasks.pop(name))
            console.print(f"[green]✓[/] {name}: {summary} [dim]({seconds:.1f} s)[/]")

        ctx = DemoContext(out=out, synth={**DEMO_SYNTH, "seed": seed}, workers=workers, progress=progress)
        run_demo(ctx, on_stage=on_stage)
    console.print(f"demo finished in {time.perf_counter() - start:.1f} s: open {out / 'report.html'}")
