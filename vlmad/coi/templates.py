"""Template images for chain-of-image prompting: which normal image each test image is compared with.

Three strategies (seeds/004_102cb39b65a4f1cc.txt pairs each test image with a normal image of the same
category; the document does not say how it was chosen, so vlmad offers the three obvious ones):

- ``random``: a seeded choice among the category's normal images of the pool splits (default: the training
  normals), from :func:`vlmad.data.templates.choose_templates` (the choice the QA exports use too).
- ``similar``: the pool image most similar to the test image by a cheap deterministic feature: the image
  as 32 x 32 grey values (area-averaged), centred and scaled to unit length; similarity is the cosine of
  two such vectors (1 = the same picture up to brightness and contrast). Ties go to the smaller id.
- ``fixed``: one given template per category (``fixed: {category: sample id}``).

:func:`select_templates` returns a :class:`TemplateChoice` per sample, which the runner records with every
prediction (``template_sample_id``, ``template_strategy`` and, for ``similar``, ``template_similarity``).
A sample is never its own template.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmad.data.templates import choose_templates
from vlmad.errors import ConfigError, DatasetError
from vlmad.records import Manifest, Sample

__all__ = ["STRATEGIES", "TemplateChoice", "image_feature", "select_templates"]

STRATEGIES: tuple[str, ...] = ("random", "similar", "fixed")
#: Side of the grey thumbnail the ``similar`` strategy compares.
FEATURE_SIDE = 32


@dataclass(frozen=True)
class TemplateChoice:
    """The template of one sample: ``template_id`` (a normal sample of the same category), the
    ``strategy`` that chose it, and ``similarity`` (cosine in [-1, 1]; ``None`` unless ``similar``)."""

    template_id: str
    strategy: str
    similarity: float | None = None

    def to_metadata(self) -> dict[str, Any]:
        """The fields the runner stores in ``Prediction.metadata``."""
        out: dict[str, Any] = {"template_sample_id": self.template_id, "template_strategy": self.strategy}
        if self.similarity is not None:
            out["template_similarity"] = round(self.similarity, 6)
        return out


def image_feature(path: str | Path, side: int = FEATURE_SIDE) -> Any:
    """The ``similar`` strategy's feature of an image file: ``side * side`` grey values (box-filtered),
    centred and scaled to unit length (float64 numpy vector; all zeros for a flat image).

    Raises :class:`DatasetError` naming the file when it cannot be read as an image.
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            grey = img.convert("L").resize((side, side), Image.Resampling.BOX)
    except FileNotFoundError:
        raise DatasetError(path, "image file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(path, f"not a readable image ({type(exc).__name__}: {exc})") from None
    vec = np.asarray(grey, dtype=np.float64).ravel()
    vec -= vec.mean()
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec


def _similar(
    manifest: Manifest, wanted: Sequence[Sample], pool_splits: Sequence[str]
) -> dict[str, TemplateChoice]:
    import numpy as np

    pools: dict[str, list[Sample]] = {}
    for s in manifest:
        if s.label == "good" and s.split in pool_splits:
            pools.setdefault(s.category, []).append(s)
    features: dict[str, Any] = {}

    def feature(s: Sample) -> Any:
        if s.id not in features:
            features[s.id] = image_feature(s.image_path)
        return features[s.id]

    out: dict[str, TemplateChoice] = {}
    for s in wanted:
        pool = sorted((p for p in pools.get(s.category, []) if p.id != s.id), key=lambda p: p.id)
        if not pool:
            raise DatasetError(
                manifest.info.root,
                f"category {s.category!r} has no normal image (other than {s.id}) in split(s) "
                f"{', '.join(pool_splits)} to use as a template; add normal images or widen the pool splits",
            )
        sims = np.array([float(feature(s) @ feature(p)) for p in pool])
        best = int(np.argmax(sims))  # first maximum = smallest id among ties (pool sorted by id)
        out[s.id] = TemplateChoice(pool[best].id, "similar", float(sims[best]))
    return out


def select_templates(
    manifest: Manifest,
    samples: Iterable[Sample] | None = None,
    *,
    strategy: str = "random",
    seed: int = 0,
    pool_splits: Sequence[str] = ("train",),
    fixed: Mapping[str, str] | None = None,
) -> dict[str, TemplateChoice]:
    """Map each sample id (default: every sample of ``manifest``) to its :class:`TemplateChoice`.

    ``strategy``: ``random`` (seeded by ``seed`` and the sample id only), ``similar`` (the most similar
    normal of the pool, see the module docstring) or ``fixed`` (``fixed`` maps category -> template id; the
    template image itself gets the ``random`` choice). The pool of a category is its ``good`` samples of
    ``pool_splits``. Deterministic: the same manifest and arguments give the same choices whatever other
    samples are asked for.

    Raises :class:`ConfigError` for an unknown strategy or a bad ``fixed`` mapping, and
    :class:`DatasetError` when a category has no usable normal image.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"template strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if isinstance(pool_splits, str):
        pool_splits = (pool_splits,)
    wanted = list(manifest) if samples is None else list(samples)
    if strategy == "similar":
        return _similar(manifest, wanted, pool_splits)
    chosen = choose_templates(
        manifest,
        wanted,
        strategy=strategy,
        seed=seed,
        pool_splits=pool_splits,
        fixed=dict(fixed) if fixed else None,
    )
    out: dict[str, TemplateChoice] = {}
    for s in wanted:
        tid = chosen[s.id]
        # fixed: the template image itself got the random choice; say so
        used = strategy if strategy != "fixed" or (fixed or {}).get(s.category) == tid else "random"
        out[s.id] = TemplateChoice(tid, used)
    return out
