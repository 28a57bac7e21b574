"""CLIP for the zero-shot methods: loading, text and image encoding, and the token-level access they need.

:class:`Clip` wraps a transformers ``CLIPModel`` and its ``CLIPTokenizer``, loaded by
:meth:`Clip.load` from a Hub id or a local directory with the same code. Beyond the usual global text and
image embeddings it exposes what WinCLIP, AnomalyCLIP and MuSc need:

- :meth:`Clip.vision_tokens` / :meth:`Clip.encode_tokens`: the embedded patch tokens (positions added), and
  the projected class embedding of any subset of them (WinCLIP's windows);
- :meth:`Clip.patch_features`: per-layer patch tokens through the final layer norm and the visual
  projection, in the joint space (AnomalyCLIP's maps, MuSc's tokens);
- :meth:`Clip.encode_text_embeddings`: the text tower on token *embeddings* (AnomalyCLIP's learnable
  prompt vectors), equal to :meth:`Clip.encode_text` when given the tokens' own embeddings.

:func:`make_tiny_clip` writes a tiny, randomly initialised CLIP of the real architecture (config,
safetensors weights, a byte-level BPE tokenizer, the image-processor settings) that loads through the
same :meth:`Clip.load`; its config carries ``vlmad_random_init`` so every output says it is random.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmad.errors import VlmadError
from vlmad.hf import quiet_hf, random_model_warning

if TYPE_CHECKING:
    import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM_MARK = "vlmad_random_init"  # config key of models made by make_tiny_clip


class ZeroShotError(VlmadError):
    """A zero-shot model, prompt or input cannot be used (the message says which and why)."""


@dataclass(frozen=True)
class ClipInfo:
    """What was loaded: ``source`` (Hub id or directory), the vision geometry and whether it is random."""

    source: str
    image_size: int
    patch_size: int
    embed_dim: int
    num_layers: int
    max_text_tokens: int
    random_detail: str | None = None  # set for tiny random models: what they are

    @property
    def grid(self) -> int:
        """Patch tokens per side at ``image_size``."""
        return self.image_size // self.patch_size

    @property
    def random(self) -> bool:
        return self.random_detail is not None

    @property
    def warning(self) -> str | None:
        """The loud line every output of a random model carries, or None."""
        return random_model_warning(
            "CLIP", self.source, self.random_detail, "its scores show the method runs"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "clip": self.source,
            "clip_image_size": self.image_size,
            "clip_patch_size": self.patch_size,
            "random_clip": self.random,
        }


class Clip:
    """A loaded CLIP model: use :meth:`load`. All embeddings returned are L2-normalised float32."""

    def __init__(self, model: Any, tokenizer: Any, info: ClipInfo, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        self.device = device

    # ---- loading --------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        source: str | Path,
        device: str | None = None,
        trust_remote_code: bool = False,
    ) -> Clip:
        """Load ``CLIPModel`` + tokenizer from a Hub id or a local directory (the same code for both).

        Raises :class:`ZeroShotError` when the source cannot be read, is not a CLIP model, or has no
        vision projection (a ``CLIPVisionModel`` checkpoint cannot score images against text).
        """
        from transformers import AutoConfig, CLIPModel, CLIPTokenizer

        from vlmad.detectors.features import pick_device

        name = str(source)
        try:
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ZeroShotError(f"CLIP model {name!r} cannot be read: {exc}") from exc
        if getattr(config, "model_type", None) not in ("clip",):
            raise ZeroShotError(
                f"{name}: a {getattr(config, 'model_type', 'unknown')} config, not CLIP (model_type 'clip'); "
                "the zero-shot methods need a CLIPModel with text and vision towers"
            )
        try:
            with quiet_hf():
                model, loading = CLIPModel.from_pretrained(
                    name, trust_remote_code=trust_remote_code, output_loading_info=True
                )
        except (OSError, ValueError) as exc:
            raise ZeroShotError(f"CLIP weights in {name!r} cannot be read: {exc}") from exc
        missing = [k for k in loading.get("missing_keys", []) if "projection" in k]
        if missing:
            raise ZeroShotError(
                f"{name}: the checkpoint has no {', '.join(sorted(missing))}; a CLIP model without its "
                "vision/text projections cannot compare images with prompts (use a full CLIPModel checkpoint)"
            )
        try:
            tokenizer = CLIPTokenizer.from_pretrained(name)
        except (OSError, ValueError, TypeError) as exc:
            raise ZeroShotError(f"{name}: the CLIP tokenizer cannot be read: {exc}") from exc
        dev = pick_device(device)
        model = model.to(dev).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        vc, tc = config.vision_config, config.text_config
        info = ClipInfo(
            source=name,
            image_size=int(vc.image_size),
            patch_size=int(vc.patch_size),
            embed_dim=int(config.projection_dim),
            num_layers=int(vc.num_hidden_layers),
            max_text_tokens=int(tc.max_position_embeddings),
            random_detail=getattr(config, RANDOM_MARK, None),
        )
        return cls(model, tokenizer, info, dev)

    # ---- text -----------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, L)`` token ids padded to the longest; :class:`ZeroShotError` naming the prompt when one is
        longer than the text encoder's ``max_text_tokens`` (CLIP would otherwise cut it silently)."""
        ids = self.tokenizer(list(texts), padding=True, return_tensors="pt")["input_ids"]
        if ids.shape[1] > self.info.max_text_tokens:
            lengths = [len(self.tokenizer(t)["input_ids"]) for t in texts]
            worst = int(np.argmax(lengths))
            raise ZeroShotError(
                f"prompt {texts[worst]!r} is {lengths[worst]} tokens; {self.info.source}'s text encoder "
                f"takes at most {self.info.max_text_tokens}: shorten it"
            )
        return ids.to(self.device)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, D)`` normalised text embeddings."""
        import torch

        with torch.inference_mode():
            out = self.model.get_text_features(input_ids=self.tokenize(texts))
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return _normalise(feats.float())

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Where each row's end-of-text token is (the pooled position)."""
        eos = self.model.config.text_config.eos_token_id
        if eos == 2:  # legacy configs: the highest id marks the end, as CLIPTextModel does
            return ids.argmax(dim=-1)
        return (ids == eos).int().argmax(dim=-1)

    def token_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """The text tower's input embeddings of ``ids`` (without positions)."""
        return self.model.text_model.embeddings.token_embedding(ids)

    def encode_text_embeddings(self, embeds: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` normalised text embeddings from ``(N, L, C)`` token embeddings (positions are added
        here) pooled at ``eos`` positions; differentiable, for learnable prompt vectors."""
        from transformers.masking_utils import create_causal_mask

        text = self.model.text_model
        hidden = text.embeddings(inputs_embeds=embeds)
        mask = create_causal_mask(
            config=text.config, inputs_embeds=hidden, attention_mask=None, past_key_values=None
        )
        hidden = text.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        hidden = text.final_layer_norm(hidden)
        pooled = hidden[_arange(hidden), eos.to(hidden.device)]
        return _normalise(self.model.text_projection(pooled).float())

    # ---- images ---------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """``(B, 3, S, S)`` pixel values at the model's ``image_size`` from uint8 RGB arrays or paths:
        bicubic resize of the whole image (no crop, so maps align with the input) and CLIP normalisation."""
        import torch
        import torch.nn.functional as F

        from vlmad.detectors.base import as_image

        s = self.info.image_size
        out = []
        for item in images:
            arr = as_image(item)
            x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255.0
            if x.shape[-2:] != (s, s):
                x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
            out.append(x.clamp_(0, 1))
        x = torch.cat(out).to(self.device)
        mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def vision_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + grid^2, C)``: the class token and patch tokens with their positions added, before the
        transformer (row-major patch order)."""
        return self.model.vision_model.embeddings(pixels)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` normalised image embeddings of token sets ``(B, T, C)`` whose first token is the class
        token: the vision transformer run on those tokens only, pooled at the class token, projected.
        With every token it equals :meth:`encode_image`; with a window's tokens it is WinCLIP's window
        embedding (attention restricted to the window)."""
        vision = self.model.vision_model
        hidden = vision.encoder(inputs_embeds=vision.pre_layrnorm(tokens)).last_hidden_state
        pooled = vision.post_layernorm(hidden[:, 0])
        return _normalise(self.model.visual_projection(pooled).float())

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` normalised global image embeddings."""
        return self.encode_tokens(self.vision_tokens(pixels))

    def patch_features(
        self, pixels: torch.Tensor, layers: Sequence[int], project: bool = True
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The global embedding ``(B, D)`` and, for each of ``layers`` (1-based transformer blocks), the
        patch tokens ``(B, grid^2, D)`` after that block, through ``post_layernorm`` and the visual
        projection (the joint text-image space), normalised. ``project=False`` gives the raw hidden
        states ``(B, grid^2, C)`` instead (not normalised; MuSc compares those)."""
        vision = self.model.vision_model
        n = self.info.num_layers
        bad = [layer for layer in layers if not 1 <= int(layer) <= n]
        if bad:
            raise ZeroShotError(f"{self.info.source} has vision layers 1-{n}; asked for {bad}")
        hidden = vision.pre_layrnorm(self.vision_tokens(pixels))
        wanted = {int(x) for x in layers}
        taken: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(vision.encoder.layers, start=1):
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out
            if i in wanted:
                taken[i] = hidden[:, 1:]
        pooled = vision.post_layernorm(hidden[:, 0])
        glob = _normalise(self.model.visual_projection(pooled).float())
        if not project:
            return glob, [taken[int(x)].float() for x in layers]
        proj = [
            _normalise(self.model.visual_projection(vision.post_layernorm(taken[int(x)])).float())
            for x in layers
        ]
        return glob, proj


def _arange(x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.arange(x.shape[0], device=x.device)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ---- tiny random models ---------------------------------------------------------------------------------
def tiny_tokenizer() -> Any:
    """A real ``CLIPTokenizer`` (byte-level BPE, CLIP's normaliser and pre-tokeniser) over a tiny vocabulary:
    the 256 byte symbols, each also as a word end, and the special tokens; no merges, so text is spelled
    out byte by byte. For tiny random models only."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    for ch in alphabet:
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def make_tiny_clip(
    directory: str | Path,
    seed: int = 0,
    image_size: int = 64,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 4,
    projection_dim: int = 32,
) -> Path:
    """Write a tiny randomly initialised ``CLIPModel`` (the real architecture, small sizes) with its
    tokenizer to ``directory``; returns it. Loads with :meth:`Clip.load` like any checkpoint."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    directory = Path(directory)
    tokenizer = tiny_tokenizer()
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": hidden,
        "intermediate_size": hidden * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch_size,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    setattr(
        config,
        RANDOM_MARK,
        f"a tiny randomly initialised CLIP (seed {seed}, {image_size} px, patch {patch_size}, "
        f"width {hidden}, {layers} vision layers)",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    directory.mkdir(parents=True, exist_ok=True)
    with quiet_hf():
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "size": {"shortest_edge": image_size},
                "crop_size": {"height": image_size, "width": image_size},
                "image_mean": list(CLIP_MEAN),
                "image_std": list(CLIP_STD),
            },
            indent=1,
        )
        + "\n"
    )
    return directory
