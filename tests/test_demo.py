from __future__ import annotations

import html
import json
from pathlib import Path

from vlmad.demo import DemoContext, run_demo
from vlmad.records import Manifest

TINY = {
    "size": 96,
    "seed": 0,
    "counts": {
        "train_good": 2,
        "validation_good": 1,
        "test_good": 1,
        "test_logical": 2,
        "test_structural": 2,
    },
}

# the demo's detectors on a small random backbone (the real demo uses wide_resnet50_2 at 256 px)
SMALL = {"backbone": "resnet18", "weights": "random", "image_size": 64}
TINY_DETECTORS = {
    "pixel-gaussian": {},
    "patchcore": {**SMALL, "layers": [2, 3]},
    "padim": {**SMALL, "layers": [1, 2, 3]},
    "ridge": SMALL,
}
TINY_SHIFT = {
    "method": "patchcore",
    "options": {**SMALL, "layers": [2, 3]},
    "synth": {
        "categories": ["pushpins"],
        "size": 96,
        "seed": 1,
        "counts": {
            "train_good": 3,
            "validation_good": 2,
            "test_good": 2,
            "test_logical": 1,
            "test_structural": 2,
        },
    },
    "shifts": "lighting:0.7,position:0.4",
}
# the demo's training and chain-of-image stages, shortened: a few steps, one image per category and label
TINY_TRAIN = {"recipe": "train/tiny_llava.yaml", "max_steps": 4, "eval_steps": 2, "logging_steps": 1}
TINY_COI = {
    "recipe": "eval/coi_tiny.yaml",
    "per_label": 1,
    "generation": {"temperature": 0.0, "max_tokens": 12},
}
STAGES = ["synth", "manifest", "validate", "qa", "train", "coi", "detect", "zeroshot", "imaging", "report"]


def test_demo_pipeline_writes_manifest_and_report(tmp_path: Path) -> None:
    seen: list[str] = []
    ctx = DemoContext(
        out=tmp_path,
        synth=TINY,
        workers=1,
        detectors=TINY_DETECTORS,
        shift_study=TINY_SHIFT,
        train=TINY_TRAIN,
        coi=TINY_COI,
    )
    run_demo(ctx, on_stage=lambda n, s, t: seen.append(n))
    assert seen == STAGES
    m = Manifest.load(tmp_path / "manifest.jsonl")
    assert len(m) == 5 * 8 and ctx.problems == []
    page = (tmp_path / "report.html").read_text()
    for cat in m.categories:
        assert cat in page
    # every example card links an existing image, and reference descriptions are shown
    assert page.count('<div class="card">') >= 5 * 3
    for src in [part.split('"')[0] for part in page.split('src="')[1:]]:
        assert (tmp_path / src).is_file()
    for s in m.filter(split="test", label=["logical", "structural"]):  # 2 per label: all are shown
        assert html.escape(s.metadata["description"]) in page
    stages = json.loads((tmp_path / "stages.json").read_text())
    assert set(stages) == set(STAGES)
    # every detector scored every validation and test image; the report shows each in the documents' layouts
    for name in TINY_DETECTORS:
        preds = [json.loads(x) for x in (tmp_path / "runs" / name / "predictions.jsonl").open()]
        assert {p["sample_id"] for p in preds} == {s.id for s in m.filter(split=["validation", "test"])}
        rows = json.loads((tmp_path / "runs" / name / "eval" / "metrics.json").read_text())["rows"]
        assert {r["category"] for r in rows} == {*m.categories, "mean"}
        if name != "pixel-gaussian":  # the random backbone is flagged in every record
            assert all(p["metadata"]["random_backbone"] is True for p in preds)
    assert "trivial baseline" in page
    for caption in (
        "Document 000 layout",
        "Document 001 layout",
        "Document 002 layout",
        "PatchCore",
        "PaDiM",
    ):
        assert caption in page
    assert page.count("RANDOM BACKBONE") >= 1 and ctx.warnings
    assert "image_auroc" in (tmp_path / "tables" / "image_metrics.csv").read_text()
    # the imaging study ran its three conditions
    assert [r.condition for r in ctx.shift_results] == [
        "uniform",
        "train uniform, test shifted",
        "both shifted",
    ]
    assert "Change against uniform imaging" in page
    # WinCLIP and MuSc with the tiny random CLIP: every image scored, rows in the same tables, flagged
    for name in ("winclip", "musc"):
        preds = [json.loads(x) for x in (tmp_path / "runs" / f"zeroshot-{name}" / "predictions.jsonl").open()]
        assert {p["sample_id"] for p in preds} == {s.id for s in m.filter(split=["validation", "test"])}
        assert all(p["metadata"]["random_clip"] is True for p in preds)
    for row in ("WinCLIP [tiny random CLIP]", "MuSc [tiny random CLIP]", "TINY RANDOM CLIP"):
        assert row in page
    # the QA build: template QA for every image, the split by image, the three exports, shown in the report
    qa = ctx.qa_build
    assert qa is not None and qa.template_inserted
    assert qa.items_by_source == {"template": qa.template_inserted}
    assert sum(qa.split_counts.values()) == len(m)
    export = json.loads((tmp_path / "qa" / "export.json").read_text())
    assert export["formats"] == ["llava", "messages", "hf"]
    llava = json.loads((tmp_path / "qa" / "llava" / "train.json").read_text())
    exported = {row["image"][1] for row in llava}
    assert len(exported) == qa.split_counts["train"]  # all training normals and half of each anomaly type
    assert {s.image_path.relative_to(m.info.root).as_posix() for s in m.filter(split="train")} < exported
    assert "QA annotations" in page and "Partial-supervision split" in page
    # LoRA on the tiny random LLaVA: 4 steps, an adapter, the curve in the report, marked as random
    tr = ctx.train_result
    assert tr.global_step == 4 and (tr.adapter_dir / "adapter_config.json").is_file()
    assert "LoRA fine-tuning" in page and "TINY RANDOM MODEL" in page
    # the four prompts on the base model and with the demo's adapter: every chosen test image answered
    runs = {p.run_id for p in ctx.coi_predictions}
    assert runs == {
        f"{m}/{q}"
        for m in ("tiny-llava", "tiny-llava+demo-lora")
        for q in ("plain", "coi_p1", "coi_p2", "coi_p3")
    }
    per_run = len(ctx.coi_predictions) // len(runs)
    assert per_run == len(m.filter(split="test").categories) * 3  # one good, logical, structural each
    assert all(p.metadata["template_sample_id"] for p in ctx.coi_predictions)
    assert "Chain-of-image prompting" in page
