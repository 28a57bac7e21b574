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


class _DropCpuAcceleratorNotice:
    """A logging filter for DeepSpeed's "Setting accelerator to CPU" warning, which it logs whenever it is
    imported on a machine without a GPU (transformers imports it while building or loading any model once
    it is installed); every vlmad output already says which device ran."""

    def filter(self, record: object) -> bool:
        return "Setting accelerator to CPU" not in str(getattr(record, "msg", ""))


def drop_deepspeed_cpu_notice() -> None:
    """Install :class:`_DropCpuAcceleratorNotice` on DeepSpeed's logger (idempotent; DeepSpeed keeps the
    filters of its logger when it configures it at import)."""
    import logging

    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _DropCpuAcceleratorNotice) for f in logger.filters):
        logger.addFilter(_DropCpuAcceleratorNotice())


def random_model_warning(kind: str, source: str, detail: str | None, shows: str) -> str | None:
    """The loud line every output of a tiny random model carries (``None`` for a real model):
    ``"TINY RANDOM <kind>: <source> is <detail>; <shows>, not how well it detects anomalies"``."""
    if detail is None:
        return None
    return f"TINY RANDOM {kind}: {source} is {detail}; {shows}, not how well it detects anomalies"
