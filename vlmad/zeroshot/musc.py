"""MuSc: zero-shot anomaly classification and segmentation by mutual scoring of the unlabelled test images.

Li et al., "MuSc: Zero-Shot Industrial Anomaly Classification and Segmentation with Mutual Scoring of the
Unlabeled Images", ICLR 2024 (official code: github.com/xrli-U/MuSc). No text prompts and no training:
the anomaly score of a patch is how far it is from the patches of the *other test images of the same
category*. Normal patches (most of every image) find near-identical patches in many other images, an
anomalous patch (rare by nature) finds none in most of them. The three parts, each a pure function here:

- :func:`lnamd` (Local Neighbourhood Aggregation with Multiple Degrees): each ViT layer's patch tokens
  averaged over ``r x r`` neighbourhoods on the patch grid, for several ``r`` (small and large defects);
- :func:`mutual_scores` (Mutual Scoring Mechanism): per patch, the distance to the nearest patch of each
  other image, averaged over the smallest ``interval`` fraction of those distances;
- :func:`rscin` (Re-scoring with Constrained Image-level Neighbourhood): image scores smoothed over the
  images whose global embeddings are most similar.

**Assumption and where it breaks.** MuSc assumes that every normal patch has similar patches in the other
test images, i.e. that the test images were taken under uniform imaging. Document 000 of the project's
reference (outdoor concrete blocks, the Gogan dataset) shows what happens when they are not: on blocks
under direct sun (washed out), half in shadow, or wet, the *normal* patches have no look-alikes in the rest
of the test set, so their mutual scores are high all over the image. Pixel-level accuracy collapses
(pixel F1 1.90 / AP 0.45 on Gogan against 60.71 / 61.29 on MVTec AD), more than for any other method
compared there, because the mechanism itself depends on the test set being homogeneous. Treat MuSc
results on non-uniformly imaged data with that in mind; they also depend on which other images are
scored together (a different batch of the category gives different scores for the same image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmad.errors import ConfigError
from vlmad.zeroshot.base import ImageInput, ZeroShotMethod, register, smooth_maps
from vlmad.zeroshot.clip import Clip, ZeroShotError

if TYPE_CHECKING:
    import torch

DEFAULT_BLOCK = 1 << 24  # patch-to-patch distances held at once by mutual_scores (64 MiB in float32)
_EXTRACT_BATCH = 16  # images per CLIP forward pass


def default_layers(num_layers: int, count: int = 4) -> list[int]:
    """``count`` evenly spaced 1-based vision layers ending at the last: 24 -> [6, 12, 18, 24] (the official
    ViT-L/14 choice, blocks 5/11/17/23 0-based), 12 -> [3, 6, 9, 12]; fewer when there are fewer layers."""
    if num_layers < 1 or count < 1:
        raise ConfigError(f"default_layers: need num_layers >= 1 and count >= 1, got {num_layers}, {count}")
    return sorted({max(1, num_layers * (i + 1) // count) for i in range(count)})


def interval_count(interval: float, others: int) -> int:
    """How many of the ``others`` per-image distances :func:`mutual_scores` averages: the smallest
    ``ceil(interval * others)``, at least 1 (a rounding guard keeps ``ceil(0.28 * 25)`` at 7, not 8)."""
    if not 0.0 < interval <= 1.0:
        raise ConfigError(f"MuSc interval must be in (0, 1], got {interval}")
    if others < 1:
        raise ZeroShotError("mutual scoring needs at least 2 images")
    return min(others, max(1, math.ceil(interval * others - 1e-9)))


def lnamd(tokens: torch.Tensor, grid: int, r: int, normalize: bool = True) -> torch.Tensor:
    """Local neighbourhood aggregation of degree ``r``: ``(B, N, C)`` patch tokens in row-major order on a
    ``grid x grid`` grid (``N = grid^2``) -> ``(B, N, C)``, each token replaced by the mean of the tokens in
    the ``r x r`` window centred on it (stride 1, "same" size; at edges and corners the mean is over the
    neighbours inside the grid). ``r = 1`` leaves the tokens as they are. ``r`` must be odd.

    Then, as the paper does (the official code divides the aggregated features by their norm before mutual
    scoring), each token is L2-normalised, so mutual scoring compares directions:
    ``||a - b||^2 = 2 - 2 cos(a, b)``. ``normalize=False`` returns the plain averages. After normalisation
    the result equals the official one, which averages a zero-padded window (a positive factor per position
    only).
    """
    import torch.nn.functional as F

    if tokens.ndim != 3:
        raise ValueError(f"lnamd expects (B, N, C) tokens, got shape {tuple(tokens.shape)}")
    b, n, c = tokens.shape
    if n != grid * grid:
        raise ValueError(f"lnamd: {n} tokens is not a {grid} x {grid} grid")
    if r < 1 or r % 2 == 0:
        raise ConfigError(f"MuSc aggregation degree r must be a positive odd integer, got {r}")
    out = tokens
    if r > 1:
        x = tokens.transpose(1, 2).reshape(b, c, grid, grid)
        x = F.avg_pool2d(x, kernel_size=r, stride=1, padding=r // 2, count_include_pad=False)
        out = x.reshape(b, c, n).transpose(1, 2)
    if normalize:
        out = out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return out.contiguous()


def mutual_scores(tokens: torch.Tensor, interval: float = 0.3, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Mutual scoring: ``(B, N, C)`` patch tokens of ``B >= 2`` images -> ``(B, N)`` patch scores.

    For image ``i``, patch ``p`` and every other image ``j``: ``d_ij(p) = min_q ||t_ip - t_jq||`` (Euclidean,
    nearest patch of ``j``); the score is the mean of the smallest ``k = ceil(interval * (B - 1))`` (at least
    1, see :func:`interval_count`) of ``{d_ij(p) : j != i}``. The paper's interval average takes the lowest
    ``[0, 30%]`` of the distances; the official code takes ``floor`` (and so nothing at all below 4 images),
    here it is ``ceil``.

    Memory: never a ``(BN, BN)`` matrix. Query patches are taken in chunks; for each, distances to the
    patches of a group of reference images are computed by one matmul of at most ``block`` entries and
    reduced at once to the per-image minimum, into a ``(rows, B)`` table of ``d_ij(p)`` (also at most
    ``block`` entries) that is turned into the chunk's scores before the next chunk. The result does not
    depend on ``block``. Computed in the tokens' dtype and on their device (float64 gives distances exact
    to ~1e-8; float32 to ~1e-3 near 0, since ``|x|^2 + |y|^2 - 2 x.y`` cancels).
    """
    import torch

    if tokens.ndim != 3:
        raise ValueError(f"mutual_scores expects (B, N, C) tokens, got shape {tuple(tokens.shape)}")
    b, n, c = tokens.shape
    if b < 2:
        raise ZeroShotError(
            f"mutual scoring needs at least 2 images (each is compared with the others), got {b}"
        )
    if block < 1:
        raise ConfigError(f"MuSc block must be >= 1, got {block}")
    k = interval_count(interval, b - 1)
    flat = tokens.reshape(b * n, c)
    sq = (flat * flat).sum(-1)  # (BN,)
    ref_images = max(1, min(b, block // (n * n)))
    rows = max(1, min(b * n, block // (ref_images * n), block // b))
    owner = torch.arange(b, device=tokens.device).repeat_interleave(n)
    out = torch.empty(b * n, dtype=tokens.dtype, device=tokens.device)
    for r0 in range(0, b * n, rows):
        query = flat[r0 : r0 + rows]
        m = len(query)
        nearest = torch.empty(m, b, dtype=tokens.dtype, device=tokens.device)  # squared d_ij(p)
        for j0 in range(0, b, ref_images):
            j1 = min(b, j0 + ref_images)
            # ||x - y||^2 = |x|^2 + (|y|^2 - 2 x.y): the |x|^2 term is constant in the minimum over y
            part = torch.addmm(sq[j0 * n : j1 * n][None], query, flat[j0 * n : j1 * n].T, alpha=-2.0)
            nearest[:, j0:j1] = part.view(m, j1 - j0, n).amin(-1)
        dist = (nearest + sq[r0 : r0 + m, None]).clamp_min_(0).sqrt_()
        dist[torch.arange(m, device=tokens.device), owner[r0 : r0 + m]] = math.inf  # not against itself
        out[r0 : r0 + m] = dist.topk(k, dim=1, largest=False).values.mean(dim=1)
    return out.view(b, n)


def rscin(scores: Any, global_features: Any, k_list: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
    """Re-scoring with constrained image-level neighbourhood: ``(B,)`` image scores and ``(B, D)`` global
    image embeddings -> ``(B,)`` float64 scores (tensors or arrays in; a CPU tensor out).

    For each ``k`` in ``k_list`` (clipped to ``B``), each image's score becomes the mean of the scores of
    its ``k`` nearest images by cosine similarity of the global embeddings, itself included (always first);
    the results are averaged over ``k_list``. ``k = 1`` keeps the original score, so the default
    ``(1, 2, 3)`` mixes each score with its one or two most similar images'.

    The paper (and official ``RsCIN``/``MMO``) builds the similarity graph of the CLIP class embeddings,
    keeps each row's top ``k`` entries and multiplies the scores by the row-normalised masked similarity
    matrix, i.e. a *similarity-weighted* mean over the same ``k`` neighbours, after min-max normalising the
    scores over the test set. Simplified here: an unweighted mean (the neighbours' cosine similarities are
    close to each other, so the weights matter little) and no min-max normalisation (a common affine map,
    which does not change the ranking of the re-scored images).
    """
    import torch

    def as_cpu64(x: Any) -> torch.Tensor:
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float64))
        return x.detach().to("cpu", torch.float64)

    s = as_cpu64(scores).reshape(-1)
    f = as_cpu64(global_features)
    b = s.shape[0]
    if f.ndim != 2 or f.shape[0] != b:
        raise ValueError(f"rscin: features {tuple(f.shape)} do not match {b} scores")
    ks = [int(k) for k in k_list]
    if not ks or min(ks) < 1:
        raise ConfigError(f"MuSc k_list must be a non-empty list of integers >= 1, got {list(k_list)}")
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sim = f @ f.T
    sim.fill_diagonal_(math.inf)  # itself first, whatever the ties
    out = torch.zeros(b, dtype=torch.float64)
    for k in ks:
        idx = sim.topk(min(k, b), dim=1).indices
        out += s[idx].mean(dim=1)
    return out / len(ks)


def _standardise(tokens: torch.Tensor) -> torch.Tensor:
    """Each image's ``(N, C)`` tokens minus their mean over all patches and channels, divided by their std:
    the parameter-free ``LayerNorm([C, H, W])`` the official code applies to every layer before LNAMD."""
    mean = tokens.mean(dim=(1, 2), keepdim=True)
    std = tokens.std(dim=(1, 2), unbiased=False, keepdim=True)
    return (tokens - mean) / (std + 1e-5)


@register
class MuSc(ZeroShotMethod):
    """MuSc (see the module docstring, including where it breaks): the images of a category scored together.

    Options: ``layers`` (1-based CLIP vision layers; None = 4 evenly spaced, as the paper takes 4 stages of
    the ViT: :func:`default_layers`), ``r_list`` (LNAMD aggregation degrees, odd), ``interval`` (fraction of
    the other images whose distances are averaged), ``rescore`` (RsCIN on the image scores) with ``k_list``,
    ``sigma`` (Gaussian blur of the maps, pixels at the CLIP input size; the official code blurs none) and
    ``block`` (memory bound of mutual scoring, see :func:`mutual_scores`; no effect on the result).
    """

    method = "musc"
    label = "MuSc"
    min_images = 2

    def __init__(
        self,
        clip: Clip | str | Path,
        device: str | None = None,
        layers: Sequence[int] | None = None,
        r_list: Sequence[int] = (1, 3, 5),
        interval: float = 0.3,
        rescore: bool = True,
        k_list: Sequence[int] = (1, 2, 3),
        sigma: float = 4.0,
        block: int = DEFAULT_BLOCK,
    ) -> None:
        super().__init__(clip, device=device)
        self.layers = layers
        self.r_list = r_list
        self.interval = interval
        self.rescore = rescore
        self.k_list = k_list
        self.sigma = sigma
        self.block = block
        n = self.clip.info.num_layers
        bad = [x for x in self.used_layers if not 1 <= int(x) <= n]
        if not self.used_layers or bad:
            raise ConfigError(f"MuSc layers: {self.clip.info.source} has vision layers 1-{n}; got {layers}")
        if not r_list or any(int(r) < 1 or int(r) % 2 == 0 for r in r_list):
            raise ConfigError(f"MuSc r_list must be positive odd integers, got {list(r_list)}")
        interval_count(interval, 1)  # validates the interval
        if not k_list or any(int(k) < 1 for k in k_list):
            raise ConfigError(f"MuSc k_list must be integers >= 1, got {list(k_list)}")
        if sigma < 0:
            raise ConfigError(f"MuSc sigma must be >= 0, got {sigma}")
        if block < 1:
            raise ConfigError(f"MuSc block must be >= 1, got {block}")

    @property
    def used_layers(self) -> list[int]:
        """The vision layers actually read: ``layers`` or :func:`default_layers` of the loaded CLIP."""
        if self.layers is None:
            return default_layers(self.clip.info.num_layers)
        return [int(x) for x in self.layers]

    def options(self) -> dict[str, Any]:
        """The constructor's option values, unchanged (``device`` is not a method option)."""
        return {
            "layers": self.layers,
            "r_list": self.r_list,
            "interval": self.interval,
            "rescore": self.rescore,
            "k_list": self.k_list,
            "sigma": self.sigma,
            "block": self.block,
        }

    def describe(self) -> dict[str, Any]:
        """The base description plus the layers actually used (``layers`` may be None = default)."""
        return {**super().describe(), "musc_layers": self.used_layers}

    def predict(
        self,
        images: Sequence[ImageInput],
        category: str,
        references: Sequence[ImageInput] | None = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores and maps of ``images``, all test images of one category in one call (at least 2; the more,
        the better the mutual scores). :class:`ZeroShotError` for fewer images or for ``references``."""
        if len(images) < self.min_images:
            raise ZeroShotError(
                f"MuSc needs several test images of category {category!r} at once (at least "
                f"{self.min_images}, got {len(images)}): mutual scoring compares each image's patches with "
                "those of the other unlabelled test images, so one image alone has nothing to be compared "
                "with; pass the category's whole test set in one call"
            )
        if references:
            raise ZeroShotError(
                "MuSc is zero-shot and takes no reference images: the other test images are its references"
            )
        return super().predict(images, category, None)

    def _predict(
        self, images: list[np.ndarray], category: str, references: list[np.ndarray] | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Raw CLIP patch tokens of the chosen layers -> per image and layer standardised (the official
        code's parameter-free LayerNorm) -> for each layer and ``r``: :func:`lnamd` then
        :func:`mutual_scores` -> patch scores averaged over layers and ``r``. Image score = max patch score,
        then :func:`rscin` with the global embeddings when ``rescore``. Maps = patch grids upsampled to the
        CLIP input size and blurred with ``sigma`` (the base resizes them to each image's size)."""
        import torch

        clip = self.clip
        layers = self.used_layers
        grid = clip.info.grid
        glob_parts: list[torch.Tensor] = []
        per_layer: list[list[torch.Tensor]] = [[] for _ in layers]
        for i in range(0, len(images), _EXTRACT_BATCH):
            pixels = clip.preprocess(images[i : i + _EXTRACT_BATCH])
            glob, tokens = clip.patch_features(pixels, layers, project=False)
            glob_parts.append(glob)
            for store, t in zip(per_layer, tokens, strict=True):
                store.append(t)
        patch = torch.zeros(len(images), grid * grid, dtype=torch.float32, device=clip.device)
        for parts in per_layer:
            tokens = _standardise(torch.cat(parts))
            for r in self.r_list:
                patch += mutual_scores(lnamd(tokens, grid, int(r)), self.interval, self.block)
        patch /= len(layers) * len(self.r_list)
        scores = patch.amax(dim=1).double().cpu()
        if self.rescore:
            scores = rscin(scores, torch.cat(glob_parts), self.k_list)
        maps = smooth_maps(patch.view(-1, grid, grid), clip.info.image_size, self.sigma)
        return scores.numpy(), maps
