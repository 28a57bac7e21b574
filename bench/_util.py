"""Helpers the benchmarks share."""

from __future__ import annotations

import resource


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
