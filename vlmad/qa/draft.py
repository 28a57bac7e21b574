"""Model-drafted QA: ask an OpenAI-compatible model for QA annotations of each image, for a person to review.

Source document 004 (``seeds/004_102cb39b65a4f1cc.txt``) builds its QA-augmented dataset from hand-written
QA and from QA "drafted by GPT and then verified by a person". This module is the drafting half; the
verification is :mod:`vlmad.qa.review`.

For each image the model sees the normal *template* image of the same category, then the *test* image
(both role-labelled in the text), and, when the ground truth is used, the image's label, defect type and
reference description as hints. It replies with one JSON object (verdict, anomaly type, defect type,
explanation and a few QA pairs; the schema is in ``prompts/qa_draft.yaml``). Every QA pair becomes a
:class:`~vlmad.records.QAItem` with ``source="gpt-draft"`` and ``status="draft"``; a reply that cannot be
used becomes one ``status="failed"`` item that keeps the raw text and the reason.

:func:`draft_dataset` is resumable and idempotent:

- a sample that already has a draft (any status, failed included) for this model and prompt version is
  skipped (:meth:`QAStore.has_draft`), so rerunning a finished run sends nothing;
- a sample's items are written in one transaction as soon as its reply arrives, so a run killed at any
  moment resumes with every sample drafted exactly once (no duplicates, nothing lost);
- with a :class:`~vlmad.api.cache.ResponseCache`, a reply already paid for is reused without a request (key:
  image and template sha256, prompt name, version and rendered text, model, generation and image options).

The API key never reaches the store, the cache, a summary or a dry-run listing: replies and error texts are
scrubbed of it before they are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import vlmad
from vlmad.errors import ConfigError
from vlmad.qa.errors import QAError
from vlmad.records import QA_KINDS, DraftInfo, Manifest, QAItem, Sample

if TYPE_CHECKING:
    from vlmad.api.cache import ResponseCache
    from vlmad.api.client import ChatClient, ChatResult
    from vlmad.qa.store import QAStore

DEFAULT_PROMPT_FILE = "qa_draft.yaml"
#: generation parameters sent with every drafting request unless overridden; JSON mode keeps replies parseable
DEFAULT_PARAMS: dict[str, Any] = {
    "temperature": 0.2,
    "max_tokens": 1500,
    "response_format": {"type": "json_object"},
}
#: kinds that need a template image
_TEMPLATE_KINDS = ("template_comparison",)
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)
_ANOMALY_TYPES = ("logical", "structural", "anomaly")


class DraftParseError(QAError, ValueError):
    """A model reply is not a usable draft (not JSON, or not the schema). ``str(err)`` is the reason.

    Subclasses ``ValueError`` too, so callers may catch either.
    """


# ----------------------------------------------------------------------------------------------- prompt
def prompts_dir() -> Path:
    """The repository's ``prompts/`` folder (next to the ``vlmad`` package); ConfigError when missing."""
    path = Path(vlmad.__file__).resolve().parents[1] / "prompts"
    if not path.is_dir():
        raise ConfigError(
            f"{path}: prompts folder not found (vlmad looks for it next to the vlmad package); "
            "pass an explicit prompt file path instead"
        )
    return path


def _fill(text: str, values: Mapping[str, Any]) -> str:
    """Replace ``{name}`` for the names in ``values``; every other brace is kept (JSON examples survive)."""
    return _PLACEHOLDER.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], text)


