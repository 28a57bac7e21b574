"""LoRA / QLoRA / full fine-tuning of a VLM on a QA export, on ``transformers.Trainer`` with peft.

:func:`train` runs one recipe (:class:`~vlmad.train.config.TrainConfig`):

1. reads the export's training split (and the validation split and/or a held-out share of training);
2. builds the training arguments first (so that DeepSpeed ZeRO-3 partitions the weights as they load), then
   loads the model with :func:`vlmad.vlm.load_vlm` (4-bit through bitsandbytes for QLoRA);
3. runs the pre-flight check (:mod:`vlmad.train.preflight`) over the whole training set and stops, listing
   every problem, unless ``allow_drop``; writes ``preflight.json``;
4. freezes the vision tower, adds LoRA to the language model (or unfreezes it for full fine-tuning), and the
   projector when ``train_projector``; refuses LoRA targets that reach the vision tower;
5. trains, resuming from the last checkpoint in ``output_dir`` (weights, optimizer, scheduler, RNG states and
   data position) when there is one; validates by generation every ``eval_steps`` (or epoch), logs to
   TensorBoard, keeps the best checkpoint and stops early when asked;
6. saves the adapter (peft format, gathered from all ranks under ZeRO-3) to ``output_dir/adapter`` with its
   base-model record (:func:`vlmad.vlm.load.record_adapter_base`), or the full model to ``output_dir/model``;
   writes ``result.json``.

Out of memory at the first step raises :class:`TrainOutOfMemory` listing the settings that reduce memory.
Multi-GPU and multi-node runs go through the DeepSpeed launcher or ``accelerate launch``; every rank runs
:func:`train` and rank 0 writes the files.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmad.errors import ConfigError, VlmadError
from vlmad.train.config import TrainConfig
from vlmad.train.data import Collator, Encoder, TrainDataset, TrainRecord, read_export
from vlmad.train.modeling import (
    load_for_training,
    load_processor,
    memory_advice,
    parameter_counts,
    prepare_model,
    resolve_precision,
)
from vlmad.train.preflight import PreflightError, PreflightReport, preflight

if TYPE_CHECKING:
    from vlmad.vlm import VLM

Progress = Callable[[str, int, int], None]
LogFn = Callable[[dict[str, float]], None]
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"


class TrainError(VlmadError):
    """Training could not run or finish (for a reason other than the recipe or the data)."""


class TrainOutOfMemory(TrainError):
    """The accelerator ran out of memory; the message lists the settings that reduce memory."""


@dataclass
class TrainResult:
    """What :func:`train` did.

    ``adapter_dir`` (LoRA / QLoRA) or ``model_dir`` (full fine-tuning) holds the result; ``global_step`` the
    optimizer steps done in all (resumed ones included); ``resumed_from`` the checkpoint training continued
    from; ``best_checkpoint`` / ``best_metric`` the validation step kept (``None`` without validation);
    ``losses`` ``(step, training loss)`` as logged; ``evals`` one dict per validation (``step`` and the
    ``eval_`` metrics); ``preflight`` / ``eval_preflight`` the pre-flight reports; ``trainable`` /
    ``total`` parameter counts; ``warnings``; ``trainer`` the ``transformers.Trainer`` (model and state) of
    this run, not serialised.
    """

    output_dir: Path
    adapter_dir: Path | None
    model_dir: Path | None
    global_step: int
    epoch: float
    resumed_from: Path | None
    best_checkpoint: Path | None
    best_metric: float | None
    losses: list[tuple[int, float]]
    evals: list[dict[str, float]]
    preflight: PreflightReport
    eval_preflight: PreflightReport | None
    trainable: int
    total: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    trainer: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what ``result.json`` holds)."""

        def s(p: Path | None) -> str | None:
            return None if p is None else str(p)

        return {
            "output_dir": s(self.output_dir),
            "adapter_dir": s(self.adapter_dir),
            "model_dir": s(self.model_dir),
            "global_step": self.global_step,
            "epoch": self.epoch,
            "resumed_from": s(self.resumed_from),
            "best_checkpoint": s(self.best_checkpoint),
            "best_metric": self.best_metric,
            "losses": self.losses,
            "evals": self.evals,
            "preflight": self.preflight.to_dict(),
            "eval_preflight": None if self.eval_preflight is None else self.eval_preflight.to_dict(),
            "trainable_parameters": self.trainable,
            "total_parameters": self.total,
            "seconds": self.seconds,
            "warnings": self.warnings,
        }

    def summary(self) -> str:
        """One line for the CLI."""
        where = self.adapter_dir or self.model_dir
        loss = f", last loss {self.losses[-1][1]:.4f}" if self.losses else ""
        best = (
            f", best {self.best_metric:.4f} at {self.best_checkpoint.name}"
            if self.best_checkpoint is not None and self.best_metric is not None
            else ""
        )
        resumed = f", resumed from {self.resumed_from.name}" if self.resumed_from is not None else ""
        return f"{self.global_step} steps{resumed}{loss}{best} -> {where}"


