"""Batched text generation with a local VLM (greedy or sampled), for the chain-of-image runner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmad.vlm.base import ImageBudget, VlmRequest
from vlmad.vlm.errors import VlmError

if TYPE_CHECKING:
    from vlmad.vlm.load import VLM


@dataclass(frozen=True)
class Generation:
    """One reply: ``text`` (special tokens removed, stripped), ``num_tokens`` generated, and ``finished``:
    True when the model ended the reply itself, False when it was cut at ``max_new_tokens``."""

    text: str
    num_tokens: int
    finished: bool


def _eos_ids(vlm: VLM) -> set[int]:
    eos: Any = getattr(getattr(vlm.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = vlm.tokenizer.eos_token_id
    return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]) if e is not None}


def generate(
    vlm: VLM,
    requests: Sequence[VlmRequest],
    max_new_tokens: int = 256,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    budgets: Mapping[str, ImageBudget] | None = None,
    role_labels: Mapping[str, str] | None = None,
    assistant_prefixes: Sequence[str] | None = None,
    batch_size: int = 4,
) -> list[Generation]:
    """One :class:`Generation` per request, in order.

    Greedy unless ``do_sample`` (then ``temperature`` / ``top_p``; ``seed`` makes it repeatable without
    touching the global random state). Requests are batched with left padding; a reply's text is the
    decoded new tokens only (a given ``assistant_prefixes[i]`` is not repeated in it). Requests must not
    carry an ``answer``.
    """
    import torch

    if max_new_tokens < 1 or batch_size < 1:
        raise VlmError(
            f"max_new_tokens and batch_size must be at least 1, got {max_new_tokens}, {batch_size}"
        )
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise VlmError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if any(r.answer is not None for r in requests):
        raise VlmError("generation writes the answer: requests must not carry an answer")
    if assistant_prefixes is not None and len(assistant_prefixes) != len(requests):
        raise VlmError(f"{len(assistant_prefixes)} assistant prefixes for {len(requests)} requests")
    eos = _eos_ids(vlm)
    pad = vlm.tokenizer.pad_token_id
    if pad is None:
        pad = min(eos) if eos else 0
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": pad}
    if do_sample:
        options.update(temperature=temperature, top_p=top_p, top_k=0)
    out: list[Generation] = []
    devices = [vlm.device] if vlm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(requests), batch_size):
            chunk = list(requests[start : start + batch_size])
            prefixes = (
                None if assistant_prefixes is None else list(assistant_prefixes[start : start + batch_size])
            )
            inputs = vlm.prepare(
                chunk, budgets, role_labels=role_labels, padding_side="left", assistant_prefixes=prefixes
            )
            with torch.inference_mode():
                ids = vlm.model.generate(**inputs.tensors, **options)
            new = ids[:, inputs.tensors["input_ids"].shape[1] :].tolist()
            for row in new:
                ended = next((k for k, t in enumerate(row) if t in eos), None)
                kept = row if ended is None else row[:ended]
                text = vlm.tokenizer.decode(kept, skip_special_tokens=True).strip()
                out.append(Generation(text=text, num_tokens=len(kept), finished=ended is not None))
    return out
