from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures import make_loco, make_mvtec_ad
from vlmad import __version__


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vlmad", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_imports_nothing_heavy() -> None:
    # Start-up time itself is measured by bench/cli_startup.py; here: what makes it slow is not imported.
    r = run("--help")
    assert r.returncode == 0 and "data" in r.stdout and "demo" in r.stdout
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, vlmad.cli; print(*(m in sys.modules for m in ('torch', 'cv2', 'transformers')))",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.stdout.split() == ["False", "False", "False"]


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"vlmad {__version__}"


def test_data_info_prints_counts(tmp_path: Path) -> None:
    root = make_loco(tmp_path / "loco")
    r = run("data", "info", str(root), "--save", str(tmp_path / "m.parquet"))
    assert r.returncode == 0, r.stderr
    assert (
        "pushpins" in r.stdout
        and "test good" in r.stdout
        and "logical" in r.stdout
        and "missing_item" in r.stdout
    )
    assert (tmp_path / "m.parquet").is_file()


def test_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    for args in (
        ("data", "info", str(tmp_path / "missing")),
        ("data", "validate", str(tmp_path)),
        ("data", "info", str(tmp_path), "--layout", "coco"),
    ):
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_validate_lists_all_problems_and_fails(tmp_path: Path) -> None:
    root = make_mvtec_ad(tmp_path / "ad", categories=("bottle",))
    (root / "bottle" / "train" / "good" / "000.png").write_bytes(b"")
    (root / "bottle" / "test" / "good" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = run("data", "validate", str(root))
    assert r.returncode == 1
    assert "000.png: empty file (0 bytes)" in r.stdout
    assert "001.png: truncated image" in r.stdout
    assert "2 errors" in r.stdout
    clean = make_loco(tmp_path / "loco")
    r = run("data", "validate", str(clean))
    assert r.returncode == 0 and "0 errors" in r.stdout


def test_data_synth_writes_a_readable_dataset_and_reports_errors(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = ["data", "synth", "--out", str(out), "--categories", "pushpins,screw_bag", "--size", "96"]
    counts = ["--train-good", "1", "--validation-good", "1", "--test-good", "1"]
    counts += ["--test-logical", "2", "--test-structural", "2"]
    r = run(*args, *counts, "--test-shifts", "shadow:0.5", "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "14 images generated" in r.stdout and "images/s" in r.stdout
    r = run("data", "info", str(out))
    assert r.returncode == 0 and "screw_bag" in r.stdout
    # same folder, other settings: refused with one line, nothing overwritten
    before = (out / "pushpins" / "test" / "good" / "000.png").read_bytes()
    r = run(*args, *counts, "--seed", "5")
    assert r.returncode == 2 and "other settings" in r.stderr and "Traceback" not in r.stderr
    assert (out / "pushpins" / "test" / "good" / "000.png").read_bytes() == before
    r = run("data", "synth", "--out", str(tmp_path / "x"), "--test-shifts", "sunburn:0.5")
    assert r.returncode == 2 and "unknown imaging shift 'sunburn'" in r.stderr
    r = run("data", "synth", "--out", str(tmp_path / "x"), "--categories", "toaster")
    assert r.returncode == 2 and r.stderr.startswith("error: options: categories: unknown categories")
