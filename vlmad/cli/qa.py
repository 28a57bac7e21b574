"""``vlmad qa``: question-answer annotations per image: template, manual and GPT-drafted, reviewed, exported.

The store is one SQLite file per dataset (``<dataset root>/qa.sqlite`` unless ``--db``), created on first use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from vlmad.cli.data import LAYOUT_HELP
from vlmad.cli.detect import _progress

if TYPE_CHECKING:
    from vlmad.qa.store import QAStore
    from vlmad.records import Manifest, QAItem

app = typer.Typer(
    help="QA annotations: template, manual and GPT-drafted items, human review, training exports.",
    no_args_is_help=True,
)

DB_HELP = "QA store file (default: qa.sqlite in the dataset's root folder)."
DATASET_HELP = "Dataset folder or manifest."


def _open(dataset: Path, layout: str, db: Path | None) -> tuple[Manifest, QAStore]:
    from vlmad.data import read_dataset
    from vlmad.qa.store import QAStore, default_store_path

    manifest = read_dataset(dataset, layout=layout)
    return manifest, QAStore(db if db is not None else default_store_path(manifest.info.root))


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return "reviewer"


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command()
def build(
    dataset: Path = typer.Option(..., help=DATASET_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Export folder: llava/, messages/, hf/, export.json."),
    recipe: Path | None = typer.Option(None, help="A QA build recipe (data_builders/qa_loco.yaml)."),
    fraction: float | None = typer.Option(None, help="Share of each test anomaly type moved to training."),
    seed: int | None = typer.Option(None, help="Seed of the split and template choices."),
    variants: int | None = typer.Option(None, help="Phrasings per question kind of the template QA."),
    formats: str | None = typer.Option(None, "--format", help="Exports, comma-separated: llava,messages,hf."),
    include_drafts: bool | None = typer.Option(
        None, "--include-drafts/--no-drafts", help="Export unreviewed drafts too (default: no)."
    ),
    db: Path | None = typer.Option(None, help=DB_HELP),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
) -> None:
    """Template QA from ground truth, the partial-supervision split, and the training exports (offline)."""
    from vlmad.data import read_dataset
    from vlmad.qa.build import build_qa, load_build_recipe, make_settings

    overrides: dict[str, Any] = {
        "fraction": fraction,
        "seed": seed,
        "variants": variants,
        "formats": _csv(formats),
        "include_drafts": include_drafts,
    }
    if recipe is not None:
        settings = load_build_recipe(recipe, **overrides)
    else:
        settings = make_settings(**{k: v for k, v in overrides.items() if v is not None})
    manifest = read_dataset(dataset, layout=layout)
    result = build_qa(manifest, out, settings, store_path=db, progress=lambda step: typer.echo(f"… {step}"))
    typer.echo(result.summary())


@app.command()
def add(
    dataset: Path = typer.Option(..., help=DATASET_HELP),
    sample: str = typer.Option(..., help="Sample id (as in the manifest)."),
    question: str = typer.Option(..., help="The question."),
    answer: str = typer.Option(..., help="The answer, as the model should reply."),
    verdict: str = typer.Option(..., help="normal or anomalous."),
    kind: str = typer.Option("detection", help="detection, defect_type, location, description, ..."),
    explanation: str = typer.Option("", help="What is wrong and where."),
    anomaly_type: str | None = typer.Option(None, help="logical, structural or anomaly."),
    defect_type: str | None = typer.Option(None, help="The defect's name."),
    template: str | None = typer.Option(None, help="Sample id of the normal template image compared with."),
    author: str | None = typer.Option(None, help="Who wrote it (default: your user name)."),
    db: Path | None = typer.Option(None, help=DB_HELP),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
) -> None:
    """Add one hand-written QA item."""
    from vlmad.qa.io import manual_item

    manifest, store = _open(dataset, layout, db)
    item = manual_item(
        {
            "sample_id": sample,
            "question": question,
            "answer": answer,
            "verdict": verdict,
            "kind": kind,
            "explanation": explanation,
            "anomaly_type": anomaly_type,
            "defect_type": defect_type,
            "template_sample_id": template,
        },
        manifest,
        author=author or _user(),
    )
    with store:
        store.add([item], who=item.author)
    typer.echo(f"added {item.id} for {sample} -> {store.path}")


def _is_item_dump(path: Path) -> bool:
    """True when the first record of a JSONL file is a full QA item (a store dump), not a manual line."""
    if path.suffix.lower() not in (".jsonl", ".json"):
        return False
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(rec, dict) and {"source", "status", "created_at"} <= rec.keys()
    return False


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="JSONL or CSV of hand-written QA, or a `vlmad qa dump` file."),
    dataset: Path = typer.Option(..., help=DATASET_HELP),
    skip_bad: bool = typer.Option(False, help="Import the good lines and list the bad ones."),
    author: str | None = typer.Option(None, help="Author of hand-written items (default: your user name)."),
    db: Path | None = typer.Option(None, help=DB_HELP),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
) -> None:
    """Import QA items: hand-written ones (JSONL/CSV) or a dump of another store (items keep their ids)."""
    from vlmad.errors import DatasetError
    from vlmad.qa.io import read_items_jsonl, read_manual_file

    if not file.is_file():
        raise DatasetError(file, "no such file")
    manifest, store = _open(dataset, layout, db)
    problems: list[str] = []
    if _is_item_dump(file):
        items = read_items_jsonl(file, skip_bad=skip_bad, problems=problems)
        with store:
            existing = {it.id for it in store.items()}
            new = [it for it in items if it.id not in existing]
            store.add(new, who=author or _user(), action="import")
        typer.echo(
            f"imported {len(new)} items ({len(items) - len(new)} already in the store) -> {store.path}"
        )
    else:
        items = read_manual_file(
            file, manifest, author=author or _user(), skip_bad=skip_bad, problems=problems
        )
        with store:
            store.add(items, who=author or _user(), action="import")
        typer.echo(f"imported {len(items)} hand-written items -> {store.path}")
    for p in problems:
        typer.echo(f"skipped: {p}", err=True)


@app.command()
def dump(
    out: Path = typer.Argument(..., help="JSONL file to write (one QA item per line, with provenance)."),
    dataset: Path = typer.Option(..., help=DATASET_HELP),
    source: str | None = typer.Option(None, help="Only these sources (comma-separated)."),
    status: str | None = typer.Option(None, help="Only these statuses (comma-separated)."),
    db: Path | None = typer.Option(None, help=DB_HELP),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
) -> None:
    """Write the store's items as JSONL (re-importable with `vlmad qa import`)."""
    from vlmad.qa.io import write_items_jsonl

    _, store = _open(dataset, layout, db)
    with store:
        items = store.items(source=_csv(source), status=_csv(status))
    write_items_jsonl(out, items)
    typer.echo(f"{len(items)} items -> {out}")


