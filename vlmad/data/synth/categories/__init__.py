"""Registry of the procedural categories: name -> :class:`~vlmad.data.synth.base.Category` subclass.

One module per category; each is modelled on the MVTec LOCO category of the same name.
"""

from __future__ import annotations

from vlmad.data.synth.base import Category
from vlmad.data.synth.categories.breakfast_box import BreakfastBox
from vlmad.data.synth.categories.juice_bottle import JuiceBottle
from vlmad.data.synth.categories.pushpins import Pushpins
from vlmad.data.synth.categories.screw_bag import ScrewBag
from vlmad.data.synth.categories.splicing_connectors import SplicingConnectors

CATEGORIES: dict[str, type[Category]] = {
    c.name: c for c in (BreakfastBox, JuiceBottle, Pushpins, ScrewBag, SplicingConnectors)
}


def get_category(name: str) -> Category:
    """An instance of the category called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return CATEGORIES[name]()
    except KeyError:
        raise KeyError(f"unknown category {name!r}; known: {', '.join(CATEGORIES)}") from None
