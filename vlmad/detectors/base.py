"""The detector contract, the registry of method names, and saving/loading fitted detectors.

Every detector is a scikit-learn style estimator (see ``../shared/design.md``):

- constructor arguments are plain values (str, int, float, bool, tuples) stored unchanged under the same
  name; fitted state ends in ``_``;
- ``fit(images)`` on normal images only (``(H, W, 3)`` uint8 RGB arrays or image paths), all of one size;
- ``predict(images) -> (scores, maps)``: a float64 score per image and a float32 anomaly map per image at
  that image's own resolution; higher means more anomalous;
- ``save(dir)`` writes ``detector.json`` (method, parameters, fitted metadata, backbone, the weights
  file's sha256) and ``weights.safetensors``; ``Detector.load(dir)`` rebuilds it and predicts exactly what
  the fitted detector did.

A method registers itself with ``@register``; ``build(name, **options)`` and the CLI use the one list.
Subclasses implement ``_fit(images)``, ``_predict(images) -> (scores, maps at the model's size)`` and
``_state() / _set_state()`` for their fitted tensors.
"""

from __future__ import annotations

import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from vlmad.errors import ConfigError, VlmadError

if TYPE_CHECKING:
    import torch

    from vlmad.detectors.features import BackboneInfo, FeatureExtractor

FORMAT = "vlmad-detector"
FORMAT_VERSION = 1
SETTINGS_FILE = "detector.json"
WEIGHTS_FILE = "weights.safetensors"

ImageInput = np.ndarray | str | Path
Progress = Callable[[int, int], None]


class DetectorError(VlmadError):
    """A detector cannot fit, predict, save or load: bad images, a corrupt model, a mismatched backbone."""


_REGISTRY: dict[str, type[Detector]] = {}
D = TypeVar("D", bound="type[Detector]")


def register(cls: D) -> D:
    """Class decorator: make ``cls`` buildable by its ``method`` name."""
    _REGISTRY[cls.method] = cls
    return cls


def _load_all() -> None:
    """Import every method module once so that each registers itself."""
    from vlmad.detectors import methods  # noqa: F401  (imports for their registration side effect)


