"""Zero-shot methods: images per second on CPU, and WinCLIP's batched window scoring against the naive loop.

Data: ``--images`` 256x256 test images of ``--category`` (default ``screw_bag``; half good, half structural
anomalies) from the project's generator, rendered in memory; 4 good training images of the same category
are WinCLIP+'s references; AnomalyCLIP is trained for 1 epoch on 4 annotated images of ``--fit-category``
(default ``pushpins``; 2 good, 2 structural with masks). Rendering is never timed.

CLIP (``--clip``): ``tiny`` is :func:`~vlmad.zeroshot.clip.make_tiny_clip`'s default (64 px, patch 8, width
32, 4 layers); ``base`` is a CLIP of ViT-B/16's size (224 px, patch 16, width 768, 12 vision layers,
projection 512) with RANDOM weights. Both are random: the numbers are timings only, the scores mean
nothing, so no accuracy is reported.

Measured in one run, CPU, ``torch.set_num_threads`` untouched unless ``--threads``, each method warmed
up on 2 images first:

- throughput (images/s) of ``predict`` over the test images, with its ratio to WinCLIP zero-shot (the
  reference): WinCLIP zero-shot (scales 2 and 3, stride 1, 512 windows per forward pass), WinCLIP+ with
  k = 4 references (their embedding included in every call, as ``predict`` does it), MuSc (all test images
  in one call, as it scores them together) and AnomalyCLIP (after its fit, whose time is printed apart);
- WinCLIP window scoring alone (window embeddings, two-class softmax, harmonic aggregation for both scales)
  batched against ``batched=False``, the naive loop of one window per forward pass, on the same
  ``--naive-images`` images (default 4: the naive loop is slow), with the largest difference of their
  patch scores. Target: batched faster than naive; exit code 1 when missed.

The machine's load moves these numbers; ``--repeats N`` keeps the best of N timings of everything. On a
busy machine (load above the core count) torch's multi-threaded kernels can stall on each other by orders
of magnitude (seen: WinCLIP on the tiny CLIP 90x slower with 2 threads than with 1 while another job held
a core); ``--threads 1`` gives steadier numbers there.

Usage: ``.venv/bin/python bench/zeroshot.py [--clip tiny|base] [--images 16] [--only GROUPS]`` with
GROUPS a comma-separated subset of ``winclip,musc,anomalyclip`` (``winclip`` covers zero-shot, few-shot and
the window comparison).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _util import finish

GROUPS = ("winclip", "musc", "anomalyclip")
BASE = {"image_size": 224, "patch_size": 16, "hidden": 768, "layers": 12, "projection_dim": 512}


def render(category: str, size: int, n_good: int, n_bad: int, n_train: int, seed: int) -> dict[str, list]:
    """{"train": [...], "test": [...], "masks": [...]} rendered in memory (test masks None for good)."""
    from vlmad.data.synth.generate import make_config, plan, render_job

    counts = {
        "train_good": n_train,
        "validation_good": 0,
        "test_good": n_good,
        "test_logical": 0,
        "test_structural": n_bad,
    }
    config = make_config(source="bench", categories=[category], size=size, seed=seed, counts=counts)
    out: dict[str, list] = {"train": [], "test": [], "masks": []}
    for job in plan(config):
        image, regions, _ = render_job(job)
        if job.split == "train":
            out["train"].append(image)
            continue
        mask = np.zeros(image.shape[:2], bool)
        for _, m, _ in regions:
            mask |= np.asarray(m, bool)
        out["test"].append(image)
        out["masks"].append(mask if mask.any() else None)
    return out


def first(pair: tuple[float, Any]) -> float:
    return pair[0]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def window_scoring(method: Any, images: list[np.ndarray], category: str) -> tuple[float, Any]:
    """Seconds of WinCLIP's window scoring (every scale) on ``images``, and the ``(B, scales, g, g)`` patch
    scores."""
    import torch

    from vlmad.zeroshot.winclip import anomaly_probability, harmonic_aggregate, window_indices

    clip = method.clip
    with torch.inference_mode():
        text = method.text_embeddings(category)
        tokens = clip.vision_tokens(clip.preprocess(images))
        grid = clip.info.grid
        t0 = time.perf_counter()
        maps = []
        for k in method.scales:
            scores = anomaly_probability(method.window_embeddings(tokens, k), text, method.temperature)
            maps.append(harmonic_aggregate(scores, window_indices(grid, k, method.stride), grid))
        seconds = time.perf_counter() - t0
    return seconds, torch.stack(maps, dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", choices=["tiny", "base"], default="tiny")
    ap.add_argument("--images", type=int, default=16, help="test images (half good, half anomalous)")
    ap.add_argument("--naive-images", type=int, default=4, help="images of the batched-vs-naive comparison")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--category", default="screw_bag")
    ap.add_argument("--fit-category", default="pushpins", help="AnomalyCLIP's training category")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=",".join(GROUPS), help="comma-separated: " + ", ".join(GROUPS))
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch.set_num_threads before timing (0: leave torch's default)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="time each measurement this often, keep the best")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - set(GROUPS)
    if unknown:
        ap.error(f"unknown --only {sorted(unknown)}; choose from {', '.join(GROUPS)}")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.images < 2:
        ap.error("--images must be at least 2 (MuSc scores a category's images together)")

    import torch

    from vlmad.zeroshot.clip import Clip, make_tiny_clip

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    n_bad = args.images // 2
    data = render(args.category, args.size, args.images - n_bad, n_bad, 4, args.seed)
    test, refs = data["test"], data["train"]
    tmp = Path(tempfile.mkdtemp(prefix="vlmad-bench-clip-"))
    try:
        t0 = time.perf_counter()
        clip = Clip.load(make_tiny_clip(tmp / "clip", **(BASE if args.clip == "base" else {})))
        build_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = clip.info
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; CLIP --clip {args.clip}: "
        f"{info.image_size} px, patch {info.patch_size} ({info.grid} x {info.grid} grid), "
        f"{info.num_layers} vision layers (built in {build_s:.1f} s)"
    )
    print(f"WARNING {info.warning}: timings only")
    print(f"{len(test)} test images of {args.category}, {args.size}x{args.size} px")

    rates: dict[str, float] = {}
    results: dict[str, Any] = {"clip": args.clip, "images": len(test), "throughput": rates}
    failures: list[str] = []

    def throughput(name: str, predict: Callable[[list[np.ndarray]], Any]) -> None:
        predict(test[:2])  # warm-up: first calls pay one-off allocation costs
        rates[name] = len(test) / min(timed(lambda: predict(test)) for _ in range(args.repeats))

    if "winclip" in only:
        from vlmad.zeroshot.winclip import WinCLIP

        win = WinCLIP(clip)
        throughput("WinCLIP zero-shot", lambda xs: win.predict(xs, args.category))
        throughput("WinCLIP+ (k=4)", lambda xs: win.predict(xs, args.category, references=refs))
    if "musc" in only:
        from vlmad.zeroshot.musc import MuSc

        musc = MuSc(clip)
        throughput("MuSc", lambda xs: musc.predict(xs, args.category))
    if "anomalyclip" in only:
        from vlmad.zeroshot.anomalyclip import AnomalyCLIP

        aux = render(args.fit_category, args.size, 2, 2, 0, args.seed + 1)
        aclip = AnomalyCLIP(clip, epochs=1)
        fit_s = timed(lambda: aclip.fit(aux["test"], aux["masks"], args.fit_category))
        results["anomalyclip_fit_s"] = fit_s
        print(f"AnomalyCLIP fit: 1 epoch on {len(aux['test'])} {args.fit_category} images in {fit_s:.2f} s")
        throughput("AnomalyCLIP", lambda xs: aclip.predict(xs, args.category))

    if rates:
        ref = rates.get("WinCLIP zero-shot")
        print(f"{'method':24s} {'images/s':>10s} {'vs WinCLIP zero-shot':>21s}")
        for name, rate in rates.items():
            ratio = f"{rate / ref:20.2f}x" if ref else f"{'-':>21s}"
            print(f"{name:24s} {rate:10.2f} {ratio}")

    if "winclip" in only:
        from vlmad.zeroshot.winclip import WinCLIP

        few = test[: max(1, args.naive_images)]
        fast, slow = WinCLIP(clip), WinCLIP(clip, batched=False)
        window_scoring(fast, few[:1], args.category)  # warm-up
        window_scoring(slow, few[:1], args.category)
        fast_s, fast_maps = min(
            (window_scoring(fast, few, args.category) for _ in range(args.repeats)), key=first
        )
        slow_s, slow_maps = min(
            (window_scoring(slow, few, args.category) for _ in range(args.repeats)), key=first
        )
        diff = float((fast_maps - slow_maps).abs().max())
        windows = sum((info.grid - k + 1) ** 2 for k in fast.scales)
        speedup = slow_s / fast_s
        print(
            f"WinCLIP window scoring, {len(few)} images x {windows} windows (scales {tuple(fast.scales)}): "
            f"batched {len(few) / fast_s:.2f} images/s, naive loop {len(few) / slow_s:.2f} images/s: "
            f"batched {speedup:.1f}x faster (target > 1x); largest patch-score difference {diff:.1e}"
        )
        results["windows"] = {
            "images": len(few),
            "batched_s": fast_s,
            "naive_s": slow_s,
            "speedup": speedup,
            "max_diff": diff,
        }
        if speedup <= 1:
            failures.append(f"batched window scoring only {speedup:.2f}x the naive loop")
        if diff > 1e-4:
            failures.append(f"batched and naive window scores differ by {diff:.1e}")
    finish(results, failures, args.json)


if __name__ == "__main__":
    main()