@dataclass(frozen=True)
class DraftPrompt:
    """The drafting prompt, as read from a YAML file by :func:`load_draft_prompt`.

    ``user`` is the instruction after the two images; ``template_label`` / ``test_label`` introduce the
    images; ``hint_known`` / ``hint_normal`` / ``hint_unknown`` fill ``{defect_hint}``; ``reask`` is the
    follow-up after an unusable reply; ``schema`` the JSON schema shown to the model; ``n_qa`` how many QA
    pairs to ask for. ``version`` must change whenever the text changes (resume check and cache key).
    """

    name: str
    version: str
    system: str
    user: str
    template_label: str = "Template image (a normal {category}, the reference):"
    test_label: str = "Test image:"
    hint_known: str = "The test image is anomalous ({anomaly_type}), defect type {defect_type}: {description}"
    hint_normal: str = "The test image is normal: {description}"
    hint_unknown: str = "No ground truth is given: judge from the images alone."
    reask: str = "Your reply could not be used: {error}. Reply again with only the JSON object."
    schema: dict[str, Any] = field(default_factory=dict)
    n_qa: int = 4
    path: Path | None = None

    def kinds(self, has_template: bool) -> tuple[str, ...]:
        """The QA kinds the model may use: every kind, less ``template_comparison`` without a template."""
        return tuple(k for k in QA_KINDS if has_template or k not in _TEMPLATE_KINDS)

    def defect_hint(self, sample: Sample, *, hints: bool = True) -> str:
        """The ``{defect_hint}`` text for ``sample``: its ground truth as a hint, or ``hint_unknown``."""
        if not hints:
            return self.hint_unknown
        description = _description(sample) or "none given"
        if not sample.is_anomalous:
            return _fill(self.hint_normal, {"description": description, "label": sample.label})
        anomaly_type = sample.label if sample.label in ("logical", "structural") else "unspecified"
        return _fill(
            self.hint_known,
            {
                "label": sample.label,
                "anomaly_type": anomaly_type,
                "defect_type": sample.defect_type or "unknown",
                "description": description,
            },
        )

    def texts(self, sample: Sample, template: Sample | None, *, hints: bool = True) -> dict[str, str]:
        """Rendered texts: ``system``, ``template_label`` ("" without template), ``test_label``, ``user``."""
        category = sample.category.replace("_", " ")
        kinds = self.kinds(template is not None)
        values = {
            "category": category,
            "defect_hint": self.defect_hint(sample, hints=hints),
            "kinds": ", ".join(kinds),
            "n_qa": self.n_qa,
            "schema": json.dumps(self.schema),
        }
        user = _fill(self.user, values)
        if template is None:
            user = "There is no template image: only the test image above is given.\n\n" + user.replace(
                "The two images above", "The image above"
            )
        return {
            "system": _fill(self.system, values),
            "template_label": _fill(self.template_label, values) if template is not None else "",
            "test_label": _fill(self.test_label, values),
            "user": user,
        }

    def render(
        self,
        sample: Sample,
        template: Sample | None,
        *,
        hints: bool = True,
        max_side: int | None = 1024,
        detail: str = "auto",
    ) -> list[dict[str, Any]]:
        """The chat messages for one image: system, then one user message with the template image (when
        given) and the test image, each after its role label, then the instruction.

        Images go through :func:`vlmad.api.images.image_content` (the one preprocessing of every backend).
        """
        from vlmad.api.images import image_content

        texts = self.texts(sample, template, hints=hints)
        tpl = image_content(template.image_path, max_side=max_side, detail=detail)[0] if template else None
        test = image_content(sample.image_path, max_side=max_side, detail=detail)[0]
        return _messages(texts, tpl, test)

    def reask_message(self, error: str) -> dict[str, Any]:
        """The user message sent after an unusable reply."""
        return {"role": "user", "content": _fill(self.reask, {"error": error})}


def _messages(texts: Mapping[str, str], tpl: dict | None, test: dict) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    if tpl is not None:
        content += [{"type": "text", "text": texts["template_label"]}, tpl]
    content += [{"type": "text", "text": texts["test_label"]}, test, {"type": "text", "text": texts["user"]}]
    return [{"role": "system", "content": texts["system"]}, {"role": "user", "content": content}]


def _description(sample: Sample) -> str:
    desc = sample.metadata.get("description")
    if isinstance(desc, str) and desc.strip():
        return desc.strip()
    regions = sample.metadata.get("regions") or []
    parts = [r.get("description", "") for r in regions if isinstance(r, dict)]
    return " ".join(dict.fromkeys(p.strip() for p in parts if isinstance(p, str) and p.strip()))


