"""Tests of the QA store: SQLite WAL, concurrent writers, the never-overwrite rule, history, refusals."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vlmad.errors import ConfigError, VlmadError
from vlmad.qa import (
    SCHEMA_VERSION,
    QAError,
    QAStore,
    QAStoreError,
    default_store_path,
    new_item_id,
    now_iso,
    template_item_id,
)
from vlmad.records import DraftInfo, QAItem


def make_item(
    sample_id: str = "cat/test/logical/000",
    *,
    source: str = "gpt-draft",
    status: str = "draft",
    item_id: str | None = None,
    kind: str = "detection",
    model: str = "gpt-4o",
    prompt_version: str = "1",
    **fields: Any,
) -> QAItem:
    """A valid QA item; drafts carry DraftInfo for ``model`` / ``prompt_version``."""
    data: dict[str, Any] = {
        "id": item_id or new_item_id(),
        "sample_id": sample_id,
        "category": sample_id.split("/")[0],
        "kind": kind,
        "question": "Is there an anomaly in the test image?",
        "answer": "Yes, the test image is anomalous: a fruit is missing.",
        "verdict": "anomalous",
        "anomaly_type": "logical",
        "defect_type": "missing_fruit",
        "explanation": "A fruit is missing on the left.",
        "source": source,
        "status": status,
        "author": model if source == "gpt-draft" else "alice",
        "created_at": now_iso(),
        "updated_at": now_iso(),
        "draft": DraftInfo(model=model, prompt_name="qa_draft", prompt_version=prompt_version)
        if source == "gpt-draft"
        else None,
    }
    data.update(fields)
    return QAItem.model_validate(data)


def template(sample_id: str, variant: int, answer: str = "No, the test image is normal.") -> QAItem:
    return make_item(
        sample_id,
        source="template",
        status="verified",
        item_id=template_item_id(sample_id, "detection", variant),
        author="template",
        answer=answer,
        verdict="normal",
        anomaly_type=None,
        defect_type=None,
        explanation="",
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QAStore]:
    with QAStore(tmp_path / "qa.sqlite") as s:
        yield s


# ---------------------------------------------------------------------- small helpers and opening
def test_helpers() -> None:
    assert default_store_path(Path("/data/ds")) == Path("/data/ds/qa.sqlite")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", now_iso())
    ids = {new_item_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    a = template_item_id("s", "detection", 0)
    assert a == template_item_id("s", "detection", 0) and len(a) == 32
    assert len({a, template_item_id("s", "detection", 1), template_item_id("s", "location", 0)}) == 3
    assert issubclass(QAStoreError, QAError) and issubclass(QAError, VlmadError)


def test_create_uses_wal_and_marks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "qa.sqlite"
    with pytest.raises(QAStoreError, match="no QA store here") as e:
        QAStore(path, create=False)
    assert str(path) in str(e.value) and not path.exists()
    QAStore(path).close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(con.execute("SELECT key, value FROM meta"))
    assert meta == {"application": "vlmad-qa", "schema_version": str(SCHEMA_VERSION)}
    con.close()
    with QAStore(path, create=False) as s:
        assert s.count() == 0 and s.history() == []
    s.close()  # twice is fine
    with pytest.raises(QAStoreError, match="closed"):
        s.count()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qa.sqlite"
    QAStore(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    with pytest.raises(QAStoreError, match="newer vlmad") as e:
        QAStore(path)
    assert str(e.value).startswith(f"{path}: ") and "upgrade vlmad" in str(e.value)


def test_foreign_files_are_refused_and_left_unchanged(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    con.commit()
    con.close()
    before = other.read_bytes()
    with pytest.raises(QAStoreError, match="not a vlmad QA database") as e:
        QAStore(other)
    assert str(other) in str(e.value)
    assert other.read_bytes() == before  # not switched to WAL, no tables added
    con = sqlite3.connect(other)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    con.close()

    for name, ddl in [
        ("meta.sqlite", "CREATE TABLE meta (id INTEGER, blob BLOB)"),  # a "meta" table of another program
        ("marker.sqlite", "CREATE TABLE meta (key TEXT, value TEXT)"),  # right shape, no vlmad-qa marker
    ]:
        con = sqlite3.connect(tmp_path / name)
        con.execute(ddl)
        con.commit()
        con.close()
        with pytest.raises(QAStoreError, match="not a vlmad QA database"):
            QAStore(tmp_path / name)

    text = tmp_path / "notes.sqlite"
    text.write_text("id,question\n1,hello\n")
    with pytest.raises(QAStoreError, match="not a SQLite database") as e:
        QAStore(text)
    assert str(text) in str(e.value) and text.read_text() == "id,question\n1,hello\n"
    with pytest.raises(QAStoreError, match="directory"):
        QAStore(tmp_path)


def test_locked_database_gives_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "qa.sqlite"
    with QAStore(path) as s:
        kept = make_item()
        s.add_draft(kept)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    other.execute("DELETE FROM history")  # holds the write lock with uncommitted changes
    try:
        with QAStore(path, timeout=0.2) as s:
            assert s.get(kept.id) == kept  # WAL: readers are not blocked by a writer
            t0 = time.monotonic()
            with pytest.raises(QAStoreError, match=r"locked by another process.*retry when") as e:
                s.add_draft(make_item())
            assert time.monotonic() - t0 >= 0.15  # waited for the busy timeout first
            assert str(e.value).startswith(f"{path}: ") and not isinstance(e.value, sqlite3.Error)
            with pytest.raises(QAStoreError, match="locked"):
                s.review(kept.id, "accept", reviewer="bob")
            with pytest.raises(QAStoreError, match="locked"):
                s.put_template([template("cat/test/good/000", 0)])
            other.execute("ROLLBACK")
            s.review(kept.id, "accept", reviewer="bob")  # works once the lock is gone
            assert s.get(kept.id).status == "verified"
            assert [h.action for h in s.history()] == ["create", "review"]
    finally:
        other.close()


# ---------------------------------------------------------------------- add, get, filters
def test_add_get_and_filters(store: QAStore) -> None:
    a = make_item("breakfast_box/test/a", status="draft", kind="detection")
    b = make_item("breakfast_box/test/b", source="manual", status="verified", kind="location")
    c = make_item("pushpins/test/c", source="template", status="verified", kind="detection")
    assert store.add([c, a, b], who="alice") == [c.id, a.id, b.id]
    assert store.get(a.id) == a
    assert [i.id for i in store.items()] == [a.id, b.id, c.id]  # by sample id
    assert store.count() == 3
    assert [i.id for i in store.items(source="manual")] == [b.id]
    assert [i.id for i in store.items(status=["draft", "verified"], category="breakfast_box")] == [a.id, b.id]
    assert [i.id for i in store.items(kind="detection", sample_ids=["pushpins/test/c", "x"])] == [c.id]
    assert store.items(sample_ids=[]) == [] and store.count(status=[]) == 0
    many = [f"other/{k}" for k in range(1200)] + [b.sample_id]  # longer than one SQL parameter list
    assert [i.id for i in store.items(sample_ids=many)] == [b.id] and store.count(sample_ids=many) == 1
    assert store.count(source="gpt-draft", status="draft") == 1
    with pytest.raises(ConfigError, match="unknown QA status 'verifed'"):
        store.items(status="verifed")
    with pytest.raises(QAStoreError, match="no item with id nope"):
        store.get("nope")
    # same id again, or twice in one batch: refused, nothing written
    d = make_item("pushpins/test/d")
    with pytest.raises(QAStoreError, match="already in the store"):
        store.add([d, a])
    with pytest.raises(QAStoreError, match="twice"):
        store.add([d, d])
    assert store.count() == 3 and len(store.history()) == 3
    hist = store.history(a.id)
    assert len(hist) == 1 and hist[0].action == "create" and hist[0].who == "alice"
    assert hist[0].before is None and hist[0].after == a.model_dump(mode="json")
    store.add([d], who="bob", action="import")
    assert store.history(d.id)[0].action == "import"
    with pytest.raises(QAStoreError, match="'create' or 'import'"):
        store.add([make_item()], action="review")


def test_text_with_lone_surrogates_is_stored(store: QAStore) -> None:
    raw = "model said \ud800 and {broken"
    item = make_item(
        status="failed",
        verdict=None,
        anomaly_type=None,
        defect_type=None,
        draft=DraftInfo(model="m", prompt_name="p", prompt_version="1", raw=raw, error="not JSON"),
        metadata={"note": "é\udcff"},
    )
    store.add_draft(item)
    assert store.get(item.id) == item


# ---------------------------------------------------------------------- the never-overwrite rule
def test_drafts_never_overwrite_checked_items(store: QAStore) -> None:
    first = make_item()
    store.add_draft(first)
    verified = store.review(first.id, "accept", reviewer="alice")
    assert verified.status == "verified" and verified.reviewer == "alice"

    # re-drafting the same sample (even with the same id) creates a new item, the checked one is kept
    again = first.model_copy(update={"answer": "No, the test image is normal.", "verdict": "normal"})
    new_id = store.add_draft(again)
    assert new_id != first.id and store.get(first.id) == verified
    assert store.get(new_id).answer == "No, the test image is normal." and store.get(new_id).status == "draft"
    redraft = make_item(first.sample_id)
    assert store.add_draft(redraft) == redraft.id
    assert store.count(sample_ids=first.sample_id) == 3

    # update() with a draft over a verified / edited / rejected item is refused, nothing changes
    edited = store.review(new_id, "edit", reviewer="bob", changes={"answer": "No, it is normal."})
    rejected = store.review(redraft.id, "reject", reviewer="bob")
    n_history = len(store.history())
    for checked in (verified, edited, rejected):
        draft_over = checked.model_copy(update={"answer": "overwritten", "status": "draft", "reviewer": None})
        with pytest.raises(QAStoreError, match="never") as e:
            store.update(draft_over, who="drafter")
        assert str(store.path) in str(e.value)
        assert store.get(checked.id) == checked
    assert len(store.history()) == n_history

    # a draft may replace a draft or a failed draft; a person may change a checked item
    d = make_item()
    store.add_draft(d)
    store.update(d.model_copy(update={"answer": "Yes, the test image is anomalous."}), who="drafter")
    assert store.get(d.id).answer == "Yes, the test image is anomalous."
    manual = verified.model_copy(
        update={"source": "manual", "answer": "Yes, fruit missing.", "author": "carol"}
    )
    stored = store.update(manual, who="carol")
    assert stored.answer == "Yes, fruit missing." and stored.created_at == verified.created_at
    entry = store.history(first.id)[-1]
    assert entry.action == "update" and entry.who == "carol"
    assert entry.before == verified.model_dump(mode="json") and entry.after == stored.model_dump(mode="json")
    # an unchanged update records nothing
    n_history = len(store.history())
    assert store.update(stored, who="carol") == stored and len(store.history()) == n_history
    with pytest.raises(QAStoreError, match="no item with id"):
        store.update(make_item(), who="x")


def test_add_draft_takes_only_new_drafts(store: QAStore) -> None:
    with pytest.raises(QAStoreError, match="gpt-draft"):
        store.add_draft(make_item(source="manual", status="verified"))
    with pytest.raises(QAStoreError, match="status 'draft' or 'failed'"):
        store.add_draft(make_item(status="verified"))
    assert store.count() == 0


# ---------------------------------------------------------------------- review and history
def test_review_history_before_and_after(store: QAStore) -> None:
    a, b, c, f = make_item(), make_item(), make_item(), make_item(status="failed")
    for it in (a, b, c, f):
        store.add_draft(it)

    accepted = store.review(a.id, "accept", reviewer="alice")
    assert (accepted.status, accepted.reviewer, accepted.answer) == ("verified", "alice", a.answer)

    changes = {"answer": "No, the test image is normal.", "verdict": "normal", "anomaly_type": None}
    changes |= {"defect_type": None, "explanation": ""}
    edited = store.review(b.id, "edit", reviewer="bob", changes=changes)
    assert edited.status == "edited" and edited.verdict == "normal" and edited.reviewer == "bob"
    assert edited.created_at == b.created_at and edited.draft == b.draft and edited.source == "gpt-draft"
    entry = store.history(b.id)[-1]
    assert entry.action == "edit" and entry.who == "bob"
    assert entry.before is not None and entry.after is not None
    assert entry.before["answer"] == b.answer and entry.before["status"] == "draft"
    assert entry.after["answer"] == "No, the test image is normal." and entry.after["status"] == "edited"
    # accepting an edited item keeps it 'edited': its content is still a person's edit
    assert store.review(b.id, "accept", reviewer="carol").status == "edited"

    rejected = store.review(c.id, "reject", reviewer="alice")
    assert rejected.status == "rejected"
    assert store.history(c.id)[-1].action == "review"
    assert store.history(c.id)[-1].after == rejected.model_dump(mode="json")

    # refusals change nothing
    n_history = len(store.history())
    for call, match in [
        (lambda: store.review(f.id, "accept", reviewer="x"), "status 'failed'"),
        (lambda: store.review(c.id, "accept", reviewer="x"), "status 'rejected'"),
        (lambda: store.review("nope", "accept", reviewer="x"), "no item with id nope"),
        (lambda: store.review(a.id, "edit", reviewer="x", changes={"verdict": "maybe"}), "verdict"),
        (lambda: store.review(a.id, "edit", reviewer="x", changes={"id": "other"}), "may not change id"),
        (lambda: store.review(a.id, "edit", reviewer="x", changes={"status": "draft"}), "status"),
        (lambda: store.review(a.id, "edit", reviewer="x", changes={"answr": "y"}), "unknown field"),
        (lambda: store.review(a.id, "edit", reviewer="x"), "needs the changes"),
        (lambda: store.review(a.id, "accept", reviewer="x", changes={"answer": "y"}), "only with decision"),
        (lambda: store.review(a.id, "maybe", reviewer="x"), "unknown review decision"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(QAStoreError, match=match):
            call()
    assert len(store.history()) == n_history and store.get(a.id) == accepted
    seqs = [h.seq for h in store.history()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_put_template_is_idempotent_and_spares_reviewed_items(store: QAStore) -> None:
    items = [template(f"cat/test/good/{k:03d}", v) for k in range(3) for v in range(2)]
    assert store.put_template(items) == (6, 0)
    assert store.put_template(items) == (0, 0)
    assert store.count(source="template") == 6 and len(store.history()) == 6

    # a rebuilt template with new wording replaces the untouched item (created_at kept, history 'update')
    old = store.get(items[0].id)
    time.sleep(1.01)  # now_iso() has seconds precision
    reworded = template(items[0].sample_id, 0, answer="No, nothing is wrong: the test image is normal.")
    assert store.put_template([reworded, *items[1:]]) == (0, 1)
    new = store.get(items[0].id)
    assert (
        new.answer == reworded.answer and new.created_at == old.created_at and new.updated_at > old.updated_at
    )
    entry = store.history(items[0].id)[-1]
    assert entry.action == "update" and entry.before == old.model_dump(mode="json")

    # a reviewer-edited or rejected template item is left alone by later rebuilds
    edited = store.review(items[1].id, "edit", reviewer="alice", changes={"answer": "No, it is normal."})
    accepted = store.review(items[2].id, "accept", reviewer="alice")
    rejected = store.review(items[3].id, "reject", reviewer="alice")
    rebuilt = [
        template(it.sample_id, int(it.id == items[1].id), answer="Changed wording.") for it in items[1:4]
    ]
    rebuilt = [t.model_copy(update={"id": it.id}) for t, it in zip(rebuilt, items[1:4], strict=True)]
    assert store.put_template(rebuilt) == (0, 0)
    assert store.get(edited.id) == edited and store.get(accepted.id) == accepted
    assert store.get(rejected.id) == rejected

    # only template items; nothing written when one is not
    with pytest.raises(QAStoreError, match="takes template items"):
        store.put_template([template("cat/test/good/009", 0), make_item()])
    assert store.count() == 6


def test_has_draft(store: QAStore) -> None:
    s1, s2 = "cat/test/logical/001", "cat/test/logical/002"
    assert not store.has_draft(s1, model="gpt-4o", prompt_version="1")
    store.add_draft(make_item(s1, kind="location"))
    store.add_draft(make_item(s2, status="failed", verdict=None, anomaly_type=None, defect_type=None))
    store.add([make_item(s1, source="manual", status="verified", draft=None)])
    assert store.has_draft(s1, model="gpt-4o", prompt_version="1")
    assert store.has_draft(s1, model="gpt-4o", prompt_version="1", kind="location")
    assert not store.has_draft(s1, model="gpt-4o", prompt_version="1", kind="detection")
    assert not store.has_draft(s1, model="gpt-4o-mini", prompt_version="1")
    assert not store.has_draft(s1, model="gpt-4o", prompt_version="2")
    assert store.has_draft(s2, model="gpt-4o", prompt_version="1")  # failed drafts count: no re-request


# ---------------------------------------------------------------------- concurrent processes
N_DRAFTS = 120
N_BATCH = 40


def _writer(path: str, name: str, start: Any) -> None:
    """One writer process: opens (maybe creates) the store, adds drafts and a batch, reviews every draft."""
    start.wait(60)  # both writers begin together
    with QAStore(path, timeout=30) as s:
        ids = []
        for k in range(N_DRAFTS):
            ids.append(s.add_draft(make_item(f"{name}/test/{k:03d}", author=name)))
            time.sleep(0.002)  # a drafting run writes between API replies
        s.add(
            [make_item(f"{name}/test/b{k:03d}", source="manual", status="verified") for k in range(N_BATCH)]
        )
        for k, item_id in enumerate(ids):
            if k % 3 == 0:
                s.review(item_id, "accept", reviewer=name)
            elif k % 3 == 1:
                s.review(item_id, "edit", reviewer=name, changes={"answer": f"edited by {name}"})
            else:
                s.review(item_id, "reject", reviewer=name)


def test_two_writer_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "qa.sqlite"  # not created yet: both processes race to create it too
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(path), name, start)) for name in ("p1", "p2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]

    with QAStore(path) as s:
        assert s.count() == 2 * (N_DRAFTS + N_BATCH)
        for name in ("p1", "p2"):
            drafts = [i for i in s.items(source="gpt-draft") if i.author == name]
            assert len(drafts) == N_DRAFTS
            statuses = sorted(i.status for i in drafts)
            assert statuses.count("verified") == N_DRAFTS // 3
            assert statuses.count("edited") == N_DRAFTS // 3
            assert statuses.count("rejected") == N_DRAFTS // 3
            assert all(i.answer == f"edited by {name}" for i in drafts if i.status == "edited")
            assert all(i.reviewer == name for i in drafts)
        history = s.history()
        assert len(history) == 2 * (N_DRAFTS + N_BATCH) + 2 * N_DRAFTS
        assert sum(h.action == "create" for h in history) == 2 * (N_DRAFTS + N_BATCH)
        assert sum(h.action in ("review", "edit") for h in history) == 2 * N_DRAFTS
        # both writers really ran at the same time: their history rows interleave
        p1_ids = {i.id for i in s.items() if i.sample_id.startswith("p1/")}
        owners = [h.item_id in p1_ids for h in history]
        switches = sum(a != b for a, b in itertools.pairwise(owners))
        assert switches > 2
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


N_ROUNDS = 40


def _creator(folder: str, start: Any) -> None:
    """Opens a new store file together with the other processes, round after round, and adds one draft."""
    try:
        for r in range(N_ROUNDS):
            start.wait(60)
            with QAStore(Path(folder) / f"qa{r}.sqlite", timeout=30) as s:
                s.add_draft(make_item(f"cat/test/{r:03d}"))
    except BaseException:
        start.abort()  # the other processes stop at once instead of waiting for this one
        raise


def test_processes_creating_one_store_at_once(tmp_path: Path) -> None:
    # SQLite answers "locked" at once, without waiting, when two connections switch a new file to WAL at
    # the same time; opening must wait and retry instead of failing
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_creator, args=(str(tmp_path), start)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    for r in range(N_ROUNDS):
        with QAStore(tmp_path / f"qa{r}.sqlite", create=False) as s:
            assert s.count() == 3 and len(s.history()) == 3
