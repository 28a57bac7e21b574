"""Tests of vlmad.metrics.pixel: pixel AUROC / AP against scikit-learn, AUPRO against a straightforward
per-threshold implementation written here (scipy.ndimage components, 8-connectivity)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from tests.metrics.reference import area_to
from vlmad.metrics.pixel import PixelMetrics, aupro, pixel_metrics

EIGHT = np.ones((3, 3), dtype=int)
FOUR = ndimage.generate_binary_structure(2, 1)

# --- independent reference ------------------------------------------------------------------------------


def _count_at_or_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, how many of ``values`` are >= t."""
    return values.size - np.searchsorted(np.sort(values), thresholds, side="left")


def _ref_aupro(masks, maps, limit: float, structure=EIGHT) -> float:
    """MVTec AD AUPRO, threshold by threshold: every distinct map value, highest first."""
    components, normal = [], []
    for mask, amap in zip(masks, maps, strict=True):
        amap = np.asarray(amap, dtype=np.float64)
        labels, n = ndimage.label(mask, structure=structure)
        components += [amap[labels == k] for k in range(1, n + 1)]
        normal.append(amap[~np.asarray(mask, dtype=bool)])
    normal = np.concatenate(normal)
    thresholds = np.unique(np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps]))[::-1]
    fpr = _count_at_or_above(normal, thresholds) / normal.size  # FPR(t)
    pro = np.mean([_count_at_or_above(c, thresholds) / c.size for c in components], axis=0)  # PRO(t)
    return area_to(np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro)), limit)


