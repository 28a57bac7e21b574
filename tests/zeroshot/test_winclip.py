"""WinCLIP / WinCLIP+ on the tiny random CLIP (64 px, patch 8: an 8 x 8 patch grid)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlmad.errors import ConfigError
from vlmad.zeroshot.base import build
from vlmad.zeroshot.clip import Clip
from vlmad.zeroshot.winclip import (
    ANOMALOUS_STATES,
    NORMAL_STATES,
    TEMPLATES,
    WinCLIP,
    harmonic_aggregate,
    mean_aggregate,
    prompt_ensemble,
    window_indices,
)


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (80, 100, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
    ]


# ---- prompts ------------------------------------------------------------------------------------------
def test_prompt_ensemble_is_states_times_templates() -> None:
    normal, anomalous = prompt_ensemble("screw_bag")
    assert len(normal) == len(NORMAL_STATES) * len(TEMPLATES) == 7 * 22
    assert len(anomalous) == len(ANOMALOUS_STATES) * len(TEMPLATES) == 4 * 22
    assert len(set(normal)) == len(normal) and len(set(anomalous)) == len(anomalous)
    assert "a photo of a flawless screw bag." in normal
    assert "a photo of the screw bag without damage for anomaly detection." in normal
    assert "a cropped photo of the screw bag." in normal  # the bare state "{}"
    assert "a blurry photo of a damaged screw bag." in anomalous
    assert "a photo of the small screw bag with defect." in anomalous
    assert not set(normal) & set(anomalous)


def test_text_embeddings_are_renormalised_means(tiny_clip: Clip) -> None:
    m = WinCLIP(tiny_clip)
    got = m.text_embeddings("screw_bag")
    normal, anomalous = prompt_ensemble("screw_bag")
    expected = []
    for prompts in (normal, anomalous):
        e = tiny_clip.encode_text(prompts)
        assert torch.allclose(e.norm(dim=-1), torch.ones(len(prompts)), atol=1e-5)
        mean = e.mean(dim=0)
        expected.append(mean / mean.norm())
    assert got.shape == (2, tiny_clip.info.embed_dim)
    assert torch.allclose(got, torch.stack(expected), atol=1e-5)
    assert m.text_embeddings("screw_bag") is got  # cached per category
    assert not torch.allclose(m.text_embeddings("pushpins"), got, atol=1e-3)


# ---- windows and aggregation --------------------------------------------------------------------------
def test_window_indices_by_hand() -> None:
    assert window_indices(3, 2).tolist() == [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]
    # stride 2 on 5 patches: starts 0, 2 and the edge-flush 3, so the last row/column is covered
    w = window_indices(5, 2, stride=2)
    assert w.shape == (9, 4)
    assert (
        w[0].tolist() == [0, 1, 5, 6] and w[2].tolist() == [3, 4, 8, 9] and w[-1].tolist() == [18, 19, 23, 24]
    )
    assert window_indices(4, 4).tolist() == [list(range(16))]


def test_harmonic_aggregate_by_hand() -> None:
    windows = window_indices(3, 2)
    scores = torch.tensor([0.5, 0.25, 1.0, 0.2], dtype=torch.float64)
    expected = torch.tensor(
        [
            [0.5, 2 / (2 + 4), 0.25],
            [2 / (2 + 1), 4 / (2 + 4 + 1 + 5), 2 / (4 + 5)],
            [1.0, 2 / (1 + 5), 0.2],
        ],
        dtype=torch.float64,
    )
    got = harmonic_aggregate(scores, windows, 3)
    assert got.shape == (3, 3)
    assert torch.allclose(got, expected)
    batch = harmonic_aggregate(torch.stack([scores, torch.full((4,), 0.3, dtype=torch.float64)]), windows, 3)
    assert batch.shape == (2, 3, 3)
    assert torch.allclose(batch[0], expected) and torch.allclose(
        batch[1], torch.full((3, 3), 0.3, dtype=torch.float64)
    )
    # the mean of the few-shot part, on the same windows
    mean = mean_aggregate(scores, windows, 3)
    assert mean[1, 1].item() == pytest.approx((0.5 + 0.25 + 1.0 + 0.2) / 4)
    assert mean[0, 1].item() == pytest.approx((0.5 + 0.25) / 2)
    assert mean[2, 2].item() == pytest.approx(0.2)


def test_window_embedding_of_every_patch_is_the_image_embedding(tiny_clip: Clip) -> None:
    grid = tiny_clip.info.grid
    m = WinCLIP(tiny_clip, scales=(grid,))
    with torch.inference_mode():
        pixels = tiny_clip.preprocess(_images())
        tokens = tiny_clip.vision_tokens(pixels)
        whole = m.window_embeddings(tokens, grid)
        image = tiny_clip.encode_image(pixels)
        assert whole.shape == (2, 1, tiny_clip.info.embed_dim)
        assert torch.allclose(whole[:, 0], image, atol=1e-5)
        # one 2 x 2 window by hand: the window starting at row 1, column 2 is number 1 * 7 + 2
        small = m.window_embeddings(tokens, 2)
        assert small.shape == (2, (grid - 1) ** 2, tiny_clip.info.embed_dim)
        cols = [0] + [1 + r * grid + c for r in (1, 2) for c in (2, 3)]
        by_hand = tiny_clip.encode_tokens(tokens[:, cols])
        assert torch.allclose(small[:, 1 * (grid - 1) + 2], by_hand, atol=1e-5)
        assert not torch.allclose(small[:, 0], by_hand, atol=1e-3)


def test_batched_equals_naive(tiny_clip: Clip) -> None:
    images, ref = _images(), _images(seed=1)[1:]
    opts = {"scales": (2, 3), "stride": 2}
    fast = WinCLIP(tiny_clip, window_batch=7, **opts)  # chunks that straddle images
    slow = WinCLIP(tiny_clip, batched=False, **opts)
    for refs in (None, ref):
        a = fast.components(images, "screw_bag", refs)
        b = slow.components(images, "screw_bag", refs)
        assert torch.allclose(a.scores, b.scores, atol=1e-5)
        assert torch.allclose(a.grid, b.grid, atol=1e-5)
        for k in (2, 3):
            assert torch.allclose(a.zero_shot_scales[k], b.zero_shot_scales[k], atol=1e-5)
        if refs is not None:
            assert a.few_shot is not None and b.few_shot is not None
            assert torch.allclose(a.few_shot, b.few_shot, atol=1e-5)


# ---- predict ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("few_shot", [False, True])
def test_predict_scores_and_maps(tiny_clip: Clip, few_shot: bool) -> None:
    m = WinCLIP(tiny_clip)
    images = _images()
    refs = _images(seed=2) if few_shot else None
    scores, maps = m.predict(images, "screw_bag", references=refs)
    assert scores.dtype == np.float64 and scores.shape == (2,)
    assert np.all((scores >= 0) & (scores <= 1))
    assert [a.shape for a in maps] == [(80, 100), (64, 64)]
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in maps)
    assert all(a.min() >= 0 and a.max() <= 1 for a in maps)
    parts = m.components(images, "screw_bag", refs)
    assert parts.grid.shape == (2, 8, 8)
    assert np.allclose(scores, parts.scores.double().numpy(), atol=1e-6)
    if few_shot:
        assert parts.few_shot is not None and parts.few_shot_patch is not None
        expected = (parts.zero_shot_scores + parts.few_shot.flatten(1).amax(1)) / 2
        assert torch.allclose(parts.scores, expected)
        assert torch.allclose(parts.grid, (parts.zero_shot + parts.few_shot) / 2)
        terms = [*parts.few_shot_scales.values(), parts.few_shot_patch]
        assert len(terms) == 3 and torch.allclose(parts.few_shot, torch.stack(terms).mean(0))
    else:
        assert parts.few_shot is None
        assert torch.allclose(parts.scores, parts.zero_shot_scores)
        assert torch.allclose(parts.zero_shot, torch.stack(list(parts.zero_shot_scales.values())).mean(0))


def test_image_as_its_own_reference_has_no_few_shot_anomaly(tiny_clip: Clip) -> None:
    m = WinCLIP(tiny_clip)
    image = _images()[:1]
    own = m.components(image, "screw_bag", references=image)
    assert own.few_shot_patch is not None and own.few_shot is not None
    assert float(own.few_shot_patch.abs().max()) < 1e-5
    assert float(own.few_shot.abs().max()) < 1e-5
    assert torch.allclose(own.scores, own.zero_shot_scores / 2, atol=1e-5)
    other = m.components(image, "screw_bag", references=_images(seed=3)[:1])
    assert other.few_shot_patch is not None
    assert float(other.few_shot_patch.min()) > 1e-3  # a different image is not its own nearest neighbour


# ---- construction -------------------------------------------------------------------------------------
def test_options_and_errors(tiny_clip: Clip) -> None:
    import vlmad.zeroshot.winclip  # noqa: F401  (registers "winclip")

    m = build("winclip", tiny_clip, scales=(2,), stride=1, sigma=0.0)
    assert isinstance(m, WinCLIP) and m.method == "winclip" and m.label == "WinCLIP"
    assert m.options() == {
        "scales": (2,),
        "stride": 1,
        "temperature": 100.0,
        "sigma": 0.0,
        "window_batch": 512,
        "batched": True,
    }
    json.dumps(m.describe())
    with pytest.raises(ConfigError):
        build("winclip", tiny_clip, bogus=1)
    bad_options = [
        {"scales": (9,)},
        {"scales": ()},
        {"scales": (2, 2)},
        {"stride": 0},
        {"window_batch": 0},
        {"temperature": 0},
        {"temperature": "hot"},
        {"sigma": -1.0},
    ]
    for bad in bad_options:
        with pytest.raises(ConfigError):
            WinCLIP(tiny_clip, **bad)
