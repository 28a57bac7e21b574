"""Tiny, randomly initialised VLMs of the real architectures, for tests and the offline demo.

:func:`build` writes a checkpoint directory that :func:`vlmad.vlm.load.load_vlm` loads like any other:

- the family's real transformers model class with a small config, random weights from a fixed seed
  (safetensors);
- a tokenizer of the family's real tokenizer class (Llama: SentencePiece-style BPE with byte fallback;
  Qwen2: byte-level BPE) whose vocabulary and merges are trained on the fly with the ``tokenizers`` library
  on :data:`CORPUS` (the words vlmad's prompts and answers use; other text falls back to bytes), with the
  special tokens the processor needs (image placeholders, chat-template markers);
- the family's processor (small image sizes) with a chat template in the real checkpoints' format;
- a generation config.

The config carries ``vlmad_random_init`` (:data:`vlmad.vlm.base.RANDOM_MARK`), so every model loaded from
the directory reports itself as tiny and random (:attr:`vlmad.vlm.load.VlmInfo.warning`). Their answers are
noise: they show that the pipeline runs, never how well a model detects anything.

=========  ==========================================================================================
family     tiny architecture
=========  ==========================================================================================
llava      LlavaForConditionalGeneration: CLIP ViT (32 px, patch 8, width 32, 2 layers) -> 2-layer
           GELU MLP projector -> Llama (width 32, 2 layers, 4 heads / 2 KV heads); 16 tokens per image
internvl   InternVLForConditionalGeneration: InternViT (32 px tiles, patch 8, width 32, 2 layers),
           pixel-shuffle 0.5 -> MLP projector -> Qwen2 (width 32, 2 layers); 4 tokens per tile, up to
           6 tiles + thumbnail
qwen2vl    Qwen2VLForConditionalGeneration: Qwen2-VL ViT (patch 4, width 32, 2 blocks, 2 x 2 merger) ->
           Qwen2-VL LM with M-RoPE (width 32, 2 layers); 64..1024 pixels per image (1..16 tokens).
           ``variant="qwen2_5_vl"`` builds Qwen2_5_VLForConditionalGeneration instead.
=========  ==========================================================================================
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmad.vlm.base import RANDOM_MARK, get_family
from vlmad.vlm.errors import VlmError

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

CORPUS: tuple[str, ...] = (
    "Is there any defect in the test image? Answer Yes or No.",
    "Is the test image normal or anomalous? Answer with one word: normal or anomalous.",
    "Yes. No. yes. no. YES. NO. Normal. Anomalous. normal. anomalous. Yes, No, normal, anomalous",
    "Template image (a normal reference): Test image: Image 1 (the first image): Image 2 (the second image):",
    "Step 1: Identify all objects in the template image and describe their expected appearance.",
    "Step 2: Describe any visible differences between the test image and the template image.",
    "Step 3: Judge whether those differences are defect or normal.",
    "The template image follows certain visual rules or regular patterns. Observe the template carefully and "
    "summarize these rules or expected visual characteristics.",
    "Based on these rules, describe the differences between the template image and the test image, focusing "
    "on the left, right, and central regions.",
    "Compare these two images and identify any inconsistencies or anomalies found.",
    "Determine whether the test image contains any defects. If yes, describe the specific reason or evidence "
    "for your judgment.",
    "From the differences identified in Step 2, determine which ones violate the rules in Step 1 and list "
    "them as inconsistencies or anomalies. Briefly explain why each one is anomalous.",
    "Based on the anomalies listed in Step 3, make a final judgment on whether the test image contains any "
    "defects. If it does, summarize the main anomaly and its location as the specific reason or evidence.",
    "The image shows a logical anomaly: a missing, extra or misplaced object. The image shows a structural "
    "anomaly: a scratch, crack, dent, hole, stain, contamination, broken or bent part.",
    "breakfast box, juice bottle, pushpins, screw bag, splicing connectors, orange, banana, cereal, nuts, "
    "label, cable, clamp, screw, washer, nut, top, bottom, upper, lower, left, right, center, corner.",
    "USER: ASSISTANT: system user assistant You are a helpful assistant.",
    "The answer is yes. The answer is no. The test image is normal. The test image is anomalous.",
    # the answer words, often, so that each becomes one token (with and without a leading space)
    "Yes No Anomalous Normal Abnormal Defective Yes No Anomalous Normal Abnormal Defective\n" * 4,
)
TINY_SIZES: dict[str, Any] = {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 64}


def build(family: str, directory: str | Path, seed: int = 0, variant: str | None = None) -> Path:
    """Write a tiny random checkpoint of ``family`` (``llava``, ``internvl``, ``qwen2vl``) to
    ``directory``; returns the directory. ``variant`` picks a sibling architecture of the family
    (``"qwen2_5_vl"`` for ``qwen2vl``). The same ``seed`` gives the same weights.

    Raises :class:`VlmError` for an unknown family or variant.
    """
    fam = get_family(family)
    builders = {"llava": _build_llava, "internvl": _build_internvl, "qwen2vl": _build_qwen2vl}
    if variant is not None and (fam.name != "qwen2vl" or variant not in ("qwen2_vl", "qwen2_5_vl")):
        raise VlmError(f"no tiny variant {variant!r} of {fam.name}; the qwen2vl family has 'qwen2_5_vl'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if fam.name == "qwen2vl":
        _build_qwen2vl(directory, seed, variant or "qwen2_vl")
    else:
        builders[fam.name](directory, seed)
    return directory


# ---- tokenizers -----------------------------------------------------------------------------------------
def _train_bpe(
    style: str, specials: list[str], vocab_size: int = 800
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of a BPE trained on :data:`CORPUS`; ``style``: ``metaspace`` / ``byte_level``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    if style == "metaspace":
        tok = Tokenizer(models.BPE(byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet: list[str] = []
    else:
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    # lower-case and upper-case copies, so the answer words of every case become single tokens
    lines = [*CORPUS, *(c.lower() for c in CORPUS), *(c.upper() for c in CORPUS)]
    tok.train_from_iterator(lines * 3, trainer)
    model = json.loads(tok.to_str())["model"]
    return dict(model["vocab"]), [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]
    ]


def _llama_tokenizer() -> Any:
    from transformers import LlamaTokenizer

    specials = ["<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256))]
    vocab, merges = _train_bpe("metaspace", specials)
    return LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        add_bos_token=True,
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def _qwen_tokenizer(extra: dict[str, str], added: list[str]) -> Any:
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe("byte_level", ["<|endoftext|>"])
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=extra,
    )
    missing = [t for t in added if t not in tok.get_vocab()]
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    return tok


# ---- chat templates (the formats of the real checkpoints) ------------------------------------------------
LLAVA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}{{ message['role'].upper() + ': ' }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] + ' ' }}"
    "{%- else -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'image') -%}{{ '<image>\n' }}"
    "{%- endfor -%}"
    "{%- for item in message['content'] | selectattr('type', 'equalto', 'text') -%}{{ item['text'] + ' ' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

QWEN2VL_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in item -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

INTERNVL_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<IMG_CONTEXT>\n' }}"
    "{%- elif item['type'] == 'video' -%}{{ '<video>\n' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


# ---- builders -------------------------------------------------------------------------------------------
def _text_config(vocab_size: int, **extra: Any) -> dict[str, Any]:
    s = TINY_SIZES
    return {
        "vocab_size": vocab_size,
        "hidden_size": s["hidden"],
        "intermediate_size": s["intermediate"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "max_position_embeddings": 4096,
        **extra,
    }


def _save(
    model_cls: type,
    config: Any,
    processor: Any,
    directory: Path,
    seed: int,
    detail: str,
    eos: list[int],
    pad: int,
    bos: int | None,
) -> None:
    import torch
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    setattr(config, RANDOM_MARK, f"a tiny randomly initialised {detail} (seed {seed})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    (directory / "README.md").write_text(
        f"# TINY RANDOM MODEL\n\n{detail[0].upper() + detail[1:]} (seed {seed}), written by "
        "`vlmad.vlm.tiny.build` for tests and the offline demo. Its weights are random: its answers are "
        "noise and show only that the pipeline runs.\n",
        encoding="utf-8",
    )


def _build_llava(directory: Path, seed: int) -> None:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_llava import LlavaImageProcessor

    tok = _llama_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    side, patch = 32, 8
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": side,
            "patch_size": patch,
            "projection_dim": 32,
        },
        text_config={
            "model_type": "llama",
            **_text_config(
                len(tok),
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            ),
        },
        image_token_index=image_id,
        image_seq_length=(side // patch) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    processor = LlavaProcessor(
        image_processor=LlavaImageProcessor(
            size={"shortest_edge": side},
            crop_size={"height": side, "width": side},
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        ),
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    _save(
        LlavaForConditionalGeneration,
        config,
        processor,
        directory,
        seed,
        "LLaVA-1.5 architecture (CLIP ViT 32 px / Llama, width 32, 2 layers)",
        eos=[tok.eos_token_id],
        pad=tok.pad_token_id,
        bos=tok.bos_token_id,
    )


def _build_internvl(directory: Path, seed: int) -> None:
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessor

    special = {
        "context_image_token": "<IMG_CONTEXT>",
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "video_token": "<video>",
    }
    tok = _qwen_tokenizer(special, ["<|im_start|>", "<|im_end|>", *special.values()])
    tile, patch, ratio = 32, 8, 0.5
    per_tile = int((tile // patch) ** 2 * ratio**2)
    config = InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": tile,
            "patch_size": patch,
        },
        text_config={
            "model_type": "qwen2",
            **_text_config(
                len(tok),
                bos_token_id=None,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                tie_word_embeddings=True,
            ),
        },
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=per_tile,
        downsample_ratio=ratio,
        vision_feature_layer=-1,
    )
    image_processor = GotOcr2ImageProcessor(
        size={"height": tile, "width": tile},
        crop_to_patches=True,
        min_patches=1,
        max_patches=6,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=_internvl_video_processor(tile),
        image_seq_length=per_tile,
        chat_template=INTERNVL_TEMPLATE,
    )
    _save(
        InternVLForConditionalGeneration,
        config,
        processor,
        directory,
        seed,
        "InternVL architecture (InternViT 32 px tiles / Qwen2, width 32, 2 layers)",
        eos=[tok.eos_token_id],
        pad=tok.pad_token_id,
        bos=None,
    )


def _internvl_video_processor(tile: int) -> Any:
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    return InternVLVideoProcessor(
        size={"height": tile, "width": tile}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )


def _build_qwen2vl(directory: Path, seed: int, variant: str) -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    added = [
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok = _qwen_tokenizer({}, added)
    ids = {t: tok.convert_tokens_to_ids(t) for t in added}
    patch, merge, temporal = 4, 2, 2
    pixels = {"shortest_edge": (patch * merge) ** 2, "longest_edge": 32 * 32}
    common = {
        "patch_size": patch,
        "merge_size": merge,
        "temporal_patch_size": temporal,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
    }
    text = _text_config(
        len(tok),
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1000000.0},
    )
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if variant == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "patch_size": patch,
            "spatial_merge_size": merge,
            "temporal_patch_size": temporal,
            "window_size": 16,
            "fullatt_block_indexes": [1],
        }
        config: Any = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls: type = Qwen2_5_VLForConditionalGeneration
        proc_cls: type = Qwen2_5_VLProcessor
        detail = "Qwen2.5-VL architecture (ViT patch 4 / Qwen2 M-RoPE LM, width 32, 2 layers)"
    else:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

        vision = {
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 32,
            "mlp_ratio": 2,
            "num_heads": 2,
            "patch_size": patch,
            "spatial_merge_size": merge,
            "temporal_patch_size": temporal,
        }
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls, proc_cls = Qwen2VLForConditionalGeneration, Qwen2VLProcessor
        detail = "Qwen2-VL architecture (ViT patch 4 / Qwen2 M-RoPE LM, width 32, 2 layers)"
    processor = proc_cls(
        image_processor=Qwen2VLImageProcessor(size=pixels, **common),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(
            size={"shortest_edge": pixels["shortest_edge"], "longest_edge": 4 * 32 * 32}, **common
        ),
        chat_template=QWEN2VL_TEMPLATE,
    )
    _save(
        model_cls,
        config,
        processor,
        directory,
        seed,
        detail,
        eos=[ids["<|im_end|>"], tok.convert_tokens_to_ids("<|endoftext|>")],
        pad=tok.pad_token_id,
        bos=None,
    )
