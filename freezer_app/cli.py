"""`freezer-app`: the command line. With no arguments it opens the desktop app."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from freezer_app import __version__
from freezer_app.core.errors import FreezerError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _err(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------------- shared options
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--num-classes", type=_positive_int, metavar="N", help="size of the classifier head"
    )
    w = p.add_mutually_exclusive_group()
    w.add_argument(
        "--pretrained", action="store_true", help="start from the library's pretrained weights"
    )
    w.add_argument("--weights", metavar="FILE", help="start from a local .safetensors/.pth file")


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", metavar="FILE", help="read the freeze plan from a JSON file")
    p.add_argument(
        "--preset", metavar="P", help="train-all, head-only, freeze-stages:K, train-last:K"
    )
    p.add_argument(
        "--freeze",
        action="append",
        default=[],
        metavar="SEL",
        help="freeze a module path, glob or type:CLASS (repeatable)",
    )
    p.add_argument(
        "--unfreeze",
        action="append",
        default=[],
        metavar="SEL",
        help="unfreeze a selector after the freezes (repeatable)",
    )
    p.add_argument(
        "--bn-policy",
        choices=["frozen", "update"],
        help="frozen norm layers keep (frozen) or update their running statistics",
    )


def plan_from_args(args: argparse.Namespace, base: Any = None) -> Any:
    from freezer_app.core.freeze import FreezePlan

    plan = base or FreezePlan()
    if getattr(args, "plan", None):
        try:
            plan = FreezePlan.from_json(Path(args.plan).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise FreezerError(
                f"Cannot read freeze plan {args.plan}: {e}", "Pass a JSON file written by Freezer."
            ) from None
    if args.preset:
        plan.preset = args.preset
    plan.freeze += args.freeze
    plan.unfreeze += args.unfreeze
    if args.bn_policy:
        plan.bn_policy = args.bn_policy
    return plan


# ---------------------------------------------------------------------- inspect
def cmd_inspect(args: argparse.Namespace) -> int:
    from freezer_app.core.catalog import load_model
    from freezer_app.core.freeze import apply_mask, available_presets, plan_code, resolve
    from freezer_app.core.tree import ModelTree
    from freezer_app.textview import render_presets, render_tree, summary_line, use_colour

    if args.depth is not None and args.depth < 0:
        raise FreezerError(f"--depth must be 0 or more (got {args.depth}).", "Use e.g. --depth 2.")

    # A meta-device preview is instant for any size; a weights file is still checked against
    # it. Only --pretrained builds for real, since that is what checks the download.
    loaded = load_model(
        args.model,
        num_classes=args.num_classes,
        pretrained=args.pretrained,
        weights=args.weights,
        meta=not args.pretrained,
    )
    label = str(loaded.spec) if not Path(args.model).exists() else args.model
    tree = ModelTree(loaded.module, label)
    if args.list_presets:
        presets = available_presets(tree)
        if args.json:
            print(json.dumps([p.__dict__ for p in presets], indent=2))
        else:
            print(render_presets(tree, presets))
        return EXIT_OK
    plan = plan_from_args(args)
    mask = resolve(plan, tree)
    applied = apply_mask(loaded.module, tree, mask, plan.bn_policy)
    if args.json:
        print(json.dumps(inspect_json(tree, loaded, plan, applied.frozen_norms), indent=2))
        return EXIT_OK
    if args.code:
        print(plan_code(tree, mask, plan), end="")
        return EXIT_OK
    print(
        f"{label}  ({type(loaded.module).__name__}, {loaded.num_classes} classes, {loaded.weights_note})"
    )
    print(f"plan: {plan.describe()}; BatchNorm: {plan.bn_policy}")
    print()
    print(
        render_tree(
            tree,
            depth=args.depth,
            show_all=args.all,
            show_params=args.params,
            colour=use_colour(sys.stdout),
        )
    )
    print()
    print(summary_line(tree))
    if applied.frozen_norms:
        kept = (
            "keep their running statistics (eval mode)" if plan.bn_policy == "frozen" else "update"
        )
        print(f"{len(applied.frozen_norms)} frozen norm layers {kept}")
    return EXIT_OK


def inspect_json(tree: Any, loaded: Any, plan: Any, frozen_norms: list[str]) -> dict[str, Any]:
    return {
        "model": tree.label,
        "architecture": type(loaded.module).__name__,
        "num_classes": loaded.num_classes,
        "weights": loaded.weights_note,
        "plan": plan.to_dict(),
        "total_params": tree.total_params,
        "trainable_params": tree.trainable_params,
        "frozen_params": tree.total_params - tree.trainable_params,
        "head": list(loaded.head_paths),
        "frozen_norms": frozen_norms,
        "requires_grad": tree.requires_grad(),
        "shared_params": {p.name: p.aliases for p in tree.params if p.aliases},
        "modules": [
            {
                "path": n.path,
                "type": n.type_name,
                "params": n.total,
                "trainable": tree.trainable_in(n),
                "state": tree.state_of(n).value,
            }
            for n in tree.nodes.values()
        ],
    }


# ---------------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> int:
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


# ---------------------------------------------------------------------- train
_TRAIN_FLAGS = {
    # flag dest: (section, field)
    "val_split": ("data", "val_split"),
    "image_size": ("data", "image_size"),
    "augment": ("data", "augmentation"),
    "workers": ("data", "workers"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "optimizer": ("train", "optimizer"),
    "weight_decay": ("train", "weight_decay"),
    "schedule": ("train", "schedule"),
    "warmup_epochs": ("train", "warmup_epochs"),
    "grad_clip": ("train", "grad_clip"),
    "head_lr_mult": ("train", "head_lr_mult"),
    "layer_decay": ("train", "layer_decay"),
    "label_smoothing": ("train", "label_smoothing"),
    "early_stop": ("train", "early_stop_patience"),
    "device": ("train", "device"),
    "amp": ("train", "amp"),
    "seed": ("train", "seed"),
    "telemetry_every": ("train", "telemetry_every"),
    "max_steps": ("train", "max_steps"),
}


def parse_schedule(text: str) -> list[Any]:
    """`1:train-last:1,3:train-all` -> phases: after 1 epoch train-last:1, after 3 train-all."""
    from freezer_app.core.freeze import Phase

    phases = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        epoch, _, preset = part.partition(":")
        if not epoch.strip().isdigit() or not preset:
            raise FreezerError(
                f"Bad schedule entry {part!r}.",
                "Write EPOCHS:PRESET pairs, e.g. --unfreeze-schedule 1:train-last:1,3:train-all "
                "(after 1 epoch train the last stage too, after 3 train everything).",
            )
        phases.append(Phase(epoch=int(epoch), preset=preset.strip()))
    return phases


def project_from_args(args: argparse.Namespace) -> Any:
    from freezer_app.core.project import Project

    if args.project:
        project = Project.load(args.project)
    elif args.resume:
        project = Project.load(Path(args.resume) / "project.json")
    else:
        if not args.model or not args.data:
            raise FreezerError(
                "Say what to train: --model MODEL --data DIR (or a PROJECT.json).",
                "Example: freezer-app train --model timm:resnet18 --data ./images --out runs/first",
            )
        project = Project()
    if args.model:
        from freezer_app.core.project import absolute_model

        # A run folder's project.json must work from any directory.
        project.model = absolute_model(args.model, Path.cwd())
    if args.data:
        project.data.path = str(Path(args.data).expanduser().resolve())
    if args.pretrained:
        project.pretrained, project.weights = True, None
    if args.weights:
        project.weights, project.pretrained = str(Path(args.weights).expanduser().resolve()), False
    for dest, (section, name) in _TRAIN_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            setattr(getattr(project, section), name, value)
    if args.no_grad_clip:
        project.train.grad_clip = None
    project.plan = plan_from_args(args, project.plan)
    if args.unfreeze_schedule:
        project.plan.schedule = parse_schedule(args.unfreeze_schedule)
    return project


def _default_out(project: Any) -> Path:
    import time

    stem = project.name or project.model.split(":")[-1].split("/")[-1].replace(".py", "")
    return Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


class _Progress:
    """A per-epoch progress bar on stderr, and the run's log lines."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.steps_per_epoch = 0
        self.epochs = 0

    def __call__(self, event: Any) -> None:
        from tqdm import tqdm

        from freezer_app.core import events as ev

        if isinstance(event, ev.RunStarted):
            self.steps_per_epoch, self.epochs = event.steps_per_epoch, event.epochs
            _err(
                f"training {event.model} on {event.device} ({event.precision}): "
                f"{event.trainable_params:,} of {event.total_params:,} parameters train, "
                f"{len(event.classes)} classes, {event.steps_per_epoch} steps per epoch"
            )
            _err(f"run folder: {event.run_dir}")
        elif isinstance(event, ev.StepEvent) and not self.quiet:
            if self.bar is None:
                done = (event.step - 1) % self.steps_per_epoch
                self.bar = tqdm(
                    total=self.steps_per_epoch,
                    initial=done,
                    desc=f"epoch {event.epoch}/{self.epochs}",
                    unit="step",
                    file=sys.stderr,
                    leave=True,
                    dynamic_ncols=True,
                )
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{event.loss:.4f}", img_s=f"{event.images_per_s:.0f}", refresh=False
            )
        elif isinstance(event, ev.EpochEvent):
            self._close()
            val = (
                f"val_loss {event.val_loss:.4f}  val_acc {event.val_acc:.3f}"
                if event.val_acc is not None
                else "no validation images"
            )
            best = "  (best)" if event.is_best else ""
            _err(
                f"epoch {event.epoch}: train_loss {event.train_loss:.4f}  {val}  "
                f"{event.images_per_s:.0f} img/s{best}"
            )
        elif isinstance(event, ev.FrozenCheckEvent):
            _err(f"  frozen check: {event.check.summary()}")
        elif isinstance(event, ev.LogEvent):
            self._close()
            _err(("warning: " if event.level == "warning" else "") + event.message)

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_train(args: argparse.Namespace) -> int:
    import signal

    from freezer_app.core.data import scan_folder
    from freezer_app.core.events import RunControl
    from freezer_app.core.train import Trainer

    project = project_from_args(args)
    project.validate()
    out = (
        Path(args.resume) if args.resume else Path(args.out) if args.out else _default_out(project)
    )
    report = scan_folder(project.data.path, project.data.val_split, project.train.seed)
    _err(report.summary())
    control = RunControl()
    progress = _Progress(quiet=args.quiet)

    def on_sigint(signum: int, frame: Any) -> None:
        if control.stop_requested:
            raise KeyboardInterrupt
        progress._close()
        _err("stopping after this step and saving a checkpoint (Ctrl-C again to abort)")
        control.stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = Trainer(
            project,
            out,
            on_event=progress,
            control=control,
            resume=bool(args.resume),
            report=report,
        ).run()
    finally:
        signal.signal(signal.SIGINT, previous)
        progress._close()
    if args.json:
        print(json.dumps(result.__dict__, indent=2))
    else:
        print(_summary(result))
    if result.reason == "error":
        _err(f"error: {result.message}")
        if result.hint:
            _err(result.hint)
        return EXIT_FAILED
    if result.frozen_check_passed is False:
        return EXIT_FAILED
    return (
        130 if result.reason == "stopped" else EXIT_OK
    )  # 130: interrupted, as a shell reports Ctrl-C


