"""Tests of the shared drawing primitives of the procedural categories (vlmad.data.synth.draw)."""

from __future__ import annotations

import numpy as np
import pytest

from vlmad.data.synth import draw


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def disc(size: int = 64, c: tuple[float, float] = (32, 32), r: float = 12) -> np.ndarray:
    return draw.ellipse_mask(size, c, (r, r))


# ---------------------------------------------------------------------------- colours
def test_mix_and_shade() -> None:
    assert draw.mix((100, 0, 200), (200, 100, 0), 0.0) == (100, 0, 200)
    assert draw.mix((100, 0, 200), (200, 100, 0), 1.0) == (200, 100, 0)
    assert draw.mix((100, 0, 200), (200, 100, 0), 0.5) == (150, 50, 100)
    assert draw.mix((250, 10, 10), (255, 255, 255), 2.0) == (255, 255, 255)  # clipped
    assert draw.shade((100, 50, 200), 0.5) == (50, 25, 100)
    assert draw.shade((100, 50, 200), 1.5) == (150, 75, 255)  # clipped
    assert all(isinstance(v, int) for v in draw.mix(np.array([1.5, 2.5, 3.5]), (0, 0, 0), 0.0))


def test_jitter_color_is_deterministic_and_clipped() -> None:
    assert draw.jitter_color(rng(3), (10, 20, 30)) == draw.jitter_color(rng(3), (10, 20, 30))
    c = draw.jitter_color(rng(1), (255, 0, 255), 50)
    assert all(0 <= v <= 255 for v in c)


# ---------------------------------------------------------------------------- coordinates and masks
def test_fixed_point_coordinates() -> None:
    assert draw.ONE == 1 << draw.SHIFT
    pts = draw.fixed(np.array([[1.5, 2.25], [0.0, -1.0]]))
    assert pts.dtype == np.int32 and pts.tolist() == [[24, 36], [0, -16]]
    assert draw.fixed_pt(np.array([1.5, 2.25])) == (24, 36)


def test_bbox_slices() -> None:
    m = np.zeros((40, 50), bool)
    m[10:20, 5:8] = True
    assert draw.bbox_slices(m) == (slice(10, 20), slice(5, 8))
    assert draw.bbox_slices(m, pad=3) == (slice(7, 23), slice(2, 11))
    assert draw.bbox_slices(m, pad=100) == (slice(0, 40), slice(0, 50))  # clipped to the image
    assert draw.bbox_slices(m.astype(np.uint8) * 255) == (slice(10, 20), slice(5, 8))
    empty = draw.bbox_slices(np.zeros((40, 50), bool))
    assert np.zeros((40, 50))[empty].size == 0


def test_dilate_and_erode() -> None:
    m = np.zeros((20, 20), bool)
    m[8:12, 8:12] = True
    grown = draw.dilate(m, 2)
    assert grown.dtype == bool and grown.sum() == 8 * 8 and (grown & m).sum() == m.sum()
    assert draw.dilate(m.astype(np.uint8) * 255).sum() == 6 * 6
    shrunk = draw.erode(m)
    assert shrunk.dtype == bool and shrunk.sum() == 2 * 2
    assert np.array_equal(draw.dilate(m, 0), m)


def test_rect_and_rounded_rect() -> None:
    assert draw.rect_points(1, 2, 3, 4).tolist() == [[1, 2], [3, 2], [3, 4], [1, 4]]
    pts = draw.rounded_rect_points(10, 20, 50, 40, 6)
    assert pts.min(axis=0).tolist() == pytest.approx([10, 20]) and pts.max(axis=0).tolist() == pytest.approx(
        [50, 40]
    )
    assert len(draw.rounded_rect_points(0, 0, 10, 10, 3, steps=4)) == 16
    m = draw.rounded_rect_mask(64, 10, 20, 50, 40, 6)
    full = draw.polygon_mask(64, draw.rect_points(10, 20, 50, 40))
    assert not (m & ~full).any()  # inside the plain rectangle
    assert not m[20, 10] and not m[40, 50] and m[30, 30]  # corners cut, middle filled
    assert 0.9 * full.sum() < m.sum() < full.sum()
    factor = np.ones((64, 64), np.float32)
    draw.fill_rounded_rect(factor, 10, 20, 50, 40, 6, 0.5)
    assert np.array_equal(factor == 0.5, m)


