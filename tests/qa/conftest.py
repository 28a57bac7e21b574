"""Fixtures for the QA builder tests: one small generated LOCO-style dataset shared by the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmad.data import read_dataset
from vlmad.data.synth.generate import generate, make_config
from vlmad.records import Manifest

# per category: 4 train normals, 1 validation normal, 2 test normals, 10 logical and 10 structural anomalies
COUNTS = {"train_good": 4, "validation_good": 1, "test_good": 2, "test_logical": 10, "test_structural": 10}


@pytest.fixture(scope="session")
def qa_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated MVTec LOCO style dataset (64x64 images, every generator category) with descriptions."""
    out = tmp_path_factory.mktemp("qa") / "ds"
    generate(make_config(size=64, counts=COUNTS), out, workers=1)
    return out


@pytest.fixture(scope="session")
def qa_manifest(qa_dataset: Path) -> Manifest:
    return read_dataset(qa_dataset)
