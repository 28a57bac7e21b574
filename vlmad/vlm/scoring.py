"""Yes/no scoring from next-token logits: a threshold-free anomaly score for local VLMs.

After the generation prompt, the model's next-token distribution says how likely each answer is.
:func:`yes_no_scores` turns it into ``p_anomalous``: the probability mass of the tokens that start an
"anomalous" answer (``Yes``, ``anomalous``, ...) over the mass of both answer sets, so verdicts of local VLMs
get an AUROC and not only an accuracy. ``answer_mass`` (the share of all probability on either set) tells
whether the model was answering the question at all.

Answer tokens (:func:`answer_token_ids`): for every word of :class:`AnswerWords` the first token of the word
as it starts a reply, with and without a leading space (``"Yes"``, ``" Yes"``), in the word's given case and
in lower, capitalised and upper case. A first token shorter than two characters (``"N"``, ``"Y"``: they
start countless other words) is not used, nor special tokens; a token that starts words of both sets is
dropped from both. Either set ending up empty raises :class:`VlmError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlmad.vlm.base import ImageBudget, VlmRequest
from vlmad.vlm.errors import VlmError

if TYPE_CHECKING:
    import torch

    from vlmad.vlm.load import VLM

ANOMALOUS_WORDS: tuple[str, ...] = ("Yes", "Anomalous", "Abnormal", "Defective")
NORMAL_WORDS: tuple[str, ...] = ("No", "Normal")


@dataclass(frozen=True)
class AnswerWords:
    """The words whose first tokens count as an "anomalous" (``positive``) or "normal" (``negative``) answer.

    The defaults suit questions like "Is there a defect? Answer yes or no." and "Is the test image normal or
    anomalous?"; pass others for other phrasings.
    """

    positive: tuple[str, ...] = ANOMALOUS_WORDS
    negative: tuple[str, ...] = NORMAL_WORDS


@dataclass(frozen=True)
class AnswerTokens:
    """Token ids of the two answer sets, and the ids dropped because they start words of both."""

    positive: tuple[int, ...]
    negative: tuple[int, ...]
    dropped: tuple[int, ...] = ()


@dataclass(frozen=True)
class YesNoScore:
    """``p_anomalous``: P(anomalous answer | one of the two answers), in [0, 1]; ``answer_mass``: the total
    next-token probability on both answer sets, in [0, 1]."""

    p_anomalous: float
    answer_mass: float


def _variants(word: str) -> list[str]:
    forms = dict.fromkeys([word, word.lower(), word.capitalize(), word.upper()])
    return [v for f in forms for v in (f, " " + f)]


def _first_tokens(tokenizer: Any, words: Sequence[str]) -> set[int]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: set[int] = set()
    for word in words:
        for variant in _variants(word):
            ids = tokenizer.encode(variant, add_special_tokens=False)
            for i in ids:
                if i in special:
                    continue
                piece = tokenizer.decode([i]).strip()
                if not piece:
                    continue  # a bare space / word-boundary marker: look at the next token
                if len(piece) >= min(2, len(word)):
                    out.add(int(i))
                break
    return out


def answer_token_ids(tokenizer: Any, words: AnswerWords = AnswerWords()) -> AnswerTokens:
    """The first-token ids of the answer words (see the module docstring for the rules)."""
    pos, neg = _first_tokens(tokenizer, words.positive), _first_tokens(tokenizer, words.negative)
    both = pos & neg
    pos, neg = pos - both, neg - both
    if not pos or not neg:
        which = "anomalous" if not pos else "normal"
        raise VlmError(
            f"no usable first token for the {which} answer words "
            f"{words.positive if not pos else words.negative} with this tokenizer; pass other AnswerWords"
        )
    return AnswerTokens(tuple(sorted(pos)), tuple(sorted(neg)), tuple(sorted(both)))


def scores_from_logits(logits: torch.Tensor, tokens: AnswerTokens) -> list[YesNoScore]:
    """Yes/no scores of ``(N, V)`` next-token logits (float32 log-sum-exp, so no underflow)."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    pos = torch.logsumexp(logp[:, list(tokens.positive)], dim=-1)
    neg = torch.logsumexp(logp[:, list(tokens.negative)], dim=-1)
    p = torch.sigmoid(pos - neg)
    mass = torch.logsumexp(torch.stack([pos, neg], dim=-1), dim=-1).exp().clamp(0.0, 1.0)
    return [YesNoScore(float(a), float(b)) for a, b in zip(p.tolist(), mass.tolist(), strict=True)]


def next_token_logits(
    vlm: VLM,
    requests: Sequence[VlmRequest],
    *,
    budgets: Mapping[str, ImageBudget] | None = None,
    role_labels: Mapping[str, str] | None = None,
    assistant_prefixes: Sequence[str] | None = None,
) -> torch.Tensor:
    """``(N, V)`` float32 logits of the token after each prompt (one forward pass, left padding)."""
    import torch

    inputs = vlm.prepare(
        requests, budgets, role_labels=role_labels, padding_side="left", assistant_prefixes=assistant_prefixes
    )
    with torch.inference_mode():
        try:
            out = vlm.model(**inputs.tensors, logits_to_keep=1, use_cache=False)
        except TypeError:  # a model whose forward has no logits_to_keep
            out = vlm.model(**inputs.tensors, use_cache=False)
    return out.logits[:, -1, :].float()


def yes_no_scores(
    vlm: VLM,
    requests: Sequence[VlmRequest],
    *,
    words: AnswerWords = AnswerWords(),
    budgets: Mapping[str, ImageBudget] | None = None,
    role_labels: Mapping[str, str] | None = None,
    assistant_prefixes: Sequence[str] | None = None,
    batch_size: int = 8,
) -> list[YesNoScore]:
    """One :class:`YesNoScore` per request, in order, from the next-token logits after its prompt.

    Requests are batched (``batch_size``, left padded). ``assistant_prefixes`` lets the score be read after
    text the reply already holds (e.g. a chain-of-image reasoning followed by "Answer:"). Requests must not
    carry an ``answer``. Raises :class:`VlmError` for bad requests or unusable answer words.
    """
    if batch_size < 1:
        raise VlmError(f"batch_size must be at least 1, got {batch_size}")
    if any(r.answer is not None for r in requests):
        raise VlmError("yes/no scoring reads the answer from the model: requests must not carry an answer")
    if assistant_prefixes is not None and len(assistant_prefixes) != len(requests):
        raise VlmError(f"{len(assistant_prefixes)} assistant prefixes for {len(requests)} requests")
    tokens = answer_token_ids(vlm.tokenizer, words)
    out: list[YesNoScore] = []
    for start in range(0, len(requests), batch_size):
        chunk = list(requests[start : start + batch_size])
        prefixes = (
            None if assistant_prefixes is None else list(assistant_prefixes[start : start + batch_size])
        )
        logits = next_token_logits(
            vlm, chunk, budgets=budgets, role_labels=role_labels, assistant_prefixes=prefixes
        )
        out.extend(scores_from_logits(logits, tokens))
    return out
