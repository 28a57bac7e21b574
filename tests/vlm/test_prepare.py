"""Prompts with image roles: fixed order and labels, per-role image budgets, equality with the processor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vlmad.vlm import VLM, ImageBudget, VlmError, VlmRequest

from .conftest import image

QUESTION = "Is there any defect in the test image? Answer Yes or No."
# budgets that differ from each tiny processor's default
# (LLaVA: 32 px side, Qwen2-VL: <= 1024 px, InternVL: 6 tiles)
SMALL = {
    "llava": ImageBudget(max_pixels=16 * 16),
    "internvl": ImageBudget(max_tiles=1),
    "qwen2vl": ImageBudget(max_pixels=16 * 16),
}
LARGE = {
    "llava": ImageBudget(max_pixels=32 * 32),
    "internvl": ImageBudget(max_tiles=6),
    "qwen2vl": ImageBudget(max_pixels=32 * 32),
}


def request(seed: int = 0, question: str = QUESTION) -> VlmRequest:
    # the test image first in the mapping: the prompt order must not depend on it
    return VlmRequest(question, {"test": image(seed + 1), "template": image(seed)})


def test_template_placeholder_comes_before_the_test_placeholder_with_labels(vlm: VLM) -> None:
    prepared = vlm.prepare([request()])
    text = prepared.texts[0]
    token = vlm.processor.image_token
    first, second = text.find(token), text.find(token, text.find(token) + 1)
    assert first >= 0 and second > first and text.count(token) == 2
    template_label, test_label = text.find("Template image (a normal reference)"), text.find("Test image")
    assert template_label >= 0 and test_label > template_label
    if vlm.layout == "interleaved":
        assert template_label < first < test_label < second
    else:  # images first, then labels naming them by position
        assert (
            second
            < text.find("Image 1 (the first image): Template image")
            < text.find("Image 2 (the second image): Test image")
        )
    assert text.index(QUESTION) > max(second, test_label)
    assert [s.role for s in prepared.slots] == ["template", "test"]


def test_prepared_inputs_equal_the_processors_own_when_budgets_agree(vlm: VLM, family: str) -> None:
    # LLaVA resamples to a square itself (the processor would crop): give it images of its input size
    h, w = (32, 32) if family == "llava" else (40, 56)
    imgs = [{"template": image(s, h, w), "test": image(s + 10, h, w)} for s in range(2)]
    reqs = [VlmRequest(QUESTION + " word" * i, im) for i, im in enumerate(imgs)]
    mine = vlm.prepare(reqs)
    flat = [im[r] for im in imgs for r in ("template", "test")]
    ref = vlm.processor(text=mine.texts, images=flat, padding=True, padding_side="left", return_tensors="pt")
    assert set(ref.keys()) == set(mine.tensors)
    for key in ref:
        assert torch.equal(ref[key].to(mine.tensors[key].dtype), mine.tensors[key].cpu()), key
    ids = mine.tensors["input_ids"]
    assert (ids == vlm.processor.image_token_id).sum().item() == sum(s.tokens for s in mine.slots)
    assert (
        mine.tensors["attention_mask"][1, 0] == 1 and mine.tensors["attention_mask"][0, 0] == 0
    )  # left padding


def test_role_budgets_apply_to_their_role_only(vlm: VLM, family: str) -> None:
    req = [request()]
    default = vlm.prepare(req).pixels_by_role()
    small = vlm.prepare(req, {"template": SMALL[family]}).pixels_by_role()
    assert small["template"][0] < default["template"][0]
    assert small["test"] == default["test"]  # the test image keeps its own (default) budget

    # a large test budget does not leak into the template
    mixed = vlm.prepare(req, {"template": SMALL[family], "test": LARGE[family]})
    pixels = mixed.pixels_by_role()
    assert pixels["template"] == small["template"]
    assert pixels["test"][0] >= default["test"][0] > pixels["template"][0]
    swapped = vlm.prepare(req, {"template": LARGE[family], "test": SMALL[family]}).pixels_by_role()
    assert swapped["template"][0] > swapped["test"][0]
    # the model reads what the slots say
    ids = mixed.tensors["input_ids"]
    assert (ids == vlm.processor.image_token_id).sum().item() == sum(s.tokens for s in mixed.slots)
    with torch.inference_mode():
        out = vlm.model(**mixed.tensors)
    assert out.logits.shape[:2] == ids.shape


def test_llava_budget_lowers_detail_not_tokens(all_dirs: dict[str, Path]) -> None:
    from vlmad.vlm import load_vlm

    vlm = load_vlm(all_dirs["llava"], device="cpu")
    req = [request()]
    full = vlm.prepare(req)
    small = vlm.prepare(req, {"template": ImageBudget(max_pixels=8 * 8)})
    assert [s.tokens for s in small.slots] == [s.tokens for s in full.slots]
    assert small.slots[0].tile_size == (8, 8) and full.slots[0].tile_size == (32, 32)
    pv_full, pv_small = full.tensors["pixel_values"], small.tensors["pixel_values"]
    assert pv_full.shape == pv_small.shape
    assert not torch.allclose(pv_full[0], pv_small[0])  # the template lost detail
    assert torch.equal(pv_full[1], pv_small[1])  # the test image did not


def test_budget_mistakes_are_clear_errors(vlm: VLM, family: str) -> None:
    with pytest.raises(VlmError, match=r"image budget for unknown role\(s\) \['templat'\]"):
        vlm.prepare([request()], {"templat": ImageBudget(max_pixels=256)})
    with pytest.raises(VlmError, match="not an ImageBudget"):
        vlm.prepare([request()], {"template": {"max_pixels": 256}})  # type: ignore[dict-item]
    unsupported = ImageBudget(min_pixels=64) if family != "qwen2vl" else ImageBudget(max_tiles=2)
    with pytest.raises(VlmError, match="cannot honour"):
        vlm.prepare([request()], {"test": unsupported})


def test_single_image_requests_and_image_inputs(vlm: VLM, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    image(5).save(path)
    arr = np.asarray(image(6))
    prepared = vlm.prepare(
        [VlmRequest("Describe it.", {"test": path}), VlmRequest("Describe it.", {"test": arr})]
    )
    assert [s.role for s in prepared.slots] == ["test", "test"]
    assert "Template image" not in prepared.texts[0]
    with pytest.raises(VlmError, match="expected a PIL image, an image path or an \\(H, W, 3\\) uint8 array"):
        vlm.prepare([VlmRequest("Q", {"test": np.zeros((4, 4, 3), np.float32)})])
    with pytest.raises(VlmError, match="at least one image"):
        vlm.prepare([VlmRequest("Q", {})])


def test_a_question_containing_the_placeholder_is_refused(vlm: VLM) -> None:
    bad = f"Look at {vlm.processor.image_token} please."
    with pytest.raises(VlmError, match="image placeholder"):
        vlm.prepare([request(question=bad)])


def test_answers_and_prefixes_extend_the_prompt(vlm: VLM) -> None:
    base = vlm.prepare([request()])
    with_answer = vlm.prepare(
        [VlmRequest(QUESTION, {"test": image(1)}, answer="Yes.")], add_generation_prompt=False
    )
    text = with_answer.texts[0]
    assert text.index("Yes.") > text.index(QUESTION)
    prefixed = vlm.prepare([request()], assistant_prefixes=["Step 1: the template"])
    assert prefixed.texts[0] == base.texts[0] + "Step 1: the template"
    with pytest.raises(VlmError, match="need add_generation_prompt=True"):
        vlm.prepare([request()], add_generation_prompt=False, assistant_prefixes=["x"])
