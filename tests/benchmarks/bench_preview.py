"""Architecture preview (meta device) and module-tree build time for very large models.

The issue asks for a 1B-parameter model's tree "in well under a second"; the baseline is
building the same model for real on the CPU (allocating and initialising its weights).
"""

from __future__ import annotations

import argparse
import time

import _common
import timm

from freezer_app.core.catalog import preview_model
from freezer_app.core.tree import ModelTree


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vit_giant_patch14_dinov2")
    parser.add_argument(
        "--baseline", action="store_true", help="also build the model for real (slow, ~5 GB)"
    )
    args = parser.parse_args()
    preview_model(f"timm:{args.model}")  # warm imports and timm's registry
    t0 = time.perf_counter()
    loaded = preview_model(f"timm:{args.model}")
    t1 = time.perf_counter()
    tree = ModelTree(loaded.module, args.model)
    t2 = time.perf_counter()
    result = {
        "benchmark": "preview",
        "model": args.model,
        "params": tree.total_params,
        "modules": len(tree.nodes),
        "preview_s": round(t1 - t0, 3),
        "tree_s": round(t2 - t1, 3),
        "total_s": round(t2 - t0, 3),
    }
    if args.baseline:
        t3 = time.perf_counter()
        timm.create_model(args.model)
        result["real_build_s"] = round(time.perf_counter() - t3, 3)
        result["speedup"] = round(result["real_build_s"] / result["total_s"], 1)
    _common.emit(result)


if __name__ == "__main__":
    main()
