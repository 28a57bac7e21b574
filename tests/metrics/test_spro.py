"""Tests of vlmad.metrics.spro against a threshold-by-threshold implementation of MVTec LOCO's sPRO written
here: one region per mask (even when disconnected, overlaps allowed), saturation from DefectConfig."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.metrics.reference import area_to
from vlmad.metrics.spro import SproMetrics
from vlmad.records import DefectConfig

LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)


def _cfg(t: float, relative: bool, name: str = "d") -> DefectConfig:
    return DefectConfig(
        defect_name=name, pixel_value=255, saturation_threshold=t, relative_saturation=relative
    )


# --- independent reference ------------------------------------------------------------------------------


def _count_at_or_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, how many of ``values`` are >= t."""
    return values.size - np.searchsorted(np.sort(values), thresholds, side="left")


def _ref_au_spro(images, limits=LIMITS) -> dict[float, float]:
    """``images``: list of (map, [(mask, DefectConfig), ...]). Every distinct map value is a threshold."""
    regions = []  # (scores of the region's pixels, saturation area)
    normal = []
    for amap, regs in images:
        amap = np.asarray(amap, dtype=np.float64)
        in_any = np.zeros(amap.shape, dtype=bool)
        for mask, cfg in regs:
            mask = np.asarray(mask, dtype=bool)
            if not mask.any():
                continue
            in_any |= mask
            area = int(mask.sum())
            sat = (
                cfg.saturation_threshold * area
                if cfg.relative_saturation
                else min(cfg.saturation_threshold, area)
            )
            regions.append((amap[mask], sat))
        normal.append(amap[~in_any])
    normal = np.concatenate(normal)
    thresholds = np.unique(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a, _ in images]))[::-1]
    fpr = _count_at_or_above(normal, thresholds) / normal.size
    spro = np.mean([np.minimum(_count_at_or_above(s, thresholds) / sat, 1.0) for s, sat in regions], axis=0)
    xs, ys = [0.0, *fpr.tolist()], [0.0, *spro.tolist()]
    return {lim: area_to(xs, ys, lim) for lim in limits}


def _run(images, **kwargs):
    metric = SproMetrics(**kwargs)
    for amap, regs in images:
        metric.update(amap, regs)
    return metric.compute()


def _assert_matches(images, tol: float = 1e-9) -> None:
    res = _run(images)
    expected = _ref_au_spro(images)
    assert tuple(res.au_spro) == LIMITS
    for lim in LIMITS:
        assert res.au_spro[lim] == pytest.approx(expected[lim], abs=tol), lim


# --- hand-made cases ------------------------------------------------------------------------------------


def _rect(shape, r0, r1, c0, c1):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def _hand_images():
    shape = (8, 10)
    rng = np.random.default_rng(0)
    a = np.round(rng.random(shape), 1).astype(np.float32)  # heavy ties
    a[1:4, 1:4] += 0.5
    a[5:7, 6:9] += 0.3
    disconnected = _rect(shape, 0, 2, 8, 10) | _rect(shape, 6, 8, 0, 2)  # two blobs, ONE region
    regs = [
        (_rect(shape, 1, 4, 1, 4), _cfg(0.5, True)),  # relative: s = 4.5
        (_rect(shape, 2, 5, 2, 6), _cfg(4.0, False)),  # overlaps the first; absolute: s = 4
        (_rect(shape, 5, 7, 6, 9), _cfg(100.0, False)),  # smaller than the absolute threshold: s = 6
        (disconnected, _cfg(0.25, True)),  # s = 2
    ]
    b = np.round(rng.random(shape), 1).astype(np.float32)  # a good image
    c = np.round(rng.random(shape), 1).astype(np.float32)
    c[3, 3] = 2.0
    regs_c = [(_rect(shape, 3, 4, 3, 4), _cfg(1.0, False))]  # a one-pixel region
    return [(a, regs), (b, []), (c, regs_c)]


def test_hand_made_case_matches_reference() -> None:
    images = _hand_images()
    _assert_matches(images)
    res = _run(images)
    assert (res.n_images, res.n_regions, res.skipped_regions, res.binned) == (3, 5, 0, False)


