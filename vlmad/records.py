"""The record types shared by every vlmad stage, each defined once.

- :class:`Sample`: one image of a dataset with its ground truth.
- :class:`DefectConfig`: one entry of an MVTec LOCO ``defects_config.json`` (pixel value and sPRO saturation).
- :class:`DatasetInfo`: what a manifest was read from.
- :class:`Manifest`: a dataset as a list of samples plus its info; saved and loaded as JSONL or parquet.
- :class:`Prediction`: what any method says about one sample (score, verdict, anomaly map, explanation);
  stored as JSONL by :mod:`vlmad.data.predictions`.
- :class:`QAItem`: one question-answer annotation of one image (manual, from a template, or drafted by a
  model), with its review status and provenance; stored by :mod:`vlmad.qa.store`.

In memory, ``Sample.image_path`` and ``Sample.mask_paths`` are absolute paths. On disk a manifest stores
them relative to ``DatasetInfo.root`` (POSIX separators), and the root relative to the manifest file, so
that a folder holding the dataset and its manifest can be moved as a whole; paths outside the root are
stored absolute.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vlmad.errors import DatasetError

Split = Literal["train", "validation", "test"]
Label = Literal["good", "logical", "structural", "anomaly"]
Layout = Literal["mvtec_ad", "mvtec_loco", "visa", "folder", "manifest"]
Verdict = Literal["normal", "anomalous", "unparsed"]
QAKind = Literal["detection", "defect_type", "location", "description", "template_comparison"]
QASource = Literal["manual", "template", "gpt-draft"]
QAStatus = Literal["draft", "verified", "edited", "rejected", "failed"]
AnomalyType = Literal["logical", "structural", "anomaly"]

SPLITS: tuple[str, ...] = ("train", "validation", "test")
QA_KINDS: tuple[str, ...] = ("detection", "defect_type", "location", "description", "template_comparison")
QA_SOURCES: tuple[str, ...] = ("manual", "template", "gpt-draft")
QA_STATUSES: tuple[str, ...] = ("draft", "verified", "edited", "rejected", "failed")
# items a training export takes by default: a person wrote or checked them, or they come from ground truth
QA_TRUSTED_STATUSES: tuple[str, ...] = ("verified", "edited")
QA_TRUSTED_SOURCES: tuple[str, ...] = ("manual", "template")
LABELS: tuple[str, ...] = ("good", "logical", "structural", "anomaly")
MANIFEST_FORMAT_VERSION = 1


class Sample(BaseModel):
    """One image with its ground truth.

    ``label`` is ``good`` for normal images, ``logical`` / ``structural`` for MVTec LOCO style anomalies and
    ``anomaly`` where a dataset does not say which. ``defect_type`` is ``good`` for normal images and the
    dataset's defect name otherwise (``None`` when unknown). ``mask_paths`` holds zero or more masks; a pixel
    is defective where any mask is non-zero.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    image_path: Path
    category: str
    split: Split
    label: Label
    defect_type: str | None = None
    mask_paths: tuple[Path, ...] = ()
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_anomalous(self) -> bool:
        """True for every label except ``good``."""
        return self.label != "good"


class DefectConfig(BaseModel):
    """One defect type of a category, as in MVTec LOCO's ``defects_config.json``.

    sPRO saturates a region's overlap at ``saturation_threshold * |region|`` when ``relative_saturation`` is
    true, else at ``min(saturation_threshold, |region|)`` pixels.
    """

    model_config = ConfigDict(frozen=True)

    defect_name: str
    pixel_value: int = Field(ge=1, le=255)
    saturation_threshold: float = Field(gt=0)
    relative_saturation: bool


class Prediction(BaseModel):
    """One method's output for one sample (and, for question-answering methods, one question).

    ``run_id`` names the method or run. ``score`` is an anomaly score (higher = more anomalous), ``None``
    for verdict-only methods. ``verdict`` is ``normal`` / ``anomalous``, ``unparsed`` when the method
    answered but no verdict could be read from it, and ``None`` when the method gives no verdict.
    ``map_path`` points to an anomaly map (``.npy`` float32, ``.tiff`` or ``.png``); in a predictions
    file it is stored relative to that file. ``explanation`` is model text: untrusted, escape it before
    rendering. ``question_id`` tells apart several predictions on one image (several questions).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sample_id: str
    run_id: str
    score: float | None = None
    verdict: Verdict | None = None
    map_path: Path | None = None
    explanation: str | None = None
    question_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("score")
    @classmethod
    def _finite_score(cls, v: float | None) -> float | None:
        if v is not None and math.isnan(v):
            raise ValueError("score is NaN")
        return v

    @field_validator("explanation")
    @classmethod
    def _encodable(cls, v: str | None) -> str | None:
        # model output may hold lone surrogates that no UTF-8 file can store; replace them, keep the rest
        return None if v is None else v.encode("utf-8", errors="replace").decode("utf-8")

    @property
    def key(self) -> tuple[str, str | None]:
        """``(sample_id, question_id)``: unique within one run."""
        return (self.sample_id, self.question_id)


class DraftInfo(BaseModel):
    """Provenance of a model-drafted QA item: which model and prompt, what it cost, what went wrong.

    ``raw`` keeps the model's text when it could not be parsed (status ``failed``); ``error`` says why.
    ``cost_usd`` is ``None`` when no price is known for the model. Never holds an API key.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    prompt_name: str
    prompt_version: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    attempts: int = 1
    cached: bool = False
    raw: str | None = None
    error: str | None = None


