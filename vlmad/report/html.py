"""A small self-contained HTML report: headings, notes, tables, figures and image grids.

Images are written as files into ``<report folder>/assets/`` and linked relatively, so the report folder can
be copied as a whole. Every text that reaches the page is escaped (text from datasets and models is
untrusted). Hand-written because no maintained library renders this kind of static report without a
template engine or a server; it is a few string joins.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1.05rem;margin:1.2rem 0 .4rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.25rem .6rem}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3rem 0}
.note{padding:.5rem .8rem;border-left:4px solid #888;background:#f7f7f7;margin:.6rem 0}
.note.warning{border-color:#d80;background:#fff6e5}.note.error{border-color:#c00;background:#ffecec}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px}
.card{overflow-wrap:anywhere;border:1px solid #ddd;border-radius:6px;padding:6px;font-size:.82rem}
.card img{width:100%;image-rendering:auto;border-radius:3px}.card .t{font-weight:600;margin:.2rem 0}
.tag{display:inline-block;border-radius:3px;padding:0 .3rem;font-size:.75rem;color:#fff}
.tag.good{background:#2a7}.tag.logical{background:#a3c}.tag.structural{background:#d52}.tag.anomaly{background:#c33}
figure{margin:1rem 0}figcaption{font-size:.85rem;color:#555}
"""


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class Card:
    """One image in a grid: the picture, a title, a label tag and a caption (all text escaped)."""

    image: np.ndarray
    title: str
    caption: str = ""
    tag: str = ""


class HtmlReport:
    """Collects sections and writes ``<folder>/<name>.html`` with its assets beside it."""

    def __init__(self, title: str, folder: str | Path) -> None:
        self.title = title
        self.folder = Path(folder)
        self.assets = self.folder / "assets"
        self._parts: list[str] = []
        self._n = 0

    # ------------------------------------------------------------------ building blocks
    def heading(self, text: str) -> None:
        """A section heading."""
        self._parts.append(f"<h2>{html.escape(text)}</h2>")

    def subheading(self, text: str) -> None:
        """A heading inside a section."""
        self._parts.append(f"<h3>{html.escape(text)}</h3>")

    def paragraph(self, text: str) -> None:
        """A paragraph of plain text."""
        self._parts.append(f"<p>{html.escape(text)}</p>")

    def note(self, text: str, level: str = "info") -> None:
        """A highlighted note; ``level`` is info, warning or error."""
        lvl = level if level in ("info", "warning", "error") else "info"
        self._parts.append(f'<div class="note {lvl}">{html.escape(text)}</div>')

    def table(self, header: list[str], rows: list[list[Any]], caption: str = "") -> None:
        """A table; numbers are right-aligned, floats shown with 3 decimals."""

        def cell(v: Any) -> str:
            if isinstance(v, bool) or not isinstance(v, int | float):
                return f"<td>{html.escape(str(v))}</td>"
            return f'<td class="num">{v:.3f}</td>' if isinstance(v, float) else f'<td class="num">{v}</td>'

        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self._parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, path: str | Path, caption: str = "") -> None:
        """Link an image file already written into the assets folder (e.g. a matplotlib plot)."""
        rel = Path(path).resolve().relative_to(self.folder.resolve()).as_posix()
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(
            f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}">{cap}</figure>'
        )

    def grid(self, cards: list[Card], max_side: int = 256) -> None:
        """A grid of image cards; images are downscaled to ``max_side`` and written as PNG assets."""
        items = []
        for c in cards:
            rel = self.save_asset(c.image, max_side=max_side)
            tag = f'<span class="tag {html.escape(c.tag)}">{html.escape(c.tag)}</span> ' if c.tag else ""
            items.append(
                f'<div class="card"><img src="{rel}" alt="{html.escape(c.title)}">'
                f'<div class="t">{tag}{html.escape(c.title)}</div><div>{html.escape(c.caption)}</div></div>'
            )
        self._parts.append(f'<div class="grid">{"".join(items)}</div>')

    def asset_path(self, stem: str, suffix: str = ".png") -> Path:
        """A new file path in the assets folder (created), for plots written by other code."""
        self.assets.mkdir(parents=True, exist_ok=True)
        self._n += 1
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60]
        return self.assets / f"{self._n:04d}_{safe}{suffix}"

    def save_figure(self, fig: Any, stem: str, dpi: int | None = None) -> Path:
        """Write a matplotlib figure as a PNG asset, close it, and return its path."""
        path = self.asset_path(stem)
        fig.savefig(path, dpi=dpi or "figure")
        pyplot().close(fig)
        return path

    def save_asset(self, image: np.ndarray, max_side: int = 256, stem: str = "img") -> str:
        """Write an RGB image as a PNG asset (downscaled to ``max_side``); returns its relative link."""
        h, w = image.shape[:2]
        if max(h, w) > max_side:
            s = max_side / max(h, w)
            image = cv2.resize(
                image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA
            )
        path = self.asset_path(stem)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return path.relative_to(self.folder).as_posix()

    # ------------------------------------------------------------------ output
    def render(self) -> str:
        """The whole page as a string."""
        t = html.escape(self.title)
        body = "\n".join(self._parts)
        return (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
            f"<style>{_CSS}</style></head><body><h1>{t}</h1>\n{body}\n</body></html>\n"
        )

    def save(self, name: str = "report.html") -> Path:
        """Write the page atomically into the report folder; returns its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.render(), encoding="utf-8")
        tmp.replace(path)
        return path
