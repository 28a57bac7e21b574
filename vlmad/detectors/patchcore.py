"""PatchCore (Roth et al. 2022): a coreset memory bank of normal patch features, nearest-neighbour scoring.

Fit: every training image's patch features (the chosen stages, each averaged over an ``aggregate`` x
``aggregate`` window, upsampled to the finest stage's grid and concatenated; wide_resnet50_2 layers 2+3:
1536 dimensions on a 32x32 grid at 256 px) are reduced to a ``coreset_ratio`` fraction by greedy k-center
selection on seeded random projections (:mod:`vlmad.detectors.coreset`); the selected full features are
the memory bank.

Predict: a patch's score is the Euclidean distance to its nearest bank feature
(:class:`~vlmad.detectors.knn.NearestNeighbors`, ``knn_backend``/``approximate``/``knn_precision``:
``"auto"`` screens with a certified bfloat16 product where that is fast and still returns the exact
neighbours, ``"float32"`` always uses the float32 product); the score grid is
upsampled bilinearly to ``image_size`` and blurred with a Gaussian of ``sigma`` pixels. The image score
is the paper's reweighted maximum, as anomalib computes it: with ``s* = ||m_test* - m*||`` the largest
patch score, ``m*`` its nearest bank feature and ``N_b(m*)`` the ``b = num_neighbors`` bank features
nearest ``m*`` (``m*`` itself first),
``score = (1 - exp(||m_test* - m*||) / sum_{m in N_b(m*)} exp(||m_test* - m||)) * s*``
(the plain maximum when ``b = 1``).

Memory while fitting: only the ``projection_dim``-dimensional projections (N x 128 float32, 0.5 GB for
1,000 training images of 256 px) stay in RAM for the selection; the full float32 features (6.3 GB for the
same images) are kept in RAM when they fit ``memory_budget_mb`` and otherwise written to an unnamed
temporary file (plain writes and reads, in ``TMPDIR``), from which the selected rows are read back.
"""

from __future__ import annotations

import math
import tempfile
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmad.detectors.base import Detector, DetectorError, Progress, register, upsample_smooth
from vlmad.detectors.knn import PRECISIONS as KNN_PRECISIONS
from vlmad.errors import ConfigError

if TYPE_CHECKING:
    import torch

KNN_BACKENDS = ("auto", "faiss", "torch")
MAX_BLOCK_ELEMENTS = 2**24  # largest query-block x bank distance matrix the torch backend builds at once
READ_CHUNK_BYTES = 64 << 20  # rows read back from a spilled feature file at a time


