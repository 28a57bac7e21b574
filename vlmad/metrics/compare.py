"""A/B comparisons of runs on the same test images, with paired statistics and Holm correction.

Verdict runs (a VLM answering normal/anomalous) are compared on per-item correctness: exact McNemar test
and a paired bootstrap CI of the accuracy difference that resamples whole images, so several questions
on one image stay together. Score runs are compared on image AUROC with a paired bootstrap over images.
When several runs are compared with one baseline, the p-values are Holm-corrected across comparisons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from vlmad.metrics.evaluate import SUBSET_LABELS, EvaluationError
from vlmad.metrics.ranking import auroc
from vlmad.metrics.stats import holm, mcnemar_exact, paired_bootstrap, paired_bootstrap_metric
from vlmad.records import Manifest, Prediction


@dataclass(frozen=True)
class Comparison:
    """``other`` against ``base`` on one metric: ``difference = other - base`` with its bootstrap CI.

    ``p_value`` is McNemar's exact p (accuracy) or the bootstrap p (AUROC); ``p_holm`` is it after Holm
    correction over all comparisons made together.
    """

    base: str
    other: str
    metric: str
    subset: str
    n_items: int
    n_images: int
    value_base: float
    value_other: float
    difference: float
    low: float
    high: float
    ci: float
    p_value: float
    p_holm: float
    only_base_correct: int | None
    only_other_correct: int | None
    n_boot: int
    seed: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _test_items(
    manifest: Manifest, preds: Sequence[Prediction], subset: str
) -> dict[tuple[str, str | None], Prediction]:
    allowed = ("good", *SUBSET_LABELS[subset])
    out = {}
    for p in preds:
        try:
            s = manifest.get(p.sample_id)
        except KeyError:
            raise EvaluationError(f"run {p.run_id!r}: sample {p.sample_id!r} is not in the dataset") from None
        if s.split == "test" and s.label in allowed:
            out[p.key] = p
    return out


def _correct(preds: Sequence[Prediction], anomalous: np.ndarray) -> np.ndarray:
    """Per-item correctness of verdicts; an unparsed (or missing) verdict is wrong on every image, as in
    :mod:`vlmad.metrics.verdict`."""
    return np.array(
        [
            p.verdict in ("normal", "anomalous") and (p.verdict == "anomalous") == y
            for p, y in zip(preds, anomalous, strict=True)
        ]
    )


def _metric_for(a: Sequence[Prediction], b: Sequence[Prediction]) -> str:
    if all(p.verdict is not None for p in (*a, *b)):
        return "accuracy"
    if all(p.score is not None for p in (*a, *b)):
        return "image_auroc"
    raise EvaluationError("runs to compare need verdicts on every item, or scores on every item")


def compare_runs(
    manifest: Manifest,
    runs: Mapping[str, Sequence[Prediction]],
    base: str,
    *,
    metric: str | None = None,
    subset: str = "all",
    n_boot: int = 10000,
    ci: float = 0.95,
    seed: int = 0,
) -> list[Comparison]:
    """Compare every run in ``runs`` with ``runs[base]`` on the test split (``subset``: all / logical /
    structural, each with the good images). ``metric``: ``accuracy`` (verdicts) or ``image_auroc``
    (scores); chosen from the data when None. Seeded: the same inputs and seed give the same result.

    Raises :class:`EvaluationError` when the runs do not cover the same items.
    """
    if base not in runs:
        raise EvaluationError(f"baseline run {base!r} not among {sorted(runs)}")
    if subset not in SUBSET_LABELS:
        raise EvaluationError(f"unknown subset {subset!r}; expected one of {sorted(SUBSET_LABELS)}")
    base_items = _test_items(manifest, runs[base], subset)
    if not base_items:
        raise EvaluationError(f"run {base!r} has no prediction on the test images of subset {subset!r}")
    found: list[dict] = []
    for name, preds in runs.items():
        if name == base:
            continue
        items = _test_items(manifest, preds, subset)
        if set(items) != set(base_items):
            diff = set(items) ^ set(base_items)
            raise EvaluationError(
                f"runs {base!r} and {name!r} cover different items "
                f"({len(diff)} differ, e.g. {sorted(diff, key=str)[0]})"
            )
        keys = sorted(base_items, key=lambda k: (k[0], k[1] or ""))
        pa = [base_items[k] for k in keys]
        pb = [items[k] for k in keys]
        m = metric or _metric_for(pa, pb)
        anomalous = np.array([manifest.get(k[0]).is_anomalous for k in keys])
        groups = [k[0] for k in keys]
        if m == "accuracy":
            correct_a, correct_b = _correct(pa, anomalous), _correct(pb, anomalous)
            mc = mcnemar_exact(correct_b, correct_a)
            bs = paired_bootstrap(
                correct_b.astype(float),
                correct_a.astype(float),
                groups=groups,
                n_boot=n_boot,
                ci=ci,
                seed=seed,
            )
            found.append(
                dict(
                    other=name,
                    metric=m,
                    value_base=float(correct_a.mean()),
                    value_other=float(correct_b.mean()),
                    bs=bs,
                    p=mc.p_value,
                    only_base_correct=mc.only_b,
                    only_other_correct=mc.only_a,
                )
            )
        elif m == "image_auroc":
            if len(set(groups)) != len(groups):
                raise EvaluationError("image AUROC needs one scored prediction per image")
            sa = np.array([p.score for p in pa], dtype=float)
            sb = np.array([p.score for p in pb], dtype=float)
            bs = paired_bootstrap_metric(anomalous, sb, sa, auroc, n_boot=n_boot, ci=ci, seed=seed)
            found.append(
                dict(
                    other=name,
                    metric=m,
                    value_base=auroc(anomalous, sa),
                    value_other=auroc(anomalous, sb),
                    bs=bs,
                    p=bs.p_value,
                    only_base_correct=None,
                    only_other_correct=None,
                )
            )
        else:
            raise EvaluationError(f"unknown comparison metric {m!r}; use accuracy or image_auroc")
    adjusted = holm([f["p"] for f in found]) if found else []
    return [
        Comparison(
            base=base,
            other=f["other"],
            metric=f["metric"],
            subset=subset,
            n_items=len(base_items),
            n_images=len({k[0] for k in base_items}),
            value_base=f["value_base"],
            value_other=f["value_other"],
            difference=f["bs"].estimate,
            low=f["bs"].low,
            high=f["bs"].high,
            ci=ci,
            p_value=f["p"],
            p_holm=float(p_holm),
            only_base_correct=f["only_base_correct"],
            only_other_correct=f["only_other_correct"],
            n_boot=n_boot,
            seed=seed,
        )
        for f, p_holm in zip(found, adjusted, strict=True)
    ]
