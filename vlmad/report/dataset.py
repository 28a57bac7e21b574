"""The dataset section of a report: counts, a bar chart and a grid of samples with outlined masks."""

from __future__ import annotations

import numpy as np

from vlmad.data.images import load_image, load_mask
from vlmad.records import Manifest, Sample
from vlmad.report.html import Card, HtmlReport, pyplot
from vlmad.report.overlay import outline_masks
from vlmad.report.tables import count_matrix, defect_rows


def sample_card(sample: Sample) -> Card:
    """A card for one sample: its image with mask outlines, its id and its reference description."""
    image = load_image(sample.image_path)
    masks = [load_mask(m) for m in sample.mask_paths]
    masks = [m for m in masks if m.shape == image.shape[:2]]
    desc = str(sample.metadata.get("description", ""))
    title = f"{sample.category}: {sample.defect_type or sample.label}"
    return Card(outline_masks(image, masks), title=title, caption=desc, tag=sample.label)


def pick_examples(manifest: Manifest, per_label: int = 2) -> list[Sample]:
    """Test samples to show: up to ``per_label`` per category and label, spread over defect types."""
    picked: list[Sample] = []
    test = manifest.filter(split="test")
    for cat in test.categories:
        for label in ("good", "logical", "structural", "anomaly"):
            group = test.filter(category=cat, label=label).samples
            seen: set[str | None] = set()
            chosen = []
            for s in group:  # one per defect type first
                if s.defect_type not in seen:
                    seen.add(s.defect_type)
                    chosen.append(s)
            chosen += [s for s in group if s not in chosen]
            picked += chosen[:per_label]
    return picked


def counts_chart(manifest: Manifest, report: HtmlReport) -> str:
    """A stacked bar chart of test images per category and label, saved as a report asset."""
    plt = pyplot()
    counts = manifest.counts("category", "split", "label")
    cats = manifest.categories
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    bottom = np.zeros(len(cats))
    colors = {"good": "#2a7", "logical": "#a3c", "structural": "#d52", "anomaly": "#c33"}
    for split, label, hatch in (
        ("train", "good", "//"),
        ("validation", "good", ".."),
        ("test", "good", ""),
        ("test", "logical", ""),
        ("test", "structural", ""),
        ("test", "anomaly", ""),
    ):
        vals = np.array([counts.get((c, split, label), 0) for c in cats], float)
        if not vals.any():
            continue
        ax.bar(
            cats,
            vals,
            bottom=bottom,
            color=colors[label],
            hatch=hatch,
            edgecolor="white",
            label=f"{split}/{label}",
        )
        bottom += vals
    ax.set_ylabel("images")
    ax.legend(fontsize=7, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return str(report.save_figure(fig, "counts_chart"))


def add_dataset_section(report: HtmlReport, manifest: Manifest, per_label: int = 2) -> None:
    """Counts table, defect-type table, bar chart and example grid of ``manifest``."""
    report.heading(f"Dataset: {manifest.info.name}")
    report.paragraph(
        f"{len(manifest)} images in {len(manifest.categories)} categories, layout {manifest.info.layout}, "
        f"read from {manifest.info.root}."
    )
    header, rows = count_matrix(manifest)
    report.table(header, rows, caption="Images per category, split and label")
    report.figure(counts_chart(manifest, report), caption="Images per category (hatched: train / validation)")
    header, rows = defect_rows(manifest)
    if rows:
        report.table(header, rows, caption="Anomalous test images per defect type")
    report.heading("Examples (ground-truth regions outlined, reference descriptions below)")
    for cat in manifest.categories:
        report.subheading(cat)
        report.grid([sample_card(s) for s in pick_examples(manifest.filter(category=cat), per_label)])
