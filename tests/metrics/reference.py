"""Independent reference computations shared by the metric tests (never calls vlmad's metric code)."""

from __future__ import annotations

from collections.abc import Sequence


def area_to(xs: Sequence[float], ys: Sequence[float], limit: float) -> float:
    """Trapezoid area of the polyline (xs, ys) from x=0 to x=limit, cutting the segment that crosses it,
    divided by ``limit``."""
    area = 0.0
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:], strict=True):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit
