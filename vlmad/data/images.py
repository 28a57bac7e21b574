"""Image and mask loading with the checks every reader and ``vlmad data validate`` share.

- Images are returned as ``(H, W, 3)`` uint8 RGB: grayscale, 16-bit, palette, CMYK and RGBA images are
  accepted and converted (alpha is dropped).
- Masks are returned as ``(H, W)`` arrays. A pixel is a defect where the mask is non-zero: MVTec LOCO masks
  use per-defect pixel values that are often below 255, and VisA masks use small class indices. 16-bit and
  palette masks are read correctly (16-bit values scaled to 8 bit, palette indices through their colours)
  and reported as warnings by :func:`check_mask`, since other tools often misread them.

Every failure raises :class:`~vlmad.errors.DatasetError` naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from vlmad.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
Severity = Literal["error", "warning"]
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16/32-bit integer and float PIL modes


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset: the file, what is wrong, and whether it stops use of the file."""

    path: Path
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image file, turning every failure into a one-line DatasetError."""
    if not path.exists():
        raise DatasetError(path, "file not found")
    if not path.is_file():
        raise DatasetError(path, "not a file")
    if path.stat().st_size == 0:
        raise DatasetError(path, "empty file (0 bytes)")
    try:
        img = Image.open(path)
        img.load()
    except UnidentifiedImageError:
        raise DatasetError(path, "not a readable image (unknown or corrupt format)") from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower():
            raise DatasetError(path, "truncated image (the file ends before the image data does)") from None
        raise DatasetError(path, f"unreadable image ({msg})") from None
    except (ValueError, SyntaxError) as e:  # PIL raises these for some malformed headers
        raise DatasetError(path, f"unreadable image ({e})") from None
    return img


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float data to uint8, scaling 16-bit ranges down by 257."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 if hi <= 1.0 else (255.0 / 65535.0 if hi > 255 else 1.0)
        return np.clip(arr * scale, 0, 255).astype(np.uint8)
    hi = int(arr.max()) if arr.size else 0
    if hi > 255:
        return np.clip(np.round(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image from its header, without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file not found")
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as e:
        raise DatasetError(path, f"not a readable image ({e})") from None


def load_image(path: str | Path) -> np.ndarray:
    """Load an image as ``(H, W, 3)`` uint8 RGB, converting grayscale, 16-bit, palette and RGBA images."""
    path = Path(path)
    img = _open(path)
    if img.mode in _WIDE_MODES:
        gray = _to_8bit(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "PA", "LA") else img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def _mask_array(img: Image.Image) -> np.ndarray:
    """(H, W) uint8 mask values of a decoded image; see the module docstring for conversions."""
    mode = img.mode
    if mode in _WIDE_MODES:
        return _to_8bit(np.asarray(img))
    if mode in ("P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"), dtype=np.uint8).max(axis=2)
    if mode == "LA":
        return np.asarray(img, dtype=np.uint8)[..., 0].copy()
    return _to_8bit(np.asarray(img.convert("L") if mode == "1" else img))


def mask_values(path: str | Path) -> np.ndarray:
    """Load a mask as ``(H, W)`` uint8 values (0 = no defect); see the module docstring for conversions."""
    return _mask_array(_open(Path(path)))


def load_mask(path: str | Path) -> np.ndarray:
    """Load a mask as an ``(H, W)`` bool array: True where the mask is non-zero."""
    return mask_values(path) > 0


def load_masks(paths: tuple[Path, ...] | list[Path], shape: tuple[int, int]) -> np.ndarray:
    """Union of several masks as one ``shape`` (H, W) bool array (all False when there is none).

    Raises :class:`DatasetError` when a mask's size differs from ``shape``.
    """
    out = np.zeros(shape, bool)
    for p in paths:
        m = load_mask(p)
        if m.shape != shape:
            raise DatasetError(p, f"mask is {m.shape[1]}x{m.shape[0]} but the image is {shape[1]}x{shape[0]}")
        out |= m
    return out


def check_image(path: str | Path) -> tuple[tuple[int, int] | None, list[Problem]]:
    """Decode an image fully; returns ((H, W) or None when unreadable, problems found)."""
    path = Path(path)
    try:
        img = load_image(path)
    except DatasetError as e:
        return None, [Problem(path, e.problem)]
    return img.shape[:2], []


def check_mask(path: str | Path, image_shape: tuple[int, int] | None) -> list[Problem]:
    """Every problem of one mask: unreadable, size mismatch with the image, no defect pixels, 16-bit or
    palette encoding (warnings: read correctly by vlmad, misread by many other tools)."""
    path = Path(path)
    try:
        img = _open(path)
    except DatasetError as e:
        return [Problem(path, e.problem)]
    mode = img.mode
    values = _mask_array(img)
    problems: list[Problem] = []
    if mode in _WIDE_MODES:
        problems.append(
            Problem(
                path,
                "16-bit mask: read as 8-bit (value / 257), non-zero = defect"
                if mode != "F"
                else "float mask: non-zero = defect",
                "warning",
            )
        )
    elif mode in ("P", "PA"):
        problems.append(
            Problem(path, "palette mask: read through its palette colours, non-zero = defect", "warning")
        )
    elif mode in ("RGB", "RGBA"):
        problems.append(Problem(path, "colour mask: read as the maximum over channels", "warning"))
    if image_shape is not None and values.shape != tuple(image_shape):
        h, w = values.shape
        problems.append(Problem(path, f"mask is {w}x{h} but its image is {image_shape[1]}x{image_shape[0]}"))
    if not values.any():
        problems.append(Problem(path, "mask has no defect pixels (all zero)"))
    return problems


def is_image_file(path: Path) -> bool:
    """True for a regular file with an image suffix (case-insensitive), not hidden."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
