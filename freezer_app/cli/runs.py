"""`freezer-app runs [DIR] [--json]`: the runs in a folder side by side (model, freeze plan,
date, epochs, best validation accuracy, frozen check, status), as the window's Runs tab."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from freezer_app.cli.common import EXIT_OK, err
from freezer_app.core.errors import FreezerError

COLUMNS = ("RUN", "MODEL", "PLAN", "STARTED", "EPOCHS", "BEST ACC", "FROZEN CHECK", "STATUS")


def default_runs_dir() -> Path:
    """Where the window keeps the runs of an unsaved project (its one definition is the
    window's: importing it loads Qt, but no window opens)."""
    from freezer_app.gui.main_window import default_runs_dir as window_runs_dir

    return window_runs_dir()


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "runs",
        help="list runs side by side: model, freeze plan, epochs, best accuracy, status",
        description="List the run folders in DIR (or DIR itself, when it is a run folder), "
        "newest first: model, freeze plan, date, epochs done of planned, best validation "
        "accuracy, frozen check and status (running, finished, stopped, failed, crashed, "
        "or unreadable for a damaged folder). Without DIR: the runs of unsaved projects "
        "(~/.local/share/freezer/runs on Linux); a saved project keeps its runs in runs/ "
        "beside it.",
    )
    p.add_argument("dir", nargs="?", metavar="DIR", help="a runs folder or a run folder")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freezer_app.core.run_history import list_runs

    root = Path(args.dir).expanduser() if args.dir else default_runs_dir()
    if not root.is_dir():
        if args.dir is None and not root.exists():
            runs = []  # nothing trained yet
        else:
            raise FreezerError(
                f"{root} is not a folder." if root.exists() else f"{root} does not exist.",
                "Pass a runs folder (e.g. runs/ beside a saved project) or a run folder.",
            )
    else:
        runs = list_runs(root)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
        return EXIT_OK
    if not runs:
        err(f"no runs in {root}")
        return EXIT_OK
    rows = [
        (
            r.name,
            r.model,
            r.plan,
            r.started_text(),
            r.epochs_text() if r.readable else "",
            r.best_text(),
            r.frozen_check if r.readable else "",
            r.status + (f" ({r.detail})" if r.detail and r.status != "finished" else ""),
        )
        for r in runs
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    for row in (COLUMNS, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    err(f"{len(runs)} run{'s' if len(runs) != 1 else ''} in {root}")
    return EXIT_OK
