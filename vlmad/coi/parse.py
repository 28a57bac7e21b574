"""Read a verdict (normal / anomalous) and an explanation from a vision-language model's reply.

:func:`parse_verdict` tries, in order, and stops at the first that finds a verdict:

1. **The fixed form** the prompts ask for (:mod:`vlmad.coi.prompts`): a line ``Answer: normal`` or
   ``Answer: anomalous`` (``Final answer:`` too). The last such line wins.
2. **Other labelled answers**: a line ``Verdict: ...``, ``Final judgment: ...``, ``Conclusion: ...``,
   ``Result: ...``, ``Answer: Yes`` (value on the same or the next line), ``Anomaly: yes`` /
   ``Defects found: none``, or "my final answer is ...". The value is read with the free-text rules below;
   the last labelled verdict wins.
3. **Free text**: explicit statements anywhere; the last one wins ("at first it looks defective ... on
   closer inspection it is normal" -> normal). Statements are: anomalous / abnormal / defective / faulty;
   "a defect", "an anomaly", "anomaly found", "contains defects", "there are anomalies"; a concrete defect
   stated as fact ("the pin is bent", "one orange is missing", "there is a crack"); "is normal",
   "looks normal", "defect-free", "free of defects"; negations ("no defects", "no anomaly detected", "not
   anomalous", "does not contain any defects", "nothing is missing", "no cracks" -> normal; "not normal",
   "does not look normal" -> anomalous); and a sentence that opens with Yes / No (the answer to "is there
   a defect?").

What is never a verdict: the article "A" and lone option letters ("A", "B"); "no other defects" (it
follows a defect already named); statements inside a question, a "whether ..." / "if ..." clause, an
instruction (echoes of the prompt: "Judge whether those differences are defect or normal", "Briefly
explain why each one is anomalous"), or a sentence about the template image ("The template image is
normal"); placeholders in angle brackets ("Answer: <normal or anomalous>"). Markdown (bold, italics,
headings, bullets, code), letter case and punctuation are ignored. Empty or whitespace-only replies,
refusals and replies without any explicit verdict are ``unparsed``.

The explanation is the text of an ``Explanation:`` / ``Reason:`` line when there is one, else the text
after the deciding verdict, else the reason given just before it (the line or sentence that leads to it);
"" for ``unparsed``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["ParsedAnswer", "parse_verdict"]

ParsedVerdict = Literal["normal", "anomalous", "unparsed"]

_F = re.IGNORECASE


@dataclass(frozen=True)
class ParsedAnswer:
    """A parsed reply.

    ``verdict`` is ``normal``, ``anomalous`` or ``unparsed``; ``explanation`` is the reason given
    (markdown removed, stripped; "" when there is none or the reply is unparsed); ``matched`` is the text
    that decided the verdict (e.g. ``"Answer: anomalous"`` or ``"no defects"``), ``None`` when unparsed.
    """

    verdict: ParsedVerdict
    explanation: str
    matched: str | None


UNPARSED = ParsedAnswer("unparsed", "", None)


# ------------------------------------------------------------------------------------------ vocabulary
_NOUN = (
    r"(?:defects?|anomal(?:y|ies)|flaws?|faults?|abnormalit(?:y|ies)|irregularit(?:y|ies)|damages?|"
    r"imperfections?)"
)
_NOUN_POS = r"(?:defects?|anomal(?:y|ies)|flaws?|abnormalit(?:y|ies))"
_ADJ_A = r"(?:anomalous|abnormal|defective|faulty|flawed|damaged)"
# concrete defects: a verdict only in a statement about the test image ("the pin is bent", "there is a crack")
_DEFECT_STATE = (
    r"(?:missing|broken|cracked|scratched|torn|bent|contaminated|misplaced|misaligned|dented|stained|"
    r"chipped|deformed)"
)
_DEFECT_THING = r"(?:cracks?|scratch(?:es)?|dents?|holes?|stains?|tears?|chips?|contamination|breaks?)"
_ADJ_N = r"(?:normal|defect[- ]free|anomaly[- ]free|flawless|acceptable|fine|ok|okay)"
_NEG = (
    r"(?:\bnot|\bnever|\bno|\bzero|\bwithout|\bcannot|\bnor|\bnothing|"
    r"\bnone\s+of\s+(?:the|these|those|them)|n't)"
)
# words that end the scope of a negation or make the statement something else
_STOP = r"(?:but|however|although|though|except|yet|while|whether|if|only|rule|sure|certain|clear|doubt)"
_GAP = rf"(?:(?!{_STOP}\b)[\w'-]+,?\s+){{0,4}}"
# between a negation and "normal": only copula-like words ("does not look normal", "cannot be considered
# normal")
_COPULA_GAP = (
    r"(?:(?:be|been|being|is|are|was|were|look|looks|looking|appear|appears|seem|seems|considered|classified|"
    r"deemed|judged|regarded|as|to|entirely|completely|quite|fully|totally|really|perfectly|truly|a|an|"
    r"like|exactly|in|good|condition)\s+){0,4}"
)
_COPULA = (
    r"(?:is|are|was|were|be|remains?|looks?|appears?|seems?|considered|classified\s+as|deemed|judged(?:\s+as)?|"
    r"regarded\s+as|labell?ed(?:\s+as)?|categori[sz]ed\s+as|everything|all)"
)
_ADVERBS = (
    r"(?:(?:to\s+be|be|entirely|completely|perfectly|totally|fully|quite|overall|therefore|thus|indeed|"
    r"likely|probably|clearly|still|also|as|a|an|in)\s+){0,3}"
)
# "normal" used before these nouns describes the reference, not a verdict on the test image
_NOT_AFTER_NORMAL = (
    r"(?!\s+(?:template|reference|appearance|example|examples|counterpart|state\s+of\s+the\s+template)\b)"
)
_NEG_NO_POS = r"(?:(?!(?:no|not|any|without|zero|none|never|if|whether|other)\b)[\w'-]+\s+){0,3}"
_DET = r"(?:a|an|one|two|three|four|several|some|multiple|various|clear|obvious|visible|\d+)"

# (priority, verdict or None for "consumes but decides nothing", pattern); lower priority wins a tie in start
_STATEMENTS: list[tuple[int, str | None, re.Pattern[str]]] = [
    # sentence-opening yes / no (the verdict depends on yes_means)
    (
        0,
        "yes/no",
        re.compile(
            r"(?:^|(?<=[.!?:\n]))[ \t]*\b(yes|no)\b"
            r"(?=[ \t]*(?:[,.!;:\n]|$|-|—|\s+(?:there|it|the|this|i|we)\b))",
            _F,
        ),
    ),
    # "no other defects", "not only": no decision, but they consume the words
    (1, None, re.compile(rf"\bno\s+(?:other|further|additional|more)\s+(?:[\w-]+\s+){{0,2}}?{_NOUN}\b", _F)),
    (1, None, re.compile(r"\bnot\s+only\b", _F)),
    # negated anomaly words -> normal
    (
        2,
        "normal",
        re.compile(
            rf"{_NEG}\s*{_GAP}(?:{_ADJ_A}|{_NOUN}|{_DEFECT_STATE}|{_DEFECT_THING})\b"
            r"(?:\s+(?:(?:is|are|was|were|could\s+be|can\s+be)\s+)?"
            r"(?:found|detected|present|visible|observed|identified|seen|noted))?",
            _F,
        ),
    ),
    (2, "normal", re.compile(r"\bnothing\s+(?:is\s+)?(?:wrong|out\s+of\s+place|unusual|missing)\b", _F)),
    (2, "normal", re.compile(rf"\bfree\s+(?:of|from)\s+(?:any\s+)?(?:visible\s+)?{_NOUN}\b", _F)),
    (2, "normal", re.compile(rf"\b{_NOUN}\s*(?:found|detected|present)?\s*:\s*(?:none|no|nil|n/a)\b", _F)),
    # negated normal words -> anomalous
    (3, "anomalous", re.compile(rf"{_NEG}\s*{_COPULA_GAP}{_ADJ_N}\b{_NOT_AFTER_NORMAL}", _F)),
    # normal statements
    (4, "normal", re.compile(r"\b(?:defect|anomaly)[- ]free\b|\bflawless\b", _F)),
    (4, "normal", re.compile(rf"\b{_COPULA}\s+{_ADVERBS}{_ADJ_N}\b{_NOT_AFTER_NORMAL}", _F)),
    (4, "normal", re.compile(r"\ball\s+good\b|\bin\s+(?:good|perfect|normal)\s+condition\b", _F)),
    (
        4,
        "normal",
        re.compile(
            r"\b(?:classify|classified|consider|considered|judge|judged|deem|deemed|regard|regarded|label|"
            r"labell?ed|mark|marked|rate|rated|categori[sz]e|categori[sz]ed)\s+(?:[\w-]+\s+){0,4}?"
            rf"(?:as|to\s+be)\s+(?:a\s+|an\s+)?{_ADJ_N}\b{_NOT_AFTER_NORMAL}",
            _F,
        ),
    ),
    # anomalous statements
    (5, "anomalous", re.compile(rf"\b{_ADJ_A}\b", _F)),
    (5, "anomalous", re.compile(rf"\b{_NOUN_POS}\s*:\s*(?:yes|true|present|found|detected)\b", _F)),
    (
        5,
        "anomalous",
        re.compile(
            rf"\b{_NOUN_POS}\s+(?:(?:is|are|was|were|has\s+been|have\s+been|can\s+be|could\s+be)\s+)?"
            r"(?:clearly\s+)?(?:found|detected|present|visible|identified|observed|spotted|noted|evident|seen)\b",
            _F,
        ),
    ),
    (
        5,
        "anomalous",
        re.compile(
            r"\b(?:contains?|containing|has|have|having|shows?|showing|exhibits?|displays?|reveals?|indicates?|"
            rf"there\s+(?:is|are)|there's)\s+{_NEG_NO_POS}{_NOUN_POS}\b",
            _F,
        ),
    ),
    (5, "anomalous", re.compile(rf"\b{_DET}\s+(?:(?!(?:no|not|any)\b)[\w-]+\s+){{0,2}}?{_NOUN_POS}\b", _F)),
    (
        5,
        "anomalous",
        re.compile(
            rf"\bthe\s+(?:main\s+|primary\s+|detected\s+|identified\s+|visible\s+)?{_NOUN_POS}\s+"
            r"(?:is|are|was|were|appears?|lies|located|can\s+be\s+seen)\b",
            _F,
        ),
    ),
    (5, "anomalous", re.compile(rf"\b(?:logical|structural)\s+{_NOUN_POS}\b", _F)),
    (
        6,
        "anomalous",
        re.compile(
            r"\b(?:is|are|was|were|appears?(?:\s+to\s+be)?|seems?(?:\s+to\s+be)?|looks?)\s+"
            rf"(?:(?:clearly|partially|slightly|completely|visibly|also)\s+)?{_DEFECT_STATE}\b",
            _F,
        ),
    ),
    (
        6,
        "anomalous",
        re.compile(
            r"\bthere\s+(?:is|are|'s)\s+(?:a|an|some|one|two|\d+|several)?\s*(?:[\w-]+\s+){0,2}?"
            rf"(?:{_DEFECT_THING}|extra\b|missing\b)",
            _F,
        ),
    ),
]

# bare values of a labelled answer ("Verdict: Defective", "Answer: OK")
_BARE = {
    "normal": "normal",
    "good": "normal",
    "ok": "normal",
    "okay": "normal",
    "pass": "normal",
    "passed": "normal",
    "fine": "normal",
    "none": "normal",
    "negative": "normal",
    "defect-free": "normal",
    "flawless": "normal",
    "anomalous": "anomalous",
    "anomaly": "anomalous",
    "abnormal": "anomalous",
    "defective": "anomalous",
    "defect": "anomalous",
    "faulty": "anomalous",
    "damaged": "anomalous",
    "bad": "anomalous",
    "ng": "anomalous",
    "fail": "anomalous",
    "failed": "anomalous",
    "positive": "anomalous",
}
# answers whose meaning depends on the question, like yes / no
_AFFIRM = {"yes": True, "true": True, "no": False, "false": False}

_STEP_PREFIX = r"(?:step\s*\d+\s*(?:\([^)\n]*\))?\s*[:.)\-–—]?\s*)?"
_LINE_LEAD = r"^[ \t>•\-+]*(?:\d+[.)]\s*)?"
# a label opens a line, or follows the end of a sentence on the same line ("No differences. Answer: normal")
_LABEL_LEAD = r"(?:^[ \t>•\-+]*(?:\d+[.)]\s*)?|(?<=[.!?])[ \t]+)"
_FIXED = re.compile(
    _LABEL_LEAD + r"(?:final\s+)?answer\s*:\s*(?P<v>normal|anomalous)\b"
    r"(?!\s*(?:or|/|\||and)\s*(?:normal|anomalous))",
    _F | re.M,
)
_LABEL = re.compile(
    _LABEL_LEAD + _STEP_PREFIX + r"(?:(?:my|the)\s+)?(?:(?:final|overall)\s+)?"
    r"(?P<label>answer|verdict|judge?ment|conclusion|decision|classification|result|prediction|assessment|"
    r"status|evaluation)\s*(?:\([^)\n]*\))?\s*(?:is\s*:?|:|=|-|–|—)[ \t]*(?P<value>[^\n]*)$",
    _F | re.M,
)
_INLINE_LABEL = re.compile(
    r"\b(?:(?:my|the)\s+)?(?:final\s+(?:answer|verdict|judge?ment|decision|conclusion|assessment)|"
    r"(?:my|the)\s+(?:answer|verdict|conclusion)|in\s+conclusion)\s*(?:is|would\s+be)?\s*[:,]?[ \t]*"
    r"(?:that\s+)?(?P<value>[^\n]+)",
    _F,
)
_POLAR_LABEL = re.compile(
    _LABEL_LEAD + rf"(?:(?:any|is\s+there\s+(?:an?\s+)?)\s*)?(?:{_NOUN_POS}|anomalous|defective)"
    r"(?:\s+(?:found|detected|present))?\s*\??\s*:\s*(?P<v>yes|no|none|true|false)\b",
    _F | re.M,
)
_EXPLANATION = re.compile(
    _LINE_LEAD + r"(?:explanation|reason(?:ing)?|justification|evidence|rationale)\s*(?:\([^)\n]*\))?"
    r"\s*[:\-–—][ \t]*(?P<body>[^\n]*)$",
    _F | re.M,
)
_PLACEHOLDER = re.compile(
    r"<[^>\n]*>|\bnormal\s*(?:or|/|\|)\s*anomalous\b|\banomalous\s*(?:or|/|\|)\s*normal\b", _F
)
_MAX_BARE_WORDS = 3
_MIN_REASON_WORDS = 3
_LONE_OPTION = re.compile(r"^\(?[a-d]\)?[.)]?$", _F)


# --------------------------------------------------------------------------------------------- cleaning
def _clean(text: str) -> str:
    """Markdown and typography removed; line structure kept."""
    t = text.replace("\r\n", "\n").replace("\r", "\n")
    t = t.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    t = t.replace("\uff1a", ":").replace("\u00a0", " ")
    t = re.sub(r"^\s*```[^\n]*$", "", t, flags=re.M)  # code fences
    t = re.sub(r"^[ \t]*#{1,6}[ \t]*", "", t, flags=re.M)  # headings
    t = re.sub(r"^[ \t]*(?:[-*_][ \t]*){3,}$", "", t, flags=re.M)  # horizontal rules
    t = re.sub(r"^([ \t]*)[*+][ \t]+", r"\1- ", t, flags=re.M)  # "* item" bullets
    t = re.sub(r"<[^<>\n]{0,300}>", "", t)  # placeholders echoed from the prompt ("<normal or anomalous>")
    t = t.replace("**", "").replace("__", "").replace("`", "")
    t = re.sub(r"(?<![\w*])\*(?=\S)|(?<=\S)\*(?![\w*])", "", t)  # *italic*
    t = re.sub(r"(?<!\w)_(?=\w)|(?<=\w)_(?!\w)", "", t)  # _italic_ (snake_case stays)
    return t


# ----------------------------------------------------------------------------------------- statements
@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    verdict: str | None
    priority: int


_TEMPLATE_SUBJECT = re.compile(r"(?:in\s+|on\s+)?the\s+(?:template|reference)\b", _F)
# an instruction (the prompt's own steps, echoed back): "Identify any inconsistencies or anomalies found."
_INSTRUCTION = re.compile(
    r"(?:please\s+|briefly\s+|then\s+|now\s+)?(?:identify|explain|list|describe|determine|judge|"
    r"summari[sz]e|compare|observe|make|check|decide|answer)\b",
    _F,
)


def _clause_start(text: str, pos: int) -> int:
    cut = max(text.rfind(c, 0, pos) for c in ".!?;:\n,")
    return cut + 1


def _sentence_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    s = max(text.rfind(c, 0, start) for c in ".!?\n") + 1
    ends = [i for i in (text.find(c, end) for c in ".!?\n") if i >= 0]
    return s, (min(ends) if ends else len(text))


def _skipped(text: str, hit: _Hit) -> bool:
    """A question, a whether/if clause, or a sentence about the template image."""
    s, e = _sentence_bounds(text, hit.start, hit.end)
    if e < len(text) and text[e] == "?":
        return True
    if re.search(r"\b(?:whether|if)\b", text[_clause_start(text, hit.start) : hit.start], _F):
        return True
    head = re.sub(rf"^[\s>•\-]*{_STEP_PREFIX}", "", text[s : hit.start], flags=_F)
    return bool(_TEMPLATE_SUBJECT.match(head) or _INSTRUCTION.match(head))


def _statements(text: str, yes_means: str) -> list[_Hit]:
    """Non-overlapping explicit statements, leftmost first (earlier start wins, then lower priority)."""
    found: list[_Hit] = []
    for priority, verdict, pattern in _STATEMENTS:
        for m in pattern.finditer(text):
            if verdict == "yes/no":
                v = yes_means if m[1].lower() == "yes" else _other(yes_means)
                found.append(_Hit(m.start(1), m.end(1), v, priority))
            else:
                found.append(_Hit(m.start(), m.end(), verdict, priority))
    found.sort(key=lambda h: (h.start, h.priority, -h.end))
    kept: list[_Hit] = []
    end = -1
    for h in found:
        if h.start >= end:
            kept.append(h)
            end = h.end
    return [h for h in kept if h.verdict is not None and not _skipped(text, h)]


def _other(verdict: str) -> str:
    return "normal" if verdict == "anomalous" else "anomalous"


def _value_verdict(value: str, yes_means: str) -> tuple[str, int, int] | None:
    """The verdict of a label's value: ``(verdict, start, end)`` within ``value``, or None."""
    if not value.strip() or _PLACEHOLDER.search(value):
        return None
    word = re.match(r"\s*[\"'(\[]*([a-z][a-z-]*)", value, _F)
    stripped = value.strip().strip(".!\"'()[]")
    if _LONE_OPTION.match(stripped):
        return None
    if word:
        w = word[1].lower()
        rest = value[word.end(1) :]
        follows_noun = re.match(r"\s+[a-z]", rest, _F) and w in ("no", "none")
        if w in _AFFIRM and not follows_noun:
            return (yes_means if _AFFIRM[w] else _other(yes_means), word.start(1), word.end(1))
        if w in _BARE and not follows_noun and not re.match(r"\s+(?:of|or)\b", rest, _F):
            return (_BARE[w], word.start(1), word.end(1))
    hits = _statements(value, yes_means)
    if hits:
        return (hits[0].verdict or "", hits[0].start, hits[0].end)
    return None


