"""Builders of tiny datasets in each supported layout, for reader and validation tests."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32


def write_image(path: Path, seed: int = 0, size: int = SIZE, mode: str = "RGB") -> Path:
    """A random image in ``mode`` (RGB, L, RGBA...) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def write_mask(
    path: Path, value: int = 255, box: tuple[int, int, int, int] = (4, 4, 12, 12), size: int = SIZE
) -> Path:
    """An 8-bit mask with ``value`` in the box (x0, y0, x1, y1) and 0 elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size, size), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = value
    Image.fromarray(m).save(path)
    return path


def make_mvtec_ad(root: Path, categories: tuple[str, ...] = ("bottle", "screw")) -> Path:
    """train/good x3, test/good x2, test/broken x2 with masks, per category."""
    for ci, cat in enumerate(categories):
        d = root / cat
        for i in range(3):
            write_image(d / "train" / "good" / f"{i:03d}.png", seed=ci * 100 + i)
        for i in range(2):
            write_image(d / "test" / "good" / f"{i:03d}.png", seed=ci * 100 + 10 + i)
            write_image(d / "test" / "broken" / f"{i:03d}.png", seed=ci * 100 + 20 + i)
            write_mask(d / "ground_truth" / "broken" / f"{i:03d}_mask.png")
    return root


LOCO_DEFECTS = [
    {
        "defect_name": "missing_item",
        "pixel_value": 255,
        "saturation_threshold": 300,
        "relative_saturation": False,
    },
    {"defect_name": "scratch", "pixel_value": 254, "saturation_threshold": 1.0, "relative_saturation": True},
]


def make_loco(root: Path, categories: tuple[str, ...] = ("pushpins",)) -> Path:
    """MVTec LOCO layout: train/validation good, test good/logical/structural, one or two masks each."""
    for cat in categories:
        d = root / cat
        (d).mkdir(parents=True, exist_ok=True)
        (d / "defects_config.json").write_text(json.dumps(LOCO_DEFECTS))
        for i in range(3):
            write_image(d / "train" / "good" / f"{i:03d}.png", seed=i)
        write_image(d / "validation" / "good" / "000.png", seed=5)
        write_image(d / "test" / "good" / "000.png", seed=6)
        write_image(d / "test" / "logical_anomalies" / "000.png", seed=7)
        # two regions of one logical defect, pixel value 255
        write_mask(d / "ground_truth" / "logical_anomalies" / "000" / "000.png", 255, (2, 2, 6, 6))
        write_mask(d / "ground_truth" / "logical_anomalies" / "000" / "001.png", 255, (20, 20, 26, 26))
        write_image(d / "test" / "structural_anomalies" / "000.png", seed=8)
        # pixel value below 255 is a defect too
        write_mask(d / "ground_truth" / "structural_anomalies" / "000" / "000.png", 254, (8, 8, 14, 14))
    return root


def make_visa(root: Path) -> Path:
    """VisA: split_csv/1cls.csv listing images and masks (class-index mask values)."""
    rows = []
    for cat in ("candle", "pcb1"):
        for i in range(2):
            p = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / p, seed=i)
            rows.append([cat, "train", "normal", p, ""])
        p = f"{cat}/Data/Images/Normal/0100.JPG"
        write_image(root / p, seed=9)
        rows.append([cat, "test", "normal", p, ""])
        p, m = f"{cat}/Data/Images/Anomaly/000.JPG", f"{cat}/Data/Masks/Anomaly/000.png"
        write_image(root / p, seed=11)
        write_mask(root / m, value=1)
        rows.append([cat, "test", "anomaly", p, m])
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with (root / "split_csv" / "1cls.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def make_folder(root: Path) -> Path:
    """Plain folder: <cat>/good, <cat>/<defect> with masks in <cat>/masks/<defect>/."""
    d = root / "widget"
    for i in range(2):
        write_image(d / "good" / f"g{i}.png", seed=i)
    write_image(d / "dent" / "d0.png", seed=3)
    write_mask(d / "masks" / "dent" / "d0.png")
    write_image(d / "stain" / "s0.jpg", seed=4)
    return root
