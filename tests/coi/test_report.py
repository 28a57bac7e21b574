"""The chain-of-image report section: Table 1, the per-prompt chart, explanations, A/B and examples, with
model text escaped and tiny random models marked."""

from __future__ import annotations

from pathlib import Path

from vlmad.coi.evaluate import ab_table, explanation_table, score_table
from vlmad.records import Manifest, Prediction
from vlmad.report.coi import add_coi_section, pct
from vlmad.report.html import HtmlReport

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def predictions(manifest: Manifest) -> list[Prediction]:
    out = []
    tests = [s for s in manifest if s.split == "test"]
    for run_id, random in (
        ("tiny-llava/coi_p1", True),
        ("tiny-llava/coi_p2", True),
        ("gpt-4o/coi_p1", False),
    ):
        for i, s in enumerate(tests):
            verdict = "anomalous" if (i + len(run_id)) % 3 else "normal"
            out.append(
                Prediction(
                    sample_id=s.id,
                    run_id=run_id,
                    verdict=verdict,  # type: ignore[arg-type]
                    score=0.5 if random else None,
                    explanation=EVIL if verdict == "anomalous" else "fine",
                    metadata={
                        "status": "answered",
                        "raw": f"Answer: {verdict}\nExplanation: {EVIL}",
                        "random_vlm": random,
                        "template_sample_id": next(
                            t.id for t in manifest if t.category == s.category and t.split == "train"
                        ),
                    },
                )
            )
    return out


def test_section_has_the_tables_chart_examples_and_escapes_model_text(
    coi_manifest: Manifest, tmp_path: Path
) -> None:
    preds = predictions(coi_manifest)
    report = HtmlReport("coi", tmp_path)
    rows = score_table(preds, coi_manifest)
    comparisons = ab_table(preds, coi_manifest, n_boot=200)
    explanations = explanation_table(preds, coi_manifest, embeddings=False)
    add_coi_section(
        report,
        coi_manifest,
        preds,
        scores=rows,
        explanations=explanations,
        comparisons=comparisons,
        examples=3,
    )
    html = report.save().read_text(encoding="utf-8")
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html
    assert "TINY RANDOM" in html and "tiny-llava (TINY RANDOM)" in html
    assert "gpt-4o (TINY RANDOM)" not in html
    for text in ("Table 1", "Figure 3", "McNemar", "Holm", "Example: ", "Logical", "Structural", "BERTScore"):
        assert text in html, text
    assert html.count("<table>") == 3 + 3  # Table 1, explanations, A/B, and one per example image
    pngs = list((tmp_path / "assets").glob("*per_prompt_accuracy*.png"))
    assert len(pngs) == 1 and pngs[0].stat().st_size > 1000
    r = rows[0]
    assert pct(r.verdict.logical_accuracy) in html


def test_section_computes_what_it_is_not_given(coi_manifest: Manifest, tmp_path: Path) -> None:
    preds = [p for p in predictions(coi_manifest) if p.run_id == "gpt-4o/coi_p1"]
    report = HtmlReport("coi", tmp_path)
    add_coi_section(report, coi_manifest, preds, examples=0, warnings=["check the prices"])
    html = report.render()
    assert "check the prices" in html and "McNemar" not in html  # one run: no A/B
    assert pct(float("nan")) == "–" and pct(0.5432) == "54.3"
