"""The feature cache (`--feature-cache auto`, the default: a frozen prefix's output computed
once per image) against the same run with `--feature-cache off`, each a whole `freezer-app
train` process timed from start to exit (what a user waits for).

Everything but the cache setting is the same in both: timm weights from scratch (no download),
`--augment none` (which the cache needs for training images), `--device cpu`, `--seed 0`,
the app's defaults otherwise. Each process gets a fresh, empty FREEZER_CACHE_DIR, so every
cached run starts cold and pays for its filling epoch; after the pairs, one "warm" cached run
reuses the cache folder of the last cached run (reported separately: no filling epoch).
Runs alternate in pairs (uncached then cached, cached then uncached, ...) so a slow spell of
the machine hits both; each pair's ratio cached/uncached is reported with median and spread.
From each run's metrics.jsonl the epoch times give the per-epoch speed-up (uncached epoch
seconds / cached epoch seconds): epoch 1, where the cache fills, and the later epochs (their
median), again per pair with median and spread. A cached run whose summary says the cache
was not used stops the goal case with an error; in the grid it is reported (with the app's
reason: e.g. a prefix doing under 25% of the forward's work is not cached) and timed anyway.

1. The goal case: `--preset head-only` resnet18 at 64 px, 8 epochs, on the digits folder of
   1,437 training and 360 validation images (digits_data.py). Targets: whole-process ratio
   cached/uncached <= 0.35 and later-epoch speed-up >= 10 (printed as booleans).
2. A grid: resnet18, efficientnet_b0 (128 px) and vit_small_patch16_224 (224 px, its fixed
   input size) × presets head-only and freeze-stages:2, 3 epochs on a digits folder of 200
   training and 50 validation images, one pair each. `--models`, `--presets` restrict it,
   `--skip-grid` skips it.

Durations on a 2-core CPU without a GPU: the goal case with 3 pairs about 2.5 minutes (an
uncached run ~32 s, a cached one ~10 s, the warm one ~6 s); the grid about 8 minutes
(vit_small freeze-stages:2 alone ~4); `--quick` (1 pair, a 3-epoch goal case on 300 images,
a 2-epoch grid on 100 images) about 3.5 minutes. JSON goes to stdout, progress to stderr.

    .venv/bin/python tests/benchmarks/bench_feature_cache.py [--pairs 3] [--skip-grid]
        [--models resnet18,efficientnet_b0] [--presets head-only] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import digits_data

GRID_MODELS = ["resnet18", "efficientnet_b0", "vit_small_patch16_224"]
GRID_PRESETS = ["head-only", "freeze-stages:2"]
# Models that only take their own input size; the others train at --grid-image-size.
FIXED_SIZE = {"vit_small_patch16_224": 224}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Runner:
    """Runs `freezer-app train` processes in a scratch folder, each with its own cache folder."""

    def __init__(self, scratch: Path, workers: str | None) -> None:
        self.scratch = scratch
        self.workers = workers
        self.counter = 0
        self.last_cache: Path | None = None  # the cache folder of the last cached run

    def train(
        self,
        model: str,
        preset: str,
        data: Path,
        image_size: int,
        epochs: int,
        cached: bool,
        cache_dir: Path | None = None,
    ) -> dict:
        """One whole process: wall seconds, peak RSS, epoch seconds, and the summary's
        feature_cache. `cache_dir`: reuse that FREEZER_CACHE_DIR (a warm run)."""
        self.counter += 1
        out = self.scratch / f"run{self.counter}"
        if cache_dir is None:
            cache_dir = self.scratch / f"cache{self.counter}"
        command = [
            sys.executable,
            "-m",
            "freezer_app",
            "train",
            "--model",
            f"timm:{model}",
            "--no-pretrained",
            "--data",
            str(data),
            "--image-size",
            str(image_size),
            "--epochs",
            str(epochs),
            "--preset",
            preset,
            "--augment",
            "none",
            "--device",
            "cpu",
            "--seed",
            "0",
            "--feature-cache",
            "auto" if cached else "off",
            *(["--workers", self.workers] if self.workers else []),
            "--out",
            str(out),
            "--json",
            "--quiet",
        ]
        env = {**os.environ, "FREEZER_CACHE_DIR": str(cache_dir)}
        err_path = self.scratch / f"run{self.counter}.stderr"
        with open(err_path, "w") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
            stdout = proc.stdout.read() if proc.stdout else ""
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            tail = err_path.read_text(errors="replace")[-2000:]
            raise SystemExit(f"{' '.join(command)} failed ({code}):\n{stdout[-1000:]}\n{tail}")
        summary = json.loads(stdout)
        epochs_s = [
            record["seconds"]
            for record in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if record.get("type") == "epoch"
        ]
        shutil.rmtree(out, ignore_errors=True)
        err_path.unlink(missing_ok=True)
        if cached:
            self.last_cache = cache_dir
        else:
            shutil.rmtree(cache_dir, ignore_errors=True)
        cache = summary.get("feature_cache") or {}
        run = {
            "seconds": seconds,
            "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
            "epoch_seconds": epochs_s,
            "cache": {
                key: cache.get(key)
                for key in (
                    "used",
                    "cut",
                    "reason",
                    "training_cached",
                    "images",
                    "total",
                    "ram_bytes",
                    "disk_bytes",
                    "fill_seconds",
                )
            },
        }
        label = "cached" if cached else "uncached"
        used = f", cache used={cache.get('used')}" if cached else ""
        log(
            f"  {label:8} {model} {preset} {image_size}px {epochs} ep: {seconds:.1f} s "
            f"(epochs {', '.join(f'{s:.2f}' for s in epochs_s)}){used}"
        )
        if len(epochs_s) != epochs:
            raise SystemExit(f"expected {epochs} epoch records, got {len(epochs_s)}: {command}")
        return run


def spread(values: list[float], digits: int = 3) -> dict:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "pairs": [round(v, digits) for v in values],
    }


def compare(uncached: list[dict], cached: list[dict]) -> dict:
    """Per-pair ratios and per-epoch speed-ups, and the runs' own numbers."""
    later = [
        statistics.median(u["epoch_seconds"][1:]) / statistics.median(c["epoch_seconds"][1:])
        for u, c in zip(uncached, cached)
        if len(u["epoch_seconds"]) > 1
    ]
    out = {
        "ratio_cached_over_uncached": spread(
            [c["seconds"] / u["seconds"] for u, c in zip(uncached, cached)]
        ),
        "epoch1_speedup": spread(
            [u["epoch_seconds"][0] / c["epoch_seconds"][0] for u, c in zip(uncached, cached)], 2
        ),
        "later_epochs_speedup": spread(later, 1) if later else None,
        "uncached": runs_summary(uncached),
        "cached": runs_summary(cached),
    }
    return out


