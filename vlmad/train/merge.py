"""Merging a trained LoRA adapter into its base model: a plain checkpoint that loads without peft."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmad.errors import ConfigError


def merge_adapter(
    base: str | Path,
    adapter: str | Path,
    out: str | Path,
    *,
    dtype: str | None = None,
    device: str | None = "cpu",
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> Path:
    """Load ``base`` with ``adapter`` (checked to fit that base, see :func:`vlmad.vlm.load.attach_adapter`),
    merge the LoRA weights into the base weights and save model + processor to ``out``; returns ``out``.

    ``dtype``: the merged weights' dtype (default: the base checkpoint's, ``auto``). The merged checkpoint
    records where it came from in ``vlmad_merge.json``; a tiny random base stays marked as random. Raises
    :class:`vlmad.vlm.VlmError` for a base that cannot be loaded or an adapter of another base, and
    :class:`ConfigError` when ``out`` is not empty (unless ``overwrite``) or is the base or adapter folder.
    """
    from vlmad.vlm import load_vlm
    from vlmad.vlm.load import quiet_hf

    out = Path(out)
    for other in (base, adapter):
        if Path(other).expanduser().exists() and out.resolve() == Path(other).expanduser().resolve():
            raise ConfigError(f"{out}: the merged model must go to a new folder, not into {other}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out}: folder is not empty; choose a new folder (or overwrite)")
    vlm = load_vlm(
        base, device=device, dtype=dtype or "auto", adapter=adapter, trust_remote_code=trust_remote_code
    )
    merged: Any = vlm.model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    with quiet_hf():
        merged.save_pretrained(str(out))
        vlm.processor.save_pretrained(str(out))
    (out / "vlmad_merge.json").write_text(
        json.dumps({"base": vlm.info.source, "adapter": str(adapter), "family": vlm.family.name}, indent=1)
        + "\n",
        encoding="utf-8",
    )
    return out
