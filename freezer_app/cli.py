"""`freezer-app`: the command line. With no arguments it opens the desktop app."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from freezer_app import __version__
from freezer_app.core.errors import FreezerError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _err(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------------- shared options
def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-classes", type=int, metavar="N", help="size of the classifier head")
    w = p.add_mutually_exclusive_group()
    w.add_argument(
        "--pretrained", action="store_true", help="start from the library's pretrained weights"
    )
    w.add_argument("--weights", metavar="FILE", help="start from a local .safetensors/.pth file")


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", metavar="FILE", help="read the freeze plan from a JSON file")
    p.add_argument(
        "--preset", metavar="P", help="train-all, head-only, freeze-stages:K, train-last:K"
    )
    p.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="SEL",
        help="freeze a module path, glob or type:CLASS (repeatable)",
    )
    p.add_argument(
        "--unfreeze",
        action="append",
        default=[],
        metavar="SEL",
        help="unfreeze a selector after the freezes (repeatable)",
    )
    p.add_argument(
        "--bn-policy",
        choices=["frozen", "update"],
        help="frozen norm layers keep (frozen) or update their running statistics",
    )


def plan_from_args(args: argparse.Namespace, base: Any = None) -> Any:
    from freezer_app.core.freeze import FreezePlan

    plan = base or FreezePlan()
    if getattr(args, "plan", None):
        try:
            plan = FreezePlan.from_json(Path(args.plan).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise FreezerError(
                f"Cannot read freeze plan {args.plan}: {e}", "Pass a JSON file written by Freezer."
            ) from None
    if args.preset:
        plan.preset = args.preset
    plan.freeze += args.freeze
    plan.unfreeze += args.unfreeze
    if args.bn_policy:
        plan.bn_policy = args.bn_policy
    return plan


# ---------------------------------------------------------------------- inspect
def cmd_inspect(args: argparse.Namespace) -> int:
    from freezer_app.core.catalog import load_model
    from freezer_app.core.freeze import apply_mask, available_presets, plan_code, resolve
    from freezer_app.core.tree import ModelTree
    from freezer_app.textview import render_presets, render_tree, summary_line, use_colour

    # A meta-device preview is instant for any size; a weights file is still checked against
    # it. Only --pretrained builds for real, since that is what checks the download.
    loaded = load_model(
        args.model,
        num_classes=args.num_classes,
        pretrained=args.pretrained,
        weights=args.weights,
        meta=not args.pretrained,
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
    return EXIT_OK


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


# ---------------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
    from freezer_app.core.catalog import search_models

    names = search_models(args.query or "")
    if args.source:
        names = [n for n in names if n.startswith(args.source + ":")]
    if args.json:
        print(json.dumps(names, indent=2))
    else:
        for n in names:
            print(n)
        print(f"{len(names)} models", file=sys.stderr)
    return EXIT_OK if names else EXIT_FAILED


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freezer-app",
        description="Freeze layers of image models point-and-click, fine-tune them on your images, "
        "and prove that frozen layers never moved. With no arguments, opens the desktop app.",
    )
    parser.add_argument("--version", action="version", version=f"freezer-app {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="show a model's module tree and what a freeze plan trains")
    p.add_argument(
        "model",
        metavar="MODEL",
        help="timm:NAME, torchvision:NAME, FILE.py:CALLABLE, a bundle/run folder or weights file",
    )
    _add_model_options(p)
    _add_plan_options(p)
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
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("models", help="list or search the model catalog")
    p.add_argument("query", nargs="?", help="substring or glob (e.g. resnet, 'vit_*_224')")
    p.add_argument("--source", choices=["timm", "torchvision"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["gui"]
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except FreezerError as e:
        _err(f"error: {e.message}")
        if e.hint:
            _err(e.hint)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
