"""The family registry, chat messages with image roles and image budgets, without loading any model."""

from __future__ import annotations

import pytest

from vlmad.errors import VlmadError
from vlmad.vlm import ImageBudget, VlmError, detect_family, family_names, get_family, image_roles


def test_registry_lists_the_three_families() -> None:
    assert family_names() == ["internvl", "llava", "qwen2vl"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("llava", "llava"),
        ("LLaVA-1.5", "llava"),
        ("llava-hf", "llava"),
        ("InternVL", "internvl"),
        ("internvl3", "internvl"),
        ("qwen2vl", "qwen2vl"),
        ("Qwen2-VL", "qwen2vl"),
        ("qwen2.5-vl", "qwen2vl"),
        ("qwen2_5_vl", "qwen2vl"),
    ],
)
def test_get_family_accepts_names_aliases_and_model_types(name: str, expected: str) -> None:
    assert get_family(name).name == expected


def test_unknown_family_is_a_clear_vlm_error() -> None:
    with pytest.raises(
        VlmError, match=r"unknown VLM family 'blip2'; known families: internvl, llava, qwen2vl"
    ):
        get_family("blip2")
    assert issubclass(VlmError, VlmadError)


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [("llava", "llava"), ("internvl", "internvl"), ("qwen2_vl", "qwen2vl"), ("qwen2_5_vl", "qwen2vl")],
)
def test_detect_family_from_model_type(model_type: str, expected: str) -> None:
    assert detect_family(model_type).name == expected


@pytest.mark.parametrize(
    ("model_type", "advice"),
    [
        ("internvl_chat", "InternVL3-8B-hf"),
        ("llava_llama", "llava-hf/llava-1.5-7b-hf"),
        ("bert", "supported model types"),
    ],
)
def test_detect_family_refuses_other_model_types_with_advice(model_type: str, advice: str) -> None:
    with pytest.raises(VlmError, match=f"model type '{model_type}' is not a supported VLM") as err:
        detect_family(model_type)
    assert advice in str(err.value)


def test_interleaved_messages_put_each_label_before_its_image_in_role_order() -> None:
    fam = get_family("qwen2vl")
    msgs = fam.build_messages("Is there a defect?", ("template", "test"))
    assert [m["role"] for m in msgs] == ["user"]
    items = msgs[0]["content"]
    kinds = [(i["type"], i.get("image_role") or i.get("text")) for i in items]
    assert kinds == [
        ("text", "Template image (a normal reference):"),
        ("image", "template"),
        ("text", "\nTest image:"),
        ("image", "test"),
        ("text", "\nIs there a defect?"),
    ]
    assert image_roles(msgs) == ["template", "test"]


def test_images_first_messages_name_images_by_position() -> None:
    fam = get_family("llava")
    assert fam.default_layout == "images_first"
    msgs = fam.build_messages(
        "Q?", ("template", "test"), {"test": "Query image"}, answer="No.", system="Be brief."
    )
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    items = msgs[1]["content"]
    assert [i.get("image_role") for i in items[:2]] == ["template", "test"]
    text = items[2]["text"]
    assert text.index("Image 1 (the first image): Template image") < text.index(
        "Image 2 (the second image): Query image"
    )
    assert text.endswith("Q?")
    assert msgs[2]["content"][0]["text"] == "No."


def test_messages_refuse_unlabelled_or_repeated_roles() -> None:
    fam = get_family("internvl")
    with pytest.raises(VlmError, match=r"no label for image role\(s\) \['mask'\]"):
        fam.build_messages("Q?", ("template", "mask"))
    with pytest.raises(VlmError, match="image roles repeat"):
        fam.build_messages("Q?", ("test", "test"))
    with pytest.raises(VlmError, match="has no 'image_role'"):
        image_roles([{"role": "user", "content": [{"type": "image"}]}])


def test_image_budget_validates_its_values() -> None:
    assert ImageBudget().set_fields() == []
    assert ImageBudget(max_pixels=100, max_tiles=2).set_fields() == ["max_pixels", "max_tiles"]
    with pytest.raises(VlmError, match="max_pixels must be a positive integer"):
        ImageBudget(max_pixels=0)
    with pytest.raises(VlmError, match="min_pixels 200 exceeds max_pixels 100"):
        ImageBudget(min_pixels=200, max_pixels=100)


@pytest.mark.parametrize(
    ("family", "budget", "field"),
    [
        ("llava", ImageBudget(max_tiles=2), "max_tiles"),
        ("llava", ImageBudget(min_pixels=64), "min_pixels"),
        ("internvl", ImageBudget(min_pixels=64), "min_pixels"),
        ("qwen2vl", ImageBudget(max_tiles=4), "max_tiles"),
    ],
)
def test_a_budget_field_a_family_cannot_honour_is_refused(
    family: str, budget: ImageBudget, field: str
) -> None:
    with pytest.raises(VlmError, match=f"sets {field}, which .* cannot honour"):
        get_family(family).check_budget("template", budget)


def test_lora_targets_are_language_model_projections_only() -> None:
    import re

    for name in family_names():
        pattern = get_family(name).lora_target_modules
        assert re.fullmatch(pattern, "model.language_model.layers.3.self_attn.q_proj")
        assert re.fullmatch(pattern, "model.language_model.layers.0.mlp.down_proj")
        assert not re.fullmatch(pattern, "model.vision_tower.encoder.layer.0.attention.q_proj")
        assert not re.fullmatch(pattern, "model.visual.blocks.0.attn.qkv")
        assert not re.fullmatch(pattern, "lm_head")


def test_importing_the_package_loads_neither_torch_nor_transformers() -> None:
    import subprocess
    import sys

    code = (
        "import sys, vlmad.vlm; vlmad.vlm.family_names(); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
