"""Training exports of QA items: LLaVA JSON, messages + images JSONL and a Hugging Face ``DatasetDict``.

One record per (split side, test image): the image's kept QA items in order as conversation turns, with
two images, the normal template first and the test image second (:data:`ROLE_ORDER`). The first user turn
starts with :func:`prompt_with_images`, which labels each image's role in the text; later turns hold only
the question. Files under ``out_dir``:

- ``llava/{split}.json``: ``[{"id", "image": [template, test], "conversations": [{"from": "human",
  "value": ...}, {"from": "gpt", "value": ...}, ...]}]``, the LLaVA training format, multi-image form; the
  first human turn holds one ``<image>`` token per image.
- ``messages/{split}.jsonl``: one ``{"messages": [{"role": "user"|"assistant", "content": ...}, ...],
  "images": [template, test], "id", "sample_id", "template_sample_id", "category", "label"}`` per line, the
  sharegpt-style multimodal format of LLaMA-Factory (also read by ms-swift and TRL, which ignore the extra
  keys); ``messages/dataset_info.json`` registers the three files for LLaMA-Factory.
- ``hf/``: a ``datasets.DatasetDict`` (``save_to_disk``) with columns ``id``, ``sample_id``,
  ``template_sample_id``, ``category``, ``label``, ``defect_type``, ``split``, ``images`` (the image files
  embedded, template then test), ``messages`` and ``qa_ids``; read it with ``datasets.load_from_disk``.
- ``export.json``: settings (image root, role order, formats, drafts, seed, the split's settings and
  strata) and counts.

Image paths are relative to ``manifest.info.root`` (recorded as ``image_root``) unless ``absolute_paths``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmad.errors import ConfigError, DatasetError
from vlmad.qa.split import QASplit
from vlmad.records import QA_KINDS, QA_SOURCES, SPLITS, Manifest, QAItem, Sample

ROLE_ORDER: tuple[str, ...] = ("template", "test")
FORMATS: tuple[str, ...] = ("llava", "messages", "hf")
IMAGE_TOKEN = "<image>"
EXPORT_FORMAT_VERSION = 1
_ROLE_LABELS = {"template": "Template image (normal reference)", "test": "Test image"}


def prompt_with_images(question: str, n_images: int = 2) -> str:
    """The first user turn: one labelled ``<image>`` line per image in :data:`ROLE_ORDER`, then the question.

    ``n_images=2``: ``"Template image (normal reference): <image>\\nTest image: <image>\\n{question}"``;
    ``n_images=1``: ``"Test image: <image>\\n{question}"``. Other counts -> :class:`ConfigError`.
    """
    if n_images == 2:
        roles: Sequence[str] = ROLE_ORDER
    elif n_images == 1:
        roles = ("test",)
    else:
        raise ConfigError(f"a QA record has 1 (test) or 2 (template, test) images, not {n_images}")
    lines = [f"{_ROLE_LABELS[r]}: {IMAGE_TOKEN}" for r in roles]
    return "\n".join([*lines, question])


@dataclass(frozen=True)
class ExportRecord:
    """One exported conversation: a test image, its template and the QA items that form its turns."""

    id: str
    split: str
    sample: Sample
    template: Sample
    items: tuple[QAItem, ...]

    def turns(self) -> list[tuple[str, str]]:
        """``(question, answer)`` pairs, the first question prefixed by :func:`prompt_with_images`."""
        out = [(it.question, it.answer) for it in self.items]
        out[0] = (prompt_with_images(out[0][0]), out[0][1])
        return out


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_dataset` wrote.

    ``counts``: per split side, ``{"images": distinct test images, "records": conversations,
    "turns": question-answer pairs}``; ``files``: every file or folder written; ``skipped``: items left
    out, per reason (``untrusted``, ``not_in_manifest``, ``duplicate``).
    """

    out_dir: Path
    counts: dict[str, dict[str, int]]
    files: list[Path]
    skipped: dict[str, int] = field(default_factory=dict)


def _kept(item: QAItem, include_drafts: bool) -> bool:
    if item.status in ("rejected", "failed") or item.verdict is None:
        return False
    return item.trusted or (include_drafts and item.status == "draft")


def _order(item: QAItem) -> tuple[Any, ...]:
    kind = QA_KINDS.index(item.kind) if item.kind in QA_KINDS else len(QA_KINDS)
    source = QA_SOURCES.index(item.source) if item.source in QA_SOURCES else len(QA_SOURCES)
    variant = item.metadata.get("variant") if isinstance(item.metadata.get("variant"), int) else 0
    return (kind, source, variant, item.created_at, item.id)


