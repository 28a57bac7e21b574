"""InternVL (2.5 / 3) in its transformers-native form (the ``-hf`` checkpoints, model type ``internvl``).

- Processor: ``InternVLProcessor`` (GOT-OCR2 image processor that cuts an image into 448 px tiles plus a
  thumbnail, Qwen2 tokenizer); every ``<IMG_CONTEXT>`` placeholder expands to
  ``<img>`` + ``image_seq_length`` tokens per tile + ``</img>``.
- Several images in one message: the chat template renders items in order (layout ``interleaved``).
- Image budget: ``max_tiles`` caps the tiles an image is cut into (the processor's ``max_patches``; a
  thumbnail tile is added when there are several), ``max_pixels`` caps them at ``max_pixels // tile_area``;
  ``min_pixels`` does not apply.
- Modules: ``model.language_model`` + ``lm_head``, ``model.multi_modal_projector``, ``model.vision_tower``.
- The original ``OpenGVLab/InternVL*`` repositories (model type ``internvl_chat``) need remote code and are
  not this family: use their ``-hf`` versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from vlmad.vlm.base import Family, ImageBudget, register

if TYPE_CHECKING:
    from PIL import Image


def tile_size(processor: Any) -> tuple[int, int]:
    """``(height, width)`` of one InternVL tile."""
    size = dict(processor.image_processor.size)
    return int(size["height"]), int(size["width"])


@register
class InternVLFamily(Family):
    name = "internvl"
    label = "InternVL"
    aliases = ("internvl-hf", "internvl2.5", "internvl3")
    model_types = ("internvl",)
    processor_classes = ("InternVLProcessor",)
    default_layout = "interleaved"
    budget_fields = ("max_pixels", "max_tiles")
    module_paths: ClassVar[dict[str, tuple[str, ...]]] = {
        "language_model": ("model.language_model", "lm_head"),
        "projector": ("model.multi_modal_projector",),
        "vision_tower": ("model.vision_tower",),
    }
    example_checkpoints = (
        "OpenGVLab/InternVL3-8B-hf",
        "OpenGVLab/InternVL3-1B-hf",
        "OpenGVLab/InternVL2_5-8B-MPO-hf",
    )

    def model_class(self, model_type: str) -> type:
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration

    def budget_kwargs(self, processor: Any, budget: ImageBudget) -> dict[str, Any]:
        limits = []
        if budget.max_tiles is not None:
            limits.append(budget.max_tiles)
        if budget.max_pixels is not None:
            h, w = tile_size(processor)
            limits.append(max(1, budget.max_pixels // (h * w)))
        if not limits:
            return {}
        n = min(limits)
        lowest = int(getattr(processor.image_processor, "min_patches", 1) or 1)
        return {"max_patches": n, "min_patches": min(lowest, n)}

    def image_geometry(
        self, processor: Any, processed: Mapping[str, Any], image: Image.Image
    ) -> tuple[int, tuple[int, int]]:
        n = processed["num_patches"]
        n = int(n[0]) if hasattr(n, "__getitem__") else int(n)
        return n, tile_size(processor)
