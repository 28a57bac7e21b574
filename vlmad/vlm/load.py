"""Loading a VLM (model + processor + family) from a Hub id or a local directory, with the same code.

:func:`load_vlm` returns a :class:`VLM`: the transformers model (in eval mode, on its device), its processor,
its :class:`~vlmad.vlm.base.Family`, the image layout of its chat template and a :class:`VlmInfo` saying what
was loaded (source, Hub revision, whether it is a tiny random model). ``trust_remote_code`` is passed to
transformers exactly as given and is ``False`` unless asked for. A peft adapter (LoRA) can be attached.

Offline: a Hub id is looked up in the local Hugging Face cache only when ``HF_HUB_OFFLINE`` (or
``TRANSFORMERS_OFFLINE``) is set; an id that is not cached raises :class:`VlmError` saying to download the
model where the Hub is reachable and pass its local directory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vlmad.hf import quiet_hf, random_model_warning
from vlmad.vlm.base import (
    RANDOM_MARK,
    ROLES,
    Family,
    ImageBudget,
    ImageLayout,
    ModuleGroups,
    PreparedInputs,
    VlmRequest,
    detect_family,
    get_family,
    probe_layout,
)
from vlmad.vlm.errors import VlmError

if TYPE_CHECKING:
    import torch

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")
ADAPTER_BASE_FILE = (
    "vlmad_adapter_base.json"  # the base model an adapter was trained on (record_adapter_base)
)
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


@dataclass(frozen=True)
class VlmInfo:
    """What was loaded.

    ``source`` is the Hub id or directory as given, ``local`` whether it was a directory, ``revision`` the
    Hub commit when known. ``random_detail`` is set for tiny random models (see :mod:`vlmad.vlm.tiny`).
    """

    source: str
    family: str
    model_type: str
    local: bool
    device: str
    dtype: str
    trust_remote_code: bool = False
    revision: str | None = None
    adapter: str | None = None
    random_detail: str | None = None

    @property
    def random(self) -> bool:
        """True for tiny randomly initialised models."""
        return self.random_detail is not None

    @property
    def warning(self) -> str | None:
        """The loud line every output of a tiny random model carries, or ``None``."""
        return random_model_warning(
            "VLM", self.source, self.random_detail, "its answers and scores show that the pipeline runs"
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for run records and reports."""
        return {
            "vlm": self.source,
            "vlm_family": self.family,
            "vlm_model_type": self.model_type,
            "vlm_revision": self.revision,
            "vlm_adapter": self.adapter,
            "vlm_dtype": self.dtype,
            "random_vlm": self.random,
            "trust_remote_code": self.trust_remote_code,
        }


