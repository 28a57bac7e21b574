"""CNN patch features for the detectors: any timm or torchvision backbone, any subset of layers 1-4.

- ``load_backbone(name, layers, weights, seed)`` builds the truncated network (only up to the deepest
  layer asked for) and says where its weights came from in a :class:`BackboneInfo`:
  a local file (safetensors, or ``.pth``/``.pt``/``.bin`` read with ``torch.load(weights_only=True)``),
  the library's own pretrained download (timm / torchvision) when the network allows, or a random
  initialisation with a fixed seed. A random backbone is flagged (``info.random``) so every output can say
  so; ``info.fingerprint`` (a hash of the parameters) lets a saved detector check it gets the same network.
- ``FeatureExtractor`` turns RGB uint8 images into feature maps: resize to ``image_size`` (square),
  ImageNet normalisation, batched forward on GPU when present, per layer local neighbourhood averaging
  (the ``aggregate`` x ``aggregate`` window of PatchCore/PaDiM), upsampling of deeper layers to the
  finest chosen layer, channel concatenation.

Backbone names: a timm name (``wide_resnet50_2``, ``resnet18``, ``efficientnet_b0``...) or
``torchvision/<name>`` for a torchvision model with ``layer1``..``layer4`` (the ResNet family).
Layer ``k`` is the ``k``-th stage (for ResNets ``layer{k}``, stride ``2**(k+1)``).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmad.errors import ConfigError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
TORCHVISION_PREFIX = "torchvision/"


class BackboneError(ConfigError):
    """A backbone name, layer choice or weights file that cannot be used."""


@dataclass(frozen=True)
class BackboneInfo:
    """What a detector's features came from; stored with every saved model and prediction."""

    name: str
    layers: tuple[int, ...]
    weights: str  # "random" | "pretrained" | a file path, as resolved
    weights_detail: str  # human-readable: the file and its sha256, the pretrained tag, or the seed
    random: bool
    seed: int
    fingerprint: str  # sha256 of the truncated network's parameters and buffers
    channels: tuple[int, ...]  # channels of each chosen layer
    strides: tuple[int, ...]  # input pixels per feature cell of each chosen layer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def warning(self) -> str | None:
        """The loud message every output carries when the backbone is random, else None."""
        if not self.random:
            return None
        return (
            f"RANDOM BACKBONE: {self.name} is randomly initialised (seed {self.seed}), not pretrained "
            f"({self.weights_detail}); its scores show the method runs, not how well it detects."
        )


def parse_layers(layers: Sequence[int | str] | int | str) -> tuple[int, ...]:
    """``(2, 3)``, ``["layer2", "layer3"]``, ``"2,3"`` or ``"2+3"`` -> ``(2, 3)``; each in 1-4, sorted."""
    if isinstance(layers, int):
        items: list[int | str] = [layers]
    elif isinstance(layers, str):
        items = [p for p in layers.replace("+", ",").split(",") if p.strip()]
    else:
        items = list(layers)
    out = set()
    for item in items:
        text = str(item).strip().lower().removeprefix("layer")
        if not text.isdigit() or not 1 <= int(text) <= 4:
            raise BackboneError(f"layer {item!r} is not one of 1, 2, 3, 4 (layer1..layer4)")
        out.add(int(text))
    if not out:
        raise BackboneError("choose at least one layer (1-4)")
    return tuple(sorted(out))


