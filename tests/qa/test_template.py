"""Template QA from ground truth: kinds per sample, verdict first, words not identifiers, masks -> place."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import make_loco
from vlmad.data import read_dataset
from vlmad.data.images import load_mask
from vlmad.data.templates import choose_templates
from vlmad.errors import ConfigError
from vlmad.qa.store import template_item_id
from vlmad.qa.template import PHRASINGS, TEMPLATE_AUTHOR, location_phrase, mask_location, template_items
from vlmad.records import Manifest, QAItem, Sample

AT = "2024-01-01T00:00:00Z"


def _mask(box: tuple[int, int, int, int], size: int = 60) -> np.ndarray:
    m = np.zeros((size, size), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize(
    ("box", "phrase"),
    [
        ((0, 0, 5, 5), "a small area in the upper left of the image"),  # 25 / 3600 < 2 %
        ((25, 0, 35, 6), "a small area at the top of the image"),
        ((50, 2, 58, 10), "a small area in the upper right of the image"),
        ((0, 25, 12, 37), "a medium-sized area on the left of the image"),  # 144 / 3600 = 4 %
        ((20, 20, 40, 40), "a large area in the centre of the image"),  # 400 / 3600 = 11 %
        ((45, 25, 60, 35), "a medium-sized area on the right of the image"),
        ((0, 52, 8, 60), "a small area in the lower left of the image"),  # 64 / 3600
        ((20, 45, 40, 60), "a medium-sized area at the bottom of the image"),  # 300 / 3600 = 8.3 %
        ((0, 0, 60, 60), "a very large area in the centre of the image"),
    ],
)
def test_location_phrase(box: tuple[int, int, int, int], phrase: str) -> None:
    assert location_phrase(_mask(box)) == phrase


def test_location_uses_the_centroid_and_the_share() -> None:
    # two blobs on the left, top and bottom: the centroid is middle-left
    m = _mask((0, 0, 6, 6)) | _mask((0, 54, 6, 60))
    loc = mask_location(m)
    assert (loc.vertical, loc.horizontal) == ("middle", "left")
    assert loc.fraction == pytest.approx(72 / 3600)
    with pytest.raises(ValueError, match="empty"):
        location_phrase(np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="2-D"):
        location_phrase(np.ones((2, 2, 2), bool))


@pytest.fixture(scope="module")
def built(qa_manifest: Manifest) -> tuple[dict[str, str], list[QAItem]]:
    templates = choose_templates(qa_manifest, seed=0)
    return templates, template_items(qa_manifest, templates=templates, variants=2, seed=0, timestamp=AT)


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]


def test_verdict_first_in_every_answer(qa_manifest: Manifest, built) -> None:
    _, items = built
    assert items
    for it in items:
        s = qa_manifest.get(it.sample_id)
        first = _first_sentence(it.answer)
        if s.is_anomalous:
            assert it.answer.startswith("Yes, "), it.answer
            assert "anomalous" in first and "normal" not in first.replace("anomalous", ""), it.answer
            assert it.verdict == "anomalous"
        else:
            assert it.answer.startswith("No, "), it.answer
            assert "normal" in first and "anomalous" not in first, it.answer
            assert it.verdict == "normal"
        assert "_" not in it.answer and "_" not in it.question, it


def test_kinds_per_sample(qa_manifest: Manifest, built) -> None:
    templates, items = built
    kinds: dict[str, set[str]] = {}
    for it in items:
        kinds.setdefault(it.sample_id, set()).add(it.kind)
    assert set(kinds) == {s.id for s in qa_manifest}
    for s in qa_manifest:
        if s.is_anomalous:
            assert kinds[s.id] == {
                "detection",
                "defect_type",
                "location",
                "description",
                "template_comparison",
            }
        else:
            assert kinds[s.id] == {"detection", "description", "template_comparison"}
    for it in items:
        assert (it.template_sample_id is not None) == (it.kind == "template_comparison")
        if it.kind == "template_comparison":
            assert it.template_sample_id == templates[it.sample_id]
            assert "template" in it.question.lower()


def test_item_fields(qa_manifest: Manifest, built) -> None:
    _, items = built
    assert len({it.id for it in items}) == len(items)
    for it in items:
        s = qa_manifest.get(it.sample_id)
        assert it.id == template_item_id(s.id, it.kind, it.metadata["variant"])
        assert (it.source, it.status, it.author, it.reviewer) == (
            "template",
            "verified",
            TEMPLATE_AUTHOR,
            None,
        )
        assert it.trusted and it.category == s.category and it.created_at == AT
        if s.is_anomalous:
            assert it.anomaly_type == s.label and it.defect_type == s.defect_type and it.explanation
        else:
            assert it.anomaly_type is None and it.defect_type is None and it.explanation == ""
    # two phrasings of each kind (every pool has at least three)
    per = {(it.sample_id, it.kind) for it in items}
    assert len(items) == 2 * len(per)


def _one(items: list[QAItem], sample_id: str, kind: str) -> list[QAItem]:
    return [it for it in items if it.sample_id == sample_id and it.kind == kind]


def test_defect_words_and_descriptions(qa_manifest: Manifest, built) -> None:
    _, items = built
    s = next(x for x in qa_manifest if x.defect_type and "_" in x.defect_type)
    words = s.defect_type.replace("_", " ")
    for it in _one(items, s.id, "defect_type"):
        assert words in it.answer and ("logical" in it.answer) == (s.label == "logical")
    for it in _one(items, s.id, "description"):
        assert s.metadata["description"] in it.answer
    normal = next(x for x in qa_manifest if x.split == "test" and not x.is_anomalous)
    described = [it for it in _one(items, normal.id, "description")]
    assert described and all(normal.metadata["description"] in it.answer for it in described)


def test_location_answer_from_the_mask(qa_manifest: Manifest, built) -> None:
    _, items = built
    s = next(x for x in qa_manifest if x.is_anomalous and len(x.mask_paths) == 1)
    m = load_mask(s.mask_paths[0])
    ys, xs = np.nonzero(m)
    row = ["upper", "middle", "lower"][min(int((ys.mean() + 0.5) / m.shape[0] * 3), 2)]
    col = ["left", "centre", "right"][min(int((xs.mean() + 0.5) / m.shape[1] * 3), 2)]
    expected = location_phrase(m)
    assert (mask_location(m).vertical, mask_location(m).horizontal) == (row, col)
    located = _one(items, s.id, "location")
    assert located and all(expected in it.answer for it in located)


def test_deterministic_and_seeded(qa_manifest: Manifest, built) -> None:
    templates, items = built
    again = template_items(qa_manifest, templates=templates, variants=2, seed=0, timestamp=AT)
    assert [it.model_dump() for it in again] == [it.model_dump() for it in items]
    other = template_items(qa_manifest, templates=templates, variants=2, seed=1, timestamp=AT)
    assert {it.id for it in other} != {it.id for it in items}
    # one sample alone gets exactly what it got among all
    s = qa_manifest[0]
    alone = template_items(qa_manifest, samples=[s], templates=templates, variants=2, seed=0, timestamp=AT)
    assert [it.id for it in alone] == [it.id for it in items if it.sample_id == s.id]


def test_variant_counts(qa_manifest: Manifest) -> None:
    s = next(x for x in qa_manifest if x.is_anomalous)
    one = template_items(qa_manifest, samples=[s], variants=1)
    assert sorted(it.kind for it in one) == sorted(["detection", "defect_type", "location", "description"])
    many = template_items(qa_manifest, samples=[s], variants=99)
    assert len(_one(many, s.id, "detection")) == len(PHRASINGS["detection"]) == 4
    assert len({it.question for it in _one(many, s.id, "detection")}) == 4
    with pytest.raises(ConfigError, match="variants"):
        template_items(qa_manifest, samples=[s], variants=0)


def test_without_description_or_template(qa_manifest: Manifest) -> None:
    s = next(x for x in qa_manifest if x.is_anomalous and x.category == "pushpins")
    bare = s.model_copy(update={"metadata": {}})
    items = template_items(qa_manifest, samples=[bare], variants=4)
    assert "template_comparison" not in {it.kind for it in items}
    where = location_phrase(load_mask(s.mask_paths[0]))
    desc = _one(items, s.id, "description")
    assert any(where in it.answer for it in desc)
    assert all(s.metadata["description"] not in it.answer for it in items)
    assert any("set of pushpins" in it.question for it in _one(items, s.id, "defect_type"))
    # region descriptions stand in for a missing whole-image description
    regions = s.model_copy(update={"metadata": {"regions": [{"description": "a pin is bent"}]}})
    desc = _one(template_items(qa_manifest, samples=[regions], variants=4), s.id, "description")
    assert any("A pin is bent." in it.answer for it in desc)


def test_several_regions_are_each_located(tmp_path: Path) -> None:
    loco = read_dataset(make_loco(tmp_path))
    # two masks: 4x4 in the upper left (1.6 % of 32x32: small), 6x6 in the lower right (3.5 %: medium-sized)
    s = loco.get("pushpins/test/logical_anomalies/000")
    assert len(s.mask_paths) == 2
    items = template_items(loco, samples=[s], variants=3)
    loc = _one(items, s.id, "location")
    phrase = "two areas of the image: a medium-sized one in the lower right and a small one in the upper left"
    assert loc and all(phrase in it.answer for it in loc)
    assert all("missing item" in it.answer for it in _one(items, s.id, "defect_type"))
    normal: Sample = loco.get("pushpins/test/good/000")
    answers = [it.answer for it in template_items(loco, samples=[normal], variants=4)]
    assert answers and all(a.startswith("No, ") for a in answers)
