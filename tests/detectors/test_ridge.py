"""Ridge feature regression (document 001): the closed-form solver, alpha selection, detection, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.detectors.images import TINY_BACKBONE, dataset
from vlmad.detectors.base import Detector, DetectorError
from vlmad.detectors.ridge import (
    NormalEquations,
    RidgeRegression,
    residual_variance,
    ridge_fit,
    ridge_path,
)
from vlmad.errors import ConfigError
from vlmad.metrics.ranking import auroc

TINY = {k: v for k, v in TINY_BACKBONE.items() if k != "layers"}


def _stats(
    x: np.ndarray, y: np.ndarray, batches: int = 3, like: NormalEquations | None = None
) -> NormalEquations:
    st = like.like() if like is not None else NormalEquations(x.shape[1], y.shape[1])
    for part in np.array_split(np.arange(len(x)), batches):
        st.add(torch.from_numpy(x[part]).float(), torch.from_numpy(y[part]).float())
    return st


def _problem(n: int, d: int, e: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, e))
    # correlated inputs with an offset, as ReLU features are
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.5 + 3.0
    y = x @ w + 1.5 + noise * rng.normal(size=(n, e))
    return x.astype(np.float32), y.astype(np.float32), w


def test_closed_form_matches_the_ridge_formula_and_recovers_the_true_weights() -> None:
    x, y, w_true = _problem(600, 12, 5, noise=0.01, seed=0)
    st = _stats(x, y)
    assert st.n == 600
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    xc, yc = xd - xd.mean(0), yd - yd.mean(0)
    g = xc.T @ xc
    alpha = 0.05
    lam = alpha * np.trace(g) / g.shape[0]
    expected = np.linalg.solve(g + lam * np.eye(12), xc.T @ yc)
    w, b = ridge_fit(st, alpha)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b.numpy(), yd.mean(0) - xd.mean(0) @ expected, rtol=1e-4, atol=1e-4)
    # a vanishing alpha is ordinary least squares, which recovers the generating weights
    w0, b0 = ridge_fit(st, 1e-10)
    lstsq = np.linalg.lstsq(np.c_[xd, np.ones(len(xd))], yd, rcond=None)[0]
    np.testing.assert_allclose(w0.numpy(), lstsq[:-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(w0.numpy(), w_true, atol=0.01)
    np.testing.assert_allclose(b0.numpy(), 1.5, atol=0.05)


def test_residual_variance_from_the_statistics() -> None:
    x, y, _ = _problem(500, 8, 3, noise=2.0, seed=5)
    st = _stats(x, y)
    w, b = ridge_fit(st, 0.1)
    rv = residual_variance(st, w).numpy()
    pred = x.astype(np.float64) @ w.numpy() + b.numpy()
    np.testing.assert_allclose(rv, ((y - pred) ** 2).mean(0), rtol=1e-4)


@pytest.mark.parametrize("solver", ["eigh", "cholesky"])
def test_held_out_error_path_matches_direct_computation(solver: str) -> None:
    x, y, _ = _problem(300, 10, 4, noise=1.0, seed=1)
    tr, ho = slice(0, 200), slice(200, 300)
    train = _stats(x[tr], y[tr])
    held = _stats(x[ho], y[ho], like=train)
    alphas = [1e-6, 1e-2, 1.0, 100.0]
    mse = ridge_path(train, held, alphas, solver=solver)
    for a, got in zip(alphas, mse, strict=True):
        w, b = ridge_fit(train, a)
        pred = x[ho].astype(np.float64) @ w.numpy() + b.numpy()
        assert got == pytest.approx(((y[ho] - pred) ** 2).mean(), rel=1e-5)
    # statistics add up: train + held = all rows
    both = train + held
    direct = _stats(x, y, like=train)
    torch.testing.assert_close(both.sxx, direct.sxx, rtol=1e-5, atol=0)  # float32 products per batch
    assert both.n == 300


def test_alpha_selection_small_for_noiseless_data_larger_for_noisy_data() -> None:
    alphas = [1e-8, 1e-6, 1e-4, 1e-2, 1.0, 100.0]
    # noiseless: the smallest alpha wins
    x, y, _ = _problem(400, 20, 3, noise=0.0, seed=2)
    train, held = _stats(x[:300], y[:300]), None
    held = _stats(x[300:], y[300:], like=train)
    assert alphas[int(np.argmin(ridge_path(train, held, alphas)))] <= 1e-6
    # few rows, many inputs, heavy noise: shrinkage pays
    x, y, _ = _problem(60, 40, 3, noise=30.0, seed=3)
    train = _stats(x[:45], y[:45])
    held = _stats(x[45:], y[45:], like=train)
    assert alphas[int(np.argmin(ridge_path(train, held, alphas)))] >= 1e-2


def test_statistics_with_different_shifts_do_not_add() -> None:
    x, y, _ = _problem(50, 3, 2, noise=0.1, seed=4)
    a, b = _stats(x[:25], y[:25]), _stats(x[25:] + 1, y[25:])
    with pytest.raises(DetectorError, match="different shifts"):
        _ = a + b


@pytest.fixture(scope="module")
def fitted() -> tuple[RidgeRegression, list[np.ndarray], np.ndarray, list[np.ndarray], list[np.ndarray]]:
    train, test, labels, masks = dataset()
    det = RidgeRegression(**TINY).fit(train)
    return det, train, labels, test, masks


def test_ridge_separates_defects(fitted) -> None:
    det, _, labels, test, masks = fitted
    scores, maps = det.predict(test)
    assert scores.dtype == np.float64 and len(maps) == len(test)
    assert all(m.dtype == np.float32 and m.shape == (64, 64) for m in maps)
    assert auroc(labels, scores) >= 0.9  # measured 1.0 (random resnet18, 64 px)
    bad = labels == 1
    pixel = auroc(
        np.concatenate([m.ravel() for m, b in zip(masks, bad, strict=True) if b]),
        np.concatenate([m.ravel() for m, b in zip(maps, bad, strict=True) if b]),
    )
    assert pixel >= 0.7  # measured 0.83
    assert det.alpha_ in det.alphas and det.holdout_mse_ is not None and len(det.holdout_mse_) == 8
    assert det.n_holdout_ == 2  # 20% of 10 images
    assert det.alpha_ == det.alphas[int(np.argmin(det.holdout_mse_))]


def test_scoring_convolution_agrees_with_the_fitted_regression(fitted) -> None:
    """The per-position error at predict time (a convolution) averages, over the training images, to
    the residual variance the normal equations give (unfold order == conv kernel order)."""
    det, train, *_ = fitted
    err = torch.cat([det.lowres_errors(train[i : i + 5]) for i in range(0, len(train), 5)])
    assert float(err.mean()) == pytest.approx(float(det.residual_var_.mean()), rel=1e-3)


def test_ridge_save_load_round_trip(fitted, tmp_path: Path) -> None:
    det, _, _, test, _ = fitted
    scores, maps = det.predict(test)
    det.save(tmp_path / "m")
    back = Detector.load(tmp_path / "m")
    assert isinstance(back, RidgeRegression)
    s2, m2 = back.predict(test)
    np.testing.assert_array_equal(s2, scores)
    for a, b in zip(maps, m2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.alpha_ == det.alpha_ and back.holdout_mse_ == det.holdout_mse_
    d = back.describe()
    assert d["method"] == "ridge" and d["random_backbone"] and "RANDOM BACKBONE" in d["warnings"][0]
    assert list(d["backbone"]["layers"]) == [2, 3]


def test_mean_mode_single_image_and_bad_options() -> None:
    train, test, labels, _ = dataset(n_train=1)
    det = RidgeRegression(**TINY, neighbourhood_mode="mean", normalize_channels=True).fit(train)
    assert det.weight_.shape == (128, 256)  # resnet18 layer2 -> layer3, neighbourhood averaged
    assert det.holdout_unit_ == "positions" and any("one normal image" in w for w in det.warnings)
    scores, _ = det.predict(test)
    assert auroc(labels, scores) >= 0.8
    with pytest.raises(ConfigError, match="shallower"):
        RidgeRegression(**{**TINY, "seed": 0}, input_layer=3, output_layer=2).fit(train)
    with pytest.raises(ConfigError, match="odd"):
        RidgeRegression(**TINY, neighbourhood=2).fit(train)
    with pytest.raises(ConfigError, match="alphas"):
        RidgeRegression(**TINY, alphas=(0.0,)).fit(train)
