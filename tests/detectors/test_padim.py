"""PaDiM: the streaming Gaussian against numpy, Mahalanobis by hand, detection, one image, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.detectors.images import TINY_BACKBONE, dataset, normal_image
from vlmad.detectors.base import Detector, DetectorError
from vlmad.detectors.padim import GaussianAccumulator, PaDiM, default_n_features, mahalanobis
from vlmad.errors import ConfigError
from vlmad.metrics.ranking import auroc

CONFIG = {**TINY_BACKBONE, "layers": (1, 2, 3), "n_features": 40, "batch_size": 3}


@pytest.fixture(scope="module")
def data():
    return dataset()


@pytest.fixture(scope="module")
def fitted(data) -> PaDiM:
    train = data[0]
    return PaDiM(**CONFIG).fit(train)  # 10 images in batches of 3, 3, 3, 1


def test_streaming_gaussian_equals_numpy_cov_on_uneven_batches() -> None:
    rng = np.random.default_rng(0)
    n, positions, dim, eps = 23, 3, 5, 0.01
    # a large common offset: raw sums of x x^T in float32 would lose the covariance to cancellation
    mix = rng.normal(size=(positions, dim, dim))
    x = 100.0 + np.einsum("npc,pcd->npd", rng.normal(size=(n, positions, dim)), mix)
    acc = GaussianAccumulator(positions, dim)
    start = 0
    for size in (1, 7, 4, 11):
        acc.update(torch.from_numpy(x[start : start + size]).float())
        start += size
    assert acc.n == n
    mean, inv = acc.finish(eps)
    np.testing.assert_allclose(mean.numpy(), x.mean(axis=0), rtol=1e-5)
    query = 100.0 + rng.normal(size=(2, positions, dim)) * 2
    dist = mahalanobis(torch.from_numpy(query).float(), mean, inv).numpy()
    for p in range(positions):
        cov = np.cov(x[:, p, :], rowvar=False, bias=False) + eps * np.eye(dim)  # unbiased, as anomalib
        np.testing.assert_allclose(inv[p].numpy(), np.linalg.inv(cov), rtol=1e-3, atol=1e-4)
        for b in range(2):
            delta = query[b, p] - x[:, p, :].mean(axis=0)
            assert dist[b, p] == pytest.approx(np.sqrt(delta @ np.linalg.solve(cov, delta)), rel=1e-3)


def test_one_observation_gives_eps_identity() -> None:
    acc = GaussianAccumulator(2, 3)
    acc.update(torch.ones(1, 2, 3))
    mean, inv = acc.finish(0.5)
    np.testing.assert_allclose(inv.numpy(), np.broadcast_to(2.0 * np.eye(3), (2, 3, 3)), rtol=1e-6)
    np.testing.assert_array_equal(mean.numpy(), np.ones((2, 3)))


def test_embedding_is_nearest_upsampled_selected_channels(fitted: PaDiM, data) -> None:
    # anomalib and the paper's code: deeper stages repeated onto the finest grid, then a channel subset
    images = data[1][:2]
    stages = fitted.features_.layer_features(images)
    assert [tuple(f.shape[-2:]) for f in stages] == [(16, 16), (8, 8), (4, 4)]
    full = torch.cat(
        [
            f.repeat_interleave(16 // f.shape[-1], dim=2).repeat_interleave(16 // f.shape[-1], dim=3)
            for f in stages
        ],
        dim=1,
    )
    expected = full[:, fitted.idx_].flatten(2).transpose(1, 2)
    assert torch.equal(fitted._embed(images), expected)


def test_fitted_gaussian_is_numpy_gaussian_of_the_selected_features(fitted: PaDiM, data) -> None:
    train, test = data[0], data[1]
    feats = fitted._embed(train).double().numpy()  # (N, P, n_features), the selected channels
    assert feats.shape == (10, 16 * 16, 40)
    assert fitted.idx_.tolist() == sorted(set(fitted.idx_.tolist())) and int(fitted.idx_.max()) < 448
    query = fitted._embed(test[-1:])
    dist = mahalanobis(query, fitted.mean_, fitted.inv_covariance_)[0].numpy()
    for p in (0, 137):
        cov = np.cov(feats[:, p, :], rowvar=False) + fitted.eps * np.eye(40)
        delta = query[0, p].double().numpy() - feats[:, p, :].mean(axis=0)
        assert dist[p] == pytest.approx(np.sqrt(delta @ np.linalg.solve(cov, delta)), rel=2e-3)


def test_padim_separates_defects_and_maps_peak_on_them(fitted: PaDiM, data) -> None:
    _, test, labels, masks = data
    scores, maps = fitted.predict(test)
    assert scores.dtype == np.float64 and scores.shape == (12,)
    assert all(m.dtype == np.float32 and m.shape == (64, 64) for m in maps)
    assert auroc(labels, scores) >= 0.9  # measured 1.0
    near = 0
    for amap, mask in zip(maps[6:], masks[6:], strict=True):
        peak = np.unravel_index(np.argmax(amap), amap.shape)
        near += ndimage.distance_transform_edt(~mask)[peak] <= 4  # one layer-1 cell; measured <= 2.2 px
        assert amap[mask].mean() > amap[~mask].mean()
    assert near >= 5


def test_save_load_predicts_exactly_the_same(fitted: PaDiM, data, tmp_path: Path) -> None:
    test = data[1]
    scores, maps = fitted.predict(test)
    back = Detector.load(fitted.save(tmp_path / "m"))
    assert isinstance(back, PaDiM) and back.get_params() == fitted.get_params()
    assert torch.equal(back.idx_, fitted.idx_)
    scores2, maps2 = back.predict(test)
    np.testing.assert_array_equal(scores2, scores)
    for a, b in zip(maps2, maps, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any("RANDOM BACKBONE" in w for w in back.warnings)


def test_set_state_rejects_mismatched_shapes(fitted: PaDiM, tmp_path: Path) -> None:
    tensors, meta = fitted._state()
    other = PaDiM(**{**CONFIG, "n_features": 30})
    other.features_ = other._make_features()
    with pytest.raises(ValueError, match=r"idx has shape \(40,\) but this PaDiM .* expects \(30,\)"):
        other._set_state(tensors, meta)
    same = PaDiM(**CONFIG)
    same.features_ = same._make_features()
    with pytest.raises(ValueError, match=r"mean has shape \(255, 40\) .* expects \(256, 40\)"):
        same._set_state({**tensors, "mean": tensors["mean"][:-1]}, meta)
    with pytest.raises(ValueError, match="inv_covariance has shape"):
        same._set_state({**tensors, "inv_covariance": tensors["inv_covariance"][:, :-1]}, meta)
    with pytest.raises(ValueError, match="missing tensors mean"):
        same._set_state({k: v for k, v in tensors.items() if k != "mean"}, meta)
    # through load: settings edited to another n_features no longer fit the weights
    folder = fitted.save(tmp_path / "m")
    settings = json.loads((folder / "detector.json").read_text())
    settings["params"]["n_features"] = 30
    (folder / "detector.json").write_text(json.dumps(settings))
    with pytest.raises(DetectorError, match="does not match the saved settings"):
        Detector.load(folder)


def test_one_training_image_works_with_a_warning() -> None:
    image = normal_image(0)
    det = PaDiM(**CONFIG).fit([image])
    assert det.n_train_ == 1 and any("one image" in w for w in det.warnings)
    scores, maps = det.predict([image, normal_image(1)])
    assert np.all(np.isfinite(scores)) and scores[0] == pytest.approx(0.0, abs=1e-3) and scores[1] > 1.0
    assert float(np.abs(maps[0]).max()) < 1e-3


def test_n_features_rule_and_errors() -> None:
    assert default_n_features(448) == 100  # resnet18 layers 1-3, the paper's 100
    assert default_n_features(1792) == 550  # wide_resnet50_2 layers 1-3, the paper's 550
    assert default_n_features(64) == 64
    det = PaDiM(**{**CONFIG, "n_features": None})
    det.features_ = det._make_features()
    assert det._expected() == (256, 100, 448)
    with pytest.raises(ConfigError, match="n_features=449 exceeds the 448 channels"):
        PaDiM(**{**CONFIG, "n_features": 449}).fit([normal_image(0)])
    with pytest.raises(ConfigError, match="eps must be"):
        PaDiM(**{**CONFIG, "eps": -1.0}).fit([normal_image(0)])


def test_channel_selection_follows_the_seed(fitted: PaDiM) -> None:
    again = PaDiM(**CONFIG).fit([normal_image(0), normal_image(1)])
    assert torch.equal(again.idx_, fitted.idx_)
