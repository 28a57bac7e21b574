"""Pixel metrics speed, agreement and memory: ``vlmad.metrics`` against scikit-learn and anomalib.

Input: ``--n-maps`` (default 500) smooth float32 anomaly maps of 256x256 (Gaussian-blurred noise) with
defect masks (1 to 4 ellipses or irregular blobs per anomalous image, about a third of the images
defect-free, about 5 % defect pixels overall); the maps are raised inside each defect by a random amount
(blurred over its edges) and at a few spurious hot spots, so that pixel AUROC is about 0.9 and AUPRO is
far from 0 and 1. Generated deterministically from ``--seed``; generation is never timed.

Measured in one run, on the same numpy input, best of ``--repeat`` (a reference that takes more than
20 s is run once):
- pixel AUROC: ``vlmad.metrics.auroc`` on the flattened arrays vs ``sklearn.metrics.roc_auc_score``;
- pixel AP: ``vlmad.metrics.average_precision`` vs ``sklearn.metrics.average_precision_score``;
- AUPRO at FPR 0.3: ``vlmad.metrics.aupro`` vs anomalib's ``_AUPRO`` (``update`` + ``compute``; its
  input is ``torch.from_numpy`` of the same arrays, made outside the timing);
- ``PixelMetrics`` (default settings) ``update`` over every map + one ``compute``, which yields AUROC, AP,
  F1-max and AUPRO in one pass, against sklearn AUROC + AP and against the sum of all three references.
Agreement: |ours - sklearn| <= 1e-6 for AUROC and AP, |ours - anomalib| <= 1e-4 for AUPRO.

Memory: peak RSS (``VmHWM``; ``ru_maxrss`` would include the parent's) of child processes that run only
our metric: ``PixelMetrics`` over the same maps, and a stream of ``--stream-maps`` (default 2000) maps
generated one at a time and never held together, which exceeds ``max_exact`` and switches to bounded
histograms; when ``--stream-maps`` is at most 2000 the stream's AUROC is compared with the exact value
from ``PixelMetrics(max_exact=None)`` (another child) and with the reported ``auroc_error_bound``.

Targets: faster than each reference, peak memory under 2 GB. Exit code 1 when an agreement check fails,
when the binned AUROC is off by more than its bound, or when a peak is over 2 GB.

Usage: ``.venv/bin/python bench/metrics.py [--n-maps 500] [--seed 0] [--repeat 3] [--stream-maps 2000]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import numpy as np
from _util import peak_rss_mb

from vlmad.metrics import PixelMetrics, aupro, auroc, average_precision
from vlmad.metrics.ranking import DEFAULT_MAX_EXACT

SIZE = 256
FPR_LIMIT = 0.3
MEMORY_LIMIT_MB = 2048.0
SLOW_S = 20.0
TOL_RANK = 1e-6
TOL_AUPRO = 1e-4
EXACT_STREAM_MAX = 2000


# --- input ---------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, sigma: float, size: int) -> np.ndarray:
    noise = rng.standard_normal((size, size), dtype=np.float32)
    out = cv2.GaussianBlur(noise, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    return out / (out.std() + np.float32(1e-6))


def make_pair(seed: int, index: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Map ``index`` of the set ``seed``: a (bool mask, float32 map) pair, the same on every call."""
    rng = np.random.default_rng([seed, index])
    amap = _smooth_noise(rng, float(rng.uniform(2.0, 6.0)), size) + 0.3 * _smooth_noise(rng, 1.0, size)
    mask = np.zeros((size, size), np.uint8)
    lift = np.zeros((size, size), np.float32)
    if rng.random() < 0.7:
        for _ in range(int(rng.integers(1, 5))):
            region = np.zeros((size, size), np.uint8)
            center = (int(rng.integers(0, size)), int(rng.integers(0, size)))
            axes = (int(rng.integers(3, 64)), int(rng.integers(3, 42)))
            cv2.ellipse(region, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            if rng.random() < 0.5:  # irregular blob: the ellipse's edge roughened by smooth noise
                soft = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 3.0)
                rough = _smooth_noise(rng, 2.0, size)
                region = (soft + 0.6 * rough * soft.clip(0, 0.5) > 0.5).astype(np.uint8)
            mask |= region
            lift = np.maximum(lift, region * np.float32(rng.uniform(0.8, 4.5)))
    for _ in range(int(rng.integers(0, 3))):  # spurious hot spots on normal surface
        center = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        cv2.circle(lift, center, int(rng.integers(3, 15)), float(rng.uniform(0.5, 2.5)), -1)
    amap += cv2.GaussianBlur(lift, (0, 0), 2.5)
    return mask.astype(bool), amap.astype(np.float32, copy=False)


