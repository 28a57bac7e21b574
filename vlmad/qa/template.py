"""Template QA: question-answer items written from a dataset's ground truth, no model or person involved.

Every image gets several phrasings (*variants*) of each question kind that its ground truth can answer:

- ``detection``: is the image anomalous? (every image)
- ``defect_type``: which kind of defect? (anomalous images with a known defect type)
- ``location``: where is it, and how large? (anomalous images with non-empty masks)
- ``description``: describe the image (every image; the reference description when the dataset has one)
- ``template_comparison``: compared with a normal template image, is the test image anomalous? (every
  image that has a template in ``templates``)

Every question can be answered yes or no, "yes" always meaning "anomalous", and every answer states the
verdict first: anomalous answers start with ``"Yes, "`` and name the image anomalous in their first
sentence, normal ones start with ``"No, "`` and call it normal. Defect types are written in words
(``missing_fruit`` -> "missing fruit", ``a+b`` -> "a and b"); locations come from the masks (the third of
the image holding each region's centroid, and its size relative to the image).

Items are ``source="template"``, ``status="verified"``, ``author="template"``; their ids come from
:func:`vlmad.qa.store.template_item_id` with the phrasing's index in its pool as the variant, so the same
sample, kind and phrasing always give the same id and rebuilding is idempotent.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmad.errors import ConfigError
from vlmad.qa.store import now_iso, template_item_id
from vlmad.records import Manifest, QAItem, Sample

TEMPLATE_AUTHOR = "template"
# bump when the phrasings change: stored in each item's metadata so old and new wordings can be told apart
TEMPLATE_VERSION = "1"

_ROWS = ("upper", "middle", "lower")
_COLS = ("left", "centre", "right")
_WHERE = {
    ("upper", "left"): "in the upper left",
    ("upper", "centre"): "at the top",
    ("upper", "right"): "in the upper right",
    ("middle", "left"): "on the left",
    ("middle", "centre"): "in the centre",
    ("middle", "right"): "on the right",
    ("lower", "left"): "in the lower left",
    ("lower", "centre"): "at the bottom",
    ("lower", "right"): "in the lower right",
}
# share of the image a region covers -> size word (upper bounds, checked in order)
_SIZES = ((0.02, "small"), (0.10, "medium-sized"), (0.30, "large"), (1.01, "very large"))
_NUMBERS = {2: "two", 3: "three"}
_ANOMALY_TYPE = {
    "logical": "a logical anomaly",
    "structural": "a structural anomaly",
    "anomaly": "an anomaly",
}


@dataclass(frozen=True)
class MaskLocation:
    """Where a region lies: the image third of its centroid, its size word and its share of the image."""

    vertical: str  # upper | middle | lower
    horizontal: str  # left | centre | right
    size: str  # small | medium-sized | large | very large
    fraction: float  # region pixels / image pixels

    @property
    def where(self) -> str:
        """``"in the upper left"``, ``"at the top"``, ``"in the centre"``, ``"on the right"``..."""
        return _WHERE[(self.vertical, self.horizontal)]

    @property
    def phrase(self) -> str:
        """``"a small area in the upper left of the image"``."""
        return f"a {self.size} area {self.where} of the image"


def mask_location(mask: np.ndarray) -> MaskLocation:
    """Locate the non-zero pixels of a 2-D mask. Raises ``ValueError`` for an empty mask or a wrong shape."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {m.shape}")
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        raise ValueError("the mask is empty: no region to locate")
    h, w = m.shape
    cy, cx = float(ys.mean() + 0.5) / h, float(xs.mean() + 0.5) / w
    vertical = _ROWS[min(int(cy * 3), 2)]
    horizontal = _COLS[min(int(cx * 3), 2)]
    fraction = ys.size / float(h * w)
    size = next(word for bound, word in _SIZES if fraction < bound)
    return MaskLocation(vertical, horizontal, size, fraction)


def location_phrase(mask: np.ndarray) -> str:
    """The location of a mask's region in words, e.g. ``"a small area in the upper left of the image"``.

    The position is the third of the image (upper / middle / lower x left / centre / right) that holds
    the centroid of the non-zero pixels; the size word is from the share of the image they cover (below
    2 % small, 10 % medium-sized, 30 % large, else very large). Deterministic. ``ValueError`` if empty.
    """
    return mask_location(mask).phrase


