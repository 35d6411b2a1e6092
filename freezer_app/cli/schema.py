"""`freezer-app schema`: the JSON Schema of project.json, or its table of keys (Markdown)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from freezer_app.cli.common import EXIT_OK


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of project.json (or --markdown: a table of its keys)",
    )
    p.add_argument("--markdown", action="store_true", help="a Markdown table instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freezer_app.core.project import project_reference, project_schema

    if args.markdown:
        print(project_reference(), end="")
    else:
        print(json.dumps(project_schema(), indent=2))
    return EXIT_OK
