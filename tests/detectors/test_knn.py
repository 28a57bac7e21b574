"""NearestNeighbors: exact search agrees with brute force, backends agree, auto picks torch for exact."""

from __future__ import annotations

import pytest
import torch

from vlmad.detectors.knn import NearestNeighbors, faiss_available
from vlmad.errors import ConfigError


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)


def test_exact_search_matches_brute_force_across_blocks() -> None:
    bank, queries = _data()
    nn = NearestNeighbors(bank, backend="torch", block=7)  # several blocks, a ragged last one
    dist, idx = nn.search(queries, k=3)
    full = torch.cdist(queries, bank)
    want_d, want_i = torch.topk(full, 3, dim=1, largest=False)
    assert torch.equal(idx, want_i)
    assert torch.allclose(dist, want_d, atol=1e-4)
    assert nn.backend == "torch" and len(nn) == 300


def test_auto_uses_torch_for_exact_search() -> None:
    bank, _ = _data()
    assert NearestNeighbors(bank).backend == "torch"


def test_k_is_capped_at_the_bank_size() -> None:
    bank, queries = _data()
    dist, idx = NearestNeighbors(bank[:2]).search(queries, k=5)
    assert dist.shape == idx.shape == (50, 2)


def test_faiss_exact_agrees_and_approximate_finds_most() -> None:
    assert faiss_available(), "the dev extra installs faiss-cpu"
    bank, queries = _data()
    want_d, want_i = NearestNeighbors(bank, backend="torch").search(queries, 1)
    got_d, got_i = NearestNeighbors(bank, backend="faiss").search(queries, 1)
    assert torch.equal(got_i, want_i)
    assert torch.allclose(got_d, want_d, atol=1e-3)
    approx = NearestNeighbors(bank, approximate=True)
    assert approx.backend == "faiss"
    _, a_i = approx.search(queries, 1)
    assert (a_i == want_i).float().mean() >= 0.9


def test_bad_banks_and_backends_are_config_errors() -> None:
    bank, _ = _data()
    with pytest.raises(ConfigError, match="non-empty"):
        NearestNeighbors(torch.zeros(0, 4))
    with pytest.raises(ConfigError, match="annoy"):
        NearestNeighbors(bank, backend="annoy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="approximate"):
        NearestNeighbors(bank, backend="torch", approximate=True)
