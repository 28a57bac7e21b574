"""Generate a LOCO-style dataset on disk in the exact MVTec LOCO AD layout.

::

    OUT/synth.json                          the config and vlmad version that made the dataset
    OUT/descriptions.jsonl                  one record per image: reference description, regions, facts
    OUT/<cat>/defects_config.json
    OUT/<cat>/train/good/000.png            train_good normal images (train shifts)
    OUT/<cat>/validation/good/000.png       validation_good normal images (train shifts)
    OUT/<cat>/test/good/000.png             test images (test shifts)
    OUT/<cat>/test/logical_anomalies/000.png
    OUT/<cat>/test/structural_anomalies/000.png
    OUT/<cat>/ground_truth/<type>/000/000.png[, 001.png ...]   one mask per defect region, value = pixel_value

Each image is a pure function of (seed, category, split, folder, index), so the output does not depend on
the number of worker processes. Defect types cycle in declaration order over the anomalous test images.
Generation resumes: an interrupted run rerun with the same config keeps every finished image (its PNGs and
its description record) and generates only the rest; a different config in the same folder is refused.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from vlmad import __version__
from vlmad.data.readers import DESCRIPTIONS_FILE, LOCO_TEST_DIRS
from vlmad.data.synth.categories import CATEGORIES, get_category
from vlmad.data.synth.shifts import apply_shifts, parse_shifts
from vlmad.errors import ConfigError

SYNTH_FILE = "synth.json"
_FOLDERS = {label: folder for folder, label in LOCO_TEST_DIRS.items()}  # label -> test folder


class SynthCounts(BaseModel):
    """Images per category and folder."""

    model_config = ConfigDict(extra="forbid")

    train_good: int = Field(40, ge=0)
    validation_good: int = Field(10, ge=0)
    test_good: int = Field(20, ge=0)
    test_logical: int = Field(20, ge=0)
    test_structural: int = Field(20, ge=0)


class SynthConfig(BaseModel):
    """Everything that decides the generated dataset. Serialised into ``synth.json``.

    ``train_shifts`` apply to train and validation images, ``test_shifts`` to test images; both are
    ``"name:strength,..."`` strings as parsed by :func:`vlmad.data.synth.shifts.parse_shifts`.
    """

    model_config = ConfigDict(extra="forbid")

    categories: list[str] = Field(default_factory=lambda: list(CATEGORIES))
    size: int = Field(256, ge=64, le=2048)
    seed: int = 0
    counts: SynthCounts = Field(default_factory=SynthCounts)
    train_shifts: str = ""
    test_shifts: str = ""

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, v: list[str]) -> list[str]:
        unknown = [c for c in v if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: {', '.join(CATEGORIES)}")
        if not v:
            raise ValueError("at least one category is needed")
        return v

    @field_validator("train_shifts", "test_shifts")
    @classmethod
    def _valid_shifts(cls, v: str) -> str:
        parse_shifts(v)  # raises ConfigError naming the bad shift
        return v


def load_config(path: str | Path, **overrides: Any) -> SynthConfig:
    """Read a YAML or JSON recipe (``data_builders/*.yaml``) into a :class:`SynthConfig`."""
    from vlmad.recipes import read_recipe

    return make_config(
        source=str(path), **read_recipe(path, "synth", "a data recipe", overrides, optional=True)
    )


def make_config(source: str = "options", **values: Any) -> SynthConfig:
    """Build a :class:`SynthConfig`, turning validation errors into one-line :class:`ConfigError`."""
    from vlmad.recipes import validate_settings

    return validate_settings(SynthConfig, values, source)


@dataclass(frozen=True)
class _Job:
    out: str
    category: str
    split: str
    label: str
    index: int
    defect: str | None
    size: int
    seed: int
    shifts: str


def plan(config: SynthConfig, out: str | Path = "") -> list[_Job]:
    """Every image the config asks for, in a fixed order."""
    jobs: list[_Job] = []
    c = config.counts
    for cat_name in config.categories:
        cat = CATEGORIES[cat_name]
        groups = [
            ("train", "good", c.train_good, config.train_shifts),
            ("validation", "good", c.validation_good, config.train_shifts),
            ("test", "good", c.test_good, config.test_shifts),
            ("test", "logical", c.test_logical, config.test_shifts),
            ("test", "structural", c.test_structural, config.test_shifts),
        ]
        for split, label, n, shifts in groups:
            names = cat.defect_names(label) if label != "good" else [None]  # type: ignore[arg-type]
            for i in range(n):
                defect = names[i % len(names)]
                jobs.append(
                    _Job(str(out), cat_name, split, label, i, defect, config.size, config.seed, shifts)
                )
    return jobs


def _rng(job: _Job) -> np.random.Generator:
    key = [
        job.seed,
        zlib.crc32(job.category.encode()),
        zlib.crc32(f"{job.split}/{job.label}".encode()),
        job.index,
    ]
    return np.random.default_rng(np.random.SeedSequence(key))


def _paths(job: _Job) -> tuple[str, str]:
    folder = _FOLDERS[job.label]
    return (
        f"{job.category}/{job.split}/{folder}/{job.index:03d}.png",
        f"{job.category}/ground_truth/{folder}/{job.index:03d}",
    )


def _write_png(path: Path, arr: np.ndarray) -> None:
    """Write atomically: a killed run never leaves a half-written PNG under the final name."""
    tmp = path.with_name(path.stem + ".tmp.png")
    data = arr if arr.ndim == 2 else cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(tmp), data):
        raise OSError(f"{tmp}: could not write PNG")
    tmp.replace(path)


def render_job(job: _Job) -> tuple[np.ndarray, list[tuple[str, np.ndarray, str]], dict[str, Any]]:
    """Render one image: (RGB image, [(defect, bool mask, sentence)], record without paths)."""
    cat = get_category(job.category)
    rng = _rng(job)
    scene = cat.render(rng, job.size, job.defect)
    shifts = parse_shifts(job.shifts)
    if shifts:
        scene = apply_shifts(scene, shifts, rng)
    regions = [(r.defect, r.mask, r.description) for r in scene.regions]
    record = {
        "category": job.category,
        "split": job.split,
        "label": job.label,
        "defect_type": job.defect or "good",
        "description": scene.description,
        "facts": scene.facts,
    }
    return scene.image, regions, record


@functools.cache
def _pixel_values(category: str, size: int) -> dict[str, int]:
    """Defect name -> mask pixel value of a category (computed once per worker process)."""
    return {d.defect_name: d.pixel_value for d in get_category(category).defect_configs(size)}


def _run_job(job: _Job) -> dict[str, Any]:
    """Render and write one image and its masks; returns its description record."""
    out = Path(job.out)
    image, regions, record = render_job(job)
    img_rel, gt_rel = _paths(job)
    values = _pixel_values(job.category, job.size)
    region_recs = []
    if regions:
        (out / gt_rel).mkdir(parents=True, exist_ok=True)
    for k, (defect, mask, sentence) in enumerate(regions):
        m_rel = f"{gt_rel}/{k:03d}.png"
        _write_png(out / m_rel, np.where(mask, np.uint8(values[defect]), np.uint8(0)))
        region_recs.append(
            {"mask": m_rel, "defect": defect, "description": sentence, "area": int(mask.sum())}
        )
    (out / img_rel).parent.mkdir(parents=True, exist_ok=True)
    _write_png(out / img_rel, image)  # last: an existing image means its masks are complete
    return {"image": img_rel, **record, "regions": region_recs}


def generate(
    config: SynthConfig,
    out: str | Path,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the dataset described by ``config`` to ``out``; returns ``out``.

    ``progress(done, total)`` is called as images finish. Raises :class:`ConfigError` when ``out`` holds a
    dataset made with another config (unless ``overwrite``), or is a non-empty folder of something else.
    """
    out = Path(out)
    cfg_json = {"vlmad_version": __version__, "config": config.model_dump(mode="json")}
    done: dict[str, dict] = {}
    marker = out / SYNTH_FILE
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            raise ConfigError(
                f"{out}: folder is not empty and holds no vlmad synthetic dataset; choose another"
            )
        old = json.loads(marker.read_text(encoding="utf-8")).get("config")
        if old != cfg_json["config"]:
            if not overwrite:
                raise ConfigError(
                    f"{out}: holds a dataset generated with other settings; use --overwrite or another folder"
                )
            import shutil

            shutil.rmtree(out)
        else:
            done = _finished(out)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for cat_name in config.categories:
        (out / cat_name).mkdir(exist_ok=True)
        cfgs = [d.model_dump() for d in get_category(cat_name).defect_configs(config.size)]
        (out / cat_name / "defects_config.json").write_text(
            json.dumps(cfgs, indent=2) + "\n", encoding="utf-8"
        )

    jobs = plan(config, out)
    todo = [j for j in jobs if _paths(j)[0] not in done]
    records = dict(done)
    desc_path = out / DESCRIPTIONS_FILE
    n_done = len(jobs) - len(todo)
    if progress:
        progress(n_done, len(jobs))
    with desc_path.open("a", encoding="utf-8") as log:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = pool.map(_run_job, todo, chunksize=max(1, len(todo) // (workers * 16)))
                for rec in results:
                    n_done = _record(rec, records, log, n_done, len(jobs), progress)
        else:
            for job in todo:
                n_done = _record(_run_job(job), records, log, n_done, len(jobs), progress)
    # Final, deterministic order (the append log above is in completion order).
    ordered = [records[_paths(j)[0]] for j in jobs]
    tmp = desc_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered), encoding="utf-8")
    tmp.replace(desc_path)
    return out


def _record(
    rec: dict,
    records: dict[str, dict],
    log: Any,
    n_done: int,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    records[rec["image"]] = rec
    log.write(json.dumps(rec, sort_keys=True) + "\n")
    log.flush()
    if progress:
        progress(n_done + 1, total)
    return n_done + 1


def _finished(out: Path) -> dict[str, dict]:
    """Description records of images already complete in ``out`` (image file present, record parsed)."""
    path = out / DESCRIPTIONS_FILE
    done: dict[str, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by an interrupted run: that image is generated again
        if isinstance(rec, dict) and (out / rec.get("image", "\0")).is_file():
            done[rec["image"]] = rec
    return done
