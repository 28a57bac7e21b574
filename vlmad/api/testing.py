"""A real OpenAI-compatible chat server on 127.0.0.1, for tests and benches (no network, no key needed).

``FakeChatServer`` answers ``POST /v1/chat/completions`` (and ``GET /v1/models``) over HTTP/1.1 with
keep-alive, one thread per connection, so it sustains many concurrent clients with little per-request
overhead. A *responder* scripts the replies::

    def responder(request: dict, n: int) -> Reply:
        # n counts requests with equal ``messages`` (1 on the first attempt, 2 on the first retry, ...)
        return Reply(status=429, headers={"Retry-After": "0.1"}) if n == 1 else Reply(content="yes")

    with FakeChatServer(responder, delay=0.05) as server:
        client = ChatClient("gpt-4o-mini", base_url=server.url)
        ...
        server.requests        # every request body received
        server.authorization   # every Authorization header received
        server.max_in_flight   # most requests handled at the same time

The server never prints (request logging is switched off).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted server reply.

    - ``status`` 200: a chat completion whose message has ``content`` (``None`` allowed) and ``refusal``,
      with ``finish_reason`` and ``usage`` from ``prompt_tokens``/``completion_tokens``.
    - ``status`` >= 400: an OpenAI-style error body ``{"error": {"message": message, ...}}`` (default
      message ``"fake error <status>"``).
    - ``body``: send this text verbatim instead (e.g. malformed JSON), with the given status.
    - ``delay``: seconds to wait before replying (overrides the server's ``delay``), e.g. longer than the
      client timeout.
    - ``headers``: extra response headers (e.g. ``{"Retry-After": "1"}``).
    """

    status: int = 200
    content: str | None = "OK"
    refusal: str | None = None
    body: str | None = None
    delay: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 10
    completion_tokens: int = 5
    finish_reason: str | None = "stop"
    message: str | None = None


Responder = Callable[[dict[str, Any], int], Reply]


def _default_responder(request: dict[str, Any], n: int) -> Reply:
    return Reply()


def _completion_body(request: dict[str, Any], reply: Reply, seq: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": reply.refusal}
    return {
        "id": f"chatcmpl-fake-{seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "fake-model"),
        "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
        "usage": {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        },
    }


def _error_body(reply: Reply) -> dict[str, Any]:
    kind = (
        "rate_limit_exceeded" if reply.status == 429 else "server_error" if reply.status >= 500 else "invalid"
    )
    return {"error": {"message": reply.message or f"fake error {reply.status}", "type": kind, "code": kind}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive connections left open by a client must not block close()
    request_queue_size = 1024
    allow_reuse_address = True
    owner: FakeChatServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms Nagle/delayed-ACK stall
    server: _Server
    timeout = 60  # an idle keep-alive connection is dropped after this many seconds

    def log_message(self, format: str, *args: Any) -> None:  # the library never prints
        return

    def setup(self) -> None:
        super().setup()
        self.server.owner._connected()

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/v1/models"):
            body = {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "vlmad"}]}
            self._send(200, json.dumps(body).encode())
        else:
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        owner = self.server.owner
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, json.dumps({"error": {"message": f"no route {self.path}"}}).encode())
            return
        try:
            request = json.loads(raw)
        except ValueError:
            self._send(400, json.dumps({"error": {"message": "request body is not JSON"}}).encode())
            return
        n, seq = owner._received(request, self.headers.get("Authorization"))
        try:
            try:
                reply = owner.responder(request, n)
            except Exception as exc:  # a broken responder is reported, not hidden
                owner._note_error(f"responder raised {type(exc).__name__}: {exc}")
                reply = Reply(status=500, content=f"responder raised {type(exc).__name__}")
            delay = owner.delay if reply.delay is None else reply.delay
            if delay > 0:
                time.sleep(delay)
            if reply.body is not None:
                body = reply.body.encode()
            elif reply.status < 400:
                body = json.dumps(_completion_body(request, reply, seq)).encode()
            else:
                body = json.dumps(_error_body(reply)).encode()
            try:
                self._send(reply.status, body, reply.headers)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (timeout) before the reply
        finally:
            owner._finished()


class FakeChatServer:
    """An OpenAI-compatible chat completions server in a background thread (context manager).

    ``url`` is the base URL to hand to a client (``http://127.0.0.1:PORT/v1``). ``requests`` and
    ``authorization`` record every chat request body and Authorization header (appended under a lock);
    ``max_in_flight`` is the most requests that were being handled at the same time; ``connections`` the
    TCP connections accepted (keep-alive reuse keeps it low); ``errors`` lists exceptions raised by the
    responder (answered as HTTP 500).
    """

    def __init__(self, responder: Responder | None = None, *, delay: float = 0.0) -> None:
        self.responder: Responder = responder or _default_responder
        self.delay = float(delay)
        self.requests: list[dict[str, Any]] = []
        self.authorization: list[str] = []
        self.errors: list[str] = []
        self.max_in_flight = 0
        self.connections = 0
        self._in_flight = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def _received(self, request: dict[str, Any], authorization: str | None) -> tuple[int, int]:
        # a digest, not the text: bodies carrying base64 images would otherwise pile up in memory
        key = hashlib.sha256(json.dumps(request.get("messages"), sort_keys=True).encode()).hexdigest()
        with self._lock:
            self.requests.append(request)
            if authorization is not None:
                self.authorization.append(authorization)
            n = self._counts[key] = self._counts.get(key, 0) + 1
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return n, len(self.requests)

    def _connected(self) -> None:
        with self._lock:
            self.connections += 1

    def _finished(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _note_error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)

    def start(self) -> FakeChatServer:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread; returns self."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FakeChatServer(url={self.url!r}, requests={len(self.requests)})"
