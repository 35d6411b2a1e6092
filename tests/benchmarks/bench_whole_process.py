"""Whole-process speed: `freezer-app train` against the plain PyTorch loop in bare_loop.py,
doing the same job, each as its own process, timed from start to exit (what a user waits for).

The job (defaults): timm resnet18 from scratch at 32 px on a digits-like folder of 1,437
training and 360 validation images in 10 classes (digits_data.py), conv1/bn1/layer1 frozen,
AdamW, batch 64, 3 epochs, one data-loader worker, on the CPU; Freezer with augmentation,
clipping, label smoothing, warmup and the cosine schedule off, as the bare loop has none.
Both validate after every epoch and save their final weights; Freezer also does what the bare
loop does not: the dataset check, telemetry, the frozen check, logs and resume checkpoints.

Runs alternate in pairs (bare then Freezer, Freezer then bare, ...) so a slow spell of the
machine hits both; the ratio of each pair is reported with its median and spread, and the
peak resident memory of each training process (and, on CUDA, peak allocated GPU memory).
`--fused-baseline` adds the bare loop with AdamW(fused=True), the kernel Freezer uses;
`--with-compile` adds Freezer runs with --compile.

    .venv/bin/python tests/benchmarks/bench_whole_process.py [--pairs 5] [--device cuda]
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

HERE = Path(__file__).resolve().parent


def timed(command: list[str]) -> dict:
    """Wall time, peak RSS (MB) of the process, and its last RESULT/JSON report."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{out[-2000:]}")
    report: dict = {}
    if "RESULT " in out:
        report = json.loads(out.rsplit("RESULT ", 1)[1].splitlines()[0])
    elif out.strip().startswith("{"):
        report = json.loads(out)
    return {
        "seconds": seconds,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "peak_device_mb": (report.get("peak_device_memory") or 0) / 2**20 or None,
    }


def summary(runs: list[dict]) -> dict:
    seconds = [r["seconds"] for r in runs]
    out = {
        "seconds_median": round(statistics.median(seconds), 2),
        "seconds": [round(s, 2) for s in seconds],
        "peak_rss_mb_median": round(statistics.median(r["peak_rss_mb"] for r in runs), 1),
    }
    device = [r["peak_device_mb"] for r in runs if r["peak_device_mb"]]
    if device:
        out["peak_device_mb_median"] = round(statistics.median(device), 1)
    return out


def ratios(ours: list[dict], base: list[dict]) -> dict:
    r = [a["seconds"] / b["seconds"] for a, b in zip(ours, base)]
    return {
        "median": round(statistics.median(r), 3),
        "min": round(min(r), 3),
        "max": round(max(r), 3),
        "pairs": [round(x, 3) for x in r],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--data", help="an image folder with train/ and val/ (default: digits)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--freeze", nargs="*", default=["conv1", "bn1", "layer1"])
    parser.add_argument("--fused-baseline", action="store_true")
    parser.add_argument("--with-compile", action="store_true")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="freezer-bench-"))
    data = Path(args.data) if args.data else digits_data.write_digits(scratch / "digits")
    python = sys.executable
    bare = [
        python,
        str(HERE / "bare_loop.py"),
        "--data",
        str(data),
        "--out",
        str(scratch / "bare.pt"),
        "--model",
        args.model,
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--workers",
        str(args.workers),
        "--device",
        args.device,
        "--freeze",
        *args.freeze,
    ]
    freezer = [
        python,
        "-m",
        "freezer_app",
        "train",
        "--model",
        f"timm:{args.model}",
        "--no-pretrained",
        "--data",
        str(data),
        "--image-size",
        str(args.image_size),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--workers",
        str(args.workers),
        "--device",
        args.device,
        *[a for name in args.freeze for a in ("--freeze", name)],
        "--augment",
        "none",
        "--no-grad-clip",
        "--label-smoothing",
        "0",
        "--schedule",
        "constant",
        "--warmup-epochs",
        "0",
        "--json",
    ]
    counter = iter(range(10**6))

    def run_freezer(extra: list[str] = ()) -> dict:
        out = scratch / f"run{next(counter)}"
        result = timed([*freezer, *extra, "--out", str(out)])
        shutil.rmtree(out, ignore_errors=True)
        return result

    variants = {"bare": lambda: timed(bare), "freezer": run_freezer}
    if args.fused_baseline:
        variants["bare_fused"] = lambda: timed([*bare, "--fused"])
    if args.with_compile:
        variants["freezer_compile"] = lambda: run_freezer(["--compile"])
    results: dict[str, list[dict]] = {name: [] for name in variants}
    timed(bare)  # warm the page cache and the imports once each
    run_freezer()
    names = list(variants)
    for pair in range(args.pairs):
        order = names if pair % 2 == 0 else names[::-1]
        for name in order:
            results[name].append(variants[name]())
    report = {
        "benchmark": "whole_process",
        "job": {
            "model": f"timm:{args.model}",
            "data": str(data) if args.data else "digits (1,437 train / 360 val, 10 classes)",
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "workers": args.workers,
            "device": args.device,
            "frozen": args.freeze,
        },
        "freezer_over_bare": ratios(results["freezer"], results["bare"]),
        **{name: summary(runs) for name, runs in results.items()},
    }
    if "bare_fused" in results:
        report["freezer_over_bare_fused"] = ratios(results["freezer"], results["bare_fused"])
    if "freezer_compile" in results:
        report["freezer_compile_over_bare"] = ratios(results["freezer_compile"], results["bare"])
    shutil.rmtree(scratch, ignore_errors=True)
    _common.emit(report)


if __name__ == "__main__":
    main()
