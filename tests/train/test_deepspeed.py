"""Two processes under the DeepSpeed launcher, ZeRO-3 over gloo on CPU: both ranks end with the same weights
and the adapter saved from the sharded model is the trained one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlmad.train.data import Collator, Encoder, read_export
from vlmad.train.modeling import load_processor
from vlmad.vlm import load_vlm

pytest.importorskip("deepspeed")

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_zero3_two_processes_train_the_same_weights_and_save_the_gathered_adapter(
    tiny_models: dict[str, Path], qa_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    spec = {
        "config": {
            "model": str(tiny_models["llava"]),
            "export_dir": str(qa_export),
            "output_dir": str(out),
            "deepspeed": str(ROOT / "train" / "ds_zero3.json"),
            "device": "cpu",
            "precision": "fp32",
            "max_steps": 3,
            "save_steps": 3,
            "max_train_samples": 4,
            "learning_rate": 1e-2,
            "lr_scheduler": "constant",
            "warmup": 0,
            "lora_r": 4,
            "lora_dropout": 0.0,
            "eval_split": None,
            "report_to": [],
            "logging_steps": 1,
            "max_length": 1024,
        }
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        "2",
        "--master_port",
        str(_free_port()),
        str(Path(__file__).with_name("ds_worker.py")),
        str(tmp_path / "spec.json"),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [3, 3]
    a, b = ranks[0]["params"], ranks[1]["params"]
    assert a.keys() == b.keys() and len(a) > 0 and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(ranks[0]["logits"], ranks[1]["logits"])

    # the adapter rank 0 saved holds the full, trained LoRA weights gathered from both ranks
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(v.numel() > 0 for v in saved.values())
    assert any("lora_B" in k and float(v.abs().max()) > 0 for k, v in saved.items())  # not the zero init
    assert (out / "adapter" / "vlmad_adapter_base.json").is_file() and (out / "result.json").is_file()
    # and reloads on its base to the outputs the sharded model gave
    vlm = load_vlm(tiny_models["llava"], device="cpu", adapter=out / "adapter")
    record = read_export(qa_export, "train")[0]
    batch = Collator(0)([Encoder(load_processor(str(tiny_models["llava"]))).encode(record).features])
    batch.pop("labels")
    with torch.no_grad():
        logits = vlm.model(**batch).logits
    assert torch.allclose(logits, ranks[0]["logits"], rtol=0, atol=1e-5)
