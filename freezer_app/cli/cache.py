"""`freezer-app cache list|clear`: the feature caches training keeps on disk (the output of a
model's frozen layers per image, reused by the next run on the same data)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from freezer_app.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, err

ID_CHARS = 12  # of a cache's folder name, as `cache list` shows it


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cache",
        help="list or clear the feature caches (frozen layers' outputs kept between runs)",
        description="Training keeps the output of a model's frozen layers for each image "
        "(train.feature_cache), so a later run on the same data skips them. What does not fit "
        "in memory, and what is kept for the next run, is written under the user cache folder "
        "(or $FREEZER_CACHE_DIR). These commands show and remove it; a removed cache is "
        "computed again by the next run that needs it.",
    )
    p.set_defaults(func=lambda args: _help(p))
    commands = p.add_subparsers(dest="cache_command", metavar="COMMAND")

    ls = commands.add_parser(
        "list",
        help="the caches on disk: model, cut, images, size and when last used",
        description="List the feature caches, most recently used first.",
    )
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(func=run_list)

    clear = commands.add_parser(
        "clear",
        help="remove the caches with these ids, or all of them",
        description="Remove feature caches: those named, or all of them with no ID. An unknown "
        "or ambiguous ID removes nothing.",
    )
    clear.add_argument(
        "ids",
        nargs="*",
        metavar="ID",
        help="a cache's id as `freezer-app cache list` shows it (or any unique start of it)",
    )
    clear.add_argument("--json", action="store_true", help="print one JSON object")
    clear.set_defaults(func=run_clear)


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return EXIT_USAGE


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds > 0 else "-"


def _row(entry: Any) -> list[str]:
    from freezer_app.core.text import byte_size, printable

    key = entry.key
    size = key.get("image_size")
    return [
        printable(entry.folder.name[:ID_CHARS]),
        printable(key.get("architecture") or ("-" if key else "(incomplete)")),
        printable(key.get("where") or key.get("cut") or "-"),
        f"{size} px" if size else "-",
        f"{entry.images:,}",
        byte_size(entry.bytes),
        _when(entry.used),
    ]


def _table(rows: list[list[str]]) -> list[str]:
    header = ["id", "architecture", "cut", "image size", "images", "on disk", "last used"]
    right = {3, 4, 5}  # numbers
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *rows]
    ]


def _count(n: int) -> str:
    return f"{n} feature cache" + ("" if n == 1 else "s")


def run_list(args: argparse.Namespace) -> int:
    from freezer_app.core.feature_store import cache_root, list_caches
    from freezer_app.core.text import byte_size, printable

    root = cache_root()
    entries = list_caches(root)
    total = sum(e.bytes for e in entries)
    if args.json:
        print(
            json.dumps(
                {
                    "folder": str(root),
                    "caches": [e.to_dict() for e in entries],
                    "total_bytes": total,
                },
                indent=2,
            )
        )
        return EXIT_OK
    if not entries:
        print(f"no feature caches in {printable(root)}")
        return EXIT_OK
    for line in _table([_row(e) for e in entries]):
        print(line)
    images = sum(e.images for e in entries)
    print(f"total: {_count(len(entries))}, {images:,} images, {byte_size(total)}")
    print(f"folder: {printable(root)}")
    return EXIT_OK


def run_clear(args: argparse.Namespace) -> int:
    from freezer_app.core.feature_store import cache_root, clear_caches, list_caches
    from freezer_app.core.text import byte_size, printable

    root = cache_root()
    try:
        removed = clear_caches(args.ids or None, root)
    except KeyError as e:
        wanted = str(e.args[0])
        matches = [x for x in list_caches(root) if wanted and x.folder.name.startswith(wanted)]
        if len(matches) > 1:
            err(
                f"error: the id {printable(wanted)!r} matches {len(matches)} feature caches "
                f"({', '.join(printable(x.folder.name[:ID_CHARS]) for x in matches)}); "
                "nothing was removed."
            )
            err("Give more of the id: see `freezer-app cache list`.")
        else:
            err(
                f"error: no feature cache has the id {printable(wanted)!r} in "
                f"{printable(root)}; nothing was removed."
            )
            err("See `freezer-app cache list` for the ids.")
        return EXIT_USAGE
    # rmtree goes on past what it cannot remove (a file in use, no permission): say so.
    left = [e for e in removed if e.folder.exists()]
    gone = [e for e in removed if e not in left]
    freed = sum(e.bytes for e in gone)
    if args.json:
        print(
            json.dumps(
                {
                    "folder": str(root),
                    "removed": [e.to_dict() for e in gone],
                    "not_removed": [e.to_dict() for e in left],
                    "freed_bytes": freed,
                },
                indent=2,
            )
        )
    elif not removed:
        print(f"no feature caches in {printable(root)}")
    else:
        for line in _table([_row(e) for e in gone])[1:] if gone else []:
            print(f"removed {line}")
        print(f"removed {_count(len(gone))}, freed {byte_size(freed)} in {printable(root)}")
    for e in left:
        err(f"error: could not remove all of {printable(e.folder)} (in use, or no permission)")
    return EXIT_FAILED if left else EXIT_OK
