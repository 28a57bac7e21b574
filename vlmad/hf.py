"""Small helpers around Hugging Face libraries shared by every stage that loads a model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_hf() -> Iterator[None]:
    """transformers' per-tensor loading progress bars off (they would bury the CLI's own lines; the library
    never prints), restored afterwards to what they were."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