def _regions(sample: Sample) -> list[MaskLocation]:
    """The regions of a sample's masks: each connected component (8-neighbourhood) of each mask file,
    components under a tenth of the file's largest dropped, largest first."""
    from scipy import ndimage

    from vlmad.data.images import load_mask

    out: list[MaskLocation] = []
    for path in sample.mask_paths:
        m = load_mask(path)
        labels, n = ndimage.label(m, structure=np.ones((3, 3), bool))
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        for k in np.flatnonzero(sizes >= 0.1 * sizes.max()):
            out.append(mask_location(labels == k + 1))
    out.sort(key=lambda r: -r.fraction)
    return out


def _where_text(regions: list[MaskLocation]) -> str:
    """One noun phrase for all regions: "a small area on the left of the image" or
    "two areas of the image: a small one in the upper left and a large one on the right"."""
    if len(regions) == 1:
        return regions[0].phrase
    seen: list[str] = []
    for r in regions:
        part = f"a {r.size} one {r.where}"
        if part not in seen:
            seen.append(part)
    if len(seen) == 1:
        count = _NUMBERS.get(len(regions), "several")
        return f"{count} {regions[0].size} areas {regions[0].where} of the image"
    if len(regions) > 3:
        return f"several areas of the image, the largest being {seen[0][2:]}"
    head = ", ".join(seen[:-1])
    return f"{_NUMBERS[len(regions)]} areas of the image: {head} and {seen[-1]}"


def _words(name: str) -> str:
    """``missing_fruit`` -> ``missing fruit``; ``a+b`` -> ``a and b``."""
    parts = [p.replace("_", " ").replace("-", " ").strip() for p in name.split("+")]
    parts = [" ".join(p.split()) for p in parts if p.strip()]
    if len(parts) <= 1:
        return parts[0] if parts else name
    return ", ".join(parts[:-1]) + " and " + parts[-1]


_PLACE_WORDS = re.compile(
    r"\b(left|right|centre|center|middle|top|bottom|upper|lower|corner|row|column|side)\b", re.IGNORECASE
)


def _mentions_place(text: str) -> bool:
    """Whether a description already says where something is (then the mask location is not repeated)."""
    return bool(_PLACE_WORDS.search(text))


def _object(category: str) -> str:
    """A category as a singular noun phrase: ``juice_bottle`` -> "juice bottle", ``pushpins`` -> "set of
    pushpins" (a plural name gets "set of" so that "this {obj} is" reads right)."""
    words = _words(category)
    last = words.split()[-1].lower() if words.split() else ""
    plural = last.endswith("s") and not last.endswith(("ss", "us", "is"))
    return f"set of {words}" if plural else words


def _article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class _Facts:
    """What the ground truth says about one sample, already in words."""

    obj: str  # "breakfast box"
    anomalous: bool
    atype: str  # "a logical anomaly" ("" for normal images)
    defect: str  # "missing fruit" ("" when unknown or normal)
    where: str  # "a small area on the left of the image" ("" without masks)
    desc: str  # reference description sentence(s) ("" when the dataset has none)

    @property
    def what(self) -> str:
        """``"a logical anomaly (missing fruit)"`` or ``"a logical anomaly"``."""
        return f"{self.atype} ({self.defect})" if self.defect else self.atype

    @property
    def subject(self) -> str:
        """What to call the defect in a sentence: ``"the defect (missing fruit)"`` or ``"the anomaly"``."""
        return f"the defect ({self.defect})" if self.defect else "the anomaly"

    @property
    def anomaly_text(self) -> str:
        """The reference description, or a sentence built from type and location."""
        if self.desc:
            return self.desc
        where = f" in {self.where}" if self.where else ""
        return f"The {self.obj} shows {self.what}{where}."

    @property
    def normal_text(self) -> str:
        """The reference description of a normal image, or a plain statement that nothing is wrong."""
        return self.desc or f"It looks like a regular {self.obj}: nothing is missing, misplaced or damaged."

    @property
    def explanation(self) -> str:
        """What is wrong and where ("" for normal images): the item's ``explanation``."""
        if not self.anomalous:
            return ""
        text = self.anomaly_text
        if self.where and self.desc and not _mentions_place(self.desc):
            text += f" The defect covers {self.where}."
        return text

    @property
    def where_clause(self) -> str:
        """``" in a small area on the left of the image"`` unless the description already says where."""
        return f" in {self.where}" if self.where and not _mentions_place(self.desc) else ""


