"""The model side of training: loading (processor first for the pre-flight check, then the weights, 4-bit for
QLoRA), freezing the vision tower, LoRA on the language model, parameter counts and memory advice."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmad.errors import ConfigError
from vlmad.train.config import TrainConfig

if TYPE_CHECKING:
    from vlmad.vlm import VLM, Family


@dataclass(frozen=True)
class ProcessorBundle:
    """What encoding needs of a model, without its weights: the ``processor``, ``family``, chat-template
    ``layout``, the ``eos_tokens`` (token strings that end a reply) and the resolved ``source``."""

    processor: Any
    family: Family
    layout: str
    eos_tokens: tuple[str, ...]
    source: str

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


def load_processor(
    source: str, family: str | None = None, *, trust_remote_code: bool = False, revision: str | None = None
) -> ProcessorBundle:
    """Load only the processor, config and generation config of a model (fast, no weights), for the
    pre-flight check before the weights load.

    Raises :class:`vlmad.vlm.VlmError` for a model that cannot be found (a Hub id that is not cached while
    the Hub is offline: download it and pass the local directory), an unknown family, or a family that does
    not match the checkpoint.
    """
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    from vlmad.vlm import VlmError, detect_family, get_family, probe_layout
    from vlmad.vlm.load import hub_offline, quiet_hf, resolve_source

    name, local = resolve_source(source)
    fam = get_family(family) if family is not None else None
    offline = hub_offline() and not local
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "revision": revision}
    if offline:
        kwargs["local_files_only"] = True
    try:
        with quiet_hf():
            config = AutoConfig.from_pretrained(name, **kwargs)
            if fam is None:
                fam = detect_family(config)
            elif config.model_type not in fam.model_types:
                raise VlmError(
                    f"{name} is a {config.model_type!r} checkpoint, not {fam.label} (model types "
                    f"{', '.join(fam.model_types)}); leave the family unset to detect it"
                )
            processor = AutoProcessor.from_pretrained(name, **kwargs)
    except OSError as exc:
        if local:
            raise VlmError(f"{name}: the config or processor cannot be read: {exc}") from exc
        where = (
            "the Hub is offline (HF_HUB_OFFLINE) and it is not in the local cache"
            if offline
            else ("it is not in the local cache and could not be fetched from the Hugging Face Hub")
        )
        raise VlmError(
            f"{name}: cannot load this model: it is not a local directory, and as a Hub id {where}. Download "
            f"it where the Hub is reachable (`hf download {name} --local-dir models/{name.split('/')[-1]}`) "
            f"and set `model:` to that local directory"
        ) from exc
    except ValueError as exc:
        raise VlmError(f"{name}: transformers cannot read this checkpoint ({exc})") from exc
    fam.check_processor(processor, name)
    eos: Any = None
    with contextlib.suppress(OSError, ValueError):  # no generation_config.json: the tokenizer's EOS
        eos = GenerationConfig.from_pretrained(name, **kwargs).eos_token_id
    if eos is None:
        eos = processor.tokenizer.eos_token_id
    ids = [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]) if e is not None]
    tokens = tuple(
        t for t in (processor.tokenizer.convert_ids_to_tokens(i) for i in ids) if isinstance(t, str)
    )
    return ProcessorBundle(processor, fam, probe_layout(processor), tokens, name)


def resolve_precision(config: TrainConfig, on_gpu: bool) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for this run (``auto``: bf16 on a GPU that has it, fp16 on other GPUs,
    fp32 on CPU). Raises :class:`ConfigError` for half precision asked for on CPU."""
    import torch

    p = config.precision
    if p == "auto":
        if not on_gpu:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if p in ("bf16", "fp16") and not on_gpu:
        raise ConfigError(f"precision {p} needs a CUDA GPU; use precision: fp32 (or auto) on CPU")
    return p


def _load_dtype(config: TrainConfig, precision: str) -> str:
    if config.load_dtype != "auto":
        return config.load_dtype
    half = {"bf16": "bfloat16", "fp16": "float16"}.get(precision)
    if half is None:
        return "float32"
    if config.method == "full" and config.deepspeed is None:
        return "float32"  # the optimizer updates these weights: keep fp32 master weights, amp does the rest
    return half


