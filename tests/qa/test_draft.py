"""QA drafting against a real HTTP fake server: prompts, parsing, resume, cache, re-ask, failures, secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vlmad.api.cache import ResponseCache
from vlmad.api.client import ChatClient, RetryPolicy
from vlmad.api.errors import APIError
from vlmad.api.images import image_content
from vlmad.api.testing import FakeChatServer, Reply
from vlmad.errors import ConfigError, VlmadError
from vlmad.qa.draft import (
    DEFAULT_PARAMS,
    DraftParseError,
    DraftPrompt,
    draft_dataset,
    draft_requests,
    load_draft_prompt,
    parse_draft,
    prompts_dir,
)
from vlmad.qa.review import accept_where
from vlmad.qa.store import QAStore
from vlmad.records import Manifest, Sample

SECRET = "sk-test-DO-NOT-STORE-0123456789abcdef"
MODEL = "gpt-4o-mini"  # has a price in vlmad.api.client.PRICES, so cost accounting is exercised


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def subset(qa_manifest: Manifest) -> tuple[list[Sample], dict[str, str]]:
    """10 samples (per category one test normal and one logical anomaly) and their templates."""
    samples: list[Sample] = []
    templates: dict[str, str] = {}
    for cat in qa_manifest.categories:
        rows = [s for s in qa_manifest if s.category == cat]
        tpl = next(s for s in rows if s.split == "train" and s.label == "good")
        picked = [
            next(s for s in rows if s.split == "test" and s.label == "good"),
            next(s for s in rows if s.label == "logical"),
        ]
        samples += picked
        templates.update({s.id: tpl.id for s in picked})
    return samples, templates


def user_text(request: dict[str, Any]) -> str:
    """All text of the request's messages, joined."""
    out = []
    for m in request["messages"]:
        content = m["content"]
        if isinstance(content, str):
            out.append(content)
        else:
            out += [p["text"] for p in content if p.get("type") == "text"]
    return "\n".join(out)


def reply_json(anomalous: bool, *, extra: str = "") -> str:
    if anomalous:
        body = {
            "verdict": "anomalous",
            "anomaly_type": "logical",
            "defect_type": "missing_part",
            "explanation": "A part is missing on the left side of the test image." + extra,
            "qa": [
                {"kind": "detection", "question": "Is there a defect?", "answer": "Yes, it is anomalous."},
                {"kind": "location", "question": "Where is it?", "answer": "On the left side."},
                {"kind": "template_comparison", "question": "What differs?", "answer": "A part is gone."},
            ],
        }
    else:
        body = {
            "verdict": "normal",
            "anomaly_type": None,
            "defect_type": None,
            "explanation": "It matches the template." + extra,
            "qa": [
                {"kind": "detection", "question": "Is there a defect?", "answer": "No, it is normal."},
                {"kind": "description", "question": "Describe it.", "answer": "A complete product."},
            ],
        }
    return json.dumps(body)


def is_reask(request: dict[str, Any]) -> bool:
    return any(m["role"] == "assistant" for m in request["messages"])


def good(request: dict[str, Any], n: int) -> Reply:
    return Reply(
        content=reply_json("it is anomalous" in user_text(request)), prompt_tokens=300, completion_tokens=80
    )


def make_client(server: FakeChatServer, concurrency: int = 4) -> ChatClient:
    retry = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)
    return ChatClient(MODEL, base_url=server.url, concurrency=concurrency, timeout=10, retry=retry)


def run_draft(
    store: QAStore,
    manifest: Manifest,
    server: FakeChatServer,
    subset: tuple[list[Sample], dict[str, str]],
    **kw: Any,
) -> Any:
    samples, templates = subset
    return draft_dataset(
        store, manifest, make_client(server), templates=templates, samples=samples, max_side=64, **kw
    )


def groups_per_sample(store: QAStore) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for item in store.items(source="gpt-draft"):
        out.setdefault(item.sample_id, set()).add(item.metadata["draft_group"])
    return out


# ------------------------------------------------------------------------------------------------ prompt
def test_default_prompt_loads_from_repo_prompts_folder() -> None:
    prompt = load_draft_prompt()
    assert prompt.path == prompts_dir() / "qa_draft.yaml"
    assert (prompt.name, prompt.version) == ("qa_draft", "1")
    assert "{defect_hint}" in prompt.user and prompt.n_qa >= 1
    assert prompt.schema["required"] == ["verdict", "anomaly_type", "defect_type", "explanation", "qa"]
    assert DEFAULT_PARAMS["response_format"] == {"type": "json_object"}


