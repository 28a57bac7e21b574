"""Training exports: LLaVA JSON, messages JSONL, Hugging Face DatasetDict; template image first, always."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmad.data.templates import choose_templates
from vlmad.errors import ConfigError, DatasetError
from vlmad.qa.export import ROLE_ORDER, build_records, export_dataset, prompt_with_images
from vlmad.qa.split import QASplit, partial_supervision_split
from vlmad.qa.template import template_items
from vlmad.records import DraftInfo, Manifest, QAItem

AT = "2024-01-01T00:00:00Z"
PROMPT = "Template image (normal reference): <image>\nTest image: <image>\n"


def _item(sample_id: str, category: str, *, source: str, status: str, n: int, **kw) -> QAItem:
    return QAItem(
        id=f"{source}-{status}-{n}",
        sample_id=sample_id,
        category=category,
        kind=kw.pop("kind", "detection"),
        question=f"{source} {status} question {n}?",
        answer=kw.pop("answer", f"Yes, {source} {status} answer {n}."),
        verdict="anomalous",
        source=source,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        created_at=AT,
        updated_at=AT,
        draft=DraftInfo(model="m", prompt_name="qa_draft", prompt_version="1")
        if source == "gpt-draft"
        else None,
        **kw,
    )


@pytest.fixture(scope="module")
def setup(qa_manifest: Manifest) -> tuple[Manifest, dict[str, str], QASplit, list[QAItem]]:
    m = qa_manifest.filter(category=("breakfast_box", "pushpins"))
    templates = choose_templates(m, seed=0)
    split = partial_supervision_split(m, fraction=0.25, seed=0)
    items = template_items(m, templates=templates, variants=2, seed=0, timestamp=AT)
    anomaly = next(s for s in m if s.is_anomalous)
    extra = [
        _item(anomaly.id, anomaly.category, source="manual", status="verified", n=1),
        _item(anomaly.id, anomaly.category, source="gpt-draft", status="draft", n=2),
        _item(anomaly.id, anomaly.category, source="gpt-draft", status="edited", n=3),
        _item(anomaly.id, anomaly.category, source="gpt-draft", status="rejected", n=4),
        _item(anomaly.id, anomaly.category, source="manual", status="rejected", n=5),
        _item(anomaly.id, anomaly.category, source="gpt-draft", status="failed", n=6),
        _item("other/unknown/000", anomaly.category, source="manual", status="verified", n=7),
    ]
    return m, templates, split, items + extra


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    m, templates, split, items = setup
    out = tmp_path_factory.mktemp("export")
    export_dataset(items, m, split, out, templates=templates)
    return out


def _load(out: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    llava, messages = {}, {}
    for side in ("train", "validation", "test"):
        for rec in json.loads((out / "llava" / f"{side}.json").read_text()):
            llava[rec["id"]] = {**rec, "side": side}
        for line in (out / "messages" / f"{side}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            messages[rec["images"][1]] = {**rec, "side": side}
    return llava, messages


def test_prompt_with_images() -> None:
    assert prompt_with_images("Q?") == PROMPT + "Q?"
    assert prompt_with_images("Q?", 1) == "Test image: <image>\nQ?"
    assert ROLE_ORDER == ("template", "test")
    with pytest.raises(ConfigError):
        prompt_with_images("Q?", 3)


def test_llava_records(setup, exported: Path) -> None:
    m, templates, split, items = setup
    llava, _ = _load(exported)
    root = m.info.root
    assert set(llava) == {s.id for s in m}
    for sid, rec in llava.items():
        s = m.get(sid)
        assert rec["side"] == split.assignment[sid]
        assert rec["image"] == [
            m.get(templates[sid]).image_path.relative_to(root).as_posix(),
            s.image_path.relative_to(root).as_posix(),
        ]
        conv = rec["conversations"]
        assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2) and len(conv) % 2 == 0
        assert conv[0]["value"].startswith(PROMPT) and conv[0]["value"].count("<image>") == len(rec["image"])
        assert all("<image>" not in c["value"] for c in conv[1:])
    # the known anomalous sample: its kept items, in kind order, answers exactly as stored
    anomaly = next(s for s in m if s.is_anomalous)
    mine = [it for it in items if it.sample_id == anomaly.id]
    kept = {it.id for it in mine if it.trusted or it.status == "draft"} - {"gpt-draft-draft-2"}
    answers = [c["value"] for c in llava[anomaly.id]["conversations"][1::2]]
    assert sorted(answers) == sorted(it.answer for it in mine if it.id in kept)
    assert "Yes, manual verified answer 1." in answers and "Yes, gpt-draft edited answer 3." in answers
    assert not any(a.endswith(("answer 2.", "answer 4.", "answer 5.", "answer 6.")) for a in answers)
    # detection first, hand-written before template items, template phrasings in variant order
    conv = llava[anomaly.id]["conversations"]
    assert conv[0]["value"] == PROMPT + "manual verified question 1?"
    assert answers[0] == "Yes, manual verified answer 1."
    detection = sorted(
        (it for it in mine if it.kind == "detection" and it.source == "template"),
        key=lambda it: it.metadata["variant"],
    )
    assert [c["value"] for c in conv[2:6]] == [x for it in detection for x in (it.question, it.answer)]


def test_messages_records(setup, exported: Path) -> None:
    m = setup[0]
    llava, messages = _load(exported)
    assert len(messages) == len(llava)
    for rec in messages.values():
        roles = [x["role"] for x in rec["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert sum(x["content"].count("<image>") for x in rec["messages"]) == len(rec["images"]) == 2
        assert all((m.info.root / p).is_file() for p in rec["images"])
    sid = next(s.id for s in m if s.split == "test" and s.label == "good")
    rec = messages[m.get(sid).image_path.relative_to(m.info.root).as_posix()]
    conv = llava[sid]["conversations"]
    assert [x["content"] for x in rec["messages"]] == [c["value"] for c in conv]
    assert rec["side"] == llava[sid]["side"] == "test"
    info = json.loads((exported / "messages" / "dataset_info.json").read_text())
    assert (
        info["vlmad_train"]["file_name"] == "train.jsonl" and info["vlmad_train"]["formatting"] == "sharegpt"
    )
    assert info["vlmad_test"]["columns"] == {"messages": "messages", "images": "images"}


def test_no_leakage(setup, exported: Path) -> None:
    m, _, split, _ = setup
    llava, _ = _load(exported)
    sides: dict[str, set[str]] = {}
    for sid, rec in llava.items():
        sides.setdefault(rec["side"], set()).add(sid)
    assert not (sides["train"] & sides["test"]) and not (sides["validation"] & sides["test"])
    tests_anomalous = {s.id for s in m if s.split == "test" and s.is_anomalous}
    assert sides["train"] & tests_anomalous  # the partial supervision share is in training...
    assert sides["test"] & tests_anomalous  # ...and the rest stays in test
    assert sides["train"] & tests_anomalous == {s for s in split.ids("train") if s in tests_anomalous}


def test_hf_dataset_round_trip(setup, exported: Path) -> None:
    import datasets
    from PIL import Image

    m, templates, _, _ = setup
    _, messages = _load(exported)
    dd = datasets.load_from_disk(str(exported / "hf"))
    assert set(dd) == {"train", "validation", "test"}
    assert sum(len(d) for d in dd.values()) == len(m)
    anomaly = next(s for s in m if s.is_anomalous)
    side = next(k for k, d in dd.items() if anomaly.id in d["sample_id"])
    row = dd[side][dd[side]["sample_id"].index(anomaly.id)]
    assert row["template_sample_id"] == templates[anomaly.id]
    assert (row["category"], row["label"], row["defect_type"], row["split"]) == (
        anomaly.category,
        anomaly.label,
        anomaly.defect_type,
        side,
    )
    tpl, test = row["images"]
    assert isinstance(tpl, Image.Image) and isinstance(test, Image.Image)
    with Image.open(anomaly.image_path) as ref:
        assert test.size == ref.size == (64, 64)
        assert list(test.convert("RGB").get_flattened_data()) == list(ref.convert("RGB").get_flattened_data())
    with Image.open(m.get(templates[anomaly.id]).image_path) as ref:
        assert list(tpl.convert("RGB").get_flattened_data()) == list(ref.convert("RGB").get_flattened_data())
    rel = anomaly.image_path.relative_to(m.info.root).as_posix()
    assert row["messages"] == messages[rel]["messages"]
    assert "manual-verified-1" in row["qa_ids"] and "gpt-draft-draft-2" not in row["qa_ids"]


def test_export_json(setup, exported: Path) -> None:
    m, _, split, _ = setup
    meta = json.loads((exported / "export.json").read_text())
    assert meta["image_root"] == str(m.info.root)
    assert meta["role_order"] == ["template", "test"]
    assert meta["formats"] == ["llava", "messages", "hf"] and meta["include_drafts"] is False
    assert meta["split"]["fraction"] == 0.25 and meta["seed"] == 0
    assert meta["counts"]["test"]["images"] == split.totals["test"]
    llava, _ = _load(exported)
    for side in ("train", "validation", "test"):
        recs = [r for r in llava.values() if r["side"] == side]
        assert meta["counts"][side]["turns"] == sum(len(r["conversations"]) // 2 for r in recs)
        assert meta["records_per_format"]["llava"][side] == len(recs)
    # drafts, rejected, failed (5) and the unknown sample's item left out
    assert meta["items"]["skipped"] == {"untrusted": 4, "not_in_manifest": 1}


def test_include_drafts_never_rejected(setup, tmp_path: Path) -> None:
    m, templates, split, items = setup
    res = export_dataset(
        items, m, split, tmp_path, templates=templates, formats=("llava",), include_drafts=True
    )
    assert not (tmp_path / "hf").exists() and not (tmp_path / "messages").exists()
    llava, answers = {}, []
    for side in ("train", "validation", "test"):
        for rec in json.loads((tmp_path / "llava" / f"{side}.json").read_text()):
            llava[rec["id"]] = rec
            answers += [c["value"] for c in rec["conversations"][1::2]]
    assert "Yes, gpt-draft draft answer 2." in answers
    assert not any(a.endswith(("answer 4.", "answer 5.", "answer 6.")) for a in answers)
    assert res.skipped == {"untrusted": 3, "not_in_manifest": 1}
    assert json.loads((tmp_path / "export.json").read_text())["include_drafts"] is True


def test_missing_image_names_the_file_and_writes_nothing(setup, tmp_path: Path) -> None:
    m, templates, split, items = setup
    victim = next(s for s in m if s.is_anomalous)
    gone = victim.image_path.with_name("gone.png")
    broken = Manifest(
        m.info, [s.model_copy(update={"image_path": gone}) if s.id == victim.id else s for s in m]
    )
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"gone\.png"):
        export_dataset(items, broken, split, out, templates=templates)
    assert not out.exists()
    # a missing template image too
    tpl = templates[victim.id]
    broken = Manifest(m.info, [s.model_copy(update={"image_path": gone}) if s.id == tpl else s for s in m])
    with pytest.raises(DatasetError, match="template image"):
        export_dataset(items, broken, split, out, templates=templates)
    assert not out.exists()


def test_item_template_overrides_and_errors(setup) -> None:
    m, templates, split, items = setup
    sid = next(s.id for s in m if s.split == "test" and s.label == "good")
    other = next(
        t for t in (s.id for s in m if s.split == "train" and s.label == "good") if t != templates[sid]
    )
    extra = _item(sid, m.get(sid).category, source="manual", status="verified", n=9, template_sample_id=other)
    records = build_records([*items, extra], m, split, templates=templates)
    mine = [r for r in records if r.sample.id == sid]
    assert [r.id for r in mine] == [sid, f"{sid}@{other}"]
    assert mine[1].template.id == other and [it.id for it in mine[1].items] == ["manual-verified-9"]
    with pytest.raises(ConfigError, match="no template"):
        build_records(items, m, split, templates={})
    with pytest.raises(ConfigError, match="formats"):
        export_dataset(items, m, split, Path("/nonexistent"), templates=templates, formats=("csv",))
    partial = QASplit(assignment={}, fraction=0.1, seed=0)
    with pytest.raises(ConfigError, match="no side"):
        build_records(items, m, partial, templates=templates)


def test_absolute_paths(setup, tmp_path: Path) -> None:
    m, templates, split, items = setup
    export_dataset(items, m, split, tmp_path, templates=templates, formats=("messages",), absolute_paths=True)
    line = (tmp_path / "messages" / "test.jsonl").read_text().splitlines()[0]
    images = json.loads(line)["images"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in images)
    assert json.loads((tmp_path / "export.json").read_text())["image_root"] is None


def test_reexport_replaces_and_prints_nothing(
    setup, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import datasets

    m, templates, split, items = setup
    few = [it for it in items if it.category == "pushpins"]
    export_dataset(items, m, split, tmp_path, templates=templates, formats=("hf",))
    export_dataset(few, m, split, tmp_path, templates=templates, formats=("hf",))
    assert capfd.readouterr() == ("", "")
    dd = datasets.load_from_disk(str(tmp_path / "hf"))
    assert {c for d in dd.values() for c in d["category"]} == {"pushpins"}
    other = tmp_path / "other"
    (other / "hf").mkdir(parents=True)
    (other / "hf" / "mine.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not an earlier export"):
        export_dataset(few, m, split, other, templates=templates, formats=("hf",))
    assert (other / "hf" / "mine.txt").read_text() == "keep me"
    assert not (other / "export.json").exists()
