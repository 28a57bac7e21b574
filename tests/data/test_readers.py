from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import make_folder, make_loco, make_mvtec_ad, make_visa, write_image, write_mask
from vlmad.data import detect_layout, load_masks, read_dataset
from vlmad.data.images import load_image
from vlmad.errors import DatasetError
from vlmad.records import Manifest


def test_mvtec_ad_reader(tmp_path: Path) -> None:
    root = make_mvtec_ad(tmp_path / "ad")
    assert detect_layout(root) == "mvtec_ad"
    m = read_dataset(root)
    assert m.info.layout == "mvtec_ad"
    assert m.categories == ["bottle", "screw"]
    assert len(m) == 2 * (3 + 2 + 2)
    broken = m.filter(category="bottle", label="anomaly").samples
    assert [s.defect_type for s in broken] == ["broken", "broken"]
    assert all(len(s.mask_paths) == 1 and s.mask_paths[0].name.endswith("_mask.png") for s in broken)
    assert {s.split for s in m} == {"train", "test"}
    assert m.get("bottle/train/good/000").image_path.is_file()


def test_mvtec_ad_single_category_folder(tmp_path: Path) -> None:
    root = make_mvtec_ad(tmp_path / "ad", categories=("bottle",))
    m = read_dataset(root / "bottle")
    assert m.categories == ["bottle"] and len(m) == 7
    assert m.samples[0].id.startswith("bottle/")


def test_loco_reader_masks_and_defect_types(tmp_path: Path) -> None:
    root = make_loco(tmp_path / "loco")
    assert detect_layout(root) == "mvtec_loco"
    m = read_dataset(root)
    assert m.counts("split", "label") == {
        ("train", "good"): 3,
        ("validation", "good"): 1,
        ("test", "good"): 1,
        ("test", "logical"): 1,
        ("test", "structural"): 1,
    }
    logical = m.filter(label="logical")[0]
    assert len(logical.mask_paths) == 2 and logical.defect_type == "missing_item"
    structural = m.filter(label="structural")[0]
    # pixel value 254 (< 255) is a defect and maps to its defect name
    assert structural.defect_type == "scratch"
    mask = load_masks(structural.mask_paths, (32, 32))
    assert mask.sum() == 36
    assert [d.defect_name for d in m.info.defects["pushpins"]] == ["missing_item", "scratch"]


