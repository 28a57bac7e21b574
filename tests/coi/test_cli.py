"""``vlmad coi``: run (recipe or flags, API or local), score, compare, prompts; and the eval/ recipes."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vlmad.api.testing import Reply
from vlmad.cli.coi import app
from vlmad.coi.recipe import load_recipe
from vlmad.errors import ConfigError

from .conftest import ANSWER, NORMAL

ROOT = Path(__file__).parents[2]
runner = CliRunner()


def invoke(*args: str) -> Any:
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_prompts_lists_the_packaged_prompts() -> None:
    out = invoke("prompts").output
    for name in ("coi_p1", "coi_p2", "coi_p3", "plain"):
        assert name in out
    assert "qa_draft" not in out


def test_run_score_compare_against_a_server(server: Any, coi_dataset: Path, tmp_path: Path) -> None:
    def script(sid: str, request: dict[str, Any], n: int) -> Reply:
        return Reply(content=NORMAL if "/good/" in sid else ANSWER)

    srv = server(script)
    run_dir = tmp_path / "run"
    result = invoke(
        "run",
        "--model", "gpt-4o",
        "--base-url", srv.url,
        "--prompt", "coi_p1,plain",
        "--dataset", coi_dataset,
        "--out", run_dir,
        "--max-side", "64",
        "--concurrency", "4",
        "--templates", "similar",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "24 predictions written" in result.output and "$" in result.output
    record = json.loads((run_dir / "run.json").read_text())
    assert set(record["runs"]) == {"gpt-4o/coi_p1", "gpt-4o/plain"}
    assert record["recipe"]["templates"]["strategy"] == "similar"

    again = invoke(
        "run", "--model", "gpt-4o", "--base-url", srv.url, "--prompt", "coi_p1,plain",
        "--dataset", coi_dataset, "--out", run_dir, "--max-side", "64", "--templates", "similar",
    )  # fmt: skip
    assert "0 predictions written" in again.output and "24 already done" in again.output

    score = invoke("score", run_dir, "--no-bertscore", "--by-category", "--n-boot", "200")
    assert score.exit_code == 0, score.output
    assert "Table 1" in score.output and "100.0" in score.output
    rows = list(csv.DictReader((run_dir / "scores" / "table1.csv").open()))
    assert {r["run_id"] for r in rows} == {"gpt-4o/coi_p1", "gpt-4o/plain"}
    assert {r["category"] for r in rows} == {"all", "pushpins", "screw_bag"}
    assert (run_dir / "scores" / "report.html").is_file()

    compare = invoke("compare", run_dir / "predictions.jsonl", "--dataset", coi_dataset, "--n-boot", "200")
    assert compare.exit_code == 0, compare.output
    ab = list(csv.DictReader((run_dir / "compare" / "ab.csv").open()))
    assert [(r["base"], r["other"], r["subset"]) for r in ab][:2] == [
        ("gpt-4o/coi_p1", "gpt-4o/plain", "all"),
        ("gpt-4o/coi_p1", "gpt-4o/plain", "logical"),
    ]
    assert len(ab) == 4 and all(float(r["p_holm"]) == 1.0 for r in ab)


def test_run_a_local_model_from_flags(tiny_llava: Path, coi_dataset: Path, tmp_path: Path) -> None:
    result = invoke(
        "run", "--model", tiny_llava, "--prompt", "coi_p3", "--dataset", coi_dataset, "--out", tmp_path / "r",
        "--per-label", "1", "--categories", "pushpins", "--max-tokens", "4", "--max-side", "64",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 predictions written" in result.output and "TINY RANDOM" in result.output


def test_run_needs_a_recipe_or_a_model_and_prompts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--recipe"):
        invoke("run", "--out", tmp_path / "r")
    with pytest.raises(ConfigError, match="mode"):
        invoke("run", "--model", "gpt-4o", "--prompt", "coi_p1", "--mode", "chat", "--out", tmp_path / "r")


def test_the_eval_recipes_are_valid() -> None:
    doc = load_recipe(ROOT / "eval" / "coi_doc004.yaml")
    assert [m.display_name for m in doc.models] == ["gpt-4o"]
    assert [p.name for p in doc.load_prompts()] == ["plain", "coi_p1", "coi_p2", "coi_p3"]
    assert doc.generation.temperature == 0.0 and doc.templates.pool_splits == ("train",)
    tiny = load_recipe(ROOT / "eval" / "coi_tiny.yaml")
    assert [m.display_name for m in tiny.models] == ["tiny-llava", "tiny-llava+lora"]
    assert tiny.templates.strategy == "similar" and len(tiny.load_prompts()) == 4


def test_recipe_errors_name_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("coi:\n  models: [{backend: openai}]\n  prompts: [coi_p1]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: models.0: an openai model needs 'model'"):
        load_recipe(bad)
    bad.write_text("coi:\n  models: [{backend: local, source: x, api_key: y}]\n  prompts: [coi_p1]\n")
    with pytest.raises(ConfigError, match=r"api_key"):
        load_recipe(bad)
    bad.write_text("qa_build: {}\n")
    with pytest.raises(ConfigError, match="needs a 'coi:' mapping"):
        load_recipe(bad)
    bad.write_text(
        "coi:\n  models: [{backend: openai, model: m}, {backend: openai, model: m}]\n  prompts: [p1]\n"
    )
    with pytest.raises(ConfigError, match="share the name"):
        load_recipe(bad)
