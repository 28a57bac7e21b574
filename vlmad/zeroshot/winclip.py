"""WinCLIP and WinCLIP+ (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation",
CVPR 2023) on a :class:`~vlmad.zeroshot.clip.Clip`.

Zero-shot (WinCLIP), for the images of one category:

- Text: the compositional prompt ensemble of the paper (:data:`NORMAL_STATES` / :data:`ANOMALOUS_STATES`
  state words, each inside every one of :data:`TEMPLATES`). Each class embedding is the mean of its
  normalised prompt embeddings, renormalised (:meth:`WinCLIP.text_embeddings`).
- Image score: ``softmax(temperature * [cos(g, t_normal), cos(g, t_anomalous)])[anomalous]`` with ``g`` the
  global image embedding (:func:`anomaly_probability`).
- Map: every ``k x k`` window of the ``grid x grid`` patch tokens (``k`` in ``scales``, in patches, moved
  by ``stride``; :func:`window_indices`) is embedded by running the vision transformer on the class token
  and the window's tokens only (the paper's attention masking; :meth:`WinCLIP.window_embeddings`) and
  scored with the same two-class softmax. A patch's score at one scale is the harmonic mean of the scores
  of the windows covering it (:func:`harmonic_aggregate`); the zero-shot patch map is the mean over
  scales.

Few-shot (WinCLIP+), when normal ``references`` are given: the references' window embeddings (per scale)
and last-layer patch tokens (``Clip.patch_features``) are the memory. A test window scores
``0.5 * (1 - max_r cos(w, r))`` over the reference windows of its scale, aggregated to patches by the
*mean* (:func:`mean_aggregate`); a test patch token scores ``0.5 * (1 - max cos)`` over the reference
patch tokens. The few-shot map is the mean of those scale maps and the patch map; the final map is
``(zero-shot map + few-shot map) / 2`` and the image score ``(zero-shot image score + max few-shot map)
/ 2`` (the maximum over the patch grid, before upsampling and smoothing).

Maps are upsampled from the patch grid to the model's ``image_size`` and blurred with ``sigma`` pixels
(:func:`~vlmad.zeroshot.base.smooth_maps`); the base class resizes them to each input's size. Every score
lies in ``[0, 1]``.

Window encoding is batched: the windows of one scale for all images are encoded ``window_batch`` at a
time. ``batched=False`` encodes one window per forward pass: the naive loop, kept as the reference the
batched path is tested and benchmarked against (``bench/zeroshot.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmad.errors import ConfigError
from vlmad.zeroshot.base import ImageInput, ZeroShotMethod, category_words, register, smooth_maps
from vlmad.zeroshot.clip import Clip, ZeroShotError

if TYPE_CHECKING:
    import torch

# The compositional prompt ensemble of the WinCLIP paper (supplementary material): state words ...
# ("broken {}", found in later methods' lists such as APRIL-GAN's and AnomalyCLIP's, is not among them)
NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
# ... placed in every template (each in its "a" and "the" variant).
TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def prompt_ensemble(category: str) -> tuple[list[str], list[str]]:
    """``(normal prompts, anomalous prompts)`` for ``category`` (``screw_bag`` is prompted as "screw bag"):
    every state of :data:`NORMAL_STATES` / :data:`ANOMALOUS_STATES` in every one of :data:`TEMPLATES`,
    state-major (all templates of the first state, then of the second, ...)."""
    words = category_words(category)
    if not words:
        raise ZeroShotError(f"category {category!r} has no words to put in the prompts")
    normal = [t.format(s.format(words)) for s in NORMAL_STATES for t in TEMPLATES]
    anomalous = [t.format(s.format(words)) for s in ANOMALOUS_STATES for t in TEMPLATES]
    return normal, anomalous


def window_indices(grid: int, scale: int, stride: int = 1) -> torch.Tensor:
    """``(W, scale * scale)`` long tensor: for each ``scale x scale`` window over a ``grid x grid`` patch
    grid, the row-major indices of its patches (row-major within the window too). Windows start at
    ``0, stride, 2 * stride, ...`` along each axis, plus one flush with the far edge when the stride does
    not land there, so every patch is covered. :class:`ZeroShotError` when ``scale`` is not in
    ``1 .. grid`` or ``stride < 1``."""
    import torch

    if not 1 <= scale <= grid:
        raise ZeroShotError(f"a window of {scale} patches does not fit a {grid} x {grid} patch grid")
    if stride < 1:
        raise ZeroShotError(f"window stride must be at least 1, got {stride}")
    starts = list(range(0, grid - scale + 1, stride))
    if starts[-1] != grid - scale:
        starts.append(grid - scale)
    offsets = torch.arange(scale)
    rows = [
        ((r + offsets)[:, None] * grid + (c + offsets)[None, :]).reshape(-1) for r in starts for c in starts
    ]
    return torch.stack(rows)


def _membership(windows: torch.Tensor, grid: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, grid^2)`` 0/1 matrix (window covers patch) and ``(grid^2,)`` number of windows per patch."""
    import torch

    windows = torch.as_tensor(windows, dtype=torch.long, device=like.device)
    member = torch.zeros(windows.shape[0], grid * grid, dtype=like.dtype, device=like.device)
    member.scatter_(1, windows, 1.0)
    count = member.sum(0)
    if bool((count == 0).any()):
        missing = int((count == 0).nonzero()[0, 0])
        raise ZeroShotError(f"no window covers patch {missing} of the {grid} x {grid} grid")
    return member, count


