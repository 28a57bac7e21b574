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

# The detectors of the demo, by registry name, with their options. PatchCore and ridge regression use the
# documents' backbone (wide_resnet50_2, layers 2+3); PaDiM uses the ResNet-18 of anomalib's default PaDiM
# (its per-position covariances over wide_resnet50_2's layers 1-3 need about 5 GB at 256 px). Backbone
# weights are "auto": pretrained where they can be loaded, otherwise random and flagged as such everywhere.
DEMO_DETECTORS: dict[str, dict[str, Any]] = {
    "pixel-gaussian": {},
    "patchcore": {"backbone": "wide_resnet50_2", "layers": [2, 3]},
    "padim": {"backbone": "resnet18", "layers": [1, 2, 3]},
    "ridge": {"backbone": "wide_resnet50_2"},
}
# The imaging study: PatchCore on two categories imaged uniformly and with lighting/shadow/position shifts.
DEMO_SHIFT_STUDY: dict[str, Any] = {
    "method": "patchcore",
    "options": {"backbone": "wide_resnet50_2", "layers": [2, 3]},
    "synth": {
        "categories": ["breakfast_box", "screw_bag"],
        "size": 256,
        "seed": 1,
        "counts": {
            "train_good": 20,
            "validation_good": 5,
            "test_good": 10,
            "test_logical": 5,
            "test_structural": 10,
        },
    },
    "shifts": "lighting:0.7,shadow:0.6,position:0.4",
}
# The zero-shot baselines of the demo: WinCLIP (zero-shot) and MuSc with a tiny random CLIP of the real
# architecture written into the run folder (no CLIP weights can be downloaded here); flagged as random.
DEMO_ZEROSHOT: dict[str, dict[str, Any]] = {"winclip": {}, "musc": {}}
DEMO_CLIP = "tiny"  # "tiny" = make_tiny_clip(<out>/models/tiny-clip); else a Hub id or a local CLIP folder
# The QA build of the demo: template QA from ground truth (offline), document 004's split and all exports.
# Document 004 moves 10% of each test anomaly type into training; the demo's defect types have 1-4 test
# images each, so 10% would move none: the demo moves half, so that training sees anomalies.
DEMO_QA: dict[str, Any] = {"fraction": 0.5, "seed": 0, "variants": 2}
# LoRA on a tiny RANDOM LLaVA-1.5 architecture with the repository's tiny-model recipe (train/tiny_llava.yaml)
# on the QA export above: a check of the training pipeline, not a result. Other keys override the recipe.
DEMO_TRAIN: dict[str, Any] = {"recipe": "train/tiny_llava.yaml"}
# P1, P2, P3 and the plain prompt on the tiny model, without and with the adapter the demo trained
# (eval/coi_tiny.yaml; its models are replaced by these two). Other keys override the recipe.
DEMO_COI: dict[str, Any] = {"recipe": "eval/coi_tiny.yaml", "per_label": 2}


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
    detectors: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEMO_DETECTORS))
    shift_study: dict[str, Any] | None = field(default_factory=lambda: dict(DEMO_SHIFT_STUDY))
    evaluations: list[Any] = field(default_factory=list)  # vlmad.metrics.evaluate.Evaluation
    detector_runs: list[Any] = field(default_factory=list)  # vlmad.detectors.run.RunResult
    shift_results: list[Any] = field(default_factory=list)  # vlmad.detectors.study.ShiftResult
    zeroshot: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(DEMO_ZEROSHOT))
    clip: str = DEMO_CLIP
    zeroshot_runs: list[Any] = field(default_factory=list)  # vlmad.zeroshot.run.ZeroShotRunResult
    qa: dict[str, Any] | None = field(default_factory=lambda: dict(DEMO_QA))
    qa_build: Any = None  # vlmad.qa.build.BuildResult
    train: dict[str, Any] | None = field(default_factory=lambda: dict(DEMO_TRAIN))
    train_result: Any = None  # vlmad.train.TrainResult
    tiny_vlm: Path | None = None
    coi: dict[str, Any] | None = field(default_factory=lambda: dict(DEMO_COI))
    coi_predictions: list[Any] = field(default_factory=list)  # vlmad.records.Prediction
    coi_warnings: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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


def stage_qa(ctx: DemoContext) -> str:
    """Template QA into a store, the partial-supervision split and the exports (as `vlmad qa build`)."""
    from vlmad.qa.build import build_qa, make_settings

    if not ctx.qa:
        return "skipped"
    assert ctx.manifest is not None
    settings = make_settings("demo QA settings", **ctx.qa)
    ctx.qa_build = build_qa(ctx.manifest, ctx.out / "qa", settings, store_path=ctx.out / "qa" / "qa.sqlite")
    return ctx.qa_build.summary()