def build_records(
    items: Iterable[QAItem],
    manifest: Manifest,
    split: QASplit,
    *,
    templates: dict[str, str],
    include_drafts: bool = False,
    skipped: dict[str, int] | None = None,
) -> list[ExportRecord]:
    """Group the kept items into records, ordered by split side, then manifest order.

    Kept: trusted items (manual, template, verified, edited), plus ``draft`` items with ``include_drafts``;
    never rejected or failed ones. Items of samples not in ``manifest`` are left out; so are repeats of a
    (question, answer) pair within a record. Counts of items left out are added to ``skipped``.

    An item's template is its ``template_sample_id`` when set, else ``templates[sample_id]``; items of one
    image with different templates form separate records (id ``"{sample_id}@{template_id}"`` for all but
    the default template's). Raises :class:`ConfigError` when a sample has no template or no side in
    ``split``, or a template id is not in ``manifest``.
    """
    skipped = skipped if skipped is not None else {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    groups: dict[tuple[str, str], list[QAItem]] = {}
    for it in items:
        if not _kept(it, include_drafts):
            skip("untrusted")
            continue
        try:
            manifest.get(it.sample_id)
        except KeyError:
            skip("not_in_manifest")
            continue
        tid = it.template_sample_id or templates.get(it.sample_id)
        if tid is None:
            raise ConfigError(f"sample {it.sample_id!r} has no template image: choose templates for it first")
        groups.setdefault((it.sample_id, tid), []).append(it)

    default: dict[str, str] = {}
    for sid, tid in groups:
        default.setdefault(sid, templates.get(sid) or tid)
    side_order = {s: i for i, s in enumerate(SPLITS)}
    position = {s.id: i for i, s in enumerate(manifest)}
    records: list[ExportRecord] = []
    for (sid, tid), group in groups.items():
        part = split.assignment.get(sid)
        if part is None:
            raise ConfigError(f"sample {sid!r} has no side in the split: make the split from this manifest")
        try:
            template = manifest.get(tid)
        except KeyError:
            raise ConfigError(f"template {tid!r} of sample {sid!r} is not in the manifest") from None
        seen: set[tuple[str, str]] = set()
        kept: list[QAItem] = []
        for it in sorted(group, key=_order):
            if (it.question, it.answer) in seen:
                skip("duplicate")
                continue
            seen.add((it.question, it.answer))
            kept.append(it)
        rid = sid if tid == default[sid] else f"{sid}@{tid}"
        records.append(ExportRecord(rid, part, manifest.get(sid), template, tuple(kept)))
    records.sort(key=lambda r: (side_order.get(r.split, len(SPLITS)), position[r.sample.id], r.id))
    return records


def _image_path(path: Path, root: Path, absolute: bool) -> str:
    if absolute:
        return str(path.absolute())
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path.absolute())


def _check_images(records: list[ExportRecord]) -> None:
    """Raise :class:`DatasetError` for the first image file that is missing, saying what it is used as."""
    uses: dict[Path, list[str]] = {}
    for r in records:
        uses.setdefault(r.template.image_path, []).append(f"template image of {r.sample.id}")
        uses.setdefault(r.sample.image_path, []).insert(0, f"image of {r.sample.id}")
    for path, what in uses.items():
        if not path.is_file():
            more = f" and {len(what) - 2} more" if len(what) > 2 else ""
            raise DatasetError(path, f"{', '.join(what[:2])}{more}: file not found; nothing was exported")


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _llava(r: ExportRecord, images: list[str]) -> dict[str, Any]:
    conv: list[dict[str, str]] = []
    for q, a in r.turns():
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return {"id": r.id, "image": images, "conversations": conv}


def _messages(r: ExportRecord) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for q, a in r.turns():
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


def _ids(r: ExportRecord) -> dict[str, Any]:
    """What a trainer needs to validate per label: extra keys the readers of the format ignore."""
    return {
        "id": r.id,
        "sample_id": r.sample.id,
        "template_sample_id": r.template.id,
        "category": r.sample.category,
        "label": r.sample.label,
    }


