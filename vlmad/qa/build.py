"""The offline QA build: template QA from ground truth, the partial-supervision split, the training exports.

:func:`build_qa` is what ``vlmad qa build`` and the demo run. It needs no network: every item comes from the
dataset's ground truth (labels, defect types, masks, reference descriptions), so it is the path that works
anywhere; hand-written (``vlmad qa import``) and reviewed GPT drafts (``vlmad qa draft`` then
``vlmad qa review``) already in the store are exported alongside. The settings can come from a recipe
(``data_builders/qa_loco.yaml`` describes document 004's build), loaded with :func:`load_build_recipe`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from vlmad.errors import ConfigError
from vlmad.records import Manifest

FORMATS: tuple[str, ...] = ("llava", "messages", "hf")


class BuildSettings(BaseModel):
    """Settings of one QA build; the fields of a ``data_builders/`` QA recipe.

    - ``fraction`` / ``seed``: the partial-supervision split (share of each test anomaly stratum moved to
      training) and the seed of every random choice of the build.
    - ``variants``: phrasings per question kind of the template QA.
    - ``templates``: how a normal template image is chosen per image (``random`` from the same category's
      training normals, seeded; or ``fixed`` with ``fixed_templates`` mapping category -> sample id).
    - ``formats``: which exports to write (``llava``, ``messages``, ``hf``).
    - ``include_drafts``: export unreviewed drafts too (never rejected or failed items).
    - ``template_qa``: generate template QA from ground truth (off to export only manual / reviewed items).
    """

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(0.1, ge=0.0, le=1.0)
    seed: int = 0
    variants: int = Field(2, ge=1)
    templates: str = "random"
    fixed_templates: dict[str, str] | None = None
    formats: list[str] = Field(default_factory=lambda: list(FORMATS))
    include_drafts: bool = False
    template_qa: bool = True
    absolute_paths: bool = False


def load_build_recipe(path: str | Path, **overrides: Any) -> BuildSettings:
    """Read a QA build recipe (YAML with a ``qa_build:`` mapping of :class:`BuildSettings` fields).

    ``overrides`` (values that are not ``None``) replace the recipe's. Raises :class:`ConfigError` naming the
    file and the field for a missing file, bad YAML or an invalid value.
    """
    from vlmad.recipes import read_recipe

    return make_settings(str(path), **read_recipe(path, "qa_build", "a QA build recipe", overrides))


def make_settings(source: str = "options", **values: Any) -> BuildSettings:
    """Validate build settings; errors become one-line :class:`ConfigError` messages naming ``source``."""
    from vlmad.recipes import validate_settings

    settings = validate_settings(BuildSettings, values, source)
    unknown = [f for f in settings.formats if f not in FORMATS]
    if unknown or not settings.formats:
        raise ConfigError(f"{source}: formats {settings.formats}: choose from {', '.join(FORMATS)}")
    if settings.templates not in ("random", "fixed"):
        raise ConfigError(f"{source}: templates {settings.templates!r}: choose random or fixed")
    return settings


@dataclass
class BuildResult:
    """What :func:`build_qa` did: items generated and stored, the split and export counts, the files."""

    store_path: Path
    out_dir: Path
    template_inserted: int = 0
    template_updated: int = 0
    items_by_source: dict[str, int] = field(default_factory=dict)
    split_counts: dict[str, int] = field(default_factory=dict)
    export_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    templates: dict[str, str] = field(default_factory=dict)  # sample id -> its normal template's id

    def summary(self) -> str:
        """One line for the CLI and the demo."""
        items = ", ".join(f"{n} {s}" for s, n in sorted(self.items_by_source.items())) or "no items"
        split = ", ".join(f"{s} {n}" for s, n in self.split_counts.items())
        turns = sum(c.get("turns", 0) for c in self.export_counts.values())
        return f"{items} in {self.store_path.name}; images: {split}; {turns} exported turns -> {self.out_dir}"


def build_qa(
    manifest: Manifest,
    out_dir: str | Path,
    settings: BuildSettings | None = None,
    *,
    store_path: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> BuildResult:
    """Generate template QA into the dataset's store, split by image and write the training exports.

    The store is ``store_path`` or ``<dataset root>/qa.sqlite`` (created on first use). Template items are
    upserted (rerunning the build adds nothing twice and never touches an item a person reviewed or
    edited). Every trusted item of the store (manual, template, verified, edited; drafts only with
    ``include_drafts``) whose image is in ``manifest`` is exported. ``progress(step)`` names each step.
    """
    from vlmad.data.templates import choose_templates
    from vlmad.qa.export import export_dataset
    from vlmad.qa.split import partial_supervision_split
    from vlmad.qa.store import QAStore, default_store_path
    from vlmad.qa.template import template_items

    settings = settings or BuildSettings()
    out_dir = Path(out_dir)
    say = progress or (lambda step: None)
    path = Path(store_path) if store_path is not None else default_store_path(manifest.info.root)
    result = BuildResult(store_path=path, out_dir=out_dir)

    say("choosing template images")
    templates = choose_templates(
        manifest, strategy=settings.templates, seed=settings.seed, fixed=settings.fixed_templates
    )
    result.templates = templates
    with QAStore(path) as store:
        if settings.template_qa:
            say("writing template QA")
            items = template_items(
                manifest, templates=templates, variants=settings.variants, seed=settings.seed
            )
            result.template_inserted, result.template_updated = store.put_template(items)
        ids = {s.id for s in manifest}
        stored = [it for it in store.items() if it.sample_id in ids]
    for it in stored:
        result.items_by_source[it.source] = result.items_by_source.get(it.source, 0) + 1

    say("splitting by image")
    split = partial_supervision_split(manifest, fraction=settings.fraction, seed=settings.seed)
    for part in split.assignment.values():
        result.split_counts[part] = result.split_counts.get(part, 0) + 1

    say("writing exports")
    exported = export_dataset(
        stored,
        manifest,
        split,
        out_dir,
        templates=templates,
        formats=tuple(settings.formats),
        include_drafts=settings.include_drafts,
        absolute_paths=settings.absolute_paths,
    )
    result.export_counts = exported.counts
    result.files = list(exported.files)
    return result
