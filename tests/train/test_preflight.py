"""The pre-flight check: every problem in one list, the run stopped unless dropping is allowed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmad.train import PreflightError, train
from vlmad.train.data import Encoder, read_export
from vlmad.train.modeling import load_processor
from vlmad.train.preflight import preflight

from .conftest import config, copy_export


@pytest.fixture
def broken_export(qa_export: Path, tmp_path: Path) -> Path:
    """The export with record 1 holding an extra placeholder, record 3 a missing test image and record 5
    no answer text."""
    out = copy_export(qa_export, tmp_path / "broken", with_hf=False)
    path = out / "messages" / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["messages"][2]["content"] += " Compare with <image>."
    rows[3]["images"][1] = "breakfast_box/test/good/999.png"
    rows[5]["messages"][1]["content"] = " "
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_problems_are_listed_together_with_token_statistics(
    tiny_models: dict[str, Path], broken_export: Path
) -> None:
    records = read_export(broken_export, "train")
    report = preflight(Encoder(load_processor(str(tiny_models["llava"]))), records)
    kinds = {p.index: p.kind for p in report.problems}
    assert kinds == {1: "image_count", 3: "missing_image", 5: "no_answer"}
    assert "999.png: file not found" in next(p.message for p in report.problems if p.index == 3)
    assert report.kept == [i for i in range(len(records)) if i not in kinds] and report.dropped == [1, 3, 5]
    assert report.tokens.min > 0 and report.tokens.max >= report.tokens.p95 >= report.tokens.median
    assert report.image_tokens.mean == 32 and report.answer_tokens.min > 0  # 16 per LLaVA image
    with pytest.raises(PreflightError) as err:
        report.raise_for_problems()
    msg = str(err.value)
    assert "3 of 12 record(s) cannot be trained on" in msg and msg.count("\n  - [") == 3
    assert "allow_drop" in msg
    report.raise_for_problems(allow_drop=True)  # dropping allowed: no error, the dropped records are listed


def test_budget_cuts_into_images_or_answers(tiny_models: dict[str, Path], qa_export: Path) -> None:
    bundle = load_processor(str(tiny_models["internvl"]))
    records = read_export(qa_export, "train")[:4]
    full = [Encoder(bundle).encode(r) for r in records]
    image_end = full[0].image_end
    assert all(e.image_end == image_end for e in full)  # same image sizes, same labels before the question

    report = preflight(Encoder(bundle, max_length=image_end - 1), records)
    assert [p.kind for p in report.problems] == ["truncated_into_images"] * 4 and not report.kept
    assert f"cuts into its image tokens (they end at token {image_end})" in report.problems[0].message
    with pytest.raises(PreflightError, match="none is left to train on"):
        report.raise_for_problems(allow_drop=True)

    report = preflight(Encoder(bundle, max_length=image_end + 5), records)
    assert [p.kind for p in report.problems] == ["over_budget"] * 4 and report.over_budget == 4
    with pytest.raises(PreflightError, match="truncate_over_budget"):
        report.raise_for_problems()

    # truncation allowed: over-budget samples whose images fit are kept, cut, and counted
    report = preflight(Encoder(bundle, max_length=image_end + 40, truncate=True), records)
    assert report.ok and report.truncated == [0, 1, 2, 3] and report.kept == [0, 1, 2, 3]
    assert "4 sample(s) over it, 4 truncated" in report.summary()


def test_training_stops_before_loading_weights_unless_dropping_is_allowed(
    tiny_models: dict[str, Path], broken_export: Path, tmp_path: Path
) -> None:
    cfg = config(tiny_models["llava"], broken_export, tmp_path / "run", max_steps=1)
    with pytest.raises(PreflightError, match=r"\[missing_image\]"):
        train(cfg)
    saved = json.loads((tmp_path / "run" / "preflight.json").read_text())
    assert saved["dropped"] == [1, 3, 5] and saved["counts"]["image_count"] == 1
    assert not list((tmp_path / "run").glob("checkpoint-*"))
    result = train(
        config(tiny_models["llava"], broken_export, tmp_path / "run2", max_steps=1, allow_drop=True)
    )
    assert result.preflight.dropped == [1, 3, 5] and result.global_step == 1
    assert any("3 training record(s) dropped" in w for w in result.warnings)