def _random_set(seed: int, n: int = 20, size: int = 32, decimals: int | None = 2):
    """Masks of a few random rectangles and blobs (some images defect-free) and float32 maps."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if i % 4 == 3:
            continue  # a defect-free image
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, 8, 2)
            masks[i, r : r + h, c : c + w] = True
        masks[i] |= rng.random((size, size)) < 0.01  # scattered single pixels: many tiny components
    maps = rng.random((n, size, size)) + 0.5 * masks
    if decimals is not None:
        maps = np.round(maps, decimals)  # ties
    return masks, maps.astype(np.float32)


# --- AUROC / AP / F1 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("decimals", [None, 2, 1])
@pytest.mark.parametrize("seed", [0, 1])
def test_pixel_auroc_ap_f1_match_sklearn(seed: int, decimals: int | None) -> None:
    masks, maps = _random_set(seed, decimals=decimals)
    res = pixel_metrics(masks, maps)
    y, s = masks.ravel(), maps.ravel()
    assert res.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert res.ap == pytest.approx(average_precision_score(y, s), abs=1e-12)
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)[:-1]
    assert res.f1_max == pytest.approx(f1.max(), abs=1e-12)
    t = res.f1_threshold
    tp, fp = np.sum(y & (s >= t)), np.sum(~y & (s >= t))
    assert 2 * tp / (tp + fp + y.sum()) == pytest.approx(res.f1_max, abs=1e-12)
    assert (res.n_images, res.n_pixels, res.n_defect_pixels) == (len(masks), masks.size, masks.sum())
    assert res.n_regions == sum(ndimage.label(m, structure=EIGHT)[1] for m in masks)
    assert not res.binned and res.auroc_error_bound == 0.0


# --- AUPRO ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
@pytest.mark.parametrize(("seed", "decimals"), [(0, 2), (1, 1), (2, None)])
def test_aupro_matches_reference_on_random_sets(seed: int, decimals: int | None, limit: float) -> None:
    masks, maps = _random_set(seed, n=10, size=24, decimals=decimals)
    expected = _ref_aupro(masks, maps, limit)
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)
    assert pixel_metrics(masks, maps, fpr_limit=limit).aupro == pytest.approx(expected, abs=1e-9)


def _diagonal_case():
    mask = np.zeros((8, 8), dtype=bool)
    mask[1:3, 1:3] = True  # a 2x2 block ...
    mask[3, 3] = True  # ... touching this pixel only at a corner: one component under 8-connectivity
    mask[6, 6] = True  # a separate single pixel
    amap = np.full((8, 8), 0.1, dtype=np.float32)
    amap[1:3, 1:3] = 0.9  # the block is found first, the corner pixel late, the lone pixel never
    amap[3, 3] = 0.3
    amap[6, 6] = 0.05
    amap[0, :] = [0.95, 0.5, 0.4, 0.3, 0.3, 0.2, 0.2, 0.15]  # false positives along the top row
    return mask[None], amap[None]


@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_diagonal_touch_is_one_component(limit: float) -> None:
    masks, maps = _diagonal_case()
    assert ndimage.label(masks[0], structure=EIGHT)[1] == 2
    assert ndimage.label(masks[0], structure=FOUR)[1] == 3
    expected = _ref_aupro(masks, maps, limit)
    # the case tells the connectivities apart, so a 4-connected implementation would fail
    assert abs(expected - _ref_aupro(masks, maps, limit, structure=FOUR)) > 1e-3
    res = pixel_metrics(masks, maps, fpr_limit=limit)
    assert res.n_regions == 2
    assert res.aupro == pytest.approx(expected, abs=1e-9)


def test_aupro_diagonal_hand_value_at_full_range() -> None:
    # one component of 2 pixels touching at a corner: found one pixel at a time, no false positive before
    mask = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    amap = np.array([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.1]], dtype=np.float32)
    # curve (0,0) -> (0,1/2) -> (0,1) -> (1,1): area 1 whatever the limit
    for limit in (0.05, 0.3, 1.0):
        assert aupro(mask[None], amap[None], fpr_limit=limit) == pytest.approx(1.0, abs=1e-12)
    # a false positive between the two pixels: (0,0) -> (0,1/2) -> (1/7,1/2) -> (1/7,1) -> (1,1)
    amap[0, 1] = 0.85
    assert aupro(mask[None], amap[None], fpr_limit=1.0) == pytest.approx(
        (1 / 7) * 0.5 + (6 / 7) * 1.0, abs=1e-9
    )


@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_with_heavy_ties(limit: float) -> None:
    rng = np.random.default_rng(5)
    masks = np.zeros((6, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 8:15, 1:4] = True
    masks[1, 0, 0] = True
    masks[2, 5:12, 5:12] = True
    masks[4, 3, 3:13] = True
    maps = rng.integers(0, 4, size=masks.shape).astype(np.float32)  # only four distinct values
    maps[masks] += rng.integers(0, 2, size=int(masks.sum()))
    expected = _ref_aupro(masks, maps, limit)
    assert pixel_metrics(masks, maps, fpr_limit=limit).aupro == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_components_of_areas_three_and_four(limit: float) -> None:
    # 1/3 is not a binary fraction: per-pixel weights 1/|component| must be kept precise enough that
    # the PRO of a fully found 3-pixel component and an unfound 4-pixel one is 1/2, not 1/2 + 7e-9
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0:3] = True
    mask[4, 0:4] = True
    amap = np.full((6, 6), 0.5, dtype=np.float32)
    amap[0, 0:3] = 1.0
    amap[4, 0:4] = 0.0
    # curve (0,0) -> (0,1/2) -> (1,1/2) -> (1,1)
    assert _ref_aupro(mask[None], amap[None], limit) == pytest.approx(0.5, abs=1e-15)
    assert aupro(mask[None], amap[None], fpr_limit=limit) == pytest.approx(0.5, abs=1e-9)


# --- streaming ----------------------------------------------------------------------------------------


def test_streaming_per_image_batch_and_generator_agree() -> None:
    masks, maps = _random_set(3, n=12, size=20)
    per_image = PixelMetrics()
    for m, a in zip(masks, maps, strict=True):
        per_image.update(m, a)
    batch = PixelMetrics()
    batch.update(masks, maps)
    mixed = PixelMetrics()
    mixed.update(masks[:5], maps[:5])
    mixed.update(masks[5], maps[5])
    mixed.update(masks[6:], maps[6:])
    gen = pixel_metrics((m for m in masks), (a for a in maps))
    ref = per_image.compute()
    assert batch.compute() == ref
    assert mixed.compute() == ref
    assert gen == ref
    assert pixel_metrics(masks, maps) == ref
    assert pixel_metrics(list(masks), list(maps)) == ref
    assert ref.aupro == pytest.approx(_ref_aupro(masks, maps, 0.3), abs=1e-9)
    assert ref.n_images == 12


def test_int_masks_and_float64_maps_are_accepted() -> None:
    masks, maps = _random_set(4, n=6, size=16)
    a = pixel_metrics(masks, maps)
    b = pixel_metrics(masks.astype(np.uint8) * 255, maps.astype(np.float64))
    assert a == b


# --- edge cases ---------------------------------------------------------------------------------------


def test_all_masks_empty() -> None:
    rng = np.random.default_rng(6)
    masks = np.zeros((3, 8, 8), dtype=bool)
    maps = rng.random((3, 8, 8)).astype(np.float32)
    res = pixel_metrics(masks, maps)
    assert np.isnan(res.aupro) and np.isnan(res.auroc) and np.isnan(res.ap) and np.isnan(res.f1_max)
    assert (res.n_regions, res.n_defect_pixels, res.n_pixels) == (0, 0, 192)
    with pytest.raises(ValueError):
        aupro(masks, maps)
    assert res.to_dict()["n_pixels"] == 192


def test_all_pixels_defective() -> None:
    rng = np.random.default_rng(7)
    masks = np.ones((2, 5, 5), dtype=bool)
    maps = rng.random((2, 5, 5)).astype(np.float32)
    res = pixel_metrics(masks, maps)
    assert np.isnan(res.aupro) and np.isnan(res.auroc)  # no defect-free pixel: no FPR axis
    assert res.ap == pytest.approx(1.0) and res.f1_max == pytest.approx(1.0)
    assert res.n_regions == 2
    with pytest.raises(ValueError):
        aupro(masks, maps)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError) as err:
        pixel_metrics(np.zeros((2, 8, 8), dtype=bool), np.zeros((2, 8, 9), dtype=np.float32))
    assert "(2, 8, 8)" in str(err.value) and "(2, 8, 9)" in str(err.value)
    metric = PixelMetrics()
    with pytest.raises(ValueError) as err:
        metric.update(np.zeros((8, 8), dtype=bool), np.zeros((7, 8), dtype=np.float32))
    assert "(8, 8)" in str(err.value) and "(7, 8)" in str(err.value)
    with pytest.raises(ValueError) as err:
        metric.update(np.zeros((3, 8, 8), dtype=bool), np.zeros((3, 8, 7), dtype=np.float32))
    assert "(8, 8)" in str(err.value) and "(8, 7)" in str(err.value)
    with pytest.raises(ValueError):  # iterables of different lengths
        pixel_metrics([np.zeros((4, 4), dtype=bool)] * 2, [np.zeros((4, 4), dtype=np.float32)] * 3)


def test_nan_in_a_map_raises() -> None:
    masks, maps = _random_set(8, n=3, size=8)
    maps[2, 4, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pixel_metrics(masks, maps)
    with pytest.raises(ValueError, match="NaN"):
        aupro(masks, maps)


def test_no_images_and_bad_limit_raise() -> None:
    with pytest.raises(ValueError):
        pixel_metrics([], [])
    for limit in (0.0, 1.5):
        with pytest.raises(ValueError):
            PixelMetrics(fpr_limit=limit)


# --- binned mode ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0.3, 0.05])
def test_binned_agrees_with_exact(limit: float) -> None:
    masks, maps = _random_set(9, decimals=None)
    exact = pixel_metrics(masks, maps, fpr_limit=limit)
    metric = PixelMetrics(fpr_limit=limit, max_exact=1000)
    for m, a in zip(masks, maps, strict=True):
        metric.update(m, a)
    binned = metric.compute()
    assert binned.binned and not exact.binned
    assert binned.aupro == pytest.approx(exact.aupro, abs=1e-3)
    assert abs(binned.auroc - exact.auroc) <= binned.auroc_error_bound + 1e-12
    assert (binned.n_pixels, binned.n_defect_pixels, binned.n_regions) == (
        exact.n_pixels,
        exact.n_defect_pixels,
        exact.n_regions,
    )


def test_coarse_bins_stay_within_the_auroc_bound() -> None:
    masks, maps = _random_set(10, decimals=None)
    metric = PixelMetrics(max_exact=1000, bits=12)
    metric.update(masks, maps)
    res = metric.compute()
    assert res.binned and res.auroc_error_bound > 0
    assert abs(res.auroc - roc_auc_score(masks.ravel(), maps.ravel())) <= res.auroc_error_bound + 1e-12
