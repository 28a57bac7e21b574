from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from vlmad.data.images import load_masks
from vlmad.data.maps import save_map
from vlmad.data.readers import read_dataset
from vlmad.data.synth.generate import generate, make_config
from vlmad.metrics.evaluate import MEAN, Evaluation, ImageResult, MetricRow, evaluate
from vlmad.metrics.threshold import from_normal_quantile, oracle_f1
from vlmad.records import Manifest, Prediction
from vlmad.report.evaluation import (
    ORACLE_MARK,
    add_evaluation_section,
    format_value,
    heat_overlay,
    loco_table,
    metric_table,
    pick_cases,
    save_tables,
)
from vlmad.report.html import HtmlReport

EVIL = "<script>alert(1)</script>"
NAN = float("nan")


def row(
    method: str, category: str, metric: str, value: float, subset: str = "all", note: str = ""
) -> MetricRow:
    return MetricRow(method, category, subset, metric, value, 5, 5, note)


def hand_evaluation(method: str = "m") -> Evaluation:
    """Two categories and their mean, image metrics only; F1-max is an oracle number."""
    f1 = "oracle: threshold chosen on the test set"
    rows = [
        row(method, "a", "image_auroc", 0.98765),
        row(method, "a", "image_f1_max", 0.5, note=f1),
        row(method, "b", "image_auroc", NAN, note="undefined: no anomalous image"),
        row(method, "b", "image_f1_max", 0.25, note=f1),
        row(method, MEAN, "image_auroc", 0.98765, note="mean over categories (1 undefined left out)"),
        row(method, MEAN, "image_f1_max", 0.375, note="mean over categories"),
    ]
    return Evaluation(method=method, rows=rows)


# ------------------------------------------------------------------------------------------------ tables
def test_format_value() -> None:
    assert format_value(0.98765) == "98.77"
    assert format_value(1.0) == "100.00" and format_value(0.0) == "0.00"
    assert format_value(NAN) == "–"
    assert format_value(None) == "n/a"


def test_metric_table_formats_values_marks_oracles_and_puts_mean_last() -> None:
    headers, rows = metric_table([hand_evaluation()], ["image_auroc", "image_f1_max", "image_ap"])
    assert headers == ["category", "method", "AUROC", "F1-max", "AP"]
    assert [r[0] for r in rows] == ["a", "b", MEAN]
    assert rows[0] == ["a", "m", "98.77", f"50.00 {ORACLE_MARK}", "n/a"]
    assert rows[1][2] == "–"  # NaN
    # the mean row averages oracle rows: it is marked too, while AUROC is never marked
    assert rows[2][3] == f"37.50 {ORACLE_MARK}" and rows[2][2] == "98.77"


def test_only_rows_computed_with_an_oracle_threshold_are_marked() -> None:
    thr = "threshold oracle-f1 on test (ORACLE)"
    ev = Evaluation(
        method="m",
        rows=[
            row("m", "a", "thr_f1", 0.5, note=thr),
            row("m", "b", "thr_f1", 0.7, note="threshold target-fpr on validation"),
            row("m", MEAN, "thr_f1", 0.6, note="mean over categories"),
            *[
                row("m", "b", "thr_f1", v, s)
                for v, s in ((0.6, "logical"), (0.8, "structural"), (0.7, "average"))
            ],
        ],
    )
    _, rows = metric_table([ev], ["thr_f1"])
    assert [r[2] for r in rows] == [f"50.00 {ORACLE_MARK}", "70.00", f"60.00 {ORACLE_MARK}"]
    _, rows = loco_table([ev], "thr_f1")
    assert rows == [
        ["a", "m", "n/a", "n/a", "n/a", f"50.00 {ORACLE_MARK}"],
        ["b", "m", "60.00", "80.00", "70.00", "70.00"],
        [MEAN, "m", "n/a", "n/a", "n/a", f"60.00 {ORACLE_MARK}"],
    ]


