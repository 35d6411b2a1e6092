"""`freezer-app models [QUERY]`: list or search the model catalog."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from freezer_app.cli.common import EXIT_FAILED, EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser("models", help="list or search the model catalog")
    p.add_argument("query", nargs="?", help="substring or glob (e.g. resnet, 'vit_*_224')")
    p.add_argument("--source", choices=["timm", "torchvision"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
