"""`freezer-app demo-data DIR`: write the small generated dataset (circles, squares, stripes)."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path
from typing import Any

from freezer_app.cli.common import EXIT_OK, count_int, positive_int
from freezer_app.core.errors import FreezerError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo-data", help="write a small generated image dataset")
    p.add_argument("dir", metavar="DIR")
    p.add_argument(
        "--per-class", type=positive_int, default=40, metavar="N", help="training images per class"
    )
    p.add_argument(
        "--val-per-class",
        type=count_int,
        default=10,
        metavar="N",
        help="validation images per class (0: no val/ images)",
    )
    p.add_argument("--size", type=positive_int, default=64, metavar="PX", help="image side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freezer_app.core.data import DEMO_CLASSES, write_demo_data
    from freezer_app.core.files import reason_for

    root = Path(args.dir)
    if root.exists() and not root.is_dir():
        raise _cannot_write(root, "it is a file, not a folder")
    if root.exists() and any(root.iterdir()) and not args.force:
        raise FreezerError(
            f"{root} is not empty.", "Pick an empty folder or pass --force to add to it."
        )
    try:
        write_demo_data(
            root,
            per_class=args.per_class,
            val_per_class=args.val_per_class,
            size=args.size,
            seed=args.seed,
        )
    except OSError as e:
        # A read-only disk, no permission, a full disk, a file where a folder should be.
        reason = (
            "part of that path is a file, not a folder"
            if e.errno == errno.ENOTDIR
            else reason_for(e.errno, e.strerror or str(e))
        )
        raise _cannot_write(root, reason) from None
    n = len(DEMO_CLASSES)
    print(
        f"wrote {n * args.per_class} training and {n * args.val_per_class} validation images "
        f"({', '.join(DEMO_CLASSES)}) to {root}"
    )
    return EXIT_OK


def _cannot_write(root: Path, reason: str) -> FreezerError:
    return FreezerError(
        f"Cannot write the demo images to {root}: {reason}.",
        "Pick a folder you can write to (it is created if missing), e.g. "
        "freezer-app demo-data ./demo",
    )
