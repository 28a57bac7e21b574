"""AnomalyCLIP: the prompt learner is the text tower on learnable tokens, training lowers the loss and uses
the masks, predictions refuse training categories, save/load round-trips exactly and checks its inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmad.zeroshot import base
from vlmad.zeroshot.anomalyclip import (
    META_FILE,
    WEIGHTS_FILE,
    AnomalyCLIP,
    PromptLearner,
    default_layers,
    placeholder_prompts,
)
from vlmad.zeroshot.clip import Clip, ZeroShotError, make_tiny_clip

SETTINGS = {"n_ctx": 4, "epochs": 6, "lr": 1e-2, "batch_size": 4, "seed": 0}


def textures(seed: int, n: int = 12, size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """``n`` random-texture images; every second one has a bright 16 x 16 square and its mask."""
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    for i in range(n):
        img = rng.integers(60, 140, (size, size, 3), dtype=np.uint8)
        if i % 2:
            y, x = rng.integers(8, size - 24, 2)
            img[y : y + 16, x : x + 16] = 250
            mask = np.zeros((size, size), np.uint8)
            mask[y : y + 16, x : x + 16] = 255
            masks.append(mask)
        else:
            masks.append(None)
        images.append(img)
    return images, masks


@pytest.fixture(scope="module")
def data() -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    return textures(0)


@pytest.fixture(scope="module")
def trained(tiny_clip: Clip, data: tuple[list[np.ndarray], list[np.ndarray | None]]) -> AnomalyCLIP:
    images, masks = data
    cats = ["juice_bottle", "breakfast_box"] * (len(images) // 2)
    calls: list[tuple[int, int, float]] = []
    model = AnomalyCLIP(tiny_clip, **SETTINGS).fit(
        images, masks, cats, progress=lambda e, n, loss: calls.append((e, n, loss)), dataset="D"
    )
    model.progress_calls = calls  # type: ignore[attr-defined]
    return model


def test_prompt_learner_with_placeholder_embeddings_is_the_text_tower(tiny_clip: Clip) -> None:
    learner = PromptLearner(tiny_clip, n_ctx=5, seed=0)
    texts = placeholder_prompts(5)
    assert texts == ["X X X X X object.", "X X X X X damaged object."]
    want = tiny_clip.encode_text(texts)
    with torch.no_grad():
        random_ctx = learner()
    assert random_ctx.shape == want.shape == (2, tiny_clip.info.embed_dim)
    assert not torch.allclose(random_ctx, want, atol=1e-3)  # random context vectors are not the words

    word = tiny_clip.token_embeddings(torch.tensor([learner.placeholder_id], device=tiny_clip.device))
    with torch.no_grad():
        learner.ctx_normal.copy_(word.expand(5, -1))
        learner.ctx_abnormal.copy_(word.expand(5, -1))
        got = learner()
    assert torch.allclose(got, want, atol=1e-6)


def test_prompt_learner_init_is_seeded_and_gradients_reach_only_the_context(tiny_clip: Clip) -> None:
    a, b, c = (PromptLearner(tiny_clip, n_ctx=3, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.ctx_normal, b.ctx_normal) and torch.equal(a.ctx_abnormal, b.ctx_abnormal)
    assert not torch.equal(a.ctx_normal, c.ctx_normal)
    assert a.ctx_normal.shape == (3, tiny_clip.model.config.text_config.hidden_size)
    assert 0.01 < float(a.ctx_normal.detach().std()) < 0.03
    assert [name for name, _ in a.named_parameters()] == ["ctx_normal", "ctx_abnormal"]
    a()[1].sum().backward()
    assert a.ctx_abnormal.grad is not None and float(a.ctx_abnormal.grad.abs().sum()) > 0
    assert all(p.grad is None for p in tiny_clip.model.parameters())


def test_layers_default_and_options_are_stored_unchanged(tiny_clip: Clip) -> None:
    assert default_layers(12) == [3, 6, 9, 12]
    assert default_layers(24) == [6, 12, 18, 24]
    assert default_layers(4) == [1, 2, 3, 4]
    assert default_layers(2) == [1, 2]
    assert default_layers(1) == [1]
    model = AnomalyCLIP(tiny_clip)
    assert model.layers_used == [1, 2, 3, 4]
    assert model.options() == {
        "device": None,
        "n_ctx": 12,
        "layers": None,
        "epochs": 2,
        "lr": 1e-3,
        "batch_size": 8,
        "temperature": 100.0,
        "sigma": 4.0,
        "seed": 0,
        "image_from_map": 0.0,
    }
    assert AnomalyCLIP(tiny_clip, layers=[2, 4]).layers_used == [2, 4]
    assert base._REGISTRY["anomalyclip"] is AnomalyCLIP and AnomalyCLIP.requires_fit
    with pytest.raises(ZeroShotError, match="vision layers 1-4"):
        AnomalyCLIP(tiny_clip, layers=[2, 5])
    with pytest.raises(ZeroShotError, match="n_ctx"):
        AnomalyCLIP(tiny_clip, n_ctx=0)


def test_training_lowers_the_loss_and_records_what_it_saw(trained: AnomalyCLIP) -> None:
    history = trained.loss_history_
    assert len(history) == SETTINGS["epochs"] and all(np.isfinite(history))
    assert history[-1] < 0.7 * history[0]
    assert [(e, n) for e, n, _ in trained.progress_calls] == [(e, 6) for e in range(1, 7)]  # type: ignore[attr-defined]
    assert [loss for _, _, loss in trained.progress_calls] == history  # type: ignore[attr-defined]
    assert trained.trained_on_ == ["breakfast_box", "juice_bottle"]
    assert "AnomalyCLIP prompts trained on breakfast_box, juice_bottle (dataset D)" in trained.warnings
    assert trained.warnings[0].startswith("TINY RANDOM CLIP")
    info = trained.describe()
    assert info["trained_on"] == ["breakfast_box", "juice_bottle"] and info["method"] == "anomalyclip"
    assert all(p.grad is None for p in trained.clip.model.parameters())


def test_training_is_deterministic(
    tiny_clip: Clip, trained: AnomalyCLIP, data: tuple[list[np.ndarray], list[np.ndarray | None]]
) -> None:
    images, masks = data
    cats = ["juice_bottle", "breakfast_box"] * (len(images) // 2)
    again = AnomalyCLIP(tiny_clip, **SETTINGS).fit(images, masks, cats)
    assert again.loss_history_ == trained.loss_history_
    assert torch.equal(again.prompts_.ctx_normal, trained.prompts_.ctx_normal)
    assert torch.equal(again.prompts_.ctx_abnormal, trained.prompts_.ctx_abnormal)


def test_maps_of_unseen_images_light_up_the_defects(trained: AnomalyCLIP) -> None:
    images, masks = textures(1)  # new images, a category it was not trained on
    scores, maps = trained.predict(images, "pushpins")
    assert scores.dtype == np.float64 and scores.shape == (len(images),)
    assert np.all((scores >= 0) & (scores <= 1))
    inside = np.mean([m[t > 0].mean() for m, t in zip(maps, masks, strict=True) if t is not None])
    outside = np.mean([m[t == 0].mean() for m, t in zip(maps, masks, strict=True) if t is not None])
    assert outside < 0.25 and inside > outside + 0.5  # without the pixel losses: about 0.77 vs 0.41


def test_maps_come_at_each_input_size(trained: AnomalyCLIP) -> None:
    rng = np.random.default_rng(3)
    images = [
        rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(64, 64, 3), (50, 90, 3), (128, 40, 3)]
    ]
    scores, maps = trained.predict(images, "screw_bag")
    assert [m.shape for m in maps] == [(64, 64), (50, 90), (128, 40)]
    assert all(m.dtype == np.float32 and np.all((m >= 0) & (m <= 1)) for m in maps)
    assert scores.shape == (3,)


def test_image_from_map_mixes_in_the_map_maximum(
    tiny_clip: Clip, trained: AnomalyCLIP, tmp_path: Path
) -> None:
    images, _ = textures(2, n=4)
    trained.save(tmp_path)
    mixed = AnomalyCLIP.load(tmp_path, tiny_clip)
    mixed.image_from_map = 1.0
    scores, maps = mixed.predict(images, "pushpins")
    np.testing.assert_allclose(scores, [m.max() for m in maps], rtol=1e-6)
    plain, _ = trained.predict(images, "pushpins")
    assert not np.allclose(plain, scores)


def test_predict_refuses_untrained_prompts_and_training_categories(
    tiny_clip: Clip, trained: AnomalyCLIP
) -> None:
    images, _ = textures(4, n=2)
    with pytest.raises(ZeroShotError, match="not trained"):
        AnomalyCLIP(tiny_clip).predict(images, "pushpins")
    with pytest.raises(
        ZeroShotError, match="trained on juice_bottle; the training set and the test categories"
    ):
        trained.predict(images, "juice_bottle")


def test_fit_checks_masks_and_lengths(tiny_clip: Clip) -> None:
    images, masks = textures(5, n=2)
    with pytest.raises(ZeroShotError, match="mask 1 has shape"):
        AnomalyCLIP(tiny_clip, n_ctx=2).fit(images, [None, np.zeros((32, 32), bool)], "a")
    with pytest.raises(ZeroShotError, match="one mask"):
        AnomalyCLIP(tiny_clip, n_ctx=2).fit(images, masks[:1], "a")


def test_save_and_load_reproduce_predictions_exactly(
    tiny_clip: Clip, trained: AnomalyCLIP, tmp_path: Path
) -> None:
    images, _ = textures(6, n=5)
    want_scores, want_maps = trained.predict(images, "pushpins")
    out = trained.save(tmp_path / "ac")
    meta = json.loads((out / META_FILE).read_text())
    assert meta["trained_on"] == ["breakfast_box", "juice_bottle"] and meta["dataset"] == "D"
    assert meta["loss_history"] == trained.loss_history_ and meta["options"] == trained.options()
    assert meta["clip"] == tiny_clip.info.source and len(meta["sha256"]) == 64

    loaded = AnomalyCLIP.load(out, tiny_clip)
    scores, maps = loaded.predict(images, "pushpins")
    assert np.array_equal(scores, want_scores)
    assert all(np.array_equal(a, b) for a, b in zip(maps, want_maps, strict=True))
    assert loaded.trained_on_ == trained.trained_on_ and loaded.warnings == trained.warnings
    assert loaded.options() == trained.options() and loaded.loss_history_ == trained.loss_history_


def test_unsaved_model_cannot_be_saved(tiny_clip: Clip, tmp_path: Path) -> None:
    with pytest.raises(ZeroShotError, match="not trained"):
        AnomalyCLIP(tiny_clip).save(tmp_path)


def test_corrupted_weights_are_refused(tiny_clip: Clip, trained: AnomalyCLIP, tmp_path: Path) -> None:
    out = trained.save(tmp_path / "ac")
    weights = out / WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ZeroShotError, match="sha256") as err:
        AnomalyCLIP.load(out, tiny_clip)
    assert str(weights) in str(err.value)
    weights.unlink()
    with pytest.raises(ZeroShotError, match="missing"):
        AnomalyCLIP.load(out, tiny_clip)


def test_a_different_clip_is_refused(tiny_clip: Clip, trained: AnomalyCLIP, tmp_path: Path) -> None:
    out = trained.save(tmp_path / "ac")
    wider = Clip.load(make_tiny_clip(tmp_path / "wide", hidden=48, projection_dim=48))
    with pytest.raises(ZeroShotError, match="text width 32") as err:
        AnomalyCLIP.load(out, wider)
    assert WEIGHTS_FILE in str(err.value)

    # same geometry, other weights: the recorded source differs
    other = Clip.load(make_tiny_clip(tmp_path / "other", seed=1))
    with pytest.raises(ZeroShotError, match="trained with CLIP") as err:
        AnomalyCLIP.load(out, other)
    assert META_FILE in str(err.value)

    # the same model copied elsewhere loads only when the source check is waived
    copy = Path(shutil.copytree(tiny_clip.info.source, tmp_path / "copy"))
    moved = Clip.load(copy)
    with pytest.raises(ZeroShotError, match="trained with CLIP"):
        AnomalyCLIP.load(out, moved)
    images, _ = textures(7, n=2)
    got, _ = AnomalyCLIP.load(out, moved, check_source=False).predict(images, "pushpins")
    want, _ = trained.predict(images, "pushpins")
    assert np.array_equal(got, want)
