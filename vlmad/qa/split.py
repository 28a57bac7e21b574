"""The partial-supervision split of document 004, by image.

All training images (normal only in MVTec LOCO) plus a random share of the test set's anomalous images go
to training; the remaining test images, anomalous and normal, form the new test set. The share is drawn
per stratum (category, label, defect type) so every kind of anomaly is represented on both sides, and the
split is by image: every QA item of an image lands on the same side.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from vlmad.errors import ConfigError
from vlmad.records import Manifest

Stratum = tuple[str, str, str | None]  # (category, label, defect_type)


@dataclass(frozen=True)
class QASplit:
    """A split of a manifest's images into ``train`` / ``validation`` / ``test``.

    - ``assignment``: sample id -> ``"train"`` | ``"validation"`` | ``"test"``, for every sample.
    - ``fraction`` / ``seed``: the settings it was made with.
    - ``counts``: per stratum ``(category, label, defect_type)`` of the test set's anomalous images,
      ``{"n": images in the stratum, "to_train": how many of them went to training}``.
    """

    assignment: dict[str, str]
    fraction: float
    seed: int
    counts: dict[Stratum, dict[str, int]] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        """Images per side, in the order train, validation, test (sides with no image included as 0)."""
        out = {"train": 0, "validation": 0, "test": 0}
        for part in self.assignment.values():
            out[part] = out.get(part, 0) + 1
        return out

    def ids(self, part: str) -> list[str]:
        """Ids of the samples assigned to ``part``, in the manifest's order."""
        return [sid for sid, p in self.assignment.items() if p == part]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary: settings, totals per side and the per-stratum counts (no assignment)."""
        return {
            "method": "partial_supervision",
            "fraction": self.fraction,
            "seed": self.seed,
            "totals": self.totals,
            "strata": [
                {"category": c, "label": lab, "defect_type": d, **n} for (c, lab, d), n in self.counts.items()
            ],
        }


def n_to_train(fraction: float, n: int) -> int:
    """How many of a stratum of ``n`` images go to training: ``floor(fraction * n + 0.5)`` (round half up)."""
    return min(n, math.floor(fraction * n + 0.5))


def partial_supervision_split(manifest: Manifest, *, fraction: float = 0.1, seed: int = 0) -> QASplit:
    """Split ``manifest`` by image as document 004 does.

    - normal images keep their split (train -> train, validation -> validation, test -> test);
    - test anomalies are grouped by (category, label, defect_type); from each group of ``n`` exactly
      :func:`n_to_train` ``(fraction, n)`` images, drawn at random, go to ``train``, the rest to ``test``;
    - anomalies outside the test split keep their split.

    The draw of a stratum is seeded by ``seed`` and the stratum alone (over its sorted ids), so the result
    is the same for the same manifest and seed, whatever the sample order. ``fraction`` outside ``[0, 1]``
    (or not a number) -> :class:`ConfigError`.
    """
    if not isinstance(fraction, int | float) or math.isnan(fraction) or not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"split fraction must be between 0 and 1, got {fraction!r}")
    strata: dict[Stratum, list[str]] = {}
    assignment: dict[str, str] = {}
    for s in manifest:
        if s.split == "test" and s.is_anomalous:
            strata.setdefault((s.category, s.label, s.defect_type), []).append(s.id)
            assignment[s.id] = "test"
        else:
            assignment[s.id] = s.split
    counts: dict[Stratum, dict[str, int]] = {}
    for key in sorted(strata, key=lambda k: (k[0], k[1], k[2] or "")):
        ids = sorted(strata[key])
        k = n_to_train(fraction, len(ids))
        rng = random.Random(f"partial-supervision|{seed}|{key[0]}|{key[1]}|{key[2]}")
        for sid in rng.sample(ids, k):
            assignment[sid] = "train"
        counts[key] = {"n": len(ids), "to_train": k}
    return QASplit(assignment=assignment, fraction=float(fraction), seed=seed, counts=counts)
