"""The training section of a report: the loss curve, validation by detection, the pre-flight check."""

from __future__ import annotations

from typing import Any

from vlmad.report.html import HtmlReport, pyplot


def add_train_section(report: HtmlReport, result: Any, *, tiny_random: bool = False) -> None:
    """Add ``result`` (a :class:`vlmad.train.TrainResult`): its training-loss curve with the validation
    accuracy / AUROC on a second axis, a table of the validation steps, the pre-flight summary and where the
    adapter is. ``tiny_random`` marks the run as a pipeline check on a random model."""
    report.heading("LoRA fine-tuning (document 004, training-based part)")
    if tiny_random:
        report.note(
            "TINY RANDOM MODEL: the demo fine-tunes a tiny randomly initialised model of the LLaVA-1.5 "
            "architecture on the QA export above. The curve shows that the pipeline trains, validates and "
            "saves an adapter; it says nothing about how well a real model detects anomalies.",
            "warning",
        )
    where = result.adapter_dir or result.model_dir
    report.paragraph(
        f"{result.global_step} optimizer steps in {result.seconds:.1f} s; {result.trainable:,} of "
        f"{result.total:,} parameters trained; saved to {where}."
    )
    if result.losses:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.0, 3.2))
        steps, losses = zip(*result.losses, strict=True)
        ax.plot(steps, losses, marker="o", ms=3, label="training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (answer tokens only)")
        evals = [e for e in result.evals if "eval_accuracy" in e]
        if evals:
            ax2 = ax.twinx()
            ax2.plot(
                [e["step"] for e in evals],
                [e["eval_accuracy"] for e in evals],
                "s--",
                color="C1",
                label="validation accuracy",
            )
            if any("eval_auroc" in e for e in evals):
                pts = [(e["step"], e["eval_auroc"]) for e in evals if "eval_auroc" in e]
                ax2.plot(*zip(*pts, strict=True), "^:", color="C2", label="validation yes/no AUROC")
            ax2.set_ylim(0, 1)
            ax2.set_ylabel("validation")
            ax2.legend(loc="upper right", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        report.figure(report.save_figure(fig, "train_curve"), "Training loss and validation by detection")
    if result.evals:
        keys = sorted({k for e in result.evals for k in e if k.startswith("eval_") and k != "eval_runtime"})
        keys = [k for k in keys if not k.endswith(("_per_second", "samples"))][:8]
        rows = [[int(e.get("step", 0)), *[e.get(k, "") for k in keys]] for e in result.evals]
        report.table(["step", *[k.removeprefix("eval_") for k in keys]], rows, caption="Validation steps")
    report.paragraph(
        "Pre-flight check of the training set: " + " | ".join(result.preflight.summary().splitlines())
    )
