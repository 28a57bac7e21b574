"""Training step speed and memory: ``vlmad.train`` against a plain ``transformers.Trainer`` + peft loop.

Data: a generated two-category LOCO-style dataset (``--size-px`` px, 4 training normals and 4 anomalies of
each kind per category) turned into a QA export by :func:`vlmad.qa.build.build_qa` (the real input of
training). Both pipelines train LoRA (the family's default targets: attention and MLP projections of the
language model, the same rank) on the same records, with the same batch size, steps, learning rate and
precision:

- **vlmad**: :func:`vlmad.train.train` (role-labelled images through the family's chat format, per-role
  image budgets, answer-only loss masks, the pre-flight check before the first step, TensorBoard off);
- **reference**: what a plain script does: the exported messages rendered by the processor's chat template
  with the ``<image>`` placeholders left in the text, ``processor(text, images)``, labels = all tokens
  (no masking), ``peft.get_peft_model`` and ``transformers.Trainer``.

Each pipeline runs in its own process (so peak memory is its own), ``--repeats`` times alternating with the
other; the fastest run of each is compared (a shared machine's load moves single timings a lot: seen 5x on
2 busy cores; ``--threads 1`` steadies CPU numbers). Measured: samples per second of the
training steps after ``--warmup`` steps (data loading included, as the Trainer does it), the peak memory
(CPU: the process's peak resident set; GPU: ``torch.cuda.max_memory_allocated`` during training), and
vlmad's pre-flight check time apart. The ratios vlmad / reference are printed; targets: throughput at
least 0.8x and peak memory at most 1.25x the reference's (exit code 1 when missed).

Models (``--model``): ``tiny`` is :func:`vlmad.vlm.tiny.build`'s LLaVA (CPU); ``llava-7b`` is the
LLaVA-1.5-7B architecture (CLIP ViT-L/14 at 336 px, 576 tokens per image; Llama 7B: width 4096, 32 layers)
with RANDOM weights built in memory on the GPU in bf16, gradient checkpointing on; numbers are timings only.

Usage: ``.venv/bin/python bench/train.py [--model tiny|llava-7b] [--steps 20] [--warmup 3] [--batch 2]
[--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _util import finish, peak_rss_mb

HERE = Path(__file__).resolve()
COUNTS = {"train_good": 4, "validation_good": 1, "test_good": 1, "test_logical": 4, "test_structural": 4}


# ---- setup (parent process) ----------------------------------------------------------------------------
def make_export(root: Path, size: int) -> Path:
    from vlmad.data import read_dataset
    from vlmad.data.synth.generate import generate, make_config
    from vlmad.qa.build import BuildSettings, build_qa

    generate(
        make_config(size=size, counts=COUNTS, categories=["breakfast_box", "pushpins"]),
        root / "ds",
        workers=1,
    )
    manifest = read_dataset(root / "ds")
    build_qa(
        manifest,
        root / "export",
        BuildSettings(fraction=1.0, variants=1, formats=["messages", "hf"]),
        store_path=root / "qa.sqlite",
    )
    return root / "export"


def make_model_dir(kind: str, root: Path) -> Path:
    """The tiny model, or for ``llava-7b`` a folder with the 7B config and a processor (no weights)."""
    from vlmad.vlm.tiny import build

    tiny = build("llava", root / "tiny-llava")
    if kind == "tiny":
        return tiny
    from transformers import AutoProcessor, LlavaProcessor
    from transformers.models.llava.image_processing_llava import LlavaImageProcessor

    from vlmad.vlm.tiny import CLIP_MEAN, CLIP_STD

    small = AutoProcessor.from_pretrained(tiny)
    processor = LlavaProcessor(
        image_processor=LlavaImageProcessor(
            size={"shortest_edge": 336},
            crop_size={"height": 336, "width": 336},
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        ),
        tokenizer=small.tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=small.chat_template,
    )
    out = root / "llava-7b-skeleton"
    out.mkdir()
    llava_7b_config(small.tokenizer).save_pretrained(out)
    processor.save_pretrained(out)
    (tiny / "generation_config.json").replace(out / "generation_config.json")
    return out


def llava_7b_config(tokenizer: Any) -> Any:
    from transformers import LlavaConfig

    return LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "image_size": 336,
            "patch_size": 14,
            "projection_dim": 768,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": 32064,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


# ---- workers -------------------------------------------------------------------------------------------
def build_model(kind: str, model_dir: Path) -> Any:
    """The model to train: the tiny checkpoint, or the 7B architecture with random bf16 weights on the GPU."""
    import torch
    from transformers import AutoConfig, LlavaForConditionalGeneration

    if kind == "tiny":
        return LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    config = AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    return model


class StepClock:
    """A TrainerCallback factory: wall time at each step end (CUDA synchronised)."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self) -> None:
                self.times: list[float] = []

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.times.append(time.perf_counter())

        return Clock()