def test_random_point_in() -> None:
    m = np.zeros((64, 64), bool)
    m[10:50, 5:30] = True
    g = rng(4)
    pts = [draw.random_point_in(g, m) for _ in range(400)]
    assert all(m[y, x] for x, y in pts)
    xs = np.array([x for x, _ in pts])
    assert 0.35 < (xs < 17.5).mean() < 0.65  # uniform over the mask, not biased to a corner
    for x, y in (draw.random_point_in(g, m, margin=4) for _ in range(50)):
        assert 9 <= x < 26 and 14 <= y < 46
    sparse = np.zeros((64, 64), bool)
    sparse[0, 0] = sparse[63, 63] = True  # rejection sampling misses: the fallback lists the pixels
    assert {draw.random_point_in(g, sparse) for _ in range(30)} == {(0, 0), (63, 63)}
    assert draw.random_point_in(g, sparse, margin=3) in {(0, 0), (63, 63)}  # falls back to the mask
    assert draw.random_point_in(rng(1), m) == draw.random_point_in(rng(1), m)
    with pytest.raises(ValueError):
        draw.random_point_in(g, np.zeros((8, 8), bool))


# ---------------------------------------------------------------------------- textures and shading
@pytest.mark.parametrize("shape", [(5, 7), (40, 30), (256, 256), (300, 120)])
def test_noise_field_range_and_determinism(shape: tuple[int, int]) -> None:
    f = draw.noise_field(rng(2), shape, 6)
    assert f.shape == shape and f.dtype == np.float32
    assert f.min() >= -1.0 and f.max() <= 1.0
    assert np.array_equal(f, draw.noise_field(rng(2), shape, 6))
    assert not np.array_equal(f, draw.noise_field(rng(3), shape, 6))
    if min(shape) >= 40:
        assert f.std() > 0.1  # not flat
        # smooth: neighbouring pixels differ far less than the field's spread
        assert np.abs(np.diff(f, axis=1)).mean() < 0.2 * f.std()


def test_textured_fill_stays_inside_the_mask() -> None:
    img = np.full((64, 64, 3), 7, np.uint8)
    m = disc()
    draw.textured_fill(img, m, (120, 60, 200), rng(), amp=10, cells=4, grain=3)
    assert (img[~m] == 7).all()
    inside = img[m].astype(float)
    assert np.abs(inside.mean(axis=0) - (120, 60, 200)).max() < 6
    assert inside.std(axis=0).min() > 1.0  # textured, not flat
    again = np.full((64, 64, 3), 7, np.uint8)
    draw.textured_fill(again, m, (120, 60, 200), rng(), amp=10, cells=4, grain=3)
    assert np.array_equal(img, again)


def test_textured_fill_on_views_saturation_and_empty_masks() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    sl = (slice(8, 56), slice(4, 60))
    m = disc()
    draw.textured_fill(img[sl], m[sl], (250, 128, 3), rng(), amp=20, cells=3, grain=5)
    assert not (img[~m] != 0).any() and (img[m] != 0).any()  # written through the view, in place
    assert img[m][:, 0].max() == 255 and img[m][:, 2].min() == 0  # saturates, never wraps around
    before = img.copy()
    draw.textured_fill(img, np.zeros((64, 64), bool), (1, 2, 3), rng())
    assert np.array_equal(img, before)


def test_background() -> None:
    a = draw.background(rng(5), 96, (100, 120, 140), amp=8, cells=6, grain=3)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    assert np.abs(a.reshape(-1, 3).mean(axis=0) - (100, 120, 140)).max() < 5
    assert 2 < a[..., 0].std() < 12
    assert np.array_equal(a, draw.background(rng(5), 96, (100, 120, 140), amp=8, cells=6, grain=3))
    flat = draw.background(rng(5), 32, (10, 20, 30), amp=0, grain=0)
    assert (flat == np.array([10, 20, 30], np.uint8)).all()


def test_scale_pixels_and_blend_respect_the_mask() -> None:
    img = np.full((20, 20, 3), 200, np.uint8)
    m = np.zeros((20, 20), bool)
    m[5:10, 5:10] = True
    draw.scale_pixels(img, 0.5, m)
    assert (np.abs(img[m].astype(int) - 100) <= 1).all() and (img[~m] == 200).all()
    draw.scale_pixels(img, np.ones(20, np.float32)[None, :], None, np.full((20, 20), 10, np.float32))
    assert (img[~m] == 210).all()
    img = np.full((20, 20, 3), 100, np.uint8)
    draw.blend(img, (200, 0, 100), 0.5, m)
    assert (np.abs(img[m].astype(int) - (150, 50, 100)) <= 1).all() and (img[~m] == 100).all()
    alpha = np.zeros((20, 20), np.float32)
    alpha[:, 10:] = 1.0
    draw.blend(img, 0, alpha)
    assert (img[:, 10:] == 0).all() and np.array_equal(img[:, :5], np.full((20, 5, 3), 100, np.uint8))
    draw.blend(img[0:0], (1, 2, 3), 0.5)  # empty views are fine


