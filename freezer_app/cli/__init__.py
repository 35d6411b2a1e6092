"""`freezer-app`: the command line, one module per command. With no arguments it opens the
desktop app, and `freezer-app PROJECT.json` opens that project in it (as a file manager does
through the desktop entry). Building the parser imports neither torch nor Qt, so `--help` is
instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from freezer_app import __version__
from freezer_app.cli import (
    cache,
    demo_data,
    evaluate,
    export,
    gui,
    inspect,
    install_desktop,
    lr_find,
    models,
    push,
    runs,
    schema,
    train,
)
from freezer_app.cli.common import EXIT_OK, EXIT_USAGE, err
from freezer_app.core.errors import FreezerError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freezer-app",
        description="Freeze layers of image models point-and-click, fine-tune them on your images, "
        "and prove that frozen layers never moved. With no arguments, opens the desktop app.",
    )
    parser.add_argument("--version", action="version", version=f"freezer-app {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    inspect.add_parser(sub)
    train.add_parser(sub)
    lr_find.add_parser(sub)
    demo_data.add_parser(sub)
    export.add_parser(sub)
    push.add_parser(sub)
    runs.add_parser(sub)
    evaluate.add_parsers(sub)
    models.add_parser(sub)
    cache.add_parser(sub)
    gui.add_parser(sub)
    schema.add_parser(sub)
    install_desktop.add_parser(sub)
    return parser


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    return {
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }


def opens_project(argv: list[str], commands: set[str]) -> bool:
    """True when the first argument is an existing `.json` file rather than a command: the
    window opens it, as `freezer-app gui PROJECT.json` would."""
    first = argv[0] if argv else ""
    if not first or first.startswith("-") or first in commands:
        return False
    return first.lower().endswith(".json") and Path(first).is_file()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or opens_project(argv, _commands(parser)):
        argv = ["gui", *argv]
    # `--ema PROJECT.json` is --ema alone, then the project (argparse would read the file name
    # as the decay).
    from freezer_app.core.project import Project
    from freezer_app.core.settings import fill_flags_alone

    argv = fill_flags_alone(argv, Project)
    args = parser.parse_args(argv)
    args.argv = list(argv)  # `train --nproc-per-node` hands the same command to its processes
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except FreezerError as e:
        err(f"error: {e.message}")
        if e.hint:
            err(e.hint)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK


__all__ = ["build_parser", "main"]