def _as_float(values: Any) -> torch.Tensor:
    import torch

    t = torch.as_tensor(values)
    return t if t.is_floating_point() else t.float()


def harmonic_aggregate(window_scores: Any, windows: Any, grid: int) -> torch.Tensor:
    """Per-patch harmonic mean of window scores: ``window_scores`` ``(..., W)`` (in ``(0, 1]``; zeros are
    clamped to 1e-12), ``windows`` ``(W, n)`` patch indices (:func:`window_indices`) -> ``(..., grid,
    grid)``, each patch ``m / sum(1 / s)`` over the ``m`` windows covering it (WinCLIP's zero-shot
    aggregation). Every patch must be covered (:class:`ZeroShotError` otherwise)."""
    s = _as_float(window_scores)
    member, count = _membership(windows, grid, s)
    out = count / ((1.0 / s.clamp_min(1e-12)) @ member)
    return out.reshape(*s.shape[:-1], grid, grid)


def mean_aggregate(window_scores: Any, windows: Any, grid: int) -> torch.Tensor:
    """Per-patch arithmetic mean of the scores of the windows covering each patch; the shapes of
    :func:`harmonic_aggregate`."""
    s = _as_float(window_scores)
    member, count = _membership(windows, grid, s)
    out = (s @ member) / count
    return out.reshape(*s.shape[:-1], grid, grid)


