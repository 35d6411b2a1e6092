"""`freezer-app eval MODEL --data DIR` and `freezer-app predict MODEL IMAGE...`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from freezer_app.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    add_model_options,
    add_trust_option,
    code_trust,
    count_int,
    err,
    positive_int,
)

MODEL_HELP = "a run or bundle folder, a weights file, timm:NAME, torchvision:NAME, FILE.py:CALLABLE"


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy, per-class precision/recall, confusion matrix and its most confused "
        "pairs on an image folder",
        description="Evaluate MODEL on DIR: its val/ folder if it has train/ and val/, otherwise "
        "all images (one sub-folder per class, named as the model's classes). A run evaluated "
        "on the folder it trained on scores only the images it held out.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    add_model_options(p)
    add_trust_option(p)
    p.add_argument("--data", required=True, metavar="DIR", help="image folder")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    p.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--workers", type=int, metavar="N", help="data loading processes")
    p.add_argument(
        "--worst", type=count_int, default=5, metavar="N", help="list the N worst images"
    )
    p.add_argument(
        "--confused",
        type=count_int,
        default=10,
        metavar="N",
        help="list the N most confused pairs of classes (true class, predicted class)",
    )
    p.add_argument(
        "--all-images",
        action="store_true",
        help="score every image, even when MODEL is a run that held some out for validation",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_eval)

    p = sub.add_parser("predict", help="classify images with a model")
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    add_model_options(p)
    add_trust_option(p)
    p.add_argument(
        "--top-k", type=positive_int, default=5, metavar="K", help="classes to show per image"
    )
    p.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(func=run_predict)


def _loaded(args: argparse.Namespace) -> Any:
    """The model to score with: its trained classifier, never a new random one (a
    --num-classes other than the weights' is refused; without it the weights' count is used)."""
    from freezer_app.core.catalog import load_model

    loaded = load_model(
        args.model,
        num_classes=args.num_classes,
        pretrained=args.pretrained,
        weights=args.weights,
        trust=code_trust(args),
        trained_head=True,
    )
    if loaded.weights_note == "randomly initialised":
        # A library name alone builds the architecture with random weights: say so, since
        # its scores would otherwise read as a real model's.
        err(
            f"warning: {args.model} has random weights (no trained weights were given): its "
            "scores mean nothing. Give a run folder or bundle, --weights FILE, or --pretrained."
        )
    return loaded


def run_eval(args: argparse.Namespace) -> int:
    from freezer_app.core.data import default_workers
    from freezer_app.core.evaluate import evaluate
    from freezer_app.core.run_folder import evaluation_split

    loaded = _loaded(args)
    workers = args.workers if args.workers is not None else default_workers()
    split, seed = evaluation_split(args.model, args.data) if not args.all_images else (None, 0)
    result = evaluate(
        loaded,
        args.data,
        batch_size=args.batch_size,
        device=args.device,
        workers=workers,
        val_split=split,
        seed=seed,
    )
    if split:
        result.notes.append(
            f"the run's own validation split ({split:g}, seed {seed}); --all-images scores every image"
        )
    result.model = f"{args.model} ({loaded.spec}, {loaded.weights_note})"
    if args.json:
        print(json.dumps(result.to_dict(worst=args.worst, most_confused=args.confused), indent=2))
    else:
        print(result.summary(worst=args.worst, most_confused=args.confused))
    return EXIT_OK


def run_predict(args: argparse.Namespace) -> int:
    from freezer_app.core.evaluate import predict
    from freezer_app.core.text import printable

    results = predict(_loaded(args), args.images, top_k=args.top_k, device=args.device)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.error:
                continue
            best = ", ".join(f"{c.label} {c.probability:.3f}" for c in r.top)
            print(printable(f"{r.path}: {best}"))
    for r in results:
        if r.error:
            err(printable(f"error: {r.path}: {r.error}"))
    return EXIT_FAILED if any(r.error for r in results) else EXIT_OK
