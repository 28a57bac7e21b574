"""Run detectors over datasets: fit per category on the normal training images, predict, write records.

Output layout of a run folder (read by the evaluation stage):

- ``models/<category>/``: the fitted detector (``detector.json`` + ``weights.safetensors``) and ``fit.json``
  (dataset, category, training images);
- ``predictions.jsonl``: one :class:`~vlmad.records.Prediction` per image, appended as each is made, so an
  interrupted run resumes where it stopped with no duplicate;
- ``maps/<category>/<split>/<sample>.npy``: float32 anomaly maps at each image's resolution;
- ``run.json``: method, options, backbone, and the warnings every output of the run must show.

Predictions' metadata carry the method, backbone, its weights and ``random_backbone`` so that no table
built from them can hide a random backbone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmad.data.maps import run_map_path, save_map, write_run_record
from vlmad.data.predictions import PredictionWriter
from vlmad.detectors.base import Detector, DetectorError, build
from vlmad.errors import ConfigError
from vlmad.records import Manifest, Prediction, Sample

if TYPE_CHECKING:
    from vlmad.detectors.object_mask import ObjectMasker

FIT_FILE = "fit.json"
Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class RunResult:
    """What a run produced: the predictions file, model folders per category and the warnings to show."""

    out: Path
    predictions: Path
    models: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    n_predicted: int = 0  # predictions made in this call (a resumed run skips finished images)
    fit_seconds: float = 0.0  # wall time of fitting in this call
    predict_seconds: float = 0.0  # wall time of predicting (maps and records written) in this call


def normal_training_images(manifest: Manifest, category: str) -> list[Sample]:
    """The category's normal ``train`` samples (what every detector fits on)."""
    if category not in manifest.categories:
        raise ConfigError(
            f"category {category!r} is not in the dataset; it has: {', '.join(manifest.categories)}"
        )
    train = [s for s in manifest if s.category == category and s.split == "train" and not s.is_anomalous]
    if not train:
        raise DetectorError(
            f"{manifest.info.root}: category {category!r} has no normal training images (train/good)"
        )
    return train


