"""Reading the export, mapping it onto each family's chat format, label masking (decoded) and batching."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vlmad.train.data import IGNORE_INDEX, Collator, Encoder, encode_sample, read_export
from vlmad.train.modeling import load_processor

from .conftest import FAMILIES


def _norm(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _runs(labels: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` runs of positions that count in the loss."""
    on = (labels != IGNORE_INDEX).tolist()
    out, start = [], None
    for i, v in enumerate([*on, False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i))
            start = None
    return out


def test_read_export_gives_images_roles_and_labels(qa_export: Path) -> None:
    records = read_export(qa_export, "train")
    assert len(records) == 12
    r = records[0]
    assert r.roles == ("template", "test") and all(p.is_absolute() and p.is_file() for p in r.images)
    assert {x.label for x in records} == {"good", "logical", "structural"}  # from the export's hf/ dataset
    assert r.sample_id and r.category in ("breakfast_box", "pushpins")
    assert r.messages[0]["content"].startswith(
        "Template image (normal reference): <image>\nTest image: <image>\n"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_only_answer_tokens_count_and_decode_to_the_answers(
    family: str, tiny_models: dict[str, Path], qa_export: Path
) -> None:
    bundle = load_processor(str(tiny_models[family]))
    encoder = Encoder(bundle)
    record = next(r for r in read_export(qa_export, "train") if r.label == "structural")
    enc = encoder.encode(record)
    ids, labels = enc.features["input_ids"], enc.features["labels"]
    tok = bundle.tokenizer
    answers = [m["content"] for m in record.messages if m["role"] == "assistant"]
    # one run of trained tokens per answer, each decoding to the answer and the token that ends the turn
    runs = _runs(labels)
    assert len(runs) == len(answers) == 5
    eos = encoder.append_eos or bundle.eos_tokens[0]
    assert family != "llava" or encoder.append_eos == "</s>"  # LLaVA-1.5's template ends no answer itself
    for (a, b), answer in zip(runs, answers, strict=True):
        assert torch.equal(labels[a:b], ids[a:b])
        assert _norm(tok.decode(ids[a:b])) == _norm(answer + eos)
    # nothing else: prompt text, role labels, images and template markers are masked
    masked = tok.decode(ids[labels == IGNORE_INDEX])
    assert "Test image" in masked and record.messages[2]["content"] in masked
    image_id = tok.convert_tokens_to_ids(bundle.processor.image_token)
    assert (
        bool((labels[ids == image_id] == IGNORE_INDEX).all())
        and int((ids == image_id).sum()) == enc.image_tokens
    )
    assert enc.answer_tokens == int((labels != IGNORE_INDEX).sum()) and enc.image_end <= runs[0][0]


@pytest.mark.parametrize("family", FAMILIES)
def test_placeholders_become_the_familys_role_labelled_images(
    family: str, tiny_models: dict[str, Path], qa_export: Path
) -> None:
    bundle = load_processor(str(tiny_models[family]))
    encoder = Encoder(bundle)
    record = read_export(qa_export, "train")[0]
    conv = encoder.conversation(record)
    first = conv.messages[0]["content"]
    images = [c for c in first if c["type"] == "image"]
    assert [c["image_role"] for c in images] == ["template", "test"]
    text = " ".join(c["text"] for c in first if c["type"] == "text")
    assert "<image>" not in text and conv.labels == {
        "template": "Template image (normal reference)",
        "test": "Test image",
    }
    if bundle.layout == "images_first":  # LLaVA: labels name the images by position
        assert "Image 1 (the first image): Template image (normal reference)." in text
    else:
        assert first[0] == {"type": "text", "text": "Template image (normal reference):"}
    rendered = bundle.family.render(bundle.processor, conv.messages, add_generation_prompt=False)
    assert rendered.count(bundle.processor.image_token) == 2


def test_collator_pads_and_concatenates_images(tiny_models: dict[str, Path], qa_export: Path) -> None:
    from vlmad.vlm import load_vlm

    vlm = load_vlm(tiny_models["qwen2vl"], device="cpu")
    records = read_export(qa_export, "train")[:2]
    feats = [encode_sample(vlm, r) for r in records]
    batch = Collator(pad_token_id=0)(feats)
    n = [int(f["input_ids"].shape[0]) for f in feats]
    assert batch["input_ids"].shape == (2, max(n))
    short = n.index(min(n))
    assert bool((batch["labels"][short, min(n) :] == IGNORE_INDEX).all())
    assert bool((batch["attention_mask"][short, min(n) :] == 0).all())
    assert batch["image_grid_thw"].shape[0] == 4  # two images per sample
    assert batch["pixel_values"].shape[0] == sum(int(f["pixel_values"].shape[0]) for f in feats)
    with torch.no_grad():
        out = vlm.model(**batch)
    assert torch.isfinite(out.loss)


def test_truncation_keeps_images_and_some_answer(tiny_models: dict[str, Path], qa_export: Path) -> None:
    bundle = load_processor(str(tiny_models["llava"]))
    record = read_export(qa_export, "train")[0]
    full = Encoder(bundle).encode(record)
    cut = full.image_end + 80
    enc = Encoder(bundle, max_length=cut, truncate=True).encode(record)
    assert enc.truncated and enc.length == full.length
    assert enc.features["input_ids"].shape[0] == cut and 0 < enc.answer_tokens < full.answer_tokens