def test_prompt_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_draft_prompt(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: '1'\nsystem: s\nuser: no placeholder\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*defect_hint"):
        load_draft_prompt(bad)
    bad.write_text("name: x\nversion: '1'\nsystem: s\nuser: '{defect_hint}'\ncolour: red\n")
    with pytest.raises(ConfigError, match="unknown field"):
        load_draft_prompt(bad)
    bad.write_text("name: [x\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_draft_prompt(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("name: mine\nversion: 7\nsystem: s\nuser: 'Hint: {defect_hint} {json: kept}'\n")
    prompt = load_draft_prompt(ok)
    assert (prompt.name, prompt.version) == ("mine", "7")


def test_render_orders_template_then_test_with_hints(
    subset: tuple[list[Sample], dict[str, str]], qa_manifest
) -> None:
    samples, templates = subset
    anomaly = next(s for s in samples if s.is_anomalous)
    template = qa_manifest.get(templates[anomaly.id])
    prompt = load_draft_prompt()
    messages = prompt.render(anomaly, template, max_side=64)
    assert [m["role"] for m in messages] == ["system", "user"]
    parts = messages[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert parts[0]["text"].startswith("Template image") and parts[2]["text"].startswith("Test image")
    assert parts[1] == image_content(template.image_path, max_side=64)[0]
    assert parts[3] == image_content(anomaly.image_path, max_side=64)[0]
    text = parts[4]["text"]
    assert anomaly.defect_type in text and anomaly.metadata["description"] in text
    assert "template_comparison" in text and "{" in text  # the schema is shown
    hidden = prompt.texts(anomaly, template, hints=False)["user"]
    assert anomaly.metadata["description"] not in hidden and "No ground truth" in hidden
    alone = prompt.render(anomaly, None, max_side=64)[1]["content"]
    assert [p["type"] for p in alone] == ["text", "image_url", "text"]
    assert "template_comparison" not in prompt.kinds(False)


# ------------------------------------------------------------------------------------------------ parsing
def test_parse_draft_accepts_fences_and_normalises() -> None:
    parsed = parse_draft("```json\n" + reply_json(True) + "\n```")
    assert parsed["verdict"] == "anomalous" and parsed["anomaly_type"] == "logical"
    assert [p["kind"] for p in parsed["qa"]] == ["detection", "location", "template_comparison"]
    odd = json.loads(reply_json(False))
    odd.update(verdict=" Normal ", anomaly_type="logical", defect_type="scratch", extra="ignored")
    parsed = parse_draft(json.dumps(odd))
    assert (parsed["verdict"], parsed["anomaly_type"], parsed["defect_type"]) == ("normal", None, None)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"verdict": "maybe", "explanation": "", "qa": []}', "verdict"),
        ('{"verdict": "anomalous", "explanation": "", "qa": [{"kind": "detection"}]}', "explanation"),
        ('{"verdict": "normal", "explanation": "", "qa": []}', "qa"),
        (
            json.dumps(
                {
                    "verdict": "normal",
                    "explanation": "",
                    "qa": [{"kind": "joke", "question": "q", "answer": "a"}],
                }
            ),
            "kind",
        ),
        (
            '{"verdict": "normal", "explanation": "", "qa": [{"kind": "detection", "question": "q"}]}',
            "answer",
        ),
        ('{"verdict": "anomalous", "anomaly_type": "weird", "explanation": "x", "qa": []}', "anomaly_type"),
    ],
)
def test_parse_draft_rejects_with_reason(text: str, reason: str) -> None:
    with pytest.raises(DraftParseError, match=reason) as info:
        parse_draft(text)
    assert isinstance(info.value, ValueError) and isinstance(info.value, VlmadError)


def test_parse_draft_enforces_allowed_kinds() -> None:
    with pytest.raises(DraftParseError, match="template_comparison"):
        parse_draft(reply_json(True), kinds=load_draft_prompt().kinds(False))


