"""Chain-of-image backends: who answers a template + test image pair, and what the answer cost.

- :class:`OpenAIBackend`: the OpenAI API (GPT-4o) or any OpenAI-compatible server (vLLM, Ollama, ...)
  through :class:`vlmad.api.client.ChatClient` (concurrency, retries with backoff and jitter on 429 / 5xx /
  timeouts, a run-wide retry budget, token usage and cost). Images go as base64 PNG data URLs with the
  ``detail`` setting (:func:`vlmad.api.images.image_content`).
- :class:`LocalBackend`: a transformers checkpoint of a :mod:`vlmad.vlm` family (LLaVA-1.5, InternVL,
  Qwen2-VL; a base model plus an optional LoRA adapter; the tiny random models for offline runs), batched
  greedy or sampled generation, plus a yes/no score from the logits.

Both get the same pixels: :func:`vlmad.api.images.prepare_image` (RGB, longest side at most ``max_side``);
the API backend PNG-encodes that image, the local backend hands it to the model's processor.

Conversation: the first user turn holds the template label, the template image, the test label, the test
image and the prompt's first turn text (:meth:`vlmad.coi.prompts.PromptTemplate.first_turn_content`);
in ``multi_turn`` mode each further step is one more user turn after the model's reply to the previous one.
Each step's reply is kept (:attr:`Outcome.steps`); the runner parses the last.

The local score: after the final reply, the model is given its own reasoning (the final reply up to its
last ``Answer:`` line, or all of it when there is none) followed by ``"\\nAnswer:"`` as the start of its
reply, and ``score`` is P(anomalous answer) from the next-token logits
(:func:`vlmad.vlm.scoring.scores_from_logits`; "Anomalous"/"Yes"/... vs "Normal"/"No"). So the score is
read where the prompt's fixed answer form puts the verdict, conditioned on the reasoning the model
actually produced: it agrees with the parsed verdict of a model that follows the form, and still ranks
images when a model does not (then ``answer_mass``, the share of probability on either answer, is low).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from vlmad.coi.recipe import TINY_LORA, GenerationSettings, ModelSpec, RetrySettings
from vlmad.errors import ConfigError

if TYPE_CHECKING:
    from vlmad.api.client import ChatClient
    from vlmad.vlm.load import VLM

__all__ = [
    "SCORE_ANSWER_PREFIX",
    "LocalBackend",
    "LocalItem",
    "OpenAIBackend",
    "Outcome",
    "make_backend",
    "make_tiny_lora",
    "public_url",
    "score_prefix",
]

#: What the local score is read after (appended to the model's reasoning).
SCORE_ANSWER_PREFIX = "\nAnswer:"
_ANSWER_LINE = re.compile(
    r"^[ \t>*#\-]*(?:\*\*)?(?:final\s+)?answer\s*(?:\*\*)?\s*:", re.IGNORECASE | re.MULTILINE
)
_BIG_FILE = 64 << 20
_EDGE = 8 << 20


@dataclass
class Outcome:
    """What a backend got for one item (all its steps).

    - ``steps``: each step's reply text, in order (one for ``single`` mode); a failed item holds the steps
      that succeeded before the failure.
    - ``error`` / ``error_kind``: set when the item failed (the transport gave up, or the model refused:
      kind ``refusal``); ``refusal``: the model's refusal text.
    - ``finish_reason`` of the last reply; ``prompt_tokens`` / ``completion_tokens`` / ``cost_usd``
      (``None``: no price known, or a local model) summed over steps; ``attempts``: requests sent (retries
      included; for a cached answer, those it took when it was made); ``latency_s``: wall seconds;
      ``served_model``: the model the server reports (its dated snapshot for OpenAI).
    - ``score`` / ``answer_mass``: the local yes/no score (``None`` for API backends).
    - ``cached``: the answer came from the response cache.
    """

    steps: list[str] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    attempts: int = 0
    latency_s: float = 0.0
    served_model: str | None = None
    score: float | None = None
    answer_mass: float | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        """No error: every step was answered (possibly with empty text)."""
        return self.error is None

    def to_cache(self) -> dict[str, Any]:
        """The JSON value stored in the response cache (only for ``ok`` outcomes)."""
        d = asdict(self)
        for key in ("cached", "latency_s", "error", "error_kind"):
            d.pop(key)
        return d

    @classmethod
    def from_cache(cls, value: Mapping[str, Any]) -> Outcome:
        """An outcome rebuilt from :meth:`to_cache` output, marked ``cached``."""
        known = {k: v for k, v in value.items() if k in cls.__dataclass_fields__}
        return cls(**known, cached=True)


def score_prefix(reply: str) -> str:
    """The assistant text the local score is read after: ``reply`` up to its last ``Answer:`` line (or all
    of it), stripped, then ``"\\nAnswer:"`` (just ``"Answer:"`` for an empty reply)."""
    matches = list(_ANSWER_LINE.finditer(reply))
    reasoning = (reply[: matches[-1].start()] if matches else reply).strip()
    return reasoning + SCORE_ANSWER_PREFIX if reasoning else SCORE_ANSWER_PREFIX.lstrip()


def public_url(url: str | None) -> str | None:
    """``url`` without any ``user:password@`` part (so a URL is safe to record); ``None`` stays ``None``."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ------------------------------------------------------------------------------------------- API backend
