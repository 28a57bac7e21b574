"""Anomaly detectors that learn from normal images: ``fit(normal_images)``, ``predict(images)``.

``build(name, **options)`` makes any registered method (``names()`` lists them); ``Detector.load(dir)``
reads a saved one. Importing this package is cheap: torch and the methods load on first use.
"""

from vlmad.detectors.base import Detector, DetectorError, build, detector_class, names

__all__ = ["Detector", "DetectorError", "build", "detector_class", "names"]
