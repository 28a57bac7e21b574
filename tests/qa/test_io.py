"""Tests of QA files: QAItem JSONL round trips and the manual JSONL / CSV import."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlmad.qa import (
    QAImportError,
    QAStore,
    QAStoreError,
    manual_item_id,
    new_item_id,
    now_iso,
    read_items_jsonl,
    read_manual_file,
    write_items_jsonl,
)
from vlmad.records import DraftInfo, Manifest, QAItem


def _samples(manifest: Manifest) -> tuple[str, str, str]:
    """A normal test image, a logical anomaly of the same category and a train normal (template)."""
    cat = manifest.categories[0]
    normal = next(s for s in manifest if s.category == cat and s.split == "test" and s.label == "good")
    logical = next(s for s in manifest if s.category == cat and s.label == "logical")
    tpl = next(s for s in manifest if s.category == cat and s.split == "train")
    return normal.id, logical.id, tpl.id


def _items() -> list[QAItem]:
    now = now_iso()
    base = {"category": "pushpins", "created_at": now, "updated_at": now}
    return [
        QAItem(
            id=new_item_id(),
            sample_id="pushpins/test/logical_anomalies/000",
            kind="location",
            question="Where is the defect? «ü»",
            answer="Yes, anomalous: a pin is missing in the upper left.",
            verdict="anomalous",
            anomaly_type="logical",
            defect_type="missing_pushpin",
            explanation="One compartment is empty.\nSecond line.",
            template_sample_id="pushpins/train/good/000",
            source="gpt-draft",
            status="edited",
            author="gpt-4o",
            reviewer="alice",
            draft=DraftInfo(model="gpt-4o", prompt_name="qa_draft", prompt_version="1", prompt_tokens=900),
            metadata={"k": [1, 2.5, None]},
            **base,
        ),
        QAItem(
            id=new_item_id(),
            sample_id="pushpins/test/good/000",
            kind="detection",
            question="Is it normal?",
            answer="No, it is normal.",
            verdict="normal",
            source="template",
            status="verified",
            author="template",
            **base,
        ),
        QAItem(
            id=new_item_id(),
            sample_id="pushpins/test/good/001",
            kind="detection",
            question="Is it normal?",
            answer="unparseable",
            verdict=None,
            source="gpt-draft",
            status="failed",
            draft=DraftInfo(
                model="m", prompt_name="p", prompt_version="1", raw="bad \ud83d reply", error="x"
            ),
            **base,
        ),
    ]


# ---------------------------------------------------------------------- QAItem JSONL
def test_jsonl_round_trip(tmp_path: Path) -> None:
    items = _items()
    path = write_items_jsonl(tmp_path / "out" / "qa.jsonl", items)
    assert path == tmp_path / "out" / "qa.jsonl" and not (tmp_path / "out" / "qa.jsonl.tmp").exists()
    assert read_items_jsonl(path) == items
    assert "«ü»" in path.read_text(encoding="utf-8")  # readable, not escaped
    # store -> file -> another store gives the same items
    with QAStore(tmp_path / "a.sqlite") as a, QAStore(tmp_path / "b.sqlite") as b:
        a.add(items)
        write_items_jsonl(tmp_path / "dump.jsonl", a.items())
        b.add(read_items_jsonl(tmp_path / "dump.jsonl"), action="import", who="bob")
        assert b.items() == a.items()
        assert {h.action for h in b.history()} == {"import"}


def test_read_items_jsonl_reports_bad_lines(tmp_path: Path) -> None:
    good = _items()[:2]
    lines = [json.dumps(good[0].model_dump(mode="json")), "", "{not json"]
    lines += [json.dumps({**good[1].model_dump(mode="json"), "verdict": "maybe"})]
    lines += [json.dumps(good[1].model_dump(mode="json")), json.dumps(good[0].model_dump(mode="json")), "[1]"]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(QAImportError) as e:
        read_items_jsonl(path)
    assert (e.value.path, e.value.line) == (path, 3) and str(e.value).startswith(f"{path}:3: not JSON")
    problems: list[str] = []
    assert read_items_jsonl(path, skip_bad=True, problems=problems) == good
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:3", f"{path}:4", f"{path}:6", f"{path}:7"]
    assert "verdict" in problems[1] and "repeats item id" in problems[2] and "line 1" in problems[2]
    assert "JSON object" in problems[3]
    with pytest.raises(QAImportError, match="file not found") as e:
        read_items_jsonl(tmp_path / "missing.jsonl", skip_bad=True)
    assert e.value.line is None


# ---------------------------------------------------------------------- manual CSV
def test_manual_csv_import(tmp_path: Path, qa_manifest: Manifest) -> None:
    normal, logical, tpl = _samples(qa_manifest)
    category = qa_manifest.get(normal).category
    path = tmp_path / "manual.csv"
    path.write_text(
        "\ufeffSample_ID,question,answer,verdict,label,kind,defect_type,explanation,template_sample_id,\n"
        f'{normal},Is anything wrong?,"No, it is normal.",normal,,,good,,,\n'
        "\n"
        f'{logical},Where is the defect?,"Yes, anomalous:\na fruit is missing.",,logical,location,'
        f'missing_fruit,"Left side,\nbottom.",{tpl},\n'
        f'{logical},Is it anomalous?,"Yes.",anomalous,logical,,,,,\n',
        encoding="utf-8",
    )
    items = read_manual_file(path, qa_manifest, author="alice")
    assert [i.sample_id for i in items] == [normal, logical, logical]
    a, b, c = items
    assert {i.source for i in items} == {"manual"} and {i.status for i in items} == {"verified"}
    assert {i.author for i in items} == {"alice"} and {i.category for i in items} == {category}
    assert (a.verdict, a.anomaly_type, a.defect_type, a.kind) == ("normal", None, None, "detection")
    assert (b.verdict, b.anomaly_type, b.defect_type, b.kind) == (
        "anomalous",
        "logical",
        "missing_fruit",
        "location",
    )
    assert b.answer == "Yes, anomalous:\na fruit is missing." and b.explanation == "Left side,\nbottom."
    assert b.template_sample_id == tpl and c.anomaly_type == "logical"
    assert a.id == manual_item_id(normal, "detection", "Is anything wrong?")
    # importing the same file again gives the same ids: the store refuses duplicates, update() is a no-op
    again = read_manual_file(path, qa_manifest, author="alice")
    assert [i.id for i in again] == [i.id for i in items]
    with QAStore(tmp_path / "qa.sqlite") as store:
        store.add(items, who="alice", action="import")
        with pytest.raises(QAStoreError, match="already in the store"):
            store.add(again)
        assert [store.update(i, who="alice") for i in again] == items
        assert len(store.history()) == 3


def test_manual_csv_bad_row_names_its_line(tmp_path: Path, qa_manifest: Manifest) -> None:
    normal, logical, _ = _samples(qa_manifest)
    path = tmp_path / "manual.csv"
    path.write_text(
        "sample_id,question,answer,verdict,anomaly_type\n"  # line 1
        f'{logical},"Two\nline question?",Yes.,anomalous,structural\n'  # lines 2-3
        f"{normal},Is it normal?,Yes it is.,maybe,\n"  # line 4: bad verdict
        f"{normal},Normal?,No.,normal,logical\n"  # line 5: anomaly type on a normal verdict
        f"{normal},,No.,normal,\n"  # line 6: no question
        f'{normal},"Is\nit?",No.,normal,,extra\n'  # lines 7-8: too many fields
        f"{logical},Anomalous?,Yes.,anomalous,logical\n",  # line 9
        encoding="utf-8",
    )
    with pytest.raises(QAImportError) as e:
        read_manual_file(path, qa_manifest, author="bob")
    assert e.value.line == 4 and "verdict must be 'normal' or 'anomalous'" in e.value.problem
    assert str(e.value).startswith(f"{path}:4: ")
    problems: list[str] = []
    items = read_manual_file(path, qa_manifest, author="bob", skip_bad=True, problems=problems)
    assert [(i.sample_id, i.question) for i in items] == [
        (logical, "Two\nline question?"),
        (logical, "Anomalous?"),
    ]
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (4, 5, 6, 7)]
    assert "normal verdict" in problems[1] and "missing question" in problems[2] and "6 fields" in problems[3]


def test_manual_file_level_problems_always_raise(tmp_path: Path, qa_manifest: Manifest) -> None:
    cases = {
        "missing.csv": None,
        "notes.txt": "sample_id,question\n",
        "empty.csv": "\n\n",
        "cols.csv": "sample_id,question,answer\nx,q,a\n",  # neither verdict nor label
        "typo.csv": "sample_id,question,answer,verdict,explaination\nx,q,a,normal,e\n",
        "dupe.csv": "sample_id,question,answer,verdict,verdict\n",
        "latin1.jsonl": None,
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "latin1.jsonl").write_bytes('{"question": "Größe"}\n'.encode("latin-1"))
    expected = {
        "missing.csv": "file not found",
        "notes.txt": "unknown file type",
        "empty.csv": "empty CSV",
        "cols.csv": "missing column(s) verdict (or label)",
        "typo.csv": "unknown column(s) explaination",
        "dupe.csv": "repeated column(s) verdict",
        "latin1.jsonl": "not UTF-8",
    }
    for name, match in expected.items():
        with pytest.raises(QAImportError) as e:
            read_manual_file(tmp_path / name, qa_manifest, author="x", skip_bad=True, problems=[])
        assert match in str(e.value) and str(e.value).startswith(str(tmp_path / name))


# ---------------------------------------------------------------------- manual JSONL
def test_manual_jsonl_import_and_bad_lines(tmp_path: Path, qa_manifest: Manifest) -> None:
    normal, logical, tpl = _samples(qa_manifest)
    rows = [
        {"sample_id": logical, "question": "Q1?", "answer": "Yes.", "label": "logical", "id": "my-1"},
        "not json at all",
        {"sample_id": normal, "question": "Q2?", "answer": "No.", "verdict": "normal", "notes": "x"},
        {"sample_id": normal, "question": 3, "answer": "No.", "verdict": "normal"},
        {"sample_id": normal, "question": "Q5?", "answer": "No.", "verdict": "normal", "label": "logical"},
        {"sample_id": normal, "question": "Q6?", "answer": "No.", "verdict": "normal", "kind": "colour"},
        {"sample_id": logical, "question": "Q1?", "answer": "Again.", "label": "logical", "id": "my-1"},
        {"sample_id": normal, "question": "Q8?", "answer": "No.", "verdict": "normal", "category": "other"},
        {
            "sample_id": normal,
            "question": "Q9?",
            "answer": "No.",
            "verdict": "Normal",
            "template_sample_id": tpl,
        },
    ]
    path = tmp_path / "manual.jsonl"
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8"
    )
    with pytest.raises(QAImportError, match="not JSON") as e:
        read_manual_file(path, qa_manifest, author=None)
    assert e.value.line == 2
    problems: list[str] = []
    items = read_manual_file(path, qa_manifest, author=None, skip_bad=True, problems=problems)
    assert [i.id for i in items] == ["my-1", manual_item_id(normal, "detection", "Q9?")]
    assert (
        items[0].anomaly_type == "logical" and items[1].template_sample_id == tpl and items[1].author is None
    )
    assert [int(p.split(": ", 1)[0].rsplit(":", 1)[1]) for p in problems] == [2, 3, 4, 5, 6, 7, 8]
    for p, words in zip(
        problems,
        [
            "not JSON",
            "unknown field(s) notes",
            "question must be text",
            "contradicts label",
            "kind",
            "repeats item my-1 of line 1",
            "differs from the manifest",
        ],
        strict=True,
    ):
        assert words in p, p


def test_manual_unknown_sample_and_missing_image(tmp_path: Path, qa_manifest: Manifest) -> None:
    normal, logical, tpl = _samples(qa_manifest)
    # a copy of the dataset's image that is then deleted: the manifest still lists it
    gone = tmp_path / "gone.png"
    shutil.copy(qa_manifest.get(logical).image_path, gone)
    sample = qa_manifest.get(logical).model_copy(update={"image_path": gone})
    manifest = Manifest(qa_manifest.info, [sample, qa_manifest.get(normal), qa_manifest.get(tpl)])
    path = tmp_path / "manual.jsonl"
    rows = [
        {"sample_id": logical, "question": "Q1?", "answer": "Yes.", "verdict": "anomalous"},
        {"sample_id": "nope/test/000", "question": "Q2?", "answer": "No.", "verdict": "normal"},
        {
            "sample_id": normal,
            "question": "Q3?",
            "answer": "No.",
            "verdict": "normal",
            "template_sample_id": "x/1",
        },
        {
            "sample_id": normal,
            "question": "Q4?",
            "answer": "No.",
            "verdict": "normal",
            "template_sample_id": logical,
        },
        {"sample_id": normal, "question": "Q5?", "answer": "No.", "verdict": "normal"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    problems: list[str] = []
    items = read_manual_file(path, manifest, author="a", skip_bad=True, problems=problems)
    assert len(items) == 3 and len(problems) == 2  # the image is still there
    gone.unlink()
    with pytest.raises(QAImportError, match="no longer exists") as e:
        read_manual_file(path, manifest, author="a")
    assert e.value.line == 1 and str(gone) in str(e.value)
    problems = []
    items = read_manual_file(path, manifest, author="a", skip_bad=True, problems=problems)
    assert [i.question for i in items] == ["Q5?"]
    assert f"{path}:2: sample_id 'nope/test/000' is not in the manifest" in problems
    assert f"{path}:3: template_sample_id 'x/1' is not in the manifest" in problems
    assert any(p.startswith(f"{path}:4: ") and "no longer exists" in p for p in problems)
    # without a manifest nothing is checked against it, but the category must be given
    problems = []
    assert read_manual_file(path, None, author="a", skip_bad=True, problems=problems) == []
    assert len(problems) == 5 and all("missing category" in p for p in problems)
