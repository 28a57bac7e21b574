"""Training the tiny models: loss goes down, adapters reload to the same logits, resume, validation,
errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from vlmad.errors import ConfigError, DatasetError
from vlmad.train import TrainOutOfMemory, train
from vlmad.train.data import Collator, Encoder, read_export
from vlmad.train.modeling import load_processor, prepare_model
from vlmad.vlm import VlmError, load_vlm

from .conftest import ANSWER_TARGETS, FAMILIES, config


def _logits(model: Any, features: dict[str, Any]) -> torch.Tensor:
    batch = Collator(0)([features])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def trained(
    tiny_models: dict[str, Path], qa_export: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Each family overfitting two samples for 8 steps (fixed seed): ``{family: TrainResult}``."""
    out = {}
    for family in FAMILIES:
        cfg = config(
            tiny_models[family],
            qa_export,
            tmp_path_factory.mktemp(f"run-{family}"),
            max_steps=8,
            batch_size=2,
            max_train_samples=2,
            lora_targets=ANSWER_TARGETS,
            save_steps=8,
        )
        out[family] = train(cfg)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_goes_down(family: str, trained: dict[str, Any]) -> None:
    losses = [loss for _, loss in trained[family].losses]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first - 0.5, losses


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_adapter_reloads_to_the_same_logits(
    family: str, trained: dict[str, Any], tiny_models: dict[str, Path], qa_export: Path
) -> None:
    result = trained[family]
    adapter = result.adapter_dir
    record = json.loads((adapter / "vlmad_adapter_base.json").read_text())
    assert record["family"] == family and record["random_base"] is True
    weights = _adapter(adapter)
    assert any("lora_B" in k and float(v.abs().max()) > 0 for k, v in weights.items())  # trained, not init
    assert not any("vision" in k or "visual" in k for k in weights)  # the vision tower is untouched
    features = (
        Encoder(load_processor(str(tiny_models[family]))).encode(read_export(qa_export, "train")[0]).features
    )
    reloaded = load_vlm(tiny_models[family], device="cpu", adapter=adapter)
    base = load_vlm(tiny_models[family], device="cpu")
    live, again = _logits(result.trainer.model, features), _logits(reloaded.model, features)
    assert torch.allclose(live, again, rtol=0, atol=1e-6)
    assert not torch.allclose(_logits(base.model, features), again, atol=1e-3)


def test_trainable_modules_by_method(tiny_models: dict[str, Path], qa_export: Path, tmp_path: Path) -> None:
    vlm = load_vlm(tiny_models["qwen2vl"], device="cpu")
    groups = vlm.module_groups()
    model = prepare_model(vlm, config(tiny_models["qwen2vl"], qa_export, tmp_path, train_projector=True))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    wrapped = vlm.family.module_groups(model)
    assert {wrapped.group_of(n) for n in names} == {"language_model", "projector"}
    assert all("lora_" in n for n in names if wrapped.group_of(n) == "language_model")

    vlm = load_vlm(tiny_models["llava"], device="cpu")
    model = prepare_model(vlm, config(tiny_models["llava"], qa_export, tmp_path, method="full"))
    trainable = {groups.group_of(n) for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"language_model"}

    with pytest.raises(ConfigError, match="outside the language model"):
        prepare_model(vlm, config(tiny_models["llava"], qa_export, tmp_path, lora_targets=r".*\.q_proj"))


def test_full_fine_tuning_with_checkpointing_and_accumulation_saves_a_model(
    tiny_models: dict[str, Path], qa_export: Path, tmp_path: Path
) -> None:
    cfg = config(
        tiny_models["llava"],
        qa_export,
        tmp_path / "run",
        method="full",
        gradient_checkpointing=True,
        grad_accumulation=2,
    )
    result = train(cfg)
    assert result.adapter_dir is None and result.global_step == 2
    assert result.epoch == pytest.approx(4 / 12)  # 2 optimizer steps x 2 accumulated samples of 12
    tuned, base = load_vlm(result.model_dir, device="cpu"), load_vlm(tiny_models["llava"], device="cpu")
    assert tuned.info.random  # still marked as the tiny random model it came from
    after, before = dict(tuned.model.named_parameters()), dict(base.model.named_parameters())
    groups = base.module_groups()
    changed = {groups.group_of(n) for n in before if not torch.equal(before[n], after[n])}
    assert changed == {"language_model"}  # the vision tower and the projector stayed frozen


class Interrupted(Exception):
    """Stands for a killed process."""


class KillAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step:
            raise Interrupted(f"killed at step {self.step}")


