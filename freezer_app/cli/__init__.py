"""`freezer-app`: the command line, one module per command. With no arguments it opens the
desktop app. Building the parser imports neither torch nor Qt, so `--help` is instant."""

from __future__ import annotations

import argparse
import sys

from freezer_app import __version__
from freezer_app.cli import (
    cache,
    demo_data,
    evaluate,
    export,
    gui,
    inspect,
    models,
    push,
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
    demo_data.add_parser(sub)
    export.add_parser(sub)
    push.add_parser(sub)
    evaluate.add_parsers(sub)
    models.add_parser(sub)
    cache.add_parser(sub)
    gui.add_parser(sub)
    schema.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["gui"]
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