class OpenAIBackend:
    """An OpenAI-compatible chat model. ``client`` is the :class:`ChatClient` (built here: the API key is
    read from ``$OPENAI_API_KEY``, never from the recipe; a local ``base_url`` needs none)."""

    kind = "openai"

    def __init__(
        self, spec: ModelSpec, retry: RetrySettings, generation: GenerationSettings, seed: int | None
    ) -> None:
        from vlmad.api.client import ChatClient, Price, RetryPolicy, base_url_from_env

        self.spec = spec
        self.base_url = spec.base_url or base_url_from_env()
        price = None
        if spec.price_input_per_1k is not None and spec.price_output_per_1k is not None:
            price = Price(spec.price_input_per_1k, spec.price_output_per_1k)
        self.client: ChatClient = ChatClient(
            str(spec.model),
            base_url=self.base_url,
            concurrency=spec.concurrency,
            timeout=spec.timeout,
            retry=RetryPolicy(**retry.model_dump()),
            price=price,
            seed=seed,
        )
        self.params = generation.api_params(seed)
        self.detail = spec.detail

    @property
    def concurrency(self) -> int:
        return self.spec.concurrency

    def identity(self) -> dict[str, Any]:
        """What of this backend decides an answer (part of the cache key): the backend and model name.
        The server URL is not part of it: the same model name on another server is the same model."""
        return {"backend": self.kind, "model": self.spec.model}

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the backend for run records (never the API key)."""
        return {
            "backend": self.kind,
            "model": self.spec.model,
            "base_url": public_url(self.base_url),
            "concurrency": self.spec.concurrency,
            "timeout_s": self.spec.timeout,
            "detail": self.detail,
            "retry": asdict(self.client.retry),
            "params": self.params,
            "random_vlm": False,
        }

    def scrub(self, text: str | None) -> str | None:
        """``text`` with the API key replaced by ``***``."""
        return None if text is None else self.client.scrub(text)

    async def answer(self, first_content: list[dict[str, Any]], turns: Sequence[str]) -> Outcome:
        """Send the conversation step by step (``first_content``: the first user turn's parts with the two
        images; ``turns[1:]``: the further user turns). Never raises for API problems: a failed step ends
        the item with ``error`` set (the steps before it are kept)."""
        from vlmad.api.client import cost_usd

        out = Outcome()
        messages: list[dict[str, Any]] = [{"role": "user", "content": first_content}]
        started = time.perf_counter()
        n = len(turns)
        for k, turn in enumerate(turns):
            if k:
                messages += [
                    {"role": "assistant", "content": out.steps[-1]},
                    {"role": "user", "content": turn},
                ]
            result = await self.client.complete(messages, **self.params)
            out.attempts += result.attempts
            where = f"step {k + 1}/{n}: " if n > 1 else ""
            if not result.ok:
                out.error, out.error_kind = where + str(self.scrub(result.error)), result.error_kind
                break
            out.prompt_tokens += result.usage.prompt_tokens
            out.completion_tokens += result.usage.completion_tokens
            cost = cost_usd(result.model or str(self.spec.model), result.usage, self.client.price)
            out.cost_usd = None if cost is None else (out.cost_usd or 0.0) + cost
            out.served_model = result.model
            out.finish_reason = result.finish_reason
            if result.refusal and not (result.text or "").strip():
                out.refusal = self.scrub(result.refusal)
                out.error, out.error_kind = where + "the model refused", "refusal"
                break
            out.steps.append(self.scrub(result.text) or "")
        out.latency_s = time.perf_counter() - started
        return out

    async def aclose(self) -> None:
        """Close the client's connections of the running event loop."""
        await self.client.aclose()

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------------------- local backend
@dataclass(frozen=True)
class LocalItem:
    """One item for :meth:`LocalBackend.answer_batch`: the prompt's ``turns``, the ``labels`` written
    before the template and the test image, and the two prepared images (``{"template": PIL, "test":
    PIL}``)."""

    turns: tuple[str, ...]
    labels: tuple[str, str]
    images: Mapping[str, Any]


