"""Table-driven tests of vlmad.coi.parse.parse_verdict on realistic model replies."""

from __future__ import annotations

import pytest

from vlmad.coi.parse import ParsedAnswer, parse_verdict

A, N, U = "anomalous", "normal", "unparsed"

# (id, reply, expected verdict, a fragment the explanation must contain or None for "")
CASES: list[tuple[str, str, str, str | None]] = [
    # ---- the fixed form the prompts ask for
    (
        "fixed-anomalous",
        "Answer: anomalous\nExplanation: One pushpin is missing in the top-left cell.",
        A,
        "One pushpin is missing in the top-left cell.",
    ),
    (
        "fixed-normal",
        "Answer: normal\nExplanation: All six compartments hold one pushpin, as in the template.",
        N,
        "All six compartments",
    ),
    (
        "fixed-bold-md",
        "**Answer:** Anomalous\n**Explanation:** The juice bottle label is torn on the left.",
        A,
        "label is torn",
    ),
    (
        "fixed-after-reasoning",
        "Step 1: The template shows a breakfast box with two oranges and one nectarine on the left.\n"
        "Step 2: In the test image the left side has only one orange.\n"
        "Step 3: A missing orange is a defect.\n\nAnswer: anomalous\n"
        "Explanation: The left compartment holds one orange instead of two.",
        A,
        "one orange instead of two",
    ),
    (
        "fixed-explanation-first",
        "Explanation: the screw bag holds two long screws.\nAnswer: ANOMALOUS",
        A,
        "two long screws",
    ),
    (
        "fixed-no-explanation-uses-reason-before",
        "The splicing connector's cable is cut in the middle.\nAnswer: anomalous",
        A,
        "cable is cut",
    ),
    (
        "fixed-last-wins",
        "Answer: normal\nOn closer inspection, a pin is bent.\nAnswer: anomalous\n"
        "Explanation: a bent pin on the right.",
        A,
        "bent pin",
    ),
    (
        "fixed-echoed-placeholder",
        "Answer: <normal or anomalous>\nExplanation: <...>\n\n"
        "Answer: normal\nExplanation: matches the template.",
        N,
        "matches the template",
    ),
    ("fixed-trailing-punct", "answer: normal.", N, None),
    (
        "fixed-heading-markdown",
        "### Final Answer: Normal\nNothing differs from the template.",
        N,
        "Nothing differs",
    ),
    # ---- GPT-4o style reasoning with a labelled verdict
    (
        "gpt4o-final-answer-after-doubt",
        "At first glance the test image looks defective because of the shadow near the cap. "
        "However, the shadow also appears in the template and every part is present.\n\nFinal answer: normal",
        N,
        "shadow",
    ),
    (
        "gpt4o-conclusion-line",
        "**Step 1:** The template contains six pushpins arranged in a grid.\n"
        "**Step 2:** The test image shows five pushpins; the bottom-right cell is empty.\n"
        "**Step 3:** An empty cell violates the rule of one pushpin per cell.\n"
        "**Conclusion:** The test image is anomalous because the bottom-right cell has no pushpin.",
        A,
        "bottom-right cell has no pushpin",
    ),
    (
        "gpt4o-verdict-yes",
        "Verdict: Yes - there is a crack across the connector housing.",
        A,
        "crack across the connector housing",
    ),
    (
        "gpt4o-judgment-no",
        "Final judgment: No. The test image contains no defects; all items match.",
        N,
        "all items match",
    ),
    (
        "gpt4o-value-next-line",
        "### Final Verdict:\n**Defective** - the orange in the left compartment is bruised.",
        A,
        "bruised",
    ),
    (
        "gpt4o-step4-label",
        "Step 3: The label position matches.\n"
        "Step 4 - Judgment: The test image does not contain any defects.",
        N,
        None,
    ),
    (
        "gpt4o-my-final-answer",
        "Considering everything, my final answer is that the image is normal.",
        N,
        None,
    ),
    ("polar-label-anomaly-yes", "Anomaly: Yes\nType: logical (an extra screw).", A, "extra screw"),
    (
        "polar-label-defects-none",
        "Defects found: none\nThe bottle is filled to the usual level.",
        N,
        "filled to the usual level",
    ),
    ("label-value-letter-A-is-not-an-answer", "Answer: A", U, None),
    ("label-value-true", "Answer: True. The washer is missing.", A, "washer is missing"),
    ("free-zero-defects", "Zero defects were found on the connector.", N, None),
    ("part-intact-is-not-a-verdict", "The label is intact and the bottle cap is present.", U, None),
    ("label-value-B", "Answer: (B)", U, None),
    # ---- LLaVA style terse replies
    ("llava-yes", "Yes.", A, None),
    ("llava-no", "No.", N, None),
    ("llava-yes-lower", "yes", A, None),
    (
        "llava-yes-reason",
        "Yes, there is a missing pushpin in the top right corner.",
        A,
        "missing pushpin in the top right corner",
    ),
    (
        "llava-no-reason",
        "No, the test image does not contain any defects. All compartments are filled.",
        N,
        "All compartments are filled.",
    ),
    ("llava-single-word", "Anomalous", A, None),
    ("llava-normal-word", "Normal.", N, None),
    ("llava-article-a", "A pushpin.", U, None),
    ("llava-lone-letter", "B", U, None),
    # ---- free text: negations and explicit statements
    ("free-no-defects", "There are no defects in the test image.", N, None),
    (
        "free-not-anomalous",
        "The test image is not anomalous; it matches the template.",
        N,
        "matches the template",
    ),
    ("free-no-anomaly-detected", "No anomaly detected.", N, None),
    (
        "free-anomaly-found",
        "Anomaly found: the screw is shorter than in the template.",
        A,
        "shorter than in the template",
    ),
    ("free-defective", "The juice bottle is defective: the label is upside down.", A, "label is upside down"),
    (
        "free-not-normal",
        "This bottle is not normal, the liquid level is too low.",
        A,
        "liquid level is too low",
    ),
    ("free-does-not-look-normal", "The cable does not look normal, it is frayed at the end.", A, "frayed"),
    ("free-defect-free", "The product appears defect-free.", N, None),
    ("free-looks-normal", "Everything looks normal compared with the template.", N, None),
    (
        "free-contains-a-defect",
        "The test image contains a defect: a scratch on the right side.",
        A,
        "scratch on the right side",
    ),
    (
        "free-last-explicit-wins",
        "At first it looks defective because of the glare, but on closer inspection it is normal.",
        N,
        None,
    ),
    (
        "free-last-explicit-wins-2",
        "The image is normal in the centre. However, the left pushpin is bent, so the image is anomalous.",
        A,
        "left pushpin is bent",
    ),
    (
        "free-no-other-defects",
        "There is a scratch on the bottle. The test image is anomalous. No other defects are visible.",
        A,
        None,
    ),
    ("free-nothing-wrong", "I see nothing wrong with this box.", N, None),
    ("free-no-list-of-defects", "The bottle shows no scratches, dents or other defects.", N, None),
    ("free-isnt-any", "There isn't any anomaly in the test image.", N, None),
    (
        "free-dont-see",
        "I don't see any defects; the connectors and cable match the template.",
        N,
        "connectors and cable match",
    ),
    ("free-lighting-normal", "The differences are due to lighting and are normal.", N, "lighting"),
    (
        "free-result-is",
        "The result is anomalous: the cable is red instead of yellow.",
        A,
        "red instead of yellow",
    ),
    (
        "free-bare-conclusion-uses-sentence-before",
        "The nectarine is missing from the box. Therefore, the test image is anomalous.",
        A,
        "nectarine is missing",
    ),
    # ---- multi-step reasoning echoing the prompt (whether/if clauses and the template are not verdicts)
    (
        "echo-whether-p1",
        "Step 1: The template image is normal and shows two oranges.\n"
        "Step 2: The test image has three oranges.\n"
        "Step 3: Judge whether those differences are defect or normal. The extra orange is a defect.",
        A,
        "extra orange is a defect",
    ),
    (
        "echo-whether-only",
        "Step 4: Determine whether the test image contains any defects. If yes, describe it.",
        U,
        None,
    ),
    (
        "echo-step4-yes",
        "Step 4: Determine whether the test image contains any defects. Yes. "
        "The right connector has a broken clip.",
        A,
        "broken clip",
    ),
    (
        "question-then-yes",
        "Is there an anomaly in the test image? Yes, the cable color is wrong.",
        A,
        "cable color is wrong",
    ),
    (
        "template-sentence-ignored",
        "The template image is normal. The test image shows a logical anomaly.",
        A,
        None,
    ),
    ("no-then-reason", "No, the housing looks the same as in the template.", N, "looks the same"),
    ("contradiction-last-explicit-wins", "No, there is a crack on the housing.", A, None),
    ("llava-crack", "In the test image, there is a small crack on the surface of the connector.", A, "crack"),
    ("llava-missing", "The nectarine is missing.", A, None),
    ("none-missing", "None of the pushpins are missing.", N, None),
    ("extra-item", "There is an extra orange in the left compartment.", A, "extra orange"),
    (
        "conditional-then-normal",
        "If a pushpin were missing, it would be anomalous. "
        "Here all pushpins are present, so the image is normal.",
        N,
        None,
    ),
    ("classify-as-normal", "Based on the comparison, I would classify the test image as normal.", N, None),
    (
        "cannot-be-considered-normal",
        "The test image cannot be considered normal because the label is missing.",
        A,
        "label is missing",
    ),
    ("inline-answer-after-sentence", "No differences found. Answer: normal", N, None),
    (
        "inline-answer-yes-reason-before",
        "There is a defect: a scratch on the cap. Answer: Yes",
        A,
        "scratch on the cap",
    ),
    ("question-no", "Does the test image contain any defects? No.", N, None),
    ("good-condition", "The product in the test image is in good condition.", N, None),
    (
        "lighting-not-defects",
        "The differences between the two images are minor variations in lighting, which are not defects.",
        N,
        None,
    ),
    # ---- nothing to read
    ("empty", "", U, None),
    ("whitespace", "  \n\t ", U, None),
    ("refusal", "I'm sorry, but I can't help with analyzing these images.", U, None),
    ("cannot-determine", "I cannot determine if the image is defective from this resolution.", U, None),
    ("no-verdict-description", "The image shows a breakfast box with cereal and fruit.", U, None),
]


@pytest.mark.parametrize(("reply", "verdict", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_table(reply: str, verdict: str, fragment: str | None) -> None:
    got = parse_verdict(reply)
    assert got.verdict == verdict, (reply, got)
    if verdict == U:
        assert got.explanation == "" and got.matched is None
    else:
        assert got.matched
    if fragment is not None:
        assert fragment.lower() in got.explanation.lower(), got


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


def test_none_and_result_type() -> None:
    assert parse_verdict(None) == ParsedAnswer("unparsed", "", None)
    got = parse_verdict("Answer: anomalous\nExplanation: a crack.")
    assert isinstance(got, ParsedAnswer)
    assert got.matched == "Answer: anomalous" and got.explanation == "a crack."


def test_yes_means_normal() -> None:
    assert parse_verdict("Yes.", yes_means="normal").verdict == N
    assert parse_verdict("No, it is damaged.", yes_means="normal").verdict == A
    with pytest.raises(ValueError, match="yes_means"):
        parse_verdict("Yes.", yes_means="maybe")  # type: ignore[arg-type]


def test_explanation_strips_markdown() -> None:
    got = parse_verdict("**Answer:** anomalous\n**Explanation:** The *left* orange is `missing`.")
    assert got.explanation == "The left orange is missing."
