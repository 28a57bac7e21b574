"""SPADE (Cohen & Hoshen 2020): kNN retrieval of the nearest normal images, then pixel kNN against them.

1. Image level: every image gets a global feature, the global average pool of the *deepest chosen* stage
   (the paper pools the network's last stage, layer4; here the backbone is truncated at the deepest
   layer asked for, so with the default layers 1-3 it is layer3's pool). A test image's
   ``K = min(top_k_images, n_train)`` nearest training images (Euclidean) are its normal neighbours.
2. Pixel level: the test image's patch features (every chosen stage, pooled over ``aggregate`` and
   upsampled bilinearly to the finest stage's grid, concatenated: the paper's feature pyramid) are matched
   against the *gallery* of all patch features of those ``K`` images; a patch's score is the mean
   Euclidean distance to its ``k_pixel`` (the paper's kappa, 1) nearest gallery features. The score grid
   is upsampled bilinearly to ``image_size`` and blurred with a Gaussian of ``sigma`` (4) pixels.
3. Image score: ``image_score="knn"`` (default, the paper's image-level detector) is the mean Euclidean
   distance of the global feature to its ``K`` nearest training images (the paper writes the squared
   distance; the public PyTorch reproductions, byungjae89/SPADE-pytorch and ind_knn_ad, average plain
   distances, and so do we); ``"map_max"`` is the maximum of the anomaly map (anomalib's convention for
   map-based detectors).

Stored state: the training images' global features and their per-stage patch features at each stage's
*native* resolution (the gallery is upsampled and concatenated on the fly for the ``K`` chosen images
only, with the same operations as the test features), which is 4x smaller than storing the upsampled
concatenation. wide_resnet50_2 at 256 px, layers 1-3: ``256*64**2 + 512*32**2 + 1024*16**2`` = 1.84 M
numbers = 7.3 MB per training image in float32 (``gallery_dtype="float16"``: 3.7 MB; queries are then
rounded to float16 too, so identical images still match exactly); 300 images -> 2.2 GB, kept on the
backbone's device. At prediction each test image assembles a ``K*h*w x D`` gallery (K=50, 64x64,
D=1792: 1.5 GB float32) and searches it with :class:`~vlmad.detectors.knn.NearestNeighbors`
(``knn_backend``: faiss on CPU when installed, else blocked torch matmuls; on a GPU, torch;
``knn_precision``: ``"auto"`` screens the torch search with a certified bfloat16 product where that is
fast, which still finds the exact neighbours but holds a bfloat16 copy of the gallery, half its size;
``"float32"`` does not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vlmad.detectors.base import Detector, DetectorError, Progress, register, upsample_smooth
from vlmad.detectors.knn import PRECISIONS as KNN_PRECISIONS
from vlmad.errors import ConfigError

if TYPE_CHECKING:
    import torch

IMAGE_SCORES = ("knn", "map_max")
KNN_BACKENDS = ("auto", "faiss", "torch")
GALLERY_DTYPES = ("float32", "float16")
# largest query-block x gallery distance matrix the torch backend builds at once (floats)
MAX_BLOCK_ELEMENTS = 2**26


@register
class SPADE(Detector):
    """SPADE: nearest normal images by a global feature, then patch kNN against their features.

    Fitted state: ``global_`` ``(N, C_last)``, ``pyramid_`` (one ``(N, C_k, h_k, w_k)`` tensor per chosen
    stage, in ``gallery_dtype``), ``n_train_``. See the module docstring for the method and memory.
    """

    method = "spade"
    label = "SPADE"

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: tuple[int, ...] = (1, 2, 3),
        weights: str = "auto",
        seed: int = 0,
        image_size: int = 256,
        aggregate: int = 1,
        batch_size: int = 16,
        device: str | None = None,
        top_k_images: int = 50,
        k_pixel: int = 1,
        sigma: float = 4.0,
        image_score: str = "knn",
        knn_backend: str = "auto",
        gallery_dtype: str = "float32",
        knn_precision: str = "auto",
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.seed = seed
        self.image_size = image_size
        self.aggregate = aggregate
        self.batch_size = batch_size
        self.device = device
        self.top_k_images = top_k_images
        self.k_pixel = k_pixel
        self.sigma = sigma
        self.image_score = image_score
        self.knn_backend = knn_backend
        self.gallery_dtype = gallery_dtype
        self.knn_precision = knn_precision

    # ---- parameters -----------------------------------------------------------------------------------
    def _check_params(self) -> None:
        self._require_positive_ints("top_k_images", "k_pixel", "batch_size")
        if not (isinstance(self.sigma, int | float) and self.sigma >= 0):
            raise ConfigError(f"spade: sigma must be >= 0 pixels (0 = no blur), got {self.sigma!r}")
        for name, allowed in (
            ("image_score", IMAGE_SCORES),
            ("knn_backend", KNN_BACKENDS),
            ("gallery_dtype", GALLERY_DTYPES),
            ("knn_precision", KNN_PRECISIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"spade: {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}"
                )
        if self.knn_precision == "bf16-screen" and self.knn_backend == "faiss":
            raise ConfigError(
                "spade: knn_precision 'bf16-screen' is for the torch search; "
                "use knn_backend='torch' or 'auto'"
            )

    def _dtype(self) -> torch.dtype:
        import torch

        return torch.float16 if self.gallery_dtype == "float16" else torch.float32

    def _stage_shapes(self) -> list[tuple[int, int, int]]:
        """``(channels, h, w)`` of each chosen stage's stored features at ``image_size``."""
        info = self.features_.info
        size = self.features_.image_size
        return [(c, -(-size // s), -(-size // s)) for c, s in zip(info.channels, info.strides, strict=True)]

    # ---- features -------------------------------------------------------------------------------------
    def _features(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(global (B, C_last) float32, per-stage pooled features in gallery_dtype)`` of one batch."""
        import torch
        import torch.nn.functional as F

        feats = self.features_.layer_features(images)
        with torch.inference_mode():
            glob = feats[-1].float().mean(dim=(2, 3))
            pyramid = []
            for f in feats:
                if self.aggregate > 1:
                    f = F.avg_pool2d(f, self.aggregate, stride=1, padding=self.aggregate // 2)
                pyramid.append(f.to(self._dtype()))
        return glob, pyramid

    @staticmethod
    def _patches(pyramid: list[torch.Tensor]) -> torch.Tensor:
        """Per-stage features ``(B, C_k, h_k, w_k)`` -> ``(B, h*w, sum C_k)`` float32 patch features on the
        finest grid (bilinear upsampling). Gallery and queries both go through here."""
        import torch
        import torch.nn.functional as F

        size = pyramid[0].shape[-2:]
        out = []
        for f in pyramid:
            f = f.float()
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            out.append(f)
        return torch.cat(out, dim=1).flatten(2).transpose(1, 2)

    def _k_images(self) -> int:
        return min(int(self.top_k_images), int(self.n_train_))

    def _image_index(self) -> Any:
        from vlmad.detectors.knn import NearestNeighbors

        return NearestNeighbors(
            self.global_,
            backend=self.knn_backend,  # type: ignore[arg-type]
            precision=self.knn_precision,  # type: ignore[arg-type]
        )

    def nearest_images(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The normal neighbours SPADE compares each image with: ``(distances, indices)``, both
        ``(len(images), K)`` with ``K = min(top_k_images, n_train)``, nearest first; indices are positions
        in the training list, distances Euclidean between global features."""
        from vlmad.detectors.base import as_image

        self._check_fitted()
        arrays = [as_image(im, f"image {i}") for i, im in enumerate(images)]
        for i, a in enumerate(arrays):
            if tuple(a.shape[:2]) != tuple(self.input_size_):
                raise DetectorError(
                    f"image {i}: is {a.shape[1]}x{a.shape[0]} but this spade model was fitted on "
                    f"{self.input_size_[1]}x{self.input_size_[0]} images"
                )
        index = self._image_index()
        dists, inds = [], []
        for start in range(0, len(arrays), self.batch_size):
            glob, _ = self._features(arrays[start : start + self.batch_size])
            d, i = index.search(glob, self._k_images())
            dists.append(d.double().cpu().numpy())
            inds.append(i.long().cpu().numpy())
        if not dists:
            k = self._k_images()
            return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
        return np.concatenate(dists), np.concatenate(inds)

    # ---- fit / predict --------------------------------------------------------------------------------
    def _fit(self, images: list[np.ndarray], progress: Progress | None) -> None:
        import torch

        self._check_params()
        self.features_ = self._make_features()
        globs: list[torch.Tensor] = []
        stages: list[list[torch.Tensor]] = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            glob, pyramid = self._features(batch)
            globs.append(glob)
            stages.append(pyramid)
            if progress:
                progress(min(start + len(batch), len(images)), len(images))
        self.global_ = torch.cat(globs)
        self.pyramid_ = [torch.cat(level) for level in zip(*stages, strict=True)]
        got = [tuple(level.shape[1:]) for level in self.pyramid_]
        if got != self._stage_shapes():
            raise DetectorError(
                f"spade: {self.backbone} gave stage shapes {got} at {self.image_size} px, not the "
                f"{self._stage_shapes()} its strides imply; this backbone or image_size is not supported"
            )
        self.n_train_ = len(images)

    def _predict(
        self, images: list[np.ndarray], progress: Progress | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        import torch

        from vlmad.detectors.knn import NearestNeighbors

        self._check_params()
        h, w = self.pyramid_[0].shape[-2:]
        k = self._k_images()
        index = self._image_index()
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = images[start : start + self.batch_size]
                glob, pyramid = self._features(batch)
                img_d, img_i = index.search(glob, k)
                queries = self._patches(pyramid)  # (B, h*w, D)
                low = torch.empty(len(batch), h * w, dtype=torch.float32, device=queries.device)
                for b in range(len(batch)):
                    chosen = img_i[b].to(self.pyramid_[0].device)
                    gallery = self._patches([level.index_select(0, chosen) for level in self.pyramid_])
                    gallery = gallery.reshape(-1, gallery.shape[-1])
                    block = max(1, min(4096, MAX_BLOCK_ELEMENTS // gallery.shape[0]))
                    nn = NearestNeighbors(
                        gallery,
                        backend=self.knn_backend,  # type: ignore[arg-type]
                        block=block,
                        precision=self.knn_precision,  # type: ignore[arg-type]
                    )
                    d, _ = nn.search(queries[b], int(self.k_pixel))
                    low[b] = d.to(low.device).float().mean(dim=1)
                amap = upsample_smooth(low.view(-1, h, w), self.features_.image_size, float(self.sigma))
                if self.image_score == "knn":
                    scores.append(img_d.double().mean(dim=1).cpu().numpy())
                else:
                    scores.append(amap.amax(dim=(1, 2)).double().cpu().numpy())
                maps.extend(m for m in amap.cpu().numpy().astype(np.float32))
                if progress:
                    progress(min(start + len(batch), len(images)), len(images))
        return np.concatenate(scores), maps

    # ---- persistence ----------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"global": self.global_}
        for layer, level in zip(self.features_.info.layers, self.pyramid_, strict=True):
            tensors[f"layer{layer}"] = level
        return tensors, {"n_train": self.n_train_}

    def _set_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self._check_params()
        info = self.features_.info
        where = f"this SPADE ({self.backbone} layers {tuple(info.layers)} at {self.image_size} px)"
        expected = {f"layer{layer}" for layer in info.layers} | {"global"}
        if set(tensors) != expected:
            raise ValueError(
                f"the saved tensors are {', '.join(sorted(tensors))} but {where} needs "
                f"{', '.join(sorted(expected))}; the model was fitted with other layers"
            )
        glob = tensors["global"]
        n = int(glob.shape[0]) if glob.ndim == 2 else -1
        if n < 1 or glob.shape[1] != info.channels[-1]:
            raise ValueError(
                f"global has shape {tuple(glob.shape)} but {where} expects (n_train, {info.channels[-1]})"
            )
        if int(meta.get("n_train", n)) != n:
            raise ValueError(f"global holds {n} images but the settings say n_train={meta['n_train']}")
        device = self.features_.device
        pyramid = []
        for layer, shape in zip(info.layers, self._stage_shapes(), strict=True):
            t = tensors[f"layer{layer}"]
            if tuple(t.shape) != (n, *shape):
                raise ValueError(
                    f"layer{layer} has shape {tuple(t.shape)} but {where} expects {(n, *shape)}; the model "
                    "was fitted with another backbone, image_size or number of images"
                )
            if not t.is_floating_point():
                raise ValueError(f"layer{layer} must be a floating-point tensor, got {t.dtype}")
            pyramid.append(t.to(device, self._dtype()))
        if not glob.is_floating_point():
            raise ValueError(f"global must be a floating-point tensor, got {glob.dtype}")
        self.global_ = glob.float().to(device)
        self.pyramid_ = pyramid
        self.n_train_ = n