def test_visa_reader(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    assert detect_layout(root) == "visa"
    m = read_dataset(root)
    assert m.categories == ["candle", "pcb1"]
    anomalies = m.filter(label="anomaly").samples
    assert len(anomalies) == 2 and all(len(s.mask_paths) == 1 for s in anomalies)
    # VisA masks store class indices (value 1): still defect pixels
    assert load_masks(anomalies[0].mask_paths, (32, 32)).sum() == 64


def test_visa_path_leaving_root_is_reported(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    write_image(tmp_path / "outside.png")
    with (root / "split_csv" / "1cls.csv").open("a") as f:
        f.write("candle,test,normal,../outside.png,\n")
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        read_dataset(root)
    problems: list = []
    m = read_dataset(root, problems=problems)
    assert len(problems) == 1 and "1cls.csv" in str(problems[0].path)
    assert len(m) == 8  # the good rows are kept


def test_folder_reader(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "plain")
    assert detect_layout(root) == "folder"
    m = read_dataset(root)
    assert m.counts("label") == {("good",): 2, ("anomaly",): 2}
    dent = m.get("widget/dent/d0")
    assert dent.defect_type == "dent" and len(dent.mask_paths) == 1
    assert m.get("widget/stain/s0").mask_paths == ()
    assert all(s.split == "test" for s in m)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_manifest_round_trip(tmp_path: Path, suffix: str) -> None:
    root = make_loco(tmp_path / "loco")
    m = read_dataset(root)
    path = m.save(tmp_path / f"manifest{suffix}")
    back = Manifest.load(path)
    assert back.samples == m.samples
    assert back.info.defects == m.info.defects
    assert detect_layout(path) == "manifest" and len(read_dataset(path)) == len(m)
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        assert not Path(rows[0]["image_path"]).is_absolute()  # stored relative to the root


def test_manifest_moves_with_dataset(tmp_path: Path) -> None:
    root = make_loco(tmp_path / "a" / "loco")
    read_dataset(root).save(tmp_path / "a" / "manifest.jsonl")
    moved = tmp_path / "b"
    root.parent.rename(moved)
    back = Manifest.load(moved / "manifest.jsonl")
    assert back.info.root == moved / "loco"
    assert all(s.image_path.is_file() for s in back)


def test_bad_manifest_lines(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    p.write_text(
        '{"vlmad": "manifest", "version": 1, "info": {"name": "x", "layout": "folder", "root": "/"}}\n{oops\n'
    )
    with pytest.raises(DatasetError, match=r"m.jsonl: line 2 is not JSON"):
        Manifest.load(p)
    p.write_text(
        '{"vlmad": "manifest", "version": 1, "info": {"name": "x", "layout": "folder", "root": "/"}}\n'
        '{"id": "a", "image_path": "a.png", "category": "c", "split": "dev", "label": "good"}\n'
    )
    with pytest.raises(DatasetError, match=r"line 2 is not a valid sample: split"):
        Manifest.load(p)
    p.write_text('{"hello": 1}\n')
    with pytest.raises(DatasetError, match="not a vlmad manifest"):
        Manifest.load(p)


def test_missing_and_wrong_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="unrecognised dataset layout"):
        read_dataset(tmp_path / "empty")
    write_image(tmp_path / "x" / "img.png")
    with pytest.raises(DatasetError, match="unrecognised dataset layout"):
        read_dataset(tmp_path / "x")
    root = make_mvtec_ad(tmp_path / "ad")
    with pytest.raises(DatasetError, match="no MVTec LOCO AD category"):
        read_dataset(root, layout="mvtec_loco")
    with pytest.raises(DatasetError, match="unknown layout"):
        read_dataset(root, layout="coco")


def test_missing_mvtec_mask_is_named(tmp_path: Path) -> None:
    root = make_mvtec_ad(tmp_path / "ad", categories=("bottle",))
    (root / "bottle" / "ground_truth" / "broken" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"001_mask.png: missing ground-truth mask"):
        read_dataset(root)


def test_loco_missing_masks_and_unknown_pixel_value(tmp_path: Path) -> None:
    root = make_loco(tmp_path / "loco")
    gt = root / "pushpins" / "ground_truth" / "structural_anomalies" / "000"
    write_mask(gt / "000.png", 17)
    problems: list = []
    m = read_dataset(root, problems=problems)
    assert any("pixel value 17 is not in defects_config.json" in p.message for p in problems)
    assert m.filter(label="structural")[0].defect_type is None
    for f in gt.iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="no ground-truth masks"):
        read_dataset(root)


def test_grayscale_and_rgba_images_are_converted(tmp_path: Path) -> None:
    g = write_image(tmp_path / "g.png", mode="L")
    a = write_image(tmp_path / "a.png", mode="RGBA")
    for p in (g, a):
        img = load_image(p)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8


def test_manifest_lookup_filter_and_duplicate_ids(tmp_path: Path) -> None:
    m = read_dataset(make_loco(tmp_path / "loco"))
    s = m.get("pushpins/test/logical_anomalies/000")
    assert s.label == "logical"
    m.samples.reverse()  # changed in place: lookups still find the right sample
    assert m.get(s.id) == s
    with pytest.raises(KeyError):
        m.get("nope")
    assert len(m.filter(split="test", label=["logical", "structural"])) == 2
    with pytest.raises(DatasetError, match="duplicate sample id"):
        Manifest(m.info, [s, s])


def test_visa_bad_csv_content(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    csv_path = root / "split_csv" / "1cls.csv"
    with csv_path.open("a") as f:
        f.write("candle,test\n")  # a short row
        f.write("candle,dev,normal,candle/Data/Images/Normal/0000.JPG,\n")
    problems: list = []
    m = read_dataset(root, problems=problems)
    assert [p.message for p in problems] == [
        "line 10: missing object or image column",
        "line 11: unknown split 'dev'",
    ]
    assert len(m) == 8
    csv_path.write_bytes(b"object,split,label,image,mask\n\xff\xfe broken")
    with pytest.raises(DatasetError, match=r"1cls.csv: not UTF-8 text"):
        read_dataset(root)
