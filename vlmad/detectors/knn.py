"""k-nearest-neighbour search of patch features against a bank (PatchCore's memory bank, SPADE's gallery).

faiss (when installed) does the search: exact (``IndexFlatL2``) by default, approximate (HNSW) by option.
Without faiss, or with ``backend="torch"``, a blocked matrix product on the bank's device does it, so
memory stays ``block x len(bank)`` floats. Distances are Euclidean (not squared).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from vlmad.errors import ConfigError

if TYPE_CHECKING:
    import torch

Backend = Literal["auto", "faiss", "torch"]


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class NearestNeighbors:
    """Search a fixed ``(N, D)`` float32 bank. ``search(queries, k) -> (distances, indices)``, both
    ``(M, k)``, nearest first; distances are Euclidean."""

    def __init__(
        self,
        bank: torch.Tensor,
        backend: Backend = "auto",
        approximate: bool = False,
        block: int = 4096,
    ) -> None:
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise ConfigError(
                f"a nearest-neighbour bank is a non-empty (N, D) matrix, got {tuple(bank.shape)}"
            )
        if backend not in ("auto", "faiss", "torch"):
            raise ConfigError(f"knn backend {backend!r}: choose auto, faiss or torch")
        if backend == "faiss" and not faiss_available():
            raise ConfigError(
                "knn backend 'faiss' asked for but faiss is not installed (pip install faiss-cpu)"
            )
        use_faiss = backend == "faiss" or (
            backend == "auto" and faiss_available() and bank.device.type == "cpu"
        )
        if approximate and not use_faiss:
            raise ConfigError("approximate search needs faiss (pip install faiss-cpu) on a CPU bank")
        self.bank = bank.float().contiguous()
        self.block = block
        self.backend = "faiss" if use_faiss else "torch"
        self.approximate = approximate
        self._index = None
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
        else:
            self._bank_sq = (self.bank * self.bank).sum(1)

    def __len__(self) -> int:
        return int(self.bank.shape[0])

    def search(self, queries: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        k = min(k, len(self))
        if self._index is not None:
            q = queries.detach().float().cpu().contiguous().numpy()
            d2, idx = self._index.search(q, k)
            d = torch.from_numpy(d2).clamp_min_(0).sqrt_()
            return d.to(queries.device), torch.from_numpy(idx).to(queries.device)
        q = queries.to(self.bank.device).float()
        dists, inds = [], []
        for s in range(0, q.shape[0], self.block):
            qb = q[s : s + self.block]
            d2 = (qb * qb).sum(1, keepdim=True) - 2.0 * qb @ self.bank.T + self._bank_sq[None]
            v, i = torch.topk(d2, k, dim=1, largest=False)
            dists.append(v.clamp_min_(0).sqrt_())
            inds.append(i)
        return torch.cat(dists).to(queries.device), torch.cat(inds).to(queries.device)