def load_draft_prompt(path: str | Path | None = None) -> DraftPrompt:
    """Read a drafting prompt YAML (default: ``prompts/qa_draft.yaml`` at the repository root).

    Required fields: ``name``, ``version``, ``system``, ``user`` (which must contain ``{defect_hint}``);
    the others have defaults (see :class:`DraftPrompt`). Raises :class:`ConfigError` naming the file for a
    missing file, bad YAML, a missing or wrongly typed field.
    """
    import yaml

    path = Path(path) if path is not None else prompts_dir() / DEFAULT_PROMPT_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: drafting prompt file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with name, version, system and user")
    known = {f for f in DraftPrompt.__dataclass_fields__ if f != "path"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("name", "version", "system", "user"):
        if key not in data or data[key] is None or isinstance(data[key], (dict, list)):
            raise ConfigError(f"{path}: field {key!r} is missing or not text")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "schema":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: field 'schema' must be a mapping (a JSON schema)")
            values[key] = value
        elif key == "n_qa":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{path}: field 'n_qa' must be a positive integer")
            values[key] = value
        else:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ConfigError(f"{path}: field {key!r} must be text")
            values[key] = str(value)
    if "{defect_hint}" not in values["user"]:
        raise ConfigError(f"{path}: field 'user' must contain the placeholder {{defect_hint}}")
    return DraftPrompt(**values, path=path)


# ----------------------------------------------------------------------------------------------- parsing
def parse_draft(text: str | None, *, kinds: Iterable[str] = QA_KINDS) -> dict[str, Any]:
    """Parse and check one model reply.

    Accepts one JSON object, optionally inside a Markdown code fence. Returns
    ``{"verdict", "anomaly_type", "defect_type", "explanation", "qa": [{"kind", "question", "answer"}]}``
    with ``verdict`` ``normal``/``anomalous`` (case-insensitive in the reply), ``anomaly_type`` one of
    logical/structural/anomaly or ``None`` and ``defect_type`` a string or ``None`` (both forced to ``None``
    for a normal verdict), a string ``explanation`` (non-empty for an anomalous verdict) and at least one QA
    pair whose kind is in ``kinds`` and whose question and answer are non-empty. Extra keys are ignored.
    Raises :class:`DraftParseError` (a ``ValueError``) with the reason.
    """
    if text is None or not text.strip():
        raise DraftParseError("the reply is empty")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced[1].strip()
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise DraftParseError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(data, dict):
        raise DraftParseError(f"expected a JSON object, got {type(data).__name__}")
    verdict = data.get("verdict")
    if not isinstance(verdict, str) or verdict.strip().lower() not in ("normal", "anomalous"):
        raise DraftParseError(f'"verdict" must be "normal" or "anomalous", got {verdict!r}')
    verdict = verdict.strip().lower()
    anomaly_type = _optional_text(data, "anomaly_type")
    defect_type = _optional_text(data, "defect_type")
    if anomaly_type is not None:
        anomaly_type = anomaly_type.lower()
        if anomaly_type in ("none", "null", "n/a"):
            anomaly_type = None
        elif anomaly_type not in _ANOMALY_TYPES:
            raise DraftParseError(f'"anomaly_type" must be one of {", ".join(_ANOMALY_TYPES)} or null')
    if defect_type is not None and defect_type.lower() in ("none", "null", "n/a", "good"):
        defect_type = None
    explanation = data.get("explanation")
    if not isinstance(explanation, str):
        raise DraftParseError('"explanation" must be a string')
    explanation = explanation.strip()
    if verdict == "normal":
        anomaly_type = defect_type = None
    elif not explanation:
        raise DraftParseError('"explanation" is empty for an anomalous verdict')
    qa = data.get("qa")
    if not isinstance(qa, list) or not qa:
        raise DraftParseError('"qa" must be a non-empty list of {"kind", "question", "answer"} objects')
    allowed = tuple(kinds)
    pairs = []
    for i, pair in enumerate(qa):
        if not isinstance(pair, dict):
            raise DraftParseError(f"qa[{i}] is not an object")
        kind = pair.get("kind")
        if not isinstance(kind, str) or kind.strip().lower() not in allowed:
            raise DraftParseError(f"qa[{i}].kind must be one of {', '.join(allowed)}, got {kind!r}")
        q, a = pair.get("question"), pair.get("answer")
        if not isinstance(q, str) or not q.strip() or not isinstance(a, str) or not a.strip():
            raise DraftParseError(f"qa[{i}] needs a non-empty question and answer")
        pairs.append({"kind": kind.strip().lower(), "question": q.strip(), "answer": a.strip()})
    return {
        "verdict": verdict,
        "anomaly_type": anomaly_type,
        "defect_type": defect_type,
        "explanation": explanation,
        "qa": pairs,
    }


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DraftParseError(f'"{key}" must be a string or null')
    return value.strip() or None


# ----------------------------------------------------------------------------------------------- running
@dataclass
class DraftSummary:
    """What a :func:`draft_dataset` run did.

    - ``n_samples``: samples asked for; ``skipped``: already drafted for this model and prompt version;
      ``pending``: the rest (after ``limit``), each ending as cached, drafted or failed.
    - ``cached``: served from the response cache (no request); ``requested``: chat requests sent (first asks
      and re-asks; transport retries are counted in ``retries``, not here); ``reasked``: replies that were
      not usable and were asked once more.
    - ``drafted_samples`` / ``drafted_items``: samples and QA items stored as drafts (cached ones included).
    - ``failed_parse``: still unusable after the re-ask (or refused); ``failed_api``: the request failed
      after the client's retries. Each stored one ``failed`` item.
    - ``prompt_tokens`` / ``completion_tokens`` / ``cost_usd``: spent by this run (cache hits cost nothing);
      ``cost_usd`` is ``None`` when the model has no known price.
    - ``requests``: with ``dry_run``, the requests that would be sent (images summarised as
      ``"<image sha256=... WxH>"``, never base64); else ``None``.
    """

    n_samples: int = 0
    skipped: int = 0
    pending: int = 0
    cached: int = 0
    requested: int = 0
    reasked: int = 0
    drafted_samples: int = 0
    drafted_items: int = 0
    failed_parse: int = 0
    failed_api: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    wall_s: float = 0.0
    dry_run: bool = False
    requests: list[dict[str, Any]] | None = None

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens spent by this run."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def failed(self) -> int:
        """Samples that ended with a failed item."""
        return self.failed_parse + self.failed_api

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field plus ``tokens`` and ``failed``."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["tokens"] = self.tokens
        out["failed"] = self.failed
        return out


@dataclass
class _Plan:
    """One sample to draft: its texts, image hashes and cache key; messages are built when sent."""

    sample: Sample
    template: Sample | None
    texts: dict[str, str]
    kinds: tuple[str, ...]
    image_sha: str
    template_sha: str | None
    key: str
    # filled while running
    first_text: str | None = None
    first_error: str | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    served_model: str | None = None


def draft_dataset(
    store: QAStore,
    manifest: Manifest,
    client: ChatClient,
    *,
    prompt: DraftPrompt | None = None,
    templates: Mapping[str, str] | None = None,
    samples: Iterable[Sample | str] | None = None,
    cache: ResponseCache | None = None,
    params: Mapping[str, Any] | None = None,
    hints: bool = True,
    max_side: int | None = 1024,
    detail: str = "auto",
    retry_failed: bool = False,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int, int], None] | None = None,
) -> DraftSummary:
    """Draft QA for ``samples`` (default: every sample of ``manifest``) with ``client``'s model.

    - ``prompt``: default :func:`load_draft_prompt`. ``templates``: sample id -> id of a normal sample of
      the same category shown first as the reference (e.g. from
      :func:`vlmad.data.templates.choose_templates`); a sample without an entry is sent alone and gets no
      ``template_comparison`` QA. A template that is not a normal sample of the manifest -> ConfigError.
    - ``hints``: put the sample's ground truth (label, defect type, reference description) in the prompt
      as hints. ``params``: generation parameters merged over :data:`DEFAULT_PARAMS` (a ``None`` value
      removes a default, e.g. ``temperature`` for models that refuse it).
      ``max_side`` / ``detail``: image options of :func:`vlmad.api.images.image_content`.
    - A sample that already has a draft for ``client.model`` and ``prompt.version`` is skipped; with
      ``retry_failed`` a sample whose only drafts are failed is drafted again (its failed items stay, as a
      record). ``limit`` caps the samples sent in this run (after skipping).
    - A reply found in ``cache`` is used without a request; a usable reply is put there before its items
      are stored. An unusable reply is asked again once (the reply and the reason are sent back); still
      unusable -> one ``failed`` item with ``draft.raw`` and ``draft.error``. An API failure after the
      client's retries -> one ``failed`` item with the error; the run goes on. An authentication failure
      (kind ``auth``) raises :class:`~vlmad.api.errors.APIError` at once and stores nothing for that sample.
    - Each sample's items are stored in one transaction (``store.add``) as its reply arrives, in the
      calling thread. ``progress(done, pending, failed)`` is called after each sample is finished; an
      exception raised by it (or by the store) stops the run, and what was stored stays stored.
    - Requests go through :meth:`ChatClient.run` (its concurrency and retry policy); images are encoded in
      worker threads just ahead of the requests, so only those requests hold them in memory.
    - ``dry_run``: nothing is sent or stored; the summary lists the requests that would be sent.

    Raises :class:`ConfigError` for an unknown sample or template id; store errors propagate.
    """
    from vlmad.api.cache import cache_key
    from vlmad.api.images import file_sha256

    started = time.perf_counter()
    prompt = prompt if prompt is not None else load_draft_prompt()
    templates = dict(templates or {})
    gen = {k: v for k, v in {**DEFAULT_PARAMS, **(params or {})}.items() if v is not None}
    model = client.model
    secrets = _secrets(client)
    chosen = _resolve_samples(manifest, samples)
    chosen_templates = {s.id: _template_for(manifest, s, templates) for s in chosen}  # checked up front
    summary = DraftSummary(n_samples=len(chosen), dry_run=dry_run)

    # usable drafts only (retry_failed), or any draft, failed included (store.has_draft)
    done_ids = _drafted_ids(store, chosen, model, prompt.version) if retry_failed else None

    def drafted(s: Sample) -> bool:
        if done_ids is not None:
            return s.id in done_ids
        return store.has_draft(s.id, model=model, prompt_version=prompt.version)

    todo = [s for s in chosen if not drafted(s)]
    summary.skipped = len(chosen) - len(todo)
    if limit is not None:
        todo = todo[: max(0, limit)]
    summary.pending = len(todo)

    sha_memo: dict[Path, str] = {}

    def sha(path: Path) -> str:
        if path not in sha_memo:
            sha_memo[path] = file_sha256(path)
        return sha_memo[path]

    image_opts = {"max_side": max_side, "detail": detail}
    plans: list[_Plan] = []
    for s in todo:
        template = chosen_templates[s.id]
        texts = prompt.texts(s, template, hints=hints)
        text_sha = hashlib.sha256(json.dumps(texts, sort_keys=True).encode("utf-8")).hexdigest()
        image_sha = sha(s.image_path)
        template_sha = sha(template.image_path) if template is not None else None
        key = cache_key(
            purpose="qa_draft",
            image_sha256=image_sha,
            template_sha256=template_sha,
            prompt_name=prompt.name,
            prompt_version=prompt.version,
            prompt_text_sha256=text_sha,
            model=model,
            params=gen,
            image_options=image_opts,
        )
        plans.append(
            _Plan(s, template, texts, prompt.kinds(template is not None), image_sha, template_sha, key)
        )

    state = _Run(store, prompt, model, summary, secrets, progress, getattr(client, "price", None))
    state.client_scrub = getattr(client, "scrub", None)

    # cache hits first: no request at all
    to_send: list[_Plan] = []
    for plan in plans:
        hit = cache.get(plan.key) if cache is not None else None
        parsed = _parse_cached(hit, plan.kinds)
        if parsed is None or hit is None:
            to_send.append(plan)
            continue
        if dry_run:
            summary.cached += 1
            continue
        state.store_draft(plan, parsed, cached=True, cached_value=hit)

    if dry_run:
        summary.requests = [_summarise_request(p, model, gen, detail) for p in to_send]
        summary.wall_s = time.perf_counter() - started
        return summary

    reask: list[_Plan] = []

    def first(plan: _Plan, result: ChatResult) -> None:
        state.account(plan, result)
        _raise_if_fatal(result)
        if not result.ok:
            state.store_failed(plan, stage="api", error=f"API error: {result.error}", raw=None)
            return
        if not result.text and result.refusal:
            state.store_failed(plan, stage="refusal", error="the model refused", raw=result.refusal)
            return
        try:
            parsed = parse_draft(result.text, kinds=plan.kinds)
        except DraftParseError as e:
            plan.first_text, plan.first_error = result.text or "", str(e)
            reask.append(plan)
            return
        state.finish_ok(plan, parsed, result.text or "", cache)

    def second(plan: _Plan, result: ChatResult) -> None:
        state.account(plan, result)
        _raise_if_fatal(result)
        if not result.ok:
            error = f"first reply unusable ({plan.first_error}); the re-ask failed: {result.error}"
            state.store_failed(plan, stage="api", error=error, raw=plan.first_text)
            return
        try:
            parsed = parse_draft(result.text, kinds=plan.kinds)
        except DraftParseError as e:
            raw = result.text or result.refusal or ""
            error = f"unusable reply after one re-ask: {e} (first reply: {plan.first_error})"
            state.store_failed(plan, stage="parse", error=error, raw=raw)
            return
        state.finish_ok(plan, parsed, result.text or "", cache)

    def build(plan: _Plan, images: _ImageMemo, again: bool) -> list[dict[str, Any]]:
        messages = _messages(
            plan.texts,
            images.content(plan.template.image_path) if plan.template is not None else None,
            images.content(plan.sample.image_path, keep=False),
        )
        if again:
            messages += [
                {"role": "assistant", "content": state.scrub(plan.first_text) or ""},
                prompt.reask_message(plan.first_error or "unusable reply"),
            ]
        return messages

    def send(batch: Sequence[_Plan], handler: Callable[[_Plan, ChatResult], None], again: bool) -> None:
        images = _ImageMemo(max_side, detail)
        # Images are encoded (decode, resize, PNG, base64: ~0.2 s for a 1600x1100 photo) in worker threads a
        # little ahead of the requests, not in the event loop that waits for replies; ChatClient.run takes
        # the jobs lazily, so only the window ahead plus the requests in flight hold their images.
        window = 2 * int(getattr(client, "concurrency", 8))
        pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="vlmad-images")

        def jobs() -> Iterator[tuple[int, list[dict[str, Any]], dict[str, Any]]]:
            ahead: deque[tuple[int, Future[list[dict[str, Any]]]]] = deque()
            todo = iter(enumerate(batch))
            while True:
                while len(ahead) < window and (nxt := next(todo, None)) is not None:
                    ahead.append((nxt[0], pool.submit(build, nxt[1], images, again)))
                if not ahead:
                    return
                i, future = ahead.popleft()
                messages = future.result()
                summary.requested += 1
                yield i, messages, dict(gen)

        try:
            client.run(jobs(), lambda i, result: handler(batch[i], result))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    send(to_send, first, again=False)
    # Unusable replies are asked again once, after the first pass (ChatClient.run takes a fixed job list).
    # Until then such a sample has nothing stored: a run killed before its re-ask drafts it again on resume.
    if reask:
        summary.reasked = len(reask)
        send(list(reask), second, again=True)

    summary.wall_s = time.perf_counter() - started
    return summary


