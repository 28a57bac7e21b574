"""Predictions files: one :class:`~vlmad.records.Prediction` per JSONL line, written incrementally.

A long run appends one line per finished item and flushes it, so a crash loses at most the line being
written; :class:`PredictionWriter` reopens such a file, drops a torn last line and tells the caller
which items are already done, so the run resumes instead of starting over. ``map_path`` is stored
relative to the predictions file, so a run folder can be moved as a whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from pydantic import ValidationError

from vlmad.errors import DatasetError
from vlmad.records import Prediction


def _row(pred: Prediction, base: Path) -> str:
    row = pred.model_dump(mode="json", exclude_none=True)
    if pred.map_path is not None:
        p = pred.map_path if pred.map_path.is_absolute() else pred.map_path.absolute()
        row["map_path"] = Path(os.path.relpath(p, base.absolute())).as_posix()
    if not row.get("metadata"):
        row.pop("metadata", None)
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def read_predictions(path: str | Path) -> list[Prediction]:
    """All predictions in ``path``, with ``map_path`` made absolute.

    Raises :class:`DatasetError` naming the file and line for a line that is not JSON or not a valid
    prediction, and for two predictions with the same ``(run_id, sample_id, question_id)``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "predictions file not found")
    preds: list[Prediction] = []
    seen: dict[tuple[str, str, str | None], int] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                pred = Prediction.model_validate(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(path, f"line {n} is not JSON ({e.msg})") from None
            except ValidationError as e:
                err = e.errors()[0]
                loc = ".".join(str(x) for x in err["loc"])
                raise DatasetError(path, f"line {n} is not a valid prediction: {loc}: {err['msg']}") from None
            key = (pred.run_id, *pred.key)
            if key in seen:
                raise DatasetError(path, f"line {n} repeats the prediction on line {seen[key]} ({key})")
            seen[key] = n
            if pred.map_path is not None and not pred.map_path.is_absolute():
                pred = pred.model_copy(update={"map_path": (path.parent / pred.map_path).resolve()})
            preds.append(pred)
    return preds


def write_predictions(path: str | Path, predictions: Iterable[Prediction]) -> Path:
    """Write ``predictions`` to a new file at ``path`` (replacing it atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for p in predictions:
                f.write(_row(p, path.parent) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class PredictionWriter:
    """Append predictions to ``path`` one line at a time, resuming a file an earlier run left behind.

    ``done`` holds the ``(sample_id, question_id)`` keys of ``run_id`` already in the file; skip them.
    A last line without its newline (the process died while writing it) is cut off on open.
    """

    def __init__(self, path: str | Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dropped_partial_line = False
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with self.path.open("r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
                self.dropped_partial_line = True
            self.done: set[tuple[str, str | None]] = {
                p.key for p in read_predictions(self.path) if p.run_id == run_id
            }
        else:
            self.done = set()
        self._f = self.path.open("a", encoding="utf-8")

    def write(self, pred: Prediction) -> None:
        """Append one prediction and flush it to disk; a key already written is an error."""
        if pred.run_id != self.run_id:
            raise ValueError(f"prediction for run {pred.run_id!r} written to run {self.run_id!r}")
        if pred.key in self.done:
            raise ValueError(f"{self.path}: prediction for {pred.key} already written")
        self._f.write(_row(pred, self.path.parent) + "\n")
        self._f.flush()
        self.done.add(pred.key)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
