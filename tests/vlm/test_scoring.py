"""Yes/no scores from next-token logits, and batched generation."""

from __future__ import annotations

import pytest
import torch

from vlmad.vlm import VLM, AnswerWords, VlmError, VlmRequest, answer_token_ids, generate, yes_no_scores
from vlmad.vlm.scoring import AnswerTokens, next_token_logits, scores_from_logits

from .conftest import image

QUESTION = "Is there any defect in the test image? Answer Yes or No."


def requests(n: int) -> list[VlmRequest]:
    # different question lengths, so a batch needs padding
    return [
        VlmRequest(QUESTION + " Be brief." * i, {"template": image(2 * i), "test": image(2 * i + 1)})
        for i in range(n)
    ]


def test_answer_tokens_are_disjoint_first_tokens_of_the_answer_words(vlm: VLM) -> None:
    tok = vlm.tokenizer
    ids = answer_token_ids(tok)
    assert ids.positive and ids.negative
    assert not set(ids.positive) & set(ids.negative)
    pos = {tok.decode([i]).strip() for i in ids.positive}
    neg = {tok.decode([i]).strip() for i in ids.negative}
    assert {"Yes", "yes"} <= pos and {"No", "no"} <= neg
    assert all(len(p) >= 2 for p in pos | neg)
    first_yes = tok.encode("Yes", add_special_tokens=False)[0]
    assert first_yes in ids.positive


def test_answer_words_that_collide_leave_no_tokens(vlm: VLM) -> None:
    with pytest.raises(VlmError, match="no usable first token for the anomalous answer words"):
        answer_token_ids(vlm.tokenizer, AnswerWords(positive=("Yes",), negative=("Yes", "No")))


def test_scores_are_probabilities_equal_to_a_manual_softmax(vlm: VLM) -> None:
    reqs = requests(3)
    scores = yes_no_scores(vlm, reqs, batch_size=3)
    assert len(scores) == 3
    assert all(0.0 <= s.p_anomalous <= 1.0 and 0.0 < s.answer_mass <= 1.0 for s in scores)

    ids = answer_token_ids(vlm.tokenizer)
    inputs = vlm.prepare(reqs)
    with torch.inference_mode():
        logits = vlm.model(**inputs.tensors).logits[:, -1, :].double()
    probs = torch.softmax(logits, dim=-1)
    pos = probs[:, list(ids.positive)].sum(-1)
    neg = probs[:, list(ids.negative)].sum(-1)
    for s, p, n in zip(scores, pos.tolist(), neg.tolist(), strict=True):
        assert s.p_anomalous == pytest.approx(p / (p + n), abs=1e-5)
        assert s.answer_mass == pytest.approx(p + n, abs=1e-5)


def test_batched_left_padded_scores_equal_one_by_one(vlm: VLM) -> None:
    reqs = requests(3)
    together = yes_no_scores(vlm, reqs, batch_size=3)
    alone = yes_no_scores(vlm, reqs, batch_size=1)
    for a, b in zip(together, alone, strict=True):
        assert a.p_anomalous == pytest.approx(b.p_anomalous, abs=1e-4)
        assert a.answer_mass == pytest.approx(b.answer_mass, rel=1e-3)


def test_scores_follow_the_logits() -> None:
    tokens = AnswerTokens(positive=(1, 2), negative=(3,))
    logits = torch.zeros(3, 6)
    logits[1, 1] = 2.0  # more "yes"
    logits[2, 3] = 2.0  # more "no"
    s = scores_from_logits(logits, tokens)
    assert s[0].p_anomalous == pytest.approx(2 / 3)
    assert s[0].answer_mass == pytest.approx(3 / 6)
    assert s[1].p_anomalous > s[0].p_anomalous > s[2].p_anomalous
    assert scores_from_logits(torch.tensor([[0.0, 500.0, 0.0, -500.0]]), tokens)[
        0
    ].p_anomalous == pytest.approx(1.0)


def test_scores_move_when_the_model_favours_yes(vlm: VLM) -> None:
    reqs = requests(2)
    before = [s.p_anomalous for s in yes_no_scores(vlm, reqs)]
    ids = answer_token_ids(vlm.tokenizer)
    head = vlm.model.get_output_embeddings().weight
    saved = head.data.clone()
    try:
        with torch.no_grad():
            hidden = vlm.model(**vlm.prepare(reqs).tensors, output_hidden_states=True).hidden_states[-1][
                :, -1
            ]
            # push the "anomalous" tokens' logits up along the prompts' final hidden state
            direction = hidden.mean(0) / hidden.mean(0).norm() ** 2
            head.data[list(ids.positive)] += 5.0 * direction
        after = [s.p_anomalous for s in yes_no_scores(vlm, reqs)]
    finally:
        head.data.copy_(saved)
    assert all(a > b + 0.05 for a, b in zip(after, before, strict=True)), (before, after)
    assert [s.p_anomalous for s in yes_no_scores(vlm, reqs)] == pytest.approx(before)


def test_scoring_reads_after_an_assistant_prefix(vlm: VLM) -> None:
    reqs = requests(2)
    plain = next_token_logits(vlm, reqs)
    prefixed = next_token_logits(vlm, reqs, assistant_prefixes=["The answer is", "The answer is"])
    assert plain.shape == prefixed.shape == (2, vlm.model.get_output_embeddings().weight.shape[0])
    assert not torch.allclose(plain, prefixed)


def test_scoring_refuses_requests_with_answers(vlm: VLM) -> None:
    with pytest.raises(VlmError, match="must not carry an answer"):
        yes_no_scores(vlm, [VlmRequest(QUESTION, {"test": image(0)}, answer="Yes")])
    with pytest.raises(VlmError, match="batch_size must be at least 1"):
        yes_no_scores(vlm, requests(1), batch_size=0)


def test_generation_returns_text_per_request(vlm: VLM) -> None:
    reqs = requests(3)
    out = generate(vlm, reqs, max_new_tokens=5, batch_size=2)
    assert len(out) == 3
    for g in out:
        assert isinstance(g.text, str)
        assert 0 <= g.num_tokens <= 5
        assert g.finished or g.num_tokens == 5
    again = generate(vlm, reqs, max_new_tokens=5, batch_size=2)
    assert [g.text for g in again] == [g.text for g in out]  # greedy is deterministic


def test_sampling_is_repeatable_with_a_seed_and_leaves_global_rng_alone(vlm: VLM) -> None:
    reqs = requests(2)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(vlm, reqs, max_new_tokens=8, do_sample=True, temperature=1.5, seed=7)
    b = generate(vlm, reqs, max_new_tokens=8, do_sample=True, temperature=1.5, seed=7)
    assert [g.text for g in a] == [g.text for g in b]
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(VlmError, match="temperature > 0"):
        generate(vlm, reqs, do_sample=True, temperature=0.0)
