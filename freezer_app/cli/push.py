"""`freezer-app push BUNDLE REPO_ID [--private]`: publish an exported bundle on the Hub."""

from __future__ import annotations

import argparse
import json
from typing import Any

from freezer_app.cli.common import EXIT_OK, err


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "push",
        help="publish an exported bundle on the Hugging Face Hub",
        description="Upload a bundle (freezer-app export --format bundle) to the Hugging Face "
        "Hub model repository REPO_ID, creating it if needed; timm then loads it with "
        'timm.create_model("hf-hub:REPO_ID", pretrained=True). Uses your saved Hub login '
        "(hf auth login) or HF_TOKEN.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="the bundle folder")
    p.add_argument("repo_id", metavar="REPO_ID", help="USER/NAME or ORGANISATION/NAME")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freezer_app.core.export.push import push_bundle

    url = push_bundle(
        args.bundle,
        args.repo_id,
        private=args.private,
        starting=lambda: err(f"uploading {args.bundle} to {args.repo_id}..."),
    )
    load = f'timm.create_model("hf-hub:{args.repo_id}", pretrained=True)'
    if args.json:
        print(json.dumps({"url": url, "repo_id": args.repo_id, "load": load}))
    else:
        print(f"pushed to {url}\nload it with {load}")
    return EXIT_OK
