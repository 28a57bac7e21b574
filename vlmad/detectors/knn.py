"""k-nearest-neighbour search of patch features against a bank (PatchCore's memory bank, SPADE's gallery).

Exact search is a blocked matrix product on the bank's device (``backend="torch"``), so memory stays
``block x len(bank)`` numbers. faiss (when installed) does approximate search (HNSW) and, when asked with
``backend="faiss"``, exact search (``IndexFlatL2``). ``backend="auto"`` picks torch for exact search even
when faiss is installed: on the 2-core CPU machine, faiss-cpu 1.15's flat index took 15.4 s and torch 5.1 s
for 16,384 queries against a 20,480 x 1,536 bank (PatchCore's sizes; ``bench/detectors.py --only knn``
measures it again). Distances are Euclidean (not squared).

``precision`` chooses how the torch backend finds the neighbours; both ways return the exact neighbours:

- ``"float32"``: one float32 product per block of queries (``|b|^2 - 2 q.b``, then ``+ |q|^2``).
- ``"bf16-screen"``: a certified bfloat16 screen (:class:`_Bf16Screen`): a bfloat16 product ranks the bank,
  the best ``k + extra`` candidates are re-measured exactly in float32 (``sum((q - b)^2)``), and a
  rigorous bound on the bfloat16 rounding proves that no other bank row can be nearer. Queries the
  bound cannot settle get a wider candidate list (4x at a time while it stays within ``len(bank) // 64``:
  on the CPU re-measuring a candidate costs about what 100 bank rows of the float32 product do) and, if
  that fails too, the float32 product above (counted in ``last_fallbacks``).
- ``"auto"``: the screen where bfloat16 products are fast, float32 elsewhere. Measured, not assumed: on
  this project's CPU (Xeon with AMX) a 819 x 1,536 by 1,536 x 20,480 product takes 0.066 s in bfloat16
  and 0.25 s in float32; with AMX disabled (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``, the AVX512-BF16
  instructions alone) bfloat16 took 0.40-0.53 s against float32's 0.34-0.39 s, so ``auto`` asks for
  AMX-BF16 on a CPU, and for a CUDA GPU with bfloat16 tensor cores (compute capability 8.0 or newer;
  that path is written for, not yet measured on, a GPU).

Measured on the shared 2-core AMX machine (``bench/detectors.py --only knn``, minimum of 3 runs): 16,384
PatchCore queries (wide_resnet50_2 layers 2+3, random weights) against its 20,480 x 1,536 bank took 1.83 s
with the screen and 4.15 s with float32 (0.4 % of the queries widened, none fell back; the screen's
neighbours equalled float64's for all checked queries, float32's for 99.85 %); Gaussian rows: 1.71 s
against 4.01 s.

Distances from the screen are ``sqrt(sum((q - b)^2))`` in float32, which is more accurate than the float32
product's ``sqrt(|q|^2 + |b|^2 - 2 q.b)`` (that one loses ``~1e-7 * |q|^2`` to cancellation); rows that
fall back return the float32 product's numbers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from vlmad.errors import ConfigError

if TYPE_CHECKING:
    import torch

Backend = Literal["auto", "faiss", "torch"]
Precision = Literal["auto", "float32", "bf16-screen"]
PRECISIONS = ("auto", "float32", "bf16-screen")
Fallback = Callable[["torch.Tensor", int], tuple["torch.Tensor", "torch.Tensor"]]

U32 = 2.0**-24  # unit roundoff of float32 (round to nearest)
U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
TINY32 = 2.0**-126  # smallest normal float32 (and bfloat16): what flush-to-zero may drop
SCREEN_MARGIN = 2.0  # the certificate's hardware-dependent error terms are multiplied by this
RERANK_ELEMENTS = 2**20  # gathered bank numbers per exact re-measuring chunk (4 MB: stays in cache)
MAX_CLUSTERS = 8  # the screen centres each of up to this many clusters of the bank on its own mean ...
CLUSTER_ROWS = 4096  # ... one cluster per this many bank rows


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def bf16_matmul_is_fast(device: torch.device) -> bool:
    """Whether a bfloat16 matrix product is clearly faster than a float32 one on ``device``: a CUDA GPU
    with bfloat16 tensor cores (compute capability >= 8.0) and a torch whose ``torch.mm`` can return the
    float32 result (``out_dtype``), or a CPU with AMX-BF16 (AVX512-BF16 alone measured no faster than
    float32; see the module docstring)."""
    import torch

    if device.type == "cuda":
        return (
            bool(torch.cuda.is_available())
            and torch.cuda.get_device_capability(device) >= (8, 0)
            and _cuda_out_dtype_works(device)
        )
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        caps = get()
        return bool(caps.get("amx_bf16", False) and caps.get("amx_tile", False))
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch before get_capabilities
    return bool(probe is not None and probe())


def _gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term float sum."""
    if n * u >= 0.5:
        raise ConfigError(f"a {n}-term sum is too long for the bfloat16 screen's float32 error bound")
    return n * u / (1.0 - n * u)


