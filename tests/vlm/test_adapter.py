"""LoRA adapters: they load on their base model and are refused, clearly, on another."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vlmad.vlm import VlmError, VlmRequest, load_vlm, yes_no_scores
from vlmad.vlm.load import ADAPTER_BASE_FILE, record_adapter_base

from .conftest import image


@pytest.fixture(scope="module")
def llava_adapter(all_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter of the tiny LLaVA's language model with non-zero weights, and its base record."""
    from peft import LoraConfig, get_peft_model

    base = load_vlm(all_dirs["llava"], device="cpu")  # a fresh copy: peft modifies the model in place
    peft_model = get_peft_model(base.model, LoraConfig(r=2, target_modules=base.family.lora_target_modules))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("adapter-llava")
    peft_model.save_pretrained(out)
    record_adapter_base(out, base)
    return out


def test_adapter_loads_on_its_base_and_changes_the_scores(
    all_dirs: dict[str, Path], llava_adapter: Path
) -> None:
    plain = load_vlm(all_dirs["llava"], device="cpu")
    tuned = load_vlm(all_dirs["llava"], device="cpu", adapter=llava_adapter)
    assert type(tuned.model).__name__ == "PeftModel" and not tuned.model.training
    assert tuned.info.adapter == str(llava_adapter) and tuned.info.describe()["vlm_adapter"] == str(
        llava_adapter
    )
    groups = tuned.module_groups()
    assert (
        groups.language_model[0].endswith("model.language_model")
        and groups.language_model[0] != "model.language_model"
    )
    req = [VlmRequest("Is there any defect? Answer Yes or No.", {"template": image(0), "test": image(1)})]
    a, b = yes_no_scores(plain, req)[0], yes_no_scores(tuned, req)[0]
    assert a.p_anomalous != pytest.approx(b.p_anomalous, abs=1e-6)
    record = json.loads((llava_adapter / ADAPTER_BASE_FILE).read_text())
    assert record["family"] == "llava" and record["random_base"] is True


def test_adapter_on_another_base_is_refused_by_its_record(
    all_dirs: dict[str, Path], llava_adapter: Path
) -> None:
    with pytest.raises(
        VlmError, match=r"the adapter was trained on .*tiny-random-llava.*whose architecture differs"
    ) as err:
        load_vlm(all_dirs["qwen2vl"], device="cpu", adapter=llava_adapter)
    assert "model_type 'llava' vs 'qwen2_vl'" in str(err.value)


def test_adapter_on_another_base_is_refused_by_its_peft_config(
    all_dirs: dict[str, Path], llava_adapter: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "no-record"
    shutil.copytree(llava_adapter, copy)
    (copy / ADAPTER_BASE_FILE).unlink()  # base_model_name_or_path (the tiny llava directory) still tells
    with pytest.raises(VlmError, match="whose architecture differs"):
        load_vlm(all_dirs["internvl"], device="cpu", adapter=copy)


def test_adapter_whose_modules_the_model_lacks_is_refused(
    all_dirs: dict[str, Path], llava_adapter: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "elsewhere"
    shutil.copytree(llava_adapter, copy)
    (copy / ADAPTER_BASE_FILE).unlink()
    cfg = json.loads((copy / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "someone/unknown-base"
    cfg["target_modules"] = r".*vision_tower\.vision_model\.encoder\.layers\.\d+\.self_attn\.q_proj"
    (copy / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(VlmError, match=r"\(trained on someone/unknown-base\) does not fit .*Qwen2-VL"):
        load_vlm(all_dirs["qwen2vl"], device="cpu", adapter=copy)


def test_missing_adapter_directory_is_a_clear_error(all_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(VlmError, match="not a peft adapter directory"):
        load_vlm(all_dirs["llava"], device="cpu", adapter=tmp_path)