def _world() -> tuple[int, int]:
    """``(local_rank, world_size)`` from the launcher's environment."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0") or 0), int(os.environ.get("WORLD_SIZE", "1") or 1)


def load_for_training(config: TrainConfig, precision: str, on_gpu: bool) -> VLM:
    """The model to train, through :func:`vlmad.vlm.load_vlm` (errors: :class:`vlmad.vlm.VlmError`)."""
    from vlmad.vlm import get_family, load_vlm

    local_rank, _ = _world()
    device = config.device
    if device is None:
        zero3 = _zero_stage(config.deepspeed) == 3
        device = f"cuda:{local_rank}" if on_gpu and not zero3 else "cpu"
    model_kwargs: dict[str, Any] = {}
    if config.method == "qlora":
        if not on_gpu:
            raise ConfigError(
                "method qlora (4-bit through bitsandbytes) needs a CUDA GPU; use method: lora on CPU"
            )
        if _zero_stage(config.deepspeed) == 3:
            raise ConfigError(
                "method qlora does not combine with ZeRO-3 here (its 4-bit weights cannot be sharded); use "
                "deepspeed: ds_zero2.json or none"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                "method qlora needs bitsandbytes: pip install 'vlmad[train]' (or bitsandbytes) on a CUDA "
                "machine"
            ) from e
        import torch
        from transformers import BitsAndBytesConfig

        fam = get_family(config.family) if config.family else None
        skip = ["lm_head", "vision_tower", "multi_modal_projector", "visual", "vision_model"]
        if fam is not None:
            skip += [p.split(".")[-1] for g in ("projector", "vision_tower") for p in fam.module_paths[g]]
        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
            llm_int8_skip_modules=sorted(set(skip)),
        )
        model_kwargs["device_map"] = {"": local_rank}
        device = f"cuda:{local_rank}"
    return load_vlm(
        config.model,
        config.family,
        device=device,
        dtype=_load_dtype(config, precision),
        trust_remote_code=config.trust_remote_code,
        revision=config.revision,
        model_kwargs=model_kwargs or None,
    )


def _zero_stage(path: str | None) -> int:
    if path is None:
        return 0
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"deepspeed: {path}: cannot read this DeepSpeed config ({e})") from e
    return int((cfg.get("zero_optimization") or {}).get("stage", 0) or 0)


def lora_target_regex(vlm: VLM, targets: str | Sequence[str] | None) -> str:
    """The peft ``target_modules`` regex: the family's default (attention and MLP projections of the
    language model), a list of module names restricted to the language model's layers (``lm_head`` in the
    list adds the LM head), or a given regex as is."""
    import re

    if targets is None:
        return vlm.family.lora_target_modules
    if isinstance(targets, str):
        return targets
    lm = re.escape(vlm.family.module_paths["language_model"][0])
    names = [t for t in targets if t != "lm_head"]
    parts = (
        [rf"^(?:.*\.)?{lm}\.layers\.\d+\.(?:.*\.)?(?:{'|'.join(re.escape(t) for t in names)})$"]
        if names
        else []
    )
    if "lm_head" in targets:
        parts.append(r"^(?:.*\.)?lm_head$")
    return "|".join(parts)


def prepare_model(vlm: VLM, config: TrainConfig) -> Any:
    """The trainable model: vision tower frozen; LoRA on the language model (``lora`` / ``qlora``) or the
    language model's weights (``full``); the projector trainable when ``train_projector``. Raises
    :class:`ConfigError` when LoRA targets match nothing or reach the vision tower."""
    model = vlm.model
    groups = vlm.module_groups()
    for p in model.parameters():
        p.requires_grad_(False)
    if config.method == "full":
        trainable = ["language_model"] + (["projector"] if config.train_projector else [])
        for g in trainable:
            for _, p in groups.parameters(model, g):
                p.requires_grad_(True)
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        return model

    from peft import LoraConfig, get_peft_model

    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_regex(vlm, config.lora_targets),
        modules_to_save=list(groups.projector) if config.train_projector else None,
        bias="none",
    )
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"lora_targets: {e}".splitlines()[0]) from e
    lora_modules = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    wrapped_groups = vlm.family.module_groups(peft_model)
    stray = [n for n in lora_modules if wrapped_groups.group_of(n) != "language_model"]
    if stray:
        raise ConfigError(
            f"lora_targets reach {len(stray)} module(s) outside the language model (e.g. {stray[0]}); the "
            "vision tower stays untouched: restrict the regex to the language model, or give module names"
        )
    if hasattr(peft_model.config, "use_cache"):
        peft_model.config.use_cache = False
    # LoRA on the LM head must not save the (frozen, often tied) base embedding weights with the adapter
    peft_model.save_pretrained = functools.partial(peft_model.save_pretrained, save_embedding_layers=False)
    return peft_model


def parameter_counts(model: Any) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (ZeRO-3 partitioned parameters counted at full size)."""
    trainable = total = 0
    for p in model.parameters():
        n = int(getattr(p, "ds_numel", 0) or p.numel())
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def memory_advice(config: TrainConfig, on_gpu: bool) -> list[str]:
    """Settings of ``config`` that would reduce accelerator memory, most effective first."""
    out: list[str] = []
    if config.batch_size > 1:
        out.append(
            f"batch_size: 1 with grad_accumulation: {config.batch_size * config.grad_accumulation} "
            "(same effective batch)"
        )
    if not config.gradient_checkpointing:
        out.append("gradient_checkpointing: true")
    if config.method == "full":
        out.append("method: lora (train adapters, not the whole language model)")
    elif config.method == "lora" and on_gpu:
        out.append("method: qlora (4-bit base weights)")
    stage = _zero_stage(config.deepspeed)
    if stage < 3:
        out.append("deepspeed: train/ds_zero3.json (shard weights, gradients and optimizer state)")
    if "offload" not in str(config.deepspeed or ""):
        out.append("deepspeed: train/ds_zero3_offload.json (optimizer state and weights in CPU memory)")
    out.append(
        "lower image budgets, e.g. budgets: {template: {max_pixels: 200704}} (fewer or smaller image tiles)"
    )
    if config.max_length is None or config.max_length > 1024:
        out.append(f"max_length: 1024 (now {config.max_length}) with truncate_over_budget: true")
    if config.precision in ("fp32",) and on_gpu:
        out.append("precision: bf16")
    if config.train_projector:
        out.append("train_projector: false")
    return out
