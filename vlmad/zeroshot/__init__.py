"""CLIP zero-shot baselines: WinCLIP (+), AnomalyCLIP and MuSc, on the same records and metrics as the rest.

``build(name, clip, **options)`` makes a registered method (``names()`` lists them); ``Clip.load(source)``
reads a transformers CLIP from a Hub id or a folder; ``run_zeroshot`` (in :mod:`vlmad.zeroshot.run`) scores
a dataset. Importing this package is cheap: torch and transformers load on first use.
"""

from vlmad.zeroshot.base import ZeroShotMethod, build, method_class, names
from vlmad.zeroshot.clip import Clip, ZeroShotError, make_tiny_clip

__all__ = ["Clip", "ZeroShotError", "ZeroShotMethod", "build", "make_tiny_clip", "method_class", "names"]