# ------------------------------------------------------------------------------------------------ drafting
def test_good_replies_give_reviewable_drafts(tmp_path: Path, qa_manifest: Manifest, subset) -> None:
    samples, templates = subset
    seen: list[tuple[int, int, int]] = []
    with FakeChatServer(good) as server, QAStore(tmp_path / "qa.sqlite") as store:
        summary = run_draft(store, qa_manifest, server, subset, progress=lambda *a: seen.append(a))
        assert len(server.requests) == len(samples) == summary.requested == summary.drafted_samples
        request = server.requests[0]
        assert request["model"] == MODEL and request["response_format"] == {"type": "json_object"}
        assert request["temperature"] == DEFAULT_PARAMS["temperature"]
        items = store.items(source="gpt-draft")
        groups = groups_per_sample(store)
    assert summary.failed == summary.cached == summary.skipped == summary.reasked == 0
    assert summary.drafted_items == len(items) == sum(3 if s.is_anomalous else 2 for s in samples)
    assert summary.prompt_tokens == 300 * len(samples) and summary.tokens == 380 * len(samples)
    assert summary.cost_usd == pytest.approx(len(samples) * (0.3 * 0.00015 + 0.08 * 0.0006))
    assert seen[-1] == (len(samples), len(samples), 0) and len(seen) == len(samples)
    by_id = {s.id: s for s in samples}
    for item in items:
        sample = by_id[item.sample_id]
        assert item.status == "draft" and item.author == MODEL and item.category == sample.category
        assert item.verdict == ("anomalous" if sample.is_anomalous else "normal")
        assert item.template_sample_id == templates[sample.id]
        assert item.draft is not None and item.draft.model == MODEL and item.draft.prompt_version == "1"
        assert item.draft.prompt_tokens == 300 and item.draft.attempts == 1 and not item.draft.cached
        assert item.draft.raw is None and item.draft.error is None
    assert all(len(g) == 1 for g in groups.values()) and set(groups) == set(by_id)
    with QAStore(tmp_path / "qa.sqlite") as store:
        assert accept_where(store, reviewer="ana") == len(items)
        assert store.count(status="verified") == len(items)


def test_rerun_sends_nothing_and_cache_serves_a_new_store(
    tmp_path: Path, qa_manifest: Manifest, subset
) -> None:
    samples, _ = subset
    with FakeChatServer(good) as server, ResponseCache(tmp_path / "cache.sqlite") as cache:
        with QAStore(tmp_path / "a.sqlite") as store:
            run_draft(store, qa_manifest, server, subset, cache=cache)
            n_items = store.count()
            again = run_draft(store, qa_manifest, server, subset, cache=cache)
            assert (again.skipped, again.requested, again.drafted_items) == (len(samples), 0, 0)
            assert store.count() == n_items
        assert len(server.requests) == len(samples) and len(cache) == len(samples)
        with QAStore(tmp_path / "b.sqlite") as other:
            summary = run_draft(other, qa_manifest, server, subset, cache=cache)
            assert (summary.cached, summary.requested, summary.tokens) == (len(samples), 0, 0)
            assert other.count() == n_items
            assert all(i.draft is not None and i.draft.cached for i in other.items())
        assert len(server.requests) == len(samples)
        # a different generation parameter is a different cache key
        with QAStore(tmp_path / "c.sqlite") as third:
            summary = run_draft(third, qa_manifest, server, subset, cache=cache, params={"temperature": 0.9})
            assert summary.cached == 0 and summary.requested == len(samples)


def test_malformed_first_reply_is_asked_again_once(tmp_path: Path, qa_manifest: Manifest, subset) -> None:
    samples, _ = subset

    def responder(request: dict[str, Any], n: int) -> Reply:
        return (
            good(request, n)
            if is_reask(request)
            else Reply(content='{"verdict": "anomalous", "qa": [', prompt_tokens=20)
        )

    with FakeChatServer(responder) as server, QAStore(tmp_path / "qa.sqlite") as store:
        summary = run_draft(store, qa_manifest, server, subset)
        assert len(server.requests) == 2 * len(samples) == summary.requested
        reask = next(r for r in server.requests if is_reask(r))
        assert reask["messages"][-2] == {"role": "assistant", "content": '{"verdict": "anomalous", "qa": ['}
        assert "not valid JSON" in reask["messages"][-1]["content"]
        assert (summary.reasked, summary.drafted_samples, summary.failed) == (len(samples), len(samples), 0)
        items = store.items()
    assert all(i.status == "draft" and i.draft is not None and i.draft.attempts == 2 for i in items)
    assert all(i.draft is not None and i.draft.prompt_tokens == 20 + 300 for i in items)


def test_always_malformed_gives_failed_items_with_raw(tmp_path: Path, qa_manifest: Manifest, subset) -> None:
    samples, _ = subset
    with (
        FakeChatServer(lambda r, n: Reply(content="Sure! Here is the JSON you asked for.")) as server,
        ResponseCache(tmp_path / "cache.sqlite") as cache,
        QAStore(tmp_path / "qa.sqlite") as store,
    ):
        summary = run_draft(store, qa_manifest, server, subset, cache=cache)
        assert (summary.failed_parse, summary.reasked, summary.drafted_items) == (
            len(samples),
            len(samples),
            0,
        )
        failed = store.items(status="failed")
        assert len(cache) == 0  # unusable replies are never cached
    assert len(failed) == len(samples) == store_count_samples(failed)
    for item in failed:
        assert item.draft is not None and item.draft.raw == "Sure! Here is the JSON you asked for."
        assert "after one re-ask" in (item.draft.error or "") and item.verdict is None
        assert item.metadata["failed_stage"] == "parse"


