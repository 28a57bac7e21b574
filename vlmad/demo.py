"""The demo pipeline behind ``vlmad demo`` and ``make demo``: one pipeline, stages appended by each part.

Stages run in order over a shared :class:`DemoContext`; each returns a one-line summary. The report is
written by the last stage from what earlier stages left in the context. The whole run works offline on the
embedded defaults (a generated LOCO-style dataset) and resumes: the generator keeps finished images.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmad.data.images import Problem
from vlmad.records import Manifest

# The demo dataset: all five categories, small enough to generate in seconds on 2 cores.
DEMO_SYNTH: dict[str, Any] = {
    "size": 256,
    "seed": 0,
    "counts": {
        "train_good": 20,
        "validation_good": 5,
        "test_good": 10,
        "test_logical": 10,
        "test_structural": 10,
    },
}


@dataclass
class DemoContext:
    """What the stages share: the output folder, options, and results of earlier stages."""

    out: Path
    synth: dict[str, Any] = field(default_factory=lambda: dict(DEMO_SYNTH))
    workers: int = 2
    manifest: Manifest | None = None
    problems: list[Problem] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)
    progress: Callable[[str, int, int], None] | None = None
    evaluations: list[Any] = field(default_factory=list)  # vlmad.metrics.evaluate.Evaluation

    @property
    def data_dir(self) -> Path:
        return self.out / "data"


def stage_synth(ctx: DemoContext) -> str:
    """Generate the LOCO-style demo dataset (resumes if interrupted)."""
    from vlmad.data.synth.generate import generate, make_config

    config = make_config(source="demo settings", **ctx.synth)
    generate(
        config,
        ctx.data_dir,
        workers=ctx.workers,
        overwrite=True,
        progress=(lambda d, t: ctx.progress("synth", d, t)) if ctx.progress else None,
    )
    n = len(config.categories) * sum(config.counts.model_dump().values())
    return f"{n} images in {ctx.data_dir}"


def stage_manifest(ctx: DemoContext) -> str:
    """Read the dataset back through the MVTec LOCO reader and save the manifest."""
    from vlmad.data.readers import read_dataset

    ctx.manifest = read_dataset(ctx.data_dir, layout="mvtec_loco")
    path = ctx.manifest.save(ctx.out / "manifest.jsonl")
    return f"{len(ctx.manifest)} samples -> {path}"


def stage_validate(ctx: DemoContext) -> str:
    """Check every image and mask of the manifest."""
    from vlmad.data.validate import validate_manifest

    assert ctx.manifest is not None
    ctx.problems = validate_manifest(
        ctx.manifest,
        progress=(lambda d: ctx.progress("validate", d, len(ctx.manifest))) if ctx.progress else None,
    )
    errors = sum(p.severity == "error" for p in ctx.problems)
    return f"{errors} errors, {len(ctx.problems) - errors} warnings"


def stage_evaluate(ctx: DemoContext) -> str:
    """Score the test images with a trivial baseline and evaluate it (until real detectors take its place).

    The baseline (per-pixel colour z-scores against the training normals) is labelled as such everywhere;
    its threshold is calibrated on the validation normals, never on the test set.
    """
    from vlmad.data.predictions import read_predictions
    from vlmad.detectors.pixel_gaussian import PixelGaussian
    from vlmad.detectors.run import predict_manifest
    from vlmad.metrics.evaluate import calibrate_thresholds, evaluate

    assert ctx.manifest is not None
    run_dir = ctx.out / "runs" / "pixel-gaussian"
    path = predict_manifest(
        PixelGaussian,
        ctx.manifest,
        run_dir,
        PixelGaussian.name,
        progress=(lambda d, t: ctx.progress("evaluate", d, t)) if ctx.progress else None,
    )
    preds = read_predictions(path)
    thresholds = calibrate_thresholds(ctx.manifest, preds, "target-fpr", fpr=0.05)
    evaluation = evaluate(
        ctx.manifest,
        preds,
        thresholds=thresholds,
        progress=(lambda d, t: ctx.progress("evaluate", d, t)) if ctx.progress else None,
    )
    evaluation.save(run_dir / "eval")
    ctx.evaluations = [evaluation]
    return (
        f"{PixelGaussian.name}: image AUROC {evaluation.value('image_auroc'):.3f}, "
        f"pixel AUPRO {evaluation.value('pixel_aupro_0.3'):.3f} (mean over categories) -> {run_dir}"
    )


def stage_report(ctx: DemoContext) -> str:
    """Write ``report.html`` from the results of the earlier stages."""
    from vlmad import __version__
    from vlmad.report.dataset import add_dataset_section
    from vlmad.report.html import HtmlReport

    assert ctx.manifest is not None
    report = HtmlReport("vlmad demo report", ctx.out)
    report.paragraph(
        f"vlmad {__version__}. Generated LOCO-style data (procedural, not real photographs), seed "
        f"{ctx.synth.get('seed', 0)}, {ctx.synth.get('size', 256)} px."
    )
    rows = [[name, ctx.summaries[name], ctx.timings[name]] for name in ctx.summaries]  # stages done so far
    report.table(["stage", "result", "seconds"], rows, caption="Pipeline stages")
    if ctx.problems:
        for p in ctx.problems[:50]:
            report.note(str(p), "error" if p.severity == "error" else "warning")
    add_dataset_section(report, ctx.manifest)
    if ctx.evaluations:
        from vlmad.report.evaluation import add_evaluation_section, save_tables

        save_tables(ctx.evaluations, ctx.out / "tables")
        add_evaluation_section(report, ctx.evaluations, ctx.manifest, title="Evaluation (trivial baseline)")
    path = report.save("report.html")
    return str(path)


STAGES: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("synth", stage_synth),
    ("manifest", stage_manifest),
    ("validate", stage_validate),
    ("evaluate", stage_evaluate),
    ("report", stage_report),
]


def run_demo(ctx: DemoContext, on_stage: Callable[[str, str, float], None] | None = None) -> DemoContext:
    """Run every stage in order; ``on_stage(name, summary, seconds)`` is called after each.

    Writes ``<out>/stages.json`` with each stage's summary and time as it goes.
    """
    ctx.out.mkdir(parents=True, exist_ok=True)
    for name, fn in STAGES:
        start = time.perf_counter()
        summary = fn(ctx)
        ctx.timings[name] = time.perf_counter() - start
        ctx.summaries[name] = summary
        (ctx.out / "stages.json").write_text(
            json.dumps(
                {k: {"summary": ctx.summaries[k], "seconds": ctx.timings[k]} for k in ctx.summaries}, indent=2
            )
            + "\n",
            encoding="utf-8",
        )
        if on_stage:
            on_stage(name, summary, ctx.timings[name])
    return ctx
