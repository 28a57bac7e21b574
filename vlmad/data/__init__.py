"""Datasets: sample records and manifests, readers for MVTec AD / MVTec LOCO AD / VisA / plain folders,
image and mask loading with validation, and the LOCO-style generator in :mod:`vlmad.data.synth`."""

from vlmad.data.images import Problem, load_image, load_mask, load_masks, mask_values
from vlmad.data.readers import detect_layout, read_dataset
from vlmad.data.validate import validate_dataset, validate_manifest
from vlmad.records import DatasetInfo, DefectConfig, Manifest, Sample

__all__ = [
    "DatasetInfo",
    "DefectConfig",
    "Manifest",
    "Problem",
    "Sample",
    "detect_layout",
    "load_image",
    "load_mask",
    "load_masks",
    "mask_values",
    "read_dataset",
    "validate_dataset",
    "validate_manifest",
]