def test_metric_table_with_several_methods_is_category_major() -> None:
    evs = [hand_evaluation("one"), hand_evaluation("two")]
    _, rows = metric_table(evs, ["image_auroc"])
    assert [(r[0], r[1]) for r in rows] == [
        ("a", "one"),
        ("a", "two"),
        ("b", "one"),
        ("b", "two"),
        (MEAN, "one"),
        (MEAN, "two"),
    ]
    # a method without any of the metrics gets no row at all
    _, rows = metric_table([*evs, Evaluation(method="empty")], ["image_auroc"])
    assert all(r[1] != "empty" for r in rows)


def loco_evaluation(with_all: bool = True) -> Evaluation:
    rows = []
    for cat, lo, st in (("c", 0.9, 0.7), (MEAN, 0.9, 0.7)):
        rows += [
            row("m", cat, "image_auroc", lo, "logical"),
            row("m", cat, "image_auroc", st, "structural"),
            row("m", cat, "image_auroc", (lo + st) / 2, "average"),
        ]
        if with_all:
            rows.append(row("m", cat, "image_auroc", 0.81, "all"))
    return Evaluation(method="m", rows=rows)


def test_loco_table_columns() -> None:
    headers, rows = loco_table([loco_evaluation()], "image_auroc")
    assert headers == ["category", "method", "Logical", "Structural", "Average", "All"]
    assert rows == [
        ["c", "m", "90.00", "70.00", "80.00", "81.00"],
        [MEAN, "m", "90.00", "70.00", "80.00", "81.00"],
    ]
    headers, _ = loco_table([loco_evaluation(with_all=False)], "image_auroc")
    assert headers == ["category", "method", "Logical", "Structural", "Average"]


def test_save_tables_writes_raw_numbers(tmp_path: Path) -> None:
    ev = hand_evaluation()
    ev.rows += loco_evaluation().rows[:3]  # category c, logical / structural / average
    ev.rows += [row("m", "a", "verdict_accuracy", 0.123456789), row("m", "a", "verdict_n", 12.0)]
    ev.rows.append(row("m", "c", "image_f1_max", 0.5))  # c: no image_auroc on subset all
    files = save_tables([ev], tmp_path)
    assert set(files) == {
        f"{n}.{ext}"
        for n in ("image_metrics", "loco_image_auroc", "verdict_metrics")
        for ext in ("csv", "json")
    }
    with files["image_metrics.csv"].open(newline="") as f:
        recs = list(csv.DictReader(f))
    assert [r["category"] for r in recs] == ["a", "b", "c", MEAN]
    assert float(recs[0]["image_auroc"]) == 0.98765  # raw, not a percentage
    assert math.isnan(float(recs[1]["image_auroc"]))
    assert recs[2]["image_auroc"] == "" and float(recs[2]["image_f1_max"]) == 0.5  # not computed: empty
    data = json.loads(files["image_metrics.json"].read_text())
    assert data["columns"] == ["image_auroc", "image_f1_max"]
    first = data["rows"][0]
    assert first["values"] == {"image_auroc": 0.98765, "image_f1_max": 0.5}
    assert first["oracle"] == ["image_f1_max"]
    assert data["rows"][1]["values"]["image_auroc"] is None  # NaN -> null
    loco = json.loads(files["loco_image_auroc.json"].read_text())
    assert loco["columns"] == ["logical", "structural", "average", "all"]  # "all": category a has it
    by_cat = {r["category"]: r["values"] for r in loco["rows"]}
    assert by_cat["c"] == {"logical": 0.9, "structural": 0.7, "average": 0.8}
    assert by_cat["a"] == {"all": 0.98765}
    verdict = json.loads(files["verdict_metrics.json"].read_text())
    assert verdict["columns"] == ["verdict_accuracy"]  # the count is not a table column
    assert verdict["rows"][0]["values"]["verdict_accuracy"] == 0.123456789


# ------------------------------------------------------------------------------------------------ overlays
def test_heat_overlay_leaves_low_values_transparent() -> None:
    img = np.full((8, 8, 3), 100, np.uint8)
    amap = np.zeros((4, 4), np.float32)  # another size: resized to the image
    amap[2:, 2:] = 1.0
    out = heat_overlay(img, amap, lo=0.0, hi=1.0)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert (out[0, 0] == 100).all()  # value at lo: unchanged
    assert not (out[7, 7] == 100).all()  # value at hi: coloured
    assert (heat_overlay(img, amap, lo=1.0, hi=1.0) == img).all()  # empty range: nothing drawn