def runs_summary(runs: list[dict]) -> dict:
    firsts = [r["epoch_seconds"][0] for r in runs]
    laters = [s for r in runs for s in r["epoch_seconds"][1:]]
    out = {
        "seconds_median": round(statistics.median(r["seconds"] for r in runs), 2),
        "seconds": [round(r["seconds"], 2) for r in runs],
        "epoch1_seconds_median": round(statistics.median(firsts), 3),
        "later_epoch_seconds_median": round(statistics.median(laters), 3) if laters else None,
        "peak_rss_mb_median": round(statistics.median(r["peak_rss_mb"] for r in runs), 1),
    }
    if any(r["cache"]["used"] for r in runs):
        out["feature_cache"] = [cache_brief(r) for r in runs]
    return out


def cache_brief(run: dict) -> dict:
    cache = run["cache"]
    fill = cache.get("fill_seconds")
    return {
        "used": cache.get("used"),
        "cut": cache.get("cut"),
        "training_cached": cache.get("training_cached"),
        "images": cache.get("images"),
        "ram_bytes": cache.get("ram_bytes"),
        "disk_bytes": cache.get("disk_bytes"),
        "fill_seconds": round(fill, 2) if fill is not None else None,
    }


def paired(runner: Runner, pairs: int, job: dict) -> tuple[list[dict], list[dict]]:
    uncached: list[dict] = []
    cached: list[dict] = []
    for pair in range(pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        for use in order:
            (cached if use else uncached).append(runner.train(**job, cached=use))
    return uncached, cached


def warm_run(runner: Runner, job: dict, uncached: list[dict]) -> dict:
    """One cached run on the cache folder the last cached run left behind."""
    assert runner.last_cache is not None
    run = runner.train(**job, cached=True, cache_dir=runner.last_cache)
    base = statistics.median(u["seconds"] for u in uncached)
    base_first = statistics.median(u["epoch_seconds"][0] for u in uncached)
    return {
        "seconds": round(run["seconds"], 2),
        "ratio_over_uncached_median": round(run["seconds"] / base, 3),
        "epoch_seconds": [round(s, 3) for s in run["epoch_seconds"]],
        "epoch1_speedup": round(base_first / run["epoch_seconds"][0], 1),
        "feature_cache": cache_brief(run),
    }


def goal_case(runner: Runner, args: argparse.Namespace, data: Path) -> dict:
    job = {
        "model": "resnet18",
        "preset": "head-only",
        "data": data,
        "image_size": 64,
        "epochs": args.epochs,
    }
    log(f"goal case: resnet18 head-only 64 px, {args.epochs} epochs, {args.pairs} pair(s)")
    runner.train(**{**job, "epochs": 1}, cached=False)  # page cache and imports, not counted
    uncached, cached = paired(runner, args.pairs, job)
    for run in cached:
        if not run["cache"]["used"] or not run["cache"]["training_cached"]:
            raise SystemExit(f"goal case: the cached run did not use the cache: {run['cache']}")
    result = {"job": {**job, "data": str(data)}, **compare(uncached, cached)}
    warm = warm_run(runner, job, uncached)
    if not warm["feature_cache"]["used"]:
        raise SystemExit(f"goal case: the warm run did not use the cache: {warm}")
    result["warm_cached"] = warm
    later = result["later_epochs_speedup"]
    result["goal"] = {
        "ratio_le_0.35": result["ratio_cached_over_uncached"]["median"] <= 0.35,
        "later_epochs_speedup_ge_10": bool(later) and later["median"] >= 10,
    }
    return result


def grid(runner: Runner, args: argparse.Namespace, data: Path) -> list[dict]:
    cells = []
    for model in args.models:
        size = FIXED_SIZE.get(model, args.grid_image_size)
        for preset in args.presets:
            job = {
                "model": model,
                "preset": preset,
                "data": data,
                "image_size": size,
                "epochs": args.grid_epochs,
            }
            log(f"grid: {model} {preset} {size} px, {args.grid_epochs} epochs")
            uncached, cached = paired(runner, args.grid_pairs, job)
            cell = {"model": model, "preset": preset, "image_size": size}
            refused = [r["cache"] for r in cached if not r["cache"]["used"]]
            if refused:
                reason = refused[0].get("reason")
                log(f"  WARNING: the cached run did not use the cache: {reason}")
                cell["cache_used"] = False
                cell["cache_reason"] = reason
            else:
                cell["cache_used"] = True
            cell.update(compare(uncached, cached))
            if not refused:
                cell["warm_cached"] = warm_run(runner, job, uncached)
            cells.append(cell)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, help="goal-case pairs (default 3; --quick: 1)")
    parser.add_argument("--epochs", type=int, help="goal-case epochs (default 8; --quick: 3)")
    parser.add_argument("--grid-pairs", type=int, default=1)
    parser.add_argument("--grid-epochs", type=int, help="default 3; --quick: 2")
    parser.add_argument("--grid-image-size", type=int, default=128)
    parser.add_argument("--models", default=",".join(GRID_MODELS), help="grid models, a,b,...")
    parser.add_argument("--presets", default=",".join(GRID_PRESETS), help="grid presets")
    parser.add_argument("--skip-grid", action="store_true")
    parser.add_argument("--skip-goal", action="store_true")
    parser.add_argument("--workers", help="--workers for freezer-app (default: the app's auto)")
    parser.add_argument(
        "--quick", action="store_true", help="1 pair, 3-epoch goal case on 300 images, small grid"
    )
    args = parser.parse_args()
    args.pairs = args.pairs or (1 if args.quick else 3)
    args.epochs = args.epochs or (3 if args.quick else 8)
    args.grid_epochs = args.grid_epochs or (2 if args.quick else 3)
    args.models = [m for m in args.models.split(",") if m]
    args.presets = [p for p in args.presets.split(",") if p]

    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="freezer-bench-fc-"))
    try:
        runner = Runner(scratch, args.workers)
        report: dict = {"benchmark": "feature_cache", "quick": args.quick}
        if not args.skip_goal:
            goal_train, goal_val = (240, 60) if args.quick else (1437, 360)
            data = digits_data.write_digits(scratch / "digits", goal_train, goal_val)
            report["goal_case"] = goal_case(runner, args, data)
            report["goal_case"]["job"]["data"] = (
                f"digits ({goal_train:,} train / {goal_val} val, 10 classes)"
            )
        if not args.skip_grid:
            grid_train, grid_val = (80, 20) if args.quick else (200, 50)
            data = digits_data.write_digits(scratch / "grid", grid_train, grid_val)
            report["grid_data"] = f"digits ({grid_train} train / {grid_val} val, 10 classes)"
            report["grid"] = grid(runner, args, data)
        report["bench_seconds"] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _common.emit(report)


if __name__ == "__main__":
    main()