def _summary(r: Any) -> str:
    lines = [
        f"{r.reason} after {r.epochs_completed} epoch(s), {r.steps} steps in {r.seconds:.1f} s"
    ]
    if r.best_val_acc is not None:
        lines.append(f"best val_acc {r.best_val_acc:.4f} (epoch {r.best_epoch})")
    lines.append(f"frozen check: {r.frozen_check_summary}")
    lines.append(f"run folder: {r.run_dir}")
    return "\n".join(lines)


def cmd_demo_data(args: argparse.Namespace) -> int:
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


# ---------------------------------------------------------------------- gui
def cmd_gui(args: argparse.Namespace) -> int:
    if (args.train_steps or args.tab) and not args.screenshot:
        raise FreezerError(
            "--train-steps and --tab only apply with --screenshot.", "Add --screenshot FILE.png."
        )
    if args.project and args.demo:
        raise FreezerError(
            "Open either a project or the demo, not both.", "Drop PROJECT or --demo."
        )
    if args.screenshot:
        import os

        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from freezer_app.gui.app import run_gui
    except ImportError as e:
        raise FreezerError(
            f"The desktop app cannot start: {e}.",
            "Reinstall with `make run` (PySide6 and pyqtgraph are needed).",
        ) from None
    return run_gui(
        args.project,
        demo=args.demo,
        screenshot=args.screenshot,
        train_steps=args.train_steps,
        tab=args.tab,
    )