def store_count_samples(items: list[Any]) -> int:
    return len({i.sample_id for i in items})


def test_rate_limit_then_success_is_retried(tmp_path: Path, qa_manifest: Manifest, subset) -> None:
    samples, _ = subset

    def responder(request: dict[str, Any], n: int) -> Reply:
        return Reply(status=429, headers={"Retry-After": "0"}) if n == 1 else good(request, n)

    with FakeChatServer(responder) as server, QAStore(tmp_path / "qa.sqlite") as store:
        summary = run_draft(store, qa_manifest, server, subset)
        assert len(server.requests) == 2 * len(samples)
        assert (summary.retries, summary.drafted_samples, summary.failed) == (len(samples), len(samples), 0)
        assert all(i.draft is not None and i.draft.attempts == 2 for i in store.items())


def test_server_error_fails_one_sample_and_the_run_goes_on(
    tmp_path: Path, qa_manifest: Manifest, subset
) -> None:
    samples, _ = subset
    broken = samples[3]
    broken_url = image_content(broken.image_path, max_side=64)[0]["image_url"]["url"]

    def responder(request: dict[str, Any], n: int) -> Reply:
        urls = [p["image_url"]["url"] for p in request["messages"][1]["content"] if p["type"] == "image_url"]
        return Reply(status=500, content="boom") if urls[-1] == broken_url else good(request, n)

    with FakeChatServer(responder) as server, QAStore(tmp_path / "qa.sqlite") as store:
        summary = run_draft(store, qa_manifest, server, subset)
        assert (summary.failed_api, summary.drafted_samples) == (1, len(samples) - 1)
        assert len(server.requests) == len(samples) - 1 + 3  # the broken one tried max_attempts=3 times
        (failed,) = store.items(status="failed")
        assert failed.sample_id == broken.id and failed.draft is not None
        assert "HTTP 500" in (failed.draft.error or "") and failed.draft.attempts == 3
        # a plain rerun skips it (it has a draft, a failed one); retry_failed drafts it again
        assert run_draft(store, qa_manifest, server, subset).requested == 0
    with FakeChatServer(good) as server, QAStore(tmp_path / "qa.sqlite") as store:
        summary = run_draft(store, qa_manifest, server, subset, retry_failed=True)
        assert (summary.skipped, summary.requested, summary.drafted_samples) == (len(samples) - 1, 1, 1)
        assert store.count(sample_ids=broken.id, status="draft") >= 1


def test_auth_failure_stops_the_run_and_stores_nothing(tmp_path: Path, qa_manifest: Manifest, subset) -> None:
    with (
        FakeChatServer(lambda r, n: Reply(status=401, content="invalid key")) as server,
        QAStore(tmp_path / "qa.sqlite") as store,
    ):
        with pytest.raises(APIError, match="HTTP 401") as info:
            run_draft(store, qa_manifest, server, subset)
        assert info.value.kind == "auth" and store.count() == 0
        assert len(server.requests) <= 4  # the requests in flight (concurrency 4), then the run stopped


class Killed(Exception):
    pass


def test_killed_run_resumes_with_one_draft_set_per_sample(
    tmp_path: Path, qa_manifest: Manifest, subset
) -> None:
    samples, _ = subset

    def kill_after(k: int):
        def progress(done: int, total: int, failed: int) -> None:
            if done >= k:
                raise Killed

        return progress

    with (
        FakeChatServer(good, delay=0.01) as server,
        ResponseCache(tmp_path / "c.sqlite") as cache,
        QAStore(tmp_path / "qa.sqlite") as store,
    ):
        with pytest.raises(Killed):
            run_draft(store, qa_manifest, server, subset, cache=cache, progress=kill_after(3))
        assert len(groups_per_sample(store)) == 3
        with pytest.raises(Killed):  # killed again, mid-way through the resumed run
            run_draft(store, qa_manifest, server, subset, cache=cache, progress=kill_after(4))
        assert len(groups_per_sample(store)) == 7
        summary = run_draft(store, qa_manifest, server, subset, cache=cache)
        assert summary.skipped == 7 and summary.drafted_samples == 3
        groups = groups_per_sample(store)
        assert set(groups) == {s.id for s in samples}
        assert all(len(g) == 1 for g in groups.values())
        assert store.count() == sum(3 if s.is_anomalous else 2 for s in samples)