# ----------------------------------------------------------------------------------------- explanation
_LEADING = re.compile(r"^(?:[\s,.;:!)\]\-–—]+|(?:because|since|as\s+follows)\b\s*)+", _F)
_LABEL_LINE = re.compile(
    _LINE_LEAD + r"(?:final\s+)?(?:answer|verdict|judge?ment|conclusion|decision|explanation|reason(?:ing)?)"
    r"\s*:",
    _F,
)


def _tidy(text: str) -> str:
    text = _LEADING.sub("", text.strip())
    text = re.sub(r"^(?:yes|no)\b\s*(?:[,.!;:\-–—]+\s*|$)", "", text, flags=_F)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _explanation_block(text: str) -> str:
    """The body of the last ``Explanation:`` / ``Reason:`` block that is not a placeholder."""
    blocks = []
    for m in _EXPLANATION.finditer(text):
        lines = [m["body"]]
        for line in text[m.end() :].split("\n")[1:]:
            if not line.strip() or _LABEL_LINE.match(line):
                break
            lines.append(line)
        body = "\n".join(lines).strip()
        if body and not (_PLACEHOLDER.fullmatch(body) or (body.startswith("<") and body.endswith(">"))):
            blocks.append(body)
    return _tidy(blocks[-1]) if blocks else ""


