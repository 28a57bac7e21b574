"""Start-up time of ``vlmad --help`` against a bare ``python -c pass`` measured in the same run.

The issue's target: ``vlmad --help`` answers in under 2 seconds.
Usage: ``python bench/cli_startup.py [--repeat 10]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def best_of(cmd: list[str], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    ref_min, ref_med = best_of([sys.executable, "-c", "pass"], args.repeat)
    cli_min, cli_med = best_of([sys.executable, "-m", "vlmad", "--help"], args.repeat)
    print(f"{'command':26s} {'min s':>8s} {'median s':>9s} {'vs python':>10s}")
    print(f"{'python -c pass (ref)':26s} {ref_min:8.3f} {ref_med:9.3f} {1.0:9.1f}x")
    print(f"{'vlmad --help':26s} {cli_min:8.3f} {cli_med:9.3f} {cli_med / ref_med:9.1f}x")
    print(f"target < 2 s: {'met' if cli_med < 2.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