def _rate(times: list[float], warmup: int, batch: int) -> float:
    measured = times[warmup - 1 :] if warmup > 0 else times
    return batch * (len(measured) - 1) / (measured[-1] - measured[0])


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    gpu = args.model != "tiny"
    return {
        "gpu": gpu,
        "precision": "bf16" if gpu else "fp32",
        "gradient_checkpointing": gpu,
        "lr": 1e-4,
        "r": 16,
        "alpha": 32,
    }


def worker_vlmad(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from vlmad.train import make_config, train
    from vlmad.vlm import VLM, get_family, probe_layout
    from vlmad.vlm.load import VlmInfo

    s = _settings(args)
    out = Path(tempfile.mkdtemp(prefix="vlmad-run-", dir=args.tmp))
    config = make_config(
        "bench",
        model=args.model_dir,
        family="llava",
        export_dir=args.export,
        output_dir=str(out),
        max_steps=args.steps,
        batch_size=args.batch,
        learning_rate=s["lr"],
        lr_scheduler="constant",
        warmup=0,
        lora_r=s["r"],
        lora_alpha=s["alpha"],
        lora_dropout=0.0,
        precision=s["precision"],
        gradient_checkpointing=s["gradient_checkpointing"],
        eval_split=None,
        report_to=[],
        save_steps=10**6,
        logging_steps=10**6,
        max_length=4096,
        device=None if s["gpu"] else "cpu",
    )
    vlm = None
    if s["gpu"]:
        from transformers import AutoProcessor

        model = build_model(args.model, Path(args.model_dir))
        processor = AutoProcessor.from_pretrained(args.model_dir)
        info = VlmInfo(args.model_dir, "llava", "llava", True, "cuda", "bfloat16", random_detail="random 7B")
        vlm = VLM(model, processor, get_family("llava"), info, probe_layout(processor))
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock()
    start = time.perf_counter()
    result = train(config, callbacks=[clock], vlm=vlm)
    total = time.perf_counter() - start
    first_step = clock.times[0] - start
    return {
        "samples_per_s": _rate(clock.times, args.warmup, args.batch),
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if s["gpu"] else peak_rss_mb(),
        "setup_s": first_step,
        "total_s": total,
        "tokens_p95": result.preflight.tokens.p95,
        "trainable": result.trainable,
    }


def worker_reference(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from PIL import Image
    from transformers import AutoProcessor, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from vlmad.vlm import get_family

    s = _settings(args)
    info = json.loads((Path(args.export) / "export.json").read_text())
    root = Path(info["image_root"])
    rows = [json.loads(x) for x in (Path(args.export) / "messages" / "train.jsonl").read_text().splitlines()]
    processor = AutoProcessor.from_pretrained(args.model_dir)

    class Plain(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict[str, Any]:
            row = rows[i]
            text = processor.apply_chat_template(row["messages"], tokenize=False)
            images = [Image.open(root / p).convert("RGB") for p in row["images"]]
            enc = processor(text=[text], images=images, return_tensors="pt")
            out = {k: v[0] if k in ("input_ids", "attention_mask") else v for k, v in enc.items()}
            out["labels"] = out["input_ids"].clone()
            return out

    def collate(feats: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(int(f["input_ids"].shape[0]) for f in feats)
        pad = processor.tokenizer.pad_token_id or 0
        batch: dict[str, Any] = {}
        for key, fill in (("input_ids", pad), ("attention_mask", 0), ("labels", -100)):
            t = torch.full((len(feats), width), fill, dtype=torch.long)
            for i, f in enumerate(feats):
                t[i, : f[key].shape[0]] = f[key]
            batch[key] = t
        batch["pixel_values"] = torch.cat([f["pixel_values"] for f in feats])
        return batch

    model = build_model(args.model, Path(args.model_dir))
    for p in model.parameters():
        p.requires_grad_(False)
    target = get_family("llava").lora_target_modules
    model = get_peft_model(
        model, LoraConfig(r=s["r"], lora_alpha=s["alpha"], lora_dropout=0.0, target_modules=target)
    )
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="reference-run-", dir=args.tmp),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        bf16=s["precision"] == "bf16",
        activation_checkpointing=s["gradient_checkpointing"],
        activation_checkpointing_kwargs={"use_reentrant": False} if s["gradient_checkpointing"] else None,
        use_cpu=not s["gpu"],
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
        data_seed=0,
    )
    clock = StepClock()
    trainer = Trainer(
        model=model, args=targs, train_dataset=Plain(), data_collator=collate, callbacks=[clock]
    )
    trainer.remove_callback(PrinterCallback)
    if s["gpu"]:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    trainer.train()
    return {
        "samples_per_s": _rate(clock.times, args.warmup, args.batch),
        "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if s["gpu"] else peak_rss_mb(),
        "setup_s": clock.times[0] - start,
        "total_s": time.perf_counter() - start,
    }


# ---- main ----------------------------------------------------------------------------------------------
def run_worker(
    which: str, args: argparse.Namespace, export: Path, model_dir: Path, tmp: Path
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(HERE),
        "--worker",
        which,
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
        "--export",
        str(export),
        "--model-dir",
        str(model_dir),
        "--tmp",
        str(tmp),
    ]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{which} worker failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["tiny", "llava-7b"], default="tiny")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size-px", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the workers (0: default)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each pipeline, alternating; best kept")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", choices=["vlmad", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--export", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        fn = worker_vlmad if args.worker == "vlmad" else worker_reference
        print(json.dumps(fn(args)))
        return
    if args.warmup < 1 or args.steps <= args.warmup + 1:
        raise SystemExit("need --warmup >= 1 and --steps > warmup + 1")

    with tempfile.TemporaryDirectory(prefix="vlmad-bench-train-") as tmp_name:
        tmp = Path(tmp_name)
        export = make_export(tmp / "data", args.size_px)
        model_dir = make_model_dir(args.model, tmp)
        results: dict[str, Any] = {"model": args.model, "steps": args.steps, "batch": args.batch}
        runs: dict[str, list[dict[str, Any]]] = {"reference": [], "vlmad": []}
        for _ in range(max(1, args.repeats)):
            for which in ("reference", "vlmad"):
                runs[which].append(run_worker(which, args, export, model_dir, tmp))
        for which, rs in runs.items():  # the fastest run; the lowest peak memory
            best = max(rs, key=lambda r: r["samples_per_s"])
            results[which] = {
                **best,
                "peak_mb": min(r["peak_mb"] for r in rs),
                "all_samples_per_s": [r["samples_per_s"] for r in rs],
            }
    ref, ours = results["reference"], results["vlmad"]
    speed = ours["samples_per_s"] / ref["samples_per_s"]
    memory = ours["peak_mb"] / ref["peak_mb"]
    results["ratios"] = {"samples_per_s": speed, "peak_memory": memory}
    where = "GPU memory allocated" if args.model != "tiny" else "process peak RSS"
    print(
        f"training step, {args.model} LLaVA, batch {args.batch}, {args.steps} steps ({args.warmup} warm-up)"
    )
    print(f"{'pipeline':<30}{'samples/s':>12}{'peak MB':>12}{'to 1st step s':>15}")
    for name, r in (("transformers.Trainer + peft", ref), ("vlmad.train", ours)):
        print(f"{name:<30}{r['samples_per_s']:>12.2f}{r['peak_mb']:>12.0f}{r['setup_s']:>15.1f}")
    print(f"ratio vlmad / reference: throughput {speed:.2f}x, peak memory ({where}) {memory:.2f}x")
    print("(vlmad's time to the first step includes loading the processor and checking every sample)")
    failures = []
    if speed < 0.8:
        failures.append(f"vlmad throughput {speed:.2f}x the reference's (target >= 0.8x)")
    if memory > 1.25:
        failures.append(f"vlmad peak memory {memory:.2f}x the reference's (target <= 1.25x)")
    finish(results, failures, args.json)


if __name__ == "__main__":
    main()
