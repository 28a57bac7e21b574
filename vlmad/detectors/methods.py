"""Imports every detector module so that each registers its method name (see ``base.register``)."""

from vlmad.detectors import (  # noqa: F401
    efficientad,
    padim,
    patchcore,
    pixel_gaussian,
    ridge,
    spade,
)
