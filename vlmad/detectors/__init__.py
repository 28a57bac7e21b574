"""Anomaly detectors that learn from normal images: ``fit(normal_images)``, ``predict(images)``."""