class QAItem(BaseModel):
    """One question-answer annotation of one image.

    - ``id``: unique in a store; template items get a deterministic id (same sample, kind and phrasing give
      the same id) so rebuilding them is idempotent; other items get a random hex id.
    - ``sample_id`` / ``category``: the image (a :class:`Sample` id) and its category.
    - ``template_sample_id``: the normal reference image the question compares against (chain-of-image
      ``template_comparison`` items and drafts made with a template), else ``None``.
    - ``kind``: detection, defect type, location, description or template comparison.
    - ``question`` / ``answer``: the text as asked and as the model should reply (the training target).
    - ``verdict`` / ``anomaly_type`` / ``defect_type``: the answer in structured form. ``verdict`` is
      ``normal`` or ``anomalous``; ``anomaly_type`` (logical / structural / anomaly) and ``defect_type``
      are ``None`` for normal answers. ``verdict`` is ``None`` only for ``failed`` drafts.
    - ``explanation``: what is wrong and where ("" for normal images). Model text is untrusted: escape it.
    - ``source``: ``manual``, ``template`` or ``gpt-draft``; ``status``: ``draft`` / ``verified`` /
      ``edited`` / ``rejected``, or ``failed`` for a draft whose reply could not be used (see ``draft``).
    - ``author`` wrote it (a person, ``template``, or the drafting model's name); ``reviewer`` decided on it.
    - ``created_at`` / ``updated_at``: ISO 8601 UTC timestamps.
    - ``draft``: provenance for ``gpt-draft`` items, ``None`` otherwise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    sample_id: str
    category: str
    kind: QAKind
    question: str
    answer: str
    verdict: Literal["normal", "anomalous"] | None
    anomaly_type: AnomalyType | None = None
    defect_type: str | None = None
    explanation: str = ""
    template_sample_id: str | None = None
    source: QASource
    status: QAStatus
    author: str | None = None
    reviewer: str | None = None
    created_at: str
    updated_at: str
    draft: DraftInfo | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("question", "answer", "explanation")
    @classmethod
    def _text(cls, v: str) -> str:
        # model output may hold lone surrogates that no UTF-8 file or SQLite text can store
        return v.encode("utf-8", errors="replace").decode("utf-8")

    @property
    def trusted(self) -> bool:
        """True when a person wrote or checked it, or it comes from ground truth: exported by default."""
        if self.status in ("rejected", "failed"):
            return False
        return self.source in QA_TRUSTED_SOURCES or self.status in QA_TRUSTED_STATUSES


class DatasetInfo(BaseModel):
    """Where a manifest came from: layout, root folder, categories and per-category defect configs."""

    model_config = ConfigDict(extra="forbid")

    name: str
    layout: Layout
    root: Path
    categories: list[str] = Field(default_factory=list)
    defects: dict[str, list[DefectConfig]] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _abs(path: str, root: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


class Manifest:
    """A dataset: its :class:`DatasetInfo` and an ordered list of :class:`Sample` with unique ids."""

    def __init__(self, info: DatasetInfo, samples: Iterable[Sample]) -> None:
        self.info = info
        self.samples: list[Sample] = list(samples)
        self._index: dict[str, int] = {}
        for i, s in enumerate(self.samples):
            if s.id in self._index:
                raise DatasetError(info.root, f"duplicate sample id {s.id!r}")
            self._index[s.id] = i

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def categories(self) -> list[str]:
        """Categories in order of first appearance."""
        return list(dict.fromkeys(s.category for s in self.samples))

    def get(self, sample_id: str) -> Sample:
        """The sample with this id; ``KeyError`` if there is none."""
        i = self._index.get(sample_id)
        if i is None or i >= len(self.samples) or self.samples[i].id != sample_id:
            # the list was changed in place since construction: rebuild the index once
            self._index = {s.id: k for k, s in enumerate(self.samples)}
            i = self._index[sample_id]
        return self.samples[i]

    def filter(
        self,
        *,
        category: str | Iterable[str] | None = None,
        split: str | Iterable[str] | None = None,
        label: str | Iterable[str] | None = None,
    ) -> Manifest:
        """A new manifest with the samples that match every given criterion (a value or a set of values)."""

        def as_set(v: str | Iterable[str] | None) -> set[str] | None:
            return None if v is None else ({v} if isinstance(v, str) else set(v))

        cats, splits, labels = as_set(category), as_set(split), as_set(label)
        kept = [
            s
            for s in self.samples
            if (cats is None or s.category in cats)
            and (splits is None or s.split in splits)
            and (labels is None or s.label in labels)
        ]
        return Manifest(self.info, kept)

    def counts(self, *keys: str) -> Counter[tuple[Any, ...]]:
        """Counts of samples per combination of the given attributes, e.g. ``counts("category", "label")``."""
        return Counter(tuple(getattr(s, k) for k in keys) for s in self.samples)

    # ------------------------------------------------------------------ serialisation
    def _sample_row(self, s: Sample) -> dict[str, Any]:
        row = s.model_dump(mode="json")
        row["image_path"] = _rel(s.image_path, self.info.root)
        row["mask_paths"] = [_rel(m, self.info.root) for m in s.mask_paths]
        return row

    def _header(self, path: Path | None = None) -> dict[str, Any]:
        info = self.info.model_dump(mode="json")
        if path is not None:
            # Root relative to the manifest file, so a folder holding both can be moved as a whole.
            info["root"] = os.path.relpath(self.info.root.absolute(), path.parent.absolute())
        return {"vlmad": "manifest", "version": MANIFEST_FORMAT_VERSION, "info": info}

    def save(self, path: str | Path) -> Path:
        """Write the manifest to ``path`` (``.jsonl`` or ``.parquet``), atomically; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            rows = [self._sample_row(s) for s in self.samples]
            for r in rows:
                r["metadata"] = json.dumps(r["metadata"], sort_keys=True)
            table = pa.Table.from_pylist(
                rows,
                schema=pa.schema(
                    [
                        ("id", pa.string()),
                        ("image_path", pa.string()),
                        ("category", pa.string()),
                        ("split", pa.string()),
                        ("label", pa.string()),
                        ("defect_type", pa.string()),
                        ("mask_paths", pa.list_(pa.string())),
                        ("metadata", pa.string()),
                    ]
                ),
            )
            table = table.replace_schema_metadata({"vlmad": json.dumps(self._header(path))})
            pq.write_table(table, tmp)
        else:
            with tmp.open("w", encoding="utf-8") as f:
                f.write(json.dumps(self._header(path), sort_keys=True) + "\n")
                for s in self.samples:
                    f.write(json.dumps(self._sample_row(s), sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read a manifest written by :meth:`save`. Raises :class:`DatasetError` naming the file and line."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(path, "manifest file not found")
        if path.suffix == ".parquet":
            return cls._load_parquet(path)
        with path.open(encoding="utf-8") as f:
            lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
        if not lines:
            raise DatasetError(path, "empty manifest (expected a header line and one sample per line)")
        try:
            header = json.loads(lines[0][1])
        except json.JSONDecodeError as e:
            raise DatasetError(path, f"line 1 is not JSON ({e.msg})") from None
        info = cls._parse_header(path, header)
        samples = []
        for n, line in lines[1:]:
            try:
                samples.append(cls._parse_row(json.loads(line), info.root))
            except json.JSONDecodeError as e:
                raise DatasetError(path, f"line {n} is not JSON ({e.msg})") from None
            except ValidationError as e:
                raise DatasetError(path, f"line {n} is not a valid sample: {_first_error(e)}") from None
        return cls(info, samples)

    @classmethod
    def _load_parquet(cls, path: Path) -> Manifest:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several unrelated types for a bad file
            raise DatasetError(path, f"not a readable parquet file ({e})") from None
        meta = table.schema.metadata or {}
        if b"vlmad" not in meta:
            raise DatasetError(path, "parquet file has no vlmad manifest header")
        info = cls._parse_header(path, json.loads(meta[b"vlmad"]))
        samples = []
        for n, row in enumerate(table.to_pylist(), 1):
            row["metadata"] = json.loads(row["metadata"] or "{}")
            try:
                samples.append(cls._parse_row(row, info.root))
            except ValidationError as e:
                raise DatasetError(path, f"row {n} is not a valid sample: {_first_error(e)}") from None
        return cls(info, samples)

    @staticmethod
    def _parse_header(path: Path, header: Any) -> DatasetInfo:
        if not isinstance(header, dict) or header.get("vlmad") != "manifest":
            raise DatasetError(path, "not a vlmad manifest (first line lacks the manifest header)")
        if header.get("version", 0) > MANIFEST_FORMAT_VERSION:
            raise DatasetError(path, f"manifest version {header['version']} is newer than this vlmad reads")
        try:
            info = DatasetInfo.model_validate(header["info"])
        except (KeyError, ValidationError) as e:
            detail = _first_error(e) if isinstance(e, ValidationError) else "missing info"
            raise DatasetError(path, f"bad manifest header: {detail}") from None
        if not info.root.is_absolute():
            info.root = (path.parent / info.root).resolve()
        return info

    @staticmethod
    def _parse_row(row: dict[str, Any], root: Path) -> Sample:
        row = dict(row)
        row["image_path"] = _abs(row["image_path"], root)
        row["mask_paths"] = tuple(_abs(m, root) for m in row.get("mask_paths") or ())
        return Sample.model_validate(row)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    return f"{loc}: {err['msg']}"