def _words(text: str) -> int:
    return len(re.findall(r"\w+", text))


_REASON_START = re.compile(r"\s*(?:[,:;(\-–—]|because\b|since\b|as\b|due\s+to\b)", _F)
# words that carry no reason ("Therefore, the test image is anomalous.")
_FILLER = frozenset(
    re.findall(
        r"\w+",
        "so thus therefore hence overall conclusion in conclude i we the a an this that it test image "
        "product sample is are be must should clearly considered classified as",
    )
)


def _content_words(text: str) -> int:
    return sum(1 for w in re.findall(r"\w+", text.lower()) if w not in _FILLER)


def _explain(text: str, start: int, end: int, *, labelled: bool) -> str:
    """Explanation for a verdict found at ``text[start:end]`` (see the module docstring)."""
    block = _explanation_block(text)
    if block:
        return block
    after = _tidy(text[end:])
    if labelled:
        if after:
            return after
        before = [ln for ln in text[:start].split("\n") if ln.strip()]
        return _tidy(re.sub(rf"^[\s>•\-]*{_STEP_PREFIX}", "", before[-1], flags=_F)) if before else ""
    s, e = _sentence_bounds(text, start, end)
    rest, following = text[end:e], text[e + 1 :]
    if _words(rest) >= _MIN_REASON_WORDS and _REASON_START.match(rest):
        return after
    if not _words(rest) and _words(following) >= _MIN_REASON_WORDS:
        return _tidy(following)
    sentence = text[s : e + 1]
    if _content_words(sentence) - _content_words(text[start:end]) < _MIN_REASON_WORDS:
        # a bare conclusion ("So it is anomalous."): add the sentence before it on the same line
        line_start = text.rfind("\n", 0, start) + 1
        prev = max(text.rfind(c, line_start, max(s - 1, line_start)) for c in ".!?") + 1
        if s - 1 >= line_start and text[s - 1] != "?":  # not a question the reply repeats
            sentence = text[max(prev, line_start) : e + 1]
    if _words(sentence) == _words(text[start:end]):
        return ""  # the reply is the verdict and nothing else
    return _tidy(re.sub(rf"^[\s>•\-]*{_STEP_PREFIX}", "", sentence, flags=_F))