@app.command()
def draft(
    dataset: Path = typer.Option(..., help=DATASET_HELP),
    model: str = typer.Option("gpt-4o", help="Chat model name at the API."),
    base_url: str | None = typer.Option(
        None, help="OpenAI-compatible server URL (default: $OPENAI_BASE_URL, else OpenAI's)."
    ),
    concurrency: int = typer.Option(8, min=1, help="Requests in flight at once."),
    category: str | None = typer.Option(None, help="Only these categories (comma-separated)."),
    split: str | None = typer.Option(None, help="Only these splits (comma-separated)."),
    limit: int | None = typer.Option(None, min=1, help="Draft at most this many images in this run."),
    hints: bool = typer.Option(True, help="Give the model the ground truth (label, defect, description)."),
    prompt: Path | None = typer.Option(None, help="Drafting prompt file (default: prompts/qa_draft.yaml)."),
    max_side: int = typer.Option(1024, help="Longest image side sent to the API."),
    detail: str = typer.Option("auto", help="Image detail setting: low, high or auto."),
    retry_failed: bool = typer.Option(False, help="Draft again images whose drafts all failed."),
    max_attempts: int = typer.Option(5, min=1, help="Attempts per request (429/5xx/timeouts are retried)."),
    timeout: float = typer.Option(60.0, help="Seconds per request attempt."),
    cache: Path | None = typer.Option(None, help="Response cache file (default: next to the store)."),
    dry_run: bool = typer.Option(False, help="Show the requests without sending anything."),
    seed: int = typer.Option(0, help="Seed of the template image choice."),
    db: Path | None = typer.Option(None, help=DB_HELP),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
) -> None:
    """Draft QA with a GPT model (OPENAI_API_KEY / OPENAI_BASE_URL from the environment); resumable."""
    from vlmad.api.cache import ResponseCache
    from vlmad.api.client import ChatClient, RetryPolicy, base_url_from_env
    from vlmad.data.templates import choose_templates
    from vlmad.qa.draft import draft_dataset, load_draft_prompt

    manifest, store = _open(dataset, layout, db)
    chosen = manifest.filter(category=_csv(category), split=_csv(split))
    templates = choose_templates(manifest, strategy="random", seed=seed)
    draft_prompt = load_draft_prompt(prompt)
    url = base_url or base_url_from_env()
    cache_path = cache if cache is not None else store.path.with_name(store.path.stem + ".draft-cache.sqlite")
    client = ChatClient(
        model,
        base_url=url,
        concurrency=concurrency,
        timeout=timeout,
        retry=RetryPolicy(max_attempts=max_attempts),
    )
    with store, client, ResponseCache(cache_path) as response_cache, _progress() as update:
        summary = draft_dataset(
            store,
            manifest,
            client,
            prompt=draft_prompt,
            templates=templates,
            samples=list(chosen),
            cache=response_cache,
            hints=hints,
            max_side=max_side,
            detail=detail,
            retry_failed=retry_failed,
            limit=limit,
            dry_run=dry_run,
            progress=lambda done, pending, failed: update(f"drafting ({failed} failed)", done, pending),
        )
    if dry_run:
        for req in summary.requests or []:
            typer.echo(json.dumps(req, ensure_ascii=False))
        typer.echo(
            f"dry run: {len(summary.requests or [])} requests would be sent; nothing was sent or stored"
        )
        return
    cost = (
        "unknown cost (no price for this model)" if summary.cost_usd is None else f"${summary.cost_usd:.4f}"
    )
    typer.echo(
        f"{summary.drafted_samples} images drafted ({summary.drafted_items} items, {summary.cached} from the "
        f"cache), {summary.skipped} already drafted, {summary.failed_parse} unusable replies, "
        f"{summary.failed_api} API failures, {summary.retries} retries; {summary.tokens} tokens, {cost}, "
        f"{summary.wall_s:.1f} s -> {store.path}"
    )