def anomaly_probability(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(temperature * [cos(e, t_normal), cos(e, t_anomalous)])[anomalous]`` for normalised
    ``embeddings`` ``(..., D)`` and ``text`` ``(2, D)`` (normal, anomalous) -> ``(...)``."""
    logits = temperature * embeddings.float() @ text.float().T
    return logits.softmax(dim=-1)[..., 1]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _association(queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """WinCLIP+'s visual association score ``0.5 * (1 - max_m cos(q, m))`` of normalised ``queries``
    ``(B, N, D)`` against normalised ``memory`` ``(M, D)`` -> ``(B, N)``, clamped to ``[0, 1]``."""
    import torch

    best = torch.stack([(q @ memory.T).amax(dim=-1) for q in queries])
    return (0.5 * (1.0 - best)).clamp_(0.0, 1.0)


@dataclass
class WinCLIPComponents:
    """What :meth:`WinCLIP.components` computed, on the model's device (``B`` images, ``g`` the grid).

    ``scores`` ``(B,)`` and ``grid`` ``(B, g, g)`` are the final image scores and patch map (what
    ``predict`` returns, before upsampling); the rest are their parts. The few-shot fields are None /
    empty without references.
    """

    scores: torch.Tensor
    grid: torch.Tensor
    zero_shot_scores: torch.Tensor
    zero_shot: torch.Tensor
    zero_shot_scales: dict[int, torch.Tensor] = field(default_factory=dict)
    few_shot: torch.Tensor | None = None
    few_shot_scales: dict[int, torch.Tensor] = field(default_factory=dict)
    few_shot_patch: torch.Tensor | None = None


@dataclass
class _Memory:
    """WinCLIP+'s reference memory: window embeddings per scale ``(R_k, D)`` and patch tokens ``(R, D)``."""

    windows: dict[int, torch.Tensor]
    patches: torch.Tensor


@register
class WinCLIP(ZeroShotMethod):
    """WinCLIP (zero-shot) and WinCLIP+ (with ``references``); see the module docstring.

    ``scales``: window sizes in patches; ``stride``: window step in patches; ``temperature``: the softmax
    scale of the two-class scores (CLIP's 100); ``sigma``: Gaussian blur of the maps in pixels at the
    model's ``image_size`` (0 = none); ``window_batch``: windows (and images, counted in tokens) per
    forward pass; ``batched=False``: one window per forward pass (the slow reference).
    """

    method = "winclip"
    label = "WinCLIP"

    def __init__(
        self,
        clip: Clip | str | Path,
        device: str | None = None,
        scales: Sequence[int] = (2, 3),
        stride: int = 1,
        temperature: float = 100.0,
        sigma: float = 4.0,
        window_batch: int = 512,
        batched: bool = True,
    ) -> None:
        super().__init__(clip, device=device)
        self.scales = scales
        self.stride = stride
        self.temperature = temperature
        self.sigma = sigma
        self.window_batch = window_batch
        self.batched = batched
        grid = self.clip.info.grid
        if isinstance(scales, str | bytes) or not isinstance(scales, Sequence) or len(scales) == 0:
            raise ConfigError(f"winclip: scales must be a non-empty list of window sizes, got {scales!r}")
        for k in scales:
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= grid:
                raise ConfigError(
                    f"winclip: window scale {k!r} must be a whole number of patches from 1 to {grid} "
                    f"({self.clip.info.source} sees a {grid} x {grid} patch grid)"
                )
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ConfigError(f"winclip: stride must be a whole number of patches >= 1, got {stride!r}")
        if isinstance(window_batch, bool) or not isinstance(window_batch, int) or window_batch < 1:
            raise ConfigError(f"winclip: window_batch must be a whole number >= 1, got {window_batch!r}")
        if len(set(scales)) != len(scales):
            raise ConfigError(f"winclip: scales must differ from each other, got {scales!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not temperature > 0:
            raise ConfigError(f"winclip: temperature must be a positive number, got {temperature!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma >= 0:
            raise ConfigError(f"winclip: sigma must be a number >= 0, got {sigma!r}")
        if not isinstance(batched, bool):
            raise ConfigError(f"winclip: batched must be true or false, got {batched!r}")
        self._windows = {int(k): window_indices(grid, int(k), stride).to(self.clip.device) for k in scales}
        self._text: dict[str, torch.Tensor] = {}

    def options(self) -> dict[str, Any]:
        return {
            "scales": self.scales,
            "stride": self.stride,
            "temperature": self.temperature,
            "sigma": self.sigma,
            "window_batch": self.window_batch,
            "batched": self.batched,
        }

    # ---- text -----------------------------------------------------------------------------------------
    def text_embeddings(self, category: str) -> torch.Tensor:
        """``(2, D)`` normalised (normal, anomalous) class embeddings of ``category``: each the mean of its
        prompts' normalised embeddings (:func:`prompt_ensemble`), renormalised; cached per category."""
        import torch

        key = category_words(category)
        if key not in self._text:
            normal, anomalous = prompt_ensemble(category)
            emb = self.clip.encode_text(normal + anomalous)
            n = len(normal)
            self._text[key] = _normalise(torch.stack([emb[:n].mean(0), emb[n:].mean(0)]))
        return self._text[key]

    # ---- images ---------------------------------------------------------------------------------------
    def window_embeddings(self, tokens: torch.Tensor, scale: int) -> torch.Tensor:
        """``(B, W, D)`` normalised embeddings of the ``scale x scale`` windows (in :func:`window_indices`
        order) of ``tokens`` ``(B, 1 + grid^2, C)`` (``Clip.vision_tokens``): ``Clip.encode_tokens`` of the
        class token followed by the window's patch tokens."""
        import torch

        windows = self._windows.get(int(scale))
        if windows is None:
            windows = window_indices(self.clip.info.grid, int(scale), self.stride).to(tokens.device)
        cls = torch.zeros(windows.shape[0], 1, dtype=torch.long, device=tokens.device)
        index = torch.cat([cls, windows.to(tokens.device) + 1], dim=1)  # (W, 1 + k^2) token positions
        b_count, w_count = tokens.shape[0], index.shape[0]
        if not self.batched:  # the naive loop: one window per forward pass
            return torch.stack(
                [
                    torch.cat([self.clip.encode_tokens(tokens[b : b + 1, index[w]]) for w in range(w_count)])
                    for b in range(b_count)
                ]
            )
        flat = torch.arange(b_count * w_count, device=tokens.device)
        out = []
        for start in range(0, flat.numel(), self.window_batch):
            sel = flat[start : start + self.window_batch]
            image, window = sel // w_count, sel % w_count
            out.append(self.clip.encode_tokens(tokens[image[:, None], index[window]]))
        return torch.cat(out).view(b_count, w_count, -1)

    def _images_per_pass(self) -> int:
        return max(1, self.window_batch // (1 + self.clip.info.grid**2))

    def _global(self, tokens: torch.Tensor) -> torch.Tensor:
        import torch

        step = self._images_per_pass()
        return torch.cat([self.clip.encode_tokens(tokens[i : i + step]) for i in range(0, len(tokens), step)])

    def _patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, grid^2, D)`` last-layer patch tokens in the joint space, normalised."""
        import torch

        step, last = self._images_per_pass(), self.clip.info.num_layers
        return torch.cat(
            [
                self.clip.patch_features(pixels[i : i + step], [last])[1][0]
                for i in range(0, len(pixels), step)
            ]
        )

    def _memory(self, references: list[np.ndarray]) -> _Memory:
        pixels = self.clip.preprocess(references)
        tokens = self.clip.vision_tokens(pixels)
        windows = {k: self.window_embeddings(tokens, k).flatten(0, 1) for k in self._windows}
        return _Memory(windows=windows, patches=self._patches(pixels).flatten(0, 1))

    # ---- scoring --------------------------------------------------------------------------------------
    def components(
        self,
        images: Sequence[ImageInput],
        category: str,
        references: Sequence[ImageInput] | None = None,
    ) -> WinCLIPComponents:
        """The final scores and patch map of ``images`` with their zero- and few-shot parts (see
        :class:`WinCLIPComponents`); ``references`` None or empty = zero-shot."""
        import torch

        from vlmad.detectors.base import as_image

        arrays = [as_image(x) for x in images]
        refs = None if references is None else [as_image(x) for x in references]
        with torch.inference_mode():
            return self._components(arrays, category, refs)

    def _components(
        self, images: list[np.ndarray], category: str, references: list[np.ndarray] | None
    ) -> WinCLIPComponents:
        import torch

        if not images:
            raise ZeroShotError("winclip: no images to score")
        text = self.text_embeddings(category)
        grid = self.clip.info.grid
        pixels = self.clip.preprocess(images)
        tokens = self.clip.vision_tokens(pixels)
        zs_scores = anomaly_probability(self._global(tokens), text, self.temperature)
        memory = self._memory(references) if references else None
        zs_scales: dict[int, torch.Tensor] = {}
        fs_scales: dict[int, torch.Tensor] = {}
        for k, windows in self._windows.items():
            emb = self.window_embeddings(tokens, k)
            zs_scales[k] = harmonic_aggregate(anomaly_probability(emb, text, self.temperature), windows, grid)
            if memory is not None:
                # The mean, not the harmonic mean of the zero-shot part: these are distances to the nearest
                # normal window, ~0 for every window that matches a reference. A harmonic mean is dominated
                # by its smallest term, so one well-matched window overlapping a defect's edge would erase
                # the defect from every patch it covers; the mean keeps the evidence of the windows that do
                # see it. (anomalib's WinCLIP uses the harmonic mean here; the paper does not say.)
                fs_scales[k] = mean_aggregate(_association(emb, memory.windows[k]), windows, grid)
        zero_shot = torch.stack(list(zs_scales.values())).mean(0)
        if memory is None:
            return WinCLIPComponents(zs_scores, zero_shot, zs_scores, zero_shot, zs_scales)
        patch = _association(self._patches(pixels), memory.patches).view(-1, grid, grid)
        few_shot = torch.stack([*fs_scales.values(), patch]).mean(0)
        scores = (zs_scores + few_shot.flatten(1).amax(1)) / 2
        return WinCLIPComponents(
            scores, (zero_shot + few_shot) / 2, zs_scores, zero_shot, zs_scales, few_shot, fs_scales, patch
        )

    def _predict(
        self, images: list[np.ndarray], category: str, references: list[np.ndarray] | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        parts = self._components(images, category, references)
        maps = smooth_maps(parts.grid, self.clip.info.image_size, float(self.sigma))
        return parts.scores.double().cpu().numpy(), maps
