"""MuSc: mutual scoring, LNAMD and RsCIN on hand-made inputs with known answers; predict on a tiny CLIP."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlmad.errors import ConfigError
from vlmad.zeroshot.clip import Clip, ZeroShotError
from vlmad.zeroshot.musc import (
    MuSc,
    default_layers,
    interval_count,
    lnamd,
    mutual_scores,
    rscin,
)


def brute_force_scores(tokens: torch.Tensor, interval: float) -> torch.Tensor:
    """The definition, loop by loop: exact pairwise distances (no matmul)."""
    b, n, _ = tokens.shape
    k = interval_count(interval, b - 1)
    out = torch.zeros(b, n, dtype=torch.float64)
    for i in range(b):
        for p in range(n):
            d = sorted(
                float(torch.linalg.vector_norm(tokens[i, p] - tokens[j], dim=-1).min())
                for j in range(b)
                if j != i
            )
            out[i, p] = sum(d[:k]) / k
    return out


# ---- mutual scoring ---------------------------------------------------------------------------------------
def test_mutual_scores_outlier_scores_its_distance_and_normal_patches_zero() -> None:
    a, b_, c = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]
    outlier = [1.0, 0.0, 0.7]  # 0.7 from a, farther from b and c
    tokens = torch.tensor(
        [
            [a, b_, c, a],
            [c, a, b_, b_],
            [b_, c, a, outlier],  # image 2, patch 3
            [a, a, c, b_],
        ],
        dtype=torch.float64,
    )
    for interval in (0.3, 0.5, 1.0):
        scores = mutual_scores(tokens, interval)
        expected = torch.zeros(4, 4, dtype=torch.float64)
        expected[2, 3] = 0.7
        torch.testing.assert_close(scores, expected, atol=1e-7, rtol=0)


def test_mutual_scores_interval_averages_the_smallest_per_image_distances() -> None:
    # 1-D tokens; image j holds x_j and a far token 100 + x_j (its nearest in the others is their far token)
    xs = [0.0, 1.0, 3.0, 6.0, 10.0]
    tokens = torch.tensor([[[x], [100.0 + x]] for x in xs], dtype=torch.float64)
    # image 0: distances to the others 1, 3, 6, 10; image 3 (x = 6): 6, 5, 3, 4 -> sorted 3, 4, 5, 6
    cases = {
        0.25: (1.0, 3.0),  # k = ceil(0.25 * 4) = 1
        0.3: ((1 + 3) / 2, (3 + 4) / 2),  # k = ceil(1.2) = 2
        0.5: ((1 + 3) / 2, (3 + 4) / 2),  # k = 2
        0.6: ((1 + 3 + 6) / 3, (3 + 4 + 5) / 3),  # k = ceil(2.4) = 3
        1.0: ((1 + 3 + 6 + 10) / 4, (3 + 4 + 5 + 6) / 4),  # k = 4
    }
    for interval, (s0, s3) in cases.items():
        scores = mutual_scores(tokens, interval)
        assert scores.shape == (5, 2)
        assert scores[0, 0].item() == pytest.approx(s0, abs=1e-6), interval
        assert scores[3, 0].item() == pytest.approx(s3, abs=1e-6), interval
        torch.testing.assert_close(scores[:, 1], scores[:, 0], atol=1e-6, rtol=0)


def test_interval_count() -> None:
    assert interval_count(0.3, 10) == 3
    assert interval_count(0.28, 25) == 7  # 0.28 * 25 is 7.000000000000001 in floating point
    assert interval_count(0.3, 3) == 1
    assert interval_count(0.01, 3) == 1  # at least one
    assert interval_count(1.0, 7) == 7
    with pytest.raises(ConfigError):
        interval_count(0.0, 3)
    with pytest.raises(ConfigError):
        interval_count(1.5, 3)


@pytest.mark.parametrize("block", [1, 36, 100, 400, 1 << 24])
def test_blocked_mutual_scores_equal_brute_force(block: int) -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(6, 9, 5, generator=gen, dtype=torch.float64)
    for interval in (0.3, 0.7):
        torch.testing.assert_close(
            mutual_scores(tokens, interval, block=block),
            brute_force_scores(tokens, interval),
            atol=1e-7,
            rtol=0,
        )
    # float32 tokens: same up to float32 rounding
    torch.testing.assert_close(
        mutual_scores(tokens.float(), 0.3, block=block).double(),
        brute_force_scores(tokens, 0.3),
        atol=1e-3,
        rtol=1e-4,
    )


def test_mutual_scores_needs_two_images() -> None:
    with pytest.raises(ZeroShotError, match="at least 2 images"):
        mutual_scores(torch.zeros(1, 4, 3), 0.3)


# ---- LNAMD ------------------------------------------------------------------------------------------------
def grid_tokens() -> torch.Tensor:
    """(1, 9, 2): channel 0 = 0..8 on a 3 x 3 grid (row-major), channel 1 = 1 everywhere."""
    values = torch.arange(9, dtype=torch.float64)
    return torch.stack([values, torch.ones(9, dtype=torch.float64)], dim=-1)[None]


def test_lnamd_r3_averages_the_neighbourhood_inside_the_grid() -> None:
    # 0 1 2 / 3 4 5 / 6 7 8: corners average 4 cells, edges 6, the centre 9
    expected = torch.tensor(
        [
            (0 + 1 + 3 + 4) / 4,
            (0 + 1 + 2 + 3 + 4 + 5) / 6,
            (1 + 2 + 4 + 5) / 4,
            (0 + 1 + 3 + 4 + 6 + 7) / 6,
            sum(range(9)) / 9,
            (1 + 2 + 4 + 5 + 7 + 8) / 6,
            (3 + 4 + 6 + 7) / 4,
            (3 + 4 + 5 + 6 + 7 + 8) / 6,
            (4 + 5 + 7 + 8) / 4,
        ],
        dtype=torch.float64,
    )
    raw = lnamd(grid_tokens(), 3, 3, normalize=False)
    assert raw.shape == (1, 9, 2)
    torch.testing.assert_close(raw[0, :, 0], expected)
    torch.testing.assert_close(raw[0, :, 1], torch.ones(9, dtype=torch.float64))
    # default: each aggregated token L2-normalised
    out = lnamd(grid_tokens(), 3, 3)
    norm = torch.sqrt(expected**2 + 1)
    torch.testing.assert_close(out[0, :, 0], expected / norm)
    torch.testing.assert_close(out[0, :, 1], 1 / norm)


def test_lnamd_r1_is_identity_then_normalised() -> None:
    tokens = torch.randn(2, 16, 3, dtype=torch.float64)
    torch.testing.assert_close(lnamd(tokens, 4, 1, normalize=False), tokens)
    torch.testing.assert_close(lnamd(tokens, 4, 1), tokens / tokens.norm(dim=-1, keepdim=True))


def test_lnamd_rejects_even_degree_and_non_grid() -> None:
    with pytest.raises(ConfigError, match="odd"):
        lnamd(grid_tokens(), 3, 2)
    with pytest.raises(ValueError, match="grid"):
        lnamd(grid_tokens(), 4, 3)


# ---- RsCIN ------------------------------------------------------------------------------------------------
def angle_features(degrees: list[float], scales: list[float]) -> np.ndarray:
    return np.array(
        [
            [s * math.cos(math.radians(d)), s * math.sin(math.radians(d))]
            for d, s in zip(degrees, scales, strict=True)
        ]
    )


def test_rscin_means_over_nearest_images() -> None:
    # images at 0, 10, 80, 90 degrees: 0 <-> 1 and 2 <-> 3 are each other's nearest; lengths do not matter
    feats = angle_features([0, 10, 80, 90], [1.0, 3.0, 0.5, 2.0])
    scores = np.array([1.0, 3.0, 10.0, 20.0])
    torch.testing.assert_close(rscin(scores, feats, [1]), torch.tensor(scores))
    torch.testing.assert_close(
        rscin(scores, feats, [2]), torch.tensor([2.0, 2.0, 15.0, 15.0], dtype=torch.float64)
    )
    # k = 3: 0 -> {0, 1, 2}, 1 -> {1, 0, 2}, 2 -> {2, 3, 1}, 3 -> {3, 2, 1}
    k3 = [14 / 3, 14 / 3, 11.0, 11.0]
    torch.testing.assert_close(rscin(scores, feats, [3]), torch.tensor(k3, dtype=torch.float64))
    expected = [(1 + 2 + 14 / 3) / 3, (3 + 2 + 14 / 3) / 3, (10 + 15 + 11) / 3, (20 + 15 + 11) / 3]
    out = rscin(torch.tensor(scores), torch.tensor(feats), (1, 2, 3))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))
    # k beyond B is clipped: everyone gets the mean
    torch.testing.assert_close(rscin(scores, feats, [10]), torch.full((4,), 8.5, dtype=torch.float64))
    with pytest.raises(ConfigError):
        rscin(scores, feats, [0])


def test_rscin_includes_the_image_itself_among_identical_features() -> None:
    feats = np.ones((4, 3))  # all equally similar: the image itself must still be one of its k nearest
    scores = np.array([0.0, 1.0, 2.0, 3.0])
    torch.testing.assert_close(rscin(scores, feats, [1]), torch.tensor(scores))


# ---- the method -------------------------------------------------------------------------------------------
def test_default_layers() -> None:
    assert default_layers(24) == [6, 12, 18, 24]
    assert default_layers(12) == [3, 6, 9, 12]
    assert default_layers(4) == [1, 2, 3, 4]
    assert default_layers(2) == [1, 2]


def test_options_unchanged_and_validated(tiny_clip: Clip) -> None:
    m = MuSc(tiny_clip)
    assert m.options() == {
        "layers": None,
        "r_list": (1, 3, 5),
        "interval": 0.3,
        "rescore": True,
        "k_list": (1, 2, 3),
        "sigma": 4.0,
        "block": 1 << 24,
    }
    assert m.used_layers == default_layers(tiny_clip.info.num_layers)
    assert m.describe()["musc_layers"] == m.used_layers
    assert MuSc(tiny_clip, **{**m.options(), "layers": [2, 4]}).options()["layers"] == [2, 4]
    for bad in ({"layers": [0]}, {"r_list": [2]}, {"interval": 0}, {"k_list": [0]}, {"sigma": -1}):
        with pytest.raises(ConfigError):
            MuSc(tiny_clip, **bad)


def images_of_sizes() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (80, 120), (50, 70), (96, 96)]
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_predict_on_tiny_clip_gives_finite_scores_and_maps_at_input_sizes(tiny_clip: Clip) -> None:
    images = images_of_sizes()
    scores, maps = MuSc(tiny_clip).predict(images, "bottle")
    assert scores.shape == (4,) and scores.dtype == np.float64
    assert np.isfinite(scores).all()
    assert [m.shape for m in maps] == [im.shape[:2] for im in images]
    assert all(m.dtype == np.float32 and np.isfinite(m).all() for m in maps)


def test_predict_the_odd_image_out_scores_highest(tiny_clip: Clip) -> None:
    base = np.full((64, 64, 3), 120, dtype=np.uint8)
    odd = base.copy()
    odd[20:44, 20:44] = (250, 30, 30)
    images = [base, base.copy(), base.copy(), odd]
    for rescore in (False, True):
        scores, _ = MuSc(tiny_clip, rescore=rescore).predict(images, "bottle")
        assert int(np.argmax(scores)) == 3, scores
        assert scores[:3].max() < 0.1 * scores[3], scores  # identical images match each other exactly


def test_one_image_is_refused_with_the_reason(tiny_clip: Clip) -> None:
    with pytest.raises(ZeroShotError, match="several test images") as err:
        MuSc(tiny_clip).predict(images_of_sizes()[:1], "bottle")
    assert "other unlabelled test images" in str(err.value)
    with pytest.raises(ZeroShotError, match="no reference images"):
        MuSc(tiny_clip).predict(images_of_sizes(), "bottle", references=images_of_sizes()[:1])
