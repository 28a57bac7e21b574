"""The pre-flight check: every training sample encoded once before the first step, problems listed together.

:func:`preflight` encodes each record as training will (:class:`vlmad.train.data.Encoder`) and collects, in
one list, every record that cannot be trained on as it is:

- ``missing_image`` / ``bad_image``: an image file that does not exist or cannot be read;
- ``image_count``: image placeholders that do not match the record's images (or are not where the first
  user turn's ``"<label>: <image>"`` lines put them);
- ``truncated_into_images``: ``max_length`` falls inside or before the image tokens (the model would see
  a cut image);
- ``over_budget``: longer than ``max_length`` (answer tokens would be cut; with ``truncate_over_budget`` such
  a sample is kept, cut, and counted as ``truncated`` instead);
- ``no_answer`` / ``bad_turns`` / ``alignment``: nothing to train on, malformed turns, or answer tokens that
  cannot be located.

It also gathers token statistics (total, image and answer tokens per sample). The report says which records
are kept; :meth:`PreflightReport.raise_for_problems` stops the run unless dropping was allowed, and nothing
is ever dropped without being listed.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlmad.errors import VlmadError
from vlmad.train.data import Encoder, SampleError, TrainRecord

PROBLEM_KINDS: tuple[str, ...] = (
    "missing_image",
    "bad_image",
    "image_count",
    "truncated_into_images",
    "over_budget",
    "no_answer",
    "bad_turns",
    "alignment",
)
_SHOWN = 20  # problems written out in an error message; the report file has them all


@dataclass(frozen=True)
class Problem:
    """One record that cannot be trained on as it is: its ``position`` in the checked list, its ``split``
    and ``index`` (line, from 0, in ``messages/{split}.jsonl``), ``record`` (id or line), the ``kind`` (one
    of :data:`PROBLEM_KINDS`) and a ``message`` saying what is wrong."""

    position: int
    split: str
    index: int
    record: str
    kind: str
    message: str


@dataclass(frozen=True)
class TokenStats:
    """Distribution of one per-sample token count over the encoded samples."""

    min: int
    mean: float
    median: float
    p95: int
    max: int

    @classmethod
    def of(cls, values: Sequence[int]) -> TokenStats:
        if not values:
            return cls(0, 0.0, 0.0, 0, 0)
        s = sorted(values)
        return cls(
            s[0],
            float(statistics.fmean(s)),
            float(statistics.median(s)),
            s[(95 * (len(s) - 1)) // 100],
            s[-1],
        )


@dataclass
class PreflightReport:
    """What the pre-flight check found over one split.

    ``n_records``; ``problems`` (all of them); ``kept``: positions (in the checked list) of the records
    training will use (all but the problem ones); ``truncated``: positions of kept records cut at
    ``max_length``; ``tokens`` /
    ``image_tokens`` / ``answer_tokens``: statistics over the encoded samples (before truncation);
    ``over_budget``: how many samples exceed ``max_length`` (truncated ones included); ``max_length``: the
    budget checked.
    """

    split: str
    n_records: int
    max_length: int | None
    problems: list[Problem] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    over_budget: int = 0
    tokens: TokenStats = field(default_factory=lambda: TokenStats.of([]))
    image_tokens: TokenStats = field(default_factory=lambda: TokenStats.of([]))
    answer_tokens: TokenStats = field(default_factory=lambda: TokenStats.of([]))

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    @property
    def dropped(self) -> list[int]:
        """Positions of the records with a problem (dropped when dropping is allowed)."""
        return sorted({p.position for p in self.problems})

    def counts(self) -> dict[str, int]:
        """Problems per kind."""
        return dict(Counter(p.kind for p in self.problems))

    def summary(self) -> str:
        """A few lines for the CLI: records, token statistics, budget, problems per kind."""
        t, im, an = self.tokens, self.image_tokens, self.answer_tokens
        n_bad = len(self.dropped)
        lines = [
            f"{self.split}: {self.n_records} records, {len(self.kept)} kept, {n_bad} with problems",
            f"tokens per sample: min {t.min}, mean {t.mean:.0f}, median {t.median:.0f}, p95 {t.p95}, "
            f"max {t.max} (image tokens mean {im.mean:.0f}, answer tokens mean {an.mean:.0f}, min {an.min})",
            f"budget max_length={self.max_length}: {self.over_budget} sample(s) over it, "
            f"{len(self.truncated)} truncated",
        ]
        if self.problems:
            lines.append("problems: " + ", ".join(f"{k} {n}" for k, n in sorted(self.counts().items())))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``preflight.json`` holds)."""
        out = asdict(self)
        out["dropped"] = self.dropped
        out["counts"] = self.counts()
        return out

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path

    def raise_for_problems(self, allow_drop: bool = False) -> None:
        """Raise :class:`PreflightError` listing the problems, unless there are none or ``allow_drop`` (then
        the problem records are left out of training, as :attr:`dropped` lists). Also raises when nothing
        would be left to train on."""
        if self.problems and not allow_drop:
            raise PreflightError(self, allowed=False)
        if not self.kept:
            raise PreflightError(self, allowed=True)


