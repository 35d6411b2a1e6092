"""`freezer-app demo-data DIR`: write the small generated dataset (circles, squares, stripes)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from freezer_app.cli.common import EXIT_OK
from freezer_app.core.errors import FreezerError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo-data", help="write a small generated image dataset")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--per-class", type=int, default=40, metavar="N")
    p.add_argument("--val-per-class", type=int, default=10, metavar="N")
    p.add_argument("--size", type=int, default=64, metavar="PX")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freezer_app.core.data import DEMO_CLASSES, write_demo_data

    root = Path(args.dir)
    if root.exists() and any(root.iterdir()) and not args.force:
        raise FreezerError(
            f"{root} is not empty.", "Pick an empty folder or pass --force to add to it."
        )
    write_demo_data(
        root,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        size=args.size,
        seed=args.seed,
    )
    n = len(DEMO_CLASSES)
    print(
        f"wrote {n * args.per_class} training and {n * args.val_per_class} validation images "
        f"({', '.join(DEMO_CLASSES)}) to {root}"
    )
    return EXIT_OK
