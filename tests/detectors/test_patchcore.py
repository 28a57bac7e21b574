"""PatchCore: detection, the paper's image score, save/load, knn backends, the spilled fit, errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.detectors.images import TINY_BACKBONE, dataset
from vlmad.detectors import base, patchcore
from vlmad.detectors.base import Detector
from vlmad.detectors.patchcore import PatchCore, PatchStore
from vlmad.errors import ConfigError
from vlmad.metrics.ranking import auroc

CONFIG = {**TINY_BACKBONE, "batch_size": 4, "knn_backend": "torch"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # these tiny models run several times faster on one thread when other jobs share the 2 cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    return dataset()


@pytest.fixture(scope="module")
def fitted(data) -> PatchCore:
    return PatchCore(**CONFIG).fit(data[0])


@pytest.fixture(scope="module")
def predicted(fitted: PatchCore, data) -> tuple[np.ndarray, list[np.ndarray]]:
    return fitted.predict(data[1])


def test_registered() -> None:
    assert base._REGISTRY["patchcore"] is PatchCore
    assert PatchCore.label == "PatchCore"


def test_patchcore_separates_defects_and_maps_peak_on_them(fitted: PatchCore, data, predicted) -> None:
    train, _, labels, masks = data
    scores, maps = predicted
    assert scores.dtype == np.float64 and scores.shape == (12,)
    assert all(m.dtype == np.float32 and m.shape == (64, 64) for m in maps)
    assert auroc(labels, scores) >= 0.95  # measured 1.0
    near = inside = 0
    for amap, mask in zip(maps[6:], masks[6:], strict=True):
        peak = np.unravel_index(np.argmax(amap), amap.shape)
        near += ndimage.distance_transform_edt(~mask)[peak] <= 4  # measured: 0 to 2.8 px
        inside += bool(mask[peak])  # measured: 4 of 6 (the scratches are 3 px wide)
        assert amap[mask].mean() > 1.3 * amap[~mask].mean()  # measured 1.5 to 1.8
    assert near >= 5 and inside >= 3
    # a 10% coreset of 10 images x 8x8 patches of 128 + 256 channels
    n_patches = len(train) * 8 * 8
    assert fitted.n_train_patches_ == n_patches
    assert tuple(fitted.memory_bank_.shape) == (n_patches // 10, 384)
    assert fitted.memory_bank_.dtype == torch.float32


def test_image_score_is_the_papers_reweighted_maximum(fitted: PatchCore, data, predicted) -> None:
    test = data[1]
    bank = fitted.memory_bank_.double()
    for i in (0, 7):
        emb = fitted.features_.embed([test[i]])[0]
        q = emb.permute(1, 2, 0).reshape(-1, emb.shape[0]).double()
        d = torch.cdist(q, bank)
        patch = d.min(1).values
        p = int(patch.argmax())
        m_star = int(d[p].argmin())
        support = torch.cdist(bank[m_star : m_star + 1], bank)[0].argsort()[:9]
        assert int(support[0]) == m_star
        dist = torch.linalg.norm(bank[support] - q[p], dim=1)
        weight = 1 - torch.exp(dist[0]) / torch.exp(dist).sum()
        assert predicted[0][i] == pytest.approx(float(weight * patch[p]), rel=1e-4)
        assert 0 < predicted[0][i] < float(patch.max())
    # b = 1: the plain maximum patch distance
    fitted.num_neighbors = 1
    try:
        s1, _ = fitted.predict(test[:3])
    finally:
        fitted.num_neighbors = 9
    emb = fitted.features_.embed(test[:3])
    q = emb.permute(0, 2, 3, 1).reshape(3, -1, emb.shape[1]).double()
    expected = torch.cdist(q, bank[None].expand(3, -1, -1)).min(2).values.amax(1)
    np.testing.assert_allclose(s1, expected.numpy(), rtol=1e-5)


def test_save_load_round_trip_predicts_the_same(fitted: PatchCore, data, predicted, tmp_path: Path) -> None:
    fitted.save(tmp_path / "pc")
    loaded = Detector.load(tmp_path / "pc")
    assert isinstance(loaded, PatchCore)
    assert loaded.get_params() == fitted.get_params()
    assert torch.equal(loaded.memory_bank_, fitted.memory_bank_)
    scores, maps = loaded.predict(data[1])
    assert np.array_equal(scores, predicted[0])
    assert all(np.array_equal(a, b) for a, b in zip(maps, predicted[1], strict=True))


def test_faiss_and_torch_backends_agree_and_approximate_runs(fitted: PatchCore, data, predicted) -> None:
    test = data[1]
    try:
        fitted.knn_backend = "faiss"
        exact, exact_maps = fitted.predict(test)
        fitted.approximate = True
        approx, _ = fitted.predict(test)
    finally:
        fitted.knn_backend, fitted.approximate = "torch", False
    np.testing.assert_allclose(exact, predicted[0], rtol=1e-4)
    for a, b in zip(exact_maps, predicted[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert approx.shape == (12,) and np.isfinite(approx).all()
    assert auroc(data[2], approx) >= 0.95


def test_spilled_fit_gives_the_same_bank(fitted: PatchCore, data, monkeypatch) -> None:
    assert fitted.spilled_ is False
    # read the spilled file back a few rows at a time so that several chunks are exercised
    monkeypatch.setattr(patchcore, "READ_CHUNK_BYTES", 384 * 4 * 7)
    spilled = PatchCore(**{**CONFIG, "memory_budget_mb": 0}).fit(data[0])
    assert spilled.spilled_ is True
    assert torch.equal(spilled.memory_bank_, fitted.memory_bank_)


def test_patch_store_gathers_rows_in_the_asked_order(monkeypatch) -> None:
    rows = torch.arange(50 * 3, dtype=torch.float32).view(50, 3)
    want = torch.tensor([49, 0, 7, 8, 21, 13, 48, 6])
    monkeypatch.setattr(patchcore, "READ_CHUNK_BYTES", 3 * 4 * 4)  # 4 rows per read
    for budget in (10**6, 0):
        store = PatchStore(50, 3, budget)
        assert store.spilled == (budget == 0)
        for s in range(0, 50, 16):
            store.write(s, rows[s : s + 16])
        assert torch.equal(store.gather(want), rows[want])
        store.close()


def test_keep_all_patches_and_progress(data) -> None:
    calls: list[tuple[int, int]] = []
    det = PatchCore(**{**CONFIG, "coreset_ratio": 1.0}).fit(
        data[0][:3], progress=lambda d, t: calls.append((d, t))
    )
    assert len(det.memory_bank_) == 3 * 64
    feats = det.features_.embed(data[0][:3])
    assert torch.equal(det.memory_bank_, feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    assert calls[-1] == (6, 6) and all(a[0] <= b[0] for a, b in itertools.pairwise(calls))


def test_bad_options_and_mismatched_bank(fitted: PatchCore, data) -> None:
    for ratio in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="coreset_ratio"):
            PatchCore(**{**CONFIG, "coreset_ratio": ratio}).fit(data[0][:2])
    with pytest.raises(ConfigError, match="knn_backend"):
        PatchCore(**{**CONFIG, "knn_backend": "annoy"}).fit(data[0][:2])
    with pytest.raises(ValueError, match="384"):
        fitted._set_state({"memory_bank": torch.zeros(10, 512)}, {"n_train_patches": 640})
    with pytest.raises(ValueError, match="memory_bank"):
        fitted._set_state({"bank": torch.zeros(10, 384)}, {})
    assert tuple(fitted.memory_bank_.shape) == (64, 384)  # a refused state leaves the model unchanged


def test_load_refuses_a_bank_of_another_dimension(fitted: PatchCore, tmp_path: Path) -> None:
    import json

    from safetensors.torch import save_file

    from vlmad.detectors.base import DetectorError
    from vlmad.detectors.features import file_sha256

    folder = fitted.save(tmp_path / "pc")
    weights = folder / "weights.safetensors"
    save_file({"memory_bank": torch.zeros(64, 512)}, str(weights))
    settings = json.loads((folder / "detector.json").read_text())
    settings["weights_sha256"] = file_sha256(weights)
    (folder / "detector.json").write_text(json.dumps(settings))
    with pytest.raises(DetectorError, match="512-dimensional features but resnet18"):
        Detector.load(folder)


def test_knn_precision_float32_and_the_bf16_screen_score_alike(
    fitted: PatchCore, data, predicted, tmp_path: Path
) -> None:
    import json

    test = data[1]
    try:
        fitted.knn_precision = "float32"
        plain, plain_maps = fitted.predict(test)
        assert not fitted._index().screen
        fitted.knn_precision = "bf16-screen"
        screened, screened_maps = fitted.predict(test)
        assert fitted._index().screen
        folder = fitted.save(tmp_path / "pc")
        assert json.loads((folder / "detector.json").read_text())["params"]["knn_precision"] == "bf16-screen"
        assert Detector.load(folder).knn_precision == "bf16-screen"
    finally:
        fitted.knn_precision = "auto"
    # the screen finds the exact neighbours; float32 distances differ by its rounding only
    np.testing.assert_allclose(screened, plain, rtol=1e-4)
    for a, b in zip(screened_maps, plain_maps, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    if fitted._index().screen:  # "auto" on a CPU with AMX: the screen, so the same numbers
        np.testing.assert_array_equal(screened, predicted[0])
    # a model saved before knn_precision existed loads with the default
    settings = json.loads((folder / "detector.json").read_text())
    del settings["params"]["knn_precision"]
    (folder / "detector.json").write_text(json.dumps(settings))
    assert Detector.load(folder).knn_precision == "auto"


def test_bad_knn_precision(data) -> None:
    with pytest.raises(ConfigError, match="knn_precision 'float16'"):
        PatchCore(**{**CONFIG, "knn_precision": "float16"}).fit(data[0][:2])
    with pytest.raises(ConfigError, match="bf16-screen"):
        PatchCore(**{**CONFIG, "knn_backend": "faiss", "knn_precision": "bf16-screen"}).fit(data[0][:2])
