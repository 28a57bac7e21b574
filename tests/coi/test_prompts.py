"""Tests of vlmad.coi.prompts: the packaged P1/P2/P3 and plain templates, rendering, hashing, loading."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import vlmad
from vlmad.coi.parse import parse_verdict
from vlmad.coi.prompts import PromptTemplate, list_prompts, load_prompt, prompts_dir
from vlmad.errors import ConfigError, VlmadError

# The published step texts (seeds/004_102cb39b65a4f1cc.txt, Figure 2, via shared/reference.md), verbatim.
P2_STEP1 = (
    "Step 1: The template image follows certain visual rules or regular patterns. Observe the template "
    "carefully and summarize these rules or expected visual characteristics."
)
P2_STEP2 = (
    "Step 2: Based on these rules, describe the differences between the template image and the test image, "
    "focusing on the left, right, and central regions."
)
PUBLISHED = {
    "coi_p1": [
        "Step 1: Identify all objects in the template image and describe their expected appearance.",
        "Step 2: Describe any visible differences between the test image and the template image.",
        "Step 3: Judge whether those differences are defect or normal.",
    ],
    "coi_p2": [
        P2_STEP1,
        P2_STEP2,
        "Step 3: Compare these two images and identify any inconsistencies or anomalies found.",
        "Step 4: Determine whether the test image contains any defects. If yes, describe the specific reason "
        "or evidence for your judgment.",
    ],
    "coi_p3": [
        P2_STEP1,
        P2_STEP2,
        "Step 3: From the differences identified in Step 2, determine which ones violate the rules in Step 1 "
        "and list them as inconsistencies or anomalies. Briefly explain why each one is anomalous.",
        "Step 4: Based on the anomalies listed in Step 3, make a final judgment on whether the test image "
        "contains any defects. If it does, summarize the main anomaly and its location as the specific "
        "reason or evidence for your judgment.",
    ],
}

VALID = """\
name: mine
version: "2"
description: my prompt
citation: me
mode: multi_turn
template_label: "Reference ({category}):"
test_label: "Query:"
steps:
  - "Look at the {category}. Keep {braces} as written."
  - "Anything odd?"
final_instruction: "Answer: normal or anomalous"
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_list_prompts_lists_the_packaged_templates_only() -> None:
    names = list_prompts()
    assert names == sorted(names)
    assert {"coi_p1", "coi_p2", "coi_p3", "plain"} <= set(names)
    assert "qa_draft" not in names


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_steps_are_verbatim_and_cited(name: str) -> None:
    p = load_prompt(name)
    assert list(p.steps) == PUBLISHED[name]
    assert "004_102cb39b65a4f1cc" in p.citation
    assert p.name == name and p.version and p.description
    assert p.mode == "single"
    assert p.source == prompts_dir() / f"{name}.yaml"


def test_final_instruction_is_common_and_asks_for_the_fixed_form() -> None:
    finals = {load_prompt(n).final_instruction for n in list_prompts()}
    assert len(finals) == 1
    final = finals.pop()
    assert re.search(r"^Answer:", final, re.M) and re.search(r"^Explanation:", final, re.M)
    assert len(load_prompt("plain").steps) == 1


@pytest.mark.parametrize("name", ["coi_p1", "coi_p2", "coi_p3", "plain"])
@pytest.mark.parametrize("mode", ["single", "multi_turn"])
def test_an_echoed_prompt_is_not_a_verdict(name: str, mode: str) -> None:
    for turn in load_prompt(name, mode=mode).turns("pushpins"):
        assert parse_verdict(turn).verdict == "unparsed"


def test_single_mode_sends_all_steps_in_one_turn() -> None:
    p = load_prompt("coi_p2")
    turns = p.turns("breakfast_box")
    assert len(turns) == 1
    text = turns[0]
    positions = [text.index(step) for step in p.steps]
    assert positions == sorted(positions)
    assert text.endswith(p.final_instruction)


def test_multi_turn_sends_one_step_per_turn_and_the_instruction_last() -> None:
    p = load_prompt("coi_p3", mode="multi_turn")
    turns = p.turns()
    assert p.mode == "multi_turn" and len(turns) == 4
    assert turns[:3] == list(p.steps[:3])
    assert turns[3].startswith(p.steps[3]) and turns[3].endswith(p.final_instruction)
    assert all(p.final_instruction not in t for t in turns[:3])