def test_limit_and_sample_selection(tmp_path: Path, qa_manifest: Manifest, subset) -> None:
    samples, _ = subset
    with FakeChatServer(good) as server, QAStore(tmp_path / "qa.sqlite") as store:
        summary = run_draft(store, qa_manifest, server, subset, limit=4)
        assert (summary.pending, summary.drafted_samples, len(server.requests)) == (4, 4, 4)
        with pytest.raises(ConfigError, match="not in the manifest"):
            draft_dataset(store, qa_manifest, make_client(server), samples=["no/such/sample"])
        bad = {samples[0].id: samples[1].id}  # an anomaly is no template
        with pytest.raises(ConfigError, match="normal"):
            draft_dataset(store, qa_manifest, make_client(server), samples=[samples[0]], templates=bad)


def test_dry_run_sends_and_stores_nothing(tmp_path: Path, qa_manifest: Manifest, subset) -> None:
    samples, templates = subset
    with FakeChatServer(good) as server, QAStore(tmp_path / "qa.sqlite") as store:
        summary = run_draft(store, qa_manifest, server, subset, dry_run=True)
        assert server.requests == [] and store.count() == 0
    assert summary.dry_run and summary.requests is not None and len(summary.requests) == len(samples)
    text = json.dumps(summary.to_dict())
    assert "base64" not in text and "data:image" not in text
    first = summary.requests[0]
    assert first["sample_id"] == samples[0].id and first["template_sample_id"] == templates[samples[0].id]
    parts = first["messages"][1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("<image sha256=") and u.endswith(" 64x64>") for u in urls)
    assert first["params"]["response_format"] == {"type": "json_object"}
    with FakeChatServer(good) as server, QAStore(tmp_path / "qa.sqlite") as store:
        client = make_client(server)
        listed = draft_requests(store, qa_manifest, client, samples=samples[:2], params={"temperature": None})
        assert server.requests == [] and [r["sample_id"] for r in listed] == [s.id for s in samples[:2]]
        assert "temperature" not in listed[0]["params"] and "template_sample_id" in listed[0]


def test_api_key_reaches_only_the_authorization_header(
    tmp_path: Path, qa_manifest: Manifest, subset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    samples, _ = subset
    position = {
        image_content(s.image_path, max_side=64)[0]["image_url"]["url"]: i for i, s in enumerate(samples)
    }

    def leaky(request: dict[str, Any], n: int) -> Reply:
        # a hostile or broken server echoing the key back: in unusable text, in usable JSON, in errors
        index = position[request["messages"][1]["content"][3]["image_url"]["url"]] % 3
        if index == 0 and not is_reask(request):
            return Reply(content=f"no JSON, but your key is {SECRET}")
        if index == 1:
            return Reply(status=400, content=f"bad key {SECRET}")
        return Reply(content=reply_json("it is anomalous" in user_text(request), extra=f" key {SECRET}"))

    with (
        FakeChatServer(leaky) as server,
        ResponseCache(tmp_path / "cache.sqlite") as cache,
        QAStore(tmp_path / "qa.sqlite") as store,
    ):
        summary = run_draft(store, qa_manifest, server, subset, cache=cache)
        dry = run_draft(store, qa_manifest, server, subset, cache=cache, dry_run=True, retry_failed=True)
        assert server.authorization and all(h == f"Bearer {SECRET}" for h in server.authorization)
        assert all(SECRET not in json.dumps(r) for r in server.requests)
        texts = [json.dumps(i.model_dump(mode="json")) for i in store.items()]
        history = [json.dumps([h.before, h.after]) for h in store.history()]
    assert summary.drafted_samples and summary.failed  # every path above was taken
    assert any("***" in t for t in texts)
    for text in [*texts, *history, json.dumps(summary.to_dict()), json.dumps(dry.to_dict())]:
        assert SECRET not in text
    for path in tmp_path.iterdir():  # database files, their WAL and journal files
        assert SECRET.encode() not in path.read_bytes(), path.name


def test_custom_prompt_version_drafts_again(tmp_path: Path, qa_manifest: Manifest, subset) -> None:
    samples, _ = subset
    base = load_draft_prompt()
    newer = DraftPrompt(**{**base.__dict__, "version": "2"})
    with FakeChatServer(good) as server, QAStore(tmp_path / "qa.sqlite") as store:
        run_draft(store, qa_manifest, server, subset)
        summary = run_draft(store, qa_manifest, server, subset, prompt=newer)
        assert summary.skipped == 0 and summary.drafted_samples == len(samples)
        versions = {i.draft.prompt_version for i in store.items() if i.draft is not None}
    assert versions == {"1", "2"}