def _parse_where(text: str) -> dict[str, Any]:
    """``"category=a,b;kind=detection;agrees=yes"`` -> filters of :func:`vlmad.qa.review.accept_where`."""
    from vlmad.errors import ConfigError

    keys = {"category", "kind", "source", "status", "sample", "agrees"}
    out: dict[str, Any] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in keys:
            raise ConfigError(
                f"--accept-where {part.strip()!r}: expected key=value, key one of {', '.join(sorted(keys))}"
            )
        if key == "agrees":
            v = value.strip().lower()
            if v not in ("yes", "no", "true", "false"):
                raise ConfigError(f"--accept-where agrees={value!r}: use yes or no")
            out["verdict_matches_label"] = v in ("yes", "true")
        else:
            out["sample_ids" if key == "sample" else key] = _csv(value)
    return out


def _show(item: QAItem) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.panel import Panel

    lines = [
        f"[bold]image[/] {escape(item.sample_id)}"
        + (f"  [dim](template {escape(item.template_sample_id)})[/]" if item.template_sample_id else ""),
        f"[bold]kind[/] {item.kind}   [bold]source[/] {item.source}   [bold]status[/] {item.status}",
        f"[bold]Q[/] {escape(item.question)}",
        f"[bold]A[/] {escape(item.answer)}",
        f"[bold]verdict[/] {item.verdict} {escape(item.anomaly_type or '')} {escape(item.defect_type or '')}",
    ]
    if item.explanation:
        lines.append(f"[bold]explanation[/] {escape(item.explanation)}")
    Console().print(Panel("\n".join(lines), title=f"item {item.id}"))


EDITABLE = ("question", "answer", "verdict", "anomaly_type", "defect_type", "explanation")