def test_an_interrupted_run_continues_from_its_checkpoint(
    tiny_models: dict[str, Path], qa_export: Path, tmp_path: Path
) -> None:
    def cfg(out: Path) -> Any:
        return config(tiny_models["llava"], qa_export, out, max_steps=4, save_steps=2, batch_size=2)

    with pytest.raises(Interrupted):
        train(cfg(tmp_path / "run"), callbacks=[KillAt(3)])
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]

    logged: list[dict[str, float]] = []
    resumed = train(cfg(tmp_path / "run"), on_log=logged.append)  # the same command again
    assert resumed.resumed_from == tmp_path / "run" / "checkpoint-2" and resumed.global_step == 4
    assert [int(x["step"]) for x in logged if "loss" in x] == [3, 4]  # steps 1-2 were not redone
    assert [s for s, _ in resumed.losses] == [1, 2, 3, 4]  # the history comes back with the checkpoint
    optim = torch.load(tmp_path / "run" / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in optim["state"].values()} == {4}  # Adam state carried over, not restarted
    scheduler = torch.load(tmp_path / "run" / "checkpoint-4" / "scheduler.pt", weights_only=True)
    assert scheduler["last_epoch"] == 4

    straight = train(cfg(tmp_path / "straight"))
    a, b = _adapter(resumed.adapter_dir), _adapter(straight.adapter_dir)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [x for _, x in straight.losses] == pytest.approx([x for _, x in resumed.losses], abs=1e-5)

    with pytest.raises(ConfigError, match="holds checkpoints"):
        train(config(tiny_models["llava"], qa_export, tmp_path / "run", max_steps=4, resume=False))


def test_validation_logs_detection_metrics_and_keeps_the_best_checkpoint(
    tiny_models: dict[str, Path], qa_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = config(
        tiny_models["llava"],
        qa_export,
        out,
        max_steps=4,
        eval_split="validation",
        eval_holdout=0.25,  # one training record of each label joins the two validation normals
        eval_steps=2,
        eval_max_new_tokens=8,
        best_metric="auroc",
        report_to=["tensorboard"],
    )
    seen: list[dict[str, float]] = []
    result = train(cfg, on_log=seen.append)
    assert [e["step"] for e in result.evals] == [2, 4]
    for e in result.evals:
        for key in ("accuracy", "accuracy_good", "accuracy_logical", "accuracy_structural", "auroc", "loss"):
            assert 0 <= e[f"eval_{key}"] < 100, key
    best = max(result.evals, key=lambda e: e["eval_auroc"])
    assert result.best_metric == pytest.approx(best["eval_auroc"])
    assert result.best_checkpoint == out / f"checkpoint-{best['step']}"
    assert any("eval_accuracy_logical" in logs for logs in seen)
    kept, best_weights = _adapter(result.adapter_dir), _adapter(result.best_checkpoint)
    assert all(torch.equal(kept[k], best_weights[k]) for k in kept)  # the best step's adapter is the result
    assert len(result.preflight.kept) == 9 and result.eval_preflight is not None
    assert result.eval_preflight.n_records == 5

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("eval/accuracy_structural")) == 2 and events.Scalars("train/loss")
    saved = json.loads((out / "result.json").read_text())
    assert (
        saved["best_checkpoint"] == str(result.best_checkpoint) and saved["config"]["best_metric"] == "auroc"
    )


def test_early_stopping_ends_a_run_that_does_not_improve(
    tiny_models: dict[str, Path], qa_export: Path, tmp_path: Path
) -> None:
    cfg = config(
        tiny_models["internvl"],
        qa_export,
        tmp_path / "run",
        max_steps=6,
        learning_rate=1e-9,
        eval_split="validation",
        eval_steps=1,
        eval_max_new_tokens=4,
        early_stopping_patience=1,
    )
    result = train(cfg)
    assert result.global_step == 2 and len(result.evals) == 2


def test_out_of_memory_at_the_first_step_lists_what_reduces_memory(
    tiny_models: dict[str, Path], qa_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def oom(*args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.Trainer, "training_step", oom)
    with pytest.raises(TrainOutOfMemory) as err:
        train(config(tiny_models["llava"], qa_export, tmp_path / "run", batch_size=4))
    msg = str(err.value)
    assert "out of memory at the first step" in msg
    for tip in (
        "batch_size: 1 with grad_accumulation: 4",
        "gradient_checkpointing: true",
        "ds_zero3",
        "budgets",
    ):
        assert tip in msg


def test_bad_input_gives_clear_errors(
    tiny_models: dict[str, Path], qa_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llava = tiny_models["llava"]
    with pytest.raises(VlmError, match="unknown VLM family 'llama-vision'"):
        train(config(llava, qa_export, tmp_path / "a", family="llama-vision"))
    with pytest.raises(VlmError, match="not Qwen2-VL"):
        train(config(llava, qa_export, tmp_path / "b", family="qwen2vl"))
    with pytest.raises(
        DatasetError, match="no 'dev' split in this export; the export has test, train, validation"
    ):
        train(config(llava, qa_export, tmp_path / "c", eval_split="dev"))
    with pytest.raises(DatasetError, match="not a QA export"):
        train(config(llava, tmp_path, tmp_path / "d"))
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        train(config(llava, qa_export, tmp_path / "e", method="qlora"))
    with pytest.raises(ConfigError, match="undefined on the validation set"):
        train(config(llava, qa_export, tmp_path / "f", eval_split="validation", best_metric="auroc"))
    with pytest.raises(ConfigError, match=r"budgets\.template: .*max_tiles"):
        train(config(llava, qa_export, tmp_path / "g", budgets={"template": {"max_tiles": 2}}))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(VlmError) as err:
        train(config(Path("someone/not-cached-vlm"), qa_export, tmp_path / "h"))
    assert (
        "not a local directory" in str(err.value) and "local directory" in str(err.value).split("Download")[1]
    )
