"""PaDiM (Defard et al. 2020): a multivariate Gaussian per patch position, scored by Mahalanobis distance.

Features follow the paper and anomalib's ``PadimModel``: the chosen backbone stages (default layers 1-3),
deeper stages upsampled to the finest stage's grid with *nearest* interpolation (the paper's
``embedding_concat`` and anomalib both do this; :meth:`FeatureExtractor.embed` would upsample
bilinearly), channels concatenated, then a fixed random subset of ``n_features`` channels (a seeded
``torch.randperm``, stored with the model). No neighbourhood pooling by default (``aggregate=1``).

At every position ``p`` of the ``h x w`` grid the training embeddings give a mean ``mu_p`` and the
unbiased covariance (``N - 1`` in the denominator, as ``np.cov`` and anomalib) plus ``eps * I``. A test
embedding ``x_p`` scores ``sqrt((x_p - mu_p)^T Sigma_p^-1 (x_p - mu_p))``; the ``h x w`` score grid is
upsampled bilinearly to ``image_size`` and blurred with a Gaussian of ``sigma`` pixels; the image score is
the map's maximum (as anomalib).

Streaming fit: the training features are never held. Per position, the running mean and the centred
scatter matrix ``M2 = sum (x - mu)(x - mu)^T`` are merged batch by batch with Chan et al.'s parallel
update (a batch's own centred scatter, plus ``n_a n_b / n`` times the outer product of the difference of
means), all in float32 with in-place batched ``baddbmm``. Centring keeps float32 accurate (raw sums of
``x x^T`` would cancel catastrophically); float64 would double an already large buffer. The inverse is
computed in float64 chunks of positions (Cholesky, then ``L^-T L^-1``) and written back over the scatter
buffer, so the peak is one ``(P, C, C)`` float32 buffer plus a few float64 chunks (about 1.5 GB). For
wide_resnet50_2 at 256 px with layers 1-3: ``P = 64 * 64 = 4096`` positions, ``C = 550`` ->
``4096 * 550**2 * 4`` bytes = 4.96 GB (measured peak RSS of a CPU fit: 6.9 GB; the same size as
anomalib's stored inverse covariance, and the size of the saved weights file), about 2 TFLOP of float64
for the inversion (minutes on a CPU, seconds on a GPU); resnet18 at 256 px (``C = 100``) needs 164 MB.

One training image: the scatter is zero and the covariance is ``eps * I``, so the score is the Euclidean
distance to that image's features divided by ``sqrt(eps)``. It is allowed (a usable few-shot baseline)
and the detector carries a warning saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vlmad.detectors.base import Detector, DetectorError, Progress, register, upsample_smooth
from vlmad.errors import ConfigError

if TYPE_CHECKING:
    import torch

# the paper's two settings (ResNet-18: 100 of 448 channels; Wide-ResNet-50-2: 550 of 1792), keyed on size
SMALL_FEATURES, LARGE_FEATURES, SMALL_DIM_LIMIT = 100, 550, 1000


def default_n_features(dim: int) -> int:
    """The paper's channel count for an embedding of ``dim`` channels: 100 up to 1000 channels (ResNet-18
    and -34 with any layers), 550 above (Wide-ResNet-50-2 layers 1-3 have 1792); never more than ``dim``."""
    return min(dim, SMALL_FEATURES if dim <= SMALL_DIM_LIMIT else LARGE_FEATURES)


class GaussianAccumulator:
    """Streaming per-position mean and centred scatter of ``(B, P, C)`` batches (Chan's parallel update).

    ``update(x)`` folds in a batch; ``finish(eps)`` returns ``(mean (P, C), inverse covariance (P, C, C))``
    with covariance ``M2 / (n - 1) + eps * I`` (``eps * I`` alone when ``n == 1``). Memory: one
    ``(P, C, C)`` float32 buffer, reused for the inverse.
    """

    def __init__(self, positions: int, dim: int, device: str | torch.device = "cpu") -> None:
        import torch

        self.n = 0
        self.mean = torch.zeros(positions, dim, dtype=torch.float32, device=device)
        self.m2 = torch.zeros(positions, dim, dim, dtype=torch.float32, device=device)

    def update(self, x: torch.Tensor) -> None:
        """Fold in ``x`` of shape ``(B, P, C)``: ``B`` observations of every position."""
        import torch

        b = int(x.shape[0])
        if b == 0:
            return
        if tuple(x.shape[1:]) != tuple(self.mean.shape):
            raise DetectorError(
                f"PaDiM: a feature batch of shape {tuple(x.shape)} does not fit the accumulator "
                f"(positions, channels) = {tuple(self.mean.shape)}"
            )
        xb = x.to(self.mean.device, torch.float32).transpose(0, 1)  # (P, B, C)
        batch_mean = xb.mean(dim=1)
        centred = xb - batch_mean[:, None, :]
        self.m2.baddbmm_(centred.transpose(1, 2), centred)
        if self.n == 0:
            self.mean.copy_(batch_mean)
        else:
            total = self.n + b
            delta = batch_mean - self.mean
            self.m2.baddbmm_(delta[:, :, None], delta[:, None, :], alpha=self.n * b / total)
            self.mean.add_(delta, alpha=b / total)
        self.n += b

    def finish(self, eps: float, chunk_elements: int = 2**25) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, inverse covariance)``; the inverse overwrites the scatter buffer (the accumulator is
        spent afterwards). Inverted in float64 chunks of about ``chunk_elements`` numbers each."""
        import torch

        if self.n == 0:
            raise DetectorError("PaDiM: no training features were accumulated")
        positions, dim, _ = self.m2.shape
        eye = torch.eye(dim, dtype=torch.float64, device=self.m2.device)
        scale = 1.0 / (self.n - 1) if self.n > 1 else 0.0
        step = max(1, chunk_elements // (dim * dim))
        for s in range(0, positions, step):
            cov = self.m2[s : s + step].double().mul_(scale)
            cov = 0.5 * (cov + cov.transpose(1, 2)) + eps * eye
            chol, info = torch.linalg.cholesky_ex(cov)
            if bool((info != 0).any()):
                bad = s + int(torch.nonzero(info)[0, 0])
                raise DetectorError(
                    f"PaDiM: the covariance at grid position {bad} is singular (eps={eps}); "
                    "use eps > 0 (the paper's 0.01) or more training images"
                )
            # inv = L^-T L^-1 (torch.cholesky_inverse is erratic, up to 30x slower, on batched CPU input)
            chol_inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
            self.m2[s : s + step] = torch.bmm(chol_inv.transpose(1, 2), chol_inv).float()
        inv, self.m2 = self.m2, torch.empty(0)
        return self.mean, inv


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, inv_cov: torch.Tensor) -> torch.Tensor:
    """Per-position Mahalanobis distances: ``x`` ``(B, P, C)``, ``mean`` ``(P, C)``, ``inv_cov``
    ``(P, C, C)`` -> ``(B, P)`` = ``sqrt(max(0, (x - mean)^T inv_cov (x - mean)))`` (one batched matmul)."""
    import torch

    delta = x.to(mean.device, mean.dtype).transpose(0, 1) - mean[:, None, :]  # (P, B, C)
    d2 = (torch.bmm(delta, inv_cov) * delta).sum(dim=2)  # (P, B)
    return d2.clamp_min_(0).sqrt_().T


@register
class PaDiM(Detector):
    """PaDiM: per-position Gaussians of randomly selected CNN channels (see the module docstring).

    ``n_features=None`` picks the paper's count (:func:`default_n_features`); ``eps`` regularises each
    covariance by ``eps * I``; ``sigma`` is the map's Gaussian blur in pixels at ``image_size``.
    Fitted state: ``idx_`` (selected channels, sorted), ``mean_`` ``(P, C)``, ``inv_covariance_``
    ``(P, C, C)``, ``n_train_``.
    """

    method = "padim"
    label = "PaDiM"

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
        n_features: int | None = None,
        sigma: float = 4.0,
        eps: float = 0.01,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.seed = seed
        self.image_size = image_size
        self.aggregate = aggregate
        self.batch_size = batch_size
        self.device = device
        self.n_features = n_features
        self.sigma = sigma
        self.eps = eps

    # ---- parameters -----------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if not (isinstance(self.eps, int | float) and self.eps >= 0):
            raise ConfigError(f"padim: eps must be a number >= 0 (the paper uses 0.01), got {self.eps!r}")
        if not (isinstance(self.sigma, int | float) and self.sigma >= 0):
            raise ConfigError(f"padim: sigma must be >= 0 pixels (0 = no blur), got {self.sigma!r}")
        bad_n = (
            isinstance(self.n_features, bool) or not isinstance(self.n_features, int) or self.n_features < 1
        )
        if self.n_features is not None and bad_n:
            raise ConfigError(
                f"padim: n_features must be a positive integer or None, got {self.n_features!r}"
            )
        self._require_positive_ints("batch_size")

    def _resolved_n_features(self, dim: int) -> int:
        if self.n_features is None:
            return default_n_features(dim)
        if self.n_features > dim:
            raise ConfigError(
                f"padim: n_features={self.n_features} exceeds the {dim} channels of {self.backbone} layers "
                f"{tuple(self.layers)}; choose at most {dim} (or None for the paper's default)"
            )
        return int(self.n_features)

    def _expected(self) -> tuple[int, int, int]:
        """``(positions, n_features, embedding dim)`` this parameter set implies."""
        h, w = self.features_.grid
        dim = self.features_.dim
        return h * w, self._resolved_n_features(dim), dim

    # ---- features -------------------------------------------------------------------------------------
    def _embed(self, images: list[np.ndarray]) -> torch.Tensor:
        """``(B, P, n_features)`` float32: the selected channels of each stage, nearest-upsampled to the
        finest grid, concatenated, flattened over positions."""
        import torch
        import torch.nn.functional as F

        feats = self.features_.layer_features(images)
        with torch.inference_mode():
            size = feats[0].shape[-2:]
            out, offset = [], 0
            for f in feats:
                c = f.shape[1]
                sel = self.idx_[(self.idx_ >= offset) & (self.idx_ < offset + c)] - offset
                offset += c
                if sel.numel() == 0:
                    continue
                f = f.index_select(1, sel.to(f.device))
                if self.aggregate > 1:
                    f = F.avg_pool2d(f, self.aggregate, stride=1, padding=self.aggregate // 2)
                if f.shape[-2:] != size:
                    f = F.interpolate(f, size=size, mode="nearest")
                out.append(f)
            emb = torch.cat(out, dim=1).float()
            return emb.flatten(2).transpose(1, 2)

    # ---- fit / predict --------------------------------------------------------------------------------
    def _fit(self, images: list[np.ndarray], progress: Progress | None) -> None:
        import torch

        self._check_params()
        self.features_ = self._make_features()
        positions, n, dim = self._expected()
        gen = torch.Generator().manual_seed(int(self.seed))
        self.idx_ = torch.randperm(dim, generator=gen)[:n].sort().values
        acc = GaussianAccumulator(positions, n, self.features_.device)
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            x = self._embed(batch)
            if x.shape[1] != positions:
                raise DetectorError(
                    f"padim: the backbone gave a {x.shape[1]}-position grid, expected {positions} "
                    f"({self.features_.grid}); this backbone's strides are not supported"
                )
            acc.update(x)
            if progress:
                progress(min(start + len(batch), len(images)), len(images))
        self.mean_, self.inv_covariance_ = acc.finish(float(self.eps))
        self.n_train_ = len(images)
        self._note_warnings()

    def _note_warnings(self) -> None:
        self.extra_warnings_ = (
            [
                "PaDiM fitted on one image: each covariance is eps*I only, so scores are scaled Euclidean "
                "distances to that image's features; fit on more normal images for a real Gaussian"
            ]
            if self.n_train_ == 1
            else []
        )

    def _predict(
        self, images: list[np.ndarray], progress: Progress | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        import torch

        self._check_params()
        h, w = self.features_.grid
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = images[start : start + self.batch_size]
                dist = mahalanobis(self._embed(batch), self.mean_, self.inv_covariance_)
                amap = upsample_smooth(dist.view(-1, h, w), self.features_.image_size, float(self.sigma))
                scores.append(amap.amax(dim=(1, 2)).double().cpu().numpy())
                maps.extend(m for m in amap.cpu().numpy().astype(np.float32))
                if progress:
                    progress(min(start + len(batch), len(images)), len(images))
        return np.concatenate(scores), maps

    # ---- persistence ----------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"idx": self.idx_, "mean": self.mean_, "inv_covariance": self.inv_covariance_}
        h, w = self.features_.grid
        return tensors, {"n_train": self.n_train_, "n_features": int(self.idx_.numel()), "grid": [h, w]}

    def _set_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        import torch

        self._check_params()
        positions, n, dim = self._expected()
        where = (
            f"this PaDiM ({self.backbone} layers {tuple(self.layers)} at {self.image_size} px, "
            f"grid {self.features_.grid}, n_features={n})"
        )
        missing = sorted({"idx", "mean", "inv_covariance"} - set(tensors))
        if missing:
            raise ValueError(f"missing tensors {', '.join(missing)} for {where}")
        idx, mean, inv = tensors["idx"], tensors["mean"], tensors["inv_covariance"]
        expected = {"idx": (n,), "mean": (positions, n), "inv_covariance": (positions, n, n)}
        for name, t in (("idx", idx), ("mean", mean), ("inv_covariance", inv)):
            if tuple(t.shape) != expected[name]:
                raise ValueError(
                    f"{name} has shape {tuple(t.shape)} but {where} expects {expected[name]}; the model "
                    "was fitted with other settings (backbone, layers, image_size or n_features)"
                )
        if idx.dtype not in (torch.int64, torch.int32) or int(idx.min()) < 0 or int(idx.max()) >= dim:
            raise ValueError(f"idx must hold channel numbers in [0, {dim}) for {where}")
        if n > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ValueError(f"idx must list {n} distinct channels in increasing order for {where}")
        if not (mean.is_floating_point() and inv.is_floating_point()):
            raise ValueError("mean and inv_covariance must be floating-point tensors")
        device = self.features_.device
        self.idx_ = idx.long().cpu()
        self.mean_ = mean.float().to(device)
        self.inv_covariance_ = inv.float().to(device)
        self.n_train_ = int(meta.get("n_train", 0))
        self._note_warnings()
