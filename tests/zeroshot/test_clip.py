"""Clip: one loading code for any checkpoint folder, encoders agree with transformers', clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmad.zeroshot.clip import Clip, ZeroShotError, make_tiny_clip


def test_tiny_clip_is_flagged_and_describes_its_geometry(tiny_clip: Clip) -> None:
    info = tiny_clip.info
    assert info.random and info.warning and info.warning.startswith("TINY RANDOM CLIP")
    assert (info.image_size, info.patch_size, info.grid, info.num_layers) == (64, 8, 8, 4)
    assert info.describe()["random_clip"] is True


def test_text_from_embeddings_equals_the_text_tower(tiny_clip: Clip) -> None:
    texts = ["a photo of a damaged screw bag.", "flawless pushpins"]
    ids = tiny_clip.tokenize(texts)
    with torch.no_grad():
        got = tiny_clip.encode_text_embeddings(tiny_clip.token_embeddings(ids), tiny_clip.eos_positions(ids))
    want = tiny_clip.encode_text(texts)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(want.norm(dim=1), torch.ones(2))
    assert not torch.allclose(want[0], want[1])


def test_image_embeddings_match_transformers_and_tokens_cover_the_grid(tiny_clip: Clip) -> None:
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (80, 100, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
    ]
    px = tiny_clip.preprocess(images)
    assert px.shape == (2, 3, 64, 64)
    with torch.no_grad():
        ref = tiny_clip.model.get_image_features(pixel_values=px)
        ref = getattr(ref, "pooler_output", ref)
        ref = ref / ref.norm(dim=-1, keepdim=True)
        glob, (p2, p4) = tiny_clip.patch_features(px, [2, 4])
        _, (raw,) = tiny_clip.patch_features(px, [4], project=False)
        assert torch.allclose(tiny_clip.encode_image(px), ref, atol=1e-5)
    assert torch.allclose(glob, ref, atol=1e-5)
    assert p2.shape == p4.shape == (2, 64, 32) and raw.shape == (2, 64, 32)
    assert not torch.allclose(p2, p4)
    with pytest.raises(ZeroShotError, match="layers 1-4"):
        tiny_clip.patch_features(px, [5])


def test_a_prompt_past_the_token_limit_is_named(tiny_clip: Clip) -> None:
    long = "a photo of " + "a very " * 40 + "damaged screw bag"
    with pytest.raises(ZeroShotError, match="at most 77") as err:
        tiny_clip.tokenize(["short", long])
    assert "a very a very" in str(err.value)


def test_a_checkpoint_without_projections_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = make_tiny_clip(tmp_path / "clip")
    weights = path / "model.safetensors"
    tensors = {k: v for k, v in load_file(weights).items() if "visual_projection" not in k}
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ZeroShotError, match="visual_projection"):
        Clip.load(path)


def test_a_folder_that_is_not_clip_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ZeroShotError, match="not CLIP"):
        Clip.load(tmp_path / "bert")
    with pytest.raises(ZeroShotError, match="cannot be read"):
        Clip.load(tmp_path / "missing")
