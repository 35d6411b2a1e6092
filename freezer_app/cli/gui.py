"""`freezer-app gui [PROJECT | --demo]`: the desktop app (the default with no arguments);
`--screenshot FILE` renders the window offscreen, after training through the Train action.
`launch` is the `freezer-app-gui` script (no console window on Windows) that the desktop entry
runs with the file it was given."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from freezer_app.core.errors import FreezerError

TABS = ("loss", "gradients", "updates", "frozen", "evaluate", "log", "runs")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("gui", help="open the desktop app (the default with no arguments)")
    p.add_argument("project", nargs="?", metavar="PROJECT.json", help="open this project")
    p.add_argument("--demo", action="store_true", help="open a demo project ready to train")
    p.add_argument("--screenshot", metavar="FILE", help="render the window to a PNG and exit")
    p.add_argument(
        "--train-steps",
        type=int,
        metavar="N",
        help="with --screenshot: press Train, stop after N steps, then render",
    )
    p.add_argument("--tab", choices=TABS, help="with --screenshot: show this plot tab")
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="run a model's .py named by the project without asking (as train --trust-code)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.train_steps or args.tab) and not args.screenshot:
        raise FreezerError(
            "--train-steps and --tab only apply with --screenshot.", "Add --screenshot FILE.png."
        )
    if args.project and args.demo:
        raise FreezerError(
            "Open either a project or the demo, not both.", "Drop PROJECT or --demo."
        )
    if args.screenshot:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from freezer_app.gui.app import run_gui
    except ImportError as e:
        raise FreezerError(
            f"The desktop app cannot start: {e}.",
            "Reinstall with `make run` (PySide6 and pyqtgraph are needed).",
        ) from None
    return run_gui(
        args.project,
        demo=args.demo,
        screenshot=args.screenshot,
        train_steps=args.train_steps,
        tab=args.tab,
        trust_code=args.trust_code,
    )


def launch(argv: list[str] | None = None) -> int:
    """`freezer-app-gui [PROJECT.json] [gui options]`: the window, as `freezer-app gui`."""
    from freezer_app.cli import main

    argv = sys.argv[1:] if argv is None else argv
    return main(["gui", *argv])