# ---------------------------------------------------------------------- export, eval, predict
# As in core.export (spelled out so that building the parser imports no torch).
EXPORT_FORMATS = ("bundle", "pth", "torchscript", "onnx", "code")
EXPORT_CHECKPOINTS = ("final", "best")


def cmd_export(args: argparse.Namespace) -> int:
    from freezer_app.core.export import export

    result = export(
        args.source, args.format, args.out, force=args.force, checkpoint=args.checkpoint
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return EXIT_OK


def _loaded_from_args(args: argparse.Namespace) -> Any:
    from freezer_app.core.catalog import load_model

    return load_model(
        args.model, num_classes=args.num_classes, pretrained=args.pretrained, weights=args.weights
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from freezer_app.core.data import default_workers
    from freezer_app.core.evaluate import evaluate

    loaded = _loaded_from_args(args)
    workers = args.workers if args.workers is not None else default_workers()
    split, seed = _run_split(args.model, args.data) if not args.all_images else (None, 0)
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
        print(json.dumps(result.to_dict(worst=args.worst), indent=2))
    else:
        print(result.summary(worst=args.worst))
    return EXIT_OK


def _run_split(model: str, data: str) -> tuple[float | None, int]:
    """A run folder evaluated on the folder it trained on: the validation share it held out
    (so training images are not scored), when that folder had no val/ of its own."""
    project_file = Path(model) / "project.json"
    if not project_file.is_file():
        return None, 0
    try:
        project = json.loads(project_file.read_text())
        same = Path(project["data"]["path"]).resolve() == Path(data).expanduser().resolve()
        return (
            (float(project["data"]["val_split"]), int(project["train"]["seed"]))
            if same
            else (None, 0)
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None, 0


def cmd_predict(args: argparse.Namespace) -> int:
    from freezer_app.core.evaluate import predict

    results = predict(_loaded_from_args(args), args.images, top_k=args.top_k, device=args.device)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            if r.error:
                continue
            best = ", ".join(f"{c.label} {c.probability:.3f}" for c in r.top)
            print(f"{r.path}: {best}")
    for r in results:
        if r.error:
            _err(f"error: {r.path}: {r.error}")
    return EXIT_FAILED if any(r.error for r in results) else EXIT_OK


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freezer-app",
        description="Freeze layers of image models point-and-click, fine-tune them on your images, "
        "and prove that frozen layers never moved. With no arguments, opens the desktop app.",
    )
    parser.add_argument("--version", action="version", version=f"freezer-app {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="show a model's module tree and what a freeze plan trains")
    p.add_argument(
        "model",
        metavar="MODEL",
        help="timm:NAME, torchvision:NAME, FILE.py:CALLABLE, a bundle/run folder or weights file",
    )
    _add_model_options(p)
    _add_plan_options(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument(
        "--code", action="store_true", help="print PyTorch code that reproduces the plan"
    )
    out.add_argument(
        "--list-presets", action="store_true", help="list the presets that apply to this model"
    )
    p.add_argument("--depth", type=int, metavar="D", help="show modules at most D levels deep")
    p.add_argument("--all", action="store_true", help="also show modules without parameters")
    p.add_argument("--params", action="store_true", help="also show each parameter")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "train",
        help="fine-tune a model on an image folder",
        description="Fine-tune MODEL on the image folder DIR (one sub-folder per class), or run a "
        "saved project. The number of classes comes from the data.",
    )
    p.add_argument(
        "project",
        nargs="?",
        metavar="PROJECT.json",
        help="a project file (e.g. a run's project.json)",
    )
    p.add_argument("--model", metavar="MODEL")
    p.add_argument(
        "--data", metavar="DIR", help="image folder: class sub-folders, or train/ and val/"
    )
    w = p.add_mutually_exclusive_group()
    w.add_argument(
        "--pretrained", action="store_true", help="start from the library's pretrained weights"
    )
    w.add_argument("--weights", metavar="FILE", help="start from a local .safetensors/.pth file")
    p.add_argument(
        "--val-split",
        type=float,
        metavar="F",
        help="validation fraction when there is no val/ folder (0.2)",
    )
    p.add_argument("--epochs", type=int, metavar="N")
    p.add_argument("--batch-size", type=int, metavar="N")
    p.add_argument(
        "--image-size", type=int, metavar="N", help="input size (default: the model's own)"
    )
    p.add_argument("--augment", choices=["none", "light", "strong"])
    p.add_argument("--workers", type=int, metavar="N", help="data loading processes")
    p.add_argument("--lr", type=float, metavar="F")
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--weight-decay", type=float, metavar="F")
    p.add_argument("--schedule", choices=["cosine", "constant"])
    p.add_argument("--warmup-epochs", type=float, metavar="F")
    p.add_argument("--grad-clip", type=float, metavar="F", help="clip the gradient norm (1.0)")
    p.add_argument("--no-grad-clip", action="store_true")
    p.add_argument(
        "--head-lr-mult", type=float, metavar="F", help="learning-rate multiplier for the head"
    )
    p.add_argument(
        "--layer-decay", type=float, metavar="F", help="layer-wise learning-rate decay, e.g. 0.75"
    )
    p.add_argument("--label-smoothing", type=float, metavar="F")
    p.add_argument(
        "--early-stop",
        type=int,
        metavar="EPOCHS",
        help="stop after this many epochs without improvement",
    )
    _add_plan_options(p)
    p.add_argument(
        "--unfreeze-schedule",
        metavar="E:PRESET,...",
        help="gradual unfreezing, e.g. 1:train-last:1,3:train-all",
    )
    p.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument(
        "--amp", choices=["auto", "bf16", "fp16", "off"], help="mixed precision (auto: on for CUDA)"
    )
    p.add_argument("--seed", type=int, metavar="N")
    p.add_argument(
        "--telemetry-every", type=int, metavar="N", help="steps between per-layer statistics (10)"
    )
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps in all")
    p.add_argument("--out", metavar="DIR", help="run folder to create (default runs/NAME-TIME)")
    p.add_argument("--resume", metavar="DIR", help="continue a stopped run in its folder")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo-data", help="write a small generated image dataset")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--per-class", type=int, default=40, metavar="N")
    p.add_argument("--val-per-class", type=int, default=10, metavar="N")
    p.add_argument("--size", type=int, default=64, metavar="PX")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_demo_data)

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
        help="a run's final weights or those of its best epoch",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_export)

    model_help = (
        "a run or bundle folder, a weights file, timm:NAME, torchvision:NAME, FILE.py:CALLABLE"
    )
    p = sub.add_parser(
        "eval",
        help="accuracy, per-class precision/recall and confusion matrix on an image folder",
        description="Evaluate MODEL on DIR: its val/ folder if it has train/ and val/, otherwise "
        "all images (one sub-folder per class, named as the model's classes).",
    )
    p.add_argument("model", metavar="MODEL", help=model_help)
    _add_model_options(p)
    p.add_argument("--data", required=True, metavar="DIR", help="image folder")
    p.add_argument("--batch-size", type=int, default=32, metavar="N")
    p.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--workers", type=int, metavar="N", help="data loading processes")
    p.add_argument("--worst", type=int, default=5, metavar="N", help="list the N worst images")
    p.add_argument(
        "--all-images",
        action="store_true",
        help="score every image, even when MODEL is a run that held some out for validation",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify images with a model")
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    _add_model_options(p)
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to show per image")
    p.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list or search the model catalog")
    p.add_argument("query", nargs="?", help="substring or glob (e.g. resnet, 'vit_*_224')")
    p.add_argument("--source", choices=["timm", "torchvision"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("gui", help="open the desktop app (the default with no arguments)")
    p.add_argument("project", nargs="?", metavar="PROJECT.json", help="open this project")
    p.add_argument("--demo", action="store_true", help="open a demo project ready to train")
    p.add_argument("--screenshot", metavar="FILE", help="render the window to a PNG and exit")
    p.add_argument(
        "--train-steps", type=int, metavar="N", help="with --screenshot: train N steps first"
    )
    p.add_argument(
        "--tab",
        choices=["loss", "gradients", "updates", "frozen", "evaluate", "log"],
        help="with --screenshot: show this plot tab",
    )
    p.set_defaults(func=cmd_gui)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["gui"]
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except FreezerError as e:
        _err(f"error: {e.message}")
        if e.hint:
            _err(e.hint)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
