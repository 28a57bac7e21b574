"""Local backend (tiny random LLaVA, base + LoRA adapter): predictions with verdicts, yes/no scores and
complete metadata; multi-turn steps; the same pixels as the API backend; the score's prefix."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vlmad.api.images import image_content, prepare_image
from vlmad.coi.backends import LocalBackend, Outcome, public_url, score_prefix
from vlmad.coi.recipe import make_recipe
from vlmad.coi.runner import PREDICTIONS_FILE, run_coi
from vlmad.data.predictions import read_predictions
from vlmad.records import Manifest

from .conftest import MAX_SIDE

LOCAL_KEYS = {
    "status",
    "raw",
    "template_sample_id",
    "template_strategy",
    "images",
    "backend",
    "model",
    "model_name",
    "adapter",
    "revision",
    "model_fingerprint",
    "adapter_fingerprint",
    "random_vlm",
    "prompt",
    "prompt_version",
    "prompt_hash",
    "prompt_mode",
    "params",
    "seed",
    "max_side",
    "usage",
    "cost_usd",
    "attempts",
    "latency_s",
    "cached",
    "cache_key",
    "run_fingerprint",
    "answer_mass",
    "served_model",
    "finish_reason",
}


def local_recipe(tiny_llava: Path, tiny_lora: Path | None = None, **over: Any) -> Any:
    models = [{"backend": "local", "source": str(tiny_llava), "name": "tiny-llava", "device": "cpu"}]
    if tiny_lora is not None:
        models.append(
            {
                "backend": "local",
                "source": str(tiny_llava),
                "adapter": str(tiny_lora),
                "name": "tiny-llava+lora",
                "device": "cpu",
            }
        )
    values: dict[str, Any] = {
        "models": models,
        "prompts": ["coi_p2"],
        "max_side": MAX_SIDE,
        "per_label": 1,
        "generation": {"max_tokens": 6},
    }
    values.update(over)
    return make_recipe("test", **values)


def test_base_and_lora_give_verdicts_scores_and_complete_records(
    tiny_llava: Path, tiny_lora: Path, coi_manifest: Manifest, tmp_path: Path
) -> None:
    summary = run_coi(local_recipe(tiny_llava, tiny_lora), tmp_path / "run", manifest=coi_manifest)
    preds = read_predictions(tmp_path / "run" / PREDICTIONS_FILE)
    n_images = 2 * 3  # two categories, one image per label
    assert len(preds) == 2 * n_images == summary.written and summary.requests == 0
    assert {p.run_id for p in preds} == {"tiny-llava/coi_p2", "tiny-llava+lora/coi_p2"}
    assert any("TINY RANDOM" in w for w in summary.warnings)
    for p in preds:
        m = p.metadata
        assert set(m) >= LOCAL_KEYS, LOCAL_KEYS - set(m)
        assert p.verdict in ("normal", "anomalous", "unparsed")
        assert p.score is not None and 0.0 <= p.score <= 1.0 and 0.0 <= m["answer_mass"] <= 1.0
        assert m["backend"] == "local" and m["random_vlm"] is True and m["cost_usd"] is None
        assert m["params"] == {"max_new_tokens": 6, "do_sample": False, "seed": 0}
        assert m["usage"]["completion_tokens"] <= 6 and m["usage"]["prompt_tokens"] > 20
        assert m["images"]["test"]["sent_width"] == 64 and len(m["model_fingerprint"]) == 16
        assert m["status"] in ("answered", "unparsed", "empty")
    base = {p.sample_id: p for p in preds if p.run_id == "tiny-llava/coi_p2"}
    tuned = {p.sample_id: p for p in preds if p.run_id == "tiny-llava+lora/coi_p2"}
    assert all(p.metadata["adapter"] is None for p in base.values())
    assert all(p.metadata["adapter"] == str(tiny_lora) for p in tuned.values())
    assert len({p.metadata["adapter_fingerprint"] for p in tuned.values()}) == 1
    assert any(abs(base[s].score - tuned[s].score) > 1e-6 for s in base)  # type: ignore[operator]

    # an unchanged rerun in a new folder with the same cache loads no model and computes nothing
    again = run_coi(
        local_recipe(tiny_llava, tiny_lora, cache=str(tmp_path / "run" / "cache.sqlite")),
        tmp_path / "again",
        manifest=coi_manifest,
    )
    assert again.cached == again.written == len(preds)


def test_multi_turn_local_keeps_every_step(tiny_llava: Path, coi_manifest: Manifest, tmp_path: Path) -> None:
    recipe = local_recipe(
        tiny_llava, prompts=[{"name": "coi_p1", "mode": "multi_turn"}], categories=["pushpins"]
    )
    run_coi(recipe, tmp_path / "run", manifest=coi_manifest)
    preds = read_predictions(tmp_path / "run" / PREDICTIONS_FILE)
    assert len(preds) == 3 and {p.run_id for p in preds} == {"tiny-llava/coi_p1-multi_turn"}
    for p in preds:
        steps = p.metadata["steps"]
        assert len(steps) == 3 and all(isinstance(s, str) for s in steps)
        assert p.metadata["raw"] == steps[-1] and p.metadata["prompt_mode"] == "multi_turn"
        assert p.metadata["usage"]["completion_tokens"] <= 3 * 6


def test_local_backend_gets_the_pixels_the_api_backend_sends(
    tiny_llava: Path, coi_manifest: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    original = LocalBackend.answer_batch

    def spy(self: LocalBackend, items: Any) -> list[Outcome]:
        seen.extend(items)
        return original(self, items)

    monkeypatch.setattr(LocalBackend, "answer_batch", spy)
    recipe = local_recipe(tiny_llava, categories=["screw_bag"], max_side=40, cache=False)
    run_coi(recipe, tmp_path / "run", manifest=coi_manifest)
    preds = {p.sample_id: p for p in read_predictions(tmp_path / "run" / PREDICTIONS_FILE)}
    assert len(seen) == len(preds) == 3
    tests = [s for s in coi_manifest if s.split == "test" and s.category == "screw_bag"]
    by_pixels: dict[bytes, Any] = {}
    for s in tests:
        by_pixels[np.asarray(prepare_image(s.image_path, max_side=40)[0]).tobytes()] = s
    for item in seen:
        test_pixels = np.asarray(item.images["test"])
        assert test_pixels.shape == (40, 40, 3)
        sample = by_pixels[test_pixels.tobytes()]
        part, info = image_content(sample.image_path, max_side=40, detail="auto")
        sent = Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])))
        assert np.array_equal(np.asarray(sent), test_pixels)  # the very pixels the API gets
        assert preds[sample.id].metadata["images"]["test"]["sent_width"] == info["sent_width"] == 40
        template = coi_manifest.get(preds[sample.id].metadata["template_sample_id"])
        assert np.array_equal(
            np.asarray(item.images["template"]),
            np.asarray(prepare_image(template.image_path, max_side=40)[0]),
        )
        assert item.labels[0].startswith("Template image") and "screw bag" in item.labels[0]


def test_score_prefix() -> None:
    assert score_prefix("The box is full.\nAnswer: normal\nExplanation: fine") == "The box is full.\nAnswer:"
    assert score_prefix("**Answer:** anomalous") == "Answer:"
    assert score_prefix("I see two images.") == "I see two images.\nAnswer:"
    assert score_prefix("") == "Answer:"
    assert score_prefix("A. Answer: no\nmore\nFinal answer: yes") == "A. Answer: no\nmore\nAnswer:"


def test_public_url_drops_credentials() -> None:
    assert public_url("http://user:secret@host:8000/v1") == "http://host:8000/v1"
    assert public_url("https://api.openai.com/v1") == "https://api.openai.com/v1"
    assert public_url(None) is None