def draft_requests(
    store: QAStore, manifest: Manifest, client: ChatClient, **options: Any
) -> list[dict[str, Any]]:
    """The requests :func:`draft_dataset` would send with these ``options`` (its dry run): one dict per
    sample with ``sample_id``, ``template_sample_id``, ``cache_key``, ``model``, ``params`` and ``messages``
    (images as ``"<image sha256=... WxH>"``). Sends and stores nothing."""
    options.pop("dry_run", None)
    return draft_dataset(store, manifest, client, dry_run=True, **options).requests or []


def _raise_if_fatal(result: ChatResult) -> None:
    """Stop the run on an authentication failure: every other request would fail the same way, and
    storing failed items would mark the whole dataset as drafted."""
    if result.error is not None and result.error_kind == "auth":
        result.raise_for_error()


class _ImageMemo:
    """Builds image content parts (thread-safe); template images, shared by many samples, are kept once
    built (two threads may both build one the first time: harmless, the parts are equal)."""

    def __init__(self, max_side: int | None, detail: str) -> None:
        self.max_side, self.detail = max_side, detail
        self.memo: dict[Path, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def content(self, path: Path, *, keep: bool = True) -> dict[str, Any]:
        from vlmad.api.images import image_content

        with self.lock:
            if path in self.memo:
                return self.memo[path]
        part = image_content(path, max_side=self.max_side, detail=self.detail)[0]
        if keep:
            with self.lock:
                self.memo[path] = part
        return part


class _Run:
    """The per-run state shared by the result handlers: counts, store writes, scrubbing."""

    def __init__(
        self,
        store: QAStore,
        prompt: DraftPrompt,
        model: str,
        summary: DraftSummary,
        secrets: list[str],
        progress: Callable[[int, int, int], None] | None,
        price: Any,
    ) -> None:
        self.store, self.prompt, self.model, self.summary = store, prompt, model, summary
        self.secrets, self.progress, self.price = secrets, progress, price
        self.client_scrub: Callable[[str], str] | None = None
        self.done = 0

    def scrub(self, text: str | None) -> str | None:
        if text is None:
            return None
        if self.client_scrub is not None:
            text = self.client_scrub(text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def account(self, plan: _Plan, result: ChatResult) -> None:
        from vlmad.api.client import cost_usd

        plan.attempts += result.attempts
        self.summary.retries += max(0, result.attempts - 1)
        plan.prompt_tokens += result.usage.prompt_tokens
        plan.completion_tokens += result.usage.completion_tokens
        self.summary.prompt_tokens += result.usage.prompt_tokens
        self.summary.completion_tokens += result.usage.completion_tokens
        cost = cost_usd(result.model or self.model, result.usage, self.price)
        if cost is not None:
            plan.cost_usd = (plan.cost_usd or 0.0) + cost
            self.summary.cost_usd = (self.summary.cost_usd or 0.0) + cost
        if result.model and result.model != self.model:
            plan.served_model = result.model

    def _info(
        self, plan: _Plan, *, cached: bool, raw: str | None = None, error: str | None = None
    ) -> DraftInfo:
        return DraftInfo(
            model=self.model,
            prompt_name=self.prompt.name,
            prompt_version=self.prompt.version,
            prompt_tokens=plan.prompt_tokens,
            completion_tokens=plan.completion_tokens,
            cost_usd=plan.cost_usd,
            attempts=max(1, plan.attempts),
            cached=cached,
            raw=self.scrub(raw),
            error=self.scrub(error),
        )

    def _metadata(self, plan: _Plan, group: str, **extra: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {"draft_group": group, "cache_key": plan.key, **extra}
        if plan.served_model:
            meta["served_model"] = plan.served_model
        return meta

    def finish_ok(self, plan: _Plan, parsed: dict[str, Any], text: str, cache: ResponseCache | None) -> None:
        text = self.scrub(text) or ""
        value = {
            "text": text,
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": plan.completion_tokens,
            "cost_usd": plan.cost_usd,
            "attempts": plan.attempts,
            "model": plan.served_model or self.model,
        }
        if cache is not None:
            cache.put(plan.key, value)  # before the store: a run killed in between finds it on resume
        self.store_draft(plan, parsed, cached=False, cached_value=None)

    def store_draft(
        self, plan: _Plan, parsed: dict[str, Any], *, cached: bool, cached_value: dict[str, Any] | None
    ) -> None:
        from vlmad.qa.store import new_item_id, now_iso

        if cached and cached_value is not None:
            plan.prompt_tokens = int(cached_value.get("prompt_tokens") or 0)
            plan.completion_tokens = int(cached_value.get("completion_tokens") or 0)
            plan.cost_usd = cached_value.get("cost_usd")
            plan.attempts = int(cached_value.get("attempts") or 1)
        info = self._info(plan, cached=cached)
        group, now, n = new_item_id(), now_iso(), len(parsed["qa"])
        items = [
            QAItem(
                id=new_item_id(),
                sample_id=plan.sample.id,
                category=plan.sample.category,
                kind=pair["kind"],
                question=self.scrub(pair["question"]) or "",
                answer=self.scrub(pair["answer"]) or "",
                verdict=parsed["verdict"],
                anomaly_type=parsed["anomaly_type"],
                defect_type=self.scrub(parsed["defect_type"]),
                explanation=self.scrub(parsed["explanation"]) or "",
                template_sample_id=plan.template.id if plan.template is not None else None,
                source="gpt-draft",
                status="draft",
                author=self.model,
                created_at=now,
                updated_at=now,
                draft=info,
                metadata=self._metadata(plan, group, qa_index=i, qa_count=n),
            )
            for i, pair in enumerate(parsed["qa"])
        ]
        self.store.add(items, who=self.model, action="create")
        if cached:
            self.summary.cached += 1
        self.summary.drafted_samples += 1
        self.summary.drafted_items += len(items)
        self._tick()

    def store_failed(self, plan: _Plan, *, stage: str, error: str, raw: str | None) -> None:
        from vlmad.qa.store import new_item_id, now_iso

        now = now_iso()
        item = QAItem(
            id=new_item_id(),
            sample_id=plan.sample.id,
            category=plan.sample.category,
            kind="detection",
            question="",
            answer="",
            verdict=None,
            template_sample_id=plan.template.id if plan.template is not None else None,
            source="gpt-draft",
            status="failed",
            author=self.model,
            created_at=now,
            updated_at=now,
            draft=self._info(plan, cached=False, raw=raw, error=error),
            metadata=self._metadata(plan, new_item_id(), failed_stage=stage),
        )
        self.store.add([item], who=self.model, action="create")
        if stage == "api":
            self.summary.failed_api += 1
        else:
            self.summary.failed_parse += 1
        self._tick()

    def _tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.summary.pending, self.summary.failed)


def _secrets(client: Any) -> list[str]:
    """Strings that must never be kept: the key in the environment (the client's own key is removed by
    ``client.scrub`` in :meth:`_Run.scrub`)."""
    value = os.environ.get("OPENAI_API_KEY")
    return [value] if isinstance(value, str) and len(value) >= 8 and value != "EMPTY" else []


def _resolve_samples(manifest: Manifest, samples: Iterable[Sample | str] | None) -> list[Sample]:
    if samples is None:
        return list(manifest.samples)
    out: dict[str, Sample] = {}
    for s in samples:
        sid = s if isinstance(s, str) else s.id
        try:
            out[sid] = manifest.get(sid)
        except KeyError:
            raise ConfigError(f"sample {sid!r} is not in the manifest of {manifest.info.root}") from None
    return list(out.values())


def _template_for(manifest: Manifest, sample: Sample, templates: Mapping[str, str]) -> Sample | None:
    tid = templates.get(sample.id)
    if tid is None:
        return None
    try:
        template = manifest.get(tid)
    except KeyError:
        raise ConfigError(f"template {tid!r} of sample {sample.id!r} is not in the manifest") from None
    if template.is_anomalous or template.id == sample.id:
        raise ConfigError(f"template {tid!r} of sample {sample.id!r} must be another, normal image")
    return template


def _drafted_ids(store: QAStore, samples: Sequence[Sample], model: str, version: str) -> set[str]:
    """Ids of samples with a usable (not failed) draft for this model and prompt version."""
    done: set[str] = set()
    ids = [s.id for s in samples]
    for item in store.items(source="gpt-draft", sample_ids=ids):
        d = item.draft
        if item.status != "failed" and d is not None and d.model == model and d.prompt_version == version:
            done.add(item.sample_id)
    return done


def _parse_cached(hit: dict[str, Any] | None, kinds: Sequence[str]) -> dict[str, Any] | None:
    if not hit or not isinstance(hit.get("text"), str):
        return None
    try:
        return parse_draft(hit["text"], kinds=kinds)
    except DraftParseError:
        return None  # a cache entry that no longer parses (schema change) is asked again


def _image_summary(path: Path, sha256: str) -> str:
    from PIL import Image

    with Image.open(path) as im:  # reads the header only
        w, h = im.size
    return f"<image sha256={sha256} {w}x{h}>"


def _summarise_request(plan: _Plan, model: str, params: Mapping[str, Any], detail: str) -> dict[str, Any]:
    tpl = None
    if plan.template is not None and plan.template_sha is not None:
        tpl = {
            "type": "image_url",
            "image_url": {
                "url": _image_summary(plan.template.image_path, plan.template_sha),
                "detail": detail,
            },
        }
    test = {
        "type": "image_url",
        "image_url": {"url": _image_summary(plan.sample.image_path, plan.image_sha), "detail": detail},
    }
    return {
        "sample_id": plan.sample.id,
        "template_sample_id": plan.template.id if plan.template is not None else None,
        "cache_key": plan.key,
        "model": model,
        "params": dict(params),
        "messages": _messages(plan.texts, tpl, test),
    }
