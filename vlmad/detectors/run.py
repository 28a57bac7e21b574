"""Run a detector over a manifest: fit per category on its normal training images, then write one
:class:`~vlmad.records.Prediction` and one ``.npy`` map per image of the chosen splits.

Predictions are appended as they are made, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlmad.data.images import load_image
from vlmad.data.maps import save_map
from vlmad.data.predictions import PredictionWriter
from vlmad.records import Manifest, Prediction


def predict_manifest(
    make_detector: Callable[[], Any],
    manifest: Manifest,
    out: str | Path,
    run_id: str,
    splits: Sequence[str] = ("validation", "test"),
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Fit a fresh detector per category and predict ``splits``; returns the predictions file.

    Writes ``<out>/predictions.jsonl`` and ``<out>/maps/<category>/<split>/<sample>.npy``.
    """
    out = Path(out)
    path = out / "predictions.jsonl"
    todo = [s for s in manifest if s.split in splits]
    done = 0
    with PredictionWriter(path, run_id) as writer:
        for category in manifest.categories:
            samples = [s for s in todo if s.category == category and (s.id, None) not in writer.done]
            done += sum(1 for s in todo if s.category == category) - len(samples)
            if not samples:
                continue
            train = [
                s for s in manifest if s.category == category and s.split == "train" and not s.is_anomalous
            ]
            detector = make_detector().fit([load_image(s.image_path) for s in train])
            for s in samples:
                amap = detector.predict_one(load_image(s.image_path))
                map_path = save_map(out / "maps" / category / s.split / f"{s.id.replace('/', '_')}.npy", amap)
                writer.write(
                    Prediction(sample_id=s.id, run_id=run_id, score=float(amap.max()), map_path=map_path)
                )
                done += 1
                if progress:
                    progress(done, len(todo))
    return path
