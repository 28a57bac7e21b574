"""The training recipe schema (:class:`TrainConfig`) and its loader (:func:`load_train_recipe`).

A recipe is YAML with one ``train:`` mapping of :class:`TrainConfig` fields (see ``train/README.md``);
relative input paths in it (``export_dir``, ``deepspeed``, a local ``model``) that exist next to the recipe
file are read from there, everything else (``output_dir`` included) is relative to the working directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vlmad.errors import ConfigError

Method = Literal["lora", "qlora", "full"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LoadDtype = Literal["auto", "float32", "bfloat16", "float16"]
BEST_METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "logical_structural_average",
    "auroc",
    "loss",
)


class Budget(BaseModel):
    """One role's image budget: the fields of :class:`vlmad.vlm.ImageBudget` (``None``: the processor's
    default)."""

    model_config = ConfigDict(extra="forbid")

    max_pixels: int | None = Field(None, ge=1)
    min_pixels: int | None = Field(None, ge=1)
    max_tiles: int | None = Field(None, ge=1)


class TrainConfig(BaseModel):
    """Every setting of one training run; the fields of a ``train/`` recipe.

    Model and data
        - ``model``: a local checkpoint directory or a Hub id (offline: only a cached one); ``family``
          (``llava``, ``internvl``, ``qwen2vl``) is detected from the config when ``None``.
        - ``export_dir``: a QA export (``vlmad qa build``): ``messages/{split}.jsonl`` + ``export.json``.
        - ``train_split`` / ``eval_split``: export splits to train and validate on (``eval_split: null``:
          none).
          ``eval_holdout``: share of the training records (per label, seeded) moved to the validation set as
          well, for exports whose validation split holds normal images only (document 004's split).
          ``max_train_samples``: train on the first N training records only (smoke tests, overfitting checks).
        - ``output_dir``: checkpoints, ``adapter/`` (or ``model/``), logs, ``preflight.json``,
          ``result.json``.

    Method
        - ``method``: ``lora`` (default), ``qlora`` (4-bit base through bitsandbytes, CUDA only) or ``full``
          (the language model's weights). The vision tower is always frozen and never gets LoRA layers.
        - ``lora_r`` / ``lora_alpha`` / ``lora_dropout``; ``lora_targets``: ``None`` = the family's attention
          and MLP projections of the language model; a list of module names (``[q_proj, v_proj]``) is
          restricted to the language model's layers; a string is a peft regex used as given (checked: it must
          not reach the vision tower).
        - ``train_projector``: train the vision-to-language projector as well (saved with the adapter).

    Optimisation
        - ``epochs`` (or ``max_steps`` > 0, which wins), ``learning_rate``, ``lr_scheduler``, ``warmup``
          (steps, or a ratio of all steps when below 1), ``weight_decay``, ``batch_size`` per device,
          ``grad_accumulation``, ``max_grad_norm``.
        - ``precision``: ``auto`` = bf16 on a GPU that has it, else fp16 on a GPU, fp32 on CPU.
          ``load_dtype``: weights' dtype at load; ``auto`` = the precision's dtype for LoRA / QLoRA /
          DeepSpeed, float32 for full fine-tuning without DeepSpeed (the optimizer needs fp32 master weights).
        - ``gradient_checkpointing``; ``deepspeed``: a DeepSpeed JSON config (``train/ds_zero2.json``,
          ``ds_zero3.json``, ``ds_zero3_offload.json``) or ``None``.

    Sequences and images
        - ``max_length``: the token budget of one sample, image tokens included; ``None`` = no limit.
        - ``truncate_over_budget``: keep a sample longer than ``max_length`` by cutting its end, when its
          image tokens and at least one answer token survive (reported); otherwise such samples are problems.
        - ``budgets``: per-role image budgets, ``{template: {max_pixels: ...}, test: {...}}``.
        - ``role_labels``: role label text per role; ``None`` keeps the export's labels.
        - ``allow_drop``: drop samples the pre-flight check finds problems with (listed) instead of stopping.

    Validation, checkpoints, logs
        - ``eval_steps``: validate every N optimizer steps (``None``: at the end of each epoch);
          ``eval_max_samples``, ``eval_batch_size``, ``eval_max_new_tokens``; ``eval_question`` replaces each
          record's first question when set (a yes/no question, yes = anomalous).
        - ``best_metric``: one of :data:`BEST_METRICS` (``loss`` is the answer-token loss; the others are
          detection metrics of the generated answers / yes-no scores). ``select_best``: load the best
          checkpoint at the end and save it as the adapter (else the last step's weights are saved; the best
          checkpoint is still named in the result). ``early_stopping_patience``: stop after N validations
          without a new best (``None``: never; needs ``select_best``).
        - ``save_steps`` (``None``: with each validation, else each epoch), ``save_total_limit``,
          ``logging_steps``, ``report_to`` (``[tensorboard]`` by default; ``[]`` for none).
        - ``resume``: continue from the last checkpoint in ``output_dir`` when there is one.
        - ``seed``, ``device`` (``None``: a GPU when present), ``dataloader_workers``.
    """

    model_config = ConfigDict(extra="forbid")

    model: str
    family: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    export_dir: Path
    train_split: str = "train"
    eval_split: str | None = "validation"
    eval_holdout: float = Field(0.0, ge=0.0, lt=1.0)
    max_train_samples: int | None = Field(None, ge=1)
    output_dir: Path

    method: Method = "lora"
    lora_r: int = Field(16, ge=1)
    lora_alpha: float = Field(32.0, gt=0)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_targets: str | list[str] | None = None
    train_projector: bool = False

    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler: str = "cosine"
    warmup: float = Field(0.03, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(1, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Precision = "auto"
    load_dtype: LoadDtype = "auto"
    gradient_checkpointing: bool = False
    deepspeed: str | None = None

    max_length: int | None = Field(2048, ge=8)
    truncate_over_budget: bool = False
    budgets: dict[str, Budget] = Field(default_factory=dict)
    role_labels: dict[str, str] | None = None
    allow_drop: bool = False

    eval_steps: int | None = Field(None, ge=1)
    eval_max_samples: int | None = Field(200, ge=1)
    eval_batch_size: int = Field(4, ge=1)
    eval_max_new_tokens: int = Field(32, ge=1)
    eval_question: str | None = None
    best_metric: str = "accuracy"
    select_best: bool = True
    early_stopping_patience: int | None = Field(None, ge=1)
    save_steps: int | None = Field(None, ge=1)
    save_total_limit: int | None = Field(2, ge=1)
    logging_steps: int = Field(10, ge=1)
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"])
    resume: bool = True
    seed: int = 0
    device: str | None = None
    dataloader_workers: int = Field(0, ge=0)

    @field_validator("best_metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        v = v.removeprefix("eval_")
        if v not in BEST_METRICS:
            raise ValueError(f"{v!r} is not a validation metric; choose from {', '.join(BEST_METRICS)}")
        return v

    @field_validator("warmup")
    @classmethod
    def _warmup(cls, v: float) -> float:
        if v >= 1 and not float(v).is_integer():
            raise ValueError("warmup is a whole number of steps, or a ratio below 1")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps: a positive number of steps, or -1 to train for `epochs`")
        if self.eval_steps is not None and self.save_steps is not None and self.save_steps % self.eval_steps:
            raise ValueError(
                f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}) so "
                "that the best validation step has a checkpoint"
            )
        if self.method == "full" and self.lora_targets is not None:
            raise ValueError("lora_targets is set but method is full (no LoRA)")
        if self.early_stopping_patience is not None and not self.has_eval:
            raise ValueError("early_stopping_patience needs a validation set (eval_split or eval_holdout)")
        if self.early_stopping_patience is not None and not self.select_best:
            raise ValueError("early_stopping_patience needs select_best: true")
        return self

    @property
    def has_eval(self) -> bool:
        """Whether the run validates (an eval split or a holdout share)."""
        return self.eval_split is not None or self.eval_holdout > 0

    def image_budgets(self) -> dict[str, Any]:
        """``{role: vlmad.vlm.ImageBudget}`` of :attr:`budgets`."""
        from vlmad.vlm import ImageBudget

        return {role: ImageBudget(**b.model_dump()) for role, b in self.budgets.items()}

    def summary(self) -> dict[str, Any]:
        """The settings as JSON-ready values (paths as strings)."""
        return self.model_dump(mode="json")


def make_config(source: str = "options", **values: Any) -> TrainConfig:
    """Validate settings into a :class:`TrainConfig`; errors become one-line :class:`ConfigError` messages
    naming ``source`` and the field."""
    from vlmad.recipes import validate_settings

    config = validate_settings(TrainConfig, values, source)
    if config.deepspeed is not None and not Path(config.deepspeed).is_file():
        raise ConfigError(f"{source}: deepspeed: {config.deepspeed}: no such DeepSpeed config file")
    return config


_INPUT_PATHS = ("export_dir", "deepspeed", "model")


def _beside(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """Input paths of a recipe (``export_dir``, ``deepspeed``, a local ``model``) that exist next to the
    recipe file resolved there; everything else is left for the working directory."""
    out = dict(values)
    for key in _INPUT_PATHS:
        v = out.get(key)
        if isinstance(v, str) and v and not Path(v).expanduser().is_absolute() and (base / v).exists():
            out[key] = str(base / v)
    return out


def load_train_recipe(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a training recipe (YAML with a ``train:`` mapping of :class:`TrainConfig` fields).

    ``overrides`` (values that are not ``None``) replace the recipe's, e.g. ``output_dir=..., max_steps=5``.
    Raises :class:`ConfigError` naming the file and the field for a missing file, bad YAML, an unknown field
    or an invalid value.
    """
    from vlmad.recipes import read_recipe

    path = Path(path)
    values = _beside(read_recipe(path, "train", "a training recipe"), path.parent)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return make_config(str(path), **values)


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: value}`` with YAML-typed values (``max_steps=5`` -> 5,
    ``lora_targets=[q_proj, v_proj]`` -> a list). Raises :class:`ConfigError` for a pair without ``=``."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r}: expected key=value, e.g. max_steps=100")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out
