"""Fixtures of the chain-of-image runner tests: a small generated dataset, a scriptable fake
OpenAI-compatible server keyed by test image, a tiny random LLaVA and a LoRA adapter on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vlmad.api.images import image_content
from vlmad.api.testing import FakeChatServer, Reply
from vlmad.coi.recipe import CoiRecipe, make_recipe
from vlmad.data import read_dataset
from vlmad.data.synth.generate import generate, make_config
from vlmad.records import Manifest

# per category: 3 train normals, 2 test normals, 2 logical and 2 structural anomalies (64 px)
COUNTS = {"train_good": 3, "validation_good": 0, "test_good": 2, "test_logical": 2, "test_structural": 2}
CATEGORIES = ("pushpins", "screw_bag")
MAX_SIDE = 64
ANSWER = "Step 1: objects listed.\nAnswer: anomalous\nExplanation: a pushpin is missing in the top row."
NORMAL = "Step 1: the same objects.\nAnswer: normal\nExplanation: it matches the template."


@pytest.fixture(scope="session")
def coi_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coi") / "ds"
    generate(make_config(size=64, categories=list(CATEGORIES), counts=COUNTS), out, workers=1)
    return out


@pytest.fixture(scope="session")
def coi_manifest(coi_dataset: Path) -> Manifest:
    return read_dataset(coi_dataset)


@pytest.fixture(scope="session")
def test_ids(coi_manifest: Manifest) -> list[str]:
    """The ids of the test images, in manifest order."""
    return [s.id for s in coi_manifest if s.split == "test"]


@pytest.fixture(scope="session")
def url_to_sample(coi_manifest: Manifest) -> dict[str, str]:
    """The data URL each test image is sent as (max_side 64, detail auto) -> its sample id."""
    out = {}
    for s in coi_manifest:
        if s.split == "test":
            part, _ = image_content(s.image_path, max_side=MAX_SIDE, detail="auto")
            out[part["image_url"]["url"]] = s.id
    return out


def sample_of(request: dict[str, Any], url_to_sample: dict[str, str]) -> str:
    """The sample id of the test image in a chat request (the second image of the first message)."""
    images = [p for p in request["messages"][0]["content"] if p.get("type") == "image_url"]
    return url_to_sample[images[1]["image_url"]["url"]]


Script = Callable[[str, dict[str, Any], int], Reply]


@pytest.fixture()
def server(url_to_sample: dict[str, str]) -> Iterator[Callable[[Script], FakeChatServer]]:
    """``start(script)`` runs a FakeChatServer whose replies come from ``script(sample_id, request, n)``."""
    servers: list[FakeChatServer] = []

    def start(script: Script, delay: float = 0.0) -> FakeChatServer:
        def responder(request: dict[str, Any], n: int) -> Reply:
            return script(sample_of(request, url_to_sample), request, n)

        srv = FakeChatServer(responder, delay=delay).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def api_recipe(url: str, **over: Any) -> CoiRecipe:
    """A recipe for one fake-server model (gpt-4o, so a price is known) with fast retries."""
    model = {"backend": "openai", "model": "gpt-4o", "base_url": url, "concurrency": 4, "timeout": 5.0}
    model.update(over.pop("model", {}))
    values: dict[str, Any] = {
        "models": [model],
        "prompts": ["coi_p1"],
        "max_side": MAX_SIDE,
        "retry": {"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.05, "total_retry_budget": None},
    }
    values.update(over)
    return make_recipe("test", **values)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LLaVA-1.5 checkpoint folder."""
    from vlmad.vlm.tiny import build

    return build("llava", tmp_path_factory.mktemp("tiny") / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_lora(tiny_llava: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter (non-zero weights) on the tiny LLaVA's language model, with its base record."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model

    from vlmad.vlm import load_vlm
    from vlmad.vlm.load import record_adapter_base

    base = load_vlm(tiny_llava, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base.model, LoraConfig(r=2, target_modules=base.family.lora_target_modules))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("adapter") / "lora"
    model.save_pretrained(out)
    record_adapter_base(out, base)
    return out