def _edit(item: QAItem) -> dict[str, Any] | None:
    """Open the item's editable fields in $EDITOR as YAML; the changed fields, or None when unchanged."""
    import click
    import yaml

    from vlmad.errors import ConfigError

    before = {k: getattr(item, k) for k in EDITABLE}
    text = click.edit(
        yaml.safe_dump(before, sort_keys=False, allow_unicode=True, width=100), extension=".yaml"
    )
    if text is None:
        return None
    try:
        after = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"the edited item is not valid YAML ({e})") from None
    if not isinstance(after, dict):
        raise ConfigError("the edited item must stay a mapping of field: value")
    changes = {k: after.get(k) for k in EDITABLE if k in after and after.get(k) != before[k]}
    return changes or None


@app.command()
def review(
    dataset: Path = typer.Option(..., help=DATASET_HELP),
    reviewer: str | None = typer.Option(None, help="Your name in the history (default: your user name)."),
    accept_where: str | None = typer.Option(
        None,
        help="Bulk-accept drafts matching filters, e.g. 'category=pushpins;kind=detection;agrees=yes' "
        "(agrees: the drafted verdict matches the ground-truth label).",
    ),
    category: str | None = typer.Option(None, help="Review only these categories (comma-separated)."),
    kind: str | None = typer.Option(None, help="Review only these question kinds (comma-separated)."),
    dry_run: bool = typer.Option(False, help="With --accept-where: count, change nothing."),
    db: Path | None = typer.Option(None, help=DB_HELP),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
) -> None:
    """Walk the drafts one by one: (a)ccept, (e)dit in $EDITOR, (r)eject, (s)kip, (q)uit; resume later."""
    from vlmad.qa.review import accept_where as bulk_accept
    from vlmad.qa.review import review_loop

    manifest, store = _open(dataset, layout, db)
    who = reviewer or _user()
    with store:
        if accept_where is not None:
            filters = {"category": _csv(category), "kind": _csv(kind), **_parse_where(accept_where)}
            n = bulk_accept(store, reviewer=who, manifest=manifest, dry_run=dry_run, **filters)
            typer.echo(f"{n} drafts {'would be ' if dry_run else ''}accepted by {who}")
            return

        def ask(item: QAItem) -> str:
            _show(item)
            return typer.prompt("[a]ccept [e]dit [r]eject [s]kip [q]uit", default="s").strip().lower()[:1]

        summary = review_loop(
            store,
            reviewer=who,
            ask=ask,
            edit=_edit,
            category=_csv(category),
            kind=_csv(kind),
            manifest=manifest,
        )
    for p in summary.problems:
        typer.echo(f"not applied: {p}", err=True)
    typer.echo(
        f"{summary.accepted} accepted, {summary.edited} edited, {summary.rejected} rejected, "
        f"{summary.skipped} skipped; {summary.remaining} drafts left"
        + (" (quit; run again to go on)" if summary.quit else "")
    )


@app.command()
def stats(
    dataset: Path = typer.Option(..., help=DATASET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
    db: Path | None = typer.Option(None, help=DB_HELP),
    layout: str = typer.Option("auto", help=LAYOUT_HELP),
) -> None:
    """Counts by source, status, category, kind and label, and how much review changed the drafts."""
    from vlmad.qa.stats import qa_stats

    manifest, store = _open(dataset, layout, db)
    with store:
        result = qa_stats(store, manifest)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"{result.n_items} QA items, {result.trusted} exportable (manual, template, verified, edited)"
    )
    for title, counts in (
        ("source", result.by_source),
        ("status", result.by_status),
        ("category", result.by_category),
        ("kind", result.by_kind),
        ("label", result.by_label or {}),
    ):
        table = Table(title=f"by {title}")
        table.add_column(title)
        table.add_column("items", justify="right")
        for key, n in sorted(counts.items()):
            table.add_row(key, str(n))
        console.print(table)
    r = result.review
    if r.reviewed:
        agreement = "n/a" if r.verdict_agreement is None else f"{r.verdict_agreement:.1%}"
        console.print(
            f"review of drafts: {r.reviewed} decided ({r.accepted} accepted, {r.edited} edited, "
            f"{r.rejected} rejected); verdict kept in {agreement}; mean edit distance of answers "
            f"{_num(r.answer_edit_distance)}, of explanations {_num(r.explanation_edit_distance)} "
            f"({result.edit_distance_method})"
        )
    else:
        console.print("review of drafts: none decided yet")


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
