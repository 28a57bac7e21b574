"""Greedy k-center coreset: the blocked loop equals the plain one, k-center properties, determinism."""

from __future__ import annotations

import pytest
import torch

from vlmad.detectors.coreset import (
    greedy_blocked,
    greedy_coreset,
    greedy_plain,
    grid_limit,
    quantize,
    start_distances,
)
from vlmad.errors import ConfigError


def clustered(n: int, dim: int, clusters: int, seed: int = 0, spread: float = 6.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g) * spread
    scale = torch.rand(clusters, 1, generator=g) + 0.3  # clusters of different widths
    which = torch.randint(0, clusters, (n,), generator=g)
    return centres[which] + torch.randn(n, dim, generator=g) * scale[which]


def prepared(x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z = quantize(x)
    sq = (z * z).sum(1)
    return z, sq, start_distances(z, sq, 10, seed)


def coverage(points: torch.Tensor, chosen: torch.Tensor) -> float:
    """Largest distance from a point to its nearest chosen point."""
    return float(torch.cdist(points.double(), points[chosen].double()).min(1).values.max())


def test_blocked_equals_plain_on_clustered_data() -> None:
    z, sq, mind = prepared(clustered(12_000, 24, 30))
    plain = greedy_plain(z, sq, mind, 1500)
    blocked = greedy_blocked(z, sq, mind, 1500, block_size=32)
    assert len(plain) == 1500 and len(set(plain.tolist())) == 1500
    assert torch.equal(plain, blocked)
    assert torch.equal(mind, start_distances(z, sq, 10, 0))  # the starting distances are not modified


def test_blocked_equals_plain_with_ties_and_stops_when_all_covered() -> None:
    # 4^3 = 64 distinct grid points, each repeated many times: exact ties everywhere
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 4, (6000, 3), generator=g).float()
    z, sq, mind = prepared(x)
    plain = greedy_plain(z, sq, mind, 500)
    blocked = greedy_blocked(z, sq, mind, 500, block_size=16)
    assert torch.equal(plain, blocked)
    assert len(plain) == 64  # every distinct point once, then nothing is left to cover
    assert len({tuple(r) for r in x[plain].tolist()}) == 64
    # ties go to the smallest index: each selected point is the first occurrence of its value
    first = {}
    for i, r in enumerate(x.tolist()):
        first.setdefault(tuple(r), i)
    assert sorted(plain.tolist()) == sorted(first.values())


def test_plain_loop_matches_the_textbook_algorithm() -> None:
    # the original PatchCore sampler: start from the mean distance to random starting points, then
    # repeatedly take the point farthest from the coreset (first on ties) and lower the distances
    z, sq, mind = prepared(clustered(300, 5, 6, seed=2))
    pts = [tuple(int(v) for v in row) for row in z.tolist()]
    dist = mind.tolist()
    expected = []
    for _ in range(40):
        j = max(range(len(pts)), key=lambda i: (dist[i], -i))
        expected.append(j)
        dist = [
            min(dv, sum((a - b) ** 2 for a, b in zip(p, pts[j], strict=True)))
            for dv, p in zip(dist, pts, strict=True)
        ]
    assert greedy_plain(z, sq, mind, 40).tolist() == expected


def test_greedy_covers_every_cluster() -> None:
    z, _, _ = prepared(clustered(3000, 16, 12, seed=2))
    sel = greedy_coreset(z, 12, projection_dim=None)
    rand = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[:12]
    # greedy puts one point in each of the 12 clusters; 12 random points miss some
    assert coverage(z, sel) < 0.5 * coverage(z, rand)
    assert coverage(z, greedy_coreset(z, 100, projection_dim=None)) < 0.6 * coverage(z, sel)


def test_deterministic_projection_and_seed() -> None:
    x = clustered(17_000, 200, 40, seed=4)  # projected to 128 dimensions; blocked loop (N >= 16384)
    a = greedy_coreset(x, 150, seed=0)
    b = greedy_coreset(x.clone(), 150, seed=0, method="plain")
    assert a.dtype == torch.long and len(a) == 150 and len(set(a.tolist())) == 150
    assert torch.equal(a, b)
    assert not torch.equal(a, greedy_coreset(x, 150, seed=1))
    # overwrite lets the function reuse the input's memory without changing the result
    z = torch.randn(5000, 64, generator=torch.Generator().manual_seed(5))
    keep = greedy_coreset(z.clone(), 100, projection_dim=None)
    assert torch.equal(keep, greedy_coreset(z, 100, projection_dim=None, overwrite=True))


def test_all_points_small_inputs_and_errors() -> None:
    x = torch.randn(50, 8)
    assert torch.equal(greedy_coreset(x, 50), torch.arange(50))
    assert torch.equal(greedy_coreset(x, 80), torch.arange(50))
    assert len(greedy_coreset(x, 1)) == 1
    calls: list[tuple[int, int]] = []
    greedy_coreset(x, 20, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1] == (20, 20)
    with pytest.raises(ConfigError, match="n_select"):
        greedy_coreset(x, 0)
    with pytest.raises(ConfigError, match="NaN"):
        greedy_coreset(torch.full((10, 4), float("nan")), 3)
    with pytest.raises(ConfigError, match="method"):
        greedy_coreset(x, 3, method="fast")  # type: ignore[arg-type]


def test_quantized_distances_are_exact_in_float32() -> None:
    z = quantize(torch.randn(1000, 128) * 50)
    limit = grid_limit(128)
    assert float(z.abs().max()) == limit and torch.equal(z, z.round())
    assert 128 * (2 * limit) ** 2 <= 2**24  # the largest squared distance is an exact float32 integer