# ------------------------------------------------------------------------------------------------- API
def parse_verdict(
    text: str | None, *, yes_means: Literal["anomalous", "normal"] = "anomalous"
) -> ParsedAnswer:
    """Parse a model reply into a verdict and an explanation (see the module docstring for the rules).

    ``yes_means`` says what a bare "Yes" answers: ``anomalous`` for the questions vlmad asks ("Does the
    test image contain any defects?"), ``normal`` for a question like "Is the product normal?". Never
    raises for any string; ``None`` and empty or whitespace-only text give ``unparsed``.
    """
    if yes_means not in ("anomalous", "normal"):
        raise ValueError(f"yes_means must be 'anomalous' or 'normal', got {yes_means!r}")
    if text is None or not text.strip():
        return UNPARSED
    t = _clean(text)

    fixed = list(_FIXED.finditer(t))
    if fixed:
        m = fixed[-1]
        return ParsedAnswer(m["v"].lower(), _explain(t, m.start(), m.end(), labelled=True), m[0].strip())

    labelled: list[tuple[int, str, int, int]] = []  # (position, verdict, match start, match end)
    for m in _POLAR_LABEL.finditer(t):
        v = "anomalous" if m["v"].lower() in ("yes", "true") else "normal"
        labelled.append((m.start(), v, m.start(), m.end()))
    for pattern in (_LABEL, _INLINE_LABEL):
        for m in pattern.finditer(t):
            value, vstart = m["value"], m.start("value")
            if not value.strip():  # the value is on the next non-empty line
                nxt = re.match(r"\n[ \t]*\n?[ \t>•\-]*(?P<v>[^\n]+)", t[m.end() :])
                if not nxt:
                    continue
                value, vstart = nxt["v"], m.end() + nxt.start("v")
            found = _value_verdict(value, yes_means)
            if found is not None:
                verdict, s, e = found
                labelled.append((m.start(), verdict, m.start(), vstart + e))
    if labelled:
        _, verdict, s, e = max(labelled, key=lambda x: (x[0], x[3]))
        return ParsedAnswer(verdict, _explain(t, s, e, labelled=True), " ".join(t[s:e].split()))

    hits = _statements(t, yes_means)
    if not hits:
        # a terse reply that is only a verdict word: "Normal.", "OK", "Defective"
        if len(re.findall(r"[\w-]+", t)) <= _MAX_BARE_WORDS:
            found = _value_verdict(t, yes_means)
            if found is not None:
                verdict, s, e = found
                return ParsedAnswer(verdict, _explain(t, s, e, labelled=True), t[s:e])
        return UNPARSED
    h = hits[-1]
    return ParsedAnswer(
        h.verdict or "unparsed", _explain(t, h.start, h.end, labelled=False), t[h.start : h.end]
    )
