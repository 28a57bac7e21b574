"""Vision-language model families: loading, chat formatting with image roles, yes/no scores, tiny models.

Supported families (transformers-native checkpoints, a Hub id or a local directory):

- ``llava``: LLaVA-1.5 (``llava-hf/llava-1.5-7b-hf``, ...), :mod:`vlmad.vlm.llava`;
- ``internvl``: InternVL 2.5 / 3 ``-hf`` checkpoints (``OpenGVLab/InternVL3-8B-hf``, ...),
  :mod:`vlmad.vlm.internvl`;
- ``qwen2vl``: Qwen2-VL and Qwen2.5-VL (``Qwen/Qwen2-VL-7B-Instruct``, ...), :mod:`vlmad.vlm.qwen2vl`.

Typical use::

    from vlmad.vlm import ImageBudget, VlmRequest, load_vlm, yes_no_scores, generate

    vlm = load_vlm("models/llava-1.5-7b-hf")               # or a Hub id; family detected from the config
    req = VlmRequest("Is there a defect in the test image? Answer yes or no.",
                     {"template": "good/000.png", "test": "test/042.png"})
    budgets = {"template": ImageBudget(max_pixels=224 * 224)}  # the test image keeps the default
    score = yes_no_scores(vlm, [req], budgets=budgets)[0].p_anomalous
    text = generate(vlm, [req], max_new_tokens=128)[0].text

:func:`vlmad.vlm.tiny.build` writes tiny random models of each architecture for tests and offline demos;
``vlm.info.warning`` says so loudly. Importing this package is light: torch and transformers load on first
use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlmad.vlm.base import (
    DEFAULT_ROLE_LABELS,
    GROUPS,
    ROLES,
    Family,
    ImageBudget,
    ImageSlot,
    ModuleGroups,
    PreparedInputs,
    VlmRequest,
    detect_family,
    family_names,
    get_family,
    image_roles,
    probe_layout,
)
from vlmad.vlm.errors import VlmError

if TYPE_CHECKING:
    from vlmad.vlm.generation import Generation, generate
    from vlmad.vlm.load import VLM, VlmInfo, load_vlm
    from vlmad.vlm.scoring import AnswerTokens, AnswerWords, YesNoScore, answer_token_ids, yes_no_scores

_LAZY = {
    "VLM": "load",
    "VlmInfo": "load",
    "load_vlm": "load",
    "generate": "generation",
    "Generation": "generation",
    "AnswerWords": "scoring",
    "AnswerTokens": "scoring",
    "YesNoScore": "scoring",
    "answer_token_ids": "scoring",
    "yes_no_scores": "scoring",
}

__all__ = [
    "DEFAULT_ROLE_LABELS",
    "GROUPS",
    "ROLES",
    "VLM",
    "AnswerTokens",
    "AnswerWords",
    "Family",
    "Generation",
    "ImageBudget",
    "ImageSlot",
    "ModuleGroups",
    "PreparedInputs",
    "VlmError",
    "VlmInfo",
    "VlmRequest",
    "YesNoScore",
    "answer_token_ids",
    "detect_family",
    "family_names",
    "generate",
    "get_family",
    "image_roles",
    "load_vlm",
    "probe_layout",
    "yes_no_scores",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmad.vlm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"vlmad.vlm.{module}"), name)