class PreflightError(VlmadError):
    """The pre-flight check found problems (``report`` has them all); the message lists them and says how to
    go on: fix the export or the settings, or allow dropping the listed samples."""

    def __init__(self, report: PreflightReport, allowed: bool = False) -> None:
        self.report = report
        shown = report.problems[:_SHOWN]
        more = len(report.problems) - len(shown)
        head = (
            f"pre-flight check of the {report.split!r} split: {len(report.dropped)} of {report.n_records} "
            "record(s) cannot be trained on as they are"
        )
        if allowed:
            head += " and none is left to train on"
        lines = [head + ":"]
        lines += [f"  - [{p.kind}] {p.message}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more (all of them in preflight.json)")
        advice = ["fix the export (vlmad qa build) or the settings"]
        kinds = {p.kind for p in report.problems}
        if kinds & {"over_budget", "truncated_into_images"}:
            advice.append(
                "raise max_length, lower the image budgets (budgets: {role: {max_pixels: ...}})"
                + (", or set truncate_over_budget: true" if "over_budget" in kinds else "")
            )
        if not allowed:
            advice.append("or set allow_drop: true (--allow-drop) to train without the listed records")
        lines.append("; ".join(advice))
        super().__init__("\n".join(lines))


def preflight(
    encoder: Encoder,
    records: Sequence[TrainRecord],
    *,
    split: str = "train",
    progress: Callable[[str, int, int], None] | None = None,
) -> PreflightReport:
    """Encode every record with ``encoder`` and report problems and token statistics (module docstring).

    Never raises for a bad record: each becomes a :class:`Problem`. ``progress("pre-flight", done, total)``
    is called as records are checked.
    """
    report = PreflightReport(split=split, n_records=len(records), max_length=encoder.max_length)
    lengths: list[int] = []
    images: list[int] = []
    answers: list[int] = []
    budget = encoder.max_length
    for n, rec in enumerate(records):
        if progress is not None:
            progress("pre-flight", n, len(records))
        try:
            enc = encoder.encode(rec)
        except SampleError as e:
            report.problems.append(Problem(n, rec.split, rec.index, rec.name, e.kind, str(e)))
            continue
        lengths.append(enc.length)
        images.append(enc.image_tokens)
        answers.append(enc.answer_tokens)
        if budget is not None and enc.length > budget:
            report.over_budget += 1
            if enc.image_end > budget:
                report.problems.append(
                    Problem(
                        n,
                        rec.split,
                        rec.index,
                        rec.name,
                        "truncated_into_images",
                        f"{rec.name}: {enc.length} tokens; max_length {budget} cuts into its image tokens "
                        f"(they end at token {enc.image_end})",
                    )
                )
                continue
            if not enc.truncated:
                report.problems.append(
                    Problem(
                        n,
                        rec.split,
                        rec.index,
                        rec.name,
                        "over_budget",
                        f"{rec.name}: {enc.length} tokens exceed max_length {budget}; its answer tokens "
                        "would be cut",
                    )
                )
                continue
            report.truncated.append(n)
        report.kept.append(n)
    if progress is not None:
        progress("pre-flight", len(records), len(records))
    report.tokens = TokenStats.of(lengths)
    report.image_tokens = TokenStats.of(images)
    report.answer_tokens = TokenStats.of(answers)
    return report
