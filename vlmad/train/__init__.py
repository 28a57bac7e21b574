"""Fine-tuning VLMs on QA exports: label-masked features, the pre-flight check, LoRA / QLoRA / full training
with DeepSpeed, validation by detection accuracy and AUROC, adapter merging.

Typical use::

    from vlmad.train import load_train_recipe, train

    config = load_train_recipe("train/tiny_llava.yaml", output_dir="runs/tiny")
    result = train(config)                  # resumes from the last checkpoint in output_dir
    print(result.summary())                 # result.adapter_dir: a peft adapter for vlmad.vlm.load_vlm

Importing this package is light: torch, transformers and peft load when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlmad.train.config import BEST_METRICS, TrainConfig, load_train_recipe, make_config, parse_overrides

if TYPE_CHECKING:
    from vlmad.train.data import (
        Collator,
        Encoder,
        TrainDataset,
        TrainRecord,
        encode_sample,
        map_conversation,
        read_export,
    )
    from vlmad.train.merge import merge_adapter
    from vlmad.train.modeling import ProcessorBundle, load_processor
    from vlmad.train.preflight import PreflightError, PreflightReport, Problem, preflight
    from vlmad.train.trainer import (
        PreflightRun,
        TrainError,
        TrainOutOfMemory,
        TrainResult,
        run_preflight,
        train,
    )

_LAZY = {
    "Collator": "data",
    "Encoder": "data",
    "TrainDataset": "data",
    "TrainRecord": "data",
    "encode_sample": "data",
    "map_conversation": "data",
    "read_export": "data",
    "merge_adapter": "merge",
    "ProcessorBundle": "modeling",
    "load_processor": "modeling",
    "PreflightRun": "trainer",
    "run_preflight": "trainer",
    "PreflightError": "preflight",
    "PreflightReport": "preflight",
    "Problem": "preflight",
    "preflight": "preflight",
    "TrainError": "trainer",
    "TrainOutOfMemory": "trainer",
    "TrainResult": "trainer",
    "train": "trainer",
}

__all__ = [
    "BEST_METRICS",
    "Collator",
    "Encoder",
    "PreflightError",
    "PreflightReport",
    "PreflightRun",
    "Problem",
    "ProcessorBundle",
    "TrainConfig",
    "TrainDataset",
    "TrainError",
    "TrainOutOfMemory",
    "TrainRecord",
    "TrainResult",
    "encode_sample",
    "load_processor",
    "load_train_recipe",
    "make_config",
    "map_conversation",
    "merge_adapter",
    "parse_overrides",
    "preflight",
    "read_export",
    "run_preflight",
    "train",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmad.train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"vlmad.train.{module}"), name)
