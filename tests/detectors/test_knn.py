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


# ---- the certified bfloat16 screen ---------------------------------------------------------------------


@pytest.fixture(params=[1, 8], ids=["one-cluster", "eight-clusters"])
def clusters(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run a test with the screen's bank in one cluster (as these small banks are) and in eight."""
    from vlmad.detectors import knn

    if request.param > 1:
        monkeypatch.setattr(knn, "CLUSTER_ROWS", 256)
    return request.param


def _pair(bank: torch.Tensor, block: int = 128) -> tuple[NearestNeighbors, NearestNeighbors]:
    screen = NearestNeighbors(bank, backend="torch", precision="bf16-screen", block=block)
    plain = NearestNeighbors(bank, backend="torch", precision="float32", block=block)
    assert screen.screen and not plain.screen
    return screen, plain


def _truth(bank: torch.Tensor, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.topk(torch.cdist(queries.double(), bank.double()), k, dim=1, largest=False)


def _clustered(noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """2,000 isolated bank rows, 10 bases with 15 near-copies each and 4 bases with 100 near-copies each
    (copies ``noise`` apart per coordinate); 100 queries near each kind. Near the copies the bfloat16
    product cannot tell the candidates apart: 15 copies need a wider list, 100 the float32 product."""
    g = torch.Generator().manual_seed(1)
    dim = 32
    iso = torch.randn(2000, dim, generator=g)
    few, many = torch.randn(10, dim, generator=g), torch.randn(4, dim, generator=g)
    bank = torch.cat(
        [
            iso,
            few.repeat_interleave(15, 0) + noise * torch.randn(150, dim, generator=g),
            many.repeat_interleave(100, 0) + noise * torch.randn(400, dim, generator=g),
        ]
    )
    queries = torch.cat(
        [
            iso[:100] + 0.1 * torch.randn(100, dim, generator=g),
            few.repeat(10, 1) + 0.1 * torch.randn(100, dim, generator=g),
            many.repeat(25, 1) + 0.1 * torch.randn(100, dim, generator=g),
        ]
    )
    return bank, queries


@pytest.mark.parametrize("k", [1, 5])
def test_screen_matches_the_float32_search_on_random_data(k: int, clusters: int) -> None:
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(2048, 64, generator=g), torch.randn(500, 64, generator=g)
    screen, plain = _pair(bank)
    assert len(screen._screen.bounds) == clusters
    got_d, got_i = screen.search(queries, k)
    want_d, want_i = plain.search(queries, k)
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_d, want_d, rtol=1e-5, atol=0)
    assert screen.last_fallbacks == 0 and screen.last_widened <= 5  # measured 0 and 0
    truth_d, truth_i = _truth(bank, queries, k)
    assert torch.equal(got_i, truth_i)
    torch.testing.assert_close(got_d.double(), truth_d, rtol=1e-6, atol=0)


def test_screen_is_exact_where_float32_cancellation_is_not(clusters: int) -> None:
    # post-ReLU-like features: a large common offset, so |q|^2 + |b|^2 - 2 q.b cancels badly in float32
    g = torch.Generator().manual_seed(2)
    bank = 20 + torch.randn(4096, 128, generator=g).abs()
    queries = 20 + torch.randn(400, 128, generator=g).abs()
    screen, plain = _pair(bank)
    got_d, got_i = screen.search(queries, 3)
    truth_d, truth_i = _truth(bank, queries, 3)
    assert torch.equal(got_i, truth_i)
    torch.testing.assert_close(got_d.double(), truth_d, rtol=1e-6, atol=0)
    want_d, _ = plain.search(queries, 3)
    assert float(((want_d.double() - truth_d).abs() / truth_d).max()) > 1e-5  # float32 is off here
    assert screen.last_fallbacks == 0


@pytest.mark.parametrize("k", [1, 4])
def test_near_ties_widen_or_fall_back_and_stay_identical(k: int, clusters: int) -> None:
    bank, queries = _clustered(noise=1e-3)
    screen, plain = _pair(bank)
    got_d, got_i = screen.search(queries, k)
    want_d, want_i = plain.search(queries, k)
    truth_d, truth_i = _truth(bank, queries, k)
    # identical to the float32 product, except where that one is wrong (its rounding swaps near-ties
    # for a few queries) and the screen proved the float64 answer
    differ = ~(got_i == want_i).all(dim=1)
    assert int(differ.sum()) <= 5  # measured 0-2
    assert torch.equal(got_i[differ], truth_i[differ])
    same = ~differ
    torch.testing.assert_close(got_d[same], want_d[same], rtol=1e-4, atol=0)  # float32 cancels some
    isolated = slice(0, 100)  # certified at once: exact
    assert torch.equal(got_i[isolated], truth_i[isolated])
    torch.testing.assert_close(got_d[isolated].double(), truth_d[isolated], rtol=1e-5, atol=0)
    # the 100-copy groups cannot be certified (their queries fall back); k=1 resolves the 15-copy
    # groups with a wider candidate list; the isolated rows pass at once
    assert screen.last_fallbacks >= 80  # measured 91-100 (k=1), 200-202 (k=4)
    assert screen.last_widened >= 150  # measured 199-202
    if k == 1:
        assert screen.last_fallbacks <= 120


def test_the_certificate_is_what_keeps_near_ties_exact(
    monkeypatch: pytest.MonkeyPatch, clusters: int
) -> None:
    # without its error bound the screen trusts the bfloat16 ranking and gets near-ties wrong: the
    # adversarial data above really does need the certificate
    from vlmad.detectors import knn

    bank, queries = _clustered(noise=1e-3)
    _, truth_i = _truth(bank, queries, 1)
    monkeypatch.setattr(knn, "_round_up", lambda x: torch.zeros(x.shape, dtype=torch.bfloat16))
    monkeypatch.setattr(knn, "SCREEN_MARGIN", 0.0)
    blind = NearestNeighbors(bank, backend="torch", precision="bf16-screen", block=128)
    _, got_i = blind.search(queries, 1)
    assert blind.last_fallbacks < 100  # it now "certifies" most near-tie queries ...
    assert int((got_i != truth_i).sum()) >= 10  # ... and gets many of them wrong


def test_exact_ties_beyond_the_candidates_fall_back_and_duplicates_do_not() -> None:
    dim = 16
    bank = torch.cat([torch.eye(dim), -torch.eye(dim)])  # 32 rows at distance 1 from the origin
    screen, plain = _pair(bank)
    origin = torch.zeros(5, dim)
    got_d, got_i = screen.search(origin, 3)
    want_d, want_i = plain.search(origin, 3)
    assert screen.last_fallbacks == 5
    assert torch.equal(got_i, want_i) and torch.equal(got_d, want_d)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(300, 24, generator=g)
    dup = torch.cat([base, base[:100]])  # rows 300..399 repeat rows 0..99 bit for bit
    screen, plain = _pair(dup)
    queries = base[:150] + 0.3 * torch.randn(150, 24, generator=g)
    for k in (1, 2):
        got_d, got_i = screen.search(queries, k)
        want_d, _ = plain.search(queries, k)
        torch.testing.assert_close(got_d, want_d, rtol=1e-5, atol=0)
        # a tie may come back in either order, but each index is at its reported distance
        torch.testing.assert_close((queries[:, None] - dup[got_i]).norm(dim=2), got_d, rtol=1e-5, atol=0)
        # a tie inside the candidate list needs no certificate (either row is a right answer): only
        # the candidates' boundary does, and it is far here
        assert screen.last_fallbacks == 0


def test_screen_degenerate_inputs_behave_like_float32() -> None:
    bank, queries = _data()
    screen, plain = _pair(bank, block=7)
    for q, k in [(queries, 0), (queries[:3], 400)]:
        got, want = screen.search(q, k), plain.search(q, k)
        assert got[0].shape == want[0].shape and torch.equal(got[1], want[1])
    d, i = screen.search(queries, 400)  # k capped at the bank: every row is a candidate, exact
    truth_d, truth_i = _truth(bank, queries, 300)
    assert screen.last_fallbacks == 0 and torch.equal(i, truth_i)
    torch.testing.assert_close(d.double(), truth_d, rtol=1e-6, atol=0)
    for s in (screen, plain):
        with pytest.raises(ValueError):
            s.search(torch.zeros(0, 16), 1)
    bad = queries.clone()
    bad[4, 2] = float("nan")
    bad[7, 0] = float("inf")
    got_d, got_i = screen.search(bad, 2)
    want_d, want_i = plain.search(bad, 2)
    assert screen.last_fallbacks == 2
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_d, want_d, rtol=1e-5, atol=0, equal_nan=True)
    nan_bank = bank.clone()
    nan_bank[0, 0] = float("nan")
    assert not NearestNeighbors(nan_bank, backend="torch", precision="bf16-screen").screen


def test_precision_option(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmad.detectors import knn

    bank, _ = _data()
    nn = NearestNeighbors(bank, precision="float32")
    assert nn.precision == "float32" and not nn.screen
    for fast in (True, False):
        monkeypatch.setattr(knn, "bf16_matmul_is_fast", lambda device, fast=fast: fast)
        auto = NearestNeighbors(bank)
        assert auto.precision == "auto" and auto.screen is fast
    with pytest.raises(ConfigError, match="precision"):
        NearestNeighbors(bank, precision="float16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="faiss"):
        NearestNeighbors(bank, backend="faiss", precision="bf16-screen")
    with pytest.raises(ConfigError, match="extra"):
        NearestNeighbors(bank, precision="bf16-screen", extra=0)


def test_bf16_matmul_is_fast_reads_the_cpu_capabilities(monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmad.detectors.knn import bf16_matmul_is_fast

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True, "amx_tile": True})
    assert bf16_matmul_is_fast(cpu) is torch.backends.mkldnn.is_available()
    # AVX512-BF16 without AMX measured no faster than float32
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True, "amx_bf16": False})
    assert bf16_matmul_is_fast(cpu) is False
    assert bf16_matmul_is_fast(torch.device("meta")) is False


