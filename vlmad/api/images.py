"""The one image preprocessing for every API backend (QA drafter, chain-of-image OpenAI backends).

An image goes to a server as an OpenAI ``image_url`` content part holding a PNG data URL: converted to RGB,
shrunk so its longest side is at most ``max_side`` (aspect ratio kept, never enlarged). EXIF orientation is
deliberately *not* applied, so pixel coordinates of what the model sees match the stored ground-truth masks.
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


def image_content(
    path: str | Path, *, max_side: int | None = 1024, detail: str = "auto"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the OpenAI ``image_url`` content part for an image file, and what was sent.

    Returns ``(part, info)``:

    - ``part``: ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,...", "detail": detail}}``
    - ``info``: ``{"sha256": hex sha256 of the original file bytes, "width", "height": original size,
      "sent_width", "sent_height": size after resizing, "detail": detail}``

    ``max_side=None`` sends the image at full size. Resizing uses Lanczos. ``detail`` must be one of
    ``auto``, ``low``, ``high`` and ``max_side`` at least 1 (else :class:`ConfigError`). A missing file or one
    that is not a readable image -> :class:`DatasetError` naming the file.
    """
    if detail not in DETAILS:
        raise ConfigError(f"image detail must be one of {', '.join(DETAILS)}, got {detail!r}")
    if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
        raise ConfigError(f"max_side must be a positive integer or None, got {max_side!r}")

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DatasetError(path, "image file not found") from None
    except IsADirectoryError:
        raise DatasetError(path, "is a directory, expected an image file") from None
    except OSError as exc:
        raise DatasetError(path, f"cannot read file ({exc.strerror or exc})") from None

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
            rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None

    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

    part = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    info = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "width": width,
        "height": height,
        "sent_width": rgb.width,
        "sent_height": rgb.height,
        "detail": detail,
    }
    return part, info