def fit_category(
    method: str | Callable[[], Detector],
    manifest: Manifest,
    category: str,
    options: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Detector:
    """A detector fitted on ``category``'s normal training images (paths; errors name the file)."""
    train = normal_training_images(manifest, category)
    detector = build(method, **(options or {})) if isinstance(method, str) else method()
    return detector.fit([s.image_path for s in train], progress=progress)


def save_fitted(detector: Detector, directory: str | Path, manifest: Manifest, category: str) -> Path:
    """Save ``detector`` with a ``fit.json`` naming the dataset, category and training images."""
    directory = detector.save(directory)
    train = normal_training_images(manifest, category)
    info = {
        "dataset": str(manifest.info.root),
        "layout": manifest.info.layout,
        "category": category,
        "n_train": len(train),
        "train_ids": [s.id for s in train],
    }
    (directory / FIT_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return directory


def load_fitted(directory: str | Path, device: str | None = None) -> tuple[Detector, dict[str, Any]]:
    """A saved detector and its ``fit.json`` (empty when the model was saved without one)."""
    directory = Path(directory)
    detector = Detector.load(directory, device=device)
    fit_path = directory / FIT_FILE
    info: dict[str, Any] = {}
    if fit_path.is_file():
        try:
            info = json.loads(fit_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DetectorError(f"{fit_path}: corrupted ({e})") from None
    return detector, info


def model_dirs(path: str | Path) -> dict[str, Path]:
    """Model folders under ``path``: ``path`` itself when it is a saved detector (key: its category from
    ``fit.json``, else ``""``), or its sub-folders that are (key: the folder name)."""
    from vlmad.detectors.base import SETTINGS_FILE

    path = Path(path)
    if (path / SETTINGS_FILE).is_file():
        cat = ""
        if (path / FIT_FILE).is_file():
            try:
                cat = str(json.loads((path / FIT_FILE).read_text(encoding="utf-8")).get("category", ""))
            except json.JSONDecodeError:
                cat = ""
        return {cat: path}
    found = (
        {d.name: d for d in sorted(path.iterdir()) if (d / SETTINGS_FILE).is_file()} if path.is_dir() else {}
    )
    if not found:
        raise DetectorError(f"{path}: not a saved detector (no detector.json here or in its sub-folders)")
    return found


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters that decide results, as they read back from JSON (device and batch size left out)."""
    return {k: v for k, v in json.loads(json.dumps(params)).items() if k not in ("device", "batch_size")}


def _metadata(detector: Detector) -> dict[str, Any]:
    info = detector.backbone_info
    meta: dict[str, Any] = {"detector": detector.method}
    if info is not None:
        meta.update(backbone=info.name, backbone_weights=info.weights, random_backbone=info.random)
    return meta


def predict_samples(
    detector: Detector,
    samples: Sequence[Sample],
    out: str | Path,
    writer: PredictionWriter,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    masker: ObjectMasker | None = None,
    mask_factor: float = 0.8,
) -> int:
    """Predict ``samples`` not yet in ``writer.done``, in batches; each batch's maps and records are
    written before the next starts. Returns how many were predicted; ``progress(n)`` after each batch.

    With a fitted ``masker`` (document 002's object mask), map values outside each image's object mask are
    multiplied by ``mask_factor`` and the score is the masked map's maximum; records say so.
    """
    out = Path(out)
    todo = [s for s in samples if (s.id, None) not in writer.done]
    meta = _metadata(detector)
    target: Any = detector
    if masker is not None:
        from vlmad.detectors.object_mask import MaskedDetector

        target = MaskedDetector(detector, masker, mask_factor)
        meta.update(object_mask=masker.method, mask_factor=mask_factor)
    n = 0
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        scores, maps = target.predict([s.image_path for s in batch])
        infos = getattr(target, "infos_", [None] * len(batch))
        for s, score, amap, info in zip(batch, scores, maps, infos, strict=True):
            path = save_map(run_map_path(out, s), amap)
            extra = {} if info is None else {"mask_fallback": info.fallback, "mask_coverage": info.coverage}
            writer.write(
                Prediction(
                    sample_id=s.id,
                    run_id=writer.run_id,
                    score=float(score),
                    map_path=path,
                    metadata={**meta, **extra},
                )
            )
        n += len(batch)
        if progress:
            progress(n)
    return n


def run_detector(
    method: str | Callable[[], Detector],
    manifest: Manifest,
    out: str | Path,
    run_id: str | None = None,
    options: dict[str, Any] | None = None,
    categories: Sequence[str] | None = None,
    splits: Sequence[str] = ("validation", "test"),
    save_models: bool = True,
    progress: Progress | None = None,
    object_mask: dict[str, Any] | None = None,
) -> RunResult:
    """Fit one detector per category and predict ``splits``; resumes an interrupted run.

    ``object_mask``: ``{"method": "akaze" | "orb" | "brisk", "factor": 0.8, ...ObjectMasker options}``
    fits a keypoint object mask per category on the same training images and applies it to every map.

    A category whose images are all predicted already is skipped (its model is not refitted). A saved
    model in ``models/<category>`` from an earlier, interrupted call is reused instead of refitting.
    """
    out = Path(out)
    options = dict(options or {})
    name = method if isinstance(method, str) else getattr(method, "name", "detector")
    run_id = run_id or name
    cats = list(categories) if categories else list(manifest.categories)
    for c in cats:
        if c not in manifest.categories:
            raise ConfigError(
                f"category {c!r} is not in the dataset; it has: {', '.join(manifest.categories)}"
            )
    result = RunResult(out=out, predictions=out / "predictions.jsonl")
    todo_all = [s for s in manifest if s.category in cats and s.split in splits]
    described: dict[str, Any] = {}
    with PredictionWriter(result.predictions, run_id) as writer:
        done = sum(1 for s in todo_all if (s.id, None) in writer.done)
        for cat in cats:
            samples = [s for s in todo_all if s.category == cat]
            if all((s.id, None) in writer.done for s in samples):
                continue
            model_dir = out / "models" / cat
            detector: Detector | None = None
            if save_models and (model_dir / "detector.json").is_file():
                detector, _ = load_fitted(model_dir)
                wanted = build(method, **options) if isinstance(method, str) else method()
                if detector.method != wanted.method or _plain(detector.get_params()) != _plain(
                    wanted.get_params()
                ):
                    raise DetectorError(
                        f"{model_dir}: holds a {detector.method} model fitted with other options "
                        f"({detector.get_params()}); use another output folder or remove it to refit"
                    )
            if detector is None:
                start = time.perf_counter()
                fit_progress = (lambda d, t, c=cat: progress(f"fit {c}", d, t)) if progress else None
                detector = fit_category(method, manifest, cat, options, fit_progress)
                result.fit_seconds += time.perf_counter() - start
                if save_models:
                    save_fitted(detector, model_dir, manifest, cat)
            if save_models:
                result.models[cat] = model_dir
            described[cat] = detector.describe()
            for w in detector.warnings:
                if w not in result.warnings:
                    result.warnings.append(w)
            base = done

            def step(n: int, base: int = base) -> None:
                if progress:
                    progress("predict", base + n, len(todo_all))

            masker = None
            if object_mask:
                from vlmad.detectors.object_mask import ObjectMasker

                mask_options = {k: v for k, v in object_mask.items() if k != "factor"}
                masker = ObjectMasker(**mask_options).fit(
                    [s.image_path for s in normal_training_images(manifest, cat)]
                )
            start = time.perf_counter()
            n = predict_samples(
                detector,
                samples,
                out,
                writer,
                progress=step,
                masker=masker,
                mask_factor=float((object_mask or {}).get("factor", 0.8)),
            )
            result.predict_seconds += time.perf_counter() - start
            done += n
            result.n_predicted += n
    write_run_record(
        out,
        {
            "run_id": run_id,
            "method": name,
            "options": options,
            "object_mask": object_mask,
            "categories": described,
            "warnings": result.warnings,
            "dataset": str(manifest.info.root),
        },
    )
    return result


def predict_manifest(
    make_detector: Callable[[], Detector],
    manifest: Manifest,
    out: str | Path,
    run_id: str,
    splits: Sequence[str] = ("validation", "test"),
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Fit a fresh ``make_detector()`` per category and predict ``splits``; returns the predictions file.

    The plain-callable form of :func:`run_detector` (models are not saved).
    """
    result = run_detector(
        make_detector,
        manifest,
        out,
        run_id,
        splits=splits,
        save_models=False,
        progress=(lambda phase, d, t: progress(d, t)) if progress else None,
    )
    return result.predictions
