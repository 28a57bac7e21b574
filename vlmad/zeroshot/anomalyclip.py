"""AnomalyCLIP (Zhou et al., ICLR 2024): object-agnostic prompt learning for zero-shot anomaly detection.

Two prompts are learned once, on auxiliary annotated data, and then used for *any* object: the normal
template ``"[V]_1 ... [V]_n object."`` and the abnormal template ``"[W]_1 ... [W]_n damaged object."``.
The ``[V]``/``[W]`` tokens are free context vectors in CLIP's token-embedding space (:class:`PromptLearner`);
CLIP itself stays frozen. Training (:meth:`AnomalyCLIP.fit`) optimises, with Adam on the context vectors
only, the paper's losses:

- image level: cross-entropy of ``softmax(temperature * cos(global image embedding, [t_normal, t_abnormal]))``
  against the image label (anomalous when its mask has a positive pixel);
- pixel level, for each chosen vision layer: the per-patch two-class softmax of ``temperature *
  cos(patch token, t)`` on the patch grid, upsampled bilinearly to CLIP's image size, scored by a focal loss
  (gamma 2) plus a dice loss on the abnormal channel against the mask and one on the normal channel
  against its complement; the pixel term is weighted by :data:`PIXEL_LOSS_WEIGHT` (4, as the official
  ``train.py``).

Prediction: the image score is the abnormal probability of the global embedding (optionally mixed with
the map maximum, ``image_from_map``); the map is the mean over the chosen layers of the per-patch abnormal
probability, upsampled and Gaussian-blurred (``sigma``).

Departures from the paper, all deliberate and out of scope here:

- no learnable tokens inside the text encoder's layers ("text prompt tuning", depth 9 in the paper): only
  the input context vectors are learned;
- no DPAM (diagonally prominent attention maps): the vision tower is CLIP's unchanged, so its patch tokens
  are the plain ones of :meth:`~vlmad.zeroshot.clip.Clip.patch_features`;
- the temperature defaults to 100 (CLIP's logit scale); the official code uses 1/0.07 (about 14.3).

Training categories and test categories must not overlap (the method is *zero-shot* on the test
categories): :meth:`AnomalyCLIP.predict` refuses a category it was trained on, and :attr:`warnings` says
what the prompts were trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmad.zeroshot.base import ImageInput, ZeroShotMethod, register, smooth_maps
from vlmad.zeroshot.clip import Clip, ZeroShotError

if TYPE_CHECKING:
    import torch

PLACEHOLDER = "X"  # the word whose token positions the context vectors replace
NORMAL_SUFFIX = "object."
ABNORMAL_SUFFIX = "damaged object."
PIXEL_LOSS_WEIGHT = (
    4.0  # weight of the focal + dice terms against the image cross-entropy (official train.py)
)
ADAM_BETAS = (0.5, 0.999)  # official train.py
WEIGHTS_FILE = "prompts.safetensors"
META_FILE = "anomalyclip.json"
FORMAT_VERSION = 1

ProgressCallback = Callable[[int, int, float], None]


def default_layers(num_layers: int) -> list[int]:
    """Four evenly spaced 1-based vision layers ending at the last (``[3, 6, 9, 12]`` of 12, ``[6, 12, 18,
    24]`` of 24); fewer, without repeats, when the model has fewer than four."""
    picked = {num_layers * k // 4 for k in range(1, 5)}
    return sorted(x for x in picked if x >= 1)


def placeholder_prompts(n_ctx: int) -> list[str]:
    """The normal and abnormal templates with ``n_ctx`` placeholder words: what :class:`PromptLearner`
    tokenizes (and equals, when its context vectors are the placeholder's own token embeddings)."""
    words = " ".join([PLACEHOLDER] * n_ctx)
    return [f"{words} {NORMAL_SUFFIX}", f"{words} {ABNORMAL_SUFFIX}"]


_CLASSES: dict[str, type] = {}


def _prompt_learner_class() -> type:
    """:class:`PromptLearner`, built on first use so that importing this module does not load torch."""
    if "PromptLearner" in _CLASSES:
        return _CLASSES["PromptLearner"]
    import torch

    class PromptLearner(torch.nn.Module):
        """The two object-agnostic prompts with learnable context vectors.

        ``ctx_normal`` and ``ctx_abnormal`` are ``(n_ctx, C)`` parameters (``C`` the text tower's width),
        initialised ``N(0, 0.02^2)`` from ``seed``; they replace the token embeddings of the ``n_ctx``
        placeholder words right after the start token of :func:`placeholder_prompts`. :meth:`forward` returns
        the ``(2, D)`` normalised text embeddings (row 0 normal, row 1 abnormal), differentiable with respect
        to the context vectors only.
        """

        def __init__(self, clip: Clip, n_ctx: int, seed: int = 0) -> None:
            super().__init__()
            if int(n_ctx) < 1:
                raise ZeroShotError(f"AnomalyCLIP: n_ctx must be a positive integer, got {n_ctx!r}")
            self.clip = clip  # plain attribute: CLIP is not a submodule (not trained, not saved)
            self.n_ctx = int(n_ctx)
            self.texts = placeholder_prompts(self.n_ctx)
            ids = clip.tokenize(self.texts)
            word = clip.tokenize([PLACEHOLDER])[0]
            if word.shape[0] != 3:  # start, one word token, end
                raise ZeroShotError(
                    f"{clip.info.source}: the tokenizer splits {PLACEHOLDER!r} into "
                    f"{word.shape[0] - 2} tokens; AnomalyCLIP's prompts need a one-token placeholder word"
                )
            self.placeholder_id = int(word[1])
            slots = ids[:, 1 : 1 + self.n_ctx]
            if not bool((slots == self.placeholder_id).all()):
                raise ZeroShotError(
                    f"{clip.info.source}: the placeholder words of {self.texts[0]!r} do not tokenize to "
                    f"{self.n_ctx} single tokens after the start token"
                )
            with torch.no_grad():
                embeds = clip.token_embeddings(ids).detach().clone()
            width = embeds.shape[-1]
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            init = torch.randn(2, self.n_ctx, width, generator=gen, dtype=torch.float32) * 0.02
            init = init.to(device=embeds.device, dtype=embeds.dtype)
            self.ctx_normal = torch.nn.Parameter(init[0].clone())
            self.ctx_abnormal = torch.nn.Parameter(init[1].clone())
            self.register_buffer("prefix", embeds[:, :1].clone(), persistent=False)
            self.register_buffer("suffix", embeds[:, 1 + self.n_ctx :].clone(), persistent=False)
            self.register_buffer("eos", clip.eos_positions(ids).clone(), persistent=False)

        @property
        def width(self) -> int:
            """``C``: the text tower's token-embedding width (the context vectors' size)."""
            return int(self.ctx_normal.shape[-1])

        def forward(self) -> torch.Tensor:
            """``(2, D)`` normalised embeddings of the normal and the abnormal prompt."""
            ctx = torch.stack([self.ctx_normal, self.ctx_abnormal])
            embeds = torch.cat([self.prefix, ctx, self.suffix], dim=1)
            return self.clip.encode_text_embeddings(embeds, self.eos)

    _CLASSES["PromptLearner"] = PromptLearner
    return PromptLearner


def __getattr__(name: str) -> Any:
    if name == "PromptLearner":
        return _prompt_learner_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@register
class AnomalyCLIP(ZeroShotMethod):
    """AnomalyCLIP with object-agnostic learned prompts (see the module docstring).

    Must be trained with :meth:`fit` (or restored with :meth:`load`) before :meth:`predict`; option
    values are stored as given and returned by :meth:`options` (``layers=None`` stays ``None``; the layers
    used are :attr:`layers_used`).
    """

    method = "anomalyclip"
    label = "AnomalyCLIP"
    requires_fit = True

    def __init__(
        self,
        clip: Clip | str | Path,
        device: str | None = None,
        n_ctx: int = 12,
        layers: Sequence[int] | None = None,
        epochs: int = 2,
        lr: float = 1e-3,
        batch_size: int = 8,
        temperature: float = 100.0,
        sigma: float = 4.0,
        seed: int = 0,
        image_from_map: float = 0.0,
    ) -> None:
        super().__init__(clip, device=device)
        self.device = device
        self.n_ctx = n_ctx
        self.layers = layers
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.temperature = temperature
        self.sigma = sigma
        self.seed = seed
        self.image_from_map = image_from_map
        for name in ("n_ctx", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ZeroShotError(f"AnomalyCLIP: {name} must be a positive integer, got {value!r}")
        if not lr > 0 or not temperature > 0 or sigma < 0:
            raise ZeroShotError(
                f"AnomalyCLIP: lr and temperature must be > 0 and sigma >= 0; got lr={lr!r}, "
                f"temperature={temperature!r}, sigma={sigma!r}"
            )
        if not 0.0 <= image_from_map <= 1.0:
            raise ZeroShotError(f"AnomalyCLIP: image_from_map must be in [0, 1], got {image_from_map!r}")
        n = self.clip.info.num_layers
        bad = [x for x in self.layers_used if not 1 <= int(x) <= n]
        if not self.layers_used or bad:
            raise ZeroShotError(
                f"AnomalyCLIP: {self.clip.info.source} has vision layers 1-{n}; layers {list(layers or [])} "
                "must be a non-empty list of them"
            )
        self.prompts_: torch.nn.Module | None = None
        self.trained_on_: list[str] | None = None
        self.dataset_: str | None = None
        self.loss_history_: list[float] = []

    # ---- description ----------------------------------------------------------------------------------
    @property
    def layers_used(self) -> list[int]:
        """The 1-based vision layers whose patch tokens make the maps (``layers`` or the default four)."""
        if self.layers is None:
            return default_layers(self.clip.info.num_layers)
        return [int(x) for x in self.layers]

    @property
    def fitted(self) -> bool:
        return self.prompts_ is not None

    def options(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "n_ctx": self.n_ctx,
            "layers": None if self.layers is None else [int(x) for x in self.layers],
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "temperature": self.temperature,
            "sigma": self.sigma,
            "seed": self.seed,
            "image_from_map": self.image_from_map,
        }

    @property
    def warnings(self) -> list[str]:
        """The base warnings plus, once trained, what the prompts were trained on."""
        lines = super().warnings
        if self.trained_on_ is not None:
            where = f" (dataset {self.dataset_})" if self.dataset_ else ""
            lines.append(f"AnomalyCLIP prompts trained on {', '.join(self.trained_on_)}{where}")
        return lines

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "layers_used": self.layers_used,
            "trained_on": None if self.trained_on_ is None else list(self.trained_on_),
            "trained_dataset": self.dataset_,
        }

    # ---- training -------------------------------------------------------------------------------------
    def fit(
        self,
        images: Sequence[ImageInput],
        masks: Sequence[np.ndarray | None],
        categories: Sequence[str] | str,
        progress: ProgressCallback | None = None,
        dataset: str | None = None,
    ) -> AnomalyCLIP:
        """Learn the two prompts on auxiliary annotated data; returns ``self``.

        ``images``: uint8 RGB arrays (or paths); ``masks``: per image an ``(H, W)`` bool/uint8 array at the
        image's size (positive = anomalous pixel) or ``None`` for a good image; ``categories``: each image's
        category (or one name for all), recorded sorted in :attr:`trained_on_` so :meth:`predict` can refuse
        them; ``dataset``: the name shown in :attr:`warnings`. Every call starts from fresh context vectors
        (seeded by ``seed``) and runs ``epochs`` passes over shuffled batches of ``batch_size``; CLIP stays
        frozen. :attr:`loss_history_` gets each epoch's mean loss per image, and ``progress(epoch, epochs,
        loss)`` is called after each epoch (``epoch`` from 1). Deterministic on CPU for a given seed.
        """
        import torch

        from vlmad.detectors.base import as_image

        arrays = [as_image(x, what=f"AnomalyCLIP training image {i}") for i, x in enumerate(images)]
        if isinstance(categories, str):
            categories = [categories] * len(arrays)
        cats = [str(c) for c in categories]
        if not arrays:
            raise ZeroShotError("AnomalyCLIP.fit: no training images")
        if not len(arrays) == len(masks) == len(cats):
            raise ZeroShotError(
                f"AnomalyCLIP.fit: {len(arrays)} images, {len(masks)} masks and {len(cats)} categories; "
                "give one mask (or None) and one category per image"
            )
        binary = [_binary_mask(m, a.shape[:2], i) for i, (m, a) in enumerate(zip(masks, arrays, strict=True))]
        labels = torch.tensor([bool(m is not None and m.any()) for m in binary], dtype=torch.long)

        with torch.inference_mode(False), torch.enable_grad():
            prompts = _prompt_learner_class()(self.clip, self.n_ctx, seed=self.seed)
            optimizer = torch.optim.Adam(prompts.parameters(), lr=self.lr, betas=ADAM_BETAS)
            gen = torch.Generator(device="cpu").manual_seed(int(self.seed))
            history: list[float] = []
            for epoch in range(1, self.epochs + 1):
                order = torch.randperm(len(arrays), generator=gen).tolist()
                total = 0.0
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    loss = self._batch_loss(
                        prompts, [arrays[i] for i in idx], [binary[i] for i in idx], labels[idx]
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                history.append(total / len(order))
                if progress is not None:
                    progress(epoch, self.epochs, history[-1])
        prompts.eval()
        self.prompts_ = prompts
        self.trained_on_ = sorted(set(cats))
        self.dataset_ = dataset
        self.loss_history_ = history
        return self

    def _batch_loss(
        self,
        prompts: torch.nn.Module,
        images: list[np.ndarray],
        masks: list[np.ndarray | None],
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Image cross-entropy + :data:`PIXEL_LOSS_WEIGHT` x (focal + two dice terms) summed over layers."""
        import torch
        import torch.nn.functional as F

        size = self.clip.info.image_size
        with torch.no_grad():
            pixels = self.clip.preprocess(images)
            glob, patches = self.clip.patch_features(pixels, self.layers_used)
            gt = _masks_at(masks, size).to(glob.device)
        text = prompts()  # (2, D), differentiable
        logits = self.temperature * glob @ text.T
        loss = F.cross_entropy(logits, labels.to(glob.device))
        pixel = glob.new_zeros(())
        for tokens in patches:
            probs = self._patch_probs(tokens, text)  # (B, g, g, 2)
            probs = F.interpolate(probs.permute(0, 3, 1, 2), size=(size, size), mode="bilinear")
            pixel = (
                pixel + _focal_loss(probs, gt) + _dice_loss(probs[:, 1], gt) + _dice_loss(probs[:, 0], 1 - gt)
            )
        return loss + PIXEL_LOSS_WEIGHT * pixel

    def _patch_probs(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(B, g^2, D)`` normalised patch tokens -> ``(B, g, g, 2)`` normal/abnormal probabilities."""
        g = self.clip.info.grid
        probs = (self.temperature * tokens @ text.T).softmax(dim=-1)
        return probs.reshape(tokens.shape[0], g, g, 2)

    # ---- prediction -----------------------------------------------------------------------------------
    def _predict(
        self, images: list[np.ndarray], category: str, references: list[np.ndarray] | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores: ``(1 - image_from_map) * p_abnormal(global) + image_from_map * max(map)`` (the official
        ``test.py`` uses the global probability only, ``image_from_map=0``); maps: the mean over
        :attr:`layers_used` of the per-patch abnormal probability, upsampled to CLIP's image size and blurred
        by ``sigma``. ``references`` are ignored (zero-shot). :class:`ZeroShotError` before training or
        for a category the prompts were trained on."""
        import torch

        if self.prompts_ is None or self.trained_on_ is None:
            raise ZeroShotError(
                "AnomalyCLIP is not trained: call fit(images, masks, categories) on auxiliary annotated data "
                "or restore trained prompts with AnomalyCLIP.load(directory, clip)"
            )
        if category in self.trained_on_:
            raise ZeroShotError(
                f"AnomalyCLIP was trained on {category}; the training set and the test categories must not "
                "overlap"
            )
        text = self.prompts_()
        scores: list[torch.Tensor] = []
        maps: list[np.ndarray] = []
        w = float(self.image_from_map)
        for start in range(0, len(images), self.batch_size):
            pixels = self.clip.preprocess(images[start : start + self.batch_size])
            glob, patches = self.clip.patch_features(pixels, self.layers_used)
            p_image = (self.temperature * glob @ text.T).softmax(dim=-1)[:, 1]
            grids = torch.stack([self._patch_probs(t, text)[..., 1] for t in patches]).mean(dim=0)
            batch_maps = smooth_maps(grids, self.clip.info.image_size, float(self.sigma))
            if w > 0:
                peak = torch.tensor([float(m.max()) for m in batch_maps], device=p_image.device)
                p_image = (1.0 - w) * p_image + w * peak
            scores.append(p_image.double().cpu())
            maps.extend(batch_maps)
        return torch.cat(scores).numpy(), maps

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``prompts.safetensors`` (``ctx_normal``, ``ctx_abnormal``) and ``anomalyclip.json``
        (options, the CLIP it was trained with, training categories and dataset, loss history, the weights'
        sha256) to ``directory`` (created); returns it. :class:`ZeroShotError` when not trained."""
        from safetensors.torch import save_file

        if self.prompts_ is None:
            raise ZeroShotError("AnomalyCLIP.save: nothing to save; the prompts are not trained (call fit)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / WEIGHTS_FILE
        tensors = {
            "ctx_normal": self.prompts_.ctx_normal.detach().cpu().contiguous(),
            "ctx_abnormal": self.prompts_.ctx_abnormal.detach().cpu().contiguous(),
        }
        save_file(tensors, str(weights), metadata={"format": "vlmad-anomalyclip", "version": "1"})
        meta = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "options": self.options(),
            "layers_used": self.layers_used,
            "clip": self.clip.info.source,
            "clip_embed_dim": self.clip.info.embed_dim,
            "clip_text_width": _text_width(self.clip),
            "trained_on": self.trained_on_,
            "dataset": self.dataset_,
            "loss_history": self.loss_history_,
            "weights": WEIGHTS_FILE,
            "sha256": _sha256(weights),
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, clip: Clip | str | Path, check_source: bool = True) -> AnomalyCLIP:
        """Restore trained prompts written by :meth:`save`, for ``clip`` (a loaded :class:`Clip` or a source
        to load); predictions equal those of the saved model.

        :class:`ZeroShotError` naming the file and the problem when a file is missing or unreadable, the
        weights' sha256 differs from the recorded one, the context width differs from ``clip``'s text width,
        the embedding size differs, or (unless ``check_source=False``, for the same weights at another
        path) ``clip``'s source is not the one the prompts were trained with.
        """
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path = directory / META_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ZeroShotError(f"{meta_path}: cannot read AnomalyCLIP metadata: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("method") != cls.method:
            raise ZeroShotError(f"{meta_path}: not an AnomalyCLIP save (no method 'anomalyclip')")
        weights = directory / str(meta.get("weights", WEIGHTS_FILE))
        if not weights.is_file():
            raise ZeroShotError(f"{weights}: the prompt weights file is missing")
        digest = _sha256(weights)
        if digest != meta.get("sha256"):
            raise ZeroShotError(
                f"{weights}: sha256 {digest} differs from {meta.get('sha256')} recorded in {meta_path}; "
                "the file is corrupted or was replaced"
            )
        if not isinstance(clip, Clip):
            opts_device = (meta.get("options") or {}).get("device")
            clip = Clip.load(clip, device=opts_device)
        width = _text_width(clip)
        if meta.get("clip_text_width") != width or meta.get("clip_embed_dim") != clip.info.embed_dim:
            raise ZeroShotError(
                f"{weights}: trained for a CLIP of text width {meta.get('clip_text_width')} and embedding "
                f"size {meta.get('clip_embed_dim')} ({meta.get('clip')}); {clip.info.source} has {width} and "
                f"{clip.info.embed_dim}"
            )
        if check_source and _source_key(str(meta.get("clip"))) != _source_key(clip.info.source):
            raise ZeroShotError(
                f"{meta_path}: the prompts were trained with CLIP {meta.get('clip')}, not "
                f"{clip.info.source}; load them with that model (or check_source=False for the same "
                "weights at another path)"
            )
        try:
            tensors = load_file(str(weights))
        except (OSError, SafetensorError) as exc:
            raise ZeroShotError(f"{weights}: cannot read the prompt weights: {exc}") from exc
        options = dict(meta.get("options") or {})
        options.pop("device", None)
        try:
            model = cls(clip, **options)
        except TypeError as exc:
            raise ZeroShotError(f"{meta_path}: unknown AnomalyCLIP options: {exc}") from exc
        prompts = _prompt_learner_class()(clip, model.n_ctx, seed=model.seed)
        for name in ("ctx_normal", "ctx_abnormal"):
            value = tensors.get(name)
            expected = tuple(getattr(prompts, name).shape)
            if value is None or tuple(value.shape) != expected:
                got = None if value is None else tuple(value.shape)
                raise ZeroShotError(f"{weights}: {name} should be a tensor of shape {expected}, got {got}")
            with torch.no_grad():
                getattr(prompts, name).copy_(value)
        prompts.eval()
        model.prompts_ = prompts
        model.trained_on_ = sorted(str(c) for c in meta.get("trained_on") or [])
        model.dataset_ = meta.get("dataset")
        model.loss_history_ = [float(x) for x in meta.get("loss_history") or []]
        return model


# ---- helpers --------------------------------------------------------------------------------------------
def _binary_mask(mask: np.ndarray | None, shape: tuple[int, int], i: int) -> np.ndarray | None:
    """``mask > 0`` as bool, checked to be 2-D at the image's size; ``None`` stays ``None`` (a good image)."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.ndim != 2 or arr.shape != tuple(shape):
        raise ZeroShotError(
            f"AnomalyCLIP.fit: mask {i} has shape {arr.shape}; expected (H, W) = {tuple(shape)}, the size of "
            "its image"
        )
    return arr > 0


def _masks_at(masks: list[np.ndarray | None], size: int) -> torch.Tensor:
    """``(B, size, size)`` float 0/1 masks, resized nearest; zeros for ``None``."""
    import torch
    import torch.nn.functional as F

    out = []
    for m in masks:
        if m is None:
            out.append(torch.zeros(size, size))
            continue
        t = torch.from_numpy(m.astype(np.float32))[None, None]
        out.append(F.interpolate(t, size=(size, size), mode="nearest")[0, 0])
    return torch.stack(out)


def _focal_loss(
    probs: torch.Tensor, gt: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5
) -> torch.Tensor:
    """Focal loss of ``(B, 2, H, W)`` probabilities against ``(B, H, W)`` 0/1 targets, mean over pixels, with
    the official code's label smoothing (targets clamped to ``[smooth, 1 - smooth]``, ``pt + smooth``)."""
    target = gt.clamp(smooth, 1.0 - smooth)
    pt = probs[:, 1] * target + probs[:, 0] * (1.0 - target) + smooth
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


def _dice_loss(prob: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``1 - mean over images of (2 |p g| + 1) / (|p| + |g| + 1)`` for ``(B, H, W)`` maps."""
    p = prob.reshape(prob.shape[0], -1)
    g = gt.reshape(gt.shape[0], -1)
    dice = (2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)
    return 1 - dice.mean()


def _text_width(clip: Clip) -> int:
    return int(clip.model.config.text_config.hidden_size)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_key(source: str) -> str:
    """A Hub id as is; an existing local path resolved (so ``./m`` and ``/abs/m`` match)."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else source
