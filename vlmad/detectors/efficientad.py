"""EfficientAD-S (Batzner et al., WACV 2024): a student-teacher pair of small patch description networks
(PDN) plus an autoencoder, trained on the normal images of one product.

- The teacher PDN (384 outputs) describes every ~33 x 33 pixel patch. The paper distils it from an
  ImageNet WideResNet on ImageNet. Offline we have no ImageNet, so either ``teacher_weights`` names a
  trained teacher (safetensors, or a ``.pth`` read with ``weights_only=True``; anomalib's and the original
  ``nn.Sequential`` key names are accepted) or the teacher is distilled here from the chosen backbone on
  the training images themselves for ``teacher_steps`` steps (a flagged, weaker substitute: the teacher
  has seen only this product; the backbone's aggregated ``layers`` features, projected to 384 dims by a
  PCA fitted on those images, are the targets).
- The student PDN (768 outputs) learns to match the channel-normalised teacher on the first 384 channels
  with the hard feature loss (only distances at or above their 0.999 quantile count) and to predict the
  autoencoder's output on the last 384; the autoencoder reconstructs the teacher's output from a 1 x 1
  bottleneck on colour-jittered images. The paper's ImageNet penalty (the student's outputs on ImageNet
  images pushed to zero) runs only when ``penalty_images`` names a folder of unrelated natural images;
  otherwise it is skipped and the warnings say so.
- Maps: local = mean squared teacher-student difference, global = mean squared autoencoder-student
  difference; each mapped linearly so that its 0.9 and 0.995 quantiles on held-out normal images become
  0 and 0.1, averaged, padded back to the image geometry and upsampled bilinearly; score = maximum.

Training is seeded and deterministic on CPU (so reruns and save/load round trips are exact); the GPU is
used when present. Steps: the paper trains 70,000 steps at batch size 1 (and the teacher 60,000 steps on
ImageNet). The defaults here (``steps=4000``, ``teacher_steps=2000``) are a compromise meant for a GPU;
raise them for paper-level results. Measured on 2 shared CPU cores at 256 x 256 (wide_resnet50_2
teacher source): about 4 s per student step (0.25 steps/s), 6 s per distillation step of 8 images and
0.7 s per predicted image, so the defaults take hours on a CPU; at 64 px a student step is about 0.1 s.
Memory: distillation holds the projected targets of all training images (384 x 56 x 56 floats, 4.8 MB
per image at 256 px).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmad.detectors.base import Detector, DetectorError, Progress, register
from vlmad.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vlmad.detectors.features import BackboneInfo

TEACHER_CHANNELS = 384
HARD_QUANTILE = 0.999  # the hard feature loss keeps the distances at or above this quantile
QA, QB = 0.9, 0.995  # map normalisation: these held-out quantiles go to 0 and 0.1
TEACHER_BATCH = 8  # images per distillation step (the paper's teacher pretraining uses 16)
EVAL_IMAGES = 16  # training images on which the losses are reported before and after training
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# the original implementation's teacher is an nn.Sequential; its convolutions sit at these indices
_SEQUENTIAL_KEYS = {"0": "conv1", "3": "conv2", "6": "conv3", "8": "conv4"}


# ---- networks ---------------------------------------------------------------------------------------
def _networks() -> dict[str, type]:
    """The PDN and autoencoder classes (built lazily so that importing this module does not load torch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def imagenet_norm(x: torch.Tensor) -> torch.Tensor:
        return (x - mean.to(x.device)) / std.to(x.device)

    class SmallPDN(nn.Module):
        """EfficientAD-S patch description network: 4 convolutions, 2 average poolings, stride 4."""

        def __init__(self, out_channels: int, padding: bool) -> None:
            super().__init__()
            p = 1 if padding else 0
            self.conv1 = nn.Conv2d(3, 128, kernel_size=4, padding=3 * p)
            self.conv2 = nn.Conv2d(128, 256, kernel_size=4, padding=3 * p)
            self.conv3 = nn.Conv2d(256, 256, kernel_size=3, padding=1 * p)
            self.conv4 = nn.Conv2d(256, out_channels, kernel_size=4)
            self.pool1 = nn.AvgPool2d(kernel_size=2, stride=2, padding=1 * p)
            self.pool2 = nn.AvgPool2d(kernel_size=2, stride=2, padding=1 * p)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.pool1(F.relu(self.conv1(imagenet_norm(x))))
            x = self.pool2(F.relu(self.conv2(x)))
            return self.conv4(F.relu(self.conv3(x)))

    class AutoEncoder(nn.Module):
        """The EfficientAD autoencoder: 6 strided convolutions to a 1 x 1 x 64 code, 8 convolutions with
        bilinear upsampling back to the PDN's output grid. The last encoder kernel spans what is left
        after 5 halvings (8 at 256 px, as in the paper), so any size >= 32 px works."""

        def __init__(self, out_channels: int, image_size: int) -> None:
            super().__init__()
            self.image_size = image_size
            rest = image_size
            for _ in range(5):
                rest //= 2
            self.enc = nn.ModuleList(
                [
                    nn.Conv2d(3, 32, 4, stride=2, padding=1),
                    nn.Conv2d(32, 32, 4, stride=2, padding=1),
                    nn.Conv2d(32, 64, 4, stride=2, padding=1),
                    nn.Conv2d(64, 64, 4, stride=2, padding=1),
                    nn.Conv2d(64, 64, 4, stride=2, padding=1),
                    nn.Conv2d(64, 64, max(1, rest)),
                ]
            )
            self.dec = nn.ModuleList([nn.Conv2d(64, 64, 4, padding=2) for _ in range(6)])
            self.dec7 = nn.Conv2d(64, 64, 3, padding=1)
            self.dec8 = nn.Conv2d(64, out_channels, 3, padding=1)
            self.dropout = nn.Dropout(p=0.2)

        def forward(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
            x = imagenet_norm(x)
            for i, conv in enumerate(self.enc):
                x = conv(x)
                if i < len(self.enc) - 1:
                    x = F.relu(x)
            s = self.image_size
            # each 4 x 4 convolution with padding 2 grows the map by one: upsample to size - 1 first
            sizes = [s // 64 - 1, s // 32, s // 16 - 1, s // 8, s // 4 - 1, s // 2 - 1]
            for size, conv in zip(sizes, self.dec, strict=True):
                x = F.interpolate(x, size=(max(1, size), max(1, size)), mode="bilinear")
                x = self.dropout(F.relu(conv(x)))
            x = F.interpolate(x, size=out_size, mode="bilinear")
            return self.dec8(F.relu(self.dec7(x)))

    return {"pdn": SmallPDN, "ae": AutoEncoder}


def pdn_output_size(image_size: int, padding: bool) -> int:
    """Side of the PDN's output grid for a square input (56 at 256 px unpadded, 64 padded)."""
    p = 1 if padding else 0
    s = image_size + 6 * p - 3  # conv1
    s = (s + 2 * p - 2) // 2 + 1  # pool1
    s = s + 6 * p - 3  # conv2
    s = (s + 2 * p - 2) // 2 + 1  # pool2
    s = s + 2 * p - 2  # conv3
    return s - 3  # conv4


def pdn_centres(image_size: int, padding: bool) -> np.ndarray:
    """Input pixel coordinate (pixel centres at integers) of the centre of each PDN output cell's
    receptive field, along one axis."""
    p = 1 if padding else 0
    c = np.arange(pdn_output_size(image_size, padding), dtype=np.float64)
    c = c + 1.5  # conv4: kernel 4, no padding
    c = c - p + 1.0  # conv3: kernel 3
    c = 2 * c - p + 0.5  # pool2: kernel 2, stride 2
    c = c - 3 * p + 1.5  # conv2: kernel 4
    c = 2 * c - p + 0.5  # pool1
    return c - 3 * p + 1.5  # conv1


def normalize_map(amap: torch.Tensor | np.ndarray, qa: float, qb: float) -> Any:
    """The linear map sending ``qa`` to 0 and ``qb`` to 0.1 (EfficientAD's quantile normalisation)."""
    return 0.1 * (amap - qa) / max(qb - qa, 1e-12)


def _hard_loss(distance: torch.Tensor) -> torch.Tensor:
    """Mean of the distances at or above their ``HARD_QUANTILE`` quantile (top-k: no size limit, unlike
    ``torch.quantile``)."""
    import torch

    flat = distance.flatten()
    k = max(1, math.ceil(flat.numel() * (1.0 - HARD_QUANTILE)))
    return torch.topk(flat, k, sorted=False).values.mean()


def _jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The paper's autoencoder augmentation: brightness, contrast or saturation (one, chosen at random)
    by a factor from U(0.8, 1.2), as torchvision defines them; ``x`` in [0, 1], ``(B, 3, H, W)``."""
    import torch

    factor = float(torch.empty(1).uniform_(0.8, 1.2, generator=gen))
    which = int(torch.randint(0, 3, (1,), generator=gen))
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    if which == 0:
        other = torch.zeros_like(x)
    elif which == 1:
        other = gray.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
    else:
        other = gray.expand_as(x)
    return (factor * x + (1.0 - factor) * other).clamp(0.0, 1.0)


def _adam(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one pass over all parameters; 6x faster than the default loop on CPU
    for the PDN's 4.6M parameters, and deterministic)."""
    import torch

    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)


def teacher_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A PDN-S teacher's weights from a file, with keys ``conv1.weight`` ... ``conv4.bias``.

    Accepts this module's names, anomalib's (optionally under ``model.teacher.`` / ``teacher.``) and the
    original implementation's ``nn.Sequential`` indices (0, 3, 6, 8); a ``student``/``ae`` entry or
    anything else is ignored. Errors are DetectorError naming the file.
    """
    from vlmad.detectors.features import BackboneError, read_state_dict

    try:
        raw = read_state_dict(path)
    except BackboneError as e:
        raise DetectorError(str(e).replace("backbone weights", "teacher weights")) from None
    teacher_keys = {k for k in raw if k.startswith(("teacher.", "model.teacher."))}
    if teacher_keys:
        raw = {k.split("teacher.", 1)[1]: raw[k] for k in teacher_keys}
    out = {}
    for key, value in raw.items():
        head, _, rest = key.partition(".")
        head = _SEQUENTIAL_KEYS.get(head, head)
        if head in ("conv1", "conv2", "conv3", "conv4") and rest in ("weight", "bias"):
            out[f"{head}.{rest}"] = value.float()
    if len(out) != 8:
        raise DetectorError(
            f"{path}: not an EfficientAD-S teacher (expected conv1..conv4 weights and biases, found "
            f"{sorted(out) or 'none'} among {len(raw)} tensors)"
        )
    if out["conv4.weight"].shape[0] != TEACHER_CHANNELS or out["conv1.weight"].shape[:2] != (128, 3):
        raise DetectorError(
            f"{path}: teacher has conv1 {tuple(out['conv1.weight'].shape)} and conv4 "
            f"{tuple(out['conv4.weight'].shape)}; EfficientAD-S needs (128, 3, 4, 4) and "
            f"({TEACHER_CHANNELS}, 256, 4, 4)"
        )
    return out


def _list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"penalty_images {folder}: not a folder; give a folder of natural images or None")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"penalty_images {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


@register
class EfficientAD(Detector):
    """EfficientAD-S (see the module docstring).

    Parameters (stored unchanged): ``image_size`` (square side the networks see, >= 64); ``steps``
    (student/autoencoder training steps); ``teacher_steps`` (distillation steps when no
    ``teacher_weights``); ``lr``, ``weight_decay`` (Adam, learning rate / 10 for the last 5% of steps, as
    the paper); ``teacher_lr`` (Adam for the distillation); ``batch_size`` (images per training step, 1 in
    the paper); ``teacher_weights`` (a trained PDN-S teacher file, or None to distil one);
    ``backbone``/``layers``/``weights``/``seed`` (what the teacher is distilled from; ``seed`` also seeds
    every random choice of the training); ``padding`` (padded convolutions, as anomalib's option);
    ``holdout`` (share of the normal images kept out of training for the map quantiles; at least one
    image; with a single image, the training image itself, flagged in the warnings);
    ``penalty_images`` (a folder of unrelated natural images for the ImageNet penalty, or None to skip
    it); ``device``.

    Fitted: ``teacher_``, ``student_``, ``autoencoder_`` (torch modules), ``teacher_mean_``/``teacher_std_``
    ``(1, 384, 1, 1)``, ``quantiles_`` (``qa_st``, ``qb_st``, ``qa_ae``, ``qb_ae``), ``loss_curve_`` (rows
    ``[step, hard, penalty, ae, stae, total]`` averaged over windows of about 1% of the training; noisy
    at batch size 1), ``fit_losses_`` (``{"before": …, "after": …}``: the hard, st, ae and stae losses
    on up to 16 training images without augmentation, before and after training),
    ``teacher_curve_`` (rows ``[step, distillation loss]``, empty for a loaded teacher), ``holdout_indices_``
    (the training images kept for the quantiles; empty when there were none), ``teacher_source_``.
    """

    method = "efficientad"
    label = "EfficientAD-S"
    uses_backbone = False  # the backbone only teaches the teacher; prediction needs the PDNs alone

    def __init__(
        self,
        image_size: int = 256,
        steps: int = 4000,
        teacher_steps: int = 2000,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        teacher_lr: float = 1e-3,
        batch_size: int = 1,
        teacher_weights: str | None = None,
        backbone: str = "wide_resnet50_2",
        layers: Sequence[int] = (2, 3),
        weights: str = "auto",
        seed: int = 0,
        padding: bool = False,
        holdout: float = 0.1,
        penalty_images: str | None = None,
        device: str | None = None,
    ) -> None:
        self.image_size = image_size
        self.steps = steps
        self.teacher_steps = teacher_steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.teacher_lr = teacher_lr
        self.batch_size = batch_size
        self.teacher_weights = teacher_weights
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.seed = seed
        self.padding = padding
        self.holdout = holdout
        self.penalty_images = penalty_images
        self.device = device

    # ---- configuration --------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if int(self.image_size) < 64:
            raise ConfigError(
                f"efficientad: image_size must be >= 64 (the PDN sees 33 px patches), got {self.image_size}"
            )
        if int(self.steps) < 1 or int(self.batch_size) < 1:
            raise ConfigError(
                f"efficientad: steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}"
            )
        if self.teacher_weights is None and int(self.teacher_steps) < 1:
            raise ConfigError("efficientad: teacher_steps must be >= 1 when no teacher_weights file is given")
        if not 0.0 <= float(self.holdout) < 1.0:
            raise ConfigError(f"efficientad: holdout is a fraction in [0, 1), got {self.holdout}")
        if float(self.lr) <= 0 or float(self.teacher_lr) <= 0 or float(self.weight_decay) < 0:
            raise ConfigError("efficientad: lr and teacher_lr must be > 0 and weight_decay >= 0")

    def _device(self) -> str:
        from vlmad.detectors.features import pick_device

        return pick_device(self.device)

    def _build(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        nets = _networks()
        pad = bool(self.padding)
        teacher = nets["pdn"](TEACHER_CHANNELS, pad)
        student = nets["pdn"](2 * TEACHER_CHANNELS, pad)
        ae = nets["ae"](TEACHER_CHANNELS, int(self.image_size))
        return teacher, student, ae

    def _to_tensor(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, 3, S, S)`` float in [0, 1] on the device (resized with an area filter when shrinking)."""
        import cv2
        import torch

        s = int(self.image_size)
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
        return torch.from_numpy(batch).to(self._device()).permute(0, 3, 1, 2).float().div_(255.0)

    # ---- teacher ------------------------------------------------------------------------------------------
    def _distil_teacher(
        self, teacher: nn.Module, images: list[np.ndarray], gen: torch.Generator, tick: Progress
    ) -> tuple[BackboneInfo, list[list[float]]]:
        """Train ``teacher`` to regress the backbone's PCA-projected features of ``images``."""
        import torch
        import torch.nn.functional as F

        from vlmad.detectors.features import FeatureExtractor

        device = self._device()
        fx = FeatureExtractor(
            backbone=self.backbone,
            layers=self.layers,
            weights=self.weights,
            seed=self.seed,
            image_size=self.image_size,
            aggregate=3,
            batch_size=16,
            device=device,
        )
        chunks = [f.to(device) for _, f in fx.iter_embed(images)]  # (b, D, h, w) each
        n = len(images)
        d, w = chunks[0].shape[1], chunks[0].shape[3]
        # PCA of the aggregated features over every position of every image (float64 sums, chunk by chunk)
        s1 = torch.zeros(d, dtype=torch.float64, device=device)
        s2 = torch.zeros(d, d, dtype=torch.float64, device=device)
        count = 0
        for f in chunks:
            r = f.permute(0, 2, 3, 1).reshape(-1, d).double()
            s1 += r.sum(0)
            s2 += r.T @ r
            count += r.shape[0]
        mean = s1 / count
        cov = (s2 - count * torch.outer(mean, mean)) / max(count - 1, 1)
        evals, evecs = torch.linalg.eigh(cov)
        proj = evecs[:, torch.argsort(evals, descending=True)[: min(TEACHER_CHANNELS, d)]]
        if proj.shape[1] < TEACHER_CHANNELS:  # fewer backbone channels than 384: fill with random mixes
            extra = torch.randn(d, TEACHER_CHANNELS - proj.shape[1], generator=gen, dtype=torch.float64)
            proj = torch.cat([proj, extra.to(device) / math.sqrt(d)], dim=1)
        proj, mean = proj.float(), mean.float()
        # sample the (stride-8) projected map at the centres of the PDN's receptive fields
        stride = fx.info.strides[0]
        u = (pdn_centres(int(self.image_size), bool(self.padding)) - (stride - 1) / 2.0) / stride
        norm = torch.tensor((2.0 * u + 1.0) / w - 1.0, dtype=torch.float32, device=device)
        gy, gx = torch.meshgrid(norm, norm, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None]
        parts = []
        while chunks:
            f = chunks.pop(0)
            z = ((f.permute(0, 2, 3, 1) - mean) @ proj).permute(0, 3, 1, 2)
            grid_b = grid.expand(z.shape[0], -1, -1, -1)
            parts.append(
                F.grid_sample(z, grid_b, mode="bilinear", padding_mode="border", align_corners=False)
            )
        targets = torch.cat(parts)
        del parts
        targets /= targets.pow(2).mean().sqrt().clamp_min(1e-12)  # unit mean square overall
        x_all = self._to_tensor(images)
        opt = _adam(list(teacher.parameters()), float(self.teacher_lr), float(self.weight_decay))
        steps = int(self.teacher_steps)
        curve: list[list[float]] = []
        window: list[float] = []
        every = max(1, steps // 100)
        teacher.train()
        for step in range(steps):
            idx = torch.randperm(n, generator=gen)[: min(TEACHER_BATCH, n)].to(device)
            loss = F.mse_loss(teacher(x_all[idx]), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            window.append(float(loss.detach()))
            if len(window) == every or step == steps - 1:
                curve.append([step + 1, float(np.mean(window))])
                window = []
            tick(1)
        teacher.eval()
        self.teacher_source_ = f"distilled from {fx.info.name} layers {list(fx.info.layers)}"
        return fx.info, curve

    # ---- fit --------------------------------------------------------------------------------------------
    def _fit(self, images: list[np.ndarray], progress: Progress | None) -> None:
        import torch

        self._check_params()
        device = self._device()
        n = len(images)
        rng = np.random.default_rng(self.seed)
        warnings: list[str] = []
        if n >= 2 and float(self.holdout) > 0:
            n_held = min(n - 1, max(1, round(float(self.holdout) * n)))
            order = rng.permutation(n)
            held_idx, train_idx = sorted(order[:n_held].tolist()), sorted(order[n_held:].tolist())
        else:
            held_idx, train_idx = list(range(n)), list(range(n))
            warnings.append(
                "EfficientAD map quantiles computed on the training images themselves (no held-out normal "
                f"image: {n} image(s), holdout {self.holdout}); normal maps will look better than they are"
            )
        train = [images[i] for i in train_idx]
        held = [images[i] for i in held_idx]
        penalty_files = _list_images(self.penalty_images) if self.penalty_images is not None else []
        if not penalty_files:
            warnings.append(
                "EfficientAD trained without the ImageNet penalty (no penalty_images folder given); "
                "the student may also imitate the teacher on unlike images"
            )
        total = (0 if self.teacher_weights is not None else int(self.teacher_steps)) + int(self.steps)
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            if progress is not None:
                progress(done[0], total)

        with torch.random.fork_rng(devices=[device] if device.startswith("cuda") else []):
            torch.manual_seed(int(self.seed))
            gen = torch.Generator().manual_seed(int(self.seed))
            teacher, student, ae = self._build()
            teacher, student, ae = teacher.to(device), student.to(device), ae.to(device)
            self._backbone_info: BackboneInfo | None = None
            self.teacher_curve_: list[list[float]] = []
            if self.teacher_weights is not None:
                teacher.load_state_dict(
                    {k: v.to(device) for k, v in teacher_state(self.teacher_weights).items()}
                )
                from vlmad.detectors.features import file_sha256

                self.teacher_source_ = (
                    f"loaded from {Path(self.teacher_weights).resolve()} "
                    f"(sha256 {file_sha256(self.teacher_weights)[:16]})"
                )
            else:
                self._backbone_info, self.teacher_curve_ = self._distil_teacher(teacher, train, gen, tick)
                warnings.insert(
                    0,
                    f"EfficientAD teacher distilled from {self.backbone} on {len(train)} normal images for "
                    f"{self.teacher_steps} steps (no pretrained teacher; the paper distils on ImageNet)",
                )
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            x_train = self._to_tensor(train)
            with torch.no_grad():
                outs = torch.cat([teacher(x_train[i : i + 16]) for i in range(0, len(train), 16)])
                self.teacher_mean_ = outs.mean(dim=(0, 2, 3), keepdim=True)
                self.teacher_std_ = outs.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
                del outs
            self.teacher_, self.student_, self.autoencoder_ = teacher, student.eval(), ae.eval()
            probe = x_train[:EVAL_IMAGES]
            before = self._losses(probe)
            self.loss_curve_ = self._train(teacher, student, ae, x_train, penalty_files, gen, tick)
            self.fit_losses_ = {"before": before, "after": self._losses(probe)}
            st, stae = [], []
            with torch.no_grad():
                x_held = self._to_tensor(held)
                for i in range(0, len(held), 16):
                    a, b = self._raw_maps(x_held[i : i + 16])
                    st.append(a.cpu())
                    stae.append(b.cpu())
            st_all = torch.cat(st).double().numpy().ravel()
            ae_all = torch.cat(stae).double().numpy().ravel()
            self.quantiles_ = {
                "qa_st": float(np.quantile(st_all, QA)),
                "qb_st": float(np.quantile(st_all, QB)),
                "qa_ae": float(np.quantile(ae_all, QA)),
                "qb_ae": float(np.quantile(ae_all, QB)),
            }
        self.n_train_ = len(train)
        self.holdout_indices_ = held_idx if held_idx != train_idx else []
        self.extra_warnings_ = warnings

    def _train(
        self,
        teacher: nn.Module,
        student: nn.Module,
        ae: nn.Module,
        x_train: torch.Tensor,
        penalty_files: list[Path],
        gen: torch.Generator,
        tick: Progress,
    ) -> list[list[float]]:
        import torch

        steps = int(self.steps)
        params = list(student.parameters()) + list(ae.parameters())
        opt = _adam(params, float(self.lr), float(self.weight_decay))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, int(0.95 * steps)), gamma=0.1)
        n = x_train.shape[0]
        bs = int(self.batch_size)
        out_size = (pdn_output_size(int(self.image_size), bool(self.padding)),) * 2
        mean, std = self.teacher_mean_, self.teacher_std_
        curve: list[list[float]] = []
        window: list[list[float]] = []
        every = max(1, steps // 100)
        student.train()
        ae.train()
        for step in range(steps):
            idx = torch.randint(0, n, (bs,), generator=gen).to(x_train.device)
            x = x_train[idx]
            aug = _jitter(x, gen)
            parts = [x, aug]
            if penalty_files:
                parts.append(self._penalty_batch(penalty_files, gen, bs))
            # one batched pass per network (no batch norm: the same as separate passes, faster on CPU)
            with torch.no_grad():
                t, t_aug = ((teacher(torch.cat([x, aug])) - mean) / std).split(bs)
            s_all = student(torch.cat(parts))
            loss_hard = _hard_loss((t - s_all[:bs, :TEACHER_CHANNELS]) ** 2)
            if penalty_files:
                loss_pen = (s_all[2 * bs :, :TEACHER_CHANNELS] ** 2).mean()
            else:
                loss_pen = torch.zeros((), device=x.device)
            a = ae(aug, out_size)
            loss_ae = ((t_aug - a) ** 2).mean()
            loss_stae = ((a - s_all[bs : 2 * bs, TEACHER_CHANNELS:]) ** 2).mean()
            loss = loss_hard + loss_pen + loss_ae + loss_stae
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            window.append([float(v.detach()) for v in (loss_hard, loss_pen, loss_ae, loss_stae, loss)])
            if len(window) == every or step == steps - 1:
                curve.append([float(step + 1), *np.mean(window, axis=0).tolist()])
                window = []
            tick(1)
        student.eval()
        ae.eval()
        return curve

    def _penalty_batch(self, files: list[Path], gen: torch.Generator, count: int) -> torch.Tensor:
        """``count`` random penalty images as the paper prepares ImageNet ones: resized to twice the
        size, converted to grey with probability 0.3, centre-cropped to the size."""
        import cv2
        import torch

        from vlmad.data.images import load_image

        s = int(self.image_size)
        out = []
        for _ in range(count):
            path = files[int(torch.randint(0, len(files), (1,), generator=gen))]
            im = cv2.resize(load_image(path), (2 * s, 2 * s), interpolation=cv2.INTER_AREA)
            if float(torch.rand(1, generator=gen)) < 0.3:
                g = cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)
                im = np.repeat(g[..., None], 3, axis=2)
            c = s // 2
            out.append(im[c : c + s, c : c + s])
        return self._to_tensor(out)

    def _losses(self, x: torch.Tensor) -> dict[str, float]:
        """The training losses on fixed images, without augmentation or dropout: ``hard`` (student vs
        teacher, hardest 0.1%), ``st`` (student vs teacher, all distances), ``ae`` (autoencoder vs
        teacher), ``stae`` (student vs autoencoder)."""
        import torch

        out_size = (pdn_output_size(int(self.image_size), bool(self.padding)),) * 2
        self.student_.eval()
        self.autoencoder_.eval()
        out: dict[str, list[torch.Tensor]] = {"hard": [], "st": [], "ae": [], "stae": []}
        with torch.no_grad():
            for i in range(0, x.shape[0], 16):
                xb = x[i : i + 16]
                t = (self.teacher_(xb) - self.teacher_mean_) / self.teacher_std_
                s = self.student_(xb)
                a = self.autoencoder_(xb, out_size)
                dist = (t - s[:, :TEACHER_CHANNELS]) ** 2
                out["hard"].append(_hard_loss(dist))
                out["st"].append(dist.mean())
                out["ae"].append(((t - a) ** 2).mean())
                out["stae"].append(((a - s[:, TEACHER_CHANNELS:]) ** 2).mean())
        return {k: float(torch.stack(v).mean()) for k, v in out.items()}

    # ---- maps ---------------------------------------------------------------------------------------------
    def _raw_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(local, global)`` un-normalised ``(B, h, w)`` maps on the PDN grid of a ``[0, 1]`` batch."""
        import torch

        out_size = (pdn_output_size(int(self.image_size), bool(self.padding)),) * 2
        with torch.no_grad():
            t = (self.teacher_(x) - self.teacher_mean_) / self.teacher_std_
            s = self.student_(x)
            a = self.autoencoder_(x, out_size)
            local = ((t - s[:, :TEACHER_CHANNELS]) ** 2).mean(1)
            glob = ((a - s[:, TEACHER_CHANNELS:]) ** 2).mean(1)
        return local, glob

    def normalized_maps(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(local, global)`` quantile-normalised ``(B, h, w)`` maps on the PDN grid (0 at the held-out
        0.9 quantile, 0.1 at the 0.995 quantile)."""
        local, glob = self._raw_maps(self._to_tensor(images))
        q = self.quantiles_
        return normalize_map(local, q["qa_st"], q["qb_st"]), normalize_map(glob, q["qa_ae"], q["qb_ae"])

    def _predict(
        self, images: list[np.ndarray], progress: Progress | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        import torch
        import torch.nn.functional as F

        s = int(self.image_size)
        scores: list[float] = []
        maps: list[np.ndarray] = []
        bs = 16
        for start in range(0, len(images), bs):
            local, glob = self.normalized_maps(images[start : start + bs])
            combined = (0.5 * local + 0.5 * glob)[:, None]
            if not self.padding:  # the unpadded PDN loses 4 cells per side: pad back as the paper does
                combined = F.pad(combined, (4, 4, 4, 4))
            with torch.no_grad():
                full = F.interpolate(combined, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
            for m in full.cpu().numpy():
                maps.append(m.astype(np.float32))
                scores.append(float(m.max()))
            if progress is not None:
                progress(min(start + bs, len(images)), len(images))
        return np.asarray(scores, dtype=np.float64), maps

    # ---- persistence ------------------------------------------------------------------------------------
    def save_teacher(self, path: str | Path) -> Path:
        """Write the fitted teacher PDN to a safetensors file that ``teacher_weights`` accepts (distil once,
        reuse for other products); returns the path."""
        from safetensors.torch import save_file

        self._check_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.teacher_.state_dict().items()}
        save_file(
            state, str(path), metadata={"format": "vlmad-efficientad-teacher", "source": self.teacher_source_}
        )
        return path

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        for prefix, net in (
            ("teacher", self.teacher_),
            ("student", self.student_),
            ("ae", self.autoencoder_),
        ):
            for k, v in net.state_dict().items():
                tensors[f"{prefix}.{k}"] = v
        tensors["teacher_mean"] = self.teacher_mean_
        tensors["teacher_std"] = self.teacher_std_
        info = self._backbone_info
        meta = {
            "quantiles": dict(self.quantiles_),
            "teacher_source": self.teacher_source_,
            "backbone_info": info.to_dict() if info is not None else None,
            "n_train": self.n_train_,
            "holdout_indices": list(self.holdout_indices_),
            "loss_curve": self.loss_curve_,
            "fit_losses": self.fit_losses_,
            "teacher_curve": self.teacher_curve_,
            "extra_warnings": list(self.extra_warnings_),
        }
        return tensors, meta

    def _set_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        from vlmad.detectors.features import BackboneInfo

        device = self._device()
        teacher, student, ae = self._build()
        for prefix, net in (("teacher", teacher), ("student", student), ("ae", ae)):
            part = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            net.load_state_dict(part, strict=True)  # a RuntimeError names missing/mismatched keys
        self.teacher_ = teacher.to(device).eval()
        self.student_ = student.to(device).eval()
        self.autoencoder_ = ae.to(device).eval()
        for p in self.teacher_.parameters():
            p.requires_grad_(False)
        self.teacher_mean_ = tensors["teacher_mean"].float().to(device)
        self.teacher_std_ = tensors["teacher_std"].float().to(device)
        self.quantiles_ = {k: float(v) for k, v in meta["quantiles"].items()}
        self.teacher_source_ = str(meta.get("teacher_source", ""))
        info = meta.get("backbone_info")
        self._backbone_info = None
        if info is not None:
            info = dict(info)
            for key in ("layers", "channels", "strides"):
                info[key] = tuple(info[key])
            self._backbone_info = BackboneInfo(**info)
        self.n_train_ = int(meta.get("n_train", 0))
        self.holdout_indices_ = [int(i) for i in meta.get("holdout_indices", [])]
        self.loss_curve_ = [list(r) for r in meta.get("loss_curve", [])]
        self.fit_losses_ = dict(meta.get("fit_losses", {}))
        self.teacher_curve_ = [list(r) for r in meta.get("teacher_curve", [])]
        self.extra_warnings_ = [str(s) for s in meta.get("extra_warnings", [])]
