"""An OpenAI-compatible chat client for batch work: bounded concurrency, retries, usage and cost.

Shared by the QA drafter and the chain-of-image runner. The transport is ``openai.AsyncOpenAI`` (imported
when a :class:`ChatClient` is built, never at module import), created with ``max_retries=0``: the retry
loop here replaces openai's own, because batch runs need what openai's built-in retries do not give:

- a per-item attempt count reported on every :class:`ChatResult` (stored with drafts, used in stats);
- a bounded total of retries across a whole run (:attr:`RetryPolicy.total_retry_budget`, shared by every
  request of one client), so an outage or an exhausted quota fails a long run quickly instead of retrying
  every remaining item several times;
- one classification of failures (:data:`vlmad.api.errors.ERROR_KINDS`) whatever the server.

Secrets: the API key is read only from the environment (:func:`api_key_from_env`), held in a private
attribute, sent only in the ``Authorization`` header by openai, and scrubbed from every message this module
builds (:func:`scrub_secret`); it never appears in ``repr``, results, errors or log records.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sized
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from vlmad.api.errors import RETRYABLE_KINDS, APIError
from vlmad.errors import ConfigError

logger = logging.getLogger(__name__)

K = TypeVar("K")

#: Hosts treated as a local OpenAI-compatible server (vLLM, llama.cpp, a test server) that needs no key.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})
#: The key sent to a local server when the environment has none (vLLM's convention).
LOCAL_PLACEHOLDER_KEY = "EMPTY"
_MIN_SECRET_LEN = 4
_MAX_SERVER_MESSAGE = 300


# --------------------------------------------------------------------------------------------------------
# prices


@dataclass(frozen=True)
class Price:
    """US dollars per 1000 tokens of prompt (input) and completion (output)."""

    input_per_1k: float
    output_per_1k: float


# Standard (non-batch, non-cached-input) text token prices from https://openai.com/api/pricing/ as listed
# in 2024-2025: gpt-4o $2.50 / 1M input, $10.00 / 1M output; gpt-4o-mini $0.15 / 1M input, $0.60 / 1M
# output. Prices change: CHECK THEM against the pricing page before trusting any cost figure, and pass
# ``ChatClient(price=Price(...))`` for other models or negotiated rates. Image inputs are billed as input
# tokens and are included in the server's ``prompt_tokens``.
PRICES: dict[str, Price] = {
    "gpt-4o": Price(input_per_1k=0.0025, output_per_1k=0.010),
    "gpt-4o-mini": Price(input_per_1k=0.00015, output_per_1k=0.0006),
}

_DATED = re.compile(r"-\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class Usage:
    """Tokens the server reported for one request (0 when it reported none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def price_for(model: str) -> Price | None:
    """The :data:`PRICES` entry of ``model``; a dated snapshot (``gpt-4o-2024-08-06``) uses its base name."""
    if model in PRICES:
        return PRICES[model]
    return PRICES.get(_DATED.sub("", model))


def cost_usd(model: str, usage: Usage, price: Price | None = None) -> float | None:
    """Cost in US dollars of ``usage`` at ``price`` (default: :func:`price_for` ``model``); ``None`` when
    no price is known for the model."""
    price = price or price_for(model)
    if price is None:
        return None
    return (
        usage.prompt_tokens / 1000 * price.input_per_1k + usage.completion_tokens / 1000 * price.output_per_1k
    )


# --------------------------------------------------------------------------------------------------------
# configuration from the environment


def is_local_url(base_url: str | None) -> bool:
    """Whether ``base_url`` points at this machine (127.0.0.1, localhost, ::1)."""
    if not base_url:
        return False
    return (urlsplit(base_url).hostname or "") in LOCAL_HOSTS


def api_key_from_env(base_url: str | None, env_var: str = "OPENAI_API_KEY") -> str:
    """The API key from environment variable ``env_var``: the only place a key is ever read from.

    A local ``base_url`` (127.0.0.1/localhost) works without one and gets ``"EMPTY"``. Otherwise a missing
    or empty variable -> :class:`APIError` (kind ``auth``) saying which variable to set. Never logs the key.
    """
    key = os.environ.get(env_var, "").strip()
    if key:
        return key
    if is_local_url(base_url):
        return LOCAL_PLACEHOLDER_KEY
    where = base_url or "the OpenAI API"
    raise APIError(
        f"no API key for {where}: set the environment variable {env_var} (keys are never read from "
        "files or arguments)",
        kind="auth",
    )


def base_url_from_env(default: str | None = None) -> str | None:
    """``OPENAI_BASE_URL`` from the environment when set and non-empty, else ``default``."""
    return os.environ.get("OPENAI_BASE_URL", "").strip() or default


def scrub_secret(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***`` (no-op for short/absent secrets)."""
    if secret and len(secret) >= _MIN_SECRET_LEN and secret in text:
        return text.replace(secret, "***")
    return text


class _Secret:
    """A string that never shows itself in ``repr``/``str`` (defence in depth against accidental logging)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


# --------------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried.

    - ``max_attempts``: attempts per request, first one included (>= 1).
    - backoff before retry ``k`` (1-based): ``min(max_delay, base_delay * 2**(k-1))`` scaled by a random
      factor in ``[1 - jitter, 1]``; a server ``Retry-After`` (or ``retry-after-ms``) replaces it, capped by
      ``max_delay``.
    - ``total_retry_budget``: retries allowed across everything one :class:`ChatClient` sends (``None``:
      unbounded). Once spent, every failure is final: an outage fails a long run fast.

    Only rate limits (429), server errors (5xx, 409), timeouts (and 408) and connection errors are retried;
    other 4xx and malformed replies are not. Invalid values -> :class:`ConfigError`.
    """

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.5
    total_retry_budget: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy.max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not (self.base_delay >= 0 and self.max_delay >= 0):
            raise ConfigError("RetryPolicy.base_delay and max_delay must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"RetryPolicy.jitter must be in [0, 1], got {self.jitter!r}")
        budget = self.total_retry_budget
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise ConfigError(
                f"RetryPolicy.total_retry_budget must be None or an integer >= 0, got {budget!r}"
            )

    def backoff(
        self, retry: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``retry`` (1-based), honouring ``retry_after`` when given."""
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        delay = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return delay * (1 - self.jitter * (rng or random).random())


@dataclass(frozen=True, kw_only=True)
class ChatResult:
    """The outcome of one chat request after all its attempts. Never holds the API key.

    - success (``ok``): ``text`` is the message content (``None`` or ``""`` when the model gave none),
      ``refusal`` the model's refusal text if any, ``finish_reason`` as reported. An empty answer or a
      refusal is still a success of the transport: the caller decides what it means.
    - failure: ``error`` is a one-line message, ``error_kind`` one of :data:`vlmad.api.errors.ERROR_KINDS`,
      ``status`` the last HTTP status (``None`` without a reply).
    - ``attempts``: requests sent for this item (1 = no retry); ``latency_s``: wall seconds of the whole
      call including waits between attempts; ``usage``: tokens of the successful attempt; ``model``: the
      model the server reports (the requested one when it reports none).
    """

    text: str | None
    usage: Usage
    attempts: int
    latency_s: float
    finish_reason: str | None
    refusal: str | None = None
    error: str | None = None
    error_kind: str | None = None
    model: str
    status: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def raise_for_error(self) -> None:
        """Raise :class:`APIError` for a failed result; no-op when ``ok``."""
        if self.error is not None:
            raise APIError(self.error, kind=self.error_kind or "bad_response", status=self.status)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (e.g. for :class:`~vlmad.api.cache.ResponseCache`); see :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChatResult:
        fields = dict(data)
        fields["usage"] = Usage(**fields.get("usage") or {})
        return cls(**fields)


@dataclass(frozen=True)
class RunStats:
    """Totals of one :meth:`ChatClient.run`: jobs, successes, failures, retries, tokens, cost, wall time.

    ``cost_usd`` is ``None`` when no price is known for a model that answered.
    """

    n: int
    ok: int
    failed: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    wall_s: float

    @property
    def jobs_per_s(self) -> float:
        return self.n / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class _Failure:
    kind: str
    message: str
    status: int | None = None
    retry_after: float | None = None


@dataclass
class _Resources:
    """What a ChatClient must release: its private loop (for ``run``) and its transport."""

    runner: asyncio.Runner | None = None
    aclient: Any = None
    loop: asyncio.AbstractEventLoop | None = None  # the loop the transport's connections belong to


def _release(res: _Resources) -> None:
    """Close the transport (in its own loop when that is the private one) and the private loop."""
    client, loop, runner = res.aclient, res.loop, res.runner
    res.aclient = res.loop = res.runner = None
    if runner is None:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        try:
            if client is not None and loop is runner.get_loop():
                runner.run(client.close())
        finally:
            runner.close()
    else:  # garbage-collected while another event loop runs in this thread: ours cannot run, just close it
        with contextlib.suppress(Exception):
            runner.get_loop().close()


@dataclass
class _Budget:
    limit: int | None
    used: int = 0
    warned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        with self.lock:
            if self.limit is not None and self.used >= self.limit:
                return False
            self.used += 1
            return True


# --------------------------------------------------------------------------------------------------------
# the client


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date), else ``None``."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _response_type() -> type:
    """The HTTP response class of the installed openai's transport (httpx2 for openai 3, httpx before)."""
    try:
        import httpx2

        return httpx2.Response
    except ImportError:  # openai 1.x / 2.x
        import httpx

        return httpx.Response


def _server_message(body: object) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
    if isinstance(body, str):
        return body
    return ""


def _text_of(content: object) -> str | None:
    """Message content as text: a string, or the text parts of a list of content parts joined."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    raise TypeError(f"message content is a {type(content).__name__}")


class ChatClient:
    """Sends chat completions to OpenAI or an OpenAI-compatible server (vLLM, llama.cpp, a test server).

    - ``model``: the model name sent with every request.
    - ``base_url``: the server (``.../v1``); default ``OPENAI_BASE_URL``, else OpenAI.
    - the key comes from ``OPENAI_API_KEY`` only (see :func:`api_key_from_env`): a missing key for a
      non-local server -> :class:`APIError` (kind ``auth``) here, before any request.
    - ``concurrency``: requests in flight at once in :meth:`run`; ``timeout``: seconds per attempt.
    - ``retry``: the :class:`RetryPolicy`; its ``total_retry_budget`` is shared by every request this client
      sends (one client per command run), :attr:`retries_used` tells how much is spent.
    - ``price``: overrides :data:`PRICES` for cost accounting.

    One ``openai.AsyncOpenAI`` (one connection pool, keep-alive) serves every request made from one event
    loop; it is built here, so a run's time excludes its set-up. :meth:`run` drives a private event loop
    (an ``asyncio.Runner``) kept for the client's life, so connections stay open from one run to the next;
    :meth:`close` (or ``with ChatClient(...) as client``) releases the loop and the connections (they are
    also released when the client is garbage-collected or at exit). Code that awaits :meth:`complete` /
    :meth:`arun` in its own loop should ``await client.aclose()`` (or use ``async with client``) when done.
    A client runs one :meth:`run` at a time and is not meant to be shared by threads.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        price: Price | None = None,
        seed: int | None = None,
    ) -> None:
        if not model:
            raise ConfigError("ChatClient needs a model name")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.model = model
        self.base_url = base_url or base_url_from_env()
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.retry = retry or RetryPolicy()
        self.price = price
        self._key = _Secret(api_key_from_env(self.base_url))
        self._budget = _Budget(self.retry.total_retry_budget)
        self._rng = random.Random(seed)
        self._res = _Resources()
        self._res.aclient = self._new_transport()  # unbound: the first event loop that uses it owns it
        self._finalizer = weakref.finalize(self, _release, self._res)

    def __repr__(self) -> str:
        where = self.base_url or "https://api.openai.com/v1"
        return f"ChatClient(model={self.model!r}, base_url={where!r}, concurrency={self.concurrency})"

    @property
    def retries_used(self) -> int:
        """Retries this client has spent so far (counted against ``retry.total_retry_budget``)."""
        return self._budget.used

    # -- transport ------------------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` with this client's API key replaced by ``***``: callers storing model or server text
        (drafts, caches, results) pass it through here so a key echoed back never reaches a file."""
        return scrub_secret(text, self._key.reveal())

    def _new_transport(self) -> Any:
        import openai

        return openai.AsyncOpenAI(
            api_key=self._key.reveal(),
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,  # our own retry loop, see the module docstring
        )

    def _transport(self) -> Any:
        """The ``AsyncOpenAI`` of the running event loop (made on first use in a loop other than its own)."""
        loop = asyncio.get_running_loop()
        res = self._res
        if res.aclient is None or (res.loop is not None and res.loop is not loop):
            res.aclient = self._new_transport()  # connections cannot move between loops
            res.loop = None
        if res.loop is None:
            res.loop = loop
        return res.aclient

    async def aclose(self) -> None:
        """Close the transport's connections if they belong to the running loop (idempotent).

        For code that awaits :meth:`complete` / :meth:`arun` in its own event loop; :meth:`close` is the
        synchronous counterpart for :meth:`run`.
        """
        res = self._res
        if res.aclient is not None and res.loop is asyncio.get_running_loop():
            client, res.aclient, res.loop = res.aclient, None, None
            await client.close()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def close(self) -> None:
        """Close the connections and the private event loop of :meth:`run` (idempotent; the client can
        still be used afterwards and then opens new ones). Not from inside a running event loop."""
        self._finalizer()
        self._finalizer = weakref.finalize(self, _release, self._res)

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _classify(self, exc: Exception) -> _Failure | None:
        """Map an openai exception to a failure; ``None`` for exceptions that are programming errors."""
        import openai

        where = self.base_url or "the OpenAI API"
        if isinstance(exc, openai.APITimeoutError):
            return _Failure("timeout", f"no reply from {where} within {self.timeout:g} s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
            return _Failure("connection", self.scrub(f"cannot connect to {where}{detail}"))
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            text = _server_message(exc.body) or exc.response.reason_phrase or ""
            text = self.scrub(" ".join(text.split()))[:_MAX_SERVER_MESSAGE]
            if status == 429:
                kind = "rate_limit"
            elif status == 408:
                kind = "timeout"
            elif status >= 500 or status == 409:
                kind = "server"
            elif status in (401, 403):
                kind = "auth"
            else:
                kind = "bad_request"
            hint = " (check OPENAI_API_KEY and the model's access)" if kind == "auth" else ""
            message = (
                f"HTTP {status} from {where}: {text}{hint}" if text else f"HTTP {status} from {where}{hint}"
            )
            return _Failure(kind, message, status, _retry_after(exc.response.headers))
        if isinstance(exc, openai.APIError):
            return _Failure("bad_response", self.scrub(f"{type(exc).__name__} from {where}: {exc}"))
        return None

    def _parse(self, text: str, status: int) -> tuple[dict[str, Any], _Failure | None]:
        """Fields of a ChatResult from a 200 body, or a ``bad_response`` failure."""
        where = self.base_url or "the OpenAI API"
        try:
            data = json.loads(text)
        except ValueError as exc:
            snippet = " ".join(self.scrub(text).split())[:80]  # scrub first: a cut must not keep half a key
            return {}, _Failure(
                "bad_response", f"reply from {where} is not JSON ({exc.msg}): {snippet!r}", status
            )
        try:
            if isinstance(data, dict) and "error" in data and "choices" not in data:
                message = self.scrub(_server_message(data))[:_MAX_SERVER_MESSAGE]
                return {}, _Failure(
                    "bad_response", f"error in a HTTP {status} reply from {where}: {message}", status
                )
            choice = data["choices"][0]
            message = choice["message"]
            refusal = message.get("refusal")
            usage = data.get("usage") or {}
            fields = {
                "text": _text_of(message.get("content")),
                "refusal": refusal if isinstance(refusal, str) else None,
                "finish_reason": choice.get("finish_reason"),
                "usage": Usage(
                    int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                ),
                "model": data.get("model") if isinstance(data.get("model"), str) else self.model,
            }
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            return {}, _Failure(
                "bad_response", f"reply from {where} is not a chat completion ({problem})", status
            )
        return fields, None

    async def _attempt(self, client: Any, messages: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        # ``post`` (openai's documented way to call any endpoint) rather than ``chat.completions.create``:
        # it passes server-specific parameters (vLLM's ``top_k``, ``guided_json`` ...) through unchanged,
        # returns the raw reply so malformed bodies become ``bad_response`` instead of a crash, and skips
        # the typed-request transform (about 20 % of the client's CPU time per request).
        body = {**params, "model": self.model, "messages": messages}
        try:
            response = await client.post("/chat/completions", body=body, cast_to=_response_type())
        except Exception as exc:
            failure = self._classify(exc)
            if failure is None:
                raise
            return failure
        return self._parse(response.text, response.status_code)

    async def complete(self, messages: list[dict[str, Any]], **params: Any) -> ChatResult:
        """One chat completion with retries. ``params`` go to the server as they are (``temperature``,
        ``max_tokens``, ``seed``, ``response_format`` ...).

        Never raises for API problems: after the last attempt (``retry.max_attempts``, or earlier once the
        retry budget is spent, or at once for a non-retryable failure) it returns a ``ChatResult`` with
        ``error`` set. Raises only for programming errors: ``TypeError`` for ``model``/``messages``/
        ``stream`` in ``params`` or values that are not JSON-serialisable.
        """
        for name in ("model", "messages"):
            if name in params:
                raise TypeError(f"complete() got {name!r} in params; the client sets it")
        if params.get("stream"):
            raise TypeError("complete() does not stream; drop stream=True")
        client = self._transport()
        start = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            outcome = await self._attempt(client, messages, params)
            if isinstance(outcome, tuple) and outcome[1] is None:
                return ChatResult(
                    attempts=attempts,
                    latency_s=time.perf_counter() - start,
                    status=200,
                    error=None,
                    **outcome[0],
                )
            failure: _Failure = outcome if isinstance(outcome, _Failure) else outcome[1]
            final_note = ""
            if failure.kind not in RETRYABLE_KINDS:
                pass
            elif attempts >= self.retry.max_attempts:
                final_note = f" (gave up after {attempts} attempt{'s' if attempts > 1 else ''})"
            elif not self._budget.take():
                final_note = f" (run-wide retry budget of {self._budget.limit} retries is spent)"
                if not self._budget.warned:
                    self._budget.warned = True
                    logger.warning(
                        "retry budget of %d retries spent; failures are final now", self._budget.limit
                    )
            else:
                delay = self.retry.backoff(attempts, failure.retry_after, self._rng)
                logger.debug(
                    "%s: %s; retry %d/%d in %.2f s",
                    self.model,
                    failure.message,
                    attempts,
                    self.retry.max_attempts - 1,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            return ChatResult(
                text=None,
                usage=Usage(),
                attempts=attempts,
                latency_s=time.perf_counter() - start,
                finish_reason=None,
                error=failure.message + final_note,
                error_kind=failure.kind,
                model=self.model,
                status=failure.status,
            )

    # -- batch ------------------------------------------------------------------------------------------

    async def arun(
        self,
        jobs: Iterable[tuple[K, list[dict[str, Any]], dict[str, Any] | None]],
        on_result: Callable[[K, ChatResult], None],
        *,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> RunStats:
        """:meth:`run` for code already inside an event loop (same contract; does not close the client)."""
        start = time.perf_counter()
        total = len(jobs) if isinstance(jobs, Sized) else 0
        taken = done = ok = failed = prompt_tokens = completion_tokens = 0
        cost: float | None = 0.0
        sem = asyncio.Semaphore(self.concurrency)

        async def one(key: K, messages: list[dict[str, Any]], params: dict[str, Any]) -> tuple[K, ChatResult]:
            try:
                return key, await self.complete(messages, **params)
            finally:
                sem.release()

        iterator = iter(jobs)
        exhausted = False
        pending: set[asyncio.Task[tuple[K, ChatResult]]] = set()
        retries = 0
        try:
            while True:
                while not exhausted and not sem.locked():
                    try:
                        key, messages, params = next(iterator)
                    except StopIteration:
                        exhausted = True
                        break
                    await sem.acquire()
                    taken += 1
                    pending.add(asyncio.ensure_future(one(key, messages, dict(params or {}))))
                if not pending:
                    break
                finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    key, result = task.result()
                    done += 1
                    retries += result.attempts - 1
                    if result.ok:
                        ok += 1
                        prompt_tokens += result.usage.prompt_tokens
                        completion_tokens += result.usage.completion_tokens
                        item_cost = cost_usd(result.model, result.usage, self.price)
                        cost = None if cost is None or item_cost is None else cost + item_cost
                    else:
                        failed += 1
                    on_result(key, result)
                    if progress is not None:
                        progress(done, max(total, taken), failed)
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return RunStats(
            n=done,
            ok=ok,
            failed=failed,
            retries=retries,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            wall_s=time.perf_counter() - start,
        )

    def run(
        self,
        jobs: Iterable[tuple[K, list[dict[str, Any]], dict[str, Any] | None]],
        on_result: Callable[[K, ChatResult], None],
        *,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> RunStats:
        """Send every job ``(key, messages, params)``, ``concurrency`` at a time, from synchronous code.

        ``on_result(key, result)`` is called in the calling thread as each job finishes (completion order),
        so callers store results incrementally; then ``progress(done, total, errors)`` when given (``total``
        is ``len(jobs)`` for a sized collection, else the number of jobs taken from the iterator so far).
        ``jobs`` is consumed lazily: at most ``concurrency`` jobs are materialised at a time. A job keeps
        its slot while it waits between retries. An exception from ``on_result`` or ``progress`` cancels
        the jobs in flight and propagates. Must not be called from a running event loop (use :meth:`arun`).
        Returns the run's :class:`RunStats`.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("ChatClient.run() cannot be called from a running event loop; await arun()")
        if self._res.runner is None:
            self._res.runner = asyncio.Runner()
        return self._res.runner.run(self.arun(jobs, on_result, progress=progress))
