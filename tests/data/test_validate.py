from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures import make_loco, make_mvtec_ad, write_image, write_mask
from vlmad.data import load_image, load_mask, mask_values, read_dataset, validate_dataset
from vlmad.data.images import check_mask
from vlmad.errors import DatasetError


def _corrupt(root: Path) -> dict[str, Path]:
    """Break one file per case in an MVTec AD fixture; returns case -> file."""
    c = root / "bottle"
    cases = {
        "zero": c / "train" / "good" / "000.png",
        "truncated": c / "train" / "good" / "001.png",
        "garbage": c / "train" / "good" / "002.png",
        "size": c / "ground_truth" / "broken" / "000_mask.png",
        "empty": c / "ground_truth" / "broken" / "001_mask.png",
    }
    cases["zero"].write_bytes(b"")
    data = cases["truncated"].read_bytes()
    cases["truncated"].write_bytes(data[: len(data) // 2])
    cases["garbage"].write_bytes(b"this is not a png at all" * 10)
    write_mask(cases["size"], size=16, box=(1, 1, 5, 5))
    write_mask(cases["empty"], box=(0, 0, 0, 0))
    return cases


def test_each_bad_file_gives_one_line_naming_it(tmp_path: Path) -> None:
    cases = _corrupt(make_mvtec_ad(tmp_path / "ad", categories=("bottle",)))
    expected = {
        "zero": "empty file (0 bytes)",
        "truncated": "truncated image",
        "garbage": "not a readable image",
    }
    for case, text in expected.items():
        with pytest.raises(DatasetError) as e:
            load_image(cases[case])
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(str(cases[case])) and text in msg
    probs = check_mask(cases["size"], (32, 32))
    assert [p.message for p in probs] == ["mask is 16x16 but its image is 32x32"]
    probs = check_mask(cases["empty"], (32, 32))
    assert [p.message for p in probs] == ["mask has no defect pixels (all zero)"]


def test_validate_reports_every_problem_in_one_run(tmp_path: Path) -> None:
    root = make_mvtec_ad(tmp_path / "ad", categories=("bottle",))
    cases = _corrupt(root)
    manifest, problems = validate_dataset(root)
    errors = {p.path: p.message for p in problems if p.severity == "error"}
    assert set(errors) == set(cases.values())
    assert len(manifest) == 7  # reading did not stop at the first problem


def test_sixteen_bit_and_palette_masks_read_correctly_with_warning(tmp_path: Path) -> None:
    m16 = np.zeros((32, 32), np.uint16)
    m16[2:6, 2:6] = 65535
    m16[10:12, 10:12] = 300  # a small 16-bit value still marks a defect
    p16 = tmp_path / "m16.png"
    Image.fromarray(m16).save(p16)
    assert Image.open(p16).mode.startswith("I")
    assert load_mask(p16).sum() == 16 + 4
    assert mask_values(p16).max() == 255
    assert any("16-bit mask" in p.message and p.severity == "warning" for p in check_mask(p16, (32, 32)))

    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    arr = np.zeros((32, 32), np.uint8)
    arr[4:8, 4:8] = 1  # palette index 1 = white
    pal.putdata(arr.ravel().tolist())
    pp = tmp_path / "pal.png"
    pal.save(pp)
    assert Image.open(pp).mode == "P"
    assert load_mask(pp).sum() == 16
    assert any("palette mask" in p.message for p in check_mask(pp, (32, 32)))


def test_palette_index_with_black_colour_is_not_a_defect(tmp_path: Path) -> None:
    # Index 1 drawn in black: a viewer shows no defect, and neither does vlmad.
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    pp = tmp_path / "pal.png"
    pal.save(pp)
    assert load_mask(pp).sum() == 0


def test_symlink_leaving_root_is_an_error(tmp_path: Path) -> None:
    root = make_mvtec_ad(tmp_path / "ad", categories=("bottle",))
    outside = write_image(tmp_path / "secret.png")
    os.symlink(outside, root / "bottle" / "train" / "good" / "009.png")
    _, problems = validate_dataset(root)
    assert [p.message for p in problems if p.severity == "error"] == [
        f"path leaves the dataset root {root.absolute()}"
    ]


def test_loco_layout_problems_collected(tmp_path: Path) -> None:
    root = make_loco(tmp_path / "loco")
    (root / "pushpins" / "defects_config.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"defects_config.json: not valid JSON"):
        read_dataset(root)
    problems: list = []
    read_dataset(root, problems=problems)
    assert any("defects_config.json" in str(p.path) for p in problems)


def test_clean_dataset_has_no_problems(tmp_path: Path) -> None:
    _, problems = validate_dataset(make_loco(tmp_path / "loco"))
    assert problems == []
