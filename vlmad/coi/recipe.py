"""Chain-of-image run recipes: which models, prompts, test images and settings a ``vlmad coi run`` uses.

A recipe is a YAML file (in ``eval/``) with one ``coi:`` mapping of :class:`CoiRecipe` fields; recipes are
data and name only things the package defines. Command-line options override the recipe's values. Example
(``eval/coi_doc004.yaml``)::

    coi:
      name: doc004
      dataset: data/mvtec_loco          # folder or manifest; --dataset overrides
      split: test
      models:
        - {backend: openai, model: gpt-4o, concurrency: 16, detail: auto}
      prompts: [plain, coi_p1, coi_p2, coi_p3]
      templates: {strategy: random, pool_splits: [train]}
      max_side: 1024
      generation: {temperature: 0.0, max_tokens: 1024}
      retry: {max_attempts: 5, total_retry_budget: 500}
      seed: 0
      cache: runs/coi-cache.sqlite

Relative paths (``dataset``, a local model's ``source`` / ``adapter``, ``cache``) are read from the
directory the command runs in. See ``eval/README.md`` for every field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vlmad.coi.prompts import MODES, PromptTemplate, load_prompt
from vlmad.coi.templates import STRATEGIES

__all__ = [
    "CoiRecipe",
    "GenerationSettings",
    "ModelSpec",
    "PromptRef",
    "RetrySettings",
    "TemplateSettings",
    "load_recipe",
    "make_recipe",
]

TINY_PREFIX = "tiny:"
#: ``adapter`` value that makes a random LoRA adapter on a tiny model (pipeline demos only).
TINY_LORA = "tiny-lora"
_SAFE = re.compile(r"[^A-Za-z0-9_.+\-]+")


class ModelSpec(BaseModel):
    """One model of a run.

    - ``backend``: ``openai`` (the OpenAI API or any OpenAI-compatible server: vLLM, Ollama, ...) or
      ``local`` (a transformers checkpoint of a :mod:`vlmad.vlm` family, run in this process).
    - ``name``: the readable id used in run ids (``<name>/<prompt>``); default: the API ``model``, or the
      local source's folder name (``tiny-<family>`` for tiny models) plus ``+<adapter folder name>``.
    - openai: ``model`` (the server's model name), ``base_url`` (default ``$OPENAI_BASE_URL``, else OpenAI;
      the key is read from ``$OPENAI_API_KEY`` only), ``concurrency`` (requests in flight), ``timeout``
      (seconds per attempt), ``detail`` (the image ``detail`` setting), ``price_input_per_1k`` /
      ``price_output_per_1k`` (US dollars per 1000 tokens, for models vlmad has no price for).
    - local: ``source`` (a model folder, a Hub id, or ``tiny:<family>`` for a tiny random model built into
      the run folder), ``adapter`` (a peft LoRA folder, or ``tiny-lora`` for a random one on a tiny model),
      ``revision`` (Hub revision), ``device`` / ``dtype`` (as :func:`vlmad.vlm.load_vlm`), ``batch_size``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["openai", "local"]
    name: str | None = None
    model: str | None = None
    base_url: str | None = None
    concurrency: int = Field(16, ge=1)
    timeout: float = Field(120.0, gt=0)
    detail: Literal["auto", "low", "high"] = "auto"
    price_input_per_1k: float | None = Field(None, ge=0)
    price_output_per_1k: float | None = Field(None, ge=0)
    source: str | None = None
    adapter: str | None = None
    revision: str | None = None
    device: str | None = None
    dtype: str | None = None
    batch_size: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _fields_of_backend(self) -> ModelSpec:
        if self.backend == "openai":
            if not self.model:
                raise ValueError("an openai model needs 'model' (the server's model name)")
            for key in ("source", "adapter", "revision", "device", "dtype"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key!r} is a local-model field; an openai model takes model/base_url")
        else:
            if not self.source:
                raise ValueError("a local model needs 'source' (a model folder, a Hub id or tiny:<family>)")
            if self.model is not None or self.base_url is not None:
                raise ValueError("'model' / 'base_url' are openai fields; a local model takes 'source'")
            if self.adapter == TINY_LORA and not self.source.startswith(TINY_PREFIX):
                raise ValueError(f"adapter {TINY_LORA!r} (a random LoRA) is only for tiny:<family> sources")
        if (self.price_input_per_1k is None) != (self.price_output_per_1k is None):
            raise ValueError("give both price_input_per_1k and price_output_per_1k, or neither")
        return self

    @property
    def display_name(self) -> str:
        """:attr:`name`, or the default described in the class docstring (safe for file names)."""
        if self.name:
            return self.name
        if self.backend == "openai":
            return _SAFE.sub("-", str(self.model))
        src = str(self.source)
        base = "tiny-" + src[len(TINY_PREFIX) :] if src.startswith(TINY_PREFIX) else Path(src).name or src
        if self.adapter:
            base += "+" + ("lora" if self.adapter == TINY_LORA else Path(self.adapter).name)
        return _SAFE.sub("-", base)

    @property
    def tiny_family(self) -> str | None:
        """The family of a ``tiny:<family>`` source, else ``None``."""
        src = self.source or ""
        return src[len(TINY_PREFIX) :] if src.startswith(TINY_PREFIX) else None