def test_images_come_first_template_then_test_with_role_labels() -> None:
    p = load_prompt("coi_p1")
    template_label, test_label = p.image_labels("breakfast_box")
    assert "breakfast box" in template_label and "Template" in template_label
    assert "Test" in test_label
    assert p.image_labels(None)[0] == "Template image (a normal, defect-free product):"
    parts = p.first_turn_content("screw_bag")
    assert [x["type"] for x in parts] == ["text", "image", "text", "image", "text"]
    assert [x.get("role") for x in parts if x["type"] == "image"] == ["template", "test"]
    assert parts[0]["text"] == p.image_labels("screw_bag")[0]
    assert parts[-1]["text"] == p.turns("screw_bag")[0]


def test_prompt_hash_depends_on_content_only() -> None:
    p = load_prompt("coi_p1")
    h = p.prompt_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert load_prompt("coi_p1").prompt_hash() == h
    renamed = dataclasses.replace(p, name="other", description="x", citation="y", version="9")
    assert renamed.prompt_hash() == h
    assert p.with_mode("multi_turn").prompt_hash() != h
    assert dataclasses.replace(p, steps=(*p.steps, "Step 4: more")).prompt_hash() != h
    assert len({load_prompt(n).prompt_hash() for n in list_prompts()}) == len(list_prompts())


def test_template_is_frozen_and_validated() -> None:
    p = load_prompt("plain")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "x"  # type: ignore[misc]
    with pytest.raises(ConfigError, match="mode"):
        p.with_mode("chat")
    with pytest.raises(ConfigError, match="steps"):
        PromptTemplate("n", "1", "single", (), "f", "a", "b")


def test_aliases_and_unknown_names() -> None:
    assert load_prompt("P1") == load_prompt("coi_p1")
    assert load_prompt("p3").name == "coi_p3"
    with pytest.raises(ConfigError, match=r"unknown prompt 'p9'.*coi_p1"):
        load_prompt("p9")
    with pytest.raises(ConfigError, match=r"qa_draft\.yaml.*steps"):
        load_prompt("qa_draft")
    with pytest.raises(ConfigError, match="mode"):
        load_prompt("coi_p1", mode="chat")


def test_users_own_file(tmp_path: Path) -> None:
    p = load_prompt(write(tmp_path, VALID))
    assert (p.name, p.version, p.mode, p.citation) == ("mine", "2", "multi_turn", "me")
    assert p.turns("screw_bag") == [
        "Look at the screw bag. Keep {braces} as written.",
        "Anything odd?\n\nAnswer: normal or anomalous",
    ]
    assert p.image_labels("screw_bag") == ("Reference (screw bag):", "Query:")
    assert load_prompt(str(tmp_path / "p.yaml")) == p
    minimal = VALID.replace("description: my prompt\n", "").replace("citation: me\n", "")
    q = load_prompt(write(tmp_path, minimal.replace('version: "2"', "version: 3"), "q.yaml"))
    assert q.description == "" and q.citation == "" and q.version == "3"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (VALID.replace("mode: multi_turn", "mode: chat"), "mode"),
        (VALID.replace('version: "2"\n', ""), "version"),
        (VALID.replace('version: "2"', "version: 1.5"), "version"),
        (VALID.replace('test_label: "Query:"', "test_label: ''"), "test_label"),
        (VALID.replace("steps:\n", "steps: []\nx:\n"), "steps"),
        (VALID.replace('  - "Anything odd?"', '  - ""'), "steps"),
        (VALID.replace('  - "Anything odd?"', "  - {a: 1}"), "steps"),
        (VALID + "temperature: 0\n", "temperature"),
        (
            VALID.replace('final_instruction: "Answer: normal or anomalous"', "final_instruction: [1]"),
            "final_instruction",
        ),
    ],
)
def test_invalid_files_name_the_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_prompt(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_prompt(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_prompt(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_prompt(write(tmp_path, "- a list\n"))
    assert issubclass(ConfigError, VlmadError)


def test_missing_prompts_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(vlmad, "__file__", str(tmp_path / "site" / "vlmad" / "__init__.py"))
    with pytest.raises(ConfigError, match="prompts folder not found"):
        list_prompts()
    with pytest.raises(ConfigError, match="prompts folder not found"):
        load_prompt("coi_p1")
    assert load_prompt(write(tmp_path, VALID)).name == "mine"  # a path needs no prompts folder
