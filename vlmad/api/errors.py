"""Errors of the OpenAI-compatible API layer.

Messages never contain the API key: every text built from a server reply or a transport error goes through
:func:`vlmad.api.client.scrub_secret` before it reaches an exception, a result or a log record.
"""

from __future__ import annotations

from pathlib import Path

from vlmad.errors import VlmadError

#: The kinds an :class:`APIError` (and a failed ``ChatResult.error_kind``) can have.
ERROR_KINDS: tuple[str, ...] = (
    "rate_limit",  # HTTP 429
    "server",  # HTTP 5xx (and 409 Conflict, which OpenAI also asks clients to retry)
    "timeout",  # no reply within the client timeout, or HTTP 408
    "connection",  # could not connect / connection dropped
    "auth",  # HTTP 401/403, or no API key in the environment
    "bad_request",  # any other HTTP 4xx: the request itself is wrong, retrying cannot help
    "bad_response",  # HTTP 200 whose body is not an OpenAI chat completion (malformed JSON, no choices)
)

#: Kinds worth another attempt.
RETRYABLE_KINDS: frozenset[str] = frozenset({"rate_limit", "server", "timeout", "connection"})


class APIError(VlmadError):
    """A request to an OpenAI-compatible server failed, or the client cannot be set up.

    ``kind`` is one of :data:`ERROR_KINDS`; ``status`` is the HTTP status when the server answered, else
    ``None``. ``str(err)`` is one line saying what failed and what to do.
    """

    def __init__(self, message: str, *, kind: str, status: int | None = None) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown APIError kind {kind!r}; expected one of {ERROR_KINDS}")
        self.kind = kind
        self.status = status
        super().__init__(message)

    @property
    def retryable(self) -> bool:
        """Whether another attempt could succeed (rate limits, server errors, timeouts, connection)."""
        return self.kind in RETRYABLE_KINDS


class CacheError(VlmadError):
    """The response cache database cannot be used (locked too long, not a vlmad cache, newer schema).

    ``str(err)`` is one line: ``"<path>: <problem>"``.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