def _facts(sample: Sample) -> _Facts:
    meta = sample.metadata or {}
    desc = meta.get("description")
    if not (isinstance(desc, str) and desc.strip()):
        regs = meta.get("regions") or []
        sentences = []
        for r in regs if isinstance(regs, list) else []:
            d = r.get("description") if isinstance(r, dict) else None
            if isinstance(d, str) and d.strip() and _sentence(d) not in sentences:
                sentences.append(_sentence(d))
        desc = " ".join(sentences)
    desc = _sentence(desc)
    anomalous = sample.is_anomalous
    regions = _regions(sample) if anomalous and sample.mask_paths else []
    return _Facts(
        obj=_object(sample.category),
        anomalous=anomalous,
        atype=_ANOMALY_TYPE.get(sample.label, "") if anomalous else "",
        defect=_words(sample.defect_type) if anomalous and sample.defect_type else "",
        where=_where_text(regions) if regions else "",
        desc=desc,
    )


# Each phrasing: (question, answer when anomalous, answer when normal); answers are functions of the facts.
# A pool's index is the phrasing's variant number (part of the item id): append new phrasings, never reorder.
_Answer = Callable[[_Facts], str]
_Phrasing = tuple[str, _Answer, _Answer | None]

_DETECTION: list[_Phrasing] = [
    (
        "Is there any anomaly in this image?",
        lambda f: f"Yes, this image is anomalous. {f.anomaly_text}",
        lambda f: f"No, this image is normal; the {f.obj} shows no anomaly.",
    ),
    (
        "Does this {obj} have any defect?",
        lambda f: f"Yes, the {f.obj} is anomalous: it has {f.what}.",
        lambda f: f"No, the {f.obj} is normal and has no defect.",
    ),
    (
        "Is anything wrong with the {obj} in this image?",
        lambda f: f"Yes, something is wrong, so the image is anomalous. {f.anomaly_text}",
        lambda f: f"No, nothing is wrong; the image is normal. {f.normal_text}",
    ),
    (
        "Inspect this {obj} carefully. Is it anomalous?",
        lambda f: f"Yes, it is anomalous: it shows {f.what}" + (f" in {f.where}." if f.where else "."),
        lambda f: "No, it is normal: everything is where it should be and nothing is damaged.",
    ),
]
_DEFECT_TYPE: list[_Phrasing] = [
    (
        "Is there a defect in this {obj}? If so, what type is it?",
        lambda f: f"Yes, there is a defect, so the image is anomalous. It is {f.what}.",
        None,
    ),
    (
        "Does this image show an anomaly, and what kind is it?",
        lambda f: f"Yes, the image is anomalous: it shows {f.what}.",
        None,
    ),
    (
        "Is this {obj} defective? Name the type of defect.",
        lambda f: f"Yes, the {f.obj} is anomalous. The type of defect is {f.defect}, which is {f.atype}.",
        None,
    ),
]
_LOCATION: list[_Phrasing] = [
    (
        "Is there an anomaly in this image? If so, where is it?",
        lambda f: f"Yes, the image is anomalous. {_cap(f.subject)} covers {f.where}.",
        None,
    ),
    (
        "Does this {obj} have a defect? Point out where it is.",
        lambda f: f"Yes, the {f.obj} is anomalous. {_cap(f.subject)} is in {f.where}.",
        None,
    ),
    (
        "Is any part of this image anomalous? Say which part and how large it is.",
        lambda f: f"Yes, part of the image is anomalous: {f.what} in {f.where}.",
        None,
    ),
]
_DESCRIPTION: list[_Phrasing] = [
    (
        "Describe this {obj}. Is anything wrong with it?",
        lambda f: f"Yes, the {f.obj} is anomalous. {f.anomaly_text}",
        lambda f: f"No, the {f.obj} is normal. {f.normal_text}",
    ),
    (
        "Is this image anomalous? Describe what you see.",
        lambda f: f"Yes, the image is anomalous. {f.anomaly_text}",
        lambda f: f"No, the image is normal. {f.normal_text}",
    ),
    (
        "Is there anything unusual about this {obj}? Please describe the image in detail.",
        lambda f: f"Yes, something is unusual, so the image is anomalous. {f.explanation}",
        lambda f: f"No, nothing is unusual; the image is normal. {f.normal_text}",
    ),
]
_TEMPLATE_COMPARISON: list[_Phrasing] = [
    (
        "The first image is a template showing a normal {obj}. Compared with the template, "
        "is the test image anomalous?",
        lambda f: (
            f"Yes, the test image is anomalous. Compared with the template, it shows {f.what}"
            f"{f.where_clause}. {f.desc}"
        ),
        lambda f: (
            "No, the test image is normal. It matches the template: nothing is missing, extra, "
            "misplaced or damaged."
        ),
    ),
    (
        "Here are a normal template image and a test image of {a_obj}. Does the test image differ from "
        "the template in a way that is a defect?",
        lambda f: f"Yes, the test image is anomalous: unlike the template, it has {f.what}. {f.anomaly_text}",
        lambda f: (
            "No, the test image is normal: apart from small natural variations it looks like the "
            f"template. {f.normal_text}"
        ),
    ),
    (
        "Compare the test image with the normal template image step by step. Does the test image contain "
        "any defect?",
        lambda f: (
            f"Yes, the test image is anomalous. The template shows a normal {f.obj}, but the test "
            f"image differs from it. {f.anomaly_text}"
        ),
        lambda f: (
            f"No, the test image is normal. Like the template, it shows a regular {f.obj} with no defect."
        ),
    ),
]
PHRASINGS: dict[str, list[_Phrasing]] = {
    "detection": _DETECTION,
    "defect_type": _DEFECT_TYPE,
    "location": _LOCATION,
    "description": _DESCRIPTION,
    "template_comparison": _TEMPLATE_COMPARISON,
}


