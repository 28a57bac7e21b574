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


def test_demo_pipeline_writes_manifest_and_report(tmp_path: Path) -> None:
    seen: list[str] = []
    ctx = run_demo(DemoContext(out=tmp_path, synth=TINY, workers=1), on_stage=lambda n, s, t: seen.append(n))
    assert seen == ["synth", "manifest", "validate", "evaluate", "report"]
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
    assert set(stages) == {"synth", "manifest", "validate", "evaluate", "report"}
    # the evaluation stage scored every test image with the labelled trivial baseline, and the report shows it
    preds = [json.loads(x) for x in (tmp_path / "runs" / "pixel-gaussian" / "predictions.jsonl").open()]
    assert {p["sample_id"] for p in preds} == {s.id for s in m.filter(split=["validation", "test"])}
    assert "trivial baseline" in page
    assert "image_auroc" in (tmp_path / "tables" / "image_metrics.csv").read_text()
    rows = json.loads((tmp_path / "runs" / "pixel-gaussian" / "eval" / "metrics.json").read_text())["rows"]
    assert {r["category"] for r in rows} == {*m.categories, "mean"}
