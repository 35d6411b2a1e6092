"""`freezer-app lr-find`: the learning-rate range test of a project (core/lr_find.py).

The project comes from flags or a project file exactly as for `train` (the same generated
setting flags), and nothing is written: the suggestion is printed, to pass as `--lr`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from freezer_app.cli.common import (
    EXIT_OK,
    add_plan_options,
    add_trust_option,
    code_trust,
    err,
)
from freezer_app.cli.train import add_lr_mult_option


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_parser(sub: Any) -> None:
    from freezer_app.core import lr_find, settings
    from freezer_app.core.project import Project

    p = sub.add_parser(
        "lr-find",
        help="suggest a learning rate (a short range test)",
        description="Train a few steps with the learning rate growing exponentially from "
        "--start-lr to --end-lr, with the project's model, data, freeze plan and optimizer "
        "groups, and suggest a rate from the loss curve (fastai's valley; the steepest descent "
        "is shown too). The project is given as for `train` (MODEL and DATA flags, or a "
        "PROJECT.json); no weights or files are changed.",
    )
    p.add_argument(
        "project", nargs="?", metavar="PROJECT.json", help="a project file (e.g. a run's)"
    )
    settings.add_flags(p, Project, exclude=("plan",))
    add_plan_options(p)
    add_lr_mult_option(p)
    add_trust_option(p)
    p.add_argument(
        "--steps",
        type=int,
        default=lr_find.STEPS,
        metavar="N",
        help=f"steps of the test, looping over the data as needed (default {lr_find.STEPS})",
    )
    p.add_argument(
        "--start-lr",
        type=_positive_float,
        default=lr_find.START_LR,
        metavar="LR",
        help=f"the first learning rate (default {lr_find.START_LR:g})",
    )
    p.add_argument(
        "--end-lr",
        type=_positive_float,
        default=lr_find.END_LR,
        metavar="LR",
        help=f"the last learning rate (default {lr_find.END_LR:g})",
    )
    p.add_argument(
        "--json", action="store_true", help="print the suggestions and the curve as JSON"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, unfreeze_schedule=None, resume=None)


def _project(args: argparse.Namespace) -> tuple[Any, Any]:
    """The project, as `train` reads it (flags over a project file), and the code trust."""
    from freezer_app.cli.train import project_from_args
    from freezer_app.core import settings
    from freezer_app.core.catalog import check_code
    from freezer_app.core.project import Project

    project = project_from_args(args)
    project.validate()
    named_by_file = args.project and "model" not in settings.given_flags(args, Project)
    trust = code_trust(args, args.project) if named_by_file else code_trust(args)
    check_code(project.model, trust)
    return project, trust


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from freezer_app.core.data import scan_folder
    from freezer_app.core.lr_find import check_range, find_lr

    check_range(args.steps, args.start_lr, args.end_lr)
    project, trust = _project(args)
    report = scan_folder(project.data.path, project.data.val_split, project.train.seed)
    err(report.summary())
    bar = None if args.quiet else tqdm(total=args.steps, desc="lr-find", file=sys.stderr)

    def on_point(point: Any) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(lr=f"{point.lr:.2e}", loss=f"{point.smoothed:.4f}", refresh=False)

    try:
        result = find_lr(
            project,
            steps=args.steps,
            start_lr=args.start_lr,
            end_lr=args.end_lr,
            on_point=on_point,
            report=report,
            trust=trust,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(summary(result, args.project))
    return EXIT_OK


def summary(result: Any, project_file: str | None = None) -> str:
    """A short table of the curve (about ten rows) and the suggestions."""
    points = result.points
    lines = [
        f"range test: {len(points)} of {result.steps} steps, {result.start_lr:g} to "
        f"{result.end_lr:g} ({result.stopped})",
        "",
        f"  {'lr':>9}  {'loss':>8}  {'smoothed':>8}",
    ]
    every = max(1, len(points) // 10)
    shown = points[::every]
    if points and shown[-1] is not points[-1]:
        shown.append(points[-1])
    for p in shown:
        lines.append(f"  {p.lr:9.2e}  {p.loss:8.4f}  {p.smoothed:8.4f}")
    lines.append("")
    if result.suggested_lr is None:
        lines.append("too few steps to suggest a learning rate: try more --steps")
        return "\n".join(lines)
    lines.append(f"steepest descent: {result.steepest_lr:.2e}")
    lines.append(f"valley:           {result.valley_lr:.2e}")
    lines.append(f"suggested:        {result.suggested_lr:.2e}  (the valley)")
    what = project_file or "..."
    lines.append(f"train with it: freezer-app train {what} --lr {result.suggested_lr:.2g}")
    return "\n".join(lines)
