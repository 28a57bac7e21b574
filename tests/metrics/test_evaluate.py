"""Tests of vlmad.metrics.evaluate on a small generated LOCO-style dataset and a tiny MVTec AD folder.

Expected numbers come from scikit-learn or are counted by hand, never from vlmad.metrics itself.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from tests.fixtures import make_mvtec_ad
from vlmad.data import read_dataset
from vlmad.data.maps import save_map
from vlmad.data.predictions import read_predictions
from vlmad.data.synth.generate import generate, make_config
from vlmad.detectors.pixel_gaussian import PixelGaussian
from vlmad.detectors.run import predict_manifest
from vlmad.metrics.evaluate import Evaluation, EvaluationError, MetricRow, calibrate_thresholds, evaluate
from vlmad.metrics.threshold import Threshold, oracle_f1
from vlmad.records import Manifest, Prediction, Sample

CATS = ("pushpins", "screw_bag")
COUNTS = {"train_good": 2, "validation_good": 1, "test_good": 3, "test_logical": 3, "test_structural": 3}
SIZE = 64
RUN = "run-a"
SPRO_METRICS = ("au_spro_0.01", "au_spro_0.05", "au_spro_0.1", "au_spro_0.3", "au_spro_1")


# --- fixtures and helpers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loco(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    out = tmp_path_factory.mktemp("loco") / "ds"
    generate(make_config(size=SIZE, categories=list(CATS), counts=COUNTS), out, workers=1)
    m = read_dataset(out)
    assert m.info.layout == "mvtec_loco" and m.categories == list(CATS)
    assert all(m.info.defects.get(c) for c in CATS)
    return m


def eval_samples(m: Manifest) -> list[Sample]:
    return [s for s in m if s.split == "test"]


def gt_mask(s: Sample, shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """Union of a sample's masks, read with PIL (independently of vlmad.data.images)."""
    out = np.zeros(shape, bool)
    for p in s.mask_paths:
        with Image.open(p) as img:
            out |= np.asarray(img.convert("L")) > 0
    return out


def make_maps(m: Manifest, folder: Path, seed: int = 0, size: int | None = None) -> dict[str, np.ndarray]:
    """A noisy map per test image, brighter inside the defect; saved as ``<folder>/<id>.npy``."""
    rng = np.random.default_rng(seed)
    maps = {}
    for s in eval_samples(m):
        with Image.open(s.image_path) as img:
            w, h = img.size
        offset = rng.normal(scale=1.0)  # per image, so that the map maxima do not separate the classes
        amap = (rng.random((h, w)) + 0.4 * gt_mask(s, (h, w)) + offset).astype(np.float32)
        if size is not None:
            amap = rng.random((size, size)).astype(np.float32)
        maps[s.id] = amap
        save_map(folder / f"{s.id}.npy", amap)
    return maps


def map_preds(m: Manifest, folder: Path, run: str = RUN) -> list[Prediction]:
    return [Prediction(sample_id=s.id, run_id=run, map_path=folder / f"{s.id}.npy") for s in eval_samples(m)]


def make_scores(m: Manifest, seed: int = 1) -> dict[str, float]:
    """Scores with ties (one decimal), anomalies higher on average but not separable."""
    rng = np.random.default_rng(seed)
    return {s.id: round(float(rng.normal() + 0.9 * s.is_anomalous), 1) for s in eval_samples(m)}


def score_preds(scores: dict[str, float], run: str = RUN) -> list[Prediction]:
    return [Prediction(sample_id=k, run_id=run, score=v) for k, v in scores.items()]


def in_subset(s: Sample, subset: str) -> bool:
    return s.label == "good" or subset == "all" or s.label == subset


def row(ev: Evaluation, metric: str, category: str, subset: str) -> MetricRow:
    found = [r for r in ev.rows if (r.metric, r.category, r.subset) == (metric, category, subset)]
    assert len(found) == 1, f"{len(found)} rows for {metric} {category}/{subset}"
    return found[0]