def test_disconnected_mask_is_one_region_and_overlaps_count_twice() -> None:
    images = _hand_images()
    amap, regs = images[0]
    # splitting the disconnected mask into its two blobs changes the result: the split must not happen
    blobs = [(_rect(amap.shape, 0, 2, 8, 10), regs[3][1]), (_rect(amap.shape, 6, 8, 0, 2), regs[3][1])]
    split = [(amap, regs[:3] + blobs), *images[1:]]
    assert _ref_au_spro(split)[1.0] != pytest.approx(_ref_au_spro(images)[1.0], abs=1e-6)
    assert _run(images).au_spro[1.0] == pytest.approx(_ref_au_spro(images)[1.0], abs=1e-9)
    assert _run(split).n_regions == 6


def test_overlapping_regions_simple_values() -> None:
    # two identical regions of 4 pixels (relative 1.0 and absolute 2): the pixels are in both
    shape = (4, 4)
    mask = _rect(shape, 0, 2, 0, 2)
    amap = np.zeros(shape, dtype=np.float32)
    amap[0, 0], amap[0, 1], amap[1, 0], amap[1, 1] = 4.0, 3.0, 2.0, 1.0
    amap[3, 3] = 2.5  # the only false positive before the region's last two pixels
    regs = [(mask, _cfg(1.0, True)), (mask, _cfg(2.0, False))]
    # thresholds 4: (0, mean(1/4, 1/2)) | 3: (0, mean(2/4, 1)) | 2.5: (1/12, .75) | 2: (1/12, mean(3/4, 1))
    # | 1: (1/12, 1) | 0: (1, 1)
    expected_full = (1 / 12) * 0.75 + (11 / 12) * 1.0
    res = _run([(amap, regs)])
    assert res.au_spro[1.0] == pytest.approx(expected_full, abs=1e-9)
    assert res.au_spro[0.05] == pytest.approx(0.75, abs=1e-9)
    _assert_matches([(amap, regs)])


@pytest.mark.parametrize(
    ("cfg", "area", "ceil_s", "s"),
    [
        (_cfg(3.5, False), 10, 4, 3.5),  # absolute
        (_cfg(0.25, True), 10, 3, 2.5),  # relative
        (_cfg(0.5, True), 10, 5, 5.0),  # relative, integral
        (_cfg(100.0, False), 6, 6, 6.0),  # absolute above the region's area: the whole region
    ],
)
def test_saturation_is_reached_at_ceil_s_pixels(cfg: DefectConfig, area: int, ceil_s: int, s: float) -> None:
    assert math.ceil(s) == ceil_s
    shape = (4, 10)
    mask = np.zeros(shape, dtype=bool)
    mask.reshape(-1)[:area] = True
    for found, expected in ((ceil_s, 1.0), (ceil_s - 1, (ceil_s - 1) / s)):
        amap = np.full(shape, 0.5, dtype=np.float32)  # defect-free pixels in the middle
        amap[mask] = 0.0
        amap.reshape(-1)[:found] = 1.0  # the region's first `found` pixels score highest
        # curve (0,0) -> (0, sPRO) -> (1, sPRO) -> (1, 1): the area equals sPRO at threshold 1.0
        res = _run([(amap, [(mask, cfg)])])
        for lim in LIMITS:
            assert res.au_spro[lim] == pytest.approx(expected, abs=1e-9), (found, lim)


# --- seeded random cases --------------------------------------------------------------------------------


def _random_images(seed: int, decimals: int | None):
    rng = np.random.default_rng(seed)
    shape = (16, 20)
    configs = [_cfg(0.3, True, "rel"), _cfg(25.0, False, "abs"), _cfg(4.0, False, "tiny-abs")]
    images = []
    for i in range(8):
        amap = rng.random(shape)
        regs = []
        if i % 3 != 2:  # every third image is good
            for _ in range(rng.integers(1, 4)):
                r, c = rng.integers(0, 12, 2)
                h, w = rng.integers(1, 7, 2)
                mask = _rect(shape, r, r + h, c, c + w)
                if rng.random() < 0.4:  # sometimes a second, disconnected blob in the same region
                    r2, c2 = rng.integers(0, 14, 2)
                    mask |= _rect(shape, r2, r2 + 2, c2, c2 + 3)
                amap = amap + 0.4 * mask
                regs.append((mask, configs[int(rng.integers(len(configs)))]))
        if decimals is not None:
            amap = np.round(amap, decimals)
        images.append((amap.astype(np.float32), regs))
    return images


