"""``vlmad qa``: build, add, import, dump, draft (against a local OpenAI-compatible server), review, stats."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmad.api.testing import FakeChatServer, Reply
from vlmad.cli import app
from vlmad.errors import VlmadError
from vlmad.qa.store import QAStore
from vlmad.records import Manifest

runner = CliRunner()
SECRET = "sk-cli-test-NEVER-WRITTEN-42424242"


@dataclass
class Outcome:
    exit_code: int
    output: str


def invoke(*args: object, env: dict[str, str] | None = None, input: str | None = None) -> Outcome:
    """Run the CLI in-process the way ``vlmad.cli.main`` does: a vlmad error is one line and exit code 2."""
    r = runner.invoke(app, [str(a) for a in args], env=env, input=input)
    if isinstance(r.exception, VlmadError):
        return Outcome(2, f"{r.output}error: {r.exception}")
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Outcome(r.exit_code, r.output)


@pytest.fixture()
def dataset(qa_dataset: Path, tmp_path: Path) -> Path:
    """The session dataset; each test gets its own store file through --db."""
    return qa_dataset


def test_build_writes_store_and_exports_and_is_idempotent(dataset: Path, tmp_path: Path) -> None:
    db = tmp_path / "qa.sqlite"
    r = invoke(
        "qa", "build", "--dataset", dataset, "--out", tmp_path / "exp", "--db", db, "--format", "llava"
    )
    assert r.exit_code == 0, r.output
    assert "template in qa.sqlite" in r.output
    rows = json.loads((tmp_path / "exp" / "llava" / "train.json").read_text())
    assert rows and all(len(row["image"]) == 2 for row in rows)
    with QAStore(db) as store:
        n = store.count()
    assert n > 0
    again = invoke("qa", "build", "--dataset", dataset, "--out", tmp_path / "exp2", "--db", db)
    assert again.exit_code == 0, again.output
    with QAStore(db) as store:
        assert store.count() == n  # nothing added twice


def test_build_recipe_and_bad_values(dataset: Path, tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[2] / "data_builders" / "qa_loco.yaml"
    out = tmp_path / "exp"
    r = invoke(
        "qa", "build", "--dataset", dataset, "--out", out, "--db", tmp_path / "a.sqlite", "--recipe", recipe,
        "--fraction", "0.5", "--format", "messages",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    info = json.loads((out / "export.json").read_text())
    assert info["formats"] == ["messages"]
    bad = invoke(
        "qa", "build", "--dataset", dataset, "--out", out, "--db", tmp_path / "b.sqlite", "--fraction", "2"
    )
    assert bad.exit_code == 2 and "fraction" in bad.output
    bad = invoke(
        "qa", "build", "--dataset", dataset, "--out", out, "--db", tmp_path / "b.sqlite", "--format", "x"
    )
    assert bad.exit_code == 2 and "llava" in bad.output


def test_add_import_dump_roundtrip(dataset: Path, qa_manifest: Manifest, tmp_path: Path) -> None:
    db = tmp_path / "qa.sqlite"
    sample = next(s for s in qa_manifest if s.label == "logical")
    r = invoke(
        "qa", "add", "--dataset", dataset, "--db", db, "--sample", sample.id, "--question", "Anything wrong?",
        "--answer", "Yes, an item is missing.", "--verdict", "anomalous", "--anomaly-type", "logical",
        "--author", "alice",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    bad = invoke(
        "qa", "add", "--dataset", dataset, "--db", db, "--sample", "nope/000", "--question", "q",
        "--answer", "a", "--verdict", "normal",
    )  # fmt: skip
    assert bad.exit_code == 2 and "nope/000" in bad.output

    manual = tmp_path / "manual.csv"
    manual.write_text(
        "sample_id,question,answer,verdict\n"
        f"{sample.id},Where is the defect?,Yes: on the left.,anomalous\n"
        "missing/sample,q,a,normal\n"
    )
    refused = invoke("qa", "import", manual, "--dataset", dataset, "--db", db)
    assert refused.exit_code == 2 and "manual.csv:3" in refused.output
    with QAStore(db) as store:
        assert store.count() == 1  # the bad file added nothing
    ok = invoke("qa", "import", manual, "--dataset", dataset, "--db", db, "--skip-bad")
    assert ok.exit_code == 0 and "imported 1" in ok.output and "manual.csv:3" in ok.output

    dump = tmp_path / "dump.jsonl"
    assert invoke("qa", "dump", dump, "--dataset", dataset, "--db", db).exit_code == 0
    assert len(dump.read_text().splitlines()) == 2
    other = tmp_path / "other.sqlite"
    r = invoke("qa", "import", dump, "--dataset", dataset, "--db", other)
    assert r.exit_code == 0 and "imported 2 items" in r.output, r.output
    r = invoke("qa", "import", dump, "--dataset", dataset, "--db", other)
    assert "imported 0 items (2 already in the store)" in r.output
    with QAStore(db) as a, QAStore(other) as b:
        assert [i.model_dump() for i in a.items()] == [i.model_dump() for i in b.items()]


def _good_reply(request: dict, n: int) -> Reply:
    text = json.dumps(
        {
            "verdict": "anomalous",
            "anomaly_type": "structural",
            "defect_type": "scratch",
            "explanation": "A scratch on the right side of the test image.",
            "qa": [{"kind": "detection", "question": "Is there a defect?", "answer": "Yes, a scratch."}],
        }
    )
    return Reply(content=text)


def test_draft_review_stats_against_local_server(dataset: Path, tmp_path: Path) -> None:
    db = tmp_path / "qa.sqlite"
    with FakeChatServer(_good_reply) as server:
        env = {"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": server.url}
        dry = invoke(
            "qa", "draft", "--dataset", dataset, "--db", db, "--category", "pushpins", "--dry-run", env=env
        )
        assert dry.exit_code == 0, dry.output
        assert "nothing was sent" in dry.output and not server.requests
        assert "base64" not in dry.output

        args = ("qa", "draft", "--dataset", dataset, "--db", db, "--category", "pushpins", "--model", "m1")
        r = invoke(*args, "--limit", "3", env=env)
        assert r.exit_code == 0, r.output
        assert len(server.requests) == 3 and "3 images drafted" in r.output
        r = invoke(*args, env=env)  # resumes: the first three are not asked again
        assert r.exit_code == 0, r.output
        n_pushpins = len(server.requests)
        assert "3 already drafted" in r.output
        r = invoke(*args, env=env)
        assert len(server.requests) == n_pushpins and "0 images drafted" in r.output
    assert all(SECRET not in p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file())

    with QAStore(db) as store:
        drafts = store.items(source="gpt-draft", status="draft")
    assert len(drafts) == n_pushpins
    r = invoke(
        "qa", "review", "--dataset", dataset, "--db", db, "--accept-where", "agrees=yes", "--reviewer", "bob"
    )
    assert r.exit_code == 0, r.output
    with QAStore(db) as store:
        verified = store.items(source="gpt-draft", status="verified")
    assert verified and all(i.reviewer == "bob" for i in verified)
    assert len(verified) == sum(1 for d in drafts if d.sample_id.split("/")[2] != "good")  # anomalous agree

    bad = invoke("qa", "review", "--dataset", dataset, "--db", db, "--accept-where", "colour=red")
    assert bad.exit_code == 2 and "colour=red" in bad.output

    # the interactive walk: reject the first remaining draft, then quit; the decision is kept
    r = invoke("qa", "review", "--dataset", dataset, "--db", db, "--reviewer", "eve", input="r\nq\n")
    assert r.exit_code == 0, r.output
    assert "1 rejected" in r.output and "quit" in r.output

    s = invoke("qa", "stats", "--dataset", dataset, "--db", db, "--json")
    assert s.exit_code == 0, s.output
    stats = json.loads(s.output)
    assert stats["by_source"]["gpt-draft"] == n_pushpins
    assert stats["review"]["rejected"] == 1 and stats["review"]["accepted"] == len(verified)


def test_draft_without_key_for_remote_api_says_what_to_set(dataset: Path, tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    r = invoke("qa", "draft", "--dataset", dataset, "--db", tmp_path / "qa.sqlite", env=env)
    assert r.exit_code == 2 and "OPENAI_API_KEY" in r.output
