"""load_vlm: tiny random models of each family load through the normal code; bad input gets clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from vlmad.vlm import GROUPS, VLM, ImageBudget, VlmError, VlmRequest, load_vlm, yes_no_scores
from vlmad.vlm.base import RANDOM_MARK
from vlmad.vlm.tiny import build

from .conftest import image

MODEL_CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "qwen2vl": "Qwen2VLForConditionalGeneration",
}
PROCESSORS = {"llava": "LlavaProcessor", "internvl": "InternVLProcessor", "qwen2vl": "Qwen2VLProcessor"}


def test_tiny_model_loads_as_its_real_architecture_and_says_it_is_random(
    family: str, vlm: VLM, model_dir: Path
) -> None:
    assert type(vlm.model).__name__ == MODEL_CLASSES[family]
    assert type(vlm.processor).__name__ == PROCESSORS[family]
    assert vlm.family.name == family
    assert vlm.layout == vlm.family.default_layout
    info = vlm.info
    assert info.source == str(model_dir) and info.local and info.family == family
    assert info.random and info.warning is not None and info.warning.startswith("TINY RANDOM VLM")
    assert "randomly initialised" in info.warning
    assert info.describe()["random_vlm"] is True
    assert info.trust_remote_code is False and info.adapter is None
    assert "TINY RANDOM" in repr(vlm)
    config = json.loads((model_dir / "config.json").read_text())
    assert "tiny randomly initialised" in config[RANDOM_MARK]
    assert "TINY RANDOM MODEL" in (model_dir / "README.md").read_text()
    assert not vlm.model.training
    assert sum(p.numel() for p in vlm.model.parameters()) < 500_000


def test_module_groups_partition_the_parameters(vlm: VLM) -> None:
    groups = vlm.module_groups()
    modules = dict(vlm.model.named_modules())
    for g in GROUPS:
        assert groups.names(g), g
        for name in groups.names(g):
            assert name in modules
            assert sum(p.numel() for p in modules[name].parameters()) > 0, name
    seen: dict[str, str] = {}
    for name, _ in vlm.model.named_parameters():
        group = groups.group_of(name)
        assert group is not None, f"{name} is in no group"
        seen[name] = group
    assert set(seen.values()) == set(GROUPS)
    counts = {g: len(list(groups.parameters(vlm.model, g))) for g in GROUPS}
    assert sum(counts.values()) == len(seen)
    with pytest.raises(VlmError, match="unknown module group"):
        groups.names("decoder")


def test_lora_target_regex_hits_language_model_modules_only(vlm: VLM) -> None:
    pattern = vlm.family.lora_target_modules
    hits = [n for n, _ in vlm.model.named_modules() if re.fullmatch(pattern, n)]
    lm = vlm.module_groups().names("language_model")[0]
    assert len(hits) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert all(h.startswith(lm + ".") for h in hits)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(build("qwen2vl", tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(build("qwen2vl", tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(build("qwen2vl", tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_qwen2_5_vl_variant_loads_into_the_same_family(tmp_path: Path) -> None:
    vlm = load_vlm(build("qwen2vl", tmp_path / "q25", variant="qwen2_5_vl"), device="cpu")
    assert type(vlm.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert vlm.family.name == "qwen2vl" and vlm.info.model_type == "qwen2_5_vl" and vlm.info.random
    assert vlm.module_groups().projector == ("model.visual.merger",)
    req = VlmRequest("Is there any defect?", {"template": image(0), "test": image(1, 24, 40)})
    score = yes_no_scores(vlm, [req])[0]
    assert 0.0 <= score.p_anomalous <= 1.0
    small = vlm.prepare([req], {"template": ImageBudget(max_pixels=16 * 16)}).pixels_by_role()
    assert small["template"][0] < vlm.prepare([req]).pixels_by_role()["template"][0]
    with pytest.raises(VlmError, match="no tiny variant 'qwen3' of qwen2vl"):
        build("qwen2vl", tmp_path / "x", variant="qwen3")


def test_a_family_that_does_not_match_the_checkpoint_is_refused(all_dirs: dict[str, Path]) -> None:
    with pytest.raises(VlmError, match=r"is a 'internvl' checkpoint, not LLaVA-1.5"):
        load_vlm(all_dirs["internvl"], family="llava")
    with pytest.raises(VlmError, match="unknown VLM family 'gpt4v'"):
        load_vlm(all_dirs["internvl"], family="gpt4v")


def test_trust_remote_code_is_passed_exactly_as_given(
    all_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    seen: list[tuple[str, object]] = []

    def spy(kind: str, real):
        def call(*args, **kwargs):
            seen.append((kind, kwargs.get("trust_remote_code", "absent")))
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(
        transformers.AutoConfig, "from_pretrained", spy("config", transformers.AutoConfig.from_pretrained)
    )
    monkeypatch.setattr(
        transformers.AutoProcessor,
        "from_pretrained",
        spy("processor", transformers.AutoProcessor.from_pretrained),
    )
    cls = transformers.Qwen2VLForConditionalGeneration
    monkeypatch.setattr(cls, "from_pretrained", spy("model", cls.from_pretrained))

    vlm = load_vlm(all_dirs["qwen2vl"], device="cpu")
    assert {k for k, _ in seen} == {"config", "processor", "model"}
    assert all(v is False for _, v in seen), seen
    assert vlm.info.trust_remote_code is False

    seen.clear()
    vlm = load_vlm(all_dirs["qwen2vl"], device="cpu", trust_remote_code=True)
    assert {k for k, _ in seen} == {"config", "processor", "model"}
    assert all(v is True for _, v in seen), seen
    assert vlm.info.trust_remote_code is True


def test_uncached_hub_id_offline_says_to_pass_a_local_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VlmError) as err:
        load_vlm("vlmad-tests/no-such-vlm-anywhere", device="cpu")
    msg = str(err.value)
    assert msg.startswith("vlmad-tests/no-such-vlm-anywhere: cannot load this model")
    assert "offline (HF_HUB_OFFLINE is set)" in msg
    assert "not in the local cache" in msg
    assert "pass that local directory instead" in msg
    assert "hf download vlmad-tests/no-such-vlm-anywhere" in msg


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/no/such/model/dir", "model directory not found"),
        ("./models/missing", "model directory not found"),
        ("not a hub id!", "neither an existing model directory nor a Hub id"),
    ],
)
def test_missing_paths_and_malformed_ids_are_clear_errors(source: str, message: str) -> None:
    with pytest.raises(VlmError, match=message):
        load_vlm(source)


def test_a_directory_that_is_not_a_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VlmError, match=r"no config\.json in this directory"):
        load_vlm(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}))
    with pytest.raises(
        VlmError, match="'internvl_chat' is not a supported VLM: an original InternVL checkpoint"
    ):
        load_vlm(tmp_path)


def test_incomplete_weights_are_refused(all_dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "broken"
    shutil.copytree(all_dirs["llava"], d)
    weights = load_file(d / "model.safetensors")
    dropped = [k for k in weights if "multi_modal_projector" in k]
    save_file(
        {k: v for k, v in weights.items() if k not in dropped},
        d / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(VlmError, match=r"has no weights for 4 parameter\(s\) of LLaVA-1.5"):
        load_vlm(d, device="cpu")


def test_bad_dtype_is_refused(all_dirs: dict[str, Path]) -> None:
    with pytest.raises(VlmError, match="unknown dtype 'int3'"):
        load_vlm(all_dirs["qwen2vl"], dtype="int3")


def test_bfloat16_load(all_dirs: dict[str, Path]) -> None:
    vlm = load_vlm(all_dirs["qwen2vl"], device="cpu", dtype="bf16")
    assert vlm.dtype == torch.bfloat16 and vlm.info.dtype == "bfloat16"