class NearestNeighbors:
    """Search a fixed ``(N, D)`` float32 bank. ``search(queries, k) -> (distances, indices)``, both
    ``(M, k)``, nearest first; distances are Euclidean.

    ``precision`` (torch backend only; see the module docstring) is stored unchanged; ``screen`` says
    whether the bfloat16 screen is in use, and after each search ``last_widened`` and ``last_fallbacks``
    count the queries that needed a wider candidate list and the float32 product."""

    def __init__(
        self,
        bank: torch.Tensor,
        backend: Backend = "auto",
        approximate: bool = False,
        block: int = 1024,
        precision: Precision = "auto",
        extra: int = 8,
    ) -> None:
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ConfigError(
                f"a nearest-neighbour bank is a non-empty (N, D) matrix, got {tuple(bank.shape)}"
            )
        if backend not in ("auto", "faiss", "torch"):
            raise ConfigError(f"knn backend {backend!r}: choose auto, faiss or torch")
        if precision not in PRECISIONS:
            raise ConfigError(f"knn precision {precision!r}: choose {', '.join(PRECISIONS)}")
        if isinstance(extra, bool) or not isinstance(extra, int) or extra < 1:
            raise ConfigError(f"knn extra candidates must be an integer >= 1, got {extra!r}")
        if backend == "faiss" and not faiss_available():
            raise ConfigError(
                "knn backend 'faiss' asked for but faiss is not installed (pip install faiss-cpu)"
            )
        use_faiss = backend == "faiss" or (
            backend == "auto" and approximate and faiss_available() and bank.device.type == "cpu"
        )
        if approximate and not use_faiss:
            raise ConfigError("approximate search needs faiss (pip install faiss-cpu) on a CPU bank")
        if use_faiss and precision == "bf16-screen":
            raise ConfigError("knn precision 'bf16-screen' is for the torch backend, not faiss")
        self.bank = bank.float().contiguous()
        self.block = block
        self.backend = "faiss" if use_faiss else "torch"
        self.approximate = approximate
        self.precision = precision
        self.extra = extra
        self.last_widened = 0
        self.last_fallbacks = 0
        self._index = None
        self._screen: _Bf16Screen | None = None
        if use_faiss:
            import faiss

            data = self.bank.cpu().numpy()
            if approximate:
                index = faiss.IndexHNSWFlat(data.shape[1], 32)
                index.hnsw.efSearch = 64
            else:
                index = faiss.IndexFlatL2(data.shape[1])
            index.add(data)
            self._index = index
            return
        self._bank_sq = (self.bank * self.bank).sum(1)
        self._bank_t = self.bank.T
        if precision == "bf16-screen" or (precision == "auto" and bf16_matmul_is_fast(self.bank.device)):
            self._screen = _Bf16Screen.build(self.bank)

    @property
    def screen(self) -> bool:
        """Whether searches go through the certified bfloat16 screen."""
        return self._screen is not None

    def __len__(self) -> int:
        return int(self.bank.shape[0])

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` nearest bank rows of each query row: ``(distances, indices)``, both ``(M, k')`` with
        ``k' = min(k, len(bank))``, nearest first; on the queries' device."""
        k = min(k, len(self))
        self.last_widened = self.last_fallbacks = 0
        if self._index is not None:
            import torch

            q = queries.detach().float().cpu().contiguous().numpy()
            d2, idx = self._index.search(q, k)
            d = torch.from_numpy(d2).clamp_min_(0).sqrt_()
            return d.to(queries.device), torch.from_numpy(idx).to(queries.device)
        q = queries.to(self.bank.device).float()
        screen = self._screen
        if screen is None or k < 1 or q.ndim != 2 or q.shape[0] == 0 or q.shape[1] != self.bank.shape[1]:
            d2, ind = self._search_float32(q, k)  # degenerate calls behave (and fail) as before
        else:
            import torch

            parts = []
            for s in range(0, q.shape[0], self.block):
                part = screen.search(q[s : s + self.block], k, self.extra, self._search_float32)
                parts.append(part[:2])
                self.last_widened += part[2]
                self.last_fallbacks += part[3]
            d2, ind = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return d2.sqrt_().to(queries.device), ind.to(queries.device)

    def _search_float32(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The float32 product: squared Euclidean distances (clamped at 0) and indices of float32 queries
        on the bank's device."""
        import torch

        dists, inds = [], []
        for s in range(0, q.shape[0], self.block):
            qb = q[s : s + self.block]
            # ||b||^2 - 2 q.b in one fused addmm; ||q||^2 is constant per row, so it is added after the
            # minimum. Both cut passes over the block x N matrix: 22 % faster than the plain expression
            # at PatchCore's sizes on CPU.
            d2 = torch.addmm(self._bank_sq[None], qb, self._bank_t, alpha=-2.0)
            if k == 1:
                v, i = d2.min(dim=1, keepdim=True)
            else:
                v, i = torch.topk(d2, k, dim=1, largest=False)
            v += (qb * qb).sum(1, keepdim=True)
            dists.append(v.clamp_min_(0))
            inds.append(i)
        return torch.cat(dists), torch.cat(inds)


class _Bf16Screen:
    """Exact k-nearest neighbours through a bfloat16 product with a per-query certificate.

    Written by hand: no library we know of (torch, faiss, scikit-learn) offers an exact search that screens
    in low precision and *proves* its result; faiss and friends compute in float32 or are approximate
    without a guarantee.

    **Screen.** The bank is split into up to ``MAX_CLUSTERS`` clusters (a few seeded k-means steps on a
    sample; any split is correct, a good one only makes the bound tighter), and each cluster's rows are
    centred on its centre ``mu`` (distances do not change, and the bfloat16 error scales with the norms
    of the centred vectors: on PatchCore features a query and its nearest bank row are ~10x closer to
    their cluster's centre than to the origin). For each cluster a query block becomes
    ``q' = fl32(q - mu)`` and, with ``b' = fl32(b - mu)``, both sides are rounded to bfloat16 (``q~``,
    ``b~``). One product per cluster of augmented rows (zero-padded to a multiple of 32 for AMX)::

        [q~, -1/2, -1/2, hq, lq, A_q, C_q, 1, E_q] . [b~, hb, lb, -1/2, -1/2, e_b, n_b, w_b, 1] = T

    gives ``-2 T = |q' - b'|^2 + (rounding) - 2 R``, where ``hb + lb`` is the float32 ``|b'|^2`` split
    into two bfloat16 numbers (``hq + lq`` likewise) and ``R = A_q e_b + C_q n_b + w_b + E_q`` is an
    upper bound on the rounding error. So ``V = -2 T`` is a *lower* bound on each row's squared
    distance (up to the output's own rounding), the candidates are the rows with the smallest ``V`` over
    all clusters, and every other row is bounded by the ``(m+1)``-th ``V``. (The bank side is stored
    negated, so the product is ``-T = V / 2``, mostly >= 0, whose piece minima :func:`_smallest` can take
    on the bit patterns.) Folding the norms and the bound into the product spares passes over the
    ``block x N`` matrix.

    **Bound** (``a = |q'|``, ``b = |b'|``, ``e_q = |q' - q~|``, ``e_b = |b' - b~|``, measured from the
    data: the differences are exact in float32; ``u = 2^-8``, ``u32 = 2^-24``, ``g`` = ``gamma_K`` with
    ``K = D + 8`` terms, ``gamma_n = n u32 / (1 - n u32)``):

    1. Inputs: ``q~.b~ - q'.b' = -(q~.e_b) - (e_q.b')``, so ``|q~.b~ - q'.b'| <= |q~| e_b + e_q b``
       (Cauchy-Schwarz). On PatchCore features ``e_b / b`` is ~0.42u (at most 0.48u); the a-priori bound
       is ``u``.
    2. Norms: ``|hb + lb - |b'|^2| <= eta_b = |hb + lb - fl32(|b'|^2)| + g |b'|^2`` (a float32 sum of
       D squares is within ``gamma_D`` of the true one); ``eta_q`` likewise.
    3. Accumulation: products of bfloat16 numbers are exact in float32 (8 + 8 <= 24 bits) and the kernel
       adds them in float32 in some order, so its sum is within ``g * sum |terms|`` of the exact sum,
       ``sum |terms| <= |q~| (b + e_b) + (|hb| + |lb| + |hq| + |lq|) / 2 + R``. (Checked on this
       project's CPU: oneDNN's bfloat16 product differed from the correctly rounded exact one by less
       than ``u``, and equalled it for all but 2e-5 of the entries: float32 accumulation, one rounding.)
    4. Output: a bfloat16 result (the CPU product) is ``T_acc / (1 + delta)``, ``|delta| <= u``, so
       ``-2 T_acc >= V - u |V|``; a float32 result (CUDA) adds nothing.
    5. Underflow: AMX treats bfloat16 subnormal inputs as zero and flushes float32 results below
       ``2^-126``: at most ``2^-126 (sqrt(D) (|q~| + |b~|) + 2K)`` in ``T``, plus ``2^-126`` times the
       extra columns' partners.
    6. Centring: ``q'``, ``b'`` are within ``u32 |q'| / (1 - u32)``, ``u32 |b'| / (1 - u32)`` of
       ``q - mu``, ``b - mu``, so the true distance ``rho = |q - b|`` and ``rho' = |q' - b'|`` differ by
       at most ``eps_c (a + b)``, and with ``b <= a + rho'``: ``rho >= rho' (1 - eps_c) - 2 eps_c a``.

    With ``A_q >= |q~| (1 + g)``, ``C_q >= e_q + g |q~|``, ``w_b >= (eta_b + g (|hb| + |lb|)) / 2`` and
    ``E_q >= (eta_q + g (|hq| + |lq|)) / 2`` plus the query's underflow terms (each inflated by
    ``1 + 2g`` for its own accumulation and rounded up to bfloat16), items 1-5 give for every bank row
    ``rho'^2 >= V - u |V|``. A row outside the ``m`` candidates has ``V >= x``, the ``(m+1)``-th smallest
    ``V``, and the bound increases with ``V``; item 6 (with ``a`` the largest over the clusters) turns it
    into ``L``, a lower bound on its true squared distance. The candidates are re-measured from the
    float32 rows as ``r = |q - b|^2`` (:func:`_remeasure`), within ``gamma_{D+8} rho^2`` of ``rho^2``, so
    the ``k``-th one's true squared distance is at most ``U = r_k / (1 - gamma_{D+8})``. ``L > U`` proves
    that the ``k`` re-measured candidates are the ``k`` nearest rows (ties among the candidates need no
    proof: either row is a right answer). A query without the proof gets 4x the candidates (the same
    products, a larger ``topk``), and after the last step the float32 product.

    The hardware-dependent terms (``g``, ``u`` of the output, underflow, centring, re-measuring) are
    multiplied by ``SCREEN_MARGIN`` (2), which also covers tensor cores that truncate instead of
    rounding while they add (Fasi et al., 2021); the input terms 1-2 are measured from the very numbers
    the kernel multiplies, and Cauchy-Schwarz needs no margin.
    """

    EXTRA_COLUMNS = 8

    def __init__(
        self,
        bank: torch.Tensor,
        bank_aug: torch.Tensor,
        order: torch.Tensor,
        centres: torch.Tensor,
        bounds: list[tuple[int, int]],
    ) -> None:
        self.bank = bank  # (N, D) float32, as given: the exact re-measuring uses it
        self.bank_aug = bank_aug  # (N, Kpad) bfloat16, rows in cluster order
        self.order = order  # bank_aug row -> bank row
        self.centres = centres  # (C, D) float32
        self.bounds = bounds  # each cluster's rows of bank_aug
        self.dim = int(bank.shape[1])
        self.g = SCREEN_MARGIN * _gamma(self.dim + self.EXTRA_COLUMNS)
        # CUDA: a float32 result (with a bfloat16 result, PyTorch lets cuBLAS reduce split-K partial
        # sums in bfloat16 by default, which the bound does not cover)
        self.out_float32 = bank.device.type == "cuda"

    @classmethod
    def build(cls, bank: torch.Tensor) -> _Bf16Screen | None:
        """The screen of a float32 ``(N, D)`` bank, or None when the bank holds NaN or infinite values
        or has millions of columns (the float32 product then decides, as before)."""
        import torch

        n, d = bank.shape
        # a NaN or infinite number makes the sum non-finite (so may an overflow: then no screen either)
        if not bool(torch.isfinite(bank.sum())) or SCREEN_MARGIN * (d + 16) * U32 >= 0.5:
            return None
        centres, labels = _clusters(bank, max(1, min(MAX_CLUSTERS, n // CLUSTER_ROWS)))
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=len(centres)).tolist()
        keep = [c for c, size in enumerate(counts) if size]
        ends = list(itertools.accumulate(counts[c] for c in keep))
        bounds = [(end - counts[c], end) for c, end in zip(keep, ends, strict=True)]
        k_pad = -(-(d + cls.EXTRA_COLUMNS) // 32) * 32  # AMX tiles take 32 bfloat16 numbers per row
        aug = torch.empty(n, k_pad, dtype=torch.bfloat16, device=bank.device)
        aug[:, d + cls.EXTRA_COLUMNS :] = 0
        self = cls(bank, aug, order, centres[keep].contiguous(), bounds)
        g = self.g
        step = max(1, RERANK_ELEMENTS // d)
        for (lo, hi), mu in zip(bounds, self.centres, strict=True):
            for s in range(lo, hi, step):
                e = min(s + step, hi)
                p = _Parts(bank.index_select(0, order[s:e]).sub_(mu), g, aug[s:e, :d])
                aug[s:e, :d].neg_()  # the bank side is negated: the product is -T (see the class doc)
                aug[s:e, d] = -p.hi
                aug[s:e, d + 1] = -p.lo
                aug[s:e, d + 2 : d + 4] = 0.5
                aug[s:e, d + 4] = -_round_up(p.err)
                aug[s:e, d + 5] = -_round_up(p.norm)
                aug[s:e, d + 6] = -_round_up((p.eta + g * p.split_abs) / 2 * (1 + 2 * g))
                aug[s:e, d + 7] = -1.0
        return self

    def search(
        self, q: torch.Tensor, k: int, extra: int, fallback: Fallback
    ) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """Squared distances and indices ``(R, k)`` of the ``k`` nearest bank rows of the float32 query
        block ``q`` (``1 <= k <= N``), nearest first; the number of queries that needed a wider candidate
        list; the number that went to ``fallback(q_rows, k) -> (squared distances, indices)``."""
        import torch

        n, d = self.bank.shape
        r_rows = q.shape[0]
        g, nu = self.g, SCREEN_MARGIN
        tiny = nu * TINY32 * math.sqrt(d)
        kk = d + self.EXTRA_COLUMNS
        q_aug = torch.zeros(r_rows, self.bank_aug.shape[1], dtype=torch.bfloat16, device=q.device)
        q_aug[:, d : d + 2] = -0.5
        q_aug[:, d + 6] = 1.0
        scratch = torch.empty_like(q)
        norm = torch.zeros(r_rows, dtype=torch.float64, device=q.device)
        finite = torch.ones(r_rows, dtype=torch.bool, device=q.device)
        products = []
        for (lo, hi), mu in zip(self.bounds, self.centres, strict=True):
            p = _Parts(torch.sub(q, mu, out=scratch), g, q_aug[:, :d])
            q_aug[:, d + 2] = p.hi
            q_aug[:, d + 3] = p.lo
            a_col = (p.low_norm * (1 + g) + tiny) * (1 + 2 * g)
            c_col = (p.err + g * p.low_norm + tiny) * (1 + 2 * g)
            # the query's own terms; the underflow part bounds what flushing the bfloat16 inputs to zero
            # (each at most 2^-126 times its partner) and the float32 products and sums can lose
            flush = nu * TINY32 * (2 * kk + 2 * (a_col + c_col + p.split_abs + 2))
            e_col = ((p.eta + g * p.split_abs) / 2 + tiny * p.low_norm + flush) * (1 + 2 * g)
            q_aug[:, d + 4] = _round_up(a_col)
            q_aug[:, d + 5] = _round_up(c_col)
            q_aug[:, d + 7] = _round_up(e_col)
            products.append(_product(q_aug, self.bank_aug[lo:hi], self.out_float32))
            norm = torch.maximum(norm, p.norm)
            finite &= torch.isfinite(p.norm) & torch.isfinite(p.err) & torch.isfinite(e_col)
        del scratch, q_aug
        u_out = 0.0 if self.out_float32 else nu * U_BF16
        eps_c = nu * U32 / (1 - U32)
        re_scale = 1 - nu * _gamma(d + 8)
        out_d = torch.empty(r_rows, k, dtype=torch.float32, device=q.device)
        out_i = torch.empty(r_rows, k, dtype=torch.long, device=q.device)
        pending = torch.nonzero(finite).flatten()
        m = min(k + extra, n)
        cap = max(k + extra, n // 64)
        widened = 0
        first = True
        while pending.numel():
            take = min(m + 1, n)
            rows = None if first and pending.numel() == r_rows else pending
            vals, pos = self._smallest(products, rows, take)
            cand = self.order[pos[:, :m]]
            r = _remeasure(q.index_select(0, pending), self.bank, cand)
            rk, at = torch.topk(r, k, dim=1, largest=False, sorted=True)
            if take <= m:  # every bank row is a candidate
                ok = torch.ones(pending.numel(), dtype=torch.bool, device=q.device)
            else:
                x = 2.0 * vals[:, m].double()  # the (m+1)-th smallest V = -2 T = 2 P
                x = x - u_out * x.abs() - nu * 2 * TINY32  # <= rho'^2 of every other row
                rho = x.clamp_min(0).sqrt() * (1 - eps_c) - 2 * eps_c * norm[pending]
                low = rho.clamp_min(0).square()
                upper = (rk[:, -1].double() + nu * d * TINY32) / re_scale
                ok = torch.isfinite(x) & (low > upper)
            done = pending[ok]
            out_d[done] = rk[ok]
            out_i[done] = cand.gather(1, at)[ok]
            pending = pending[~ok]
            if first:
                widened = int(pending.numel())
                first = False
            if 4 * m > cap:
                break
            m = min(4 * m, n)
        bad = torch.cat([torch.nonzero(~finite).flatten(), pending])
        if bad.numel():
            out_d[bad], out_i[bad] = fallback(q.index_select(0, bad), k)
        return out_d, out_i, widened, int(bad.numel())

    def _smallest(
        self, products: list[torch.Tensor], rows: torch.Tensor | None, m1: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``m1`` smallest entries of the query rows ``rows`` (all when None) over all clusters'
        products, smallest first, as (values, bank_aug rows)."""
        import torch

        vals, where = [], []
        for t, (lo, _) in zip(products, self.bounds, strict=True):
            sub = t if rows is None else t.index_select(0, rows)
            v, i = _smallest(sub, min(m1, sub.shape[1]))
            vals.append(v)
            where.append(i + lo)
        if len(vals) == 1:
            return vals[0], where[0]
        v, at = torch.topk(torch.cat(vals, dim=1), m1, dim=1, largest=False, sorted=True)
        return v, torch.cat(where, dim=1).gather(1, at)


class _Parts:
    """The pieces of float32 rows ``v`` the screen needs: their bfloat16 rounding, written to ``low``
    (a bfloat16 view of the same shape); ``hi``, ``lo`` (bfloat16 high and low parts of the float32
    squared norms); and, as float64 upper bounds, ``norm >= |v|``, ``low_norm >= |bf16(v)|``,
    ``err >= |v - bf16(v)|``, ``eta >= |hi + lo - |v|^2|`` and ``split_abs = |hi| + |lo|``. ``g`` is the
    (margined) relative error bound of a float32 row sum (squared norms come from
    ``torch.linalg.vector_norm``, squared: ``gamma_D`` plus three roundings). ``v`` is overwritten."""

    def __init__(self, v: torch.Tensor, g: float, low: torch.Tensor) -> None:
        import torch

        low.copy_(v)
        up = 1 + 2 * g
        sq = torch.linalg.vector_norm(v, dim=1).square_()
        v.sub_(low)  # exact: the bits bfloat16 dropped
        self.err = (torch.linalg.vector_norm(v, dim=1).double().square() * up).sqrt()
        self.hi = sq.to(torch.bfloat16)
        self.lo = (sq - self.hi.float()).to(torch.bfloat16)
        sq64 = sq.double()
        self.norm = (sq64 * up).sqrt()
        self.low_norm = self.norm + self.err  # |bf16(v)| <= |v| + |v - bf16(v)|
        split = self.hi.double() + self.lo.double()
        self.eta = (split - sq64).abs() + g * sq64 / (1 - g)
        self.split_abs = self.hi.double().abs() + self.lo.double().abs()


def _clusters(bank: torch.Tensor, n_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centres (C, D), labels (N,))``: a few seeded k-means steps on up to 8,192 sampled rows, then
    every row to its nearest centre. Deterministic; any result is correct for the screen."""
    import torch

    n = bank.shape[0]
    if n_clusters <= 1:
        return bank.mean(dim=0, keepdim=True), torch.zeros(n, dtype=torch.long, device=bank.device)

    def nearest(rows: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        # argmin |x - c|^2 = argmax x.c - |c|^2 / 2 (float32 rounding only blurs the assignment)
        return torch.addmm((centres * centres).sum(1)[None], rows, centres.T, alpha=-2.0).argmin(dim=1)

    pick = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:8192].to(bank.device)
    sample = bank.index_select(0, pick)
    centres = sample[:n_clusters].clone()
    for _ in range(6):
        labels = nearest(sample, centres)
        sums = torch.zeros_like(centres).index_add_(0, labels, sample)
        counts = torch.bincount(labels, minlength=n_clusters)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None].to(sums.dtype)
    return centres, torch.cat([nearest(bank[s : s + 8192], centres) for s in range(0, n, 8192)])


def _product(q_aug: torch.Tensor, bank_aug: torch.Tensor, out_float32: bool) -> torch.Tensor:
    """``q_aug @ bank_aug.T``: bfloat16 on the CPU (float32 accumulation inside), float32 on CUDA."""
    import torch

    if not out_float32:
        return q_aug @ bank_aug.T
    if _cuda_out_dtype_works(q_aug.device):
        return torch.mm(q_aug, bank_aug.T, out_dtype=torch.float32)
    return q_aug.float() @ bank_aug.T.float()  # older torch: the same exact numbers in float32


def _smallest(t: torch.Tensor, m1: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(t, m1, dim=1, largest=False)`` of a contiguous 2-D bfloat16 (or float) ``t``,
    smallest first, ties in any order. Long bfloat16 rows go in two stages: the minima of
    ``chunk``-column pieces pick the ``m1`` best pieces (plus the ragged tail), and the ``m1`` smallest of
    their columns are the row's ``m1`` smallest: a column in another piece is at least that piece's
    minimum, which is at least each picked piece's minimum, and those ``m1`` minima are among the
    values looked at. The piece minima are taken on the bit patterns as int16, 7x faster than on
    bfloat16 numbers and in the same order for numbers >= +0; a row with a negative number (or -0) in
    every picked piece could be misordered there, and gets a plain ``topk``."""
    import torch

    rows, n = t.shape
    pieces = n // chunk
    if t.dtype != torch.bfloat16 or pieces <= 2 * m1:
        return torch.topk(t, m1, dim=1, largest=False, sorted=True)
    keys = t.view(torch.int16).as_strided((rows, pieces, chunk), (n, chunk, 1)).amin(dim=2)
    picked, best = torch.topk(keys, m1, dim=1, largest=False, sorted=True)
    cols = (best[:, :, None] * chunk + torch.arange(chunk, device=t.device)).view(rows, -1)
    if n > pieces * chunk:
        tail = torch.arange(pieces * chunk, n, device=t.device).expand(rows, -1)
        cols = torch.cat([cols, tail], dim=1)
    vals, pos = torch.topk(t.gather(1, cols), m1, dim=1, largest=False, sorted=True)
    idx = cols.gather(1, pos)
    unsure = torch.nonzero(picked[:, -1] < 0).flatten()  # every picked piece holds a number <= -0
    if unsure.numel():
        vals[unsure], idx[unsure] = torch.topk(t.index_select(0, unsure), m1, dim=1, largest=False)
    return vals, idx


def _round_up(x: torch.Tensor) -> torch.Tensor:
    """bfloat16 numbers ``>=`` the non-negative float64 ``x``: round to nearest of ``x (1 + 2u)`` (at
    most ``u`` below it)."""
    import torch

    return (x * (1 + 2 * U_BF16)).to(torch.bfloat16)


def _remeasure(q: torch.Tensor, bank: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """``(R, m)`` float32 ``|q - b|^2`` of each query row with its ``m`` candidate bank rows, as the
    square of ``torch.linalg.vector_norm(q - b)``: within ``gamma_{D+8} |q - b|^2`` (the sum's
    ``gamma_D``, the difference, the square root and two squarings)."""
    import torch

    r_rows, m = cand.shape
    d = bank.shape[1]
    out = torch.empty(r_rows, m, dtype=torch.float32, device=q.device)
    step = max(1, RERANK_ELEMENTS // max(1, m * d))
    buf = torch.empty(min(step, r_rows) * m, d, dtype=torch.float32, device=q.device)
    for s in range(0, r_rows, step):
        flat = cand[s : s + step].reshape(-1)
        rows = torch.index_select(bank, 0, flat, out=buf[: flat.numel()]).view(-1, m, d)
        rows.sub_(q[s : s + step, None, :])
        out[s : s + step] = torch.linalg.vector_norm(rows, dim=2).square_()
    return out


_OUT_DTYPE_OK: dict[str, bool] = {}


def _cuda_out_dtype_works(device: torch.device) -> bool:
    """Whether ``torch.mm(bf16, bf16, out_dtype=torch.float32)`` runs on this CUDA device."""
    import torch

    key = str(device)
    if key not in _OUT_DTYPE_OK:
        try:
            a = torch.ones(2, 32, dtype=torch.bfloat16, device=device)
            out = torch.mm(a, a.T, out_dtype=torch.float32)
            ok = out.dtype == torch.float32 and bool((out == 32).all())
        except (RuntimeError, TypeError):
            ok = False
        _OUT_DTYPE_OK[key] = ok
    return _OUT_DTYPE_OK[key]