def names() -> list[str]:
    """The registered method names, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def detector_class(name: str) -> type[Detector]:
    """The class registered as ``name``; an unknown name is a ConfigError listing the known ones."""
    _load_all()
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ConfigError(f"unknown detector {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def build(name: str, **options: Any) -> Detector:
    """A new, unfitted detector of method ``name`` with ``options`` as constructor arguments.

    Unknown options are a ConfigError naming the accepted ones.
    """
    cls = detector_class(name)
    accepted = cls.param_names()
    bad = sorted(set(options) - set(accepted))
    if bad:
        raise ConfigError(f"{cls.method} has no option {', '.join(bad)}; its options: {', '.join(accepted)}")
    return cls(**options)


def as_image(item: ImageInput, what: str = "image") -> np.ndarray:
    """An ``(H, W, 3)`` uint8 array from an array or an image path (errors name the file)."""
    if isinstance(item, str | Path):
        from vlmad.data.images import load_image

        return load_image(item)
    arr = np.asarray(item)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DetectorError(f"{what}: expected an (H, W, 3) uint8 RGB array, got {arr.dtype} {arr.shape}")
    return arr


def _name(items: Sequence[ImageInput], i: int) -> str:
    item = items[i]
    return str(item) if isinstance(item, str | Path) else f"image {i}"


class Detector(ABC):
    """Base class of the patch detectors (see the module docstring for the contract)."""

    method: ClassVar[str] = ""  # registry name, e.g. "patchcore"
    label: ClassVar[str] = ""  # display name, e.g. "PatchCore"
    uses_backbone: ClassVar[bool] = True  # whether ``self.features_`` is a FeatureExtractor

    # ---- parameters -------------------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """Constructor arguments as stored (JSON-serialisable plain values)."""
        out = {}
        for p in self.param_names():
            v = getattr(self, p)
            out[p] = list(v) if isinstance(v, tuple) else v
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _require_positive_ints(self, *names: str) -> None:
        """ConfigError naming the first of ``names`` whose value is not an integer >= 1."""
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{self.method}: {name} must be a positive integer, got {v!r}")

    # ---- backbone ---------------------------------------------------------------------------------
    def _make_features(self) -> FeatureExtractor:
        """The feature extractor described by the standard backbone parameters of ``self``."""
        from vlmad.detectors.features import FeatureExtractor

        return FeatureExtractor(
            backbone=self.backbone,  # type: ignore[attr-defined]
            layers=self.layers,  # type: ignore[attr-defined]
            weights=self.weights,  # type: ignore[attr-defined]
            seed=self.seed,  # type: ignore[attr-defined]
            image_size=self.image_size,  # type: ignore[attr-defined]
            aggregate=getattr(self, "aggregate", 3),
            batch_size=getattr(self, "batch_size", 16),
            device=getattr(self, "device", None),
        )

    @property
    def backbone_info(self) -> BackboneInfo | None:
        """Where the features came from (None before fitting or for backbone-free methods)."""
        feats = getattr(self, "features_", None)
        return feats.info if feats is not None else getattr(self, "_backbone_info", None)

    @property
    def warnings(self) -> list[str]:
        """Messages every output of this detector must show (a random backbone, a distilled teacher)."""
        info = self.backbone_info
        out = [info.warning] if info is not None and info.warning else []
        return out + list(getattr(self, "extra_warnings_", []))

    def describe(self) -> dict[str, Any]:
        """Method, parameters, backbone and warnings: what goes into predictions' metadata and reports."""
        info = self.backbone_info
        return {
            "method": self.method,
            "label": self.label,
            "params": self.get_params(),
            "backbone": info.to_dict() if info is not None else None,
            "random_backbone": bool(info.random) if info is not None else False,
            "warnings": self.warnings,
        }

    # ---- fit / predict ------------------------------------------------------------------------------
    def fit(self, images: Sequence[ImageInput], progress: Progress | None = None) -> Detector:
        """Fit on normal images (arrays or paths) of one size; returns ``self``."""
        if len(images) == 0:
            raise DetectorError(f"{self.method}: cannot fit on zero images; give it normal training images")
        arrays = [as_image(im, _name(images, i)) for i, im in enumerate(images)]
        sizes: dict[tuple[int, int], int] = {}
        for a in arrays:
            sizes[a.shape[:2]] = sizes.get(a.shape[:2], 0) + 1
        if len(sizes) > 1:
            listed = ", ".join(f"{w}x{h} ({n} images)" for (h, w), n in sorted(sizes.items()))
            first = next(i for i, a in enumerate(arrays) if a.shape[:2] != arrays[0].shape[:2])
            raise DetectorError(
                f"{self.method}: training images have mixed sizes: {listed} (first differing: "
                f"{_name(images, first)}); fit one detector per image size or resize them first"
            )
        self._fit(arrays, progress)
        self.input_size_ = tuple(int(v) for v in arrays[0].shape[:2])  # set last: a failed fit is not fitted
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "input_size_"):
            raise DetectorError(f"{self.method}: predict before fit; call fit() or load a saved detector")

    def predict(
        self, images: Sequence[ImageInput], progress: Progress | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores (float64, one per image) and float32 maps at each image's own size.

        Every image must have the size the detector was fitted on (a per-position model is meaningless
        on another geometry); a different size is a DetectorError naming the image.
        """
        self._check_fitted()
        arrays = []
        for i, im in enumerate(images):
            a = as_image(im, _name(images, i))
            if tuple(a.shape[:2]) != tuple(self.input_size_):
                h, w = self.input_size_
                raise DetectorError(
                    f"{_name(images, i)}: is {a.shape[1]}x{a.shape[0]} but this {self.method} model was "
                    f"fitted on {w}x{h} images; fit a model on images of this size"
                )
            arrays.append(a)
        if not arrays:
            return np.zeros(0), []
        scores, maps = self._predict(arrays, progress)
        return np.asarray(scores, dtype=np.float64), [
            resize_to(m, a.shape[:2]) for m, a in zip(maps, arrays, strict=True)
        ]

    def predict_one(self, image: ImageInput) -> tuple[float, np.ndarray]:
        """``(score, map)`` of one image."""
        scores, maps = self.predict([image])
        return float(scores[0]), maps[0]

    @abstractmethod
    def _fit(self, images: list[np.ndarray], progress: Progress | None) -> None:
        """Fit on RGB uint8 arrays of one size (already checked)."""

    @abstractmethod
    def _predict(
        self, images: list[np.ndarray], progress: Progress | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores and maps (any size; :meth:`predict` resizes them to each input's size)."""

    # ---- persistence --------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Fitted tensors and JSON-able fitted metadata (besides ``input_size_``); a detector that does not
        override it cannot be saved."""
        raise DetectorError(f"{self.method}: this detector cannot be saved")

    def _set_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what :meth:`_state` returned; raise ValueError when it does not fit the parameters."""
        raise DetectorError(f"{self.method}: this detector cannot be loaded")

    def save(self, directory: str | Path) -> Path:
        """Write ``detector.json`` and ``weights.safetensors`` to ``directory``; returns the directory."""
        from safetensors.torch import save_file

        from vlmad import __version__
        from vlmad.detectors.features import file_sha256

        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors, meta = self._state()
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        weights = directory / WEIGHTS_FILE
        tmp = weights.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "method": self.method})
        tmp.replace(weights)
        settings = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "vlmad_version": __version__,
            **self.describe(),
            "input_size": list(self.input_size_),
            "fitted": meta,
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": file_sha256(weights),
        }
        (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        return directory

    @staticmethod
    def load(directory: str | Path, device: str | None = None) -> Detector:
        """Rebuild a saved detector of any method; every problem is a DetectorError naming the file."""
        from vlmad.detectors.features import file_sha256

        directory = Path(directory)
        settings_path = directory / SETTINGS_FILE
        if not settings_path.is_file():
            raise DetectorError(f"{settings_path}: not found; is {directory} a saved vlmad detector?")
        try:
            settings = json.loads(settings_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DetectorError(f"{settings_path}: corrupted settings ({e})") from None
        if not isinstance(settings, dict) or settings.get("format") != FORMAT:
            raise DetectorError(f"{settings_path}: not a vlmad detector settings file")
        if settings.get("format_version", 0) > FORMAT_VERSION:
            raise DetectorError(
                f"{settings_path}: saved by a newer vlmad (format {settings['format_version']}); "
                "upgrade vlmad"
            )
        try:
            cls = detector_class(str(settings["method"]))
            params = dict(settings["params"])
            input_size = tuple(int(v) for v in settings["input_size"])
            meta = settings.get("fitted", {})
            expected_sha = str(settings["weights_sha256"])
        except (KeyError, TypeError, ValueError) as e:
            raise DetectorError(f"{settings_path}: corrupted settings (missing or bad {e})") from None
        except ConfigError as e:
            raise DetectorError(f"{settings_path}: {e}") from None
        weights = directory / str(settings.get("weights_file", WEIGHTS_FILE))
        if not weights.is_file():
            raise DetectorError(f"{weights}: weights file not found")
        if file_sha256(weights) != expected_sha:
            raise DetectorError(
                f"{weights}: corrupted (its sha256 differs from the one saved in {SETTINGS_FILE}); fit again"
            )
        try:
            from safetensors.torch import load_file

            tensors = load_file(str(weights))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise DetectorError(f"{weights}: cannot read ({type(e).__name__}: {e})") from None
        if device is not None and "device" in cls.param_names():
            params["device"] = device
        try:
            det = cls(**params)
        except TypeError as e:
            raise DetectorError(f"{settings_path}: parameters do not match {cls.method}: {e}") from None
        det.input_size_ = input_size
        saved_backbone = settings.get("backbone")
        if cls.uses_backbone:
            det.features_ = det._make_features()
            _check_backbone(det.features_.info, saved_backbone, settings_path)
        try:
            det._set_state(tensors, meta)
        except (KeyError, ValueError, RuntimeError) as e:
            raise DetectorError(f"{weights}: does not match the saved settings ({e})") from None
        return det


def _check_backbone(info: BackboneInfo, saved: dict[str, Any] | None, where: Path) -> None:
    """The rebuilt backbone must be the one the model was fitted with (same architecture and weights)."""
    if not saved:
        raise DetectorError(f"{where}: no backbone recorded")
    if saved.get("name") != info.name or tuple(saved.get("layers", ())) != info.layers:
        raise DetectorError(
            f"{where}: fitted on backbone {saved.get('name')} layers {saved.get('layers')}, "
            f"but its settings now build {info.name} layers {list(info.layers)}"
        )
    if saved.get("fingerprint") != info.fingerprint:
        raise DetectorError(
            f"{where}: the backbone weights differ from the ones the model was fitted with "
            f"(fitted: {saved.get('weights')} {saved.get('weights_detail')}, fingerprint "
            f"{saved.get('fingerprint')}; now: {info.weights} {info.weights_detail}, fingerprint "
            f"{info.fingerprint}); use the same weights or fit again"
        )


def resize_to(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2-D map resized bilinearly to ``(H, W)`` = ``size`` (unchanged when it already is), float32."""
    import cv2

    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape == tuple(size):
        return amap
    return cv2.resize(amap, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def upsample_smooth(low: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``(B, h, w)`` patch scores -> ``(B, size, size)`` maps: bilinear upsampling, then a Gaussian blur of
    ``sigma`` pixels (0 = none), as PatchCore, PaDiM and SPADE post-process their maps."""
    import torch.nn.functional as F

    maps = F.interpolate(low[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    if sigma > 0:
        maps = gaussian_blur(maps, sigma)
    return maps[:, 0]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``(B, C, H, W)`` tensor, kernel radius ``4 sigma``, reflect padding."""
    import torch
    import torch.nn.functional as F

    radius = max(1, int(4.0 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:  # tiny maps: reflect padding cannot exceed the size; fall back to replicate
        x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    else:
        x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
