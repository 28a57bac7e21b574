"""Template images: which normal image of the same category each image is compared with.

Document 004's chain-of-image reasoning and its training exports pair every test image with a normal image
of the same category, the *template*. :func:`choose_templates` makes that choice once, reproducibly, so
the QA exports and the chain-of-image runner see the same pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from vlmad.errors import ConfigError, DatasetError
from vlmad.records import Manifest, Sample

STRATEGIES: tuple[str, ...] = ("random", "fixed")


def _pick(seed: int, sample_id: str, n: int) -> int:
    """A stable index in ``range(n)`` from the seed and the sample id alone (sha256, not ``hash()``)."""
    digest = hashlib.sha256(f"template-choice|{seed}|{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def choose_templates(
    manifest: Manifest,
    samples: Iterable[Sample] | None = None,
    *,
    strategy: str = "random",
    seed: int = 0,
    pool_splits: Sequence[str] = ("train",),
    fixed: dict[str, str] | None = None,
) -> dict[str, str]:
    """Map each sample id to the id of a normal image of its category to use as its template.

    ``samples`` defaults to every sample of ``manifest``. The pool of a category is its normal (``good``)
    samples whose split is in ``pool_splits``; a sample is never its own template.

    - ``"random"``: a seeded choice from the pool, sorted by id. The choice for a sample depends only on
      the manifest, the seed and the sample's id, never on which other samples are asked for.
    - ``"fixed"``: ``fixed`` maps category -> sample id of the template; each is checked (in the manifest,
      normal, of that category). The template image itself, which cannot be its own template, gets the
      ``"random"`` choice instead.

    Raises :class:`DatasetError` naming the category when its pool is empty (or holds only the sample
    asked for), and :class:`ConfigError` for an unknown strategy or a bad ``fixed`` mapping.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"template strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy == "fixed" and not fixed:
        raise ConfigError("template strategy 'fixed' needs a mapping of category -> template sample id")
    if isinstance(pool_splits, str):
        pool_splits = (pool_splits,)
    wanted = list(manifest) if samples is None else list(samples)

    pools: dict[str, list[str]] = {}
    for s in manifest:
        if s.label == "good" and s.split in pool_splits:
            pools.setdefault(s.category, []).append(s.id)
    for ids in pools.values():
        ids.sort()

    if strategy == "fixed":
        assert fixed is not None
        for cat, tid in fixed.items():
            try:
                t = manifest.get(tid)
            except KeyError:
                raise ConfigError(
                    f"fixed template {tid!r} for category {cat!r} is not in the manifest"
                ) from None
            if t.category != cat:
                raise ConfigError(f"fixed template {tid!r} is of category {t.category!r}, not {cat!r}")
            if t.label != "good":
                raise ConfigError(f"fixed template {tid!r} for category {cat!r} is not a normal image")

    out: dict[str, str] = {}
    for s in wanted:
        if strategy == "fixed":
            assert fixed is not None
            tid = fixed.get(s.category)
            if tid is None:
                raise ConfigError(f"no fixed template given for category {s.category!r}")
            if tid != s.id:
                out[s.id] = tid
                continue
        pool = pools.get(s.category, [])
        if not pool:
            raise DatasetError(
                manifest.info.root,
                f"category {s.category!r} has no normal image in split(s) {', '.join(pool_splits)} "
                "to use as a template",
            )
        others = [p for p in pool if p != s.id]
        if not others:
            raise DatasetError(
                manifest.info.root,
                f"category {s.category!r} has only one normal image in split(s) {', '.join(pool_splits)} "
                f"({s.id}), which cannot be its own template; add normal images or widen the pool splits",
            )
        out[s.id] = others[_pick(seed, s.id, len(others))]
    return out
