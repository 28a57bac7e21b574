"""image_content: the one image preprocessing for API backends (RGB, longest side capped, PNG data URL)."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmad.api import file_sha256, image_content
from vlmad.errors import ConfigError, DatasetError


def decode(part: dict) -> Image.Image:
    url = part["image_url"]["url"]
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    img = Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))
    assert img.format == "PNG"
    return img


def write(path: Path, img: Image.Image, fmt: str = "PNG") -> Path:
    img.save(path, format=fmt)
    return path


def test_small_rgb_image_is_sent_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    path = write(tmp_path / "a.png", Image.fromarray(arr))
    part, info = image_content(path, max_side=1024, detail="high")
    assert part["type"] == "image_url" and part["image_url"]["detail"] == "high"
    sent = decode(part)
    assert sent.mode == "RGB" and sent.size == (60, 40)
    assert np.array_equal(np.asarray(sent), arr)  # PNG is lossless, no resize: same pixels
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert info == {
        "sha256": digest,
        "width": 60,
        "height": 40,
        "sent_width": 60,
        "sent_height": 40,
        "detail": "high",
    }
    assert file_sha256(path) == digest


@pytest.mark.parametrize(
    ("size", "max_side", "sent"),
    [
        ((300, 150), 100, (100, 50)),
        ((150, 300), 100, (50, 100)),
        ((301, 100), 100, (100, 33)),
        ((80, 80), 80, (80, 80)),
    ],
)
def test_longest_side_is_capped_keeping_aspect(
    tmp_path: Path, size: tuple, max_side: int, sent: tuple
) -> None:
    path = write(tmp_path / "big.jpg", Image.new("RGB", size, (200, 10, 10)), fmt="JPEG")
    part, info = image_content(path, max_side=max_side)
    assert decode(part).size == sent
    assert (info["width"], info["height"]) == size and (info["sent_width"], info["sent_height"]) == sent
    assert info["detail"] == "auto"


def test_no_resize_when_max_side_is_none(tmp_path: Path) -> None:
    path = write(tmp_path / "big.png", Image.new("RGB", (1500, 20)))
    part, info = image_content(path, max_side=None)
    assert decode(part).size == (1500, 20) and info["sent_width"] == 1500


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "1"])
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    img = Image.new("RGB", (16, 8), (30, 60, 90)).convert(mode)
    part, _ = image_content(write(tmp_path / f"{mode}.png", img))
    assert decode(part).mode == "RGB" and decode(part).size == (16, 8)


def test_16_bit_grey_keeps_its_range(tmp_path: Path) -> None:
    arr = np.full((8, 8), 0x8000, dtype=np.uint16)
    arr[0, 0] = 0xFFFF
    path = write(tmp_path / "g16.png", Image.fromarray(arr))
    sent = np.asarray(decode(image_content(path)[0]))
    assert sent[1, 1].tolist() == [128, 128, 128] and sent[0, 0].tolist() == [255, 255, 255]


def test_bad_files_raise_dataset_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(DatasetError, match=r"nope\.png"):
        image_content(missing)
    with pytest.raises(DatasetError, match=r"nope\.png"):
        file_sha256(missing)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(DatasetError, match=r"garbage\.png.*not a readable image"):
        image_content(garbage)
    good = write(tmp_path / "whole.png", Image.new("RGB", (64, 64), (1, 2, 3)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    with pytest.raises(DatasetError, match=r"truncated\.png") as err:
        image_content(truncated)
    assert err.value.path == truncated
    with pytest.raises(DatasetError, match="directory"):
        image_content(tmp_path)


@pytest.mark.parametrize("kwargs", [{"detail": "medium"}, {"max_side": 0}, {"max_side": 2.5}])
def test_bad_options_raise_config_error(tmp_path: Path, kwargs: dict) -> None:
    path = write(tmp_path / "a.png", Image.new("RGB", (4, 4)))
    with pytest.raises(ConfigError):
        image_content(path, **kwargs)
