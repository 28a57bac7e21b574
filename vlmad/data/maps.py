"""Anomaly maps on disk: ``.npy`` (float32), ``.tiff`` (float32, as the MVTec evaluators read them) or
``.png`` (8- or 16-bit grey values, read as numbers).

Maps of a dataset's test images live in the dataset's own layout under a maps folder:
``<maps>/<image path relative to the dataset root, suffix replaced>``, e.g.
``<maps>/screw_bag/test/logical_anomalies/000.tiff`` for
``<dataset>/screw_bag/test/logical_anomalies/000.png``.
Every failure raises :class:`~vlmad.errors.DatasetError` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vlmad.errors import DatasetError
from vlmad.records import Sample

MAP_SUFFIXES = (".tiff", ".tif", ".npy", ".png")


def run_map_path(run_dir: str | Path, sample: Sample) -> Path:
    """Where a sample's map goes inside a run folder: ``maps/<category>/<split>/<sample id>.npy``."""
    return Path(run_dir) / "maps" / sample.category / sample.split / f"{sample.id.replace('/', '_')}.npy"


def write_run_record(run_dir: str | Path, record: dict) -> Path:
    """Write a run folder's ``run.json`` (settings, warnings) as indented JSON; returns its path."""
    import json

    path = Path(run_dir) / "run.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def save_map(path: str | Path, amap: np.ndarray) -> Path:
    """Write a 2-D anomaly map as float32 ``.npy`` or ``.tiff`` (chosen by the suffix); returns the path."""
    path = Path(path)
    arr = np.asarray(amap, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"an anomaly map is 2-D, got shape {arr.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, arr)
    elif path.suffix in (".tiff", ".tif"):
        import tifffile

        tifffile.imwrite(path, arr)
    else:
        raise ValueError(f"{path}: maps are saved as .npy or .tiff")
    return path


def load_map(path: str | Path) -> np.ndarray:
    """Read a map as a 2-D float32 array; singleton channel axes are dropped. NaN values are an error."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "anomaly map not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".tiff", ".tif"):
            import tifffile

            arr = tifffile.imread(path)
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as img:
                if img.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F"):
                    raise DatasetError(path, f"a {img.mode} PNG is not a one-channel anomaly map")
                arr = np.asarray(img)
        else:
            raise DatasetError(path, f"unknown map format {suffix!r} (use {', '.join(MAP_SUFFIXES)})")
    except DatasetError:
        raise
    except Exception as e:  # numpy, tifffile and PIL raise many unrelated types for a corrupt file
        raise DatasetError(path, f"unreadable anomaly map ({e})") from None
    arr = np.asarray(arr)
    if arr.ndim > 2:  # drop singleton channel/batch axes, never the image's own (a 1-row map stays 2-D)
        singles = tuple(i for i, d in enumerate(arr.shape) if d == 1)
        arr = np.squeeze(arr, axis=singles[: arr.ndim - 2])
    if arr.ndim != 2:
        raise DatasetError(path, f"an anomaly map must be 2-D, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise DatasetError(path, f"anomaly map holds {arr.dtype}, not numbers")
    arr = arr.astype(np.float32)
    if np.isnan(arr).any():
        raise DatasetError(path, f"anomaly map contains {int(np.isnan(arr).sum())} NaN value(s)")
    return arr


def resize_map(amap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``shape`` = (H, W); the map itself when it already has that shape."""
    if amap.shape == tuple(shape):
        return amap
    import cv2

    return cv2.resize(amap, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def find_map(maps_root: str | Path, image_path: Path, dataset_root: Path) -> Path | None:
    """The map of ``image_path`` under ``maps_root`` in the dataset's layout, or None when there is none."""
    try:
        rel = image_path.relative_to(dataset_root)
    except ValueError:
        rel = Path(image_path.name)
    stem = Path(maps_root) / rel.with_suffix("")
    for suffix in MAP_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    return None