class VLM:
    """A loaded vision-language model: use :func:`load_vlm`.

    Holds ``model`` (eval mode; a ``peft`` model when an adapter was attached), ``processor``, ``family``,
    ``info`` and ``layout`` (how the chat template places images; :func:`~vlmad.vlm.base.probe_layout`).
    """

    def __init__(
        self, model: Any, processor: Any, family: Family, info: VlmInfo, layout: ImageLayout
    ) -> None:
        self.model = model
        self.processor = processor
        self.family = family
        self.info = info
        self.layout = layout

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        """Where the inputs go (the device of the input embeddings)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype pixel inputs are cast to."""
        return self.model.get_input_embeddings().weight.dtype

    def messages(
        self, request: VlmRequest, role_labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Chat messages of ``request``: its images in the order of :data:`~vlmad.vlm.base.ROLES` (roles
        not in ``ROLES`` after them, in the given order), each with its label, then the question."""
        if not request.images:
            raise VlmError("a request needs at least one image (roles: template, test)")
        extra = [r for r in request.images if r not in ROLES]
        roles = [r for r in ROLES if r in request.images] + extra
        return self.family.build_messages(
            request.question,
            roles,
            role_labels,
            answer=request.answer,
            system=request.system,
            layout=self.layout,
        )

    def prepare(
        self,
        requests: Sequence[VlmRequest],
        budgets: Mapping[str, ImageBudget] | None = None,
        *,
        role_labels: Mapping[str, str] | None = None,
        add_generation_prompt: bool = True,
        padding_side: Literal["left", "right"] = "left",
        assistant_prefixes: Sequence[str] | None = None,
    ) -> PreparedInputs:
        """Model inputs of ``requests`` with per-role image ``budgets``, on the model's device and dtype.

        ``assistant_prefixes[i]`` (optional) is text the reply to request ``i`` already starts with (after
        the generation prompt): scoring reads the next token after it, generation continues it.
        """
        conversations = [self.messages(r, role_labels) for r in requests]
        prepared = self.family.prepare_inputs(
            self.processor,
            conversations,
            [r.images for r in requests],
            budgets,
            add_generation_prompt=add_generation_prompt,
            padding_side=padding_side,
            assistant_prefixes=assistant_prefixes,
        )
        return prepared.to(self.device, self.dtype)

    def module_groups(self) -> ModuleGroups:
        """The language model / projector / vision tower module names of :attr:`model`."""
        return self.family.module_groups(self.model)

    def __repr__(self) -> str:
        return f"<VLM {self.info.source} ({self.family.label}{', TINY RANDOM' if self.info.random else ''})>"


# ---- loading --------------------------------------------------------------------------------------------
def hub_offline() -> bool:
    """Whether the Hugging Face Hub is switched off (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False


def resolve_source(source: str | Path) -> tuple[str, bool]:
    """``(name, is_local)``: an existing model directory, or a Hub id (``owner/name``).

    Raises :class:`VlmError` for a file, a directory without ``config.json``, a path that does not exist
    (one starting with ``/``, ``.`` or ``~``, or with more than one ``/``), or a malformed id.
    """
    raw = str(source)
    path = Path(raw).expanduser()
    if path.exists():
        if not path.is_dir():
            raise VlmError(f"{raw}: a file, not a model directory (expected a folder with config.json)")
        if not (path / "config.json").is_file():
            raise VlmError(f"{raw}: no config.json in this directory; it is not a transformers checkpoint")
        return str(path), True
    if isinstance(source, Path) or raw.startswith(("/", ".", "~")) or raw.count("/") > 1 or "\\" in raw:
        raise VlmError(f"{raw}: model directory not found")
    if not _HUB_ID.fullmatch(raw):
        raise VlmError(
            f"{raw!r} is neither an existing model directory nor a Hub id like 'llava-hf/llava-1.5-7b-hf'"
        )
    return raw, False


def _not_loadable(name: str, offline: bool, exc: BaseException) -> VlmError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    where = (
        "the Hugging Face Hub is offline (HF_HUB_OFFLINE is set) and it is not in the local cache"
        if offline
        else "it is not in the local cache and could not be fetched from the Hugging Face Hub"
    )
    return VlmError(
        f"{name}: cannot load this model: it is not a local directory, and as a Hub id {where}. Download it "
        f"where the Hub is reachable (e.g. `hf download {name} --local-dir models/{name.split('/')[-1]}`) "
        f"and pass that local directory instead. ({type(exc).__name__}: {first})"
    )


def _resolve_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> Any:
    import torch

    if dtype is None:
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key == "auto":
        return "auto"
    if key not in _DTYPES:
        raise VlmError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    return getattr(torch, _DTYPES[key])


def load_vlm(
    source: str | Path,
    family: str | Family | None = None,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    adapter: str | Path | None = None,
    revision: str | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> VLM:
    """Load a VLM from a Hub id or a local directory (the same code for both).

    - ``family``: a family name (``llava``, ``internvl``, ``qwen2vl``); detected from the config's
      ``model_type`` when ``None``, and checked against it when given.
    - ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; ``None`` picks CUDA when present; ``"auto"``
      spreads the model with ``device_map="auto"`` (accelerate).
    - ``dtype``: ``None`` = bfloat16 on a GPU that supports it, float32 otherwise; or ``float32`` /
      ``bfloat16`` / ``float16`` / ``auto`` (the checkpoint's) / a ``torch.dtype``.
    - ``trust_remote_code``: passed as given to every transformers loader; only set it for code you trust.
    - ``adapter``: a directory with a peft adapter (``adapter_config.json``) trained on this base model.
    - ``revision``: a Hub branch, tag or commit to pin.
    - ``model_kwargs``: extra ``from_pretrained`` arguments (``attn_implementation``,
      ``quantization_config``, ...).

    Raises :class:`VlmError` when the source cannot be found or loaded (offline and not cached: pass a
    local directory), the family is unknown or does not match, or the adapter does not fit the model.
    """
    from transformers import AutoConfig, AutoProcessor

    name, local = resolve_source(source)
    offline = hub_offline() and not local
    fam = get_family(family) if family is not None else None
    hub_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "revision": revision}
    if offline:
        hub_kwargs["local_files_only"] = True

    if local:  # a model type no family covers gets the family error (with advice), not transformers'
        try:
            raw = json.loads((Path(name) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VlmError(f"{name}/config.json cannot be read: {exc}") from exc
        if fam is None and not trust_remote_code:
            detect_family(str(raw.get("model_type")))
    try:
        config = AutoConfig.from_pretrained(name, **hub_kwargs)
    except OSError as exc:
        if local:
            raise VlmError(f"{name}: the config cannot be read: {exc}") from exc
        raise _not_loadable(name, offline, exc) from exc
    except ValueError as exc:
        raise VlmError(
            f"{name}: transformers cannot read this config ({exc}). vlmad loads transformers-native "
            "checkpoints; pass trust_remote_code=True only for a repository whose code you trust"
        ) from exc
    model_type = str(getattr(config, "model_type", ""))
    if fam is None:
        fam = detect_family(config)
    elif model_type not in fam.model_types:
        raise VlmError(
            f"{name} is a {model_type!r} checkpoint, not {fam.label} "
            f"(model types {', '.join(fam.model_types)}); leave the family unset to detect it"
        )

    dev = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, dev)
    kwargs: dict[str, Any] = {**hub_kwargs, "dtype": torch_dtype, **dict(model_kwargs or {})}
    if dev == "auto":
        kwargs["device_map"] = "auto"
    try:
        with quiet_hf():
            model, loading = fam.model_class(model_type).from_pretrained(
                name, output_loading_info=True, **kwargs
            )
    except OSError as exc:
        if local:
            raise VlmError(f"{name}: the weights cannot be read: {exc}") from exc
        raise _not_loadable(name, offline, exc) from exc
    missing = list(loading.get("missing_keys") or [])
    if missing:
        raise VlmError(
            f"{name}: the checkpoint has no weights for {len(missing)} parameter(s) of {fam.label} (e.g. "
            f"{', '.join(sorted(missing)[:3])}); it is incomplete or of another architecture"
        )
    try:
        processor = AutoProcessor.from_pretrained(name, **hub_kwargs)
    except OSError as exc:
        if local:
            raise VlmError(
                f"{name}: the processor (tokenizer, image processor) cannot be read: {exc}"
            ) from exc
        raise _not_loadable(name, offline, exc) from exc
    fam.check_processor(processor, name)
    placed = getattr(model, "hf_device_map", None) or getattr(model, "is_quantized", False)
    if dev != "auto" and not placed:  # device maps and quantized weights are placed by from_pretrained
        model = model.to(dev)
    model.eval()

    adapter_name = None
    if adapter is not None:
        model = attach_adapter(model, adapter, fam, name)
        model.eval()
        adapter_name = str(adapter)
    info = VlmInfo(
        source=name,
        family=fam.name,
        model_type=model_type,
        local=local,
        device=str(model.get_input_embeddings().weight.device),
        dtype=str(model.get_input_embeddings().weight.dtype).removeprefix("torch."),
        trust_remote_code=trust_remote_code,
        revision=getattr(config, "_commit_hash", None) or revision,
        adapter=adapter_name,
        random_detail=getattr(config, RANDOM_MARK, None),
    )
    return VLM(model, processor, fam, info, probe_layout(processor))


# ---- adapters -------------------------------------------------------------------------------------------
def _arch_signature(config: Any) -> dict[str, Any]:
    text = getattr(config, "text_config", None) or config
    return {
        "model_type": getattr(config, "model_type", None),
        "hidden_size": getattr(text, "hidden_size", None),
        "num_hidden_layers": getattr(text, "num_hidden_layers", None),
        "vocab_size": getattr(text, "vocab_size", None),
    }


def attach_adapter(model: Any, adapter: str | Path, family: Family, base_name: str) -> Any:
    """``model`` wrapped with the peft adapter in directory ``adapter`` (inference mode).

    Checks that the adapter fits: the base architecture (model type, text width, depth, vocabulary) recorded
    by :func:`record_adapter_base`, or else that of the base in ``adapter_config.json``
    (``base_model_name_or_path``) when it is a readable local checkpoint, must equal the model's; the
    adapter's target modules must exist in the model, and
    every adapter weight must load with its shape. Raises :class:`VlmError` naming both sides otherwise.
    """
    from peft import PeftModel

    path = Path(adapter).expanduser()
    cfg_file = path / "adapter_config.json"
    if not cfg_file.is_file():
        raise VlmError(f"{adapter}: not a peft adapter directory (no adapter_config.json)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VlmError(f"{cfg_file}: cannot be read: {exc}") from exc
    base = cfg.get("base_model_name_or_path")
    mine = _arch_signature(model.config)
    record = path / ADAPTER_BASE_FILE
    if record.is_file():
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise VlmError(f"{record}: cannot be read: {exc}") from exc
        theirs = {k: recorded.get("architecture", {}).get(k) for k in mine}
        if theirs != mine:
            diff = ", ".join(f"{k} {theirs[k]!r} vs {mine[k]!r}" for k in mine if theirs[k] != mine[k])
            raise VlmError(
                f"{adapter}: the adapter was trained on {recorded.get('source', base)}, whose architecture "
                f"differs from {base_name} ({diff}); load it on the base model it was trained on"
            )
    elif base and (Path(base) / "config.json").is_file():
        try:
            theirs = _arch_signature(_plain_config(Path(base)))
        except (OSError, ValueError):
            theirs = None
        if theirs is not None and theirs != mine:
            diff = ", ".join(f"{k} {theirs[k]!r} vs {mine[k]!r}" for k in mine if theirs[k] != mine[k])
            raise VlmError(
                f"{adapter}: the adapter was trained on {base}, whose architecture differs from {base_name} "
                f"({diff}); load it on the base model it was trained on"
            )
    try:
        with quiet_hf():
            wrapped = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        detail = next((line for line in lines if "size mismatch" in line), lines[0])[:300]
        raise VlmError(
            f"{adapter}: the adapter (trained on {base or 'an unrecorded base'}) does not fit {base_name} "
            f"({family.label}): {detail}"
        ) from exc
    _check_adapter_loaded(wrapped, path, base, base_name)
    return wrapped


def record_adapter_base(directory: str | Path, vlm: VLM) -> Path:
    """Write :data:`ADAPTER_BASE_FILE` into an adapter directory: the base model's source, family and
    architecture, so that :func:`attach_adapter` can refuse the adapter on another base even when
    ``base_model_name_or_path`` cannot be resolved (a Hub id offline, a moved directory). The trainer calls
    this next to ``save_pretrained``; returns the file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / ADAPTER_BASE_FILE
    model = getattr(vlm.model, "get_base_model", lambda: vlm.model)()
    payload = {
        "source": vlm.info.source,
        "family": vlm.family.name,
        "revision": vlm.info.revision,
        "architecture": _arch_signature(model.config),
        "random_base": vlm.info.random,
    }
    out.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _plain_config(directory: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(directory), local_files_only=True)


def _check_adapter_loaded(wrapped: Any, path: Path, base: str | None, base_name: str) -> None:
    """Every tensor in the adapter file must have landed in a module of the model."""
    from peft.utils import load_peft_weights

    weights = load_peft_weights(str(path), device="cpu")
    # tied weights (an LM head tied to the embeddings) are listed once by default: list every name
    names = {n for n, _ in wrapped.named_parameters(remove_duplicate=False)}
    stray = []
    for key in weights:
        stem = key.rsplit(".", 1)[0]  # e.g. ...q_proj.lora_A
        if not any(n.startswith(_peft_key(stem)) or _peft_key(stem) in n for n in names):
            stray.append(key)
    if stray:
        raise VlmError(
            f"{path}: {len(stray)} adapter weight(s) match no module of {base_name} (e.g. {stray[0]}); the "
            f"adapter was trained on {base or 'another base model'}"
        )


def _peft_key(stem: str) -> str:
    # saved keys drop the adapter name: "...q_proj.lora_A" is "...q_proj.lora_A.default" in the model
    return stem.replace("base_model.model.", "", 1)