def test_smallest_in_two_stages_agrees_with_topk() -> None:
    from vlmad.detectors.knn import _smallest

    g = torch.Generator().manual_seed(4)
    t = (torch.randn(64, 1000, generator=g) * 50 + 100).to(torch.bfloat16)  # ragged: 15 pieces + a tail
    t[:8] -= 300  # rows with negative numbers in every piece: the int16 order is wrong there
    t[8, 5] = -0.0
    t[9, :100] = 7.0  # ties
    for m1 in (1, 5, 7):
        vals, idx = _smallest(t, m1, chunk=64)
        want, _ = torch.topk(t.float(), m1, dim=1, largest=False)
        assert torch.equal(vals.float(), want)
        assert torch.equal(t.gather(1, idx), vals)


def test_the_float32_result_path_cuda_takes_is_exact_too(clusters: int) -> None:
    # on CUDA the product returns float32 (no output rounding in the bound, a plain topk); run that
    # path here on the CPU, where it falls back to a float32 product of the same bfloat16 numbers
    bank, queries = _clustered(noise=1e-3)
    screen, plain = _pair(bank)
    screen._screen.out_float32 = True
    got_d, got_i = screen.search(queries, 3)
    want_d, want_i = plain.search(queries, 3)
    truth_d, truth_i = _truth(bank, queries, 3)
    differ = ~(got_i == want_i).all(dim=1)
    assert int(differ.sum()) <= 5 and torch.equal(got_i[differ], truth_i[differ])
    torch.testing.assert_close(got_d[~differ], want_d[~differ], rtol=1e-4, atol=0)
    assert torch.equal(got_i[:100], truth_i[:100]) and screen.last_fallbacks >= 80
    torch.testing.assert_close(got_d[:100].double(), truth_d[:100], rtol=1e-5, atol=0)