def make_set(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    masks = np.empty((n, SIZE, SIZE), dtype=bool)
    maps = np.empty((n, SIZE, SIZE), dtype=np.float32)
    for i in range(n):
        masks[i], maps[i] = make_pair(seed, i)
    return masks, maps


def stream(seed: int, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The same maps one at a time, never more than one in memory."""
    for i in range(n):
        yield make_pair(seed, i)


# --- child processes: only our metric, for peak RSS ----------------------------------------------------


def run_child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    if kind == "pixel":
        masks, maps = make_set(args.seed, args.n_maps)
        pairs: Any = zip(masks, maps, strict=True)
        metric = PixelMetrics(fpr_limit=FPR_LIMIT)
    else:
        pairs = stream(args.seed, args.stream_maps)
        max_exact = None if kind == "stream-exact" else DEFAULT_MAX_EXACT
        metric = PixelMetrics(fpr_limit=FPR_LIMIT, max_exact=max_exact)
    before = peak_rss_mb()
    tracemalloc.start()
    for mask, amap in pairs:
        metric.update(mask, amap)
    result = metric.compute()
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    out = result.to_dict()
    out.update(
        peak_rss_mb=peak_rss_mb(),
        rss_before_mb=before,
        traced_peak_mb=traced_peak,
        wall_s=time.perf_counter() - t0,
    )
    return out


def spawn_child(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--seed", str(args.seed)]
    cmd += ["--n-maps", str(args.n_maps), "--stream-maps", str(args.stream_maps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {kind!r} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- timing --------------------------------------------------------------------------------------------


def best_of(fn: Callable[[], Any], repeat: int, stop_after: float | None = None) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls (one call only when it took longer than ``stop_after``)."""
    times, value = [], None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
        if stop_after is not None and times[-1] > stop_after:
            break
    return min(times), value


def pixel_metrics_pass(masks: np.ndarray, maps: np.ndarray):
    metric = PixelMetrics(fpr_limit=FPR_LIMIT)
    for mask, amap in zip(masks, maps, strict=True):
        metric.update(mask, amap)
    return metric.compute()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-maps", type=int, default=500, help="maps of 256x256 held in memory and timed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timings per measurement; the best is shown")
    ap.add_argument("--stream-maps", type=int, default=2000, help="maps streamed one at a time")
    ap.add_argument("--child", choices=["pixel", "stream", "stream-exact"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return

    import sklearn
    import torch
    from anomalib import __version__ as anomalib_version
    from anomalib.metrics.aupro import _AUPRO
    from sklearn.metrics import average_precision_score, roc_auc_score

    t0 = time.perf_counter()
    masks, maps = make_set(args.seed, args.n_maps)
    gen_s = time.perf_counter() - t0
    labels, scores = masks.reshape(-1), maps.reshape(-1)
    preds_t, target_t = torch.from_numpy(maps), torch.from_numpy(masks.view(np.uint8))  # not timed

    def anomalib_aupro() -> float:
        metric = _AUPRO(fpr_limit=FPR_LIMIT)
        metric.update(preds_t, target_t)
        return float(metric.compute())

    r = args.repeat
    ours_pm_s, res = best_of(lambda: pixel_metrics_pass(masks, maps), r)
    ours_auroc_s, ours_auroc = best_of(lambda: auroc(labels, scores), r)
    ours_ap_s, ours_ap = best_of(lambda: average_precision(labels, scores), r)
    ours_aupro_s, ours_aupro = best_of(lambda: aupro(masks, maps, FPR_LIMIT), r)
    ref_auroc_s, ref_auroc = best_of(lambda: float(roc_auc_score(labels, scores)), r, SLOW_S)
    ref_ap_s, ref_ap = best_of(lambda: float(average_precision_score(labels, scores)), r, SLOW_S)
    ref_aupro_s, ref_aupro = best_of(anomalib_aupro, r, SLOW_S)

    n_pixels = labels.size
    print(
        f"input: {args.n_maps} maps of {SIZE}x{SIZE} float32, {n_pixels:,} pixels, "
        f"{res.n_defect_pixels / n_pixels:.2%} defect pixels in {res.n_regions} regions, "
        f"{int((~masks.any(axis=(1, 2))).sum())} defect-free images, seed {args.seed} "
        f"(generated in {gen_s:.1f} s, not timed)"
    )
    mode = "binned" if res.binned else "exact"
    print(
        f"ours: vlmad.metrics; PixelMetrics default settings -> {mode} "
        f"({n_pixels:,} pixels, max_exact {DEFAULT_MAX_EXACT:,}); auroc()/average_precision()/aupro() "
        "on the same arrays; best of "
        f"{r}"
    )
    print(
        f"references: scikit-learn {sklearn.__version__} on the flattened arrays; anomalib "
        f"{anomalib_version} _AUPRO(fpr_limit={FPR_LIMIT}) update+compute on torch.from_numpy views "
        f"(conversion not timed; torch threads {torch.get_num_threads()}); best of {r}, "
        f"a single run when it takes > {SLOW_S:.0f} s"
    )

    rows = [
        ("AUROC: auroc() vs sklearn", ours_auroc_s, ref_auroc_s, ours_auroc, ref_auroc, TOL_RANK),
        ("AP: average_precision() vs sklearn", ours_ap_s, ref_ap_s, ours_ap, ref_ap, TOL_RANK),
        (
            f"AUPRO@{FPR_LIMIT}: aupro() vs anomalib",
            ours_aupro_s,
            ref_aupro_s,
            ours_aupro,
            ref_aupro,
            TOL_AUPRO,
        ),
        ("PixelMetrics AUROC", ours_pm_s, ref_auroc_s, res.auroc, ref_auroc, TOL_RANK),
        ("PixelMetrics AP", ours_pm_s, ref_ap_s, res.ap, ref_ap, TOL_RANK),
        (f"PixelMetrics AUPRO@{FPR_LIMIT}", ours_pm_s, ref_aupro_s, res.aupro, ref_aupro, TOL_AUPRO),
    ]
    failures: list[str] = []
    print()
    print(f"{'metric':38s} {'ours s':>8s} {'ref s':>8s} {'x faster':>9s} {'ours':>10s} {'|ours-ref|':>11s}")
    for name, ours_s, ref_s, ours_v, ref_v, tol in rows:
        diff = abs(ours_v - ref_v)
        ok = diff <= tol
        if not ok:
            failures.append(f"{name}: |{ours_v!r} - {ref_v!r}| = {diff:.3g} > {tol:g}")
        print(
            f"{name:38s} {ours_s:8.2f} {ref_s:8.2f} {ref_s / ours_s:8.2f}x {ours_v:10.6f} "
            f"{diff:11.2e}{'' if ok else '  FAIL (tol ' + format(tol, 'g') + ')'}"
        )
    combos = [
        ("AUROC+AP: PixelMetrics vs sklearn x2", ours_pm_s, ref_auroc_s + ref_ap_s),
        ("AUROC+AP+AUPRO: PixelMetrics vs all 3", ours_pm_s, ref_auroc_s + ref_ap_s + ref_aupro_s),
    ]
    for name, ours_s, ref_s in combos:
        print(f"{name:38s} {ours_s:8.2f} {ref_s:8.2f} {ref_s / ours_s:8.2f}x")
    print(
        "(PixelMetrics rows: one update loop over all maps + one compute giving AUROC, AP, F1-max and "
        "AUPRO together, so its time is the same on each of them)"
    )
    speed_rows = [(n, o, f) for n, o, f, *_ in rows[:3]] + combos
    slower = [name for name, ours_s, ref_s in speed_rows if ref_s <= ours_s]

    # memory, each in a child process that runs nothing but our metric
    print()
    print("peak memory (peak RSS, VmHWM, of a child process running only our metric):")
    px = spawn_child("pixel", args)
    peaks = [px["peak_rss_mb"]]
    print(
        f"  PixelMetrics on the {args.n_maps} maps ({'binned' if px['binned'] else 'exact'}): "
        f"peak RSS {px['peak_rss_mb']:.0f} MB (before the metric, with the input held: "
        f"{px['rss_before_mb']:.0f} MB; metric's own numpy peak, tracemalloc: {px['traced_peak_mb']:.0f} MB)"
    )
    st = spawn_child("stream", args)
    peaks.append(st["peak_rss_mb"])
    switch = DEFAULT_MAX_EXACT // (SIZE * SIZE)
    binned_note = (
        f"binned: yes (past {switch} maps = max_exact)" if st["binned"] else "binned: no (still exact)"
    )
    print(
        f"  streamed {args.stream_maps} maps one at a time ({st['n_pixels']:,} pixels), default settings: "
        f"peak RSS {st['peak_rss_mb']:.0f} MB (before: {st['rss_before_mb']:.0f} MB; tracemalloc peak "
        f"{st['traced_peak_mb']:.0f} MB), {binned_note}, {st['wall_s']:.1f} s with generation"
    )
    print(
        f"    AUROC {st['auroc']:.8f}, AP {st['ap']:.8f}, AUPRO {st['aupro']:.8f}, "
        f"auroc_error_bound {st['auroc_error_bound']:.2e}"
    )
    if args.stream_maps <= EXACT_STREAM_MAX:
        ex = spawn_child("stream-exact", args)
        d_auroc = abs(st["auroc"] - ex["auroc"])
        within = d_auroc <= st["auroc_error_bound"] + 1e-12
        if not within:
            bound = st["auroc_error_bound"]
            failures.append(f"streamed AUROC off by {d_auroc:.3g}, more than its error bound {bound:.3g}")
        print(
            f"    exact reference PixelMetrics(max_exact=None) on the same stream: AUROC "
            f"{ex['auroc']:.8f} (peak RSS {ex['peak_rss_mb']:.0f} MB, not bounded, not checked; "
            f"{ex['wall_s']:.1f} s)"
        )
        print(
            f"    |binned - exact|: AUROC {d_auroc:.2e} (bound {st['auroc_error_bound']:.2e}: "
            f"{'within' if within else 'EXCEEDED'}), AP {abs(st['ap'] - ex['ap']):.2e}, "
            f"AUPRO {abs(st['aupro'] - ex['aupro']):.2e}"
        )
    else:
        print(f"    exact comparison skipped (only for --stream-maps <= {EXACT_STREAM_MAX})")
    over = [p for p in peaks if p >= MEMORY_LIMIT_MB]
    if over:
        failures.append(f"peak RSS {max(over):.0f} MB is not under {MEMORY_LIMIT_MB:.0f} MB")

    print()
    speed = "met" if not slower else "MISSED (" + ", ".join(slower) + ")"
    print(
        f"target: faster than each reference: {speed}; "
        f"peak memory < 2 GB: {'met' if not over else 'MISSED'} (largest {max(peaks):.0f} MB)"
    )
    if failures:
        print("FAILED checks:")
        for line in failures:
            print(f"  {line}")
        sys.exit(1)
    print("agreement checks passed (AUROC, AP within 1e-6 of sklearn; AUPRO within 1e-4 of anomalib)")


if __name__ == "__main__":
    main()
