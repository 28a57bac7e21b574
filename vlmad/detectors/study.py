"""The uniform-vs-shifted imaging study of documents 000 and 003 on generated data.

The same scenes (same generator seed) are photographed three ways: uniform imaging for training and test;
uniform training images and shifted test images (lighting, shadows, position: the imaging environment
changes after deployment); and shifted imaging for both (the detector saw the variation when fitting).
A detector is fitted and evaluated on each, so a table shows how much of its accuracy is the imaging
environment's doing: document 000 finds pixel-level metrics drop more than image-level ones and wet or
shadowed normal parts cause pixel over-detection; document 003 finds position shifts cost PatchCore AUC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmad.metrics.evaluate import Evaluation
    from vlmad.records import Manifest

DEFAULT_SHIFTS = "lighting:0.7,shadow:0.6,position:0.4"
CONDITIONS: tuple[tuple[str, bool, bool], ...] = (
    # (name, training images shifted, test images shifted)
    ("uniform", False, False),
    ("train uniform, test shifted", False, True),
    ("both shifted", True, True),
)


@dataclass
class ShiftResult:
    """One condition of the study: its name, the shifts used, the dataset and the evaluation."""

    condition: str
    train_shifts: str
    test_shifts: str
    manifest: Manifest
    evaluation: Evaluation
    run_dir: Path


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def imaging_shift_study(
    out: str | Path,
    method: str = "patchcore",
    options: dict[str, Any] | None = None,
    synth: dict[str, Any] | None = None,
    shifts: str = DEFAULT_SHIFTS,
    workers: int = 1,
    fpr: float = 0.05,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[ShiftResult]:
    """Generate the three conditions under ``out/<condition>/data``, run ``method`` on each and evaluate.

    ``synth`` are generator settings (:func:`vlmad.data.synth.generate.make_config`) shared by all three;
    only the shifts differ. Thresholds are calibrated on each condition's validation normals (which are
    imaged like its training images) at ``fpr``. Everything resumes: finished images and predictions are
    kept.
    """
    from vlmad.data.predictions import read_predictions
    from vlmad.data.readers import read_dataset
    from vlmad.data.synth.generate import generate, make_config
    from vlmad.data.synth.shifts import parse_shifts
    from vlmad.detectors.run import run_detector
    from vlmad.metrics.evaluate import calibrate_thresholds, evaluate

    parse_shifts(shifts)  # a bad shift string fails before any work
    out = Path(out)
    results = []
    for name, train_shifted, test_shifted in CONDITIONS:
        folder = out / _slug(name)
        train_s, test_s = (shifts if train_shifted else ""), (shifts if test_shifted else "")
        config = make_config(
            source="imaging shift study", **{**(synth or {}), "train_shifts": train_s, "test_shifts": test_s}
        )
        generate(
            config,
            folder / "data",
            workers=workers,
            overwrite=True,
            progress=(lambda d, t, n=name: progress(f"{n}: data", d, t)) if progress else None,
        )
        manifest = read_dataset(folder / "data", layout="mvtec_loco")
        run = run_detector(
            method,
            manifest,
            folder / "run",
            run_id=f"{method} [{name}]",
            options=options,
            progress=(lambda phase, d, t, n=name: progress(f"{n}: {phase}", d, t)) if progress else None,
        )
        preds = read_predictions(run.predictions)
        thresholds = calibrate_thresholds(manifest, preds, "target-fpr", fpr=fpr)
        evaluation = evaluate(manifest, preds, thresholds=thresholds)
        evaluation.save(folder / "run" / "eval")
        results.append(ShiftResult(name, train_s, test_s, manifest, evaluation, folder / "run"))
    return results
