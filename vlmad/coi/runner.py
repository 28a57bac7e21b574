"""The chain-of-image runner: models x prompts x test images -> one :class:`~vlmad.records.Prediction` each.

:func:`run_coi` takes a :class:`~vlmad.coi.recipe.CoiRecipe` and an output folder and writes there:

- ``predictions.jsonl``: one prediction per (run, image), appended and flushed as each answer arrives
  (:class:`vlmad.data.predictions.PredictionWriter`). ``run_id`` is ``<model name>/<prompt name>``
  (``-<mode>`` appended when the recipe overrides the prompt's mode), e.g. ``tiny-llava+lora/coi_p2``.
- ``run.json``: everything that decides the answers (per run: the backend and model, adapter, revision or
  content fingerprint, prompt name / version / hash / mode, generation parameters; the template strategy,
  image size limit, seed, dataset), then the summary once the run ends; ``summary.json``: the summary.
- ``cache.sqlite`` (unless the recipe names another cache, or none): the response cache.

Resume: a run killed at any moment is resumed by running it again with the same output folder: items
already in ``predictions.jsonl`` are skipped, a torn last line is dropped, so the final file holds every
item exactly once (an item is written only after its answer is complete). Predictions made with other
settings under the same run id are refused (:class:`ConfigError`): use a new output folder.

Cache: every answer is stored under a key made of everything that decides it (the test and template image
bytes, the image size limit and ``detail``, the prompt version, hash and rendered text, the model identity,
the generation parameters and seed), so a changed prompt never reuses an old answer and an unchanged one is
never paid for twice, in this output folder or any other sharing the cache. Failed requests are not cached.

Prediction records: ``verdict`` and ``explanation`` are parsed from the final step's reply
(:func:`vlmad.coi.parse.parse_verdict`; the explanation is model text: untrusted, escape it); ``score``
is the local backend's P(anomalous) (``None`` for API backends). An item that could not be answered (the
server gave up after retries, malformed replies, timeouts, a refusal, an empty reply) is still written:
verdict ``unparsed`` (so it counts as wrong) and ``metadata["status"]`` / ``metadata["error"]`` saying
why. ``metadata`` keys: ``status`` (``answered``, ``unparsed``: a reply without a readable verdict,
``empty``, ``refused``, ``failed``), ``error`` / ``error_kind``, ``raw`` (the final reply), ``steps``
(each step's reply; multi-turn prompts only), ``matched`` (what decided the verdict), ``template_sample_id``
/ ``template_strategy`` / ``template_similarity``, ``images`` (``test`` / ``template``: sha256, original
and sent size), ``max_side``, ``backend``, ``model_name``, ``model``, ``served_model`` (API: the snapshot
the server reports), ``random_vlm``, ``prompt`` / ``prompt_version`` / ``prompt_hash`` / ``prompt_mode``,
``params``, ``seed``, ``finish_reason``, ``refusal``, ``usage`` (prompt / completion tokens),
``cost_usd``, ``attempts``, ``latency_s``, ``cached``, ``cache_key``, ``run_fingerprint``; API models
also ``base_url`` (without credentials) and ``detail``; local models ``adapter``, ``revision``,
``model_fingerprint`` / ``adapter_fingerprint`` (content hashes of the folders) and ``answer_mass``.
:data:`VOLATILE_METADATA` lists the keys that may differ between two runs that made the same predictions
(timings, cache provenance). A cached answer is recorded as it was made (its tokens, cost and attempts),
with ``cached`` true; the summary counts only what this session sent.

The API key is never written: it is read from the environment by the client only, every server text and
error is scrubbed of it, and the cache refuses any value holding it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmad.coi.backends import LocalBackend, LocalItem, OpenAIBackend, Outcome, canonical, make_backend
from vlmad.coi.parse import parse_verdict
from vlmad.coi.prompts import PromptTemplate
from vlmad.coi.recipe import CoiRecipe, ModelSpec, PromptRef
from vlmad.coi.templates import TemplateChoice, select_templates
from vlmad.errors import ConfigError
from vlmad.records import Manifest, Prediction, Sample

if TYPE_CHECKING:
    from vlmad.api.cache import ResponseCache

__all__ = [
    "PREDICTIONS_FILE",
    "VOLATILE_METADATA",
    "CoiRunSummary",
    "RunProgress",
    "run_coi",
    "run_id_for",
    "select_samples",
]

PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.json"
CACHE_FILE = "cache.sqlite"
#: Metadata keys that may differ between runs making the same predictions (timings, cache provenance).
VOLATILE_METADATA: tuple[str, ...] = ("latency_s", "cached")
STATUSES: tuple[str, ...] = ("answered", "unparsed", "empty", "refused", "failed")


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands: ``done`` of ``total`` items this session (cached ones included), ``failed``
    (status ``failed`` / ``refused`` / ``empty``), ``cached``, the ``model`` being run and seconds since
    the start. ``rate`` is items per second."""

    done: int
    total: int
    failed: int
    cached: int
    model: str
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class CoiRunSummary:
    """What :func:`run_coi` did.

    ``n_items``: (run, image) items of the recipe; ``skipped``: already in the predictions file;
    ``written``: written this session, of which ``cached`` came from the cache; ``status``: counts per
    ``metadata["status"]`` of the written ones; ``requests``: API requests sent (retries included);
    ``retries``; ``prompt_tokens`` / ``completion_tokens`` / ``cost_usd`` of what was sent this session
    (``cost_usd`` ``None`` when a model has no known price); ``wall_s``; ``per_run``: per run id the counts
    of the whole predictions file by status; ``warnings`` (e.g. TINY RANDOM models).
    """

    out: Path
    predictions: Path
    n_items: int = 0
    skipped: int = 0
    written: int = 0
    cached: int = 0
    status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    wall_s: float = 0.0
    per_run: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """Items written this session that got no usable reply (failed, refused or empty)."""
        return self.status["failed"] + self.status["refused"] + self.status["empty"]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out"], d["predictions"] = str(self.out), str(self.predictions)
        d["failed"] = self.failed
        return d