def image(sample_id: str, label: str, score: float | None, verdict: str | None = None) -> ImageResult:
    return ImageResult(sample_id, "c", label, score, verdict, None, None)


def test_pick_cases_by_score_and_by_verdict() -> None:
    ims = [image("g1", "good", 0.1), image("g2", "good", 0.9), image("a1", "logical", 0.2)]
    ims.append(image("a2", "structural", 0.8))
    picked = [(t.split(":")[1].strip(), im.sample_id) for t, im in pick_cases(ims)]
    assert picked == [
        ("missed anomaly", "a1"),
        ("false alarm", "g2"),
        ("detected anomaly", "a2"),
        ("normal", "g1"),
    ]
    # no repeats when there is one image per label, and the limit holds
    assert [im.sample_id for _, im in pick_cases(ims[:1] + ims[2:3])] == ["a1", "g1"]
    assert len(pick_cases(ims, limit=2)) == 2
    verdicts = [image("g", "good", None, "anomalous"), image("a", "logical", None, "normal")]
    assert [im.sample_id for _, im in pick_cases(verdicts)] == ["a", "g"]


# ------------------------------------------------------------------------------------------------ section
SMALL = {"train_good": 1, "validation_good": 1, "test_good": 3, "test_logical": 2, "test_structural": 2}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(make_config(size=64, counts=SMALL, categories=["breakfast_box", "pushpins"]), out, workers=1)
    return read_dataset(out)


def predictions(manifest: Manifest, folder: Path, maps: bool, verdicts: bool = False) -> list[Prediction]:
    """Maps that light up the ground truth plus noise (score = map maximum), or scores alone."""
    rng = np.random.default_rng(0)
    out = []
    for i, s in enumerate(manifest.filter(split="test")):
        gt = load_masks(s.mask_paths, (64, 64)).astype(np.float32)
        amap = gt * rng.uniform(0.3, 1.0) + rng.uniform(0, 0.5, (64, 64)).astype(np.float32)
        kw: dict = {"explanation": f"{EVIL} about {s.id}"} if verdicts else {}
        if verdicts:
            kw["verdict"] = "anomalous" if i % 3 else "normal"
        if maps:
            kw["map_path"] = save_map(folder / f"{i:03d}.npy", amap)
        else:
            kw["score"] = float(amap.max())
        out.append(Prediction(sample_id=s.id, run_id="synthetic", **kw))
    return out


def oracle_thresholds(manifest: Manifest, preds: list[Prediction]) -> dict:
    out = {}
    for cat in manifest.categories:
        ps = [p for p in preds if manifest.get(p.sample_id).category == cat]
        scores = [p.score if p.score is not None else 0.0 for p in ps]
        out[cat] = oracle_f1([manifest.get(p.sample_id).label for p in ps], scores)
    return out


def linked_files(page: str, folder: Path) -> list[Path]:
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs
    for src in srcs:
        assert (folder / src).is_file(), src
    return [folder / s for s in srcs]