def _kinds(facts: _Facts, has_template: bool) -> list[str]:
    kinds = ["detection"]
    if facts.anomalous and facts.defect:
        kinds.append("defect_type")
    if facts.anomalous and facts.where:
        kinds.append("location")
    kinds.append("description")
    if has_template:
        kinds.append("template_comparison")
    return kinds


def template_items(
    manifest: Manifest,
    *,
    samples: Iterable[Sample] | None = None,
    templates: dict[str, str] | None = None,
    variants: int = 2,
    seed: int = 0,
    timestamp: str | None = None,
) -> list[QAItem]:
    """QA items written from the ground truth of ``samples`` (default: every sample of ``manifest``).

    Per sample and kind (see the module docstring for which kinds a sample gets), ``min(variants, pool
    size)`` distinct phrasings are drawn, seeded by ``(seed, sample id, kind)``, so the result for a
    sample does not depend on the other samples and is the same for the same seed. Normal images get
    ``detection``, ``description`` and ``template_comparison`` only, all answered "normal".
    ``template_comparison`` items are made for samples in ``templates`` (sample id -> template sample id,
    e.g. from :func:`vlmad.data.templates.choose_templates`) and carry ``template_sample_id``.

    Items are ordered by sample, then kind, then variant. ``timestamp`` (ISO 8601) sets ``created_at`` /
    ``updated_at`` (default: now). ``variants < 1`` -> :class:`ConfigError`; unreadable masks ->
    :class:`~vlmad.errors.DatasetError` naming the file.
    """
    if variants < 1:
        raise ConfigError(f"variants must be at least 1, got {variants}")
    at = timestamp or now_iso()
    templates = templates or {}
    items: list[QAItem] = []
    for sample in manifest if samples is None else samples:
        facts = _facts(sample)
        template = templates.get(sample.id)
        for kind in _kinds(facts, template is not None):
            pool = PHRASINGS[kind]
            rng = random.Random(f"template-qa|{seed}|{sample.id}|{kind}")
            chosen = sorted(rng.sample(range(len(pool)), min(variants, len(pool))))
            for v in chosen:
                question, yes, no = pool[v]
                answer = yes(facts) if facts.anomalous else no(facts)  # type: ignore[misc]
                meta: dict[str, Any] = {"variant": v, "template_version": TEMPLATE_VERSION}
                items.append(
                    QAItem(
                        id=template_item_id(sample.id, kind, v),
                        sample_id=sample.id,
                        category=sample.category,
                        kind=kind,  # type: ignore[arg-type]
                        question=question.format(obj=facts.obj, a_obj=_article(facts.obj)),
                        answer=" ".join(answer.split()),
                        verdict="anomalous" if facts.anomalous else "normal",
                        anomaly_type=sample.label if facts.anomalous else None,  # type: ignore[arg-type]
                        defect_type=sample.defect_type if facts.anomalous else None,
                        explanation=facts.explanation,
                        template_sample_id=template if kind == "template_comparison" else None,
                        source="template",
                        status="verified",
                        author=TEMPLATE_AUTHOR,
                        created_at=at,
                        updated_at=at,
                        metadata=meta,
                    )
                )
    return items