def _repo_file(relative: str) -> Path:
    """A recipe of the repository (``train/...``, ``eval/...``): the demo runs from a checkout."""
    from vlmad.errors import ConfigError

    path = Path(relative)
    if not path.is_absolute():
        path = Path(__file__).resolve().parents[1] / relative
    if not path.is_file():
        raise ConfigError(f"{path}: demo recipe not found (the demo runs from a vlmad checkout)")
    return path


def stage_train(ctx: DemoContext) -> str:
    """LoRA fine-tuning of a tiny random LLaVA-1.5 architecture on the QA export (``vlmad train run``)."""
    from vlmad.train import load_train_recipe, train
    from vlmad.vlm.tiny import build

    if not ctx.train or ctx.qa_build is None:
        return "skipped"
    options = dict(ctx.train)
    recipe = _repo_file(options.pop("recipe"))
    model_dir = ctx.out / "models" / "tiny-llava"
    if not (model_dir / "config.json").is_file():
        build("llava", model_dir)
    ctx.tiny_vlm = model_dir
    config = load_train_recipe(
        recipe,
        model=str(model_dir),
        export_dir=str(ctx.qa_build.out_dir),
        output_dir=str(ctx.out / "train" / "tiny-llava"),
        **options,
    )
    steps = config.max_steps if config.max_steps and config.max_steps > 0 else 0
    ctx.train_result = train(
        config,
        progress=(lambda phase, done, total: ctx.progress(f"train {phase}", done, total or steps))
        if ctx.progress
        else None,
    )
    r = ctx.train_result
    first, last = (r.losses[0][1], r.losses[-1][1]) if r.losses else (float("nan"), float("nan"))
    return (
        f"{r.global_step} steps, loss {first:.3f} -> {last:.3f}, adapter {r.adapter_dir} (TINY RANDOM model)"
    )


def stage_coi(ctx: DemoContext) -> str:
    """Chain-of-image prompts P1-P3 and plain on the tiny model, base and with the demo's adapter."""
    from vlmad.coi.recipe import load_recipe
    from vlmad.coi.runner import run_coi
    from vlmad.data.predictions import read_predictions

    if not ctx.coi or ctx.tiny_vlm is None:
        return "skipped"
    options = dict(ctx.coi)
    recipe_path = _repo_file(options.pop("recipe"))
    models = [{"backend": "local", "source": str(ctx.tiny_vlm), "name": "tiny-llava", "device": "cpu"}]
    adapter = getattr(ctx.train_result, "adapter_dir", None)
    if adapter is not None:
        models.append({**models[0], "name": "tiny-llava+demo-lora", "adapter": str(adapter)})
    recipe = load_recipe(recipe_path, models=models, dataset=str(ctx.data_dir), **options)
    out = ctx.out / "coi"
    summary = run_coi(
        recipe,
        out,
        manifest=ctx.manifest,
        progress=(lambda pr: ctx.progress("coi", pr.done, pr.total)) if ctx.progress else None,
    )
    ctx.coi_predictions = read_predictions(out / "predictions.jsonl")
    ctx.coi_warnings = list(summary.warnings)
    runs = len({p.run_id for p in ctx.coi_predictions})
    answered = summary.status.get("answered", 0)
    return (
        f"{len(ctx.coi_predictions)} answers from {runs} model x prompt runs ({summary.written} new, "
        f"{answered} parsed), {summary.wall_s:.1f} s (TINY RANDOM model) -> {out}"
    )


def _evaluate_run(ctx: DemoContext, predictions: Path, eval_dir: Path) -> Any:
    """Evaluate a run's predictions with thresholds calibrated on the validation normals."""
    from vlmad.data.predictions import read_predictions
    from vlmad.metrics.evaluate import calibrate_thresholds, evaluate

    assert ctx.manifest is not None
    preds = read_predictions(predictions)
    thresholds = calibrate_thresholds(ctx.manifest, preds, "target-fpr", fpr=0.05)
    evaluation = evaluate(ctx.manifest, preds, thresholds=thresholds)
    evaluation.save(eval_dir)
    return evaluation


def _detector_run(ctx: DemoContext, name: str, options: dict[str, Any]) -> tuple[Any, Any]:
    """Fit, predict and evaluate one detector on the demo data; returns (RunResult, Evaluation)."""
    from vlmad.detectors.base import detector_class
    from vlmad.detectors.run import run_detector

    assert ctx.manifest is not None
    run_dir = ctx.out / "runs" / name
    result = run_detector(
        name,
        ctx.manifest,
        run_dir,
        run_id=detector_class(name).label,
        options=options,
        progress=(lambda phase, d, t: ctx.progress(f"detect {name}: {phase}", d, t))
        if ctx.progress
        else None,
    )
    return result, _evaluate_run(ctx, result.predictions, run_dir / "eval")


