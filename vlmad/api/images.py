"""The one image preprocessing for every backend (QA drafter, chain-of-image API and local backends).

:func:`prepare_image` turns an image file into the pixels a model is given: converted to 8-bit RGB, shrunk
so its longest side is at most ``max_side`` (aspect ratio kept, never enlarged). EXIF orientation is
deliberately *not* applied, so pixel coordinates of what the model sees match the stored ground-truth masks.
An API backend sends those pixels as an OpenAI ``image_url`` content part holding a PNG data URL
(:func:`image_content`); a local backend hands the same ``PIL.Image`` to its model's processor.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any

from vlmad.errors import ConfigError, DatasetError

DETAILS: tuple[str, ...] = ("auto", "low", "high")

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file's bytes. A missing or unreadable file -> :class:`DatasetError` naming it."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        raise DatasetError(path, "image file not found") from None
    except OSError as exc:
        raise DatasetError(path, f"cannot read file ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _to_rgb(img: Any) -> Any:
    """A new 8-bit RGB copy of a PIL image; 16-bit grey keeps its high byte instead of being clipped."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        import numpy as np

        arr = (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return img.convert("RGB")


def sent_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """``(width, height)`` of an image of that size after :func:`prepare_image`: shrunk so its longest side
    is at most ``max_side`` (aspect ratio kept, rounded, at least 1 pixel), never enlarged."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _check_max_side(max_side: int | None) -> None:
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ConfigError(f"max_side must be a positive integer or None, got {max_side!r}")


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DatasetError(path, "image file not found") from None
    except IsADirectoryError:
        raise DatasetError(path, "is a directory, expected an image file") from None
    except OSError as exc:
        raise DatasetError(path, f"cannot read file ({exc.strerror or exc})") from None


def _decode(path: str | Path, data: bytes) -> tuple[Any, int, int]:
    """``(8-bit RGB PIL image, original width, original height)`` of the file's bytes."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
            rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    return rgb, width, height


def _prepare(path: str | Path, max_side: int | None) -> tuple[Any, dict[str, Any]]:
    _check_max_side(max_side)
    data = _read(path)
    rgb, width, height = _decode(path, data)
    size = sent_size(width, height, max_side)
    if size != (width, height):
        from PIL import Image

        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    info = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": width,
        "height": height,
        "sent_width": rgb.width,
        "sent_height": rgb.height,
    }
    return rgb, info


def prepare_image(path: str | Path, *, max_side: int | None = 1024) -> tuple[Any, dict[str, Any]]:
    """The pixels every backend gives a model for an image file, and what they are.

    Returns ``(image, info)``: ``image`` is an 8-bit RGB ``PIL.Image`` shrunk so its longest side is at
    most ``max_side`` (Lanczos, aspect ratio kept, never enlarged; ``None`` keeps the full size; EXIF
    orientation not applied); ``info`` is ``{"sha256": of the file's bytes, "width", "height": original
    size, "sent_width", "sent_height": size of ``image``}``. :func:`image_content` (API backends) PNG-encodes
    exactly this image, and local backends feed it to their processor, so both see the same pixels.

    ``max_side`` below 1 -> :class:`ConfigError`; a missing file or one that is not a readable image ->
    :class:`DatasetError` naming the file.
    """
    return _prepare(path, max_side)


def image_info(path: str | Path, *, max_side: int | None = 1024) -> dict[str, Any]:
    """:func:`prepare_image`'s ``info`` without decoding the pixels (the file is hashed and only its header
    read): for records of images whose pixels are not needed (e.g. a cached answer). Same errors."""
    from PIL import Image

    _check_max_side(max_side)
    data = _read(path)
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    sent_w, sent_h = sent_size(width, height, max_side)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": width,
        "height": height,
        "sent_width": sent_w,
        "sent_height": sent_h,
    }


def image_content(
    path: str | Path, *, max_side: int | None = 1024, detail: str = "auto"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the OpenAI ``image_url`` content part for an image file, and what was sent.

    Returns ``(part, info)``:

    - ``part``: ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,...", "detail": detail}}``
    - ``info``: ``{"sha256": hex sha256 of the original file bytes, "width", "height": original size,
      "sent_width", "sent_height": size after resizing, "detail": detail}``

    The pixels are :func:`prepare_image`'s (the one preprocessing of every backend), PNG-encoded (lossless).
    ``max_side=None`` sends the image at full size. ``detail`` must be one of ``auto``, ``low``, ``high`` and
    ``max_side`` at least 1 (else :class:`ConfigError`). A missing file or one that is not a readable image
    -> :class:`DatasetError` naming the file.
    """
    if detail not in DETAILS:
        raise ConfigError(f"image detail must be one of {', '.join(DETAILS)}, got {detail!r}")
    rgb, info = _prepare(path, max_side)
    buf = io.BytesIO()
    # zlib level 1: several times faster than the default 6 on photographs for a few % more bytes; PNG is
    # lossless at every level, so the pixels sent are the same
    rgb.save(buf, format="PNG", compress_level=1)
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    part = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    return part, {**info, "detail": detail}