def _write_hf(records: list[ExportRecord], root: Path, absolute: bool, out: Path) -> Path:
    import datasets

    seq = getattr(datasets, "List", None) or datasets.Sequence
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "sample_id": datasets.Value("string"),
            "template_sample_id": datasets.Value("string"),
            "category": datasets.Value("string"),
            "label": datasets.Value("string"),
            "defect_type": datasets.Value("string"),
            "split": datasets.Value("string"),
            "images": seq(datasets.Image()),
            "messages": seq({"role": datasets.Value("string"), "content": datasets.Value("string")}),
            "qa_ids": seq(datasets.Value("string")),
        }
    )
    parts = {}
    for side in SPLITS:
        rows: dict[str, list[Any]] = {k: [] for k in features}
        for r in records:
            if r.split != side:
                continue
            rows["id"].append(r.id)
            rows["sample_id"].append(r.sample.id)
            rows["template_sample_id"].append(r.template.id)
            rows["category"].append(r.sample.category)
            rows["label"].append(r.sample.label)
            rows["defect_type"].append(r.sample.defect_type)
            rows["split"].append(side)
            rows["images"].append(
                [
                    {"bytes": s.image_path.read_bytes(), "path": _image_path(s.image_path, root, absolute)}
                    for s in (r.template, r.sample)
                ]
            )
            rows["messages"].append(_messages(r))
            rows["qa_ids"].append([it.id for it in r.items])
        parts[side] = datasets.Dataset.from_dict(rows, features=features)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the library never prints
    try:
        datasets.DatasetDict(parts).save_to_disk(str(tmp))
    finally:
        if bars:
            datasets.enable_progress_bars()
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def export_dataset(
    items: Iterable[QAItem],
    manifest: Manifest,
    split: QASplit,
    out_dir: str | Path,
    *,
    templates: dict[str, str],
    formats: Sequence[str] = FORMATS,
    include_drafts: bool = False,
    absolute_paths: bool = False,
) -> ExportResult:
    """Write the QA training exports of ``items`` under ``out_dir`` (see the module docstring).

    Records come from :func:`build_records` (kept items only, sides from ``split``, template from the
    item or ``templates``). Every image and template file is checked first: a missing one raises
    :class:`DatasetError` naming the file and nothing is written; so does an ``out_dir/hf`` that holds
    something other than an earlier export. Each split side gets a file in each
    format, empty when it has no record. An unknown or empty ``formats`` -> :class:`ConfigError`.
    Existing export files in ``out_dir`` are replaced.
    """
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"export formats {list(formats)}: choose from {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    root = manifest.info.root
    skipped: dict[str, int] = {}
    records = build_records(
        items, manifest, split, templates=templates, include_drafts=include_drafts, skipped=skipped
    )
    _check_images(records)
    hf_dir = out_dir / "hf"
    foreign = hf_dir.exists() and (
        not hf_dir.is_dir() or (any(hf_dir.iterdir()) and not (hf_dir / "dataset_dict.json").is_file())
    )
    if "hf" in formats and foreign:
        raise DatasetError(hf_dir, "exists and is not an earlier export's dataset; move it away first")

    def paths(r: ExportRecord) -> list[str]:
        return [_image_path(s.image_path, root, absolute_paths) for s in (r.template, r.sample)]

    counts: dict[str, dict[str, int]] = {}
    for side in SPLITS:
        mine = [r for r in records if r.split == side]
        counts[side] = {
            "images": len({r.sample.id for r in mine}),
            "records": len(mine),
            "turns": sum(len(r.items) for r in mine),
        }

    files: list[Path] = []
    if "llava" in formats:
        for side in SPLITS:
            rows = [_llava(r, paths(r)) for r in records if r.split == side]
            files.append(_write_text(out_dir / "llava" / f"{side}.json", json.dumps(rows, indent=1) + "\n"))
    if "messages" in formats:
        info = {}
        for side in SPLITS:
            lines = [
                json.dumps({"messages": _messages(r), "images": paths(r), **_ids(r)}, ensure_ascii=False)
                + "\n"
                for r in records
                if r.split == side
            ]
            files.append(_write_text(out_dir / "messages" / f"{side}.jsonl", "".join(lines)))
            info[f"vlmad_{side}"] = {
                "file_name": f"{side}.jsonl",
                "formatting": "sharegpt",
                "columns": {"messages": "messages", "images": "images"},
                "tags": {
                    "role_tag": "role",
                    "content_tag": "content",
                    "user_tag": "user",
                    "assistant_tag": "assistant",
                },
            }
        files.append(
            _write_text(out_dir / "messages" / "dataset_info.json", json.dumps(info, indent=2) + "\n")
        )
    if "hf" in formats:
        files.append(_write_hf(records, root, absolute_paths, hf_dir))

    by_source: dict[str, int] = {}
    for r in records:
        for it in r.items:
            by_source[it.source] = by_source.get(it.source, 0) + 1
    meta = {
        "vlmad": "qa_export",
        "version": EXPORT_FORMAT_VERSION,
        "image_root": None if absolute_paths else str(root),
        "absolute_paths": absolute_paths,
        "role_order": list(ROLE_ORDER),
        "first_turn": prompt_with_images("{question}"),
        "formats": list(formats),
        "include_drafts": include_drafts,
        "seed": split.seed,
        "split": split.to_dict(),
        "counts": counts,
        "records_per_format": {f: {side: counts[side]["records"] for side in SPLITS} for f in formats},
        "items": {"exported": sum(by_source.values()), "by_source": by_source, "skipped": skipped},
        "files": [p.relative_to(out_dir).as_posix() for p in files],
    }
    files.append(_write_text(out_dir / "export.json", json.dumps(meta, indent=2) + "\n"))
    return ExportResult(out_dir=out_dir, counts=counts, files=files, skipped=skipped)