class PatchStore:
    """``n_rows`` float32 rows of ``dim`` numbers: in RAM when they fit ``budget_bytes``, else in an
    unnamed temporary file written and read with plain file I/O (page cache, not resident memory)."""

    def __init__(self, n_rows: int, dim: int, budget_bytes: int) -> None:
        import torch

        self.n_rows, self.dim = n_rows, dim
        self.row_bytes = dim * 4
        self.ram: torch.Tensor | None = None
        self.file: Any = None
        if n_rows * self.row_bytes <= budget_bytes:
            self.ram = torch.empty(n_rows, dim, dtype=torch.float32)
        else:
            # kept open until close(): an unnamed file the OS deletes when it is closed
            self.file = tempfile.TemporaryFile(prefix="vlmad-patchcore-")  # noqa: SIM115

    @property
    def spilled(self) -> bool:
        return self.file is not None

    def _io_error(self, e: OSError) -> DetectorError:
        size = self.n_rows * self.row_bytes / 2**30
        return DetectorError(
            f"patchcore: cannot use a {size:.1f} GB temporary file for the training features "
            f"({e}); free space in {tempfile.gettempdir()} (or set TMPDIR), raise memory_budget_mb, "
            "or fit on fewer or smaller images"
        )

    def write(self, start: int, rows: torch.Tensor) -> None:
        """Store ``rows`` (float32, CPU) as rows ``start ..``."""
        import torch

        rows = rows.detach().to("cpu", torch.float32).contiguous()
        if self.ram is not None:
            self.ram[start : start + len(rows)] = rows
            return
        try:
            self.file.seek(start * self.row_bytes)
            self.file.write(memoryview(rows.numpy()).cast("B"))
        except OSError as e:
            raise self._io_error(e) from None

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """The rows at ``indices`` (in that order), float32 ``(len(indices), dim)``."""
        import torch

        indices = indices.long().cpu()
        if self.ram is not None:
            return self.ram[indices]
        out = torch.empty(len(indices), self.dim, dtype=torch.float32)
        order = torch.argsort(indices)
        wanted = indices[order]
        chunk = max(1, READ_CHUNK_BYTES // self.row_bytes)
        buf = np.empty((chunk, self.dim), dtype=np.float32)
        pos = 0
        try:
            while pos < len(wanted):
                first = int(wanted[pos])
                start = first - first % chunk
                rows = min(chunk, self.n_rows - start)
                self.file.seek(start * self.row_bytes)
                view = memoryview(buf[:rows]).cast("B")
                got = 0
                while got < len(view):
                    n = self.file.readinto(view[got:])
                    if not n:
                        raise OSError("unexpected end of the temporary feature file")
                    got += n
                end = pos + int(torch.searchsorted(wanted[pos:], start + rows))
                out[order[pos:end]] = torch.from_numpy(buf[(wanted[pos:end] - start).numpy()])
                pos = end
        except OSError as e:
            raise self._io_error(e) from None
        return out

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.ram = None


@register
class PatchCore(Detector):
    """PatchCore: greedy-coreset memory bank of patch features, nearest-neighbour patch scores.

    Fitted state: ``memory_bank_`` ``(M, D)`` float32 on the backbone's device, ``n_train_patches_``,
    ``spilled_`` (whether the fit went through a temporary file). See the module docstring.
    """

    method = "patchcore"
    label = "PatchCore"

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: tuple[int, ...] = (2, 3),
        weights: str = "auto",
        seed: int = 0,
        image_size: int = 256,
        aggregate: int = 3,
        batch_size: int = 16,
        device: str | None = None,
        coreset_ratio: float = 0.1,
        projection_dim: int = 128,
        num_neighbors: int = 9,
        knn_backend: str = "auto",
        approximate: bool = False,
        sigma: float = 4.0,
        memory_budget_mb: float = 1024,
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
        self.coreset_ratio = coreset_ratio
        self.projection_dim = projection_dim
        self.num_neighbors = num_neighbors
        self.knn_backend = knn_backend
        self.approximate = approximate
        self.sigma = sigma
        self.memory_budget_mb = memory_budget_mb
        self.knn_precision = knn_precision

    # ---- parameters -----------------------------------------------------------------------------------
    def _check_params(self) -> None:
        self._require_positive_ints("projection_dim", "num_neighbors", "batch_size")
        r = self.coreset_ratio
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 < r <= 1:
            raise ConfigError(
                f"patchcore: coreset_ratio must be in (0, 1] (the fraction of training patches kept in "
                f"the memory bank; 0.1 in the paper, 1 keeps all), got {r!r}"
            )
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, int | float) or self.sigma < 0:
            raise ConfigError(f"patchcore: sigma must be >= 0 pixels (0 = no blur), got {self.sigma!r}")
        m = self.memory_budget_mb
        if isinstance(m, bool) or not isinstance(m, int | float) or not m >= 0:
            raise ConfigError(f"patchcore: memory_budget_mb must be >= 0 (0 = always use a file), got {m!r}")
        if self.knn_backend not in KNN_BACKENDS:
            raise ConfigError(
                f"patchcore: knn_backend {self.knn_backend!r}; choose one of {', '.join(KNN_BACKENDS)}"
            )
        if not isinstance(self.approximate, bool):
            raise ConfigError(f"patchcore: approximate must be true or false, got {self.approximate!r}")
        if self.knn_precision not in KNN_PRECISIONS:
            raise ConfigError(
                f"patchcore: knn_precision {self.knn_precision!r}; choose one of {', '.join(KNN_PRECISIONS)}"
            )
        if self.knn_precision == "bf16-screen" and (self.knn_backend == "faiss" or self.approximate):
            raise ConfigError(
                "patchcore: knn_precision 'bf16-screen' is for exact search with the torch backend; "
                "use knn_backend='torch' (or 'auto') and approximate=False"
            )

    @staticmethod
    def _flat(emb: torch.Tensor) -> torch.Tensor:
        """``(B, D, h, w)`` -> ``(B*h*w, D)``, rows image by image, then row-major over the grid."""
        return emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])

    # ---- fit ------------------------------------------------------------------------------------------
    def _fit(self, images: list[np.ndarray], progress: Progress | None) -> None:
        import torch

        from vlmad.detectors.coreset import greedy_coreset, random_projection

        self._check_params()
        self._knn = None
        fe = self.features_ = self._make_features()
        n_images = len(images)
        h, w = fe.grid
        dim = fe.dim
        per_image = h * w
        n_rows = n_images * per_image
        n_select = max(1, math.floor(n_rows * float(self.coreset_ratio)))
        keep_all = n_select >= n_rows
        total = 2 * n_images  # extraction, then selection reported as the same number of units

        proj_dim = min(int(self.projection_dim), dim)
        proj_matrix = None if proj_dim >= dim else random_projection(dim, proj_dim, int(self.seed), fe.device)
        proj = None if keep_all else torch.empty(n_rows, proj_dim, dtype=torch.float32, device=fe.device)
        store = PatchStore(n_rows, dim, int(float(self.memory_budget_mb) * 2**20))
        try:
            with torch.inference_mode():
                for start, emb in fe.iter_embed(images):
                    if tuple(emb.shape[-2:]) != (h, w):
                        raise DetectorError(
                            f"patchcore: the backbone gave a {tuple(emb.shape[-2:])} feature grid, "
                            f"expected {(h, w)}"
                        )
                    flat = self._flat(emb)
                    if not bool(torch.isfinite(flat).all()):
                        raise DetectorError(
                            f"patchcore: the backbone produced NaN or infinite features for training images "
                            f"{start}..{start + emb.shape[0] - 1}; check the backbone weights"
                        )
                    row = start * per_image
                    if proj is not None:
                        proj[row : row + len(flat)] = flat if proj_matrix is None else flat @ proj_matrix
                    store.write(row, flat)
                    if progress:
                        progress(min(start + emb.shape[0], n_images), total)

            if keep_all:
                selected = torch.arange(n_rows)
            else:

                def step(done: int, of: int) -> None:
                    if progress:
                        progress(n_images + (n_images * done) // max(1, of), total)

                selected = greedy_coreset(
                    proj, n_select, projection_dim=None, seed=int(self.seed), progress=step, overwrite=True
                )
                del proj
            bank = store.gather(selected)
            self.spilled_ = store.spilled
        finally:
            store.close()
        if progress:
            progress(total, total)
        self.memory_bank_ = bank.to(fe.device)
        self.n_train_patches_ = n_rows

    # ---- predict --------------------------------------------------------------------------------------
    def _index(self) -> Any:
        """The bank's nearest-neighbour search, built once per bank and search option (an HNSW index
        takes seconds to build, and callers predict batch by batch)."""
        from vlmad.detectors.knn import NearestNeighbors

        key = (self.knn_backend, bool(self.approximate), self.knn_precision)
        cached = getattr(self, "_knn", None)
        if cached is not None and cached[0] is self.memory_bank_ and cached[1] == key:
            return cached[2]
        index = NearestNeighbors(
            self.memory_bank_,
            backend=self.knn_backend,  # type: ignore[arg-type]
            approximate=bool(self.approximate),
            block=max(1, min(4096, MAX_BLOCK_ELEMENTS // len(self.memory_bank_))),
            precision=self.knn_precision,  # type: ignore[arg-type]
        )
        self._knn = (self.memory_bank_, key, index)
        return index

    def image_scores(
        self, patch_scores: torch.Tensor, locations: torch.Tensor, queries: torch.Tensor, index: Any
    ) -> torch.Tensor:
        """The paper's reweighted image scores (float64) of a batch.

        ``patch_scores`` ``(B, P)`` nearest-bank distances, ``locations`` ``(B, P)`` their bank indices,
        ``queries`` ``(B, P, D)`` the patch features, ``index`` the bank's nearest-neighbour search.
        """
        import torch

        s_star, p = patch_scores.max(dim=1)  # first maximum on ties, as torch.argmax
        b = min(int(self.num_neighbors), len(self.memory_bank_))
        if b <= 1:
            return s_star.double()
        rows = torch.arange(len(p), device=p.device)
        m_test = queries[rows, p].to(self.memory_bank_.device).double()  # (B, D)
        nn_index = locations[rows, p].to(self.memory_bank_.device)
        m_star = self.memory_bank_[nn_index]  # (B, D)
        _, support = index.search(m_star, b)  # N_b(m*): m* itself first (exact search)
        support = support.to(self.memory_bank_.device)
        missed = (support != nn_index[:, None]).all(dim=1)  # an approximate search may miss m* itself
        support[missed, -1] = nn_index[missed]
        bank_support = self.memory_bank_[support].double()  # (B, b, D)
        dists = (bank_support - m_test[:, None]).norm(dim=2)  # (B, b)
        d_star = (m_star.double() - m_test).norm(dim=1)  # ||m_test* - m*||
        top = torch.maximum(dists.amax(dim=1), d_star)
        weight = 1.0 - torch.exp(d_star - top) / torch.exp(dists - top[:, None]).sum(dim=1)
        return weight.cpu() * s_star.double().cpu()

    def _predict(
        self, images: list[np.ndarray], progress: Progress | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        import torch

        self._check_params()
        fe = self.features_
        h, w = fe.grid
        index = self._index()
        scores: list[np.ndarray] = []
        maps: list[np.ndarray] = []
        with torch.inference_mode():
            for start, emb in fe.iter_embed(images):
                n = emb.shape[0]
                queries = self._flat(emb)
                dist, loc = index.search(queries, 1)
                patch = dist[:, 0].float().view(n, h * w)
                locations = loc[:, 0].view(n, h * w)
                s = self.image_scores(patch, locations, queries.view(n, h * w, -1), index)
                scores.append(s.cpu().numpy())
                amap = upsample_smooth(patch.view(n, h, w), fe.image_size, float(self.sigma))
                maps.extend(m for m in amap.cpu().numpy().astype(np.float32))
                if progress:
                    progress(min(start + n, len(images)), len(images))
        return np.concatenate(scores).astype(np.float64), maps

    # ---- persistence ----------------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        meta = {
            "n_train_patches": int(self.n_train_patches_),
            "coreset_size": len(self.memory_bank_),
        }
        return {"memory_bank": self.memory_bank_}, meta

    def _set_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        import torch

        self._check_params()
        if set(tensors) != {"memory_bank"}:
            raise ValueError(
                f"expected one tensor 'memory_bank', found {', '.join(sorted(tensors)) or 'none'}"
            )
        bank = tensors["memory_bank"]
        dim = self.features_.dim
        where = f"{self.backbone} layers {tuple(self.features_.info.layers)} ({dim} feature dimensions)"
        if bank.ndim != 2 or bank.shape[0] < 1:
            raise ValueError(f"the memory bank has shape {tuple(bank.shape)}; expected (M >= 1, {dim})")
        if bank.shape[1] != dim:
            raise ValueError(
                f"the memory bank holds {bank.shape[1]}-dimensional features but {where} gives {dim}; "
                "the model was fitted with another backbone or layers"
            )
        if not bank.is_floating_point() or not bool(torch.isfinite(bank).all()):
            raise ValueError(f"the memory bank must hold finite floating-point numbers ({bank.dtype})")
        n_patches = int(meta.get("n_train_patches", bank.shape[0]))
        if n_patches < bank.shape[0]:
            raise ValueError(f"the memory bank has {bank.shape[0]} rows but n_train_patches={n_patches}")
        self._knn = None
        self.memory_bank_ = bank.float().contiguous().to(self.features_.device)
        self.n_train_patches_ = n_patches