@dataclass
class _Plan:
    """One item: a run (model x prompt) on one test image."""

    run_id: str
    sample: Sample
    template: Sample
    choice: TemplateChoice
    prompt: PromptTemplate
    turns: tuple[str, ...]
    labels: tuple[str, str]
    key: str = ""  # filled in by the lookup (it needs the image bytes)
    images: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Run:
    """The settings shared by the items of one run id."""

    run_id: str
    prompt: PromptTemplate
    meta: dict[str, Any]
    fingerprint: str
    identity: dict[str, Any]


# ------------------------------------------------------------------------------------------------ helpers
def select_samples(
    manifest: Manifest,
    *,
    split: str = "test",
    categories: Sequence[str] | None = None,
    per_label: int | None = None,
) -> list[Sample]:
    """The images a run judges: ``split``, only ``categories`` when given, at most ``per_label`` per
    (category, label) in manifest order. :class:`ConfigError` for an unknown category or no image."""
    if categories:
        unknown = [c for c in categories if c not in manifest.categories]
        if unknown:
            raise ConfigError(
                f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; the dataset "
                f"has {', '.join(manifest.categories)}"
            )
    counts: dict[tuple[str, str], int] = {}
    out = []
    for s in manifest:
        if s.split != split or (categories and s.category not in categories):
            continue
        n = counts.get((s.category, s.label), 0)
        if per_label is not None and n >= per_label:
            continue
        counts[(s.category, s.label)] = n + 1
        out.append(s)
    if not out:
        raise ConfigError(f"no {split!r} image to judge in the dataset (categories: {categories or 'all'})")
    return out


def run_id_for(spec: ModelSpec, ref: PromptRef, prompt: PromptTemplate) -> str:
    """``<model name>/<prompt name>``, with ``-<mode>`` when the recipe overrides the prompt's mode."""
    suffix = f"-{ref.mode}" if ref.mode is not None else ""
    return f"{spec.display_name}/{prompt.name}{suffix}"


def _sha16(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode("utf-8")).hexdigest()[:16]


