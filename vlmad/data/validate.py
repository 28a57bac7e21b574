"""Check every image and mask of a dataset and report every problem in one run."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vlmad.data.images import Problem, check_image, check_mask
from vlmad.data.readers import is_inside, read_dataset
from vlmad.records import Manifest, Sample


def check_sample(sample: Sample, root: Path) -> list[Problem]:
    """Every problem of one sample: its image and each of its masks (see :func:`check_mask`)."""
    problems: list[Problem] = []
    for p in (sample.image_path, *sample.mask_paths):
        if not is_inside(p, root):
            problems.append(Problem(p, f"path leaves the dataset root {root}"))
    if problems:
        return problems
    shape, problems = check_image(sample.image_path)
    for m in sample.mask_paths:
        problems.extend(check_mask(m, shape))
    if sample.is_anomalous and not sample.mask_paths:
        problems.append(Problem(sample.image_path, "anomalous image without a ground-truth mask", "warning"))
    return problems


def validate_manifest(
    manifest: Manifest, workers: int = 4, progress: Callable[[int], None] | None = None
) -> list[Problem]:
    """Decode every image and mask of ``manifest``; returns all problems in manifest order.

    ``progress`` (if given) is called with the number of samples finished after each one.
    """
    root = manifest.info.root
    results: list[list[Problem]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # PIL decoding releases the GIL
        for i, probs in enumerate(pool.map(lambda s: check_sample(s, root), manifest.samples), 1):
            results.append(probs)
            if progress is not None:
                progress(i)
    return [p for probs in results for p in probs]


def validate_dataset(
    path: str | Path, layout: str = "auto", workers: int = 4, progress: Callable[[int], None] | None = None
) -> tuple[Manifest, list[Problem]]:
    """Read a dataset collecting reading problems, then check every image and mask.

    Returns the manifest of the readable samples and every problem found (errors and warnings).
    Raises :class:`~vlmad.errors.DatasetError` only when the path is not a dataset at all.
    """
    problems: list[Problem] = []
    manifest = read_dataset(path, layout=layout, problems=problems)
    problems.extend(validate_manifest(manifest, workers=workers, progress=progress))
    return manifest, problems