def test_section_with_maps_shows_tables_curves_histograms_and_overlays(
    manifest: Manifest, tmp_path: Path
) -> None:
    preds = predictions(manifest, tmp_path / "maps", maps=True, verdicts=True)
    first = evaluate(manifest, preds, method="synthetic")  # scores = map maxima
    scores = {im.sample_id: im.score for im in first.images}
    scored = [p.model_copy(update={"score": scores[p.sample_id]}) for p in preds]
    ev = evaluate(manifest, preds, method="synthetic", thresholds=oracle_thresholds(manifest, scored))
    ev.notes.append("a <b>note</b> from the evaluation")
    report = HtmlReport("t", tmp_path / "report")
    add_evaluation_section(report, [ev], manifest)
    page = report.save().read_text()

    for caption in (
        "Image level",
        "Pixel level",
        "AU-sPRO",
        "MVTec LOCO image AUROC",
        "MVTec LOCO verdict accuracy",
        "Verdicts",
        "Scores at the calibrated threshold",
    ):
        assert f"<caption>{caption}" in page, caption
    for heading in (
        "Thresholds",
        "Metrics",
        "Curves",
        "Score histograms",
        "Anomaly maps: best and worst cases",
    ):
        assert f"<h3>{heading}</h3>" in page, heading
    # oracle labelling: thresholds table, error note, daggers with their legend
    assert page.count("<td>ORACLE</td>") == 2 and "ORACLE thresholds" in page
    assert ORACLE_MARK in page and "threshold chosen on the test set (oracle)" in page
    # notes are escaped warnings; explanations are escaped text
    assert '<div class="note warning">synthetic: a &lt;b&gt;note&lt;/b&gt; from the evaluation</div>' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    files = linked_files(page, report.folder)
    assert sum("curves_" in f.name for f in files) == 2 and sum("histograms_" in f.name for f in files) == 1
    # at most 4 overlays per category, each caption with the sample id, label and score
    cards = re.findall(r'<div class="card">.*?</div></div>', page)
    assert 2 <= len(cards) <= 8
    ids = {im.sample_id for im in ev.images}
    assert all(any(i in c for i in ids) and "label " in c and "score " in c for c in cards)
    assert any("worst: missed anomaly" in c for c in cards) and any("best: normal" in c for c in cards)


def test_section_without_maps_has_no_overlays_or_pixel_tables(manifest: Manifest, tmp_path: Path) -> None:
    ev = evaluate(manifest, predictions(manifest, tmp_path, maps=False), method="scores-only")
    assert all(im.map_path is None for im in ev.images)
    report = HtmlReport("t", tmp_path / "report")
    add_evaluation_section(report, [ev], manifest, title="Scores")
    page = report.save().read_text()
    assert "<h2>Scores</h2>" in page and "<caption>Image level" in page
    assert "Pixel level" not in page and "AU-sPRO" not in page
    assert "Anomaly maps" not in page and '<div class="card">' not in page
    assert "Score histograms" in page and "Curves" in page
    assert "Thresholds" not in page and "ORACLE" not in page
    linked_files(page, report.folder)


def test_section_for_verdicts_only_shows_escaped_explanations(manifest: Manifest, tmp_path: Path) -> None:
    preds = [p.model_copy(update={"score": None}) for p in predictions(manifest, tmp_path, False, True)]
    ev = evaluate(manifest, preds, method="vlm")
    report = HtmlReport("t", tmp_path / "report")
    add_evaluation_section(report, [ev], manifest)
    page = report.save().read_text()
    assert "<caption>Verdicts" in page and "Image level" not in page
    assert "Curves" not in page and "Score histograms" not in page and "Anomaly maps" not in page
    assert "Best and worst cases (no anomaly maps)" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_non_oracle_threshold_is_not_labelled_oracle(manifest: Manifest, tmp_path: Path) -> None:
    preds = predictions(manifest, tmp_path, maps=False)
    thr = {c: from_normal_quantile([0.1, 0.2, 0.3]) for c in manifest.categories}
    ev = evaluate(manifest, preds, method="m", thresholds=thr)
    report = HtmlReport("t", tmp_path / "report")
    add_evaluation_section(report, [ev], manifest)
    page = report.render()
    assert "<h3>Thresholds</h3>" in page and "normal-quantile" in page and "validation" in page
    assert "ORACLE" not in page
    # thresholded cells carry no dagger; F1-max (always an oracle number) still does
    _, rows = metric_table([ev], ["thr_accuracy", "image_f1_max"])
    assert all(ORACLE_MARK not in r[2] and ORACLE_MARK in r[3] for r in rows)


def test_empty_input_adds_a_note(tmp_path: Path, manifest: Manifest) -> None:
    report = HtmlReport("t", tmp_path)
    add_evaluation_section(report, [], manifest)
    assert "No evaluation to show." in report.render()
