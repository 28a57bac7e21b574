"""Readers that turn a dataset on disk into a :class:`~vlmad.records.Manifest`.

Layouts (``PATH`` may be the dataset root holding category folders, or one category folder):

- ``mvtec_ad``: ``<cat>/train/good/*.png``, ``<cat>/test/<defect>/*.png``,
  ``<cat>/ground_truth/<defect>/<stem>_mask.png``.
- ``mvtec_loco``: ``<cat>/{train,validation}/good``, ``<cat>/test/{good,logical_anomalies,
  structural_anomalies}/NNN.png``, ``<cat>/ground_truth/<type>/NNN/000.png[,001.png...]`` (one PNG per
  defect region, its non-zero value names the defect type through ``<cat>/defects_config.json``).
  A ``descriptions.jsonl`` beside the categories (written by vlmad's generator) adds each image's reference
  description to ``Sample.metadata``.
- ``visa``: ``split_csv/1cls.csv`` with columns ``object,split,label,image,mask`` (paths relative to the
  root); ``<cat>/image_anno.csv`` adds defect names when present.
- ``folder``: ``<cat>/[<split>/]<class>/*.png`` where ``<class>`` is ``good`` (also ``normal``, ``ok``) for
  normal images and a defect name otherwise; optional masks in ``<cat>/[<split>/]masks/<class>/<stem>.png``
  (or ``<stem>_mask.png``). Without a split level every image is a test image.

Problems found while reading (a missing mask, a path leaving the dataset root, a bad CSV row) raise
:class:`~vlmad.errors.DatasetError` naming the file, or, when a ``problems`` list is passed, are appended
there and the sample is skipped, so ``vlmad data validate`` can report every problem in one run.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

from vlmad.data.images import Problem, is_image_file, mask_values
from vlmad.errors import DatasetError
from vlmad.records import DatasetInfo, DefectConfig, Layout, Manifest, Sample

LOCO_TEST_DIRS = {"good": "good", "logical_anomalies": "logical", "structural_anomalies": "structural"}
NORMAL_NAMES = {"good", "normal", "ok"}
DESCRIPTIONS_FILE = "descriptions.jsonl"

_LAYOUT_HELP = (
    "expected one of: MVTec AD (<category>/train/good, <category>/test/<defect>), MVTec LOCO AD "
    "(<category>/train/good, validation/good, test/logical_anomalies...), VisA (split_csv/1cls.csv), "
    "a plain folder (<category>/good/*.png, <category>/<defect>/*.png) or a manifest .jsonl/.parquet"
)


class _Reporter:
    """Raise on the first problem, or collect problems when the caller passed a list."""

    def __init__(self, problems: list[Problem] | None) -> None:
        self.problems = problems

    def __call__(self, path: Path, message: str, severity: str = "error") -> None:
        if self.problems is None:
            if severity == "error":
                raise DatasetError(path, message)
            return
        self.problems.append(Problem(path, message, severity))  # type: ignore[arg-type]


def _read_text(path: Path) -> str:
    """A text file's content as UTF-8; DatasetError naming the file when it cannot be read or decoded."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(path, f"not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise DatasetError(path, f"cannot read ({e.strerror or e})") from None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []


