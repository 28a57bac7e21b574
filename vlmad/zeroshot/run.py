"""Run a zero-shot method over a dataset and write the records the evaluation stage reads.

Output layout of a run folder (the same as a detector run's):

- ``predictions.jsonl``: one :class:`~vlmad.records.Prediction` per image, appended as each category is
  scored, so an interrupted run resumes with no duplicate;
- ``maps/<category>/<split>/<sample>.npy``: float32 anomaly maps at each image's resolution;
- ``models/fold-<i>/``: AnomalyCLIP's learned prompts, when the run trained them;
- ``run.json``: method, options, the CLIP model, what AnomalyCLIP trained on, and the warnings.

Scoring unit: one category at a time. WinCLIP and AnomalyCLIP score images independently (in batches);
MuSc scores the category's images *together* (validation and test images of the category as one unlabelled
set), so a resumed MuSc category is rescored as a whole and only the missing records are written.

AnomalyCLIP must never see a tested category in training. Given ``train_manifest`` (auxiliary annotated
data, e.g. another dataset) it trains once on it and every tested category must be absent from it.
Without one it trains in two folds on the tested dataset itself: the categories are split in two halves
and each half is scored by prompts trained on the other half's annotated images (masks of anomalous
images, good images as normal).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmad.data.maps import run_map_path, save_map, write_run_record
from vlmad.data.predictions import PredictionWriter
from vlmad.errors import ConfigError
from vlmad.records import Manifest, Prediction, Sample
from vlmad.zeroshot.base import ZeroShotMethod, build
from vlmad.zeroshot.clip import Clip, ZeroShotError

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class ZeroShotRunResult:
    """What a run produced: the predictions file, the warnings to show, and timings of this call."""

    out: Path
    predictions: Path
    warnings: list[str] = field(default_factory=list)
    n_predicted: int = 0
    fit_seconds: float = 0.0  # AnomalyCLIP prompt training in this call
    predict_seconds: float = 0.0  # scoring (maps and records written) in this call
    trained_on: dict[str, list[str]] = field(default_factory=dict)  # tested category -> training categories


def reference_images(manifest: Manifest, category: str, k: int, seed: int = 0) -> list[Path]:
    """``k`` normal training images of ``category`` for few-shot scoring, chosen with ``seed``."""
    pool = [
        s.image_path for s in manifest if s.category == category and s.split == "train" and not s.is_anomalous
    ]
    if len(pool) < k:
        raise ZeroShotError(
            f"{k}-shot scoring of {category!r} needs {k} normal training images; the dataset has {len(pool)}"
        )
    rng = np.random.default_rng(seed)
    return [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]


def annotated_images(
    manifest: Manifest, categories: Sequence[str]
) -> tuple[list[np.ndarray], list[np.ndarray | None], list[str]]:
    """AnomalyCLIP's auxiliary training data from ``categories``: every good image (mask None) and every
    anomalous image with a mask, from all splits."""
    from vlmad.data.images import load_image, load_masks

    images: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    cats: list[str] = []
    for s in manifest:
        if s.category not in categories:
            continue
        if s.is_anomalous and not s.mask_paths:
            continue  # an anomaly without a mask gives no pixel supervision
        img = load_image(s.image_path)
        images.append(img)
        masks.append(load_masks(s.mask_paths, img.shape[:2]) if s.is_anomalous else None)
        cats.append(s.category)
    if not images:
        raise ZeroShotError(f"no annotated images in categories {', '.join(categories)} to train AnomalyCLIP")
    return images, masks, cats


def _folds(categories: Sequence[str]) -> list[tuple[list[str], list[str]]]:
    """Two folds (test categories, training categories) with no overlap."""
    cats = sorted(categories)
    if len(cats) < 2:
        raise ZeroShotError(
            "AnomalyCLIP trains on categories other than the tested ones: with one category, give an "
            "auxiliary dataset (train_manifest / --train-dataset)"
        )
    half = (len(cats) + 1) // 2
    a, b = cats[:half], cats[half:]
    return [(a, b), (b, a)]


def _write(
    method: ZeroShotMethod,
    samples: Sequence[Sample],
    scores: np.ndarray,
    maps: Sequence[np.ndarray],
    out: Path,
    writer: PredictionWriter,
    meta: dict[str, Any],
) -> int:
    n = 0
    for s, score, amap in zip(samples, scores, maps, strict=True):
        if (s.id, None) in writer.done:
            continue
        path = save_map(run_map_path(out, s), amap)
        writer.write(
            Prediction(sample_id=s.id, run_id=writer.run_id, score=float(score), map_path=path, metadata=meta)
        )
        n += 1
    return n


def run_zeroshot(
    method: str,
    manifest: Manifest,
    out: str | Path,
    clip: Clip | str | Path,
    run_id: str | None = None,
    options: dict[str, Any] | None = None,
    categories: Sequence[str] | None = None,
    splits: Sequence[str] = ("validation", "test"),
    k_shot: int = 0,
    seed: int = 0,
    batch_size: int = 8,
    train_manifest: Manifest | None = None,
    progress: Progress | None = None,
) -> ZeroShotRunResult:
    """Score ``splits`` of ``categories`` (default all) with a zero-shot ``method``; resumes.

    ``k_shot`` > 0 gives WinCLIP+ (``k_shot`` normal training images per category as references).
    ``train_manifest``: AnomalyCLIP's auxiliary training data (see the module docstring).
    """
    out = Path(out)
    options = dict(options or {})
    cats = list(categories) if categories else list(manifest.categories)
    for c in cats:
        if c not in manifest.categories:
            raise ConfigError(
                f"category {c!r} is not in the dataset; it has: {', '.join(manifest.categories)}"
            )
    if k_shot < 0:
        raise ConfigError(f"k_shot must be 0 or more, got {k_shot}")
    if k_shot and method != "winclip":
        raise ConfigError(f"few-shot references are a WinCLIP option (WinCLIP+); {method} takes none")
    if isinstance(clip, str | Path):
        clip = Clip.load(clip)
    base = build(method, clip, **options)
    label = base.label + (f"+ ({k_shot}-shot)" if k_shot else "")
    if clip.info.random:
        label += " [tiny random CLIP]"  # the table row itself says so, not only the warnings
    run_id = run_id or label
    result = ZeroShotRunResult(out=out, predictions=out / "predictions.jsonl")
    todo_all = [s for s in manifest if s.category in cats and s.split in splits]

    # which model scores which category (AnomalyCLIP: trained prompts per fold)
    plan: list[tuple[ZeroShotMethod, list[str]]] = []
    if base.requires_fit:
        plan = _fit_anomalyclip(
            base, method, clip, options, manifest, cats, out, train_manifest, result, progress
        )
    else:
        plan = [(base, cats)]
    described: dict[str, Any] = {}
    with PredictionWriter(result.predictions, run_id) as writer:
        done = sum(1 for s in todo_all if (s.id, None) in writer.done)
        for model, model_cats in plan:
            for w in model.warnings:
                if w not in result.warnings:
                    result.warnings.append(w)
            meta = {**model.describe(), "k_shot": k_shot}
            for cat in model_cats:
                samples = [s for s in todo_all if s.category == cat]
                missing = [s for s in samples if (s.id, None) not in writer.done]
                if not missing:
                    continue
                described[cat] = meta
                refs = reference_images(manifest, cat, k_shot, seed) if k_shot else None
                start = time.perf_counter()
                if model.min_images > 1:  # mutual scoring: the whole category at once, write the missing
                    groups = [samples]
                else:
                    groups = [missing[i : i + batch_size] for i in range(0, len(missing), batch_size)]
                for group in groups:
                    scores, maps = model.predict([s.image_path for s in group], cat, refs)
                    n = _write(model, group, scores, maps, out, writer, meta)
                    done += n
                    result.n_predicted += n
                    if progress:
                        progress(f"score {cat}", done, len(todo_all))
                result.predict_seconds += time.perf_counter() - start
    write_run_record(
        out,
        {
            "run_id": run_id,
            "method": method,
            "options": options,
            "k_shot": k_shot,
            "clip": clip.info.describe(),
            "categories": described,
            "trained_on": result.trained_on,
            "warnings": result.warnings,
            "dataset": str(manifest.info.root),
        },
    )
    return result


def _fit_anomalyclip(
    base: ZeroShotMethod,
    method: str,
    clip: Clip,
    options: dict[str, Any],
    manifest: Manifest,
    cats: list[str],
    out: Path,
    train_manifest: Manifest | None,
    result: ZeroShotRunResult,
    progress: Progress | None,
) -> list[tuple[ZeroShotMethod, list[str]]]:
    """Train (or reload from ``models/``) AnomalyCLIP prompts so that no tested category was trained on."""
    cls = type(base)
    if train_manifest is not None:
        overlap = sorted(set(cats) & set(train_manifest.categories))
        if overlap:
            raise ZeroShotError(
                f"the auxiliary training data ({train_manifest.info.root}) holds tested categories "
                f"{', '.join(overlap)}; AnomalyCLIP's training and test categories must not overlap"
            )
        folds = [(cats, list(train_manifest.categories))]
        source = train_manifest
    else:
        folds = _folds(cats)
        source = manifest
    plan = []
    for i, (test_cats, train_cats) in enumerate(folds):
        model_dir = out / "models" / f"fold-{i}"
        model: Any = None
        if (model_dir / "anomalyclip.json").is_file():
            model = cls.load(model_dir, clip)  # type: ignore[attr-defined]
            if sorted(model.trained_on_) != sorted(train_cats) or model.options() != base.options():
                raise ZeroShotError(
                    f"{model_dir}: holds prompts trained on {', '.join(model.trained_on_)} with options "
                    f"{model.options()}; use another output folder or remove it to retrain"
                )
        if model is None:
            model = build(method, clip, **options)
            images, masks, img_cats = annotated_images(source, train_cats)
            start = time.perf_counter()
            model.fit(  # type: ignore[attr-defined]
                images,
                masks,
                img_cats,
                dataset=str(source.info.root),
                progress=(lambda e, n, loss, i=i: progress(f"train fold {i}", e, n)) if progress else None,
            )
            result.fit_seconds += time.perf_counter() - start
            model.save(model_dir)  # type: ignore[attr-defined]
        for c in test_cats:
            result.trained_on[c] = sorted(train_cats)
        plan.append((model, list(test_cats)))
    return plan
