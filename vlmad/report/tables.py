"""Count tables of a manifest, as plain rows (for HTML) or rich tables (for the terminal)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlmad.records import LABELS, SPLITS, Manifest

if TYPE_CHECKING:
    from rich.table import Table


def count_matrix(manifest: Manifest) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of images per category x (split, label), with a total row.

    Columns are the (split, label) pairs that occur, in split then label order: ``train`` and
    ``validation`` (normal images), ``test good``, then the anomalous test labels.
    """
    counts = manifest.counts("category", "split", "label")
    pairs = [(s, lab) for s in SPLITS for lab in LABELS if any(k[1:] == (s, lab) for k in counts)]
    header = ["category", *[_column(s, lab) for s, lab in pairs], "total"]
    rows: list[list[Any]] = []
    for cat in manifest.categories:
        vals = [counts.get((cat, s, lab), 0) for s, lab in pairs]
        rows.append([cat, *vals, sum(vals)])
    totals = [sum(r[i] for r in rows) for i in range(1, len(header))]
    rows.append(["all", *totals])
    return header, rows


def _column(split: str, label: str) -> str:
    """Short column names: train and validation hold normal images only; test columns name the label."""
    if label == "good" and split != "test":
        return split
    return f"test {label}" if label == "good" else label


def defect_rows(manifest: Manifest) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of anomalous test images per category and label, with the count per defect type
    in one cell (``"extra_fruit 2, missing_fruit 3"``) so the table stays short."""
    counts = manifest.filter(split="test").counts("category", "label", "defect_type")
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for (cat, label, dtype), n in counts.items():
        if label != "good":
            groups.setdefault((cat, label), {})[dtype or "unknown"] = n
    order = {c: i for i, c in enumerate(manifest.categories)}
    rows = [
        [cat, label, ", ".join(f"{d} {n}" for d, n in sorted(types.items())), sum(types.values())]
        for (cat, label), types in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))
    ]
    return ["category", "label", "defect types (images)", "images"], rows


def counts_tables(manifest: Manifest) -> list[Table]:
    """Rich tables: images per category/split/label, and per defect type."""
    from rich.table import Table

    out = []
    for title, (header, rows) in (
        ("images per category, split and label", count_matrix(manifest)),
        ("anomalous test images per defect type", defect_rows(manifest)),
    ):
        if not rows:
            continue
        t = Table(title=title)
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 or isinstance(rows[0][i], str) else "right")
        for r in rows:
            t.add_row(*[str(v) for v in r])
        out.append(t)
    return out