# ---- settings ------------------------------------------------------------------------------------------
def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def training_arguments(
    config: TrainConfig, *, on_gpu: bool, has_eval: bool, best_metric_key: str | None
) -> Any:
    """The ``transformers.TrainingArguments`` of ``config`` (create before loading the model: under
    ZeRO-3 this is what makes ``from_pretrained`` partition the weights)."""
    from transformers import TrainingArguments

    precision = resolve_precision(config, on_gpu)
    strategy = "steps" if config.eval_steps is not None else "epoch"
    kwargs: dict[str, Any] = {
        "output_dir": str(config.output_dir),
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.eval_batch_size,
        "gradient_accumulation_steps": config.grad_accumulation,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup,
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "logging_steps": config.logging_steps,
        "logging_first_step": True,
        "report_to": [r for r in config.report_to if r != "tensorboard"] or "none",
        "save_total_limit": config.save_total_limit,
        "seed": config.seed,
        "data_seed": config.seed,
        "use_cpu": not on_gpu and config.deepspeed is None,
        "dataloader_num_workers": config.dataloader_workers,
        "remove_unused_columns": False,
        "label_names": ["labels"],
        "disable_tqdm": True,
        "deepspeed": config.deepspeed,
        "activation_checkpointing": config.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False}
        if config.gradient_checkpointing
        else None,
        "save_only_model": False,
    }
    if config.deepspeed is not None and not on_gpu:
        # DeepSpeed's CPU accelerator: the process group was set up by cpu_deepspeed_state()
        kwargs["accelerator_config"] = {"use_configured_state": True}
    if has_eval:
        kwargs.update(
            eval_strategy=strategy,
            eval_steps=config.eval_steps,
            save_strategy=strategy,
            save_steps=config.save_steps or config.eval_steps,
            load_best_model_at_end=config.select_best,
            metric_for_best_model=best_metric_key,
            greater_is_better=config.best_metric != "loss",
        )
    else:
        kwargs.update(
            eval_strategy="no",
            save_strategy="steps" if config.save_steps is not None else "epoch",
            save_steps=config.save_steps,
        )
    try:
        return TrainingArguments(**{k: v for k, v in kwargs.items() if v is not None})
    except (ValueError, ImportError) as e:
        raise ConfigError(f"training settings rejected: {e}") from e


def cpu_deepspeed_state() -> None:
    """Set up DeepSpeed on CPU (its CPU accelerator, gloo collectives) for ``transformers.Trainer``.

    accelerate only starts DeepSpeed's process group on an accelerator; on CPU it would fall back to one
    process per rank without DeepSpeed. This starts DeepSpeed's communication over gloo (a single process
    gets ``RANK=0``, ``WORLD_SIZE=1`` and a free local port when no launcher set them) and marks accelerate's
    shared state as DeepSpeed, so the Trainer shards with ZeRO across the launched processes.
    """
    import socket

    import deepspeed
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if "RANK" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        for key, value in (
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("LOCAL_WORLD_SIZE", "1"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", str(port)),
        ):
            os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    state = PartialState(cpu=True, backend="gloo")
    state.distributed_type = DistributedType.DEEPSPEED


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


# ---- the trainer ---------------------------------------------------------------------------------------
def _trainer_class() -> type:
    from transformers import Trainer

    class VlmadTrainer(Trainer):
        """``transformers.Trainer`` with vlmad's validation (generation + yes/no scores + loss) and a clear
        out-of-memory error."""

        vlmad_validate: Callable[[Any], dict[str, float]] | None = None
        vlmad_oom: Callable[[int, BaseException], TrainOutOfMemory] | None = None

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            except (RuntimeError, MemoryError) as e:
                if _is_oom(e) and self.vlmad_oom is not None:
                    raise self.vlmad_oom(self.state.global_step, e) from e
                raise

        def evaluate(
            self,
            eval_dataset: Any = None,
            ignore_keys: list[str] | None = None,
            metric_key_prefix: str = "eval",
        ) -> dict[str, float]:
            if self.vlmad_validate is None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            start = time.time()
            model = self.model
            was_training = model.training
            model.eval()
            try:
                raw = self.vlmad_validate(model)
            finally:
                if was_training:
                    model.train()
            metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in raw.items()}
            metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return VlmadTrainer


