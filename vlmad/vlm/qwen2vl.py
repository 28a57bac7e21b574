"""Qwen2-VL and Qwen2.5-VL (model types ``qwen2_vl`` and ``qwen2_5_vl``).

- Processor: ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor``; an image keeps its aspect ratio and is resized
  to a multiple of ``patch_size * merge_size`` (28 px) with a pixel count in ``[min_pixels, max_pixels]``;
  ``<|vision_start|><|image_pad|><|vision_end|>`` expands to one ``<|image_pad|>`` per merged 2 x 2 patch.
- Several images in one message: the chat template renders items in order (layout ``interleaved``).
- Image budget: ``min_pixels`` / ``max_pixels`` per image (the processor's ``size`` shortest / longest edge
  in pixels); ``max_tiles`` does not apply.
- Modules: ``model.language_model`` + ``lm_head``; projector ``model.visual.merger``; vision tower
  ``model.visual.patch_embed`` + ``model.visual.blocks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from vlmad.vlm.base import Family, ImageBudget, register

if TYPE_CHECKING:
    from PIL import Image


@register
class Qwen2VLFamily(Family):
    name = "qwen2vl"
    label = "Qwen2-VL"
    aliases = ("qwen2-vl", "qwen2.5-vl", "qwen25vl", "qwen2.5vl")
    model_types = ("qwen2_vl", "qwen2_5_vl")
    processor_classes = ("Qwen2VLProcessor", "Qwen2_5_VLProcessor")
    default_layout = "interleaved"
    budget_fields = ("max_pixels", "min_pixels")
    module_paths: ClassVar[dict[str, tuple[str, ...]]] = {
        "language_model": ("model.language_model", "lm_head"),
        "projector": ("model.visual.merger",),
        "vision_tower": ("model.visual.patch_embed", "model.visual.blocks"),
    }
    example_checkpoints = (
        "Qwen/Qwen2-VL-7B-Instruct",
        "Qwen/Qwen2.5-VL-7B-Instruct",
        "Qwen/Qwen2-VL-2B-Instruct",
    )

    def model_class(self, model_type: str) -> type:
        if model_type == "qwen2_5_vl":
            from transformers import Qwen2_5_VLForConditionalGeneration

            return Qwen2_5_VLForConditionalGeneration
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration

    def budget_kwargs(self, processor: Any, budget: ImageBudget) -> dict[str, Any]:
        if budget.min_pixels is None and budget.max_pixels is None:
            return {}
        size = dict(processor.image_processor.size)
        if budget.max_pixels is not None:
            size["longest_edge"] = budget.max_pixels
            size["shortest_edge"] = min(size.get("shortest_edge") or budget.max_pixels, budget.max_pixels)
        if budget.min_pixels is not None:
            size["shortest_edge"] = budget.min_pixels
            size["longest_edge"] = max(size.get("longest_edge") or budget.min_pixels, budget.min_pixels)
        return {"size": size}

    def image_geometry(
        self, processor: Any, processed: Mapping[str, Any], image: Image.Image
    ) -> tuple[int, tuple[int, int]]:
        _, h, w = (int(x) for x in processed["image_grid_thw"][0])
        patch = int(processor.image_processor.patch_size)
        return 1, (h * patch, w * patch)
