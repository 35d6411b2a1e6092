"""`freezer-app export RUN_DIR`: a bundle, pth, TorchScript, torch.export (pt2), ONNX or the
freeze plan as code."""

from __future__ import annotations

import argparse
import json
from typing import Any

from freezer_app.cli.common import EXIT_OK, add_trust_option, code_trust

# As in core.export (spelled out so that building the parser imports no torch; a test checks
# that they agree).
EXPORT_FORMATS = ("bundle", "pth", "torchscript", "pt2", "onnx", "triton", "code")
EXPORT_CHECKPOINTS = ("final", "best", "ema")


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model for timm, torchvision, TorchScript or ONNX users",
        description="Export the weights of a run (or a bundle / weights file). Nothing is "
        "overwritten without --force, and a failed export leaves no partial file.",
    )
    p.add_argument(
        "source", metavar="RUN_DIR", help="a run folder (or a bundle folder or weights file)"
    )
    p.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="bundle",
        help="bundle: safetensors + config.json for timm.create_model('local-dir:...') and "
        "torchvision (default); pth: a state_dict; torchscript; onnx; code: the freeze plan",
    )
    p.add_argument("--out", metavar="PATH", help="file or folder to write (RUN_DIR/export/...)")
    p.add_argument("--force", action="store_true", help="replace an existing PATH")
    p.add_argument(
        "--checkpoint",
        choices=EXPORT_CHECKPOINTS,
        default="final",
        help="a run's final weights, those of its best epoch, or its moving average of the "
        "weights (runs trained with --ema)",
    )
    add_trust_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from freezer_app.core.catalog import check_code
    from freezer_app.core.export import export

    # A run or bundle whose model is a .py runs it to export (and to check the export): only
    # with --trust-code. Allowed once, the same file is allowed for the rest of this process.
    check_code(args.source, code_trust(args))
    result = export(
        args.source, args.format, args.out, force=args.force, checkpoint=args.checkpoint
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return EXIT_OK
