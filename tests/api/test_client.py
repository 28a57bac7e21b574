"""ChatClient against a real HTTP server on 127.0.0.1 (FakeChatServer): answers, retries, errors, secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from vlmad.api import (
    PRICES,
    APIError,
    ChatClient,
    ChatResult,
    Price,
    ResponseCache,
    RetryPolicy,
    Usage,
    api_key_from_env,
    base_url_from_env,
    cost_usd,
)
from vlmad.api.client import _retry_after, scrub_secret
from vlmad.api.testing import FakeChatServer, Reply
from vlmad.errors import ConfigError

KEY = "sk-vlmad-test-Zq8Kx3-NEVER-LEAK-7f1e"
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, jitter=0.0)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def by_text(table: dict[str, Reply | list[Reply]]):
    """Responder: the reply for the message text; a list scripts attempts 1, 2, ... (last one repeats)."""

    def responder(request: dict, n: int) -> Reply:
        reply = table[request["messages"][0]["content"]]
        if isinstance(reply, list):
            return reply[min(n, len(reply)) - 1]
        return reply

    return responder


def run_all(client: ChatClient, texts: list[str], **params) -> tuple[dict[str, ChatResult], object]:
    results: dict[str, ChatResult] = {}
    stats = client.run([(t, msgs(t), params) for t in texts], results.__setitem__)
    return results, stats


def test_good_answer_and_params_pass_through() -> None:
    with FakeChatServer(
        by_text({"q": Reply(content="Yes, anomalous.", prompt_tokens=7, completion_tokens=3)})
    ) as srv:
        client = ChatClient("gpt-4o-mini", base_url=srv.url, retry=FAST)
        results, stats = run_all(client, ["q"], temperature=0.0, max_tokens=50, top_k=5)
    r = results["q"]
    assert r.ok and r.text == "Yes, anomalous." and r.refusal is None
    assert (r.attempts, r.finish_reason, r.status, r.model) == (1, "stop", 200, "gpt-4o-mini")
    assert r.usage == Usage(prompt_tokens=7, completion_tokens=3)
    assert r.latency_s > 0
    sent = srv.requests[0]
    assert sent["model"] == "gpt-4o-mini" and sent["messages"] == msgs("q")
    assert (sent["temperature"], sent["max_tokens"], sent["top_k"]) == (0.0, 50, 5)  # server-specific too
    assert (stats.n, stats.ok, stats.failed, stats.retries) == (1, 1, 0, 0)


def test_rate_limit_then_ok() -> None:
    table = {"q": [Reply(status=429), Reply(content="fine")]}
    with FakeChatServer(by_text(table)) as srv:
        results, stats = run_all(ChatClient("m", base_url=srv.url, retry=FAST), ["q"])
    assert results["q"].ok and results["q"].text == "fine" and results["q"].attempts == 2
    assert len(srv.requests) == 2 and stats.retries == 1


def test_server_error_gives_up_and_run_continues() -> None:
    table = {"bad": Reply(status=500, message="boom"), "a": Reply(content="A"), "b": Reply(content="B")}
    with FakeChatServer(by_text(table)) as srv:
        results, stats = run_all(ChatClient("m", base_url=srv.url, retry=FAST), ["a", "bad", "b"])
    bad = results["bad"]
    assert not bad.ok and bad.error_kind == "server" and bad.status == 500 and bad.attempts == 3
    assert "boom" in bad.error and "500" in bad.error and bad.text is None
    assert results["a"].text == "A" and results["b"].text == "B"
    assert sum(r["messages"][0]["content"] == "bad" for r in srv.requests) == 3
    assert (stats.n, stats.ok, stats.failed, stats.retries) == (3, 2, 1, 2)


def test_timeout_is_retried_then_reported() -> None:
    with FakeChatServer(by_text({"slow": Reply(delay=1.0)})) as srv:
        client = ChatClient(
            "m", base_url=srv.url, timeout=0.15, retry=RetryPolicy(max_attempts=2, base_delay=0.01)
        )
        t0 = time.perf_counter()
        results, _ = run_all(client, ["slow"])
        wall = time.perf_counter() - t0
    r = results["slow"]
    assert r.error_kind == "timeout" and r.attempts == 2 and r.status is None and "0.15" in r.error
    assert len(srv.requests) == 2
    assert wall < 0.9  # gave up on the client side, did not wait for the server


def test_malformed_replies_are_bad_response_not_crash() -> None:
    table = {
        "garbage": Reply(body="{not json"),
        "nochoices": Reply(body=json.dumps({"id": "x", "choices": []})),
        "errorbody": Reply(body=json.dumps({"error": {"message": "backend exploded"}})),
        "ok": Reply(content="fine"),
    }
    with FakeChatServer(by_text(table)) as srv:
        results, stats = run_all(ChatClient("m", base_url=srv.url, retry=FAST), list(table))
    for name in ("garbage", "nochoices", "errorbody"):
        r = results[name]
        assert r.error_kind == "bad_response" and r.attempts == 1 and r.status == 200, name
    assert "not JSON" in results["garbage"].error and "backend exploded" in results["errorbody"].error
    assert results["ok"].ok and stats.failed == 3


def test_empty_content_and_refusal_are_results_not_errors() -> None:
    table = {
        "empty": Reply(content=""),
        "none": Reply(content=None, finish_reason="length"),
        "refuse": Reply(content=None, refusal="I can't help with that.", finish_reason="stop"),
    }
    with FakeChatServer(by_text(table)) as srv:
        results, _ = run_all(ChatClient("m", base_url=srv.url, retry=FAST), list(table))
    assert results["empty"].ok and results["empty"].text == ""
    assert results["none"].ok and results["none"].text is None and results["none"].finish_reason == "length"
    refuse = results["refuse"]
    assert refuse.ok and refuse.text is None and refuse.refusal == "I can't help with that."
    assert all(r.attempts == 1 for r in results.values())


def test_content_parts_are_joined() -> None:
    parts = [{"type": "text", "text": "Yes, "}, {"type": "text", "text": "a scratch."}]
    body = {"choices": [{"message": {"role": "assistant", "content": parts}, "finish_reason": "stop"}]}
    with FakeChatServer(by_text({"q": Reply(body=json.dumps(body))})) as srv:
        results, _ = run_all(ChatClient("m", base_url=srv.url), ["q"])
    assert results["q"].text == "Yes, a scratch." and results["q"].usage == Usage()


def test_no_retry_on_other_4xx() -> None:
    table = {
        "bad": Reply(status=400, message="invalid image"),
        "auth": Reply(status=401),
        "nf": Reply(status=404),
    }
    with FakeChatServer(by_text(table)) as srv:
        results, stats = run_all(ChatClient("m", base_url=srv.url, retry=FAST), list(table))
    assert results["bad"].error_kind == "bad_request" and "invalid image" in results["bad"].error
    assert results["auth"].error_kind == "auth" and "OPENAI_API_KEY" in results["auth"].error
    assert results["nf"].error_kind == "bad_request" and results["nf"].status == 404
    assert all(r.attempts == 1 for r in results.values()) and len(srv.requests) == 3 and stats.retries == 0


def test_connection_error_is_retried_then_reported() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ChatClient("m", base_url=f"http://127.0.0.1:{port}/v1", retry=FAST)
    results, _ = run_all(client, ["q"])
    assert results["q"].error_kind == "connection" and results["q"].attempts == 3
    assert f"127.0.0.1:{port}" in results["q"].error


def test_usage_tokens_and_cost() -> None:
    table = {t: Reply(prompt_tokens=1000, completion_tokens=500) for t in "abc"}
    with FakeChatServer(by_text(table)) as srv:
        _, stats = run_all(ChatClient("gpt-4o-mini", base_url=srv.url), list("abc"))
        _, unknown = run_all(ChatClient("my-local-model", base_url=srv.url), list("abc"))
        _, priced = run_all(ChatClient("my-local-model", base_url=srv.url, price=Price(1.0, 2.0)), ["a"])
    p = PRICES["gpt-4o-mini"]
    assert (stats.prompt_tokens, stats.completion_tokens) == (3000, 1500)
    assert stats.cost_usd == pytest.approx(3 * (p.input_per_1k + 0.5 * p.output_per_1k))
    assert unknown.cost_usd is None and unknown.prompt_tokens == 3000
    assert priced.cost_usd == pytest.approx(1.0 + 1.0)
    usage = Usage(2000, 1000)
    assert cost_usd("gpt-4o", usage) == pytest.approx(
        2 * PRICES["gpt-4o"].input_per_1k + PRICES["gpt-4o"].output_per_1k
    )
    assert cost_usd("gpt-4o-2024-08-06", usage) == cost_usd("gpt-4o", usage)  # dated snapshot
    assert cost_usd("gpt-4o-mini-2024-07-18", usage) == cost_usd("gpt-4o-mini", usage)
    assert cost_usd("gpt-4o-audio-preview", usage) is None and cost_usd("llava", usage) is None


def test_total_retry_budget_makes_failures_final() -> None:
    texts = [f"job{i}" for i in range(6)]
    policy = RetryPolicy(max_attempts=5, base_delay=0.001, jitter=0.0, total_retry_budget=3)
    with FakeChatServer(lambda req, n: Reply(status=503)) as srv:
        client = ChatClient("m", base_url=srv.url, concurrency=1, retry=policy)
        results, stats = run_all(client, texts)
    assert len(srv.requests) == 6 + 3  # one attempt each plus the 3 budgeted retries
    assert client.retries_used == 3 and stats.retries == 3 and stats.failed == 6
    assert sum(r.attempts for r in results.values()) == 9
    assert all(r.error_kind == "server" for r in results.values())
    assert sum("budget" in r.error for r in results.values()) >= 5  # every failure after the budget ran out


def test_retry_after_is_honoured_and_capped() -> None:
    slow = [Reply(status=429, headers={"Retry-After": "0.3"}), Reply(content="ok")]
    with FakeChatServer(by_text({"q": slow})) as srv:
        policy = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=5.0, jitter=0.0)
        results, _ = run_all(ChatClient("m", base_url=srv.url, retry=policy), ["q"])
    assert results["q"].ok and results["q"].attempts == 2 and results["q"].latency_s >= 0.3

    huge = [Reply(status=503, headers={"Retry-After": "30"}), Reply(content="ok")]
    with FakeChatServer(by_text({"q": huge})) as srv:
        policy = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.05, jitter=0.0)
        results, _ = run_all(ChatClient("m", base_url=srv.url, retry=policy), ["q"])
    assert results["q"].ok and results["q"].latency_s < 1.0  # capped by max_delay


def test_retry_after_parsing_and_backoff() -> None:
    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert _retry_after({"retry-after": "soon"}) is None and _retry_after({}) is None
    date = _retry_after({"retry-after": formatdate(time.time() + 20, usegmt=True)})
    assert date is not None and 15 < date <= 20
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0, jitter=0.5)
    delays = [policy.backoff(k) for k in (1, 2, 3, 4, 5) for _ in range(20)]
    assert all(0.5 <= d <= 5.0 for d in delays)
    assert RetryPolicy(base_delay=1.0, max_delay=5.0, jitter=0.0).backoff(3) == 4.0
    assert policy.backoff(1, retry_after=60.0) == 5.0 and policy.backoff(1, retry_after=0.2) == 0.2


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"jitter": 1.5}, {"base_delay": -1.0}, {"total_retry_budget": -1}],
)
def test_retry_policy_validation(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)


def test_key_never_leaks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # a server that echoes the key back in an error (some proxies do) must not get it into our texts
    table = {
        "good": Reply(content="an answer"),
        "echo": Reply(status=401, message=f"Incorrect API key provided: {KEY}"),
        "echo500": Reply(status=500, message=f"upstream rejected {KEY}"),
        "bodyecho": Reply(body=f"<html>bad gateway for {KEY}</html>"),
    }
    with FakeChatServer(by_text(table)) as srv:
        client = ChatClient("gpt-4o-mini", base_url=srv.url, retry=FAST)
        results, stats = run_all(client, list(table))
    assert results["good"].ok and not results["echo"].ok and not results["bodyecho"].ok
    with ResponseCache(tmp_path / "cache.sqlite") as cache:
        for name, r in results.items():
            cache.put(name, r.to_dict())
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    texts = [repr(r) + json.dumps(r.to_dict()) for r in results.values()]
    texts += [repr(client), str(client), repr(vars(client)), repr(stats), repr(srv)]
    assert caplog.records  # debug logging of openai and the transport was captured
    texts += [record.getMessage() for record in caplog.records]
    try:
        api_key_from_env("https://api.example.com/v1", env_var="VLMAD_NO_SUCH_KEY_VAR")
    except APIError as exc:
        texts.append(str(exc))
    assert KEY.encode() not in on_disk
    for text in texts:
        assert KEY not in text, text
    assert "***" in results["echo"].error  # scrubbed, not dropped
    assert srv.authorization and all(h == f"Bearer {KEY}" for h in srv.authorization)
    assert all(KEY not in json.dumps(req) for req in srv.requests)  # only the header carries it


def test_throughput_overlaps_requests() -> None:
    with FakeChatServer(delay=0.2) as srv:
        client = ChatClient("m", base_url=srv.url, concurrency=20)
        t0 = time.perf_counter()
        _, stats = run_all(client, [f"job{i}" for i in range(40)])
        wall = time.perf_counter() - t0
    assert stats.ok == 40
    assert wall < 2.0  # serial would take 40 * 0.2 = 8 s; ideal is 2 waves = 0.4 s
    assert srv.max_in_flight >= 10


def test_run_calls_back_incrementally_and_consumes_jobs_lazily() -> None:
    taken: list[int] = []
    seen: list[int] = []
    progress: list[tuple[int, int, int]] = []

    def jobs():
        for i in range(10):
            taken.append(i)
            # never more than `concurrency` jobs taken ahead of the results delivered
            assert len(taken) - len(seen) <= 3
            yield i, msgs("fail" if i == 4 else f"job{i}"), None

    with FakeChatServer(lambda req, n: Reply(status=400) if "fail" in str(req) else Reply()) as srv:
        client = ChatClient("m", base_url=srv.url, concurrency=3)
        stats = client.run(jobs(), lambda k, r: seen.append(k), progress=lambda *a: progress.append(a))
    assert sorted(seen) == list(range(10)) and stats.n == 10 and stats.failed == 1
    assert progress[-1] == (10, 10, 1) and [p[0] for p in progress] == list(range(1, 11))

    with FakeChatServer() as srv:
        client = ChatClient("m", base_url=srv.url, concurrency=2)
        got: list[int] = []
        stats = client.run(
            [(i, msgs(str(i)), {}) for i in range(4)], lambda k, r: got.append(k), progress=None
        )
        assert sorted(got) == [0, 1, 2, 3]
        with pytest.raises(RuntimeError, match="stop here"):
            client.run(
                [(i, msgs(str(i)), {}) for i in range(50)],
                lambda k, r: (_ for _ in ()).throw(RuntimeError("stop here")),
            )
        assert len(srv.requests) < 4 + 50  # the rest were never sent


def test_connections_are_kept_alive_across_runs_until_close() -> None:
    with FakeChatServer() as srv:
        with ChatClient("m", base_url=srv.url, concurrency=2) as client:
            for _ in range(3):
                _, stats = run_all(client, [f"job{i}" for i in range(8)])
                assert stats.ok == 8
            before = srv.connections
            assert before <= 2  # 24 requests over the same keep-alive connections
        _, stats = run_all(client, ["again"])  # usable after close: the old connections are gone
        assert stats.ok == 1 and srv.connections == before + 1
        client.close()


def test_complete_and_arun_inside_an_event_loop() -> None:
    async def main(url: str) -> tuple[ChatResult, int]:
        async with ChatClient("m", base_url=url) as client:
            one = await client.complete(msgs("x"), temperature=0)
            with pytest.raises(RuntimeError, match="running event loop"):
                client.run([], lambda k, r: None)
            with pytest.raises(TypeError):
                await client.complete(msgs("x"), model="other")
            got: list[str] = []
            stats = await client.arun([("k", msgs("y"), None)], lambda k, r: got.append(k))
            return one, stats.ok + len(got)

    with FakeChatServer() as srv:
        result, count = asyncio.run(main(srv.url))
    assert result.ok and result.text == "OK" and count == 2


def test_api_key_and_base_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert api_key_from_env(None) == KEY
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(APIError, match="OPENAI_API_KEY") as err:
        api_key_from_env("https://api.openai.com/v1")
    assert err.value.kind == "auth" and err.value.status is None
    with pytest.raises(APIError):
        ChatClient("gpt-4o")  # no key, OpenAI's default server: refused before any request
    assert api_key_from_env("http://127.0.0.1:8000/v1") == "EMPTY"
    assert api_key_from_env("http://localhost:8000/v1") == "EMPTY"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:9999/v1")
    assert base_url_from_env() == "http://localhost:9999/v1"
    assert ChatClient("m").base_url == "http://localhost:9999/v1"  # local: works without a key
    assert ChatClient("m", base_url="http://127.0.0.1:1/v1").base_url == "http://127.0.0.1:1/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert base_url_from_env("http://x/v1") == "http://x/v1" and base_url_from_env() is None


def test_result_round_trip_and_raise_for_error() -> None:
    ok = ChatResult(text="t", usage=Usage(3, 4), attempts=1, latency_s=0.1, finish_reason="stop", model="m")
    bad = ChatResult(
        text=None,
        usage=Usage(),
        attempts=3,
        latency_s=1.0,
        finish_reason=None,
        error="HTTP 500",
        error_kind="server",
        model="m",
        status=500,
    )
    for r in (ok, bad):
        assert ChatResult.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    ok.raise_for_error()
    with pytest.raises(APIError, match="HTTP 500") as err:
        bad.raise_for_error()
    assert err.value.kind == "server" and err.value.status == 500 and err.value.retryable
    assert scrub_secret(f"x {KEY} y", KEY) == "x *** y" and scrub_secret("abc", None) == "abc"


def test_client_argument_validation() -> None:
    with pytest.raises(ConfigError):
        ChatClient("m", base_url="http://127.0.0.1:1/v1", concurrency=0)
    with pytest.raises(ConfigError):
        ChatClient("m", base_url="http://127.0.0.1:1/v1", timeout=0)
    with pytest.raises(ConfigError):
        ChatClient("", base_url="http://127.0.0.1:1/v1")


def test_package_import_is_light() -> None:
    code = "import sys, vlmad.api; print(sorted(m for m in ('openai', 'PIL', 'httpx2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