@pytest.mark.parametrize(("seed", "decimals"), [(0, 2), (1, 1), (2, None), (3, 2)])
def test_random_cases_match_reference(seed: int, decimals: int | None) -> None:
    _assert_matches(_random_images(seed, decimals))


def test_streaming_equals_reordered_images() -> None:
    images = _random_images(4, 2)
    a = _run(images)
    b = _run(images[::-1])
    for lim in LIMITS:
        assert a.au_spro[lim] == pytest.approx(b.au_spro[lim], abs=1e-12)


def test_binned_mode_is_close_to_exact() -> None:
    images = _random_images(5, None)
    exact = _run(images)
    binned = _run(images, max_exact=500)
    assert binned.binned and not exact.binned
    for lim in (0.05, 0.1, 0.3, 1.0):
        assert binned.au_spro[lim] == pytest.approx(exact.au_spro[lim], abs=1e-3)


def test_custom_limits() -> None:
    images = _random_images(6, 2)
    res = _run(images, limits=(0.2, 0.5))
    expected = _ref_au_spro(images, limits=(0.2, 0.5))
    assert tuple(res.au_spro) == (0.2, 0.5)
    for lim in (0.2, 0.5):
        assert res.au_spro[lim] == pytest.approx(expected[lim], abs=1e-9)
    with pytest.raises(ValueError):
        SproMetrics(limits=(0.0,))
    with pytest.raises(ValueError):
        SproMetrics(limits=(0.3, 1.2))


# --- edge cases ---------------------------------------------------------------------------------------


def test_empty_region_is_skipped_and_counted() -> None:
    images = _hand_images()
    amap, regs = images[0]
    with_empty = [(amap, [*regs, (np.zeros(amap.shape, dtype=bool), _cfg(0.5, True))]), *images[1:]]
    res = _run(with_empty)
    base = _run(images)
    assert res.skipped_regions == 1 and base.skipped_regions == 0
    assert res.n_regions == base.n_regions == 5
    assert res.au_spro == base.au_spro
    assert res.to_dict()["skipped_regions"] == 1


def test_good_only_input_gives_nan() -> None:
    rng = np.random.default_rng(7)
    metric = SproMetrics()
    for _ in range(3):
        metric.update(rng.random((6, 6)).astype(np.float32))
    metric.update(rng.random((6, 6)).astype(np.float32), [(np.zeros((6, 6), dtype=bool), _cfg(1.0, True))])
    res = metric.compute()
    assert res.n_regions == 0 and res.n_images == 4 and res.skipped_regions == 1
    assert all(math.isnan(v) for v in res.au_spro.values()) and tuple(res.au_spro) == LIMITS


def test_no_defect_free_pixel_gives_nan() -> None:
    metric = SproMetrics()
    metric.update(
        np.arange(4, dtype=np.float32).reshape(2, 2), [(np.ones((2, 2), dtype=bool), _cfg(1.0, True))]
    )
    assert all(math.isnan(v) for v in metric.compute().au_spro.values())


def test_shape_mismatch_and_bad_maps_raise() -> None:
    metric = SproMetrics()
    with pytest.raises(ValueError) as err:
        metric.update(np.zeros((4, 5), dtype=np.float32), [(np.zeros((4, 4), dtype=bool), _cfg(1.0, True))])
    assert "(4, 4)" in str(err.value) and "(4, 5)" in str(err.value)
    with pytest.raises(ValueError):
        metric.update(np.zeros((2, 4, 5), dtype=np.float32))
    bad = np.zeros((4, 5), dtype=np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metric.update(bad)
    assert metric.n_images == 0