def _callbacks(progress: Progress | None, on_log: LogFn | None) -> Any:
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if progress is not None and state.is_world_process_zero:
                progress("train", state.global_step, state.max_steps)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if on_log is not None and state.is_world_process_zero and logs:
                on_log({"step": state.global_step, **logs})

    return Report()


def _checkpoints(output_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not output_dir.is_dir():
        return None
    last = get_last_checkpoint(str(output_dir))
    return None if last is None else Path(last)


def _read_sets(config: TrainConfig) -> tuple[list[TrainRecord], list[TrainRecord], list[str]]:
    """Training records and validation records (validation split + held-out share), and warnings."""
    from vlmad.train.validate import stratified_pick

    warnings: list[str] = []
    records = read_export(config.export_dir, config.train_split)
    evals: list[TrainRecord] = []
    if config.eval_split is not None:
        evals = read_export(config.export_dir, config.eval_split)
    if config.eval_holdout > 0:
        held = stratified_pick(records, config.eval_holdout, config.seed)
        ids = {id(r) for r in held}
        records = [r for r in records if id(r) not in ids]
        evals = evals + held
    if config.max_train_samples is not None:
        records = records[: config.max_train_samples]
    if config.eval_max_samples is not None and len(evals) > config.eval_max_samples:
        evals = stratified_pick(evals, config.eval_max_samples / len(evals), config.seed)[
            : config.eval_max_samples
        ]
    if config.has_eval and not evals:
        warnings.append("the validation set is empty: no validation, the last step's weights are kept")
    return records, evals, warnings


def _check_eval_labels(config: TrainConfig, evals: Sequence[TrainRecord]) -> None:
    if not evals or config.best_metric == "loss":
        return
    if any(r.label is None for r in evals):
        raise ConfigError(
            "best_metric "
            f"{config.best_metric!r} needs the label of every validation record, which this export does not "
            "give: rebuild it with the 'hf' format (vlmad qa build --format messages,hf) or use "
            "best_metric: loss"
        )
    labels = {r.label for r in evals}
    needs = {
        "auroc": lambda: "good" in labels and len(labels) > 1,
        "balanced_accuracy": lambda: "good" in labels and len(labels) > 1,
        "logical_structural_average": lambda: {"logical", "structural"} <= labels,
    }
    check = needs.get(config.best_metric)
    if check is not None and not check():
        raise ConfigError(
            f"best_metric {config.best_metric!r} is undefined on the validation set (labels: "
            f"{', '.join(sorted(str(x) for x in labels))}); add anomalous and normal records "
            "(eval_holdout: 0.1) or choose best_metric: accuracy"
        )


@dataclass
class PreflightRun:
    """The pre-flight check of a recipe: the processor ``bundle``, the ``encoder`` training will use, and the
    reports of the training records (``report``) and validation records (``eval_report``, or ``None``)."""

    bundle: Any
    encoder: Encoder
    report: PreflightReport
    eval_report: PreflightReport | None


def run_preflight(
    config: TrainConfig,
    records: Sequence[TrainRecord] | None = None,
    eval_records: Sequence[TrainRecord] | None = None,
    *,
    progress: Progress | None = None,
) -> PreflightRun:
    """Load only the processor (no weights) and check every training and validation record as
    :func:`train` would, without raising for problems (see the reports). ``records`` / ``eval_records``
    default to the recipe's sets. Raises for a model or export that cannot be read."""
    if records is None or eval_records is None:
        read, read_eval, _ = _read_sets(config)
        records = read if records is None else records
        eval_records = read_eval if eval_records is None else eval_records
    bundle = load_processor(
        config.model, config.family, trust_remote_code=config.trust_remote_code, revision=config.revision
    )
    budgets = config.image_budgets()
    for role, budget in budgets.items():
        try:
            bundle.family.check_budget(role, budget)
        except VlmadError as e:
            raise ConfigError(f"budgets.{role}: {e}") from None
    encoder = Encoder(
        bundle,
        budgets,
        config.max_length,
        role_labels=config.role_labels,
        truncate=config.truncate_over_budget,
    )
    report = preflight(encoder, records, split=config.train_split, progress=progress)
    eval_report = preflight(encoder, eval_records, split="validation") if eval_records else None
    return PreflightRun(bundle, encoder, report, eval_report)


def train(
    config: TrainConfig,
    *,
    progress: Progress | None = None,
    on_log: LogFn | None = None,
    callbacks: Sequence[Any] = (),
    vlm: VLM | None = None,
) -> TrainResult:
    """Train ``config`` (see the module docstring); returns a :class:`TrainResult`.

    ``progress(phase, done, total)`` reports ``pre-flight``, ``train`` and ``validation`` progress (rank 0);
    ``on_log(logs)`` gets each logged dict (training loss, learning rate, validation metrics) with its
    ``step``; ``callbacks`` are extra ``transformers.TrainerCallback`` objects. ``vlm``: an already loaded
    model to train instead of loading ``config.model`` (whose processor and config are still read for the
    pre-flight check); it is modified in place.

    Raises :class:`ConfigError` for settings that cannot run, :class:`vlmad.vlm.VlmError` for a model that
    cannot be loaded (offline Hub id: pass a local directory), :class:`~vlmad.errors.DatasetError` for a
    missing export or split, :class:`~vlmad.train.preflight.PreflightError` listing the samples that cannot
    be trained on, :class:`TrainOutOfMemory` with the settings that reduce memory.
    """
    import torch
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback

    started = time.time()
    on_gpu = _cuda() and not (config.device or "").startswith("cpu")
    precision = resolve_precision(config, on_gpu)
    output_dir = Path(config.output_dir)
    last = _checkpoints(output_dir)
    if last is not None and not config.resume:
        raise ConfigError(
            f"output_dir {output_dir} holds checkpoints ({last.name}) of an earlier run; resume it "
            "(resume: true) or choose another output_dir"
        )
    records, eval_records, warnings = _read_sets(config)
    _check_eval_labels(config, eval_records)
    if config.deepspeed is not None:
        _quiet_deepspeed()
    main = int(os.environ.get("RANK", "0") or 0) == 0
    check = run_preflight(config, records, eval_records, progress=progress if main else None)
    bundle, encoder, report, eval_report = check.bundle, check.encoder, check.report, check.eval_report
    budgets = encoder.budgets
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        report.save(output_dir / "preflight.json")
    report.raise_for_problems(config.allow_drop)
    if eval_report is not None:
        if eval_report.problems:
            if not config.allow_drop:
                raise PreflightError(eval_report)
            warnings.append(f"{len(eval_report.dropped)} validation record(s) dropped (see result.json)")
        eval_records = [eval_records[i] for i in eval_report.kept]
    if report.problems:
        warnings.append(f"{len(report.dropped)} training record(s) dropped: see preflight.json")
    train_records = [records[i] for i in report.kept]
    has_eval = bool(eval_records)
    if config.has_eval and eval_report is not None and not has_eval:
        warnings.append("every validation record was dropped: no validation, the last weights are kept")
    best_key = f"eval_{config.best_metric}" if has_eval else None

    if config.deepspeed is not None and not on_gpu:
        cpu_deepspeed_state()
    args = training_arguments(config, on_gpu=on_gpu, has_eval=has_eval, best_metric_key=best_key)
    main = args.process_index == 0
    if vlm is None:
        vlm = load_for_training(config, precision, on_gpu)
    if vlm.family.name != bundle.family.name:
        raise ConfigError(f"{config.model}: loaded as {vlm.family.label}, not {bundle.family.label}")

    set_seed(config.seed)
    model = prepare_model(vlm, config)
    trainable, total = parameter_counts(model)
    if trainable == 0:
        raise ConfigError("no trainable parameter: check method, lora_targets and train_projector")

    cls = _trainer_class()
    extra: list[Any] = [_callbacks(progress, on_log), *callbacks]
    if "tensorboard" in config.report_to and main:
        extra.append(_tensorboard(output_dir, warnings))
    if config.early_stopping_patience is not None and has_eval:
        from transformers import EarlyStoppingCallback

        extra.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = cls(
        model=model,
        args=args,
        train_dataset=TrainDataset(encoder, train_records),
        eval_dataset=TrainDataset(encoder, eval_records) if has_eval else None,
        data_collator=Collator(_pad_id(vlm)),
        callbacks=extra,
    )
    trainer.remove_callback(PrinterCallback)

    def oom(step: int, exc: BaseException) -> TrainOutOfMemory:
        when = "at the first step" if step == 0 else f"at step {step + 1}"
        tips = "\n".join(f"  - {t}" for t in memory_advice(config, on_gpu))
        return TrainOutOfMemory(
            f"out of memory {when} (batch_size {config.batch_size}, max_length {config.max_length}, method "
            f"{config.method}, deepspeed {config.deepspeed or 'off'}, p95 sample "
            f"{report.tokens.p95} tokens). Settings that reduce memory:\n{tips}"
        )

    trainer.vlmad_oom = oom
    if has_eval:
        trainer.vlmad_validate = _validator(vlm, encoder, eval_records, config, budgets, progress, main)
    try:
        trainer.train(resume_from_checkpoint=str(last) if last is not None else None)
    except torch.OutOfMemoryError as e:  # outside a training step (optimizer state, evaluation)
        raise oom(trainer.state.global_step, e) from e

    adapter_dir = model_dir = None
    if config.method == "full":
        model_dir = output_dir / MODEL_DIR
        trainer.save_model(str(model_dir))
        if main:
            vlm.processor.save_pretrained(str(model_dir))
    else:
        adapter_dir = output_dir / ADAPTER_DIR
        trainer.save_model(str(adapter_dir))
        if main:
            from vlmad.vlm.load import record_adapter_base

            record_adapter_base(adapter_dir, vlm)
    state = trainer.state
    losses = [(int(h["step"]), float(h["loss"])) for h in state.log_history if "loss" in h]
    evals = [
        {"step": int(h["step"]), **{k: float(v) for k, v in h.items() if k.startswith("eval_")}}
        for h in state.log_history
        if any(k.startswith("eval_") for k in h)
    ]
    best = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
    result = TrainResult(
        output_dir=output_dir,
        adapter_dir=adapter_dir,
        model_dir=model_dir,
        global_step=int(state.global_step),
        epoch=float(state.epoch or 0.0),
        resumed_from=last,
        best_checkpoint=best,
        best_metric=None if state.best_metric is None else float(state.best_metric),
        losses=losses,
        evals=evals,
        preflight=report,
        eval_preflight=eval_report,
        trainable=trainable,
        total=total,
        seconds=round(time.time() - started, 3),
        warnings=warnings,
        trainer=trainer,
    )
    if main:
        payload = {"config": config.summary(), "vlm": vlm.info.describe(), **result.to_dict()}
        (output_dir / "result.json").write_text(
            json.dumps(payload, indent=1, default=_json_default) + "\n", encoding="utf-8"
        )
    return result


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def _pad_id(vlm: VLM) -> int:
    tok = vlm.tokenizer
    pad = tok.pad_token_id
    if pad is None:
        pad = tok.eos_token_id
    return int(pad or 0)


def _quiet_deepspeed() -> None:
    """DeepSpeed logs every step at INFO to stdout; keep its warnings only."""
    import logging

    try:
        from deepspeed.utils import logger as ds_logger
    except ImportError as e:
        raise ConfigError(
            "deepspeed is set but DeepSpeed is not installed: pip install 'vlmad[train]'"
        ) from e
    ds_logger.setLevel(logging.WARNING)


def _tensorboard(output_dir: Path, warnings: list[str]) -> Any:
    """TensorBoard logs under ``output_dir/tensorboard``."""
    from transformers.integrations import TensorBoardCallback

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.append("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        from transformers import TrainerCallback

        return TrainerCallback()
    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(output_dir / "tensorboard")))


def _validator(
    vlm: VLM,
    encoder: Encoder,
    records: Sequence[TrainRecord],
    config: TrainConfig,
    budgets: Any,
    progress: Progress | None,
    main: bool,
) -> Callable[[Any], dict[str, float]]:
    from vlmad.train.validate import detection_metrics, eval_loss
    from vlmad.vlm import VLM

    def run(model: Any) -> dict[str, float]:
        live = VLM(model, vlm.processor, vlm.family, vlm.info, vlm.layout)
        out: dict[str, float] = {}
        if all(r.label is not None for r in records):
            out.update(
                detection_metrics(
                    live,
                    encoder,
                    records,
                    budgets=budgets,
                    question=config.eval_question,
                    max_new_tokens=config.eval_max_new_tokens,
                    batch_size=config.eval_batch_size,
                    progress=progress if main else None,
                )
            )
        out["loss"] = eval_loss(model, encoder, records, config.eval_batch_size, live.device)
        return out

    return run
