"""LLaVA-1.5 in its transformers-native form (the ``llava-hf`` checkpoints, model type ``llava``).

- Processor: ``LlavaProcessor`` (CLIP image processor + Llama tokenizer); every ``<image>`` placeholder
  expands to ``(side / patch)^2`` image tokens (576 for the 336 px, patch 14 CLIP ViT-L of LLaVA-1.5).
- Several images in one message: the ``llava-hf`` chat template writes all of a message's images first and
  its text after them, so role labels name the images by position (layout ``images_first``).
- Image budget: the vision tower has one fixed input size, so the token count is fixed. Every image is
  resampled to a square (aspect not kept, nothing cropped away: an edge defect stays in view) of side
  ``min(input size, floor(sqrt(max_pixels)))``; the processor then scales that square to the input size.
  A smaller ``max_pixels`` thus means less detail for that role. ``min_pixels`` / ``max_tiles`` do not apply.
- Modules: ``model.language_model`` + ``lm_head``, ``model.multi_modal_projector``, ``model.vision_tower``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from vlmad.vlm.base import Family, ImageBudget, isqrt_side, register

if TYPE_CHECKING:
    from PIL import Image


def input_side(processor: Any) -> int:
    """The square side the LLaVA vision tower takes, from the image processor's crop size (or size)."""
    ip = processor.image_processor
    crop = getattr(ip, "crop_size", None)
    if crop and getattr(ip, "do_center_crop", True):
        return int(min(crop["height"], crop["width"]))
    size = dict(ip.size)
    return int(size.get("shortest_edge") or min(size["height"], size["width"]))


@register
class LlavaFamily(Family):
    name = "llava"
    label = "LLaVA-1.5"
    aliases = ("llava-1.5", "llava15", "llava-hf")
    model_types = ("llava",)
    processor_classes = ("LlavaProcessor",)
    default_layout = "images_first"
    budget_fields = ("max_pixels",)
    module_paths: ClassVar[dict[str, tuple[str, ...]]] = {
        "language_model": ("model.language_model", "lm_head"),
        "projector": ("model.multi_modal_projector",),
        "vision_tower": ("model.vision_tower",),
    }
    example_checkpoints = ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf")

    def model_class(self, model_type: str) -> type:
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def budget_kwargs(self, processor: Any, budget: ImageBudget) -> dict[str, Any]:
        return {}

    def side(self, processor: Any, budget: ImageBudget) -> int:
        """The square side an image of this budget is resampled to."""
        full = input_side(processor)
        return full if budget.max_pixels is None else min(full, isqrt_side(budget.max_pixels))

    def pre_resize(self, processor: Any, image: Image.Image, budget: ImageBudget) -> Image.Image:
        from PIL import Image

        s = self.side(processor, budget)
        return image if image.size == (s, s) else image.resize((s, s), Image.Resampling.BICUBIC)

    def image_geometry(
        self, processor: Any, processed: Mapping[str, Any], image: Image.Image
    ) -> tuple[int, tuple[int, int]]:
        return 1, (image.height, image.width)
