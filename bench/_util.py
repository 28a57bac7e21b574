"""Helpers the benchmarks share."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB.

    ``VmHWM`` of the process's own address space: ``ru_maxrss`` is not used because Linux carries the
    parent's peak over into a child across fork/exec, which would report the parent's memory instead of
    the child's.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def finish(results: dict[str, Any], failures: list[str], json_path: str | None) -> None:
    """Write ``results`` to ``json_path`` (if given), print each missed target and exit 1 if any."""
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1) + "\n")
    for f in failures:
        print(f"TARGET MISSED: {f}")
    sys.exit(1 if failures else 0)
