"""What every VLM family shares: image roles and budgets, chat messages, input preparation, module groups.

A *family* (:class:`Family`) is the knowledge vlmad needs about one kind of vision-language model, kept
apart from any particular checkpoint: which transformers class to load, how its chat template places several
images in one message, how an image budget maps onto its image processor, and which modules are the
language model, the projector and the vision tower. Families are registered by name (``llava``,
``internvl``, ``qwen2vl``); :func:`get_family` finds one by name or alias and :func:`detect_family` by a
config's ``model_type``.

Image roles
    A sample has a *template* image (a normal reference of the same product) and a *test* image. They enter
    the prompt in the fixed order of :data:`ROLES`, each with a role label, and each role has its own
    :class:`ImageBudget`, applied to that role's images only: the template never inherits the test image's
    resolution or tile count. A role with no budget gets the processor's own default.

Placeholders
    Image items in chat messages are ``{"type": "image", "image_role": ROLE}``; chat templates ignore the
    extra key, :meth:`Family.prepare_inputs` uses it to pick the image of that role for that placeholder.

How several images enter one message (the two layouts, see :func:`probe_layout`)
    ``interleaved``: the chat template renders message items in order (Qwen2-VL, InternVL), so each role
    label is written right before its image. ``images_first``: the template renders all images of a message
    first and the text after them (the ``llava-hf`` LLaVA-1.5 template), so the labels name the images by
    position ("Image 1: ...").
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from vlmad.vlm.errors import VlmError

if TYPE_CHECKING:
    import torch
    from PIL import Image

ImageInput = Any  # a PIL image, an (H, W, 3) / (H, W) uint8 array, or an image file path
ImageLayout = Literal["interleaved", "images_first"]
Group = Literal["language_model", "projector", "vision_tower"]

ROLES: tuple[str, ...] = ("template", "test")
DEFAULT_ROLE_LABELS: dict[str, str] = {
    "template": "Template image (a normal reference)",
    "test": "Test image",
}
GROUPS: tuple[str, ...] = ("language_model", "projector", "vision_tower")
RANDOM_MARK = "vlmad_random_init"  # config key of tiny random models (see vlmad.vlm.tiny)
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth")


# ---- plain values ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageBudget:
    """How much of one image the vision tower may see. ``None`` fields keep the processor's default.

    - ``max_pixels``: upper bound on the pixels the model sees of the image. LLaVA: the image is resampled
      to a square of side ``floor(sqrt(max_pixels))`` (at most the vision tower's input size) before the
      processor scales it to that fixed input size, so fewer pixels mean less detail, not fewer tokens.
      Qwen2-VL: the processor's ``max_pixels`` (fewer pixels, fewer tokens). InternVL: at most
      ``max_pixels // tile_area`` tiles.
    - ``min_pixels``: Qwen2-VL only, the processor's ``min_pixels``.
    - ``max_tiles``: InternVL only, the most tiles the image is cut into (the processor's ``max_patches``);
      a thumbnail tile is added when there are several.

    A family raises :class:`VlmError` for a field it cannot honour, rather than ignore it.
    """

    max_pixels: int | None = None
    min_pixels: int | None = None
    max_tiles: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise VlmError(f"image budget {f.name} must be a positive integer, got {v!r}")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise VlmError(f"image budget min_pixels {self.min_pixels} exceeds max_pixels {self.max_pixels}")

    def set_fields(self) -> list[str]:
        """Names of the fields that are not ``None``."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


@dataclass(frozen=True)
class VlmRequest:
    """One prompt: a question about images given by role, optionally with the answer (for training).

    ``images`` maps a role (``"template"``, ``"test"``) to an image; the images enter the prompt in the
    order of :data:`ROLES` whatever the mapping's order. ``answer`` adds an assistant turn (teacher forcing);
    ``system`` a system message.
    """

    question: str
    images: Mapping[str, ImageInput]
    answer: str | None = None
    system: str | None = None


@dataclass(frozen=True)
class ImageSlot:
    """What became of one image of a prepared batch.

    ``sample`` is the conversation index, ``role`` its role, ``source_size`` the ``(height, width)`` given,
    ``tiles`` how many crops the vision tower sees (InternVL tiles incl. thumbnail; 1 otherwise),
    ``tile_size`` the ``(height, width)`` of image content per tile (LLaVA: the square the image was
    resampled to; Qwen2-VL: the resized image), ``pixels`` = ``tiles * height * width`` of that content, and
    ``tokens`` the image tokens the language model reads for it.
    """

    sample: int
    role: str
    source_size: tuple[int, int]
    tiles: int
    tile_size: tuple[int, int]
    pixels: int
    tokens: int


@dataclass
class PreparedInputs:
    """Model inputs of a batch of conversations, ready for ``model(**tensors)`` / ``model.generate``.

    ``tensors`` holds ``input_ids``, ``attention_mask`` and the family's image tensors. ``texts`` are the
    rendered prompts before image placeholders were expanded; ``slots`` describe the images in prompt order.
    """

    tensors: dict[str, torch.Tensor]
    texts: list[str]
    slots: list[ImageSlot] = field(default_factory=list)

    def to(self, device: Any, dtype: torch.dtype | None = None) -> PreparedInputs:
        """Move tensors to ``device``; floating tensors (pixels) are cast to ``dtype`` when given."""
        moved = {}
        for k, v in self.tensors.items():
            if hasattr(v, "to"):
                v = (
                    v.to(device=device, dtype=dtype)
                    if dtype is not None and v.is_floating_point()
                    else v.to(device)
                )
            moved[k] = v
        return PreparedInputs(moved, self.texts, self.slots)

    def pixels_by_role(self) -> dict[str, list[int]]:
        """``{role: [pixels of each image of that role, in prompt order]}``."""
        out: dict[str, list[int]] = {}
        for s in self.slots:
            out.setdefault(s.role, []).append(s.pixels)
        return out


@dataclass(frozen=True)
class ModuleGroups:
    """Names (as in ``model.named_modules()``) of the modules of each part of a loaded model.

    ``language_model`` includes the LM head; ``projector`` maps vision features into the language model;
    ``vision_tower`` is the vision encoder without the projector. The groups do not overlap.
    """

    language_model: tuple[str, ...]
    projector: tuple[str, ...]
    vision_tower: tuple[str, ...]

    def names(self, group: str) -> tuple[str, ...]:
        """The module names of ``group`` (one of :data:`GROUPS`)."""
        if group not in GROUPS:
            raise VlmError(f"unknown module group {group!r}; groups are {', '.join(GROUPS)}")
        return getattr(self, group)

    def group_of(self, param_name: str) -> str | None:
        """The group a parameter (or module) name belongs to, or ``None``."""
        for g in GROUPS:
            if any(param_name == n or param_name.startswith(n + ".") for n in self.names(g)):
                return g
        return None

    def parameters(self, model: Any, group: str) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` pairs of ``model`` in ``group`` (each parameter once)."""
        wanted = self.names(group)
        for name, p in model.named_parameters():
            if any(name == n or name.startswith(n + ".") for n in wanted):
                yield name, p


# ---- images ---------------------------------------------------------------------------------------------
def to_pil(image: ImageInput, what: str = "image") -> Image.Image:
    """An RGB PIL image from a PIL image, a uint8 array or an image path (errors name the input)."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, str | Path):
        from vlmad.data.images import load_image

        return Image.fromarray(load_image(image))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        raise VlmError(
            f"{what}: expected a PIL image, an image path or an (H, W, 3) uint8 array, "
            f"got {arr.dtype} {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


# ---- families -------------------------------------------------------------------------------------------
class Family(ABC):
    """Base class of the model families; one subclass per family, registered with :func:`register`.

    Subclasses set the class variables and implement :meth:`model_class`, :meth:`budget_kwargs` and
    :meth:`image_geometry`; the rest is shared. A family holds no model state: every method takes the
    processor or model it works on.
    """

    name: ClassVar[str] = ""  # registry name
    label: ClassVar[str] = ""  # display name
    aliases: ClassVar[tuple[str, ...]] = ()
    model_types: ClassVar[tuple[str, ...]] = ()  # config.model_type values of this family
    processor_classes: ClassVar[tuple[str, ...]] = ()  # expected processor class names
    default_layout: ClassVar[ImageLayout] = "interleaved"
    budget_fields: ClassVar[tuple[str, ...]] = ()  # ImageBudget fields this family honours
    module_paths: ClassVar[dict[str, tuple[str, ...]]] = {}  # group -> module paths in the bare model
    example_checkpoints: ClassVar[tuple[str, ...]] = ()

    # ---- loading --------------------------------------------------------------------------------------
    @abstractmethod
    def model_class(self, model_type: str) -> type:
        """The transformers model class for a config of ``model_type`` (one of :attr:`model_types`)."""

    def check_processor(self, processor: Any, source: str) -> None:
        """Raise :class:`VlmError` when ``processor`` lacks what :meth:`prepare_inputs` needs."""
        missing = [
            a
            for a in ("tokenizer", "image_processor", "image_token", "replace_image_token")
            if getattr(processor, a, None) is None
        ]
        if missing:
            raise VlmError(
                f"{source}: the processor {type(processor).__name__} has no {', '.join(missing)}; a "
                f"{self.label} checkpoint needs a {' or '.join(self.processor_classes)} "
                "(processor_config.json or preprocessor_config.json and the tokenizer in the model folder)"
            )
        if (
            getattr(processor, "chat_template", None) is None
            and getattr(processor.tokenizer, "chat_template", None) is None
        ):
            raise VlmError(
                f"{source}: the processor has no chat template (chat_template.jinja / chat_template.json)"
            )

    # ---- chat format ----------------------------------------------------------------------------------
    def build_messages(
        self,
        question: str,
        roles: Sequence[str] = ROLES,
        role_labels: Mapping[str, str] | None = None,
        *,
        answer: str | None = None,
        system: str | None = None,
        layout: ImageLayout | None = None,
    ) -> list[dict[str, Any]]:
        """Chat messages asking ``question`` about images of ``roles``, in that order, with role labels.

        ``interleaved`` layout: ``"<label>:"`` text right before each image, then the question.
        ``images_first`` layout: the images, then ``"Image 1 (the first image): <label>. ..."`` and the
        question. ``answer`` adds an assistant message, ``system`` a system message. ``layout`` defaults to
        the family's (prefer :attr:`vlmad.vlm.load.VLM.layout`, probed from the loaded chat template).
        """
        labels = {**DEFAULT_ROLE_LABELS, **(role_labels or {})}
        roles = list(roles)
        unknown = [r for r in roles if r not in labels]
        if unknown:
            raise VlmError(f"no label for image role(s) {unknown}; pass role_labels for them")
        if len(set(roles)) != len(roles):
            raise VlmError(f"image roles repeat: {roles}")
        layout = layout or self.default_layout
        content: list[dict[str, Any]] = []
        if layout == "interleaved":
            for i, role in enumerate(roles):
                content.append({"type": "text", "text": ("\n" if i else "") + f"{labels[role]}:"})
                content.append({"type": "image", "image_role": role})
            content.append({"type": "text", "text": ("\n" if roles else "") + question})
        elif layout == "images_first":
            content.extend({"type": "image", "image_role": role} for role in roles)
            names = [f"Image {i + 1} (the {_ordinal(i)} image): {labels[r]}." for i, r in enumerate(roles)]
            content.append({"type": "text", "text": "\n".join([*names, question])})
        else:
            raise VlmError(f"unknown image layout {layout!r}; use 'interleaved' or 'images_first'")
        messages: list[dict[str, Any]] = []
        if system:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        messages.append({"role": "user", "content": content})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def render(
        self, processor: Any, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text of ``messages`` through the processor's chat template (image placeholders not
        yet expanded)."""
        try:
            text = processor.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as exc:  # jinja raises its own types for a broken template
            raise VlmError(f"the {self.label} chat template cannot render these messages: {exc}") from exc
        return text if isinstance(text, str) else text[0]

    # ---- images ---------------------------------------------------------------------------------------
    def check_budget(self, role: str, budget: ImageBudget) -> None:
        """:class:`VlmError` when ``budget`` sets a field this family cannot honour."""
        bad = [f for f in budget.set_fields() if f not in self.budget_fields]
        if bad:
            raise VlmError(
                f"image budget of role {role!r} sets {', '.join(bad)}, which {self.label} cannot honour; "
                f"{self.label} budgets take {', '.join(self.budget_fields)}"
            )

    @abstractmethod
    def budget_kwargs(self, processor: Any, budget: ImageBudget) -> dict[str, Any]:
        """Image-processor keyword arguments that apply ``budget`` to one image."""

    def pre_resize(self, processor: Any, image: Image.Image, budget: ImageBudget) -> Image.Image:
        """The image as handed to the image processor (identity unless the family resamples first)."""
        return image

    @abstractmethod
    def image_geometry(
        self, processor: Any, processed: Mapping[str, Any], image: Image.Image
    ) -> tuple[int, tuple[int, int]]:
        """``(tiles, (height, width))`` of the content the model sees of one processed image."""

    def prepare_inputs(
        self,
        processor: Any,
        conversations: Sequence[Sequence[Mapping[str, Any]]],
        images: Sequence[Mapping[str, ImageInput]],
        budgets: Mapping[str, ImageBudget] | None = None,
        *,
        add_generation_prompt: bool = True,
        padding_side: Literal["left", "right"] = "left",
        assistant_prefixes: Sequence[str] | None = None,
    ) -> PreparedInputs:
        """Tokenised inputs of a batch of conversations with per-role image budgets.

        ``conversations[i]`` holds image items ``{"type": "image", "image_role": role}``; ``images[i]`` maps
        each of those roles to an image. Every image is processed on its own with its role's budget
        (``budgets[role]``; a role without one gets the processor default), so roles never share settings.
        The result equals ``processor(text=..., images=...)`` when all roles share one budget: the same
        placeholder expansion (``processor.replace_image_token``), tokenizer arguments and extra inputs.
        Batches are padded on ``padding_side`` (left for generation and next-token scoring).
        ``assistant_prefixes[i]`` is appended to prompt ``i`` after the generation prompt: text the reply
        already starts with.
        """
        import torch

        if len(conversations) != len(images):
            raise VlmError(f"{len(conversations)} conversations but {len(images)} image sets")
        budgets = dict(budgets or {})
        known = set(ROLES) | {r for conv in conversations for r in image_roles(conv)}
        unknown = sorted(set(budgets) - known)
        if unknown:
            raise VlmError(f"image budget for unknown role(s) {unknown}; roles are {sorted(known)}")
        for role, b in budgets.items():
            if not isinstance(b, ImageBudget):
                raise VlmError(f"the budget of role {role!r} is a {type(b).__name__}, not an ImageBudget")
            self.check_budget(role, b)

        texts = [self.render(processor, conv, add_generation_prompt) for conv in conversations]
        if assistant_prefixes is not None:
            if len(assistant_prefixes) != len(texts):
                raise VlmError(f"{len(assistant_prefixes)} assistant prefixes for {len(texts)} conversations")
            if not add_generation_prompt:
                raise VlmError("assistant prefixes continue a reply: they need add_generation_prompt=True")
            texts = [t + p for t, p in zip(texts, assistant_prefixes, strict=True)]
        placeholder = processor.image_token
        processed: list[Mapping[str, Any]] = []
        replacements: list[str] = []
        slots: list[ImageSlot] = []
        for i, (conv, text) in enumerate(zip(conversations, texts, strict=True)):
            roles = image_roles(conv)
            if text.count(placeholder) != len(roles):
                raise VlmError(
                    f"conversation {i}: {len(roles)} image(s) but the rendered prompt holds "
                    f"{text.count(placeholder)} image placeholder(s) {placeholder!r}; does the text contain "
                    "the placeholder itself?"
                )
            for role in roles:
                if role not in images[i]:
                    raise VlmError(f"conversation {i} has a {role!r} image placeholder but no {role!r} image")
                pil = to_pil(images[i][role], what=f"conversation {i} {role} image")
                budget = budgets.get(role, ImageBudget())
                images_kwargs = _merge(processor, self.budget_kwargs(processor, budget), "images_kwargs")
                images_kwargs["return_tensors"] = "pt"
                shown = self.pre_resize(processor, pil, budget)
                out = processor.image_processor([shown], **images_kwargs)
                repl = processor.replace_image_token(out, image_idx=0, **images_kwargs)
                tiles, size = self.image_geometry(processor, out, shown)
                processed.append(out)
                replacements.append(repl)
                slots.append(
                    ImageSlot(
                        sample=i,
                        role=role,
                        source_size=(pil.height, pil.width),
                        tiles=tiles,
                        tile_size=size,
                        pixels=tiles * size[0] * size[1],
                        tokens=repl.count(placeholder),
                    )
                )
        expanded, _ = processor.get_text_with_replacements(list(texts), replacements)
        text_kwargs = _merge(processor, {"padding": True, "padding_side": padding_side}, "text_kwargs")
        text_kwargs["return_tensors"] = "pt"
        mm_types = text_kwargs.pop(
            "return_mm_token_type_ids", getattr(processor, "return_mm_token_type_ids", False)
        )
        text_kwargs.pop("return_text_replacement_offsets", None)
        bos = processor.tokenizer.bos_token
        if bos is not None and all(t.startswith(bos) for t in expanded):
            text_kwargs["add_special_tokens"] = False  # the template wrote BOS itself (as processors do)
        enc = processor.tokenizer(expanded, **text_kwargs)
        tensors: dict[str, Any] = dict(enc)
        if mm_types:
            tensors["mm_token_type_ids"] = torch.tensor(
                processor.create_mm_token_type_ids(enc["input_ids"].tolist())
            )
        tensors.update(_concat(processed, set(processor.model_input_names)))
        return PreparedInputs(tensors, texts, slots)

    # ---- modules --------------------------------------------------------------------------------------
    def module_groups(self, model: Any) -> ModuleGroups:
        """The module names of the language model (with LM head), projector and vision tower of ``model``.

        Works on the bare transformers model and on wrapped ones (a peft model adds a name prefix).
        Raises :class:`VlmError` when a module is missing (not a model of this family).
        """
        names = {n for n, _ in model.named_modules()}
        anchor = self.module_paths["language_model"][0]
        prefix = _find_prefix(names, anchor)
        if prefix is None:
            raise VlmError(f"{type(model).__name__} has no module {anchor!r}: not a {self.label} model")
        out: dict[str, tuple[str, ...]] = {}
        for group in GROUPS:
            resolved = []
            for p in self.module_paths[group]:
                full = prefix + p
                if full not in names:
                    raise VlmError(f"{type(model).__name__} has no module {full!r}: not a {self.label} model")
                resolved.append(full)
            out[group] = tuple(resolved)
        return ModuleGroups(**out)

    @property
    def lora_target_modules(self) -> str:
        """A peft ``target_modules`` regex: the attention and MLP projections of the language model only
        (never the vision tower, whose layers may share the names)."""
        lm = re.escape(self.module_paths["language_model"][0])
        return rf"^(?:.*\.)?{lm}\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)$"

    def __repr__(self) -> str:
        return f"<VLM family {self.name}: {self.label}>"


def image_roles(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Roles of the image items of ``messages``, in message and item order (the placeholder order).

    Raises :class:`VlmError` for an image item without ``image_role``.
    """
    roles = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str) or content is None:
            continue
        for item in content:
            if item.get("type") == "image":
                role = item.get("image_role")
                if not role:
                    raise VlmError(f"image item {dict(item)} has no 'image_role' (e.g. 'template' or 'test')")
                roles.append(str(role))
    return roles


def probe_layout(processor: Any) -> ImageLayout:
    """How the processor's chat template places images within a message, found by rendering a probe.

    ``interleaved`` when an image placeholder lands between the texts around it, ``images_first`` when the
    template renders the message's images before its text. Raises :class:`VlmError` when the template does
    not render image items at all.
    """
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "VLMADPROBEA"},
                {"type": "image"},
                {"type": "text", "text": "VLMADPROBEB"},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = text if isinstance(text, str) else text[0]
    token = processor.image_token
    where, a, b = text.find(token), text.find("VLMADPROBEA"), text.find("VLMADPROBEB")
    if where < 0 or a < 0 or b < 0:
        raise VlmError(
            f"the chat template does not render an image item as {token!r}; "
            "it cannot be used for image prompts"
        )
    return "interleaved" if a < where < b else "images_first"


def _ordinal(i: int) -> str:
    return _ORDINALS[i] if i < len(_ORDINALS) else f"#{i + 1}"


def _find_prefix(names: set[str], path: str) -> str | None:
    if path in names:
        return ""
    hits = sorted((n for n in names if n.endswith("." + path)), key=len)
    return hits[0][: -len(path)] if hits else None


def _merge(processor: Any, kwargs: Mapping[str, Any], modality: str) -> dict[str, Any]:
    """The processor's own keyword merging (class defaults, tokenizer init kwargs, ours), one modality.

    Memoised per processor and arguments (it validates typed dicts on every call: a quarter of the time
    of :meth:`Family.prepare_inputs` on small images); a fresh copy of the top-level dict is returned."""
    cache = processor.__dict__.setdefault("_vlmad_merge_cache", {})
    key = (modality, repr(sorted(kwargs.items())))
    if key not in cache:
        cache[key] = _merge_uncached(processor, kwargs, modality)
    return dict(cache[key])


def _merge_uncached(processor: Any, kwargs: Mapping[str, Any], modality: str) -> dict[str, Any]:
    tok = getattr(processor, "tokenizer", None)
    merged = processor._merge_kwargs(
        tokenizer_init_kwargs=tok.init_kwargs if tok is not None else {}, **kwargs
    )
    out = dict(merged[modality])
    if modality == "text_kwargs" and "return_mm_token_type_ids" in merged:
        out.setdefault("return_mm_token_type_ids", merged["return_mm_token_type_ids"])
    return out


def _concat(parts: Sequence[Mapping[str, Any]], keep: set[str]) -> dict[str, Any]:
    """Per-image processor outputs joined in order: tensors along dim 0, lists extended."""
    import torch

    out: dict[str, Any] = {}
    if not parts:
        return out
    for key in parts[0]:
        if keep and key not in keep:
            continue
        values = [p[key] for p in parts]
        if all(isinstance(v, torch.Tensor) for v in values):
            out[key] = torch.cat(values, dim=0)
        elif all(isinstance(v, list) for v in values):
            out[key] = [x for v in values for x in v]
        else:
            out[key] = values[0]
    return out


def isqrt_side(max_pixels: int) -> int:
    """``floor(sqrt(max_pixels))``, at least 1."""
    return max(1, math.isqrt(max_pixels))


# ---- registry -------------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: add a family to the registry under its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    from vlmad.vlm import internvl, llava, qwen2vl  # noqa: F401  (registration side effect)


def family_names() -> list[str]:
    """Registered family names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def _norm(name: str) -> str:
    return re.sub(r"[\s_.\-]", "", name.lower())


def get_family(name: str | Family) -> Family:
    """The family called ``name`` (registry name, alias or model type; case, ``-``, ``_``, ``.`` ignored).

    Raises :class:`VlmError` naming the known families.
    """
    if isinstance(name, Family):
        return name
    _load_all()
    key = _norm(str(name))
    for cls in _REGISTRY.values():
        if key in {_norm(n) for n in (cls.name, *cls.aliases, *cls.model_types)}:
            return cls()
    raise VlmError(f"unknown VLM family {name!r}; known families: {', '.join(family_names())}")


_NOT_NATIVE = {
    "internvl_chat": "an original InternVL checkpoint (remote code); use its transformers-native '-hf' "
    "version, e.g. OpenGVLab/InternVL3-8B-hf",
    "llava_llama": "an original LLaVA repository checkpoint; use the llava-hf conversion, e.g. "
    "llava-hf/llava-1.5-7b-hf",
    "qwen": "a Qwen-VL (v1, remote code) checkpoint; use Qwen2-VL or Qwen2.5-VL, "
    "e.g. Qwen/Qwen2-VL-2B-Instruct",
}


def detect_family(config: Any) -> Family:
    """The family of a config (or a ``model_type`` string), from its ``model_type``.

    Raises :class:`VlmError` for model types no family covers, with advice for known non-native checkpoints.
    """
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    _load_all()
    for cls in _REGISTRY.values():
        if model_type in cls.model_types:
            return cls()
    supported = sorted(t for cls in _REGISTRY.values() for t in cls.model_types)
    hint = _NOT_NATIVE.get(str(model_type))
    raise VlmError(
        f"model type {model_type!r} is not a supported VLM"
        + (f": {hint}" if hint else "")
        + f" (supported model types: {', '.join(supported)})"
    )
