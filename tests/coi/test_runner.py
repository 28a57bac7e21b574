"""The chain-of-image runner against a real local OpenAI-compatible HTTP server: records, every failure
mode, resume after a kill, the cache, and the API key never reaching a file or a log."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vlmad.api.errors import APIError
from vlmad.api.testing import Reply
from vlmad.coi.runner import PREDICTIONS_FILE, VOLATILE_METADATA, run_coi
from vlmad.data.predictions import read_predictions
from vlmad.errors import ConfigError
from vlmad.records import Manifest, Prediction

from .conftest import ANSWER, MAX_SIDE, NORMAL, api_recipe


def ok_script(sample_id: str, request: dict[str, Any], n: int) -> Reply:
    return Reply(
        content=NORMAL if "/good/" in sample_id else ANSWER, prompt_tokens=1000, completion_tokens=100
    )


def comparable(preds: list[Prediction], any_server: bool = False) -> set[str]:
    """Predictions as canonical JSON without timing fields, for set comparison; ``any_server``: the
    server URL (in ``base_url`` and error messages) is replaced by a placeholder."""
    out = set()
    for p in preds:
        d = p.model_dump(mode="json")
        d["metadata"] = {k: v for k, v in d["metadata"].items() if k not in VOLATILE_METADATA}
        text = json.dumps(d, sort_keys=True)
        out.add(text.replace(p.metadata["base_url"], "<server>") if any_server else text)
    return out


def test_one_prediction_per_item_with_everything_that_decides_it(
    server: Any, coi_manifest: Manifest, test_ids: list[str], tmp_path: Path
) -> None:
    srv = server(ok_script)
    recipe = api_recipe(srv.url, prompts=["coi_p1", "coi_p2"])
    summary = run_coi(recipe, tmp_path / "run", manifest=coi_manifest)
    preds = read_predictions(tmp_path / "run" / PREDICTIONS_FILE)
    assert len(preds) == 2 * len(test_ids) == summary.written == summary.requests == len(srv.requests)
    assert {p.run_id for p in preds} == {"gpt-4o/coi_p1", "gpt-4o/coi_p2"}
    assert {(p.run_id, p.sample_id) for p in preds} == {
        (r, s) for r in ("gpt-4o/coi_p1", "gpt-4o/coi_p2") for s in test_ids
    }
    for p in preds:
        m = p.metadata
        sample = coi_manifest.get(p.sample_id)
        assert p.verdict == ("normal" if sample.label == "good" else "anomalous")
        assert p.score is None and m["status"] == "answered"
        if p.verdict == "anomalous":
            assert p.explanation == "a pushpin is missing in the top row."
        template = coi_manifest.get(m["template_sample_id"])
        assert template.category == sample.category and template.label == "good" and template.split == "train"
        assert m["template_strategy"] == "random"
        assert m["images"]["test"]["sent_width"] == 64 and len(m["images"]["template"]["sha256"]) == 64
        assert m["max_side"] == MAX_SIDE and m["detail"] == "auto"
        assert m["model"] == "gpt-4o" and m["served_model"] == "gpt-4o" and m["backend"] == "openai"
        assert (
            m["prompt"] == p.run_id.split("/")[1]
            and m["prompt_version"] == "1"
            and len(m["prompt_hash"]) == 16
        )
        assert m["params"] == {"temperature": 0.0, "max_tokens": 1024, "seed": 0} and m["seed"] == 0
        assert m["usage"] == {"prompt_tokens": 1000, "completion_tokens": 100}
        assert m["cost_usd"] == pytest.approx(1000 / 1000 * 0.0025 + 100 / 1000 * 0.010)
        assert m["attempts"] == 1 and m["cached"] is False and m["raw"] in (ANSWER, NORMAL)
        assert "steps" not in m  # single mode
    assert summary.cost_usd == pytest.approx(len(preds) * 0.0035)
    # the request: template label, template image, test label, test image, the prompt text; one message
    req = srv.requests[0]
    assert len(req["messages"]) == 1 and req["model"] == "gpt-4o" and req["temperature"] == 0.0
    parts = req["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert parts[0]["text"].startswith("Template image") and parts[2]["text"].startswith("Test image")
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1]["image_url"]["detail"] == "auto" and "Answer: <normal or anomalous>" in parts[4]["text"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    p1 = next(p for p in preds if p.run_id == "gpt-4o/coi_p1")
    assert record["runs"]["gpt-4o/coi_p1"]["prompt"]["hash"] == p1.metadata["prompt_hash"]
    assert record["runs"]["gpt-4o/coi_p1"]["run_fingerprint"] == p1.metadata["run_fingerprint"]
    assert (
        record["summary"]["written"] == len(preds) and record["recipe"]["templates"]["strategy"] == "random"
    )


def failure_script(behaviour: dict[str, str]) -> Any:
    def script(sample_id: str, request: dict[str, Any], n: int) -> Reply:
        kind = behaviour.get(sample_id, "ok")
        if kind == "429-once" and n == 1:
            return Reply(status=429, headers={"Retry-After": "0"})
        if kind == "500-once" and n == 1:
            return Reply(status=500)
        if kind == "timeout-once" and n == 1:
            return Reply(delay=1.0)
        if kind == "always-500":
            return Reply(status=503)
        if kind == "always-429":
            return Reply(status=429, headers={"Retry-After": "0"})
        if kind == "always-timeout":
            return Reply(delay=1.0)
        if kind == "malformed":
            return Reply(body='{"choices": [ {"message": ')
        if kind == "no-choices":
            return Reply(body='{"id": "x", "object": "chat.completion"}')
        if kind == "empty":
            return Reply(content="")
        if kind == "refusal":
            return Reply(content=None, refusal="I'm sorry, I can't help with that.")
        if kind == "unparseable":
            return Reply(content="The two pictures show boxes.")
        return ok_script(sample_id, request, n)

    return script


BEHAVIOURS = (
    ("429-once", "answered", None, 2),
    ("500-once", "answered", None, 2),
    ("timeout-once", "answered", None, 2),
    ("always-500", "failed", "server", 3),
    ("always-429", "failed", "rate_limit", 3),
    ("always-timeout", "failed", "timeout", 3),
    ("malformed", "failed", "bad_response", 1),
    ("no-choices", "failed", "bad_response", 1),
    ("empty", "empty", "empty", 1),
    ("refusal", "refused", "refusal", 1),
    ("unparseable", "unparsed", None, 1),
    ("ok", "answered", None, 1),
)


def test_every_failure_mode_ends_answered_or_recorded_with_its_error(
    server: Any, coi_manifest: Manifest, test_ids: list[str], tmp_path: Path
) -> None:
    assert len(test_ids) >= len(BEHAVIOURS)
    behaviour = {sid: b[0] for sid, b in zip(test_ids, BEHAVIOURS, strict=False)}
    srv = server(failure_script(behaviour))
    recipe = api_recipe(srv.url, model={"timeout": 0.4, "concurrency": 8})
    summary = run_coi(recipe, tmp_path / "run", manifest=coi_manifest)
    preds = {p.sample_id: p for p in read_predictions(tmp_path / "run" / PREDICTIONS_FILE)}
    assert set(preds) == set(test_ids)  # nothing lost, nothing twice (read_predictions checks duplicates)
    for sid, (kind, status, error_kind, attempts) in zip(test_ids, BEHAVIOURS, strict=False):
        p = preds[sid]
        m = p.metadata
        assert m["status"] == status, kind
        assert m["attempts"] == attempts, kind
        assert m.get("error_kind") == error_kind, kind
        if status == "answered":
            assert p.verdict in ("normal", "anomalous") and "error" not in m
        else:
            assert p.verdict == "unparsed", kind  # counts as wrong
        if status in ("failed", "refused", "empty"):
            assert m["error"], kind
    assert (
        preds[test_ids[3]].metadata["error"].startswith("HTTP 503")
        and "gave up after 3" in (preds[test_ids[3]].metadata["error"])
    )
    assert preds[test_ids[9]].metadata["refusal"].startswith("I'm sorry")
    assert summary.status == {"answered": 4, "unparsed": 1, "empty": 1, "refused": 1, "failed": 5}
    assert summary.retries == 3 + 3 * 2
    assert summary.requests == len(srv.requests) == sum(b[3] for b in BEHAVIOURS)


def test_total_retries_are_bounded_by_the_budget(
    server: Any, coi_manifest: Manifest, test_ids: list[str], tmp_path: Path
) -> None:
    srv = server(lambda sid, req, n: Reply(status=500))
    recipe = api_recipe(srv.url, retry={"max_attempts": 5, "base_delay": 0.0, "total_retry_budget": 3})
    summary = run_coi(recipe, tmp_path / "run", manifest=coi_manifest)
    assert len(srv.requests) == len(test_ids) + 3 == summary.requests
    assert summary.status["failed"] == len(test_ids)
    preds = read_predictions(tmp_path / "run" / PREDICTIONS_FILE)
    assert sum("retry budget" in p.metadata["error"] for p in preds) >= 1


class Stop(Exception):
    pass


def test_killed_and_resumed_run_gives_the_records_of_an_uninterrupted_one(
    server: Any, coi_manifest: Manifest, test_ids: list[str], tmp_path: Path
) -> None:
    # a fresh server per session: "once" failures count the attempts a server has seen
    behaviour = {sid: b[0] for sid, b in zip(test_ids, BEHAVIOURS, strict=False) if b[0] != "always-timeout"}

    def recipe_for(url: str) -> Any:
        return api_recipe(url, prompts=["coi_p1", "plain"], model={"timeout": 0.4, "concurrency": 3})

    run_coi(recipe_for(server(failure_script(behaviour)).url), tmp_path / "whole", manifest=coi_manifest)
    whole = read_predictions(tmp_path / "whole" / PREDICTIONS_FILE)

    seen: list[str] = []

    def kill_after(pred: Prediction) -> None:
        seen.append(pred.sample_id)
        if len(seen) == 7:
            raise Stop

    with pytest.raises(Stop):
        recipe = recipe_for(server(failure_script(behaviour)).url)
        run_coi(recipe, tmp_path / "part", manifest=coi_manifest, on_result=kill_after)
    part_file = tmp_path / "part" / PREDICTIONS_FILE
    assert len(read_predictions(part_file)) == 7
    with part_file.open("a", encoding="utf-8") as f:
        f.write('{"sample_id": "pushpins/test/go')  # the process died while writing a line
    srv = server(failure_script(behaviour))
    summary = run_coi(recipe_for(srv.url), tmp_path / "part", manifest=coi_manifest)
    assert summary.skipped == 7 and summary.written == len(whole) - 7 and srv.requests
    resumed = read_predictions(part_file)  # raises on duplicates
    assert len(resumed) == len(whole)
    assert comparable(resumed, any_server=True) == comparable(whole, any_server=True)


KILL_SCRIPT = """
import sys
from vlmad.coi.recipe import make_recipe
from vlmad.coi.runner import run_coi
recipe = make_recipe("t", models=[{"backend": "openai", "model": "gpt-4o", "base_url": sys.argv[1],
    "concurrency": 2}], prompts=["coi_p1", "coi_p2"], max_side=64)
