from __future__ import annotations

from pathlib import Path

import numpy as np

from vlmad.report.html import Card, HtmlReport
from vlmad.report.overlay import outline_masks


def test_text_is_escaped_and_assets_are_linked(tmp_path: Path) -> None:
    r = HtmlReport("t <b>", tmp_path)
    evil = '<script>alert("x")</script>'
    r.paragraph(evil)
    r.note(evil, "warning")
    r.table(["a", "<h>"], [[evil, 1.23456, 7]])
    r.grid([Card(np.zeros((300, 300, 3), np.uint8), title=evil, caption=evil, tag="good")])
    page = r.save().read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "1.235" in page and ">7<" in page
    links = [p for p in (tmp_path / "assets").iterdir()]
    assert len(links) == 1 and f'src="assets/{links[0].name}"' in page


def test_outline_draws_only_on_the_mask_border() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    m = np.zeros((64, 64), bool)
    m[20:40, 20:40] = True
    out = outline_masks(img, [m], thickness=1, halo=False)
    changed = out.any(axis=2)
    assert changed[20, 30] and changed[30, 20]  # on the border
    assert not changed[30, 30] and not changed[5, 5]  # not inside, not far outside
    assert img.sum() == 0  # input untouched
