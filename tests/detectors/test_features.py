"""Feature extraction: layers, weights from files, random-backbone flags, fingerprints, aggregation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.detectors.images import normal_image
from vlmad.detectors.features import (
    BackboneError,
    FeatureExtractor,
    load_backbone,
    parse_layers,
    read_state_dict,
)
from vlmad.errors import ConfigError


def test_parse_layers_accepts_the_usual_spellings() -> None:
    assert parse_layers((3, 2)) == (2, 3)
    assert parse_layers(["layer2", "layer3"]) == (2, 3)
    assert parse_layers("1+2+3") == (1, 2, 3)
    assert parse_layers(4) == (4,)
    for bad in ("5", "layer0", "x", ""):
        with pytest.raises(BackboneError):
            parse_layers(bad)


def test_random_backbone_is_seeded_flagged_and_fingerprinted() -> None:
    _, a = load_backbone("resnet18", (2, 3), "random", seed=0)
    _, b = load_backbone("resnet18", (2, 3), "random", seed=0)
    _, c = load_backbone("resnet18", (2, 3), "random", seed=1)
    assert a.random and a.fingerprint == b.fingerprint != c.fingerprint
    assert a.channels == (128, 256) and a.strides == (8, 16)
    assert "RANDOM BACKBONE" in (a.warning or "") and "seed 0" in (a.warning or "")
    # the torch generator the caller sees is untouched by building a seeded backbone
    torch.manual_seed(123)
    x = torch.rand(1)
    torch.manual_seed(123)
    load_backbone("resnet18", (2,), "random", seed=5)
    assert torch.equal(torch.rand(1), x)


def test_auto_weights_fall_back_to_random_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, info = load_backbone("resnet18", (2,), "auto", seed=0)
    assert info.random and info.weights == "random" and "unavailable" in info.weights_detail


def test_weights_file_loads_safetensors_and_pth_and_checks_fit(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    net, random_info = load_backbone("resnet18", (2, 3), "random", seed=7)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    st = tmp_path / "w.safetensors"
    save_file(state, str(st))
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, pth)
    for path in (st, pth):
        _, info = load_backbone("resnet18", (2, 3), path)
        assert not info.random and info.fingerprint == random_info.fingerprint
        assert "sha256" in info.weights_detail
    # a file for another architecture, a corrupt file, a missing file, an unknown suffix
    with pytest.raises(BackboneError, match="does not fit backbone"):
        load_backbone("resnet34", (2, 3), st)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(BackboneError, match="cannot read"):
        load_backbone("resnet18", (2, 3), bad)
    with pytest.raises(BackboneError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(BackboneError, match="expected auto, pretrained, random"):
        load_backbone("resnet18", (2, 3), "imagenet")


def test_unknown_backbone_and_torchvision_names() -> None:
    with pytest.raises(BackboneError, match="unknown backbone"):
        load_backbone("no_such_net", (2,), "random")
    _, tv = load_backbone("torchvision/resnet18", (1, 2), "random")
    assert tv.channels == (64, 128) and tv.strides == (4, 8)


def test_embed_aggregates_upsamples_and_concatenates() -> None:
    fx = FeatureExtractor("resnet18", (2, 3), "random", image_size=64, aggregate=3)
    images = [normal_image(i) for i in range(3)]
    emb = fx.embed(images)
    assert emb.shape == (3, fx.dim, *fx.grid) == (3, 384, 8, 8)
    raw = fx.layer_features(images)
    pooled = torch.nn.functional.avg_pool2d(raw[0], 3, stride=1, padding=1)
    assert torch.allclose(emb[:, :128], pooled, atol=1e-5)
    # batching does not change features
    parts = torch.cat([e for _, e in fx.iter_embed(images, batch_size=2)])
    assert torch.allclose(parts, emb, atol=1e-5)
    # an image of another size is resized to image_size first
    big = np.repeat(np.repeat(images[0], 2, axis=0), 2, axis=1)
    assert fx.embed([big]).shape == (1, 384, 8, 8)
    with pytest.raises(ConfigError):
        FeatureExtractor("resnet18", (2,), "random", image_size=16)
    with pytest.raises(ConfigError):
        FeatureExtractor("resnet18", (2,), "random", aggregate=2)
