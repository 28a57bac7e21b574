"""The contract of the zero-shot methods and their registry.

A method is built with a loaded :class:`~vlmad.zeroshot.clip.Clip` (or a source to load) and plain option
values. ``predict(images, category, references=None) -> (scores, maps)`` scores the images of *one*
category: ``scores`` a float64 array (higher = more anomalous), ``maps`` one float32 ``(H, W)`` map per
image at that image's resolution. ``category`` is the object's name for text prompts ("screw_bag" is
prompted as "screw bag"); ``references`` are normal images for few-shot variants (WinCLIP+).

MuSc scores the images of a category *together* (mutual scoring), so callers pass a whole category at
once. AnomalyCLIP needs ``fit`` on auxiliary annotated data first (``requires_fit``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vlmad.errors import ConfigError
from vlmad.zeroshot.clip import Clip, ZeroShotError

if TYPE_CHECKING:
    import torch

ImageInput = np.ndarray | str | Path
DEFAULT_CLIP = "openai/clip-vit-base-patch16"

_REGISTRY: dict[str, type[ZeroShotMethod]] = {}


def register(cls: type[ZeroShotMethod]) -> type[ZeroShotMethod]:
    """Class decorator: add a method to the registry under ``cls.method``."""
    _REGISTRY[cls.method] = cls
    return cls


def names() -> list[str]:
    """Registered zero-shot method names."""
    import vlmad.zeroshot.methods  # noqa: F401  (registers the built-in methods)

    return sorted(_REGISTRY)


def method_class(name: str) -> type[ZeroShotMethod]:
    """The class registered as ``name``; :class:`ConfigError` listing the names otherwise."""
    known = names()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown zero-shot method {name!r}; choose one of {', '.join(known)}")
    return _REGISTRY[name]


def build(name: str, clip: Clip | str | Path, **options: Any) -> ZeroShotMethod:
    """``method_class(name)(clip, **options)``; an unknown option is a :class:`ConfigError`."""
    cls = method_class(name)
    try:
        return cls(clip, **options)
    except TypeError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


def category_words(category: str) -> str:
    """The object's name in prompts: ``screw_bag`` -> ``screw bag``."""
    return category.replace("_", " ").replace("-", " ").strip()


class ZeroShotMethod(ABC):
    """Base of WinCLIP, AnomalyCLIP and MuSc (see the module docstring for the contract)."""

    method: ClassVar[str] = ""
    label: ClassVar[str] = ""
    requires_fit: ClassVar[bool] = False
    min_images: ClassVar[int] = 1  # images of a category predict needs at once (MuSc: 2)

    def __init__(self, clip: Clip | str | Path, device: str | None = None) -> None:
        self.clip = clip if isinstance(clip, Clip) else Clip.load(clip, device=device)

    @property
    def warnings(self) -> list[str]:
        """Lines every output of this method must show (a random CLIP, what AnomalyCLIP trained on)."""
        w = self.clip.info.warning
        return [w] if w else []

    def describe(self) -> dict[str, Any]:
        """Settings for run records and prediction metadata."""
        return {"method": self.method, **self.clip.info.describe(), **self.options()}

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """The method's option values (JSON-serialisable), as passed to the constructor."""

    def predict(
        self,
        images: Sequence[ImageInput],
        category: str,
        references: Sequence[ImageInput] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores and maps of ``images`` (all of one category); see the module docstring."""
        import torch

        from vlmad.detectors.base import as_image, resize_to

        if len(images) < self.min_images:
            raise ZeroShotError(
                f"{self.method} needs at least {self.min_images} images of category {category!r} at once; "
                f"got {len(images)}"
            )
        arrays = [as_image(x) for x in images]
        refs = None if references is None else [as_image(x) for x in references]
        with torch.inference_mode():
            scores, grids = self._predict(arrays, category, refs)
        maps = [resize_to(g, a.shape[:2]) for g, a in zip(grids, arrays, strict=True)]
        return np.asarray(scores, dtype=np.float64), maps

    @abstractmethod
    def _predict(
        self, images: list[np.ndarray], category: str, references: list[np.ndarray] | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores and maps at any resolution (the base resizes them to each input's size)."""


def smooth_maps(grids: torch.Tensor, size: int, sigma: float) -> list[np.ndarray]:
    """``(B, g, g)`` patch-grid scores -> ``B`` float32 ``(size, size)`` maps, upsampled and blurred."""
    from vlmad.detectors.base import upsample_smooth

    return list(upsample_smooth(grids.float(), size, sigma).cpu().numpy().astype(np.float32))
