"""QA items as files: :class:`~vlmad.records.QAItem` JSONL, and hand-written QA in JSONL or CSV.

- :func:`write_items_jsonl` / :func:`read_items_jsonl`: one QAItem per line (``model_dump(mode="json")``),
  a lossless copy of store items (backups, hand-over between machines).
- :func:`read_manual_file`: QA a person wrote in a spreadsheet or editor, with only the fields a person
  knows; it becomes ``source="manual"``, ``status="verified"`` items.

Problems name the file and the 1-based line (:class:`QAImportError`). With ``skip_bad=True`` a bad line is
skipped, the rest is read, and each problem is appended to ``problems`` as ``"<path>:<line>: <problem>"``;
problems with the whole file (missing, unreadable, unknown format, a CSV header without the required
columns) always raise.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vlmad.qa.errors import QAImportError
from vlmad.qa.store import now_iso
from vlmad.records import LABELS, Manifest, QAItem

MANUAL_REQUIRED: tuple[str, ...] = ("sample_id", "question", "answer")  # and verdict or label
MANUAL_OPTIONAL: tuple[str, ...] = (
    "verdict",
    "label",
    "kind",
    "anomaly_type",
    "defect_type",
    "explanation",
    "template_sample_id",
    "id",
    "category",
)
MANUAL_FIELDS: tuple[str, ...] = MANUAL_REQUIRED + MANUAL_OPTIONAL
JSONL_SUFFIXES: tuple[str, ...] = (".jsonl", ".ndjson")
CSV_SUFFIXES: tuple[str, ...] = (".csv",)


def manual_item_id(sample_id: str, kind: str, question: str) -> str:
    """The id a manual item gets when its file gives none: the same sample, kind and question give the same
    id, so importing a file twice yields the same items (the importer can skip or update them)."""
    return hashlib.sha256(f"manual|{sample_id}|{kind}|{question}".encode()).hexdigest()[:32]


def _validation_problem(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


def _report(err: QAImportError, skip_bad: bool, problems: list[str] | None) -> None:
    if not skip_bad:
        raise err
    if problems is not None:
        problems.append(str(err))


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; file-level problems raise QAImportError."""
    if not path.is_file():
        raise QAImportError(path, None, "file not found")
    try:
        with path.open(encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, line
    except UnicodeDecodeError as e:
        raise QAImportError(path, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def _json_line(line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    return row


# ---------------------------------------------------------------------- QAItem JSONL
def read_items_jsonl(
    path: str | Path, *, skip_bad: bool = False, problems: list[str] | None = None
) -> list[QAItem]:
    """All QA items in a JSONL file written by :func:`write_items_jsonl`, in file order.

    A line that is not JSON, not a valid QAItem, or repeats an earlier item id raises
    :class:`QAImportError` with its line number (with ``skip_bad`` it is skipped and reported in
    ``problems``). Blank lines are ignored.
    """
    path = Path(path)
    items: list[QAItem] = []
    seen: dict[str, int] = {}
    for n, line in _lines(path):
        try:
            item = QAItem.model_validate(_json_line(line))
            if item.id in seen:
                raise ValueError(f"repeats item id {item.id} of line {seen[item.id]}")
        except ValidationError as e:
            _report(
                QAImportError(path, n, f"not a valid QA item: {_validation_problem(e)}"), skip_bad, problems
            )
            continue
        except ValueError as e:
            _report(QAImportError(path, n, str(e)), skip_bad, problems)
            continue
        seen[item.id] = n
        items.append(item)
    return items


def _item_line(item: QAItem) -> str:
    row = item.model_dump(mode="json")
    line = json.dumps(row, sort_keys=True, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (model text in metadata or draft.raw): escape it
        line = json.dumps(row, sort_keys=True)
    return line


def write_items_jsonl(path: str | Path, items: Iterable[QAItem]) -> Path:
    """Write ``items`` to ``path``, one JSON object per line, replacing the file atomically; returns the path.

    :func:`read_items_jsonl` reads the file back into equal items.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for item in items:
                f.write(_item_line(item) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------- manual QA
class _ManualRows:
    """Turns rows of a manual QA file into QAItems, checking them against the manifest."""

    def __init__(self, manifest: Manifest | None, author: str | None) -> None:
        self.manifest = manifest
        self.author = author
        self.now = now_iso()
        self.image_ok: dict[str, bool] = {}
        self.seen: dict[str, int] = {}

    def _sample_category(self, sample_id: str, role: str) -> str | None:
        """The sample's category (None without a manifest); ValueError if unknown or its image is gone."""
        if self.manifest is None:
            return None
        try:
            sample = self.manifest.get(sample_id)
        except KeyError:
            raise ValueError(f"{role} {sample_id!r} is not in the manifest") from None
        if sample_id not in self.image_ok:
            self.image_ok[sample_id] = sample.image_path.is_file()
        if not self.image_ok[sample_id]:
            raise ValueError(f"the image of {role} {sample_id!r} no longer exists: {sample.image_path}")
        return sample.category

    def item(self, raw: dict[str, Any], line: int) -> QAItem:
        """The QAItem of one row; ValueError naming the problem."""
        unknown = sorted(set(raw) - set(MANUAL_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown field(s) {', '.join(unknown)}; known fields: {', '.join(MANUAL_FIELDS)}"
            )
        row: dict[str, str] = {}
        for key, value in raw.items():
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"{key} must be text, got {type(value).__name__}")
            value = value.strip()
            if value:
                row[key] = value
        missing = [k for k in MANUAL_REQUIRED if k not in row]
        if "verdict" not in row and "label" not in row:
            missing.append("verdict (or label)")
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")

        verdict = row.get("verdict", "").lower() or None
        anomaly_type = row.get("anomaly_type")
        if verdict is not None and verdict not in ("normal", "anomalous"):
            raise ValueError(f"verdict must be 'normal' or 'anomalous', not {row['verdict']!r}")
        if "label" in row:
            label = row["label"].lower()
            if label not in LABELS:
                raise ValueError(f"label must be one of {', '.join(LABELS)}, not {row['label']!r}")
            from_label = "normal" if label == "good" else "anomalous"
            if verdict is not None and verdict != from_label:
                raise ValueError(f"verdict {verdict!r} contradicts label {label!r}")
            verdict = from_label
            if label != "good":
                if anomaly_type is not None and anomaly_type != label:
                    raise ValueError(f"anomaly_type {anomaly_type!r} contradicts label {label!r}")
                anomaly_type = label
        defect_type = row.get("defect_type")
        if verdict == "normal":
            if anomaly_type is not None:
                raise ValueError(f"anomaly_type {anomaly_type!r} given for a normal verdict")
            if defect_type is not None and defect_type != "good":
                raise ValueError(f"defect_type {defect_type!r} given for a normal verdict")
            defect_type = None

        category = self._sample_category(row["sample_id"], "sample_id")
        if category is None:
            if "category" not in row:
                raise ValueError("missing category (needed when no manifest is given)")
            category = row["category"]
        elif row.get("category", category) != category:
            raise ValueError(f"category {row['category']!r} differs from the manifest's {category!r}")
        if "template_sample_id" in row:
            self._sample_category(row["template_sample_id"], "template_sample_id")

        kind = row.get("kind", "detection")
        item_id = row.get("id") or manual_item_id(row["sample_id"], kind, row["question"])
        if item_id in self.seen:
            raise ValueError(
                f"repeats item {item_id} of line {self.seen[item_id]} (same id, or same question)"
            )
        try:
            item = QAItem.model_validate(
                {
                    "id": item_id,
                    "sample_id": row["sample_id"],
                    "category": category,
                    "kind": kind,
                    "question": row["question"],
                    "answer": row["answer"],
                    "verdict": verdict,
                    "anomaly_type": anomaly_type,
                    "defect_type": defect_type,
                    "explanation": row.get("explanation", ""),
                    "template_sample_id": row.get("template_sample_id"),
                    "source": "manual",
                    "status": "verified",
                    "author": self.author,
                    "created_at": self.now,
                    "updated_at": self.now,
                }
            )
        except ValidationError as e:
            raise ValueError(_validation_problem(e)) from None
        self.seen[item_id] = line
        return item


def manual_item(raw: dict[str, Any], manifest: Manifest | None = None, *, author: str | None) -> QAItem:
    """One hand-written QA item from a dict of :data:`MANUAL_FIELDS` (``vlmad qa add``), checked like a
    line of :func:`read_manual_file`; ``None`` values count as absent. Raises :class:`ConfigError` naming
    the problem."""
    from vlmad.errors import ConfigError

    try:
        return _ManualRows(manifest, author).item({k: v for k, v in raw.items() if v is not None}, 1)
    except ValueError as e:
        raise ConfigError(f"QA item: {e}") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | ValueError]]:
    """CSV records as (first line number, {column: value}); a bad header raises, a bad row gives a
    ValueError in place of the dict. Columns with an empty header (trailing commas) are ignored while
    their cells are empty."""
    if not path.is_file():
        raise QAImportError(path, None, "file not found")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header: list[str] | None = None
            header_line = 0
            end = 0
            for cells in reader:
                start, end = end + 1, reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                if header is None:
                    header = [c.strip().lower() for c in cells]
                    header_line = start
                    _check_header(path, header, header_line)
                    continue
                if len(cells) > len(header):
                    yield start, ValueError(f"has {len(cells)} fields, the header has {len(header)}")
                    continue
                cells = cells + [""] * (len(header) - len(cells))
                if any(not name and cell.strip() for name, cell in zip(header, cells, strict=True)):
                    yield start, ValueError("has a value in a column without a header")
                    continue
                yield start, {name: cell for name, cell in zip(header, cells, strict=True) if name}
            if header is None:
                raise QAImportError(path, None, "empty CSV file (expected a header row and one row per item)")
    except UnicodeDecodeError as e:
        raise QAImportError(path, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise QAImportError(path, end + 1, f"malformed CSV ({e})") from None


def _check_header(path: Path, header: list[str], line: int) -> None:
    dupes = sorted({c for c in header if c and header.count(c) > 1})
    if dupes:
        raise QAImportError(path, line, f"repeated column(s) {', '.join(dupes)}")
    unknown = [c for c in header if c and c not in MANUAL_FIELDS]
    if unknown:
        raise QAImportError(
            path, line, f"unknown column(s) {', '.join(unknown)}; known columns: {', '.join(MANUAL_FIELDS)}"
        )
    missing = [c for c in MANUAL_REQUIRED if c not in header]
    if "verdict" not in header and "label" not in header:
        missing.append("verdict (or label)")
    if missing:
        raise QAImportError(path, line, f"missing column(s) {', '.join(missing)}")


def read_manual_file(
    path: str | Path,
    manifest: Manifest | None = None,
    *,
    author: str | None,
    skip_bad: bool = False,
    problems: list[str] | None = None,
) -> list[QAItem]:
    """Hand-written QA from a JSONL (``.jsonl``/``.ndjson``) or CSV (``.csv``) file, as QAItems in file order.

    Each line (JSONL object, or CSV row under a header) has ``sample_id``, ``question``, ``answer`` and
    ``verdict`` (``normal``/``anomalous``) or ``label`` (``good``/``logical``/``structural``/``anomaly``,
    which also sets ``anomaly_type``), and optionally ``kind`` (default ``detection``), ``anomaly_type``,
    ``defect_type``, ``explanation``, ``template_sample_id``, ``id`` and ``category``; other fields are an
    error (a misspelt column would otherwise be lost). Empty values count as absent. Items get
    ``source="manual"``, ``status="verified"``, ``author``, the current time, and ``id`` from the file or
    else :func:`manual_item_id` (stable across re-imports). A normal verdict carries no anomaly type or
    defect type (``defect_type`` ``good`` is dropped).

    With ``manifest``, ``category`` is taken from the sample (a different one in the file is a problem),
    and a ``sample_id`` or ``template_sample_id`` not in the manifest, or whose image no longer exists on
    disk, is a problem; without it ``category`` is required. A line with a problem raises
    :class:`QAImportError` naming the file and line; with ``skip_bad=True`` it is skipped, the rest read,
    and the problem appended to ``problems``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    rows = _ManualRows(manifest, author)
    items: list[QAItem] = []
    records: Iterator[tuple[int, Any]]
    if suffix in JSONL_SUFFIXES:
        records = _lines(path)
    elif suffix in CSV_SUFFIXES:
        records = _csv_rows(path)
    else:
        raise QAImportError(path, None, f"unknown file type {path.suffix!r}: expected .jsonl or .csv")
    for n, record in records:
        try:
            if isinstance(record, ValueError):
                raise record
            raw = _json_line(record) if isinstance(record, str) else record
            items.append(rows.item(raw, n))
        except ValueError as e:
            _report(QAImportError(path, n, str(e)), skip_bad, problems)
    return items