run_coi(recipe, sys.argv[2], dataset=sys.argv[3])
"""


def test_sigkill_mid_run_then_restart_gives_the_same_records(
    server: Any, coi_manifest: Manifest, coi_dataset: Path, tmp_path: Path
) -> None:
    srv = server(ok_script, delay=0.05)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, srv.url, str(out), str(coi_dataset)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OPENAI_API_KEY": ""},
    )
    preds_file = out / PREDICTIONS_FILE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if preds_file.exists() and preds_file.read_bytes().count(b"\n") >= 5:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_killed = preds_file.read_bytes().count(b"\n")
    recipe = api_recipe(srv.url, prompts=["coi_p1", "coi_p2"], model={"concurrency": 2, "timeout": 120.0})
    recipe = recipe.model_copy(update={"retry": recipe.retry.model_copy(update={"max_attempts": 5})})
    summary = run_coi(recipe, out, manifest=coi_manifest)
    assert 5 <= n_killed < 24 and summary.skipped + summary.written == 24
    run_coi(recipe, tmp_path / "whole", manifest=coi_manifest)
    killed = read_predictions(preds_file)
    whole = read_predictions(tmp_path / "whole" / PREDICTIONS_FILE)
    assert len(killed) == 24

    def core(p: Prediction) -> tuple[Any, ...]:  # the retry settings of the two recipes differ: not compared
        m = p.metadata
        return (
            p.run_id,
            p.sample_id,
            p.verdict,
            p.explanation,
            m["raw"],
            m["template_sample_id"],
            m["cache_key"],
        )

    assert {core(p) for p in killed} == {core(p) for p in whole}


def test_cache_unchanged_rerun_sends_nothing_changed_prompt_sends_again(
    server: Any, coi_manifest: Manifest, test_ids: list[str], tmp_path: Path
) -> None:
    srv = server(ok_script)
    cache = str(tmp_path / "shared-cache.sqlite")
    prompt = tmp_path / "mine.yaml"
    text = (Path(__file__).parents[2] / "prompts" / "coi_p1.yaml").read_text()
    prompt.write_text(text.replace("name: coi_p1", "name: mine"))
    recipe = api_recipe(srv.url, prompts=[str(prompt)], cache=cache)
    first = run_coi(recipe, tmp_path / "a", manifest=coi_manifest)
    assert first.requests == len(test_ids) == len(srv.requests)

    again = run_coi(recipe, tmp_path / "b", manifest=coi_manifest)  # a new run folder, the same cache
    assert again.requests == 0 and again.cached == len(test_ids) and len(srv.requests) == len(test_ids)
    a = read_predictions(tmp_path / "a" / PREDICTIONS_FILE)
    b = read_predictions(tmp_path / "b" / PREDICTIONS_FILE)
    assert all(p.metadata["cached"] for p in b)
    assert comparable(a) == comparable(b)

    prompt.write_text(text.replace("name: coi_p1", "name: mine").replace('version: "1"', 'version: "2"'))
    bumped = run_coi(recipe, tmp_path / "c", manifest=coi_manifest)
    assert bumped.requests == len(test_ids) and bumped.cached == 0

    # the same version with another text: the prompt hash differs, so it is asked again too
    prompt.write_text(text.replace("name: coi_p1", "name: mine").replace("Step 3: Judge", "Step 3: Decide"))
    edited = run_coi(recipe, tmp_path / "d", manifest=coi_manifest)
    assert edited.requests == len(test_ids) and edited.cached == 0
    assert len(srv.requests) == 3 * len(test_ids)

    changed_params = api_recipe(srv.url, prompts=[str(prompt)], cache=cache, generation={"max_tokens": 99})
    assert run_coi(changed_params, tmp_path / "e", manifest=coi_manifest).requests == len(test_ids)


def test_resume_refuses_a_folder_made_with_other_settings(
    server: Any, coi_manifest: Manifest, tmp_path: Path
) -> None:
    srv = server(ok_script)
    run_coi(api_recipe(srv.url, per_label=1), tmp_path / "run", manifest=coi_manifest)
    with pytest.raises(ConfigError, match="other settings"):
        run_coi(api_recipe(srv.url, per_label=1, max_side=32), tmp_path / "run", manifest=coi_manifest)


def test_retry_failed_sends_failed_items_again_without_duplicates(
    server: Any, coi_manifest: Manifest, test_ids: list[str], tmp_path: Path
) -> None:
    state = {"down": True}

    def script(sid: str, request: dict[str, Any], n: int) -> Reply:
        if state["down"] and sid in test_ids[:3]:
            return Reply(status=500)
        return ok_script(sid, request, n)

    server_ = server(script)
    recipe = api_recipe(server_.url)
    first = run_coi(recipe, tmp_path / "run", manifest=coi_manifest)
    assert first.status["failed"] == 3
    state["down"] = False
    assert run_coi(recipe, tmp_path / "run", manifest=coi_manifest).written == 0  # failed items stay recorded
    again = run_coi(recipe, tmp_path / "run", manifest=coi_manifest, retry_failed=True)
    assert again.written == 3 and again.status["answered"] == 3
    preds = read_predictions(tmp_path / "run" / PREDICTIONS_FILE)
    assert len(preds) == len(test_ids) and all(p.metadata["status"] == "answered" for p in preds)


def test_multi_turn_prompt_keeps_every_step(server: Any, coi_manifest: Manifest, tmp_path: Path) -> None:
    def script(sid: str, request: dict[str, Any], n: int) -> Reply:
        step = (len(request["messages"]) + 1) // 2
        return Reply(content=ANSWER if step == 3 else f"step {step} reply")

    srv = server(script)
    recipe = api_recipe(srv.url, prompts=[{"name": "coi_p1", "mode": "multi_turn"}], per_label=1)
    run_coi(recipe, tmp_path / "run", manifest=coi_manifest)
    preds = read_predictions(tmp_path / "run" / PREDICTIONS_FILE)
    assert {p.run_id for p in preds} == {"gpt-4o/coi_p1-multi_turn"}
    assert len(srv.requests) == 3 * len(preds)
    for p in preds:
        assert p.metadata["steps"] == ["step 1 reply", "step 2 reply", ANSWER]
        assert p.metadata["prompt_mode"] == "multi_turn" and p.verdict == "anomalous"
        assert p.metadata["attempts"] == 3 and p.metadata["usage"]["prompt_tokens"] == 30
    last = max(srv.requests, key=lambda r: len(r["messages"]))
    roles = [m["role"] for m in last["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert last["messages"][1]["content"] == "step 1 reply" and last["messages"][2]["content"].startswith(
        "Step 2"
    )
    assert "Answer: <normal or anomalous>" in last["messages"][4]["content"]


def test_authentication_failure_stops_the_run(server: Any, coi_manifest: Manifest, tmp_path: Path) -> None:
    srv = server(lambda sid, req, n: Reply(status=401, message="invalid key"))
    with pytest.raises(APIError, match="HTTP 401") as err:
        run_coi(api_recipe(srv.url), tmp_path / "run", manifest=coi_manifest)
    assert err.value.kind == "auth"
    assert read_predictions(tmp_path / "run" / PREDICTIONS_FILE) == []  # nothing recorded as done


SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdef"


def test_api_key_never_reaches_a_file_or_a_log(
    server: Any,
    coi_manifest: Manifest,
    test_ids: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    def script(sid: str, request: dict[str, Any], n: int) -> Reply:
        if sid == test_ids[0]:
            return Reply(status=400, message=f"the key {SECRET} is not allowed here")
        if sid == test_ids[1]:
            return Reply(status=500, message=f"upstream rejected {SECRET}")
        if sid == test_ids[2]:
            return Reply(body=f"not json {SECRET}")
        if sid == test_ids[3]:
            return Reply(content=None, refusal=f"I will not repeat {SECRET}")
        return Reply(content=f"Your key is {SECRET}.\nAnswer: anomalous\nExplanation: key {SECRET} seen")

    srv = server(script)
    caplog.set_level(logging.DEBUG)
    summary = run_coi(api_recipe(srv.url), tmp_path / "run", manifest=coi_manifest)
    assert summary.written == len(test_ids)
    assert all(a == f"Bearer {SECRET}" for a in srv.authorization)  # it was sent, in the header only
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {f.name for f in files} >= {PREDICTIONS_FILE, "run.json", "summary.json", "cache.sqlite"}
    for f in files:
        assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in caplog.text
    preds = read_predictions(tmp_path / "run" / PREDICTIONS_FILE)
    assert any("***" in (p.metadata.get("raw") or "") for p in preds)
    assert any("***" in (p.metadata.get("error") or "") for p in preds)