class PromptRef(BaseModel):
    """A prompt of a run: a packaged name (``coi_p1``) or a YAML path, optionally in another ``mode``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    mode: Literal["single", "multi_turn"] | None = None

    def load(self) -> PromptTemplate:
        """The template (mode overridden when given); :class:`ConfigError` as :func:`load_prompt`."""
        return load_prompt(self.name, mode=self.mode)


class TemplateSettings(BaseModel):
    """How each test image's template is chosen (:func:`vlmad.coi.templates.select_templates`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: str = "random"
    pool_splits: tuple[str, ...] = ("train",)
    fixed: dict[str, str] | None = None

    @field_validator("strategy")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in STRATEGIES:
            raise ValueError(f"{v!r} is not one of {', '.join(STRATEGIES)}")
        return v


class GenerationSettings(BaseModel):
    """Decoding settings, the same for every model: ``temperature`` 0 = greedy; ``max_tokens`` per reply
    (per step in multi-turn mode); ``top_p`` (None: the server's / 1.0). The run's ``seed`` is sent too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(1024, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)

    def api_params(self, seed: int | None) -> dict[str, Any]:
        """The request parameters for an OpenAI-compatible server."""
        out: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if seed is not None:
            out["seed"] = seed
        return out


class RetrySettings(BaseModel):
    """:class:`vlmad.api.client.RetryPolicy` fields: attempts per request, exponential backoff with jitter,
    and ``total_retry_budget`` (retries allowed across one model's whole run; None = unbounded)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(5, ge=1)
    base_delay: float = Field(0.5, ge=0)
    max_delay: float = Field(30.0, ge=0)
    jitter: float = Field(0.5, ge=0, le=1)
    total_retry_budget: int | None = Field(200, ge=0)


class CoiRecipe(BaseModel):
    """A chain-of-image run: models x prompts x test images, and everything that decides the answers.

    - ``name``: a label for the run; ``dataset``: a dataset folder or manifest (``None``: give
      ``--dataset``); ``split``: the images judged (default ``test``); ``categories``: only these;
      ``per_label``: at most this many images per (category, label), in manifest order (quick runs).
    - ``models`` (:class:`ModelSpec`) and ``prompts`` (names/paths, or ``{name, mode}``).
    - ``templates`` (:class:`TemplateSettings`), ``max_side`` (longest image side given to every backend),
      ``generation`` (:class:`GenerationSettings`), ``retry`` (:class:`RetrySettings`, per API model),
      ``seed`` (template choice and generation).
    - ``cache``: the response cache file (SQLite); ``None`` = ``<out>/cache.sqlite``; ``False`` = no cache.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "coi"
    dataset: str | None = None
    split: str = "test"
    categories: tuple[str, ...] | None = None
    per_label: int | None = Field(None, ge=1)
    models: tuple[ModelSpec, ...] = Field(min_length=1)
    prompts: tuple[PromptRef, ...] = Field(min_length=1)
    templates: TemplateSettings = TemplateSettings()
    max_side: int | None = Field(1024, ge=1)
    generation: GenerationSettings = GenerationSettings()
    retry: RetrySettings = RetrySettings()
    seed: int = 0
    cache: str | bool | None = None

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompt_refs(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if isinstance(v, list | tuple):
            return [{"name": p} if isinstance(p, str) else p for p in v]
        return v

    @field_validator("categories", mode="before")
    @classmethod
    def _csv(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _unique_runs(self) -> CoiRecipe:
        names = [m.display_name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models share the name {dupes[0]!r}: give each a distinct 'name'")
        refs = [(p.name, p.mode) for p in self.prompts]
        if len(set(refs)) != len(refs):
            raise ValueError("a prompt is listed twice")
        for p in self.prompts:
            if p.mode is not None and p.mode not in MODES:
                raise ValueError(f"prompt mode {p.mode!r} is not one of {', '.join(MODES)}")
        return self

    def load_prompts(self) -> list[PromptTemplate]:
        """The prompt templates, in recipe order (:class:`ConfigError` for an unknown or bad one)."""
        return [p.load() for p in self.prompts]


def make_recipe(source: str = "options", **values: Any) -> CoiRecipe:
    """Validate recipe fields; errors become one-line :class:`ConfigError` messages naming ``source`` and
    the field."""
    from vlmad.recipes import validate_settings

    return validate_settings(CoiRecipe, values, source)


def load_recipe(path: str | Path, **overrides: Any) -> CoiRecipe:
    """Read a recipe (YAML with a ``coi:`` mapping of :class:`CoiRecipe` fields).

    ``overrides`` whose value is not ``None`` replace the recipe's fields. Raises :class:`ConfigError`
    naming the file and the field for a missing file, bad YAML or an invalid value.
    """
    from vlmad.recipes import read_recipe

    values = read_recipe(path, "coi", "a chain-of-image recipe (see eval/README.md)", overrides)
    return make_recipe(str(path), **values)
