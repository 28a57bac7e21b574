"""SPADE: nearest normal images, pixel kNN against their gallery, detection, options, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.detectors.images import TINY_BACKBONE, dataset
from vlmad.detectors.base import Detector
from vlmad.detectors.spade import SPADE
from vlmad.errors import ConfigError
from vlmad.metrics.ranking import auroc

# torch search by default (faiss's thread start-up dominates at this size); faiss is exercised below
CONFIG = {**TINY_BACKBONE, "layers": (1, 2, 3), "top_k_images": 5, "batch_size": 4, "knn_backend": "torch"}


@pytest.fixture(scope="module")
def data():
    return dataset()


@pytest.fixture(scope="module")
def fitted(data) -> SPADE:
    return SPADE(**CONFIG).fit(data[0])


@pytest.fixture(scope="module")
def predicted(fitted: SPADE, data) -> tuple[np.ndarray, list[np.ndarray]]:
    return fitted.predict(data[1])


def test_spade_separates_defects_and_maps_peak_on_them(fitted: SPADE, data, predicted) -> None:
    _, test, labels, masks = data
    scores, maps = predicted
    assert scores.dtype == np.float64 and scores.shape == (12,)
    assert all(m.dtype == np.float32 and m.shape == (64, 64) for m in maps)
    assert auroc(labels, scores) >= 0.9  # image kNN score; measured 1.0
    near = 0
    for amap, mask in zip(maps[6:], masks[6:], strict=True):
        peak = np.unravel_index(np.argmax(amap), amap.shape)
        near += ndimage.distance_transform_edt(~mask)[peak] <= 4  # one layer-1 cell; measured <= 1.4 px
        assert amap[mask].mean() > amap[~mask].mean()
    assert near >= 5
    # the knn score is the mean distance of the global feature to the K nearest training images
    d, _ = fitted.nearest_images(test[5:7])
    np.testing.assert_allclose(scores[5:7], d.mean(axis=1), rtol=1e-6)


def test_map_max_score_and_kappa_option(fitted: SPADE, data, predicted) -> None:
    _, test, labels, _ = data
    maps1 = predicted[1]
    fitted.image_score, fitted.k_pixel = "map_max", 3
    try:
        scores3, maps3 = fitted.predict(test)
    finally:
        fitted.image_score, fitted.k_pixel = "knn", 1
    assert auroc(labels, scores3) >= 0.9  # measured 1.0
    np.testing.assert_allclose(scores3, [m.max() for m in maps3], rtol=1e-6)
    # the mean distance to the 3 nearest gallery features is never below the distance to the nearest
    assert all(np.all(m3 >= m1 - 1e-5) for m1, m3 in zip(maps1, maps3, strict=True))
    assert any(np.any(m3 > m1 + 1e-3) for m1, m3 in zip(maps1, maps3, strict=True))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_a_training_image_finds_itself_and_scores_zero(fitted: SPADE, data, backend: str) -> None:
    train, test = data[0], data[1]
    fitted.top_k_images, fitted.knn_backend = 1, backend  # parameters are read at prediction time
    try:
        dists, idx = fitted.nearest_images(train[2:5])
        scores, maps = fitted.predict([*train[2:5], test[0]])
    finally:
        fitted.top_k_images, fitted.knn_backend = CONFIG["top_k_images"], CONFIG["knn_backend"]
    assert idx.shape == (3, 1) and idx[:, 0].tolist() == [2, 3, 4]
    # a normal test image that is not in the training set; distances of identical features are 0 up to
    # float32 cancellation in |q|^2 - 2 q.b + |b|^2 (measured 0 with faiss, <= 0.008 x typical with torch)
    typical_map, typical_score = float(np.median(maps[3])), float(scores[3])
    assert typical_map > 0.1 and typical_score > 0.1
    assert np.all(dists < 0.02 * typical_score) and np.all(scores[:3] < 0.02 * typical_score)
    for amap in maps[:3]:
        assert float(amap.max()) < 0.02 * typical_map


def test_faiss_and_torch_search_agree(fitted: SPADE, data) -> None:
    test = data[1][4:8]
    scores, maps = fitted.predict(test)
    fitted.knn_backend = "auto"  # faiss when installed
    try:
        scores2, maps2 = fitted.predict(test)
    finally:
        fitted.knn_backend = "torch"
    np.testing.assert_allclose(scores2, scores, rtol=1e-4)
    for a, b in zip(maps2, maps, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(b.max()))


def test_top_k_images_is_clipped_to_the_training_set(data) -> None:
    train, test = data[0], data[1]
    det = SPADE(**{**CONFIG, "top_k_images": 50}).fit(train[:4])
    dists, idx = det.nearest_images(test[:2])
    assert idx.shape == (2, 4) and sorted(idx[0].tolist()) == [0, 1, 2, 3]
    assert np.all(np.diff(dists, axis=1) >= 0)


def test_save_load_predicts_exactly_the_same(fitted: SPADE, data, tmp_path: Path) -> None:
    test = data[1][4:8]
    scores, maps = fitted.predict(test)
    back = Detector.load(fitted.save(tmp_path / "m"))
    assert isinstance(back, SPADE) and back.get_params() == fitted.get_params()
    scores2, maps2 = back.predict(test)
    np.testing.assert_array_equal(scores2, scores)
    for a, b in zip(maps2, maps, strict=True):
        np.testing.assert_array_equal(a, b)


def test_float16_gallery_matches_float32(fitted: SPADE, data, predicted) -> None:
    test = data[1]
    half = SPADE(**{**CONFIG, "gallery_dtype": "float16"})
    half.features_, half.input_size_ = fitted.features_, fitted.input_size_  # the fitted state, rounded
    half._set_state(*fitted._state())
    assert all(t.dtype == torch.float16 for t in half.pyramid_)
    maps = predicted[1][6:8]
    _, maps_half = half.predict(test[6:8])
    for a, b in zip(maps, maps_half, strict=True):
        np.testing.assert_allclose(a, b, rtol=0.02, atol=0.02 * float(a.max()))


def test_set_state_rejects_mismatched_shapes(fitted: SPADE) -> None:
    tensors, meta = fitted._state()
    assert set(tensors) == {"global", "layer1", "layer2", "layer3"}
    assert tuple(tensors["layer1"].shape) == (10, 64, 16, 16)  # native resolution, not upsampled
    other = SPADE(**{**CONFIG, "image_size": 96})
    other.features_ = other._make_features()
    with pytest.raises(ValueError, match=r"layer1 has shape \(10, 64, 16, 16\) but this SPADE .* expects"):
        other._set_state(tensors, meta)
    same = SPADE(**CONFIG)
    same.features_ = same._make_features()
    with pytest.raises(ValueError, match="needs global, layer1, layer2, layer3"):
        same._set_state({k: v for k, v in tensors.items() if k != "layer2"}, meta)
    with pytest.raises(ValueError, match=r"global has shape \(10, 255\)"):
        same._set_state({**tensors, "global": tensors["global"][:, :-1]}, meta)
    with pytest.raises(ValueError, match=r"layer3 has shape \(9, 256, 4, 4\)"):
        same._set_state({**tensors, "layer3": tensors["layer3"][:-1]}, meta)


def test_bad_options_are_config_errors(data) -> None:
    with pytest.raises(ConfigError, match="image_score 'best'; choose one of knn, map_max"):
        SPADE(**{**CONFIG, "image_score": "best"}).fit(data[0][:2])
    with pytest.raises(ConfigError, match="top_k_images must be a positive integer"):
        SPADE(**{**CONFIG, "top_k_images": 0}).fit(data[0][:2])


def test_knn_precision_float32_and_the_bf16_screen_agree(fitted: SPADE, data, predicted) -> None:
    test = data[1][4:8]
    try:
        fitted.knn_precision = "float32"
        plain, plain_maps = fitted.predict(test)
        fitted.knn_precision = "bf16-screen"
        screened, screened_maps = fitted.predict(test)
    finally:
        fitted.knn_precision = "auto"
    np.testing.assert_allclose(screened, plain, rtol=1e-4)
    for a, b in zip(screened_maps, plain_maps, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.max()))
    with pytest.raises(ConfigError, match="knn_precision 'half'"):
        SPADE(**{**CONFIG, "knn_precision": "half"}).fit(data[0][:2])
    with pytest.raises(ConfigError, match="bf16-screen"):
        SPADE(**{**CONFIG, "knn_backend": "faiss", "knn_precision": "bf16-screen"}).fit(data[0][:2])