def test_drop_shadow() -> None:
    img = np.full((40, 40, 3), 200, np.uint8)
    m = np.zeros((40, 40), bool)
    m[10:20, 10:20] = True
    draw.drop_shadow(img, m, (3, 4), darkness=0.4)
    dark = (img < 200).any(axis=2)
    shifted = np.zeros_like(m)
    shifted[14:24, 13:23] = True
    assert np.array_equal(dark, shifted)  # hard: exactly the moved mask
    assert abs(int(img[20, 20, 0]) - 120) <= 2
    soft = np.full((40, 40, 3), 200, np.uint8)
    draw.drop_shadow(soft, m, (3, 4), blur=2.0, darkness=0.4)
    assert (soft[:5] == 200).all() and soft.min() >= 118 and 120 < soft[14, 13, 0] < 200  # soft edge


def test_shade_vertical() -> None:
    img = np.full((30, 30, 3), 200, np.uint8)
    m = np.zeros((30, 30), bool)
    m[5:25, 5:25] = True
    draw.shade_vertical(img, m, 0.5)
    assert (img[~m] == 200).all()
    col = img[5:25, 10, 0].astype(int)
    assert col[0] >= 198 and abs(col[-1] - 100) <= 2 and (np.diff(col) <= 0).all()


def test_stroke_depends_only_on_distance() -> None:
    a = np.zeros((40, 40, 3), np.uint8)
    b = np.zeros((40, 40, 3), np.uint8)
    draw.stroke(a, np.array([[5.0, 20.0], [35.0, 20.0]]), [(3.0, (255, 255, 255))])
    draw.stroke(b, np.array([[5.0, 20.0], [25.0, 20.0]]), [(3.0, (255, 255, 255))])
    assert np.array_equal(a[:, :22], b[:, :22])  # cut short: same pixels away from the cut
    assert (a[:, 30:] > 0).any() and not (b[:, 30:] > 0).any()
    assert (a[:15] == 0).all() and a[20, 20, 0] == 255
    draw.stroke(a, np.array([[-50.0, -50.0], [-40.0, -40.0]]), [(3.0, (1, 1, 1))])  # off the image: no-op


# ---------------------------------------------------------------------------- words
def test_where_phrase_words() -> None:
    def at(y: slice, x: slice) -> np.ndarray:
        m = np.zeros((90, 90), bool)
        m[y, x] = True
        return m

    lo, mid, hi = slice(0, 20), slice(40, 50), slice(70, 90)
    assert draw.where_phrase(at(lo, lo)) == "in the upper left of the image"
    assert draw.where_phrase(at(hi, hi)) == "in the lower right of the image"
    assert draw.where_phrase(at(mid, lo)) == "on the left side of the image"
    assert draw.where_phrase(at(lo, mid)) == "in the upper middle of the image"
    assert draw.where_phrase(at(mid, mid)) == "in the centre of the image"
    assert draw.where_phrase(at(mid, hi), of="the bag") == "on the right side of the bag"
    assert draw.where_phrase(at(lo, lo), of=None) == "in the upper left"
    assert draw.where_phrase(np.zeros((9, 9), bool)) == "nowhere"


@pytest.mark.parametrize(
    ("word", "art"),
    [
        ("orange", "an"),
        ("apple", "an"),
        ("Egg", "an"),
        ("ice", "an"),
        ("umbrella", "an"),
        ("banana", "a"),
        ("cherry", "a"),
        ("pale", "a"),
        ("", "a"),
    ],
)
def test_article(word: str, art: str) -> None:
    assert draw.article(word) == art


def test_number_words() -> None:
    assert [draw.number_word(n) for n in (0, 1, 3, 10, 11, -1)] == ["no", "one", "three", "ten", "11", "-1"]
    assert draw.count_words(1, "nut") == "one nut"
    assert draw.count_words(0, "nut") == "no nuts"
    assert draw.count_words(2, "washer", "washers") == "two washers"


# ---------------------------------------------------------------------------- defects
@pytest.mark.parametrize("drawer", [draw.scratch, draw.crack, draw.contamination, draw.dent])
@pytest.mark.parametrize("size", [128, 256])
def test_defect_drawers_change_only_their_mask_inside_within(drawer, size: int) -> None:
    for seed in range(6):
        img = draw.background(rng(seed), size, (150, 140, 130))
        before = img.copy()
        within = draw.rounded_rect_mask(size, 0.2 * size, 0.3 * size, 0.8 * size, 0.7 * size, 0.05 * size)
        m = drawer(img, rng(seed + 100), within)
        assert m.shape == (size, size) and m.dtype == bool and m.any()
        assert not (m & ~within).any()
        changed = (img != before).any(axis=2)
        assert changed.any() and not (changed & ~m).any()
        again = before.copy()
        assert np.array_equal(drawer(again, rng(seed + 100), within), m) and np.array_equal(again, img)


def test_defect_drawer_fails_cleanly_without_room() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    tiny = np.zeros((64, 64), bool)
    tiny[30, 30] = True
    with pytest.raises(RuntimeError):
        draw.contamination(img, rng(), tiny, radius=10)
