"""The contract between the LOCO-style generator and its procedural categories.

A category draws one scene at a time: a normal image, or an image with one defect type that may cover
several regions. It returns a :class:`Scene`: the RGB image, the foreground (object pixels, which
environment shifts such as background clutter never paint over), one :class:`Region` per defect region
with its own boolean mask, and a plain-English reference description. The writer turns regions into the
MVTec LOCO ground-truth layout (one PNG per region, filled with the defect type's pixel value).

Everything a category draws comes from the ``numpy.random.Generator`` it is given, so a scene is a pure
function of (category, seed, size, defect).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from vlmad.records import DefectConfig

DefectKind = Literal["logical", "structural"]


@dataclass(frozen=True)
class DefectSpec:
    """A defect type a category can draw, with its sPRO saturation settings (see ``DefectConfig``).

    For a missing object the LOCO authors saturate at the object's area (absolute threshold in pixels of a
    256x256 image, scaled with the image size by :meth:`Category.defect_configs`); for most structural
    defects any overlap up to the whole region counts (relative threshold 1.0).
    """

    name: str
    kind: DefectKind
    saturation_threshold: float = 1.0
    relative_saturation: bool = True


@dataclass
class Region:
    """One connected defect region: a boolean mask (non-empty, same size as the image) and a sentence."""

    defect: str
    mask: np.ndarray
    description: str


@dataclass
class Scene:
    """A rendered image with its ground truth.

    - ``image``: ``(H, W, 3)`` uint8 RGB.
    - ``foreground``: ``(H, W)`` bool, the pixels of the inspected object(s).
    - ``regions``: empty for a normal image; one entry per defect region otherwise.
    - ``description``: reference description of the whole image in plain English (names the defect, the
      object and its location for an anomaly; says what a correct image shows for a normal one).
    - ``facts``: JSON-serialisable structured facts (counts, colours, fill level...) kept as metadata.
    """

    image: np.ndarray
    foreground: np.ndarray
    regions: list[Region] = field(default_factory=list)
    description: str = ""
    facts: dict[str, Any] = field(default_factory=dict)


class Category(ABC):
    """A procedural product category modelled on one MVTec LOCO category.

    Subclasses set ``name`` (folder name), ``object_name`` (used in sentences) and ``defects`` (every defect
    type they can draw; logical first, then structural), and implement :meth:`render`.
    """

    name: ClassVar[str]
    object_name: ClassVar[str]
    defects: ClassVar[tuple[DefectSpec, ...]]

    @abstractmethod
    def render(self, rng: np.random.Generator, size: int, defect: str | None) -> Scene:
        """Draw one ``size`` x ``size`` scene: normal when ``defect`` is None, else with that defect type.

        Must return at least one region for an anomaly, every region mask non-empty and inside the image,
        and vary position, size, colour and texture of normal content within what counts as normal.
        """

    # ------------------------------------------------------------------ helpers shared by all categories
    @classmethod
    def defect_names(cls, kind: DefectKind | None = None) -> list[str]:
        """Names of the defect types of one kind (or all), in declaration order."""
        return [d.name for d in cls.defects if kind is None or d.kind == kind]

    @classmethod
    def spec(cls, defect: str) -> DefectSpec:
        """The spec of a defect type; ``KeyError`` naming the known types if there is none."""
        for d in cls.defects:
            if d.name == defect:
                return d
        raise KeyError(f"{cls.name} has no defect type {defect!r}; known: {', '.join(cls.defect_names())}")

    @classmethod
    def defect_configs(cls, size: int = 256) -> list[DefectConfig]:
        """``defects_config.json`` entries: pixel values 255, 254, ... in declaration order.

        Absolute saturation thresholds are given for 256x256 images and scaled by area to ``size``.
        """
        scale = (size / 256.0) ** 2
        return [
            DefectConfig(
                defect_name=d.name,
                pixel_value=255 - i,
                saturation_threshold=d.saturation_threshold
                if d.relative_saturation
                else float(round(d.saturation_threshold * scale)),
                relative_saturation=d.relative_saturation,
            )
            for i, d in enumerate(cls.defects)
        ]
