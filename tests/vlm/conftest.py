"""Shared fixtures of the VLM tests: one tiny random model per family, built and loaded once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmad.vlm import VLM, load_vlm
from vlmad.vlm.tiny import build

FAMILIES = ("llava", "internvl", "qwen2vl")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{family: directory}`` of the tiny random checkpoints (built on first use)."""
    return {}


def tiny_dir(dirs: dict[str, Path], factory: pytest.TempPathFactory, family: str) -> Path:
    if family not in dirs:
        dirs[family] = build(family, factory.mktemp(f"tiny-random-{family}"))
    return dirs[family]


@pytest.fixture(scope="session")
def tiny_vlms() -> dict[str, VLM]:
    return {}


@pytest.fixture(scope="session", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    """Each family name in turn."""
    return request.param


@pytest.fixture(scope="session")
def model_dir(family: str, tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random checkpoint directory of ``family``."""
    return tiny_dir(tiny_dirs, tmp_path_factory, family)


@pytest.fixture(scope="session")
def vlm(family: str, model_dir: Path, tiny_vlms: dict[str, VLM]) -> VLM:
    """The tiny random model of ``family``, loaded through :func:`load_vlm` (shared: do not modify it)."""
    if family not in tiny_vlms:
        tiny_vlms[family] = load_vlm(model_dir, device="cpu")
    return tiny_vlms[family]


@pytest.fixture(scope="session")
def all_dirs(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family's tiny checkpoint directory."""
    return {f: tiny_dir(tiny_dirs, tmp_path_factory, f) for f in FAMILIES}


def image(seed: int, height: int = 48, width: int = 64) -> Image.Image:
    """A random RGB image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