@pytest.fixture(scope="module")
def loco_maps(loco: Manifest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("maps")
    return folder, make_maps(loco, folder)


# --- image metrics from scores ----------------------------------------------------------------------------


def test_image_metrics_match_sklearn_per_category_and_subset(loco: Manifest) -> None:
    scores = make_scores(loco)
    ev = evaluate(loco, score_preds(scores))
    assert ev.method == RUN
    assert ev.categories == [*CATS, "mean"]
    assert set(ev.subsets) == {"logical", "structural", "all", "average"}
    assert not any(r.metric.startswith(("pixel_", "au_spro", "verdict_", "thr_")) for r in ev.rows)
    for cat in CATS:
        for sub in ("logical", "structural", "all"):
            members = [s for s in eval_samples(loco) if s.category == cat and in_subset(s, sub)]
            y = [s.is_anomalous for s in members]
            x = [scores[s.id] for s in members]
            auroc, ap = row(ev, "image_auroc", cat, sub), row(ev, "image_ap", cat, sub)
            assert auroc.value == pytest.approx(roc_auc_score(y, x), abs=1e-12)
            assert ap.value == pytest.approx(average_precision_score(y, x), abs=1e-12)
            assert (auroc.n_normal, auroc.n_anomalous) == (3, 3 if sub != "all" else 6)
        for metric in ("image_auroc", "image_ap"):
            avg = row(ev, metric, cat, "average")
            lo, st = row(ev, metric, cat, "logical").value, row(ev, metric, cat, "structural").value
            assert avg.value == pytest.approx((lo + st) / 2, abs=1e-12)
    for sub in ("logical", "structural", "all", "average"):
        for metric in ("image_auroc", "image_ap", "image_f1_max"):
            mean = row(ev, metric, "mean", sub)
            assert mean.value == pytest.approx(np.mean([row(ev, metric, c, sub).value for c in CATS]))
            assert "mean over categories" in mean.note
    assert row(ev, "image_auroc", "mean", "all").n_anomalous == 12


def test_logical_subset_uses_only_good_and_logical_images(loco: Manifest) -> None:
    # structural images get extreme scores: they must not move the logical numbers
    scores = make_scores(loco)
    base = evaluate(loco, score_preds(scores))
    shifted = {k: (v + 100.0 if "structural" in k else v) for k, v in scores.items()}
    ev = evaluate(loco, score_preds(shifted))
    for cat in CATS:
        assert row(ev, "image_auroc", cat, "logical").value == row(base, "image_auroc", cat, "logical").value
        assert row(ev, "image_auroc", cat, "structural").value == 1.0
    # and the other way round
    shifted = {k: (v - 100.0 if "logical" in k else v) for k, v in scores.items()}
    ev = evaluate(loco, score_preds(shifted))
    for cat in CATS:
        assert row(ev, "image_auroc", cat, "logical").value == 0.0
        assert row(ev, "image_ap", cat, "structural").value == row(base, "image_ap", cat, "structural").value


def test_image_results_list_every_test_image(loco: Manifest) -> None:
    scores = make_scores(loco)
    ev = evaluate(loco, score_preds(scores), method="my method")
    assert ev.method == "my method" and all(r.method == "my method" for r in ev.rows)
    assert {i.sample_id: i.score for i in ev.images} == scores
    assert {i.sample_id: i.label for i in ev.images} == {s.id: s.label for s in eval_samples(loco)}


# --- maps: score from the map maximum, pixel metrics, AU-sPRO ---------------------------------------------


def test_score_from_map_max_and_pixel_auroc_match_sklearn(
    loco: Manifest, loco_maps: tuple[Path, dict[str, np.ndarray]]
) -> None:
    folder, maps = loco_maps
    seen: list[tuple[int, int]] = []
    ev = evaluate(loco, map_preds(loco, folder), progress=lambda d, t: seen.append((d, t)))
    n = len(eval_samples(loco))
    assert seen[-1] == (n, n) and len(seen) == n
    assert not any("resiz" in note for note in ev.notes)
    assert {i.sample_id: i.score for i in ev.images} == pytest.approx(
        {k: float(v.max()) for k, v in maps.items()}
    )
    for cat in CATS:
        for sub in ("logical", "structural", "all"):
            members = [s for s in eval_samples(loco) if s.category == cat and in_subset(s, sub)]
            y = [s.is_anomalous for s in members]
            assert row(ev, "image_auroc", cat, sub).value == pytest.approx(
                roc_auc_score(y, [float(maps[s.id].max()) for s in members]), abs=1e-12
            )
            masks = np.concatenate([gt_mask(s).ravel() for s in members])
            values = np.concatenate([maps[s.id].ravel() for s in members])
            pix = row(ev, "pixel_auroc", cat, sub)
            assert pix.value == pytest.approx(roc_auc_score(masks, values), abs=1e-9)
            assert pix.note == ""
            assert row(ev, "pixel_ap", cat, sub).value == pytest.approx(
                average_precision_score(masks, values), abs=1e-9
            )
            assert 0.0 <= row(ev, "pixel_aupro_0.3", cat, sub).value <= 1.0
        assert row(ev, "pixel_auroc", cat, "average").value == pytest.approx(
            (row(ev, "pixel_auroc", cat, "logical").value + row(ev, "pixel_auroc", cat, "structural").value)
            / 2
        )
    assert set(ev.curves) >= {(c, s, k) for c in CATS for s in ("all",) for k in ("roc", "pr", "pixel_roc")}


def test_scores_given_with_maps_are_used_instead_of_the_map_max(
    loco: Manifest, loco_maps: tuple[Path, dict[str, np.ndarray]]
) -> None:
    folder, _ = loco_maps
    scores = make_scores(loco)
    preds = [p.model_copy(update={"score": scores[p.sample_id]}) for p in map_preds(loco, folder)]
    ev = evaluate(loco, preds)
    members = [s for s in eval_samples(loco) if s.category == CATS[0]]
    assert row(ev, "image_auroc", CATS[0], "all").value == pytest.approx(
        roc_auc_score([s.is_anomalous for s in members], [scores[s.id] for s in members])
    )
    assert "pixel_auroc" in ev.metrics


def test_use_maps_false_ignores_maps(loco: Manifest, loco_maps: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = loco_maps
    scores = make_scores(loco)
    preds = [p.model_copy(update={"score": scores[p.sample_id]}) for p in map_preds(loco, folder)]
    ev = evaluate(loco, preds, use_maps=False)
    assert "image_auroc" in ev.metrics
    assert not any(m.startswith(("pixel_", "au_spro")) for m in ev.metrics)


def test_au_spro_rows_for_loco(loco: Manifest, loco_maps: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = loco_maps
    ev = evaluate(loco, map_preds(loco, folder))
    for cat in [*CATS, "mean"]:
        for sub in ("logical", "structural", "all", "average"):
            for metric in SPRO_METRICS:
                assert 0.0 <= row(ev, metric, cat, sub).value <= 1.0


def test_perfect_maps_give_perfect_pixel_metrics_and_au_spro(loco: Manifest, tmp_path: Path) -> None:
    preds = []
    for s in eval_samples(loco):
        path = save_map(tmp_path / f"{s.id}.npy", gt_mask(s).astype(np.float32))
        preds.append(Prediction(sample_id=s.id, run_id=RUN, map_path=path))
    ev = evaluate(loco, preds)
    for cat in CATS:
        for sub in ("logical", "structural", "all"):
            assert row(ev, "pixel_auroc", cat, sub).value == pytest.approx(1.0)
            assert row(ev, "pixel_aupro_0.3", cat, sub).value == pytest.approx(1.0)
            assert row(ev, "image_auroc", cat, sub).value == pytest.approx(1.0)
            for metric in SPRO_METRICS:
                assert row(ev, metric, cat, sub).value == pytest.approx(1.0)


def test_mvtec_ad_has_no_spro_and_only_the_all_subset(tmp_path: Path) -> None:
    m = read_dataset(make_mvtec_ad(tmp_path / "ad"))
    assert m.info.layout == "mvtec_ad" and not m.info.defects
    maps = make_maps(m, tmp_path / "maps")
    ev = evaluate(m, map_preds(m, tmp_path / "maps"))
    assert set(ev.subsets) == {"all"}
    assert ev.categories == ["bottle", "screw", "mean"]
    assert not any(r.metric.startswith("au_spro") for r in ev.rows)
    for cat in ("bottle", "screw"):
        members = [s for s in eval_samples(m) if s.category == cat]
        masks = np.concatenate([gt_mask(s, (32, 32)).ravel() for s in members])
        values = np.concatenate([maps[s.id].ravel() for s in members])
        assert row(ev, "pixel_auroc", cat, "all").value == pytest.approx(
            roc_auc_score(masks, values), abs=1e-9
        )
        assert row(ev, "image_auroc", cat, "all").n_anomalous == 2


# --- undefined metrics ------------------------------------------------------------------------------------


def only_good_in_screw_bag(m: Manifest) -> Manifest:
    return Manifest(m.info, [s for s in m if not (s.category == "screw_bag" and s.is_anomalous)])


def test_category_with_only_good_images_is_nan_and_left_out_of_the_mean(
    loco: Manifest, tmp_path: Path
) -> None:
    m = only_good_in_screw_bag(loco)
    scores = {k: v for k, v in make_scores(loco).items() if k in {s.id for s in eval_samples(m)}}
    ev = evaluate(m, score_preds(scores))
    bad = row(ev, "image_auroc", "screw_bag", "all")
    assert math.isnan(bad.value) and "undefined" in bad.note
    assert (bad.n_normal, bad.n_anomalous) == (3, 0)
    assert math.isnan(row(ev, "image_ap", "screw_bag", "all").value)
    assert not [r for r in ev.rows if r.category == "screw_bag" and r.subset != "all"]
    mean = row(ev, "image_auroc", "mean", "all")
    assert mean.value == row(ev, "image_auroc", "pushpins", "all").value
    assert "undefined" in mean.note and "1" in mean.note
    # the LOCO subsets exist only in pushpins: the mean says so
    mean_logical = row(ev, "image_auroc", "mean", "logical")
    assert mean_logical.value == row(ev, "image_auroc", "pushpins", "logical").value
    assert "lack" in mean_logical.note

    # NaN in JSON is null, and the CSV parses back
    paths = ev.save(tmp_path / "out")
    payload = json.loads(paths["json"].read_text(encoding="utf-8"), parse_constant=_no_constants)
    nan_rows = [r for r in payload["rows"] if r["category"] == "screw_bag" and r["metric"] == "image_auroc"]
    assert nan_rows[0]["value"] is None
    with paths["csv"].open(newline="", encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    nan_csv = [r for r in csv_rows if r["category"] == "screw_bag" and r["metric"] == "image_auroc"]
    assert math.isnan(float(nan_csv[0]["value"]))


def test_good_only_category_with_maps_has_undefined_pixel_metrics(
    loco: Manifest, loco_maps: tuple[Path, dict[str, np.ndarray]]
) -> None:
    folder, _ = loco_maps
    m = only_good_in_screw_bag(loco)
    ids = {s.id for s in eval_samples(m)}
    ev = evaluate(m, [p for p in map_preds(loco, folder) if p.sample_id in ids])
    pix = row(ev, "pixel_auroc", "screw_bag", "all")
    assert math.isnan(pix.value) and "undefined" in pix.note
    assert math.isnan(row(ev, "au_spro_0.05", "screw_bag", "all").value)
    assert row(ev, "pixel_auroc", "mean", "all").value == row(ev, "pixel_auroc", "pushpins", "all").value


def _no_constants(name: str) -> float:
    raise AssertionError(f"metrics.json holds the non-JSON constant {name}")


# --- verdicts ---------------------------------------------------------------------------------------------

VERDICTS = {
    "good": ["normal", "anomalous", "unparsed"],
    "logical": ["anomalous", "normal", "anomalous"],
    "structural": ["anomalous", "anomalous", "unparsed"],
}


def verdict_preds(m: Manifest) -> list[Prediction]:
    preds = []
    for cat in CATS:
        for label, verdicts in VERDICTS.items():
            members = [s for s in eval_samples(m) if s.category == cat and s.label == label]
            assert len(members) == 3
            preds += [
                Prediction(sample_id=s.id, run_id=RUN, verdict=v, explanation=f"said {v}")
                for s, v in zip(members, verdicts, strict=True)
            ]
    return preds


def test_verdict_only_predictions(loco: Manifest) -> None:
    ev = evaluate(loco, verdict_preds(loco))
    assert not any(r.metric.startswith(("image_", "pixel_", "thr_")) for r in ev.rows)
    for cat in CATS:
        # all: 9 images; correct: good 1, logical 2, structural 2; 2 unparsed; TP 4, FP 1, FN 2
        assert row(ev, "verdict_accuracy", cat, "all").value == pytest.approx(5 / 9)
        assert row(ev, "verdict_parse_failure_rate", cat, "all").value == pytest.approx(2 / 9)
        assert row(ev, "verdict_precision", cat, "all").value == pytest.approx(4 / 5)
        assert row(ev, "verdict_recall", cat, "all").value == pytest.approx(4 / 6)
        assert row(ev, "verdict_over_detection", cat, "all").value == pytest.approx(1 / 3)
        assert row(ev, "verdict_miss_rate", cat, "all").value == pytest.approx(2 / 6)
        assert row(ev, "verdict_f1", cat, "all").value == pytest.approx(8 / (8 + 1 + 2))
        assert row(ev, "verdict_yes_rate", cat, "all").value == pytest.approx(5 / 9)
        # logical: good + logical only; correct 1 + 2 of 6, one unparsed
        assert row(ev, "verdict_accuracy", cat, "logical").value == pytest.approx(3 / 6)
        assert row(ev, "verdict_parse_failure_rate", cat, "logical").value == pytest.approx(1 / 6)
        assert row(ev, "verdict_recall", cat, "logical").value == pytest.approx(2 / 3)
        # structural: correct 1 + 2 of 6, two unparsed
        assert row(ev, "verdict_accuracy", cat, "structural").value == pytest.approx(3 / 6)
        assert row(ev, "verdict_parse_failure_rate", cat, "structural").value == pytest.approx(2 / 6)
        assert row(ev, "verdict_accuracy", cat, "average").value == pytest.approx(0.5)
    assert row(ev, "verdict_accuracy", "mean", "all").value == pytest.approx(5 / 9)
    assert {i.verdict for i in ev.images} == {"normal", "anomalous", "unparsed"}
    assert all(i.score is None and i.explanation == f"said {i.verdict}" for i in ev.images)


def test_all_unparsed_verdicts(loco: Manifest) -> None:
    preds = [Prediction(sample_id=s.id, run_id=RUN, verdict="unparsed") for s in eval_samples(loco)]
    ev = evaluate(loco, preds)
    for cat in CATS:
        assert row(ev, "verdict_parse_failure_rate", cat, "all").value == 1.0
        assert row(ev, "verdict_accuracy", cat, "all").value == 0.0
        assert row(ev, "verdict_recall", cat, "all").value == 0.0
        assert math.isnan(row(ev, "verdict_precision", cat, "all").value)


def test_scores_and_verdicts_together(loco: Manifest) -> None:
    scores = make_scores(loco)
    preds = [p.model_copy(update={"score": scores[p.sample_id]}) for p in verdict_preds(loco)]
    ev = evaluate(loco, preds)
    assert row(ev, "verdict_accuracy", "pushpins", "all").value == pytest.approx(5 / 9)
    assert "image_auroc" in ev.metrics


# --- thresholds -------------------------------------------------------------------------------------------


def _thr_expectations(members: list[Sample], scores: dict[str, float], t: float) -> tuple[float, float]:
    y = np.array([s.is_anomalous for s in members])
    flagged = np.array([scores[s.id] >= t for s in members])
    return float((flagged == y).mean()), float(flagged[~y].mean())


def test_thresholds_give_thr_rows_labelled_with_method_and_oracle(loco: Manifest, tmp_path: Path) -> None:
    scores = make_scores(loco)
    sb = [s for s in eval_samples(loco) if s.category == "screw_bag"]
    oracle = oracle_f1([s.label for s in sb], [scores[s.id] for s in sb])
    assert oracle.oracle
    thresholds = {"pushpins": Threshold(0.5, "fixed", "user"), "screw_bag": oracle}
    ev = evaluate(loco, score_preds(scores), thresholds=thresholds)
    assert ev.thresholds == thresholds
    for cat, thr in thresholds.items():
        for sub in ("logical", "structural", "all"):
            members = [s for s in eval_samples(loco) if s.category == cat and in_subset(s, sub)]
            acc, fpr = _thr_expectations(members, scores, thr.value)
            r = row(ev, "thr_accuracy", cat, sub)
            assert r.value == pytest.approx(acc)
            assert row(ev, "thr_over_detection", cat, sub).value == pytest.approx(fpr)
            assert row(ev, "thr_parse_failure_rate", cat, sub).value == 0.0
            assert thr.method in r.note
            assert ("ORACLE" in r.note) == thr.oracle
    # the oracle F1 threshold reaches the F1 it was fitted to on the same images
    assert row(ev, "thr_f1", "screw_bag", "all").value == pytest.approx(oracle.params["f1"])
    # saved with the metrics
    payload = json.loads(ev.save(tmp_path)["json"].read_text())
    assert payload["thresholds"]["screw_bag"]["oracle"] is True
    assert payload["thresholds"]["pushpins"] == {
        "value": 0.5,
        "method": "fixed",
        "source": "user",
        "oracle": False,
        "params": {},
    }


def test_no_thresholds_no_thr_rows(loco: Manifest) -> None:
    ev = evaluate(
        loco, score_preds(make_scores(loco)), thresholds={"pushpins": Threshold(0.0, "fixed", "user")}
    )
    assert any(r.category == "pushpins" and r.metric.startswith("thr_") for r in ev.rows)
    assert not any(r.category == "screw_bag" and r.metric.startswith("thr_") for r in ev.rows)


def test_rows_derived_from_an_oracle_threshold_stay_labelled(loco: Manifest) -> None:
    # "An oracle threshold is allowed and labelled in every row it produced": also the LOCO average and
    # the mean over categories, which are computed from oracle numbers.
    scores = make_scores(loco)
    thresholds = {}
    for cat in CATS:
        members = [s for s in eval_samples(loco) if s.category == cat]
        thresholds[cat] = oracle_f1([s.label for s in members], [scores[s.id] for s in members])
    ev = evaluate(loco, score_preds(scores), thresholds=thresholds)
    thr_rows = [r for r in ev.rows if r.metric.startswith("thr_")]
    assert {r.subset for r in thr_rows} == {"logical", "structural", "all", "average"}
    assert {r.category for r in thr_rows} == {*CATS, "mean"}
    unlabelled = sorted({(r.category, r.subset) for r in thr_rows if "ORACLE" not in r.note})
    assert unlabelled == [], f"oracle-derived thr_* rows without ORACLE in the note: {unlabelled}"


# --- errors -----------------------------------------------------------------------------------------------


def test_prediction_for_a_sample_not_in_the_dataset(loco: Manifest) -> None:
    for stray in ("pushpins/test/good/999", "other_category/test/good/000"):
        preds = [*score_preds(make_scores(loco)), Prediction(sample_id=stray, run_id=RUN, score=1.0)]
        with pytest.raises(EvaluationError, match=stray):
            evaluate(loco, preds)


def test_predictions_on_train_and_validation_images_are_left_out_with_a_note(loco: Manifest) -> None:
    # documented in index_predictions: they serve threshold calibration and are not scored
    scores = make_scores(loco)
    others = [s for s in loco if s.split != "test"]
    assert {s.split for s in others} == {"train", "validation"}
    extra = [Prediction(sample_id=s.id, run_id=RUN, score=100.0) for s in others]
    ev = evaluate(loco, score_preds(scores) + extra)
    base = evaluate(loco, score_preds(scores))
    assert ev.rows == base.rows
    assert any(f"{len(others)} prediction(s) on train/validation" in n for n in ev.notes)
    assert {i.sample_id for i in ev.images} == set(scores)


def test_missing_predictions(loco: Manifest) -> None:
    preds = score_preds(make_scores(loco))
    dropped = preds.pop(4).sample_id
    with pytest.raises(EvaluationError, match="1 of 18") as e:
        evaluate(loco, preds)
    assert dropped in str(e.value)
    ev = evaluate(loco, preds, allow_missing=True)
    assert any("1 of 18" in n and "no prediction" in n for n in ev.notes)
    assert dropped not in {i.sample_id for i in ev.images}
    assert len(ev.images) == 17


def test_empty_predictions_rejected(loco: Manifest) -> None:
    with pytest.raises(EvaluationError, match="18 of 18"):
        evaluate(loco, [])


def test_two_runs_mixed(loco: Manifest) -> None:
    scores = make_scores(loco)
    preds = score_preds(scores)
    preds[0] = preds[0].model_copy(update={"run_id": "run-b"})
    with pytest.raises(EvaluationError, match="run-b"):
        evaluate(loco, preds)
    # complete predictions of two runs are still two runs
    with pytest.raises(EvaluationError, match="several runs"):
        evaluate(loco, score_preds(scores) + score_preds(scores, run="run-b"))


def test_maps_for_only_some_images(loco: Manifest, loco_maps: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = loco_maps
    scores = make_scores(loco)
    preds = [p.model_copy(update={"score": scores[p.sample_id]}) for p in map_preds(loco, folder)]
    preds[2] = preds[2].model_copy(update={"map_path": None})
    with pytest.raises(EvaluationError, match="maps") as e:
        evaluate(loco, preds)
    assert "8 of 9" in str(e.value)
    # without scores the image without a map has no score either: also an error
    preds = map_preds(loco, folder)
    preds[2] = preds[2].model_copy(update={"map_path": None, "verdict": "normal"})
    with pytest.raises(EvaluationError):
        evaluate(loco, preds)


def test_two_scores_for_one_image(loco: Manifest) -> None:
    preds = score_preds(make_scores(loco))
    preds.append(preds[0].model_copy(update={"question_id": "q2", "score": 3.0}))
    with pytest.raises(EvaluationError, match=preds[0].sample_id):
        evaluate(loco, preds)


def test_two_maps_for_one_image(loco: Manifest, loco_maps: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = loco_maps
    preds = map_preds(loco, folder)
    preds.append(preds[0].model_copy(update={"question_id": "q2"}))
    with pytest.raises(EvaluationError, match="several"):
        evaluate(loco, preds)


def test_duplicate_verdict_predictions_rejected(loco: Manifest) -> None:
    # the same (run, sample, question) twice is a duplicate, not two votes
    preds = verdict_preds(loco)
    preds.append(preds[0])
    with pytest.raises(EvaluationError, match=preds[0].sample_id):
        evaluate(loco, preds)


def test_verdicts_of_several_questions_are_all_counted(loco: Manifest) -> None:
    preds = verdict_preds(loco)
    extra = [p.model_copy(update={"question_id": "q2", "verdict": "anomalous"}) for p in preds]
    ev = evaluate(loco, preds + extra)
    r = row(ev, "verdict_accuracy", "pushpins", "all")
    # 18 answers per category: the 9 above (5 correct) and 9 "anomalous" (6 correct)
    assert r.value == pytest.approx(11 / 18)


# --- map sizes --------------------------------------------------------------------------------------------


def test_map_of_another_size_is_resized_and_noted(loco: Manifest, tmp_path: Path) -> None:
    make_maps(loco, tmp_path, size=SIZE // 2)
    ev = evaluate(loco, map_preds(loco, tmp_path))
    notes = [n for n in ev.notes if "resized" in n]
    assert len(notes) == 1 and "18" in notes[0]
    assert 0.0 <= row(ev, "pixel_auroc", "pushpins", "all").value <= 1.0


def test_one_resized_map_counted(
    loco: Manifest, loco_maps: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    folder, _ = loco_maps
    preds = map_preds(loco, folder)
    small = save_map(tmp_path / "small.npy", np.random.default_rng(3).random((16, 24)).astype(np.float32))
    preds[5] = preds[5].model_copy(update={"map_path": small})
    ev = evaluate(loco, preds)
    notes = [n for n in ev.notes if "resized" in n]
    assert len(notes) == 1 and notes[0].startswith("1 ")


def test_map_of_the_right_size_gives_no_resize_note(
    loco: Manifest, loco_maps: tuple[Path, dict[str, np.ndarray]]
) -> None:
    folder, _ = loco_maps
    ev = evaluate(loco, map_preds(loco, folder))
    assert not any("resiz" in n for n in ev.notes)
    assert ev.notes == []


# --- saving -----------------------------------------------------------------------------------------------


def test_save_writes_csv_and_json_that_parse_back(
    loco: Manifest, loco_maps: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    folder, _ = loco_maps
    scores = make_scores(loco)
    preds = [p.model_copy(update={"score": scores[p.sample_id]}) for p in map_preds(loco, folder)]
    preds.pop()
    ev = evaluate(loco, preds, allow_missing=True, thresholds={"pushpins": Threshold(0.2, "fixed", "user")})
    paths = ev.save(tmp_path / "new" / "dir")
    assert paths == {
        "csv": tmp_path / "new" / "dir" / "metrics.csv",
        "json": tmp_path / "new" / "dir" / "metrics.json",
    }
    with paths["csv"].open(newline="", encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(ev.rows)
    for got, want in zip(csv_rows, ev.rows, strict=True):
        assert (got["method"], got["category"], got["subset"], got["metric"]) == (
            want.method,
            want.category,
            want.subset,
            want.metric,
        )
        v = float(got["value"])
        assert (math.isnan(v) and math.isnan(want.value)) or v == want.value
        assert (int(got["n_normal"]), int(got["n_anomalous"]), got["note"]) == (
            want.n_normal,
            want.n_anomalous,
            want.note,
        )
    payload = json.loads(paths["json"].read_text(encoding="utf-8"), parse_constant=_no_constants)
    assert payload["method"] == RUN
    assert payload["notes"] == ev.notes and any("no prediction" in n for n in payload["notes"])
    assert len(payload["rows"]) == len(ev.rows)
    for got, want in zip(payload["rows"], ev.rows, strict=True):
        assert got["metric"] == want.metric and got["note"] == want.note
        assert got["value"] == (None if math.isnan(want.value) else want.value)
    assert payload["thresholds"]["pushpins"]["value"] == 0.2


# --- with the trivial baseline ----------------------------------------------------------------------------


def test_evaluate_predictions_written_by_a_detector_run(loco: Manifest, tmp_path: Path) -> None:
    path = predict_manifest(lambda: PixelGaussian(size=16), loco, tmp_path / "run", "pg")
    preds = read_predictions(path)
    n_val = sum(s.split == "validation" for s in loco)
    assert len(preds) == 18 + n_val and all(p.map_path is not None and p.score is not None for p in preds)
    thresholds = calibrate_thresholds(loco, preds, "normal-quantile", q=0.5)
    assert set(thresholds) == set(CATS) and all(t.source == "validation" for t in thresholds.values())
    ev = evaluate(loco, preds, thresholds=thresholds)
    assert ev.method == "pg"
    assert any(f"{n_val} prediction(s) on train/validation" in n for n in ev.notes)
    maps = {p.sample_id: np.load(p.map_path) for p in preds}  # type: ignore[arg-type]
    for cat in CATS:
        members = [s for s in eval_samples(loco) if s.category == cat]
        y = [s.is_anomalous for s in members]
        assert row(ev, "image_auroc", cat, "all").value == pytest.approx(
            roc_auc_score(y, [float(maps[s.id].max()) for s in members])
        )
        masks = np.concatenate([gt_mask(s).ravel() for s in members])
        values = np.concatenate([maps[s.id].ravel() for s in members])
        assert row(ev, "pixel_auroc", cat, "all").value == pytest.approx(
            roc_auc_score(masks, values), abs=1e-9
        )
        assert not math.isnan(row(ev, "au_spro_0.05", cat, "all").value)
        thr = row(ev, "thr_accuracy", cat, "all")
        flagged = np.array([float(maps[s.id].max()) >= thresholds[cat].value for s in members])
        assert thr.value == pytest.approx(float((flagged == np.array(y)).mean()))
        assert "normal-quantile" in thr.note and "ORACLE" not in thr.note