def stage_detect(ctx: DemoContext) -> str:
    """Fit the patch detectors on each category's training normals, predict validation and test images,
    evaluate with thresholds calibrated on the validation normals (never on the test set).

    The trivial pixel-Gaussian baseline runs first as the floor every detector must beat.
    """
    parts = []
    for name, options in ctx.detectors.items():
        result, evaluation = _detector_run(ctx, name, options)
        ctx.evaluations.append(evaluation)
        ctx.detector_runs.append(result)
        for w in result.warnings:
            if w not in ctx.warnings:
                ctx.warnings.append(w)
        parts.append(f"{name} img AUROC {evaluation.value('image_auroc'):.3f}")
    random = " (RANDOM backbones: no pretrained weights offline)" if ctx.warnings else ""
    return ", ".join(parts) + random


def stage_zeroshot(ctx: DemoContext) -> str:
    """WinCLIP and MuSc on the demo data with the demo CLIP (a tiny random one offline), evaluated like the
    detectors so they share the report's tables."""
    from vlmad.zeroshot.clip import Clip, make_tiny_clip
    from vlmad.zeroshot.run import run_zeroshot

    if not ctx.zeroshot:
        return "skipped"
    assert ctx.manifest is not None
    source = ctx.clip
    if source == "tiny":
        source = str(make_tiny_clip(ctx.out / "models" / "tiny-clip"))
    clip = Clip.load(source)
    parts = []
    for name, options in ctx.zeroshot.items():
        run_dir = ctx.out / "runs" / f"zeroshot-{name}"
        result = run_zeroshot(
            name,
            ctx.manifest,
            run_dir,
            clip,
            options=options,
            progress=(lambda phase, d, t, n=name: ctx.progress(f"zeroshot {n}: {phase}", d, t))
            if ctx.progress
            else None,
        )
        evaluation = _evaluate_run(ctx, result.predictions, run_dir / "eval")
        ctx.evaluations.append(evaluation)
        ctx.zeroshot_runs.append(result)
        for w in result.warnings:
            if w not in ctx.warnings:
                ctx.warnings.append(w)
        parts.append(f"{name} img AUROC {evaluation.value('image_auroc'):.3f}")
    random = " (tiny RANDOM CLIP)" if clip.info.random else ""
    return ", ".join(parts) + random


def stage_imaging(ctx: DemoContext) -> str:
    """The uniform-vs-shifted imaging study (documents 000 and 003) with one detector on generated data."""
    from vlmad.detectors.study import imaging_shift_study

    if not ctx.shift_study:
        return "skipped"
    study = dict(ctx.shift_study)
    method = study.pop("method")
    ctx.shift_results = imaging_shift_study(
        ctx.out / "imaging",
        method=method,
        options=study.pop("options", {}),
        synth=study.pop("synth"),
        shifts=study.pop("shifts"),
        workers=ctx.workers,
        progress=(lambda phase, d, t: ctx.progress(f"imaging {phase}", d, t)) if ctx.progress else None,
    )
    parts = []
    for r in ctx.shift_results:
        img, px = r.evaluation.value("image_auroc"), r.evaluation.value("pixel_auroc")
        parts.append(f"{r.condition}: img AUROC {img:.3f} / px {px:.3f}")
    return ", ".join(parts)


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
    if ctx.qa_build is not None:
        from vlmad.qa.store import QAStore
        from vlmad.report.qa import add_qa_section

        with QAStore(ctx.qa_build.store_path) as store:
            items = store.items()
        add_qa_section(
            report,
            items,
            ctx.manifest,
            split_counts=ctx.qa_build.split_counts,
            export_counts=ctx.qa_build.export_counts,
            templates=ctx.qa_build.templates,
        )
    if ctx.train_result is not None:
        from vlmad.report.train import add_train_section

        add_train_section(report, ctx.train_result, tiny_random=True)
    if ctx.coi_predictions:
        from vlmad.report.coi import add_coi_section

        add_coi_section(report, ctx.manifest, ctx.coi_predictions, warnings=ctx.coi_warnings)
    if ctx.evaluations:
        from vlmad.report.detectors import add_detector_section
        from vlmad.report.evaluation import add_evaluation_section, save_tables

        save_tables(ctx.evaluations, ctx.out / "tables")
        n_scored = sum(1 for s in ctx.manifest if s.split in ("validation", "test"))
        add_detector_section(
            report,
            ctx.evaluations,
            warnings=ctx.warnings,
            scoring_seconds=[r.predict_seconds for r in [*ctx.detector_runs, *ctx.zeroshot_runs]]
            if ctx.detector_runs or ctx.zeroshot_runs
            else None,
            n_scored=n_scored,
            shift=ctx.shift_results,
        )
        add_evaluation_section(report, ctx.evaluations, ctx.manifest, title="Evaluation details")
    path = report.save("report.html")
    return str(path)


STAGES: list[tuple[str, Callable[[DemoContext], str]]] = [
    ("synth", stage_synth),
    ("manifest", stage_manifest),
    ("validate", stage_validate),
    ("qa", stage_qa),
    ("train", stage_train),
    ("coi", stage_coi),
    ("detect", stage_detect),
    ("zeroshot", stage_zeroshot),
    ("imaging", stage_imaging),
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