def is_inside(path: Path, root: Path) -> bool:
    """True when ``path`` (after resolving symlinks and ``..``) lies inside ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _category_dirs(root: Path, is_category: Callable[[Path], bool]) -> list[Path]:
    """``[root]`` when root is itself a category, else its sub-folders that are categories."""
    if is_category(root):
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and is_category(d))


def _rel_id(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


# ---------------------------------------------------------------------------- MVTec AD
def _is_mvtec_ad(d: Path) -> bool:
    return (d / "train" / "good").is_dir() and (d / "test").is_dir()


def read_mvtec_ad(root: str | Path, problems: list[Problem] | None = None) -> Manifest:
    """Read an MVTec AD style dataset (one category folder or a folder of categories)."""
    root = Path(root)
    report = _Reporter(problems)
    cats = _category_dirs(root, _is_mvtec_ad)
    if not cats:
        raise DatasetError(root, f"no MVTec AD category found ({_LAYOUT_HELP})")
    base = root.parent if cats == [root] else root
    samples: list[Sample] = []
    for cat in cats:
        for img in _images(cat / "train" / "good"):
            samples.append(_sample(img, base, cat.name, "train", "good", "good", ()))
        test = cat / "test"
        for d in sorted(p for p in test.iterdir() if p.is_dir()):
            for img in _images(d):
                if d.name == "good":
                    samples.append(_sample(img, base, cat.name, "test", "good", "good", ()))
                    continue
                mask = cat / "ground_truth" / d.name / f"{img.stem}_mask.png"
                if not mask.is_file():
                    report(mask, f"missing ground-truth mask for {img.relative_to(base)}")
                    if problems is not None:
                        continue
                samples.append(_sample(img, base, cat.name, "test", "anomaly", d.name, (mask,)))
    return Manifest(_info(root, base, "mvtec_ad", [c.name for c in cats]), samples)


# ---------------------------------------------------------------------------- MVTec LOCO AD
def _is_loco(d: Path) -> bool:
    return (d / "train" / "good").is_dir() and (
        (d / "validation").is_dir()
        or (d / "defects_config.json").is_file()
        or (d / "test" / "logical_anomalies").is_dir()
    )


def read_defects_config(path: Path) -> list[DefectConfig]:
    """Parse a LOCO ``defects_config.json`` (a list of defect entries); DatasetError names the problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(path, f"not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DatasetError(path, "expected a JSON list of {defect_name, pixel_value, ...} entries")
    out = []
    for i, entry in enumerate(data):
        try:
            out.append(DefectConfig.model_validate(entry))
        except Exception as e:
            raise DatasetError(path, f"entry {i} is invalid: {str(e).splitlines()[0]}") from None
    return out


def _read_descriptions(base: Path, report: _Reporter) -> dict[str, dict]:
    path = base / DESCRIPTIONS_FILE
    if not path.is_file():
        return {}
    out: dict[str, dict] = {}
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            out[rec["image"]] = rec
        except (json.JSONDecodeError, KeyError, TypeError):
            report(path, f"line {n} is not a description record with an 'image' key", "warning")
    return out


def read_mvtec_loco(root: str | Path, problems: list[Problem] | None = None) -> Manifest:
    """Read an MVTec LOCO AD style dataset (one category folder or a folder of categories).

    The defect type of an anomalous image comes from the pixel values of its masks looked up in the
    category's ``defects_config.json`` (several types are joined with ``+``).
    """
    root = Path(root)
    report = _Reporter(problems)
    cats = _category_dirs(root, _is_loco)
    if not cats:
        raise DatasetError(root, f"no MVTec LOCO AD category found ({_LAYOUT_HELP})")
    base = root.parent if cats == [root] else root
    descriptions = _read_descriptions(base, report)
    defects: dict[str, list[DefectConfig]] = {}
    samples: list[Sample] = []
    for cat in cats:
        cfg_path = cat / "defects_config.json"
        by_value: dict[int, str] = {}
        if cfg_path.is_file():
            try:
                defects[cat.name] = read_defects_config(cfg_path)
                by_value = {d.pixel_value: d.defect_name for d in defects[cat.name]}
            except DatasetError as e:
                report(cfg_path, e.problem)
        else:
            report(
                cfg_path, "missing defects_config.json: defect types and sPRO saturation unknown", "warning"
            )
        for split in ("train", "validation"):
            if not (cat / split / "good").is_dir():
                if split == "validation":
                    report(cat / split / "good", "missing folder (MVTec LOCO has validation/good)", "warning")
                continue
            for img in _images(cat / split / "good"):
                samples.append(_sample(img, base, cat.name, split, "good", "good", (), descriptions))
        if not (cat / "test").is_dir():
            report(cat / "test", "missing test folder")
            continue
        for sub, label in LOCO_TEST_DIRS.items():
            for img in _images(cat / "test" / sub):
                if label == "good":
                    samples.append(_sample(img, base, cat.name, "test", "good", "good", (), descriptions))
                    continue
                gt = cat / "ground_truth" / sub / img.stem
                masks = tuple(_images(gt))
                if not masks:
                    report(gt, f"no ground-truth masks for {img.relative_to(base)}")
                    if problems is not None:
                        continue
                dtype = _loco_defect_type(masks, by_value, report) if by_value else None
                samples.append(_sample(img, base, cat.name, "test", label, dtype, masks, descriptions))
    return Manifest(_info(root, base, "mvtec_loco", [c.name for c in cats], defects), samples)


def _loco_defect_type(masks: tuple[Path, ...], by_value: dict[int, str], report: _Reporter) -> str | None:
    names: list[str] = []
    for m in masks:
        try:
            values = {int(v) for v in set(mask_values(m).ravel().tolist()) if v}
        except DatasetError as e:
            report(m, e.problem)
            continue
        for v in sorted(values):
            name = by_value.get(v)
            if name is None:
                report(m, f"pixel value {v} is not in defects_config.json", "warning")
            elif name not in names:
                names.append(name)
    return "+".join(names) if names else None


# ---------------------------------------------------------------------------- VisA
def read_visa(root: str | Path, problems: list[Problem] | None = None) -> Manifest:
    """Read VisA from its split CSV (``split_csv/1cls.csv``); paths in the CSV must stay inside the root."""
    root = Path(root)
    report = _Reporter(problems)
    csv_path = root / "split_csv" / "1cls.csv"
    if not csv_path.is_file():
        raise DatasetError(csv_path, f"VisA split CSV not found ({_LAYOUT_HELP})")
    samples: list[Sample] = []
    cats: list[str] = []
    annos: dict[str, dict[str, str]] = {}
    text = _read_text(csv_path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    need = {"object", "split", "label", "image"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise DatasetError(csv_path, f"expected columns {sorted(need)} (+ mask), got {reader.fieldnames}")
    for n, raw in enumerate(reader, 2):
        row = {k: (v or "").strip() for k, v in raw.items() if k is not None}  # short rows give None
        cat, split, lab = row["object"], row["split"].lower(), row["label"].lower()
        where = f"line {n}"
        if not cat or not row["image"]:
            report(csv_path, f"{where}: missing object or image column")
            continue
        if split not in ("train", "test", "val", "validation"):
            report(csv_path, f"{where}: unknown split {row['split']!r}")
            continue
        if lab not in ("normal", "anomaly"):
            report(csv_path, f"{where}: unknown label {row['label']!r} (expected normal or anomaly)")
            continue
        img = root / row["image"]
        if not is_inside(img, root):
            report(csv_path, f"{where}: image path {row['image']!r} leaves the dataset root")
            continue
        if not img.is_file():
            report(img, f"image listed in {csv_path.name} {where} not found")
            continue
        masks: tuple[Path, ...] = ()
        mask_field = row.get("mask", "")
        if lab == "anomaly":
            if not mask_field:
                report(csv_path, f"{where}: anomalous image without a mask path", "warning")
            else:
                m = root / mask_field
                if not is_inside(m, root):
                    report(csv_path, f"{where}: mask path {mask_field!r} leaves the dataset root")
                    continue
                if not m.is_file():
                    report(m, f"mask listed in {csv_path.name} {where} not found")
                    continue
                masks = (m,)
        if cat not in cats:
            cats.append(cat)
            annos[cat] = _visa_annotations(root / cat / "image_anno.csv")
        label = "good" if lab == "normal" else "anomaly"
        dtype = "good" if label == "good" else annos[cat].get(row["image"])
        split_name = "validation" if split in ("val", "validation") else split
        samples.append(_sample(img, root, cat, split_name, label, dtype, masks))
    return Manifest(_info(root, root, "visa", cats), samples)


def _visa_annotations(path: Path) -> dict[str, str]:
    """image path -> defect name from VisA's per-category ``image_anno.csv`` (empty when absent)."""
    if not path.is_file():
        return {}
    return {
        r["image"].strip(): r["label"].strip()
        for r in csv.DictReader(io.StringIO(_read_text(path), newline=""))
        if r.get("image") and r.get("label") and r["label"].strip() != "normal"
    }


# ---------------------------------------------------------------------------- plain folders
def _is_folder_category(d: Path) -> bool:
    subs = [p for p in d.iterdir() if p.is_dir()] if d.is_dir() else []
    if any(p.name.lower() in NORMAL_NAMES and _images(p) for p in subs):
        return True
    return any(
        p.name in ("train", "validation", "test")
        and any(q.is_dir() and q.name.lower() in NORMAL_NAMES for q in p.iterdir())
        for p in subs
    )


def read_folder(root: str | Path, problems: list[Problem] | None = None) -> Manifest:
    """Read the plain folder layout described in the module docstring."""
    root = Path(root)
    report = _Reporter(problems)
    cats = _category_dirs(root, _is_folder_category)
    if not cats:
        raise DatasetError(root, f"no category folder with a good/ (or normal/) sub-folder ({_LAYOUT_HELP})")
    base = root.parent if cats == [root] else root
    samples: list[Sample] = []
    for cat in cats:
        split_dirs = [cat / s for s in ("train", "validation", "test") if (cat / s).is_dir()]
        groups = [(d.name, d) for d in split_dirs] if split_dirs else [("test", cat)]
        for split, folder in groups:
            for cls in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "masks"):
                if cls.name in ("train", "validation", "test"):
                    continue
                good = cls.name.lower() in NORMAL_NAMES
                for img in _images(cls):
                    masks: tuple[Path, ...] = ()
                    if not good:
                        for cand in (
                            folder / "masks" / cls.name / f"{img.stem}.png",
                            folder / "masks" / cls.name / f"{img.stem}_mask.png",
                        ):
                            if cand.is_file():
                                masks = (cand,)
                                break
                    label = "good" if good else "anomaly"
                    samples.append(
                        _sample(img, base, cat.name, split, label, "good" if good else cls.name, masks)
                    )
    if not samples:
        report(root, "no images found")
    return Manifest(_info(root, base, "folder", [c.name for c in cats]), samples)


# ---------------------------------------------------------------------------- dispatch
def _sample(
    img: Path,
    base: Path,
    category: str,
    split: str,
    label: str,
    defect_type: str | None,
    masks: tuple[Path, ...],
    descriptions: dict[str, dict] | None = None,
) -> Sample:
    meta: dict = {}
    if descriptions:
        rec = descriptions.get(img.relative_to(base).as_posix())
        if rec:
            meta = {k: v for k, v in rec.items() if k != "image"}
    return Sample(
        id=_rel_id(img, base),
        image_path=img.absolute(),
        category=category,
        split=split,  # type: ignore[arg-type]
        label=label,  # type: ignore[arg-type]
        defect_type=defect_type,
        mask_paths=tuple(m.absolute() for m in masks),
        metadata=meta,
    )


def _info(
    root: Path,
    base: Path,
    layout: Layout,
    categories: list[str],
    defects: dict[str, list[DefectConfig]] | None = None,
) -> DatasetInfo:
    return DatasetInfo(
        name=root.resolve().name,
        layout=layout,
        root=base.absolute(),
        categories=categories,
        defects=defects or {},
    )


READERS: dict[str, Callable[..., Manifest]] = {
    "mvtec_ad": read_mvtec_ad,
    "mvtec_loco": read_mvtec_loco,
    "visa": read_visa,
    "folder": read_folder,
}


def detect_layout(path: str | Path) -> str:
    """The layout name of a dataset folder or manifest file; DatasetError saying what was expected."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "no such file or folder")
    if path.is_file():
        if path.suffix in (".jsonl", ".parquet"):
            return "manifest"
        raise DatasetError(path, f"not a dataset folder or manifest ({_LAYOUT_HELP})")
    if (path / "split_csv" / "1cls.csv").is_file():
        return "visa"
    dirs = [path] + [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if any(_is_loco(d) for d in dirs):
        return "mvtec_loco"
    if any(_is_mvtec_ad(d) for d in dirs):
        return "mvtec_ad"
    if _category_dirs(path, _is_folder_category):
        return "folder"
    raise DatasetError(path, f"unrecognised dataset layout ({_LAYOUT_HELP})")


def read_dataset(path: str | Path, layout: str = "auto", problems: list[Problem] | None = None) -> Manifest:
    """Read a dataset folder (any layout above) or a saved manifest into a :class:`Manifest`.

    ``layout="auto"`` detects the layout. With ``problems`` given, reading problems are collected there
    (affected samples skipped) instead of raising on the first.
    """
    path = Path(path)
    if layout == "auto":
        layout = detect_layout(path)
    if layout == "manifest":
        return Manifest.load(path)
    if layout not in READERS:
        raise DatasetError(path, f"unknown layout {layout!r}; known: auto, manifest, {', '.join(READERS)}")
    if not path.is_dir():
        raise DatasetError(path, "dataset folder not found")
    return READERS[layout](path, problems)
