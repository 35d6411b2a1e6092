"""`freezer-app inspect MODEL`: the module tree and what a freeze plan (and its timeline) trains."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from freezer_app.cli.common import (
    EXIT_OK,
    add_model_options,
    add_plan_options,
    add_trust_option,
    code_trust,
    plan_from_args,
)
from freezer_app.core.errors import FreezerError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show a model's module tree and what a freeze plan trains")
    p.add_argument(
        "model",
        metavar="MODEL",
        help="timm:NAME, torchvision:NAME, FILE.py:CALLABLE, a bundle/run folder or weights file",
    )
    add_model_options(p)
    add_trust_option(p)
    add_plan_options(p)
    p.add_argument(
        "--unfreeze-schedule",
        metavar="E:PRESET,...",
        help="gradual unfreezing to check against the model, e.g. 1:train-last:1,3:train-all",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument(
        "--code", action="store_true", help="print PyTorch code that reproduces the plan"
    )
    out.add_argument(
        "--list-presets", action="store_true", help="list the presets that apply to this model"
    )
    p.add_argument("--depth", type=int, metavar="D", help="show modules at most D levels deep")
    p.add_argument("--all", action="store_true", help="also show modules without parameters")
    p.add_argument("--params", action="store_true", help="also show each parameter")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freezer_app.core import timeline
    from freezer_app.core.catalog import load_model
    from freezer_app.core.freeze import apply_mask, available_presets, plan_code, resolve
    from freezer_app.core.tree import ModelTree
    from freezer_app.textview import render_presets, render_tree, summary_line, use_colour

    if args.depth is not None and args.depth < 0:
        raise FreezerError(f"--depth must be 0 or more (got {args.depth}).", "Use e.g. --depth 2.")

    # A meta-device preview is instant for any size; a weights file is still checked against
    # it. Only --pretrained builds for real, since that is what checks the download.
    loaded = load_model(
        args.model,
        num_classes=args.num_classes,
        pretrained=args.pretrained,
        weights=args.weights,
        meta=not args.pretrained,
        trust=code_trust(args),
    )
    label = str(loaded.spec) if not Path(args.model).exists() else args.model
    tree = ModelTree(loaded.module, label)
    if args.list_presets:
        presets = available_presets(tree)
        if args.json:
            print(json.dumps([p.__dict__ for p in presets], indent=2))
        else:
            print(render_presets(tree, presets))
        return EXIT_OK
    plan = plan_from_args(args)
    if args.unfreeze_schedule:
        plan.schedule = timeline.parse_schedule(args.unfreeze_schedule)
    masks = timeline.check(plan, tree)
    mask = resolve(plan, tree)
    applied = apply_mask(loaded.module, tree, mask, plan.bn_policy)
    if args.json:
        print(json.dumps(inspect_json(tree, loaded, plan, applied.frozen_norms), indent=2))
        return EXIT_OK
    if args.code:
        print(plan_code(tree, mask, plan), end="")
        return EXIT_OK
    print(
        f"{label}  ({type(loaded.module).__name__}, {loaded.num_classes} classes, {loaded.weights_note})"
    )
    print(f"plan: {plan.describe()}; BatchNorm: {plan.bn_policy}")
    print()
    print(
        render_tree(
            tree,
            depth=args.depth,
            show_all=args.all,
            show_params=args.params,
            colour=use_colour(sys.stdout),
        )
    )
    print()
    print(summary_line(tree))
    if applied.frozen_norms:
        kept = (
            "keep their running statistics (eval mode)" if plan.bn_policy == "frozen" else "update"
        )
        print(f"{len(applied.frozen_norms)} frozen norm layers {kept}")
    for line in timeline_lines(plan, tree, masks):
        print(line)
    return EXIT_OK


def timeline_lines(plan: Any, tree: Any, masks: dict) -> list[str]:
    """The schedule phases and edits with what each trains (and a warning for any that would
    train nothing: a run refuses those and keeps the plan in effect)."""
    lines = []
    items = [("schedule", i, f"after epoch {p.epoch}", p) for i, p in enumerate(plan.schedule)]
    items += [("edit", i, f"from step {e.step}", e) for i, e in enumerate(plan.edits)]
    for kind, i, when, item in items:
        mask = masks[(kind, i)]
        n = int(tree.numel[mask].sum())
        what = "; ".join(
            [item.preset]
            + (["freeze " + ", ".join(item.freeze)] if item.freeze else [])
            + (["unfreeze " + ", ".join(item.unfreeze)] if item.unfreeze else [])
        )
        note = "  (nothing would train: a run refuses it)" if n == 0 else ""
        lines.append(f"{kind} {when}: {what}: trainable {n:,} / {tree.total_params:,}{note}")
    return lines


def inspect_json(tree: Any, loaded: Any, plan: Any, frozen_norms: list[str]) -> dict[str, Any]:
    return {
        "model": tree.label,
        "architecture": type(loaded.module).__name__,
        "num_classes": loaded.num_classes,
        "weights": loaded.weights_note,
        "plan": plan.to_dict(),
        "total_params": tree.total_params,
        "trainable_params": tree.trainable_params,
        "frozen_params": tree.total_params - tree.trainable_params,
        "head": list(loaded.head_paths),
        "frozen_norms": frozen_norms,
        "requires_grad": tree.requires_grad(),
        "shared_params": {p.name: p.aliases for p in tree.params if p.aliases},
        "modules": [
            {
                "path": n.path,
                "type": n.type_name,
                "params": n.total,
                "trainable": tree.trainable_in(n),
                "state": tree.state_of(n).value,
            }
            for n in tree.nodes.values()
        ],
    }
