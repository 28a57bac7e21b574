"""One rank of a ZeRO-3 training run on CPU, started by the DeepSpeed launcher from ``test_deepspeed.py``.

Argument: a JSON file ``{"config": {...TrainConfig fields...}}``. Writes ``rank{R}.pt`` into the output
folder: the trained parameters gathered from all ranks, the logits of the first training record computed by
the sharded model, and the global step.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

# plain gloo collectives: skip DeepSpeed's shared-memory op, which is compiled on first use (about a minute)
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None

import deepspeed  # noqa: E402
import torch  # noqa: E402

from vlmad.train import make_config, train  # noqa: E402
from vlmad.train.data import Collator, Encoder, read_export  # noqa: E402
from vlmad.train.modeling import load_processor  # noqa: E402


def main() -> None:
    spec = json.loads(Path(sys.argv[-1]).read_text())
    config = make_config("deepspeed test", **spec["config"])
    result = train(config)
    model = result.trainer.model
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in trainable]):
        params = {n: p.detach().clone() for n, p in trainable}
    record = read_export(config.export_dir, config.train_split)[0]
    batch = Collator(0)([Encoder(load_processor(config.model)).encode(record).features])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits  # every rank runs the same forward: ZeRO-3 gathers layer by layer
    rank = int(os.environ["RANK"])
    torch.save(
        {
            "params": params,
            "logits": logits,
            "global_step": result.global_step,
            "world": int(os.environ["WORLD_SIZE"]),
        },
        Path(config.output_dir) / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main()
