"""Generator throughput: images per second at 256x256 including masks and PNG writing.

Measured in one run:
- ``generate (1 worker)`` and ``generate (2 workers)``: the full writer (render, masks, PNG files, records);
- ``render only``: the procedural drawing without any file writing;
- ``render + all 10 shifts at 1.0``: the same with every imaging-environment shift at full strength;
- reference ``PNG write only``: encoding and writing the same images and masks with OpenCV, with no
  drawing; the ratio of the generator to it shows what drawing costs on top of unavoidable I/O.

The issue's target is at least 30 images/s on the 2-core development machine.

Usage: ``python bench/synth_speed.py [--per-group N] [--size 256]``
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from vlmad.data.synth.generate import generate, make_config, plan, render_job
from vlmad.data.synth.shifts import SHIFT_NAMES

TARGET = 30.0
ALL_SHIFTS = ",".join(f"{name}:1.0" for name in SHIFT_NAMES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-group", type=int, default=8, help="images per category and folder")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    n = args.per_group
    counts = {"train_good": n, "validation_good": n, "test_good": n, "test_logical": n, "test_structural": n}
    config = make_config(size=args.size, counts=counts)
    jobs = plan(config)
    total = len(jobs)
    tmp = Path(tempfile.mkdtemp(prefix="vlmad-bench-"))
    results: dict[str, float] = {}
    try:
        rendered = []
        t0 = time.perf_counter()
        for job in jobs:
            rendered.append(render_job(job))
        results["render only"] = total / (time.perf_counter() - t0)

        shifted = [replace(job, shifts=ALL_SHIFTS) for job in jobs]
        t0 = time.perf_counter()
        for job in shifted:
            render_job(job)
        results["render + all 10 shifts at 1.0"] = total / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i, (image, regions, _) in enumerate(rendered):
            cv2.imwrite(str(tmp / f"ref_{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            for k, (_, mask, _) in enumerate(regions):
                cv2.imwrite(str(tmp / f"ref_{i}_{k}.png"), np.where(mask, np.uint8(255), np.uint8(0)))
        results["PNG write only (reference)"] = total / (time.perf_counter() - t0)

        for workers in (1, 2):
            out = tmp / f"gen{workers}"
            t0 = time.perf_counter()
            generate(config, out, workers=workers)
            results[f"generate ({workers} worker{'s' if workers > 1 else ''})"] = total / (
                time.perf_counter() - t0
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ref = results["PNG write only (reference)"]
    print(
        f"{total} images of {args.size}x{args.size} px ({len(config.categories)} categories), masks included"
    )
    print(f"{'measurement':34s} {'images/s':>10s} {'vs reference':>13s}")
    for name, rate in results.items():
        print(f"{name:34s} {rate:10.1f} {rate / ref:12.2f}x")
    best = max(results["generate (1 worker)"], results["generate (2 workers)"])
    verdict = "meets" if best >= TARGET else "MISSES"
    print(f"best generator throughput {best:.1f} images/s {verdict} the target of {TARGET:.0f} images/s")


if __name__ == "__main__":
    main()
