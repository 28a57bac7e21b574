"""Tests of vlmad.data.maps: saving, loading, resizing and finding anomaly maps in a dataset layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from vlmad.data.maps import MAP_SUFFIXES, find_map, load_map, resize_map, save_map
from vlmad.errors import DatasetError


def _random_map(shape: tuple[int, int] = (17, 23), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    amap = rng.normal(size=shape).astype(np.float32) * 1e3
    amap[0, 0] = np.float32(1e-38)  # tiny and extreme values survive bit for bit
    amap[0, 1] = np.float32(-3.4e38)
    amap[0, 2] = np.inf
    return amap


# --- save / load round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".tiff", ".tif"])
def test_float32_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    amap = _random_map()
    path = save_map(tmp_path / "deep" / "dir" / f"m{suffix}", amap)
    assert path == tmp_path / "deep" / "dir" / f"m{suffix}" and path.is_file()
    back = load_map(path)
    assert back.dtype == np.float32 and back.shape == amap.shape
    np.testing.assert_array_equal(back, amap)
    assert back.tobytes() == amap.tobytes()


@pytest.mark.parametrize("suffix", [".npy", ".tiff"])
def test_float64_and_integer_input_saved_as_float32(tmp_path: Path, suffix: str) -> None:
    amap = np.arange(6, dtype=np.float64).reshape(2, 3) / 3
    back = load_map(save_map(tmp_path / f"m{suffix}", amap))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, amap.astype(np.float32))
    ints = np.array([[1, 2], [3, 4]], dtype=np.int64)
    np.testing.assert_array_equal(load_map(save_map(tmp_path / f"i{suffix}", ints)), ints.astype(np.float32))


def test_tiff_written_by_save_map_is_float32_for_other_readers(tmp_path: Path) -> None:
    amap = _random_map((5, 6))
    save_map(tmp_path / "m.tiff", amap)
    raw = tifffile.imread(tmp_path / "m.tiff")
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(raw, amap)


@pytest.mark.parametrize(("shape", "suffix"), [((1, 7), ".npy"), ((7, 1), ".tiff")])
def test_round_trip_of_a_one_row_or_one_column_map(
    tmp_path: Path, shape: tuple[int, int], suffix: str
) -> None:
    # save_map accepts any 2-D map, so load_map must give it back as the same 2-D map
    amap = np.arange(7, dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(load_map(save_map(tmp_path / f"m{suffix}", amap)), amap)


def test_save_map_rejects_non_2d_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2-D"):
        save_map(tmp_path / "m.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        save_map(tmp_path / "m.npy", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"\.npy or \.tiff"):
        save_map(tmp_path / "m.png", np.zeros((2, 2), np.float32))
    assert not (tmp_path / "m.npy").exists() and not (tmp_path / "m.png").exists()


# --- PNG maps ---------------------------------------------------------------------------------------------


def test_8bit_png_read_as_numbers(tmp_path: Path) -> None:
    arr = np.array([[0, 1, 2], [127, 254, 255]], dtype=np.uint8)
    Image.fromarray(arr, mode="L").save(tmp_path / "m.png")
    back = load_map(tmp_path / "m.png")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, arr.astype(np.float32))  # raw values, not rescaled to [0, 1]


def test_16bit_png_read_as_numbers(tmp_path: Path) -> None:
    arr = np.array([[0, 1, 255], [256, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode.startswith("I")  # really a 16-bit file
    back = load_map(tmp_path / "m.png")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, arr.astype(np.float32))  # no reduction to 8 bits


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_png_rejected_naming_the_file(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "colour_map.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).convert(mode).save(path)
    with pytest.raises(DatasetError) as e:
        load_map(path)
    assert str(path) in str(e.value) and e.value.path == path
    assert mode in str(e.value)


# --- shapes and values ------------------------------------------------------------------------------------


def test_nan_map_rejected(tmp_path: Path) -> None:
    amap = np.zeros((4, 4), np.float32)
    amap[1, 2] = np.nan
    amap[3, 3] = np.nan
    for suffix in (".npy", ".tiff"):
        path = save_map(tmp_path / f"nan{suffix}", amap)
        with pytest.raises(DatasetError, match="NaN") as e:
            load_map(path)
        assert str(path) in str(e.value) and "2" in e.value.problem


@pytest.mark.parametrize("shape", [(1, 5, 6), (5, 6, 1), (1, 5, 6, 1)])
def test_singleton_axes_squeezed(tmp_path: Path, shape: tuple[int, ...]) -> None:
    arr = np.arange(30, dtype=np.float32).reshape(shape)
    np.save(tmp_path / "m.npy", arr)
    tifffile.imwrite(tmp_path / "m.tiff", arr)
    for suffix in (".npy", ".tiff"):
        back = load_map(tmp_path / f"m{suffix}")
        assert back.shape == (5, 6)
        np.testing.assert_array_equal(back, arr.reshape(5, 6))


@pytest.mark.parametrize("shape", [(2, 5, 6), (5, 6, 3), (30,), ()])
def test_other_shapes_rejected(tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(shape, np.float32))
    with pytest.raises(DatasetError, match="2-D") as e:
        load_map(path)
    assert str(path) in str(e.value)


def test_integer_and_bool_npy_maps_become_float32(tmp_path: Path) -> None:
    np.save(tmp_path / "i.npy", np.array([[1, -2], [3, 4]], dtype=np.int16))
    np.save(tmp_path / "b.npy", np.array([[True, False], [False, True]]))
    np.testing.assert_array_equal(load_map(tmp_path / "i.npy"), [[1, -2], [3, 4]])
    assert load_map(tmp_path / "i.npy").dtype == np.float32
    np.testing.assert_array_equal(load_map(tmp_path / "b.npy"), [[1, 0], [0, 1]])


@pytest.mark.parametrize("arr", [np.array([["a", "b"], ["c", "d"]]), np.ones((2, 2), dtype=np.complex64)])
def test_non_numeric_npy_rejected(tmp_path: Path, arr: np.ndarray) -> None:
    path = tmp_path / "m.npy"
    np.save(path, arr)
    with pytest.raises(DatasetError) as e:
        load_map(path)
    assert str(path) in str(e.value)


def test_pickled_object_npy_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.array([[{"a": 1}, None]], dtype=object), allow_pickle=True)
    with pytest.raises(DatasetError) as e:
        load_map(path)
    assert str(path) in str(e.value)


# --- missing and corrupt files ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", MAP_SUFFIXES)
def test_missing_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"absent{suffix}"
    with pytest.raises(DatasetError, match="not found") as e:
        load_map(path)
    assert e.value.path == path and str(path) in str(e.value)


def test_directory_is_not_a_map(tmp_path: Path) -> None:
    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(DatasetError, match="not found"):
        load_map(tmp_path / "dir.npy")


@pytest.mark.parametrize("suffix", MAP_SUFFIXES)
@pytest.mark.parametrize(
    "content",
    [b"", b"garbage bytes \x00\xff\x13 not a map" * 7, b"\x93NUMPY\x01\x00garbage", b"\x89PNG\r\n\x1a\nxx"],
)
def test_corrupt_file_raises_dataset_error_naming_it(tmp_path: Path, suffix: str, content: bytes) -> None:
    path = tmp_path / f"corrupt{suffix}"
    path.write_bytes(content)
    try:
        load_map(path)
    except DatasetError as e:
        assert str(path) in str(e) and e.path == path
    except BaseException as e:  # any other type is a raw traceback for the user
        pytest.fail(f"{type(e).__name__} instead of DatasetError: {e}")
    else:
        pytest.fail("a corrupt map was read")


@pytest.mark.parametrize("suffix", [".npy", ".tiff", ".png"])
def test_truncated_file_raises_dataset_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"t{suffix}"
    if suffix == ".png":
        Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 251).convert("L").save(path)
    else:
        save_map(path, _random_map((64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError) as e:
        load_map(path)
    assert str(path) in str(e.value)


def test_unknown_suffix_rejected(tmp_path: Path) -> None:
    path = tmp_path / "m.jpg"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    with pytest.raises(DatasetError, match="unknown map format") as e:
        load_map(path)
    assert str(path) in str(e.value)


def test_upper_case_suffix_read(tmp_path: Path) -> None:
    amap = _random_map((3, 4))
    np.save(tmp_path / "m.npy", amap)
    (tmp_path / "m.npy").rename(tmp_path / "M.NPY")
    np.testing.assert_array_equal(load_map(tmp_path / "M.NPY"), amap)


# --- resize_map -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), [((8, 12), (32, 48)), ((40, 30), (10, 15)), ((5, 7), (7, 5))])
def test_resize_map_shape(src: tuple[int, int], dst: tuple[int, int]) -> None:
    amap = np.random.default_rng(0).random(src).astype(np.float32)
    out = resize_map(amap, dst)
    assert out.shape == dst and out.dtype == np.float32
    # bilinear: no new extremes
    assert out.min() >= amap.min() - 1e-6 and out.max() <= amap.max() + 1e-6


def test_resize_map_constant_stays_constant_and_same_shape_is_identity() -> None:
    const = np.full((6, 9), 2.5, np.float32)
    np.testing.assert_allclose(resize_map(const, (12, 4)), 2.5)
    amap = np.random.default_rng(1).random((6, 9)).astype(np.float32)
    assert resize_map(amap, (6, 9)) is amap
    assert resize_map(amap, [6, 9]).shape == (6, 9)  # type: ignore[arg-type]


def test_resize_map_axes_not_swapped() -> None:
    amap = np.zeros((4, 8), np.float32)
    amap[:, 4:] = 1.0  # right half hot
    out = resize_map(amap, (16, 32))
    assert out.shape == (16, 32)
    assert out[:, :14].max() == 0.0 and out[:, 18:].min() == 1.0


# --- find_map ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", MAP_SUFFIXES)
def test_find_map_in_dataset_layout(tmp_path: Path, suffix: str) -> None:
    dataset, maps = tmp_path / "ds", tmp_path / "maps"
    image = dataset / "screw_bag" / "test" / "logical_anomalies" / "000.png"
    expected = maps / "screw_bag" / "test" / "logical_anomalies" / f"000{suffix}"
    assert find_map(maps, image, dataset) is None
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"x")
    assert find_map(maps, image, dataset) == expected
    assert find_map(str(maps), image, dataset) == expected
    # only this image's map: neighbours in other folders or with other names are not it
    other = dataset / "screw_bag" / "test" / "structural_anomalies" / "000.png"
    assert find_map(maps, other, dataset) is None
    assert find_map(maps, image.with_name("001.png"), dataset) is None


def test_find_map_keeps_dots_in_names_and_ignores_image_suffix(tmp_path: Path) -> None:
    dataset, maps = tmp_path / "ds", tmp_path / "maps"
    image = dataset / "cat" / "test" / "good" / "img.v2.JPG"
    target = maps / "cat" / "test" / "good" / "img.v2.npy"
    target.parent.mkdir(parents=True)
    (maps / "cat" / "test" / "good" / "img.npy").write_bytes(b"x")  # a different image's map
    assert find_map(maps, image, dataset) is None
    target.write_bytes(b"x")
    assert find_map(maps, image, dataset) == target


def test_find_map_prefers_suffix_order_and_skips_directories(tmp_path: Path) -> None:
    dataset, maps = tmp_path / "ds", tmp_path / "maps"
    image = dataset / "cat" / "test" / "good" / "000.png"
    d = maps / "cat" / "test" / "good"
    (d / "000.tiff").mkdir(parents=True)  # a folder named like a map is not a map
    assert find_map(maps, image, dataset) is None
    (d / "000.png").write_bytes(b"x")
    (d / "000.npy").write_bytes(b"x")
    assert find_map(maps, image, dataset) == d / "000.npy"  # first of MAP_SUFFIXES present


def test_find_map_for_image_outside_the_dataset_uses_its_name(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    (maps).mkdir()
    (maps / "loose.npy").write_bytes(b"x")
    assert find_map(maps, tmp_path / "elsewhere" / "loose.png", tmp_path / "ds") == maps / "loose.npy"


def test_find_map_then_load(tmp_path: Path) -> None:
    dataset, maps = tmp_path / "ds", tmp_path / "maps"
    image = dataset / "pushpins" / "test" / "good" / "003.png"
    amap = _random_map((6, 6))
    save_map(maps / "pushpins" / "test" / "good" / "003.tiff", amap)
    found = find_map(maps, image, dataset)
    assert found is not None
    np.testing.assert_array_equal(load_map(found), amap)