class _ImageInfos:
    """:func:`vlmad.api.images.image_info` per file, computed once (thread-safe)."""

    def __init__(self, max_side: int | None) -> None:
        self.max_side = max_side
        self.memo: dict[Path, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def __call__(self, path: Path) -> dict[str, Any]:
        from vlmad.api.images import image_info

        with self.lock:
            if path in self.memo:
                return self.memo[path]
        info = image_info(path, max_side=self.max_side)
        with self.lock:
            self.memo[path] = info
        return info


class _Lookup:
    """Completes a plan (image records, cache key) and finds its answer in the cache; thread-safe, so
    API runs do it in worker threads ahead of the requests."""

    def __init__(self, runs: dict[str, _Run], recipe: CoiRecipe, cache: ResponseCache | None) -> None:
        self.runs, self.recipe, self.cache = runs, recipe, cache
        self.infos = _ImageInfos(recipe.max_side)

    def __call__(self, plan: _Plan) -> Outcome | None:
        """The cached outcome of ``plan`` or ``None``; :class:`~vlmad.errors.DatasetError` for an image
        that cannot be read."""
        from vlmad.api.cache import cache_key

        run = self.runs[plan.run_id]
        plan.images = {
            "test": self.infos(plan.sample.image_path),
            "template": self.infos(plan.template.image_path),
        }
        plan.key = cache_key(
            purpose="coi",
            identity=run.identity,
            prompt_version=run.prompt.version,
            prompt_hash=run.meta["prompt_hash"],
            text_sha256=_sha16([plan.turns, plan.labels]),
            test_sha256=plan.images["test"]["sha256"],
            template_sha256=plan.images["template"]["sha256"],
            max_side=self.recipe.max_side,
            detail=run.meta.get("detail"),
            params=run.meta["params"],
        )
        hit = self.cache.get(plan.key) if self.cache is not None else None
        if hit is None:
            return None
        try:
            return Outcome.from_cache(hit)
        except (TypeError, ValueError):
            return None  # an unreadable entry: ask again


class _Parts:
    """Prepared images for a backend (thread-safe): template images, shared by many items, are kept (up to
    256); test images are kept while recent (the items of one image under several prompts run together)."""

    def __init__(self, max_side: int | None, detail: str | None, recent: int = 64) -> None:
        self.max_side, self.detail, self.recent = max_side, detail, recent
        self.templates: dict[Path, Any] = {}
        self.tests: OrderedDict[Path, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: Path, *, template: bool) -> Any:
        from vlmad.api.images import image_content, prepare_image

        memo = self.templates if template else self.tests
        with self.lock:
            if path in memo:
                return memo[path]
        if self.detail is None:  # local: the PIL image
            value = prepare_image(path, max_side=self.max_side)[0]
        else:
            value = image_content(path, max_side=self.max_side, detail=self.detail)[0]
        with self.lock:
            if template:
                if len(self.templates) >= 256:
                    self.templates.clear()
                self.templates[path] = value
            else:
                self.tests[path] = value
                while len(self.tests) > self.recent:
                    self.tests.popitem(last=False)
        return value


class _Store:
    """The predictions file: one writer per run id (all appending to one file), existing records."""

    def __init__(self, path: Path, run_ids: Sequence[str], retry_failed: bool) -> None:
        from vlmad.data.predictions import PredictionWriter, read_predictions, write_predictions

        self.path = path
        self.dropped_partial_line = False
        if path.exists():
            PredictionWriter(path, run_ids[0]).close()  # drops a torn last line
            if retry_failed:
                kept = [p for p in read_predictions(path) if p.metadata.get("status") != "failed"]
                write_predictions(path, kept)
        self.writers = {}
        for rid in run_ids:
            self.writers[rid] = PredictionWriter(path, rid)
            self.dropped_partial_line |= self.writers[rid].dropped_partial_line
        self.existing = read_predictions(path) if path.stat().st_size else []

    def done(self, run_id: str) -> set[tuple[str, str | None]]:
        return self.writers[run_id].done

    def write(self, pred: Prediction) -> None:
        self.writers[pred.run_id].write(pred)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _check_resume(store: _Store, runs: dict[str, _Run]) -> None:
    for p in store.existing:
        run = runs.get(p.run_id)
        if run is not None and p.metadata.get("run_fingerprint") != run.fingerprint:
            raise ConfigError(
                f"{store.path}: run {p.run_id!r} already holds predictions made with other settings (model, "
                "prompt, generation, templates or image size differ); write this run to a new output folder"
            )


def _status(outcome: Outcome) -> tuple[str, Any]:
    """``(status, parsed answer or None)``."""
    if not outcome.ok:
        return ("refused" if outcome.error_kind == "refusal" else "failed"), None
    final = outcome.steps[-1] if outcome.steps else ""
    if not final.strip():
        return "empty", None
    parsed = parse_verdict(final)
    return ("answered" if parsed.verdict != "unparsed" else "unparsed"), parsed


def _prediction(plan: _Plan, run: _Run, outcome: Outcome) -> Prediction:
    status, parsed = _status(outcome)
    meta: dict[str, Any] = {"status": status}
    error = outcome.error
    if status == "empty":
        error = "the model gave an empty reply"
    if error is not None:
        meta["error"] = error
        meta["error_kind"] = outcome.error_kind or status
    meta["raw"] = outcome.steps[-1] if outcome.steps else None
    if plan.prompt.mode == "multi_turn":
        meta["steps"] = list(outcome.steps)
    if parsed is not None:
        meta["matched"] = parsed.matched
    if outcome.refusal:
        meta["refusal"] = outcome.refusal
    meta.update(plan.choice.to_metadata())
    meta["images"] = plan.images
    meta.update(run.meta)
    meta.update(
        served_model=outcome.served_model,
        finish_reason=outcome.finish_reason,
        usage={"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens},
        cost_usd=outcome.cost_usd,
        attempts=outcome.attempts,
        latency_s=round(outcome.latency_s, 4),
        cached=outcome.cached,
        cache_key=plan.key,
        run_fingerprint=run.fingerprint,
    )
    if outcome.answer_mass is not None:
        meta["answer_mass"] = outcome.answer_mass
    return Prediction(
        sample_id=plan.sample.id,
        run_id=plan.run_id,
        score=outcome.score,
        verdict=parsed.verdict if parsed is not None else "unparsed",
        explanation=parsed.explanation if parsed is not None else None,
        metadata=meta,
    )


# ------------------------------------------------------------------------------------------------ drivers
def _run_api(
    backend: OpenAIBackend,
    plans: Iterable[_Plan],
    handle: Callable[[_Plan, Outcome], None],
    lookup: _Lookup,
) -> None:
    """Send ``plans`` ``backend.concurrency`` at a time; ``handle`` each outcome as it arrives, in this
    thread. Worker threads a little ahead of the requests hash the images, look the answer up in the cache
    and encode the images (a cached answer is handled without a request)."""
    parts = _Parts(lookup.recipe.max_side, backend.detail)
    window = 2 * backend.concurrency
    pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="vlmad-coi-img")

    def prepare(plan: _Plan) -> tuple[Outcome | None, list[dict[str, Any]] | None]:
        hit = lookup(plan)
        if hit is not None:
            return hit, None
        content: list[dict[str, Any]] = []
        for part in plan.prompt.first_turn_content(plan.sample.category):
            if part["type"] == "image":
                template = part["role"] == "template"
                path = plan.template.image_path if template else plan.sample.image_path
                content.append(parts.get(path, template=template))
            else:
                content.append({"type": "text", "text": part["text"]})
        return None, content

    async def one(plan: _Plan, future: Future[Any]) -> tuple[_Plan, Outcome]:
        from vlmad.errors import VlmadError

        try:
            hit, content = await asyncio.wrap_future(future)
        except VlmadError as exc:  # an image that cannot be read: this item fails, the run goes on
            return plan, Outcome(error=str(exc), error_kind="image")
        if hit is not None:
            return plan, hit
        return plan, await backend.answer(content, plan.turns)

    async def main() -> None:
        todo: Iterator[_Plan] = iter(plans)
        ahead: deque[tuple[_Plan, Future[Any]]] = deque()
        pending: set[asyncio.Task[tuple[_Plan, Outcome]]] = set()

        def refill() -> None:
            while len(ahead) < window and (nxt := next(todo, None)) is not None:
                ahead.append((nxt, pool.submit(prepare, nxt)))

        def start() -> None:
            refill()
            while len(pending) < backend.concurrency and ahead:
                plan, future = ahead.popleft()
                pending.add(asyncio.ensure_future(one(plan, future)))
                refill()

        try:
            start()
            while pending:
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                start()  # the freed slots get their next requests before the results are stored
                for task in finished:
                    handle(*task.result())
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            await backend.aclose()

    try:
        asyncio.run(main())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_local(
    backend: LocalBackend,
    plans: Iterable[_Plan],
    handle: Callable[[_Plan, Outcome], None],
    lookup: _Lookup,
    on_load: Callable[[], None],
) -> None:
    """Answer ``plans`` (grouped by run id) in batches of ``backend.concurrency``; cached answers are
    handled without the model, which loads (``on_load`` is called then) only when something is left."""
    from vlmad.errors import VlmadError

    parts = _Parts(lookup.recipe.max_side, None)
    size = backend.concurrency
    loaded = False

    def flush(batch: list[_Plan]) -> None:
        nonlocal loaded
        if not batch:
            return
        if not loaded:
            backend.load()
            on_load()
            loaded = True
        items = [
            LocalItem(
                p.turns,
                p.labels,
                {
                    "template": parts.get(p.template.image_path, template=True),
                    "test": parts.get(p.sample.image_path, template=False),
                },
            )
            for p in batch
        ]
        for p, outcome in zip(batch, backend.answer_batch(items), strict=True):
            handle(p, outcome)
        batch.clear()

    batch: list[_Plan] = []
    for plan in plans:
        if batch and batch[0].run_id != plan.run_id:
            flush(batch)
        try:
            hit = lookup(plan)
        except VlmadError as exc:
            handle(plan, Outcome(error=str(exc), error_kind="image"))
            continue
        if hit is not None:
            handle(plan, hit)
            continue
        batch.append(plan)
        if len(batch) >= size:
            flush(batch)
    flush(batch)


# ------------------------------------------------------------------------------------------------ the run
def _run_meta(
    backend: OpenAIBackend | LocalBackend,
    recipe: CoiRecipe,
    prompt: PromptTemplate,
    params: dict[str, Any],
) -> dict[str, Any]:
    spec = backend.spec
    meta: dict[str, Any] = {"backend": backend.kind, "model_name": spec.display_name}
    if isinstance(backend, OpenAIBackend):
        meta.update(model=spec.model, base_url=backend.describe()["base_url"], detail=backend.detail)
        meta["random_vlm"] = False
    else:
        ident = backend.identity()
        meta.update(
            model=backend.source,
            adapter=backend.adapter,
            revision=spec.revision,
            model_fingerprint=ident["model"].get("fingerprint"),
            adapter_fingerprint=ident["adapter"],
            random_vlm=_is_random(backend.source),
        )
    meta.update(
        prompt=prompt.name,
        prompt_version=prompt.version,
        prompt_hash=prompt.prompt_hash(),
        prompt_mode=prompt.mode,
        params=params,
        seed=recipe.seed,
        max_side=recipe.max_side,
    )
    return meta


def _is_random(source: str) -> bool:
    from vlmad.vlm.base import RANDOM_MARK

    cfg = Path(source).expanduser() / "config.json"
    try:
        return RANDOM_MARK in json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _open_cache(recipe: CoiRecipe, out: Path, cache: ResponseCache | None) -> tuple[Any, bool]:
    """``(cache or None, whether this function opened it)``."""
    if cache is not None:
        return cache, False
    if recipe.cache is False:
        return None, False
    from vlmad.api.cache import ResponseCache

    path = out / CACHE_FILE if recipe.cache in (None, True) else Path(str(recipe.cache)).expanduser()
    return ResponseCache(path), True


def run_coi(
    recipe: CoiRecipe,
    out: str | Path,
    *,
    manifest: Manifest | None = None,
    dataset: str | Path | None = None,
    cache: ResponseCache | None = None,
    progress: Callable[[RunProgress], None] | None = None,
    on_result: Callable[[Prediction], None] | None = None,
    retry_failed: bool = False,
) -> CoiRunSummary:
    """Run ``recipe`` into the folder ``out`` (see the module docstring for what is written); resumes
    what an earlier run with the same folder left.

    - ``manifest`` / ``dataset``: the images (default: the recipe's ``dataset``, read with
      :func:`vlmad.data.read_dataset`).
    - ``cache``: an open :class:`~vlmad.api.cache.ResponseCache` to use instead of the recipe's.
    - ``progress(RunProgress)`` after each item is written; ``on_result(prediction)`` right after it is
      written (an exception from either stops the run; what was written stays, and a rerun resumes).
    - ``retry_failed``: items recorded as ``failed`` (no reply after the retries) are sent again.

    Models run one after another; API requests of one model go ``concurrency`` at a time, local models
    answer ``batch_size`` images per batch. Raises :class:`ConfigError` for a bad recipe, an unknown
    prompt, category or template, or an output folder holding predictions of other settings;
    :class:`vlmad.api.errors.APIError` (kind ``auth``) at the first authentication failure (every other
    request would fail the same way); :class:`~vlmad.errors.DatasetError` for unreadable data.
    """
    from vlmad import __version__
    from vlmad.api.errors import APIError
    from vlmad.data.maps import write_run_record

    started = time.perf_counter()
    out = Path(out)
    source = None  # what the dataset was read from, when it was read here
    if manifest is None:
        source = dataset if dataset is not None else recipe.dataset
        if source is None:
            raise ConfigError("no dataset: give the recipe a 'dataset' or pass --dataset")
        from vlmad.data import read_dataset

        manifest = read_dataset(source)
    samples = select_samples(
        manifest, split=recipe.split, categories=recipe.categories, per_label=recipe.per_label
    )
    prompts = recipe.load_prompts()
    t = recipe.templates
    choices = select_templates(
        manifest, samples, strategy=t.strategy, seed=recipe.seed, pool_splits=t.pool_splits, fixed=t.fixed
    )
    out.mkdir(parents=True, exist_ok=True)
    summary = CoiRunSummary(out=out, predictions=out / PREDICTIONS_FILE)

    backends = [
        make_backend(
            spec,
            generation=recipe.generation,
            retry=recipe.retry,
            seed=recipe.seed,
            models_dir=out / "models",
        )
        for spec in recipe.models
    ]
    runs: dict[str, _Run] = {}
    run_backend: dict[str, OpenAIBackend | LocalBackend] = {}
    for backend in backends:
        params = backend.params if isinstance(backend, OpenAIBackend) else backend.local_params()
        for ref, prompt in zip(recipe.prompts, prompts, strict=True):
            rid = run_id_for(backend.spec, ref, prompt)
            if rid in runs:
                raise ConfigError(f"two prompts of the recipe make the same run id {rid!r}; rename one")
            meta = _run_meta(backend, recipe, prompt, params)
            fingerprint = _sha16(
                {
                    "identity": backend.identity(),
                    "prompt": [prompt.version, prompt.prompt_hash()],
                    "params": params,
                    "templates": t.model_dump(mode="json"),
                    "seed": recipe.seed,
                    "max_side": recipe.max_side,
                    "detail": meta.get("detail"),
                    "split": recipe.split,
                }
            )
            runs[rid] = _Run(rid, prompt, meta, fingerprint, backend.identity())
            run_backend[rid] = backend

    record: dict[str, Any] = {
        "kind": "coi",
        "vlmad": __version__,
        "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "recipe": recipe.model_dump(mode="json"),
        "dataset": {
            "source": None if source is None else str(Path(source).resolve()),
            "root": str(manifest.info.root),
            "name": manifest.info.name,
            "n_images": len(samples),
        },
        "runs": {
            rid: {
                "model": run.meta,
                "prompt": {**run.prompt.to_dict(), "hash": run.prompt.prompt_hash()},
                "run_fingerprint": run.fingerprint,
            }
            for rid, run in runs.items()
        },
    }
    for backend in backends:
        if isinstance(backend, LocalBackend) and _is_random(backend.source):
            summary.warnings.append(
                f"TINY RANDOM VLM: {backend.spec.display_name} ({backend.source}) is a tiny randomly "
                "initialised model; its answers and scores show that the pipeline runs, not how well it "
                "detects anomalies"
            )
    record["warnings"] = summary.warnings
    write_run_record(out, record)

    store = _Store(summary.predictions, list(runs), retry_failed)
    response_cache, own_cache = _open_cache(recipe, out, cache)
    try:
        _check_resume(store, runs)
        lookup = _Lookup(runs, recipe, response_cache)
        todo: dict[int, list[tuple[str, Sample]]] = {}  # backend index -> items left, image-major
        for i, backend in enumerate(backends):
            mine = [rid for rid in runs if run_backend[rid] is backend]
            todo[i] = []
            for s in samples:
                for rid in mine:
                    summary.n_items += 1
                    if (s.id, None) in store.done(rid):
                        summary.skipped += 1
                    else:
                        todo[i].append((rid, s))

        def plans_of(i: int, *, by_run: bool) -> Iterator[_Plan]:
            """The plans of backend ``i``, made as they are needed (image-major, or run-major)."""
            items = todo[i]
            if by_run:
                order = {rid: k for k, rid in enumerate(runs)}
                items = sorted(items, key=lambda item: order[item[0]])  # stable: images keep their order
            for rid, s in items:
                run = runs[rid]
                choice = choices[s.id]
                yield _Plan(
                    rid,
                    s,
                    manifest.get(choice.template_id),
                    choice,
                    run.prompt,
                    tuple(run.prompt.turns(s.category)),
                    run.prompt.image_labels(s.category),
                )

        total = summary.n_items - summary.skipped
        state = {"done": 0, "failed": 0, "model": ""}

        def handle(plan: _Plan, outcome: Outcome) -> None:
            if outcome.error_kind == "auth":
                raise APIError(outcome.error or "authentication failed", kind="auth")
            if outcome.ok and not outcome.cached and response_cache is not None:
                response_cache.put(plan.key, outcome.to_cache())
            pred = _prediction(plan, runs[plan.run_id], outcome)
            store.write(pred)
            status = pred.metadata["status"]
            summary.written += 1
            summary.status[status] += 1
            if outcome.cached:
                summary.cached += 1
            else:
                summary.prompt_tokens += outcome.prompt_tokens
                summary.completion_tokens += outcome.completion_tokens
                if isinstance(run_backend[plan.run_id], OpenAIBackend):
                    summary.requests += outcome.attempts
                    summary.retries += max(0, outcome.attempts - 1)
                    if outcome.cost_usd is not None and summary.cost_usd is not None:
                        summary.cost_usd += outcome.cost_usd
                    elif outcome.prompt_tokens + outcome.completion_tokens:
                        summary.cost_usd = None  # tokens spent at an unknown price
            state["done"] += 1
            if status in ("failed", "refused", "empty"):
                state["failed"] += 1
            if on_result is not None:
                on_result(pred)
            if progress is not None:
                progress(
                    RunProgress(
                        state["done"],
                        total,
                        state["failed"],
                        summary.cached,
                        str(state["model"]),
                        time.perf_counter() - started,
                    )
                )

        for i, backend in enumerate(backends):
            state["model"] = backend.spec.display_name
            if not todo[i]:
                continue
            if isinstance(backend, OpenAIBackend):
                _run_api(backend, plans_of(i, by_run=False), handle, lookup)
            else:

                def on_load(backend: LocalBackend = backend) -> None:
                    loaded = backend.describe()
                    for rid in runs:
                        if run_backend[rid] is backend:
                            record["runs"][rid]["loaded"] = loaded

                _run_local(backend, plans_of(i, by_run=True), handle, lookup, on_load)
    finally:
        store.close()
        for backend in backends:
            backend.close()
        if own_cache and response_cache is not None:
            response_cache.close()

    from vlmad.data.predictions import read_predictions

    for p in read_predictions(summary.predictions):
        if p.run_id in runs:
            counts = summary.per_run.setdefault(p.run_id, dict.fromkeys(STATUSES, 0))
            counts[str(p.metadata.get("status", "answered"))] += 1
    summary.wall_s = time.perf_counter() - started
    record["summary"] = summary.to_dict()
    record["finished_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    write_run_record(out, record)
    (out / SUMMARY_FILE).write_text(json.dumps(summary.to_dict(), indent=1) + "\n", encoding="utf-8")
    return summary
