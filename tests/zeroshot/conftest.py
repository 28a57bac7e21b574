"""Shared fixtures of the zero-shot tests."""

from __future__ import annotations

import pytest

from vlmad.zeroshot.clip import Clip, make_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Clip:
    """A tiny random CLIP (64 px, patch 8: an 8 x 8 grid), loaded once per session."""
    return Clip.load(make_tiny_clip(tmp_path_factory.mktemp("clip")))