def _file_digest(path: Path) -> str:
    """sha256 of a file; for files over 64 MiB of its size and first and last 8 MiB (weights shards)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        if size <= _BIG_FILE:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
    return h.hexdigest()


def dir_fingerprint(path: str | Path) -> str:
    """16 hex digits identifying a model folder's content: the relative names and digests of its files
    (hidden files skipped; files over 64 MiB by size and their first and last 8 MiB)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        h.update(f"{rel.as_posix()}\0{_file_digest(f)}\n".encode())
    return h.hexdigest()[:16]


def make_tiny_lora(base_dir: str | Path, out_dir: str | Path, *, seed: int = 0, rank: int = 2) -> Path:
    """Write a random LoRA adapter (rank ``rank``, non-zero ``B`` weights from ``seed``) on the language
    model of the tiny VLM in ``base_dir`` into ``out_dir``, with its base record
    (:func:`vlmad.vlm.load.record_adapter_base`); returns ``out_dir``. For pipeline demos and tests only:
    the adapter is noise, like its tiny base."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model

    from vlmad.vlm.load import load_vlm, record_adapter_base

    base = load_vlm(base_dir, device="cpu")
    with warnings.catch_warnings():  # peft calls a transformers API that warns of its own deprecation
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base.model, LoraConfig(r=rank, target_modules=base.family.lora_target_modules))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    out = Path(out_dir)
    model.save_pretrained(out)
    record_adapter_base(out, base)
    return out


class LocalBackend:
    """A local :mod:`vlmad.vlm` model (loaded on first use). ``models_dir``: where ``tiny:<family>``
    sources and ``tiny-lora`` adapters are built (kept, so a rerun reuses them)."""

    kind = "local"

    def __init__(
        self, spec: ModelSpec, generation: GenerationSettings, seed: int | None, models_dir: str | Path
    ) -> None:
        self.spec = spec
        self.generation = generation
        self.seed = seed
        self.models_dir = Path(models_dir)
        self.source, self.adapter = self._resolve()
        self.vlm: VLM | None = None
        self._identity: dict[str, Any] | None = None

    @property
    def concurrency(self) -> int:
        return self.spec.batch_size

    def _resolve(self) -> tuple[str, str | None]:
        spec = self.spec
        family = spec.tiny_family
        source = str(spec.source)
        if family is not None:
            from vlmad.vlm.tiny import build

            folder = self.models_dir / f"tiny-{family}"
            if not (folder / "config.json").is_file():
                build(family, folder)
            source = str(folder)
        adapter = spec.adapter
        if adapter == TINY_LORA:
            folder = self.models_dir / f"tiny-{family}+lora"
            if not (folder / "adapter_config.json").is_file():
                make_tiny_lora(source, folder, seed=self.seed or 0)
            adapter = str(folder)
        elif adapter is not None and not Path(adapter).expanduser().is_dir():
            raise ConfigError(f"{adapter}: adapter folder not found (model {spec.display_name!r})")
        return source, adapter

    def identity(self) -> dict[str, Any]:
        """What decides an answer (part of the cache key): the model folder's content fingerprint (or the
        Hub id and pinned revision), the adapter's fingerprint, dtype and the generation settings."""
        if self._identity is None:
            src = Path(self.source).expanduser()
            model = (
                {"fingerprint": dir_fingerprint(src)}
                if src.is_dir()
                else {"hub_id": self.source, "revision": self.spec.revision}
            )
            adapter = None if self.adapter is None else dir_fingerprint(Path(self.adapter).expanduser())
            self._identity = {
                "backend": self.kind,
                "model": model,
                "adapter": adapter,
                "dtype": self.spec.dtype,
                "score": SCORE_ANSWER_PREFIX,
            }
        return self._identity

    def load(self) -> VLM:
        """Load the model (once); :class:`vlmad.vlm.VlmError` when it cannot be loaded."""
        if self.vlm is None:
            from vlmad.vlm.load import load_vlm

            self.vlm = load_vlm(
                self.source,
                device=self.spec.device,
                dtype=self.spec.dtype,
                adapter=self.adapter,
                revision=self.spec.revision,
            )
        return self.vlm

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of the backend (loads the model to report its revision and whether it is a
        tiny random model)."""
        vlm = self.load()
        return {
            "backend": self.kind,
            "model": self.source,
            "adapter": self.adapter,
            "revision": vlm.info.revision,
            "family": vlm.info.family,
            "dtype": vlm.info.dtype,
            "device": vlm.info.device,
            "batch_size": self.spec.batch_size,
            "params": self.local_params(),
            "random_vlm": vlm.info.random,
            "warning": vlm.info.warning,
            "score": f"P(anomalous) after the reasoning + {SCORE_ANSWER_PREFIX!r}",
        }

    def local_params(self) -> dict[str, Any]:
        """The generation settings as applied locally."""
        g = self.generation
        out: dict[str, Any] = {"max_new_tokens": g.max_tokens, "do_sample": g.temperature > 0}
        if g.temperature > 0:
            out.update(temperature=g.temperature, top_p=g.top_p or 1.0)
        out["seed"] = self.seed
        return out

    # ---- generation on whole conversations ------------------------------------------------------------
    def _prepare(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        images: Sequence[Mapping[str, Any]],
        prefixes: Sequence[str] | None = None,
    ) -> Any:
        vlm = self.load()
        prepared = vlm.family.prepare_inputs(
            vlm.processor,
            conversations,
            images,
            None,
            padding_side="left",
            assistant_prefixes=prefixes,
        )
        return prepared.to(vlm.device, vlm.dtype)

    def _generate(
        self, conversations: Sequence[list[dict[str, Any]]], images: Sequence[Mapping[str, Any]]
    ) -> list[tuple[str, int, int, bool]]:
        """``(text, prompt tokens, new tokens, finished)`` per conversation (one batch)."""
        import torch

        vlm = self.load()
        g = self.generation
        eos = _eos_ids(vlm)
        pad = vlm.tokenizer.pad_token_id
        if pad is None:
            pad = min(eos) if eos else 0
        options: dict[str, Any] = {
            "max_new_tokens": g.max_tokens,
            "do_sample": g.temperature > 0,
            "pad_token_id": pad,
        }
        if g.temperature > 0:
            options.update(temperature=g.temperature, top_p=g.top_p or 1.0, top_k=0)
        inputs = self._prepare(conversations, images)
        devices = [vlm.device] if vlm.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.seed is not None:
                torch.manual_seed(self.seed)
            with torch.inference_mode():
                ids = vlm.model.generate(**inputs.tensors, **options)
        prompt_lens = inputs.tensors["attention_mask"].sum(dim=1).tolist()
        out = []
        for row, n_prompt in zip(
            ids[:, inputs.tensors["input_ids"].shape[1] :].tolist(), prompt_lens, strict=True
        ):
            ended = next((k for k, t in enumerate(row) if t in eos), None)
            kept = row if ended is None else row[:ended]
            text = vlm.tokenizer.decode(kept, skip_special_tokens=True).strip()
            out.append((text, int(n_prompt), len(kept), ended is not None))
        return out

    def _scores(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        images: Sequence[Mapping[str, Any]],
        prefixes: Sequence[str],
    ) -> list[tuple[float, float]]:
        import torch

        from vlmad.vlm.scoring import answer_token_ids, scores_from_logits

        vlm = self.load()
        inputs = self._prepare(conversations, images, prefixes)
        with torch.inference_mode():
            try:
                logits = vlm.model(**inputs.tensors, logits_to_keep=1, use_cache=False).logits
            except TypeError:  # a model whose forward has no logits_to_keep
                logits = vlm.model(**inputs.tensors, use_cache=False).logits
        tokens = answer_token_ids(vlm.tokenizer)
        return [(s.p_anomalous, s.answer_mass) for s in scores_from_logits(logits[:, -1, :].float(), tokens)]

    def answer_batch(self, items: Sequence[LocalItem]) -> list[Outcome]:
        """Answer ``items`` together (one batch; they must have the same number of turns): generation step
        by step, then the yes/no score after the final reply. Model errors propagate."""
        if not items:
            return []
        n_turns = {len(it.turns) for it in items}
        if len(n_turns) != 1:
            raise ValueError("a local batch mixes prompts with different numbers of turns")
        vlm = self.load()
        started = time.perf_counter()
        conversations = [
            vlm.family.build_messages(
                it.turns[0],
                ("template", "test"),
                {"template": _label(it.labels[0]), "test": _label(it.labels[1])},
                layout=vlm.layout,
            )
            for it in items
        ]
        images = [it.images for it in items]
        outs = [Outcome() for _ in items]
        for k in range(n_turns.pop()):
            if k:
                for it, conv, o in zip(items, conversations, outs, strict=True):
                    conv.append({"role": "assistant", "content": [{"type": "text", "text": o.steps[-1]}]})
                    conv.append({"role": "user", "content": [{"type": "text", "text": it.turns[k]}]})
            for (text, n_prompt, n_new, finished), o in zip(
                self._generate(conversations, images), outs, strict=True
            ):
                o.steps.append(text)
                o.prompt_tokens += n_prompt
                o.completion_tokens += n_new
                o.finish_reason = "stop" if finished else "length"
        scores = self._scores(conversations, images, [score_prefix(o.steps[-1]) for o in outs])
        elapsed = (time.perf_counter() - started) / len(items)
        for o, (p, mass) in zip(outs, scores, strict=True):
            o.score, o.answer_mass = float(p), float(mass)
            o.attempts, o.latency_s, o.served_model = 1, elapsed, self.source
        return outs

    def close(self) -> None:
        """Drop the model (frees its memory once nothing else holds it)."""
        self.vlm = None


def _eos_ids(vlm: VLM) -> set[int]:
    """The token ids that end a reply (the generation config's, else the tokenizer's)."""
    eos: Any = getattr(getattr(vlm.model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = vlm.tokenizer.eos_token_id
    return {int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]) if e is not None}


def _label(text: str) -> str:
    """A prompt's image label as a :mod:`vlmad.vlm` role label (the family adds its own colon)."""
    return text.strip().rstrip(":").strip()


def make_backend(
    spec: ModelSpec,
    *,
    generation: GenerationSettings,
    retry: RetrySettings,
    seed: int | None,
    models_dir: str | Path,
) -> OpenAIBackend | LocalBackend:
    """The backend of ``spec`` (an API client, or a local model that loads on first use)."""
    if spec.backend == "openai":
        return OpenAIBackend(spec, retry, generation, seed)
    return LocalBackend(spec, generation, seed, models_dir)


def canonical(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) of a JSON-able value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