def _fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a torch pickle read with ``weights_only=True``.

    A checkpoint nesting its weights under ``state_dict`` / ``model`` is unwrapped, and a ``module.``
    prefix (from DataParallel) is dropped.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"{path}: backbone weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt files raise many types (SafetensorError, UnpicklingError, EOFError...)
        raise BackboneError(f"{path}: cannot read backbone weights ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether a pretrained download can be tried at all (HF_HUB_OFFLINE=1 or no network -> False)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("VLMAD_OFFLINE"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _build_timm(name: str, layers: tuple[int, ...], pretrained: bool) -> torch.nn.Module:
    import timm

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise BackboneError(f"unknown backbone {name!r} (a timm model name, or torchvision/<name>)")
    kwargs: dict[str, Any] = {"features_only": True, "out_indices": layers, "pretrained": pretrained}
    if not pretrained:
        # a zero-initialised last BN per residual block (timm's default) makes a random ResNet an identity
        # map between downsamplings; random features are more informative with every branch active
        try:
            return timm.create_model(name, zero_init_last=False, **kwargs)
        except TypeError:
            pass
    try:
        return timm.create_model(name, **kwargs)
    except (IndexError, AssertionError, ValueError) as e:
        raise BackboneError(f"backbone {name!r} has no feature stages {layers}: {e}") from None


def _build_torchvision(name: str, layers: tuple[int, ...], pretrained: bool) -> torch.nn.Module:
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except ValueError:
        raise BackboneError(f"unknown torchvision backbone {name!r}") from None
    if not all(hasattr(model, f"layer{k}") for k in layers):
        raise BackboneError(f"torchvision/{name} has no layer1..layer4; use a ResNet-style model")
    return create_feature_extractor(model, return_nodes={f"layer{k}": str(k) for k in layers})


class _Stages:
    """Calls a built network and returns its chosen stages as a list (timm returns a list already)."""

    def __init__(self, net: torch.nn.Module, torchvision: bool) -> None:
        self.net = net
        self.torchvision = torchvision

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.net(x)
        return list(out.values()) if self.torchvision else list(out)


def load_backbone(
    name: str = "wide_resnet50_2",
    layers: Sequence[int | str] | str = (2, 3),
    weights: str | Path = "auto",
    seed: int = 0,
) -> tuple[torch.nn.Module, BackboneInfo]:
    """Build the feature network (eval mode, on CPU) and describe it.

    ``weights``: a file path; ``"pretrained"`` (the library's download, an error when unavailable);
    ``"random"`` (seeded random initialisation, flagged as random); ``"auto"`` (pretrained when it can be
    loaded from the local cache or downloaded, otherwise random, flagged as random).
    """
    import torch

    layer_ids = parse_layers(layers)
    is_tv = name.startswith(TORCHVISION_PREFIX)
    arch = name.removeprefix(TORCHVISION_PREFIX)
    build = _build_torchvision if is_tv else _build_timm
    weights = str(weights)
    source = weights
    detail = ""
    net = None
    if weights in ("auto", "pretrained"):
        if weights == "pretrained" or hub_reachable():
            try:
                net = build(arch, layer_ids, True)
                source, detail = "pretrained", f"{'torchvision' if is_tv else 'timm'} default weights"
            except BackboneError:
                raise
            except Exception as e:  # network and hub failures come in many types
                if weights == "pretrained":
                    raise BackboneError(f"cannot load pretrained weights for {name}: {e}") from None
                detail = f"pretrained weights unavailable: {type(e).__name__}"
        else:
            detail = "pretrained weights unavailable: no network"
        if net is None:
            source = "random"
    elif weights != "random":
        if Path(weights).suffix not in WEIGHT_SUFFIXES:
            raise BackboneError(
                f"weights {weights!r}: expected auto, pretrained, random or a weights file "
                f"({', '.join(WEIGHT_SUFFIXES)})"
            )
        state = read_state_dict(weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build(arch, layer_ids, False)
        own = net.state_dict()
        if is_tv:  # create_feature_extractor keeps the original parameter names
            pass
        missing = [k for k in own if k not in state]
        wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or wrong:
            what = f"{len(missing)} missing (e.g. {missing[0]})" if missing else ""
            if wrong:
                what += (", " if what else "") + f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})"
            raise BackboneError(f"{weights}: does not fit backbone {name} layers {layer_ids}: {what}")
        net.load_state_dict({k: state[k] for k in own}, strict=True)
        source, detail = str(Path(weights).resolve()), f"file sha256 {file_sha256(weights)[:16]}"
    if net is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build(arch, layer_ids, False)
        detail = (detail + "; " if detail else "") + f"random init, seed {seed}"
    net.eval()
    with torch.inference_mode():
        probe = _Stages(net, is_tv)(torch.zeros(1, 3, 64, 64))
    info = BackboneInfo(
        name=name,
        layers=layer_ids,
        weights=source,
        weights_detail=detail,
        random=source == "random",
        seed=seed,
        fingerprint=_fingerprint(net),
        channels=tuple(int(f.shape[1]) for f in probe),
        strides=tuple(64 // int(f.shape[-1]) for f in probe),
    )
    return net, info


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else ``"cuda"`` when a GPU is present, else ``"cpu"``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class FeatureExtractor:
    """Patch features of RGB uint8 images from a CNN backbone.

    ``embed(images)`` returns a ``(B, sum(channels), h, w)`` float32 tensor on ``device`` where ``h, w``
    is the grid of the finest chosen layer at ``image_size``: each layer's features averaged over an
    ``aggregate`` x ``aggregate`` neighbourhood (1 = none), deeper layers upsampled bilinearly.
    """

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[int | str] | str = (2, 3),
        weights: str | Path = "auto",
        seed: int = 0,
        image_size: int = 256,
        aggregate: int = 3,
        batch_size: int = 16,
        device: str | None = None,
    ) -> None:
        import torch

        if image_size < 32:
            raise ConfigError(f"image_size {image_size} is too small for a CNN backbone (need >= 32)")
        if aggregate < 1 or aggregate % 2 == 0:
            raise ConfigError(f"aggregate must be an odd window size >= 1, got {aggregate}")
        self.image_size = int(image_size)
        self.aggregate = int(aggregate)
        self.batch_size = int(batch_size)
        self.device = pick_device(device)
        net, self.info = load_backbone(backbone, layers, weights, seed)
        self.net = net.to(self.device)
        self._stages = _Stages(self.net, backbone.startswith(TORCHVISION_PREFIX))
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @property
    def dim(self) -> int:
        """Channels of :meth:`embed`'s output."""
        return sum(self.info.channels)

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` of :meth:`embed`'s output."""
        n = -(-self.image_size // self.info.strides[0])
        return n, n

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Resize to ``image_size`` square (area filter when shrinking), scale to [0, 1], normalise."""
        import cv2
        import torch

        s = self.image_size
        batch = np.stack(
            [
                im
                if im.shape[:2] == (s, s)
                else cv2.resize(
                    im, (s, s), interpolation=cv2.INTER_AREA if im.shape[0] > s else cv2.INTER_LINEAR
                )
                for im in images
            ]
        )
        x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self._mean) / self._std

    def layer_features(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """The chosen layers' raw feature maps for one batch of images."""
        import torch

        with torch.inference_mode():
            return self._stages(self.preprocess(images))

    def embed(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Aggregated, upsampled, concatenated features of one batch (see the class docstring)."""
        import torch
        import torch.nn.functional as F

        feats = self.layer_features(images)
        with torch.inference_mode():
            size = feats[0].shape[-2:]
            out = []
            for f in feats:
                if self.aggregate > 1:
                    f = F.avg_pool2d(f, self.aggregate, stride=1, padding=self.aggregate // 2)
                if f.shape[-2:] != size:
                    f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                out.append(f)
            return torch.cat(out, dim=1).float()

    def iter_embed(
        self, images: Sequence[np.ndarray], batch_size: int | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, embed(images[start:start + batch]))`` for consecutive batches."""
        step = batch_size or self.batch_size
        for start in range(0, len(images), step):
            yield start, self.embed(images[start : start + step])
