"""`freezer-app train`: fine-tune from flags or a project file, repeat a run, or resume one.

The setting flags are generated from the project schema (core/settings.py): each has the
schema's help, default and range, and lands in the project under its key.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from freezer_app.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_plan_options,
    add_trust_option,
    code_trust,
    err,
    plan_flags_given,
    plan_from_args,
)
from freezer_app.core.errors import FreezerError


def add_parser(sub: Any) -> None:
    from freezer_app.core import settings
    from freezer_app.core.project import Project, resumable_keys

    resumable = ", ".join(settings.find(Project, k).flag for k in resumable_keys())
    p = sub.add_parser(
        "train",
        help="fine-tune a model on an image folder",
        description="Fine-tune MODEL on the image folder DIR (one sub-folder per class), repeat a "
        "saved project or run (`train RUN/project.json`), or continue a stopped run "
        f"(`train --resume RUN`, where only {resumable} may be given). The number of classes "
        "comes from the data. Setting flags override the project file.",
    )
    p.add_argument(
        "project",
        nargs="?",
        metavar="PROJECT.json",
        help="a project file (e.g. a run's project.json)",
    )
    settings.add_flags(p, Project, exclude=("plan",))
    p.add_argument(
        "--no-grad-clip",
        dest="train.grad_clip",
        action="store_const",
        const=None,
        default=argparse.SUPPRESS,
        help="do not clip gradients (as --grad-clip off)",
    )
    add_plan_options(p)
    add_lr_mult_option(p)
    add_trust_option(p)
    p.add_argument(
        "--unfreeze-schedule",
        metavar="E:PRESET,...",
        help="gradual unfreezing, e.g. 1:train-last:1,3:train-all",
    )
    p.add_argument("--out", metavar="DIR", help="run folder to create (default runs/NAME-TIME)")
    p.add_argument(
        "--resume", metavar="DIR", help=f"continue a stopped run in its folder (with {resumable})"
    )
    p.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="train in N processes on this machine through torchrun, one per GPU (on the CPU: "
        "N gloo processes); --batch-size is per process. --device cuda:all picks one per GPU",
    )
    p.add_argument("--json", action="store_true", help="print the final summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_lr_mult_option(p: argparse.ArgumentParser) -> None:
    """--lr-mult PATH=X, for train and lr-find (the plan's per-layer multipliers)."""
    from freezer_app.core import settings
    from freezer_app.core.project import Project

    p.add_argument(
        "--lr-mult",
        action="append",
        default=[],
        type=_lr_mult,
        metavar="PATH=X",
        help=f"{settings.find(Project, 'plan.lr_mult').spec.help}, e.g. --lr-mult blocks.0=0.1; "
        "the last one given for a path wins (repeatable)",
    )


def _lr_mult(text: str) -> tuple[str, float]:
    """`PATH=X` of --lr-mult."""
    path, sep, value = text.rpartition("=")
    try:
        mult = float(value)
    except ValueError:
        mult = float("nan")
    if not sep or not path.strip() or not (0 < mult <= 10_000):
        raise argparse.ArgumentTypeError(
            f"{text!r}: write a module path, '=' and a multiplier in (0, 10000], e.g. layer4=0.5"
        )
    return path.strip(), mult


def project_from_args(args: argparse.Namespace) -> Any:
    """The project a `train` command line describes (not for --resume)."""
    from freezer_app.core import settings, timeline
    from freezer_app.core.project import Project, absolute_model

    given = settings.given_flags(args, Project)
    command = getattr(args, "command", "train")  # or lr-find, which reads a project the same way
    if args.project:
        _refuse_run_folder(Path(args.project), command, getattr(args, "out", None))
        project = Project.load(args.project)
    else:
        if "model" not in given or "data.path" not in given:
            out = " --out runs/first" if command == "train" else ""
            raise FreezerError(
                "Say what to train: --model MODEL --data DIR (or a PROJECT.json).",
                f"Example: freezer-app {command} --model timm:resnet18 --data ./images{out}",
            )
        project = Project()
    if "pretrained" in given and "weights" in given and given["pretrained"] and given["weights"]:
        raise FreezerError(
            "Choose either --pretrained or --weights, not both.", "Drop one of them."
        )
    for key, value in given.items():
        if key == "model":
            # A run folder's project.json must work from any directory.
            value = absolute_model(value, Path.cwd())
        elif key in ("data.path", "weights") and value:
            value = str(Path(value).expanduser().resolve())
        settings.set_value(project, key, value)
        if key == "weights" and value:
            project.pretrained = False
        if key == "pretrained" and value:
            project.weights = None
    moved = sorted(given.keys() & {"train.batch_size", "data.path", "data.val_split"})
    if project.plan.edits and moved:
        err(
            f"warning: the project's {len(project.plan.edits)} freeze edit(s) are keyed by "
            f"optimizer step; with another {', '.join(moved)} those steps fall elsewhere in "
            "the data, so this run will not repeat the one that recorded them"
        )
    project.plan = plan_from_args(args, project.plan)
    for path, mult in getattr(args, "lr_mult", None) or []:  # lr-find has no --lr-mult
        project.plan = project.plan.with_lr_mult(path, mult)
    if args.unfreeze_schedule:
        project.plan.schedule = timeline.parse_schedule(args.unfreeze_schedule)
    return project


def _refuse_run_folder(path: Path, command: str, out: str | None) -> None:
    """A run folder given where its project.json is meant: say what to pass instead."""
    inside = path / "project.json"
    if not (path.is_dir() and inside.is_file()):
        return  # Project.load says what is wrong with anything else
    if command == "train":
        hint = (
            f"To repeat that run: freezer-app train {inside}{f' --out {out}' if out else ''}; "
            f"to continue it: freezer-app train --resume {path}"
        )
    else:
        hint = f"To use that run's project: freezer-app {command} {inside}"
    raise FreezerError(f"{path} is a run folder, not a project file.", hint)


def _code_trust(args: argparse.Namespace) -> Any:
    """A .py given with --model runs; one named by a project file or a resumed run needs
    --trust-code."""
    from freezer_app.core import settings
    from freezer_app.core.project import Project

    if args.resume:
        return code_trust(args, Path(args.resume) / "project.json")
    if args.project and "model" not in settings.given_flags(args, Project):
        return code_trust(args, args.project)
    return code_trust(args)


def _resume_changes(args: argparse.Namespace) -> dict[str, Any]:
    from freezer_app.core import settings
    from freezer_app.core.project import Project

    if args.project or args.out:
        raise FreezerError(
            "--resume continues a run in its own folder.",
            "Drop PROJECT.json and --out (or repeat the run with `train RUN/project.json --out NEW`).",
        )
    flags = plan_flags_given(args) + (["--lr-mult"] if getattr(args, "lr_mult", None) else [])
    if flags:
        raise FreezerError(
            f"A resumed run keeps its freeze plan and timeline; {', '.join(flags)} cannot be given.",
            "Change the plan while a run trains (in the window), or start a new run.",
        )
    return settings.given_flags(args, Project)


class Progress:
    """A per-epoch progress bar on stderr, and the run's log lines."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.steps_per_epoch = 0
        self.epochs = 0

    def __call__(self, event: Any) -> None:
        try:
            self._show(event)
        except OSError:
            # A closed terminal or a full pipe must never end a run: the run folder has it all.
            self.bar = None

    def _show(self, event: Any) -> None:
        from tqdm import tqdm

        from freezer_app.core import events as ev

        if isinstance(event, ev.RunStarted):
            self.steps_per_epoch, self.epochs = event.steps_per_epoch, event.epochs
            err(
                f"training {event.model} on {event.device} ({event.precision}): "
                f"{event.trainable_params:,} of {event.total_params:,} parameters train, "
                f"{len(event.classes)} classes, {event.steps_per_epoch} steps per epoch"
            )
            err(f"run folder: {event.run_dir}")
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
            self.close()
            val = (
                f"val_loss {event.val_loss:.4f}  val_acc {event.val_acc:.3f}"
                if event.val_acc is not None
                else "no validation images"
            )
            best = "  (best)" if event.is_best else ""
            err(
                f"epoch {event.epoch}: train_loss {event.train_loss:.4f}  {val}  "
                f"{event.images_per_s:.0f} img/s{best}"
            )
        elif isinstance(event, ev.FrozenCheckEvent):
            err(f"  frozen check: {event.check.summary()}")
        elif isinstance(event, ev.LogEvent):
            self.close()
            err(("warning: " if event.level == "warning" else "") + event.message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _project(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The project to train, and the settings a --resume changes."""
    from freezer_app.core.project import Project

    if args.resume:
        changes = _resume_changes(args)
        return Project.load(Path(args.resume) / "project.json"), changes
    project = project_from_args(args)
    project.validate()
    return project, {}


def _checked_data(args: argparse.Namespace, project: Any, trust: Any, say: bool = True) -> Any:
    from freezer_app.core.catalog import check_code
    from freezer_app.core.data import scan_folder

    check_code(project.model, trust)  # before the data check: a refusal is instant
    report = scan_folder(project.data.path, project.data.val_split, project.train.seed)
    if say:
        err(report.summary())
    return report


def _claim_out(args: argparse.Namespace, project: Any) -> Path:
    from freezer_app.core.run_folder import new_run_dir

    if args.resume:
        return Path(args.resume)
    # Claimed only now that the data is known to be usable (the run removes it again if it
    # cannot start).
    return Path(args.out) if args.out else new_run_dir("runs", project.name, project.model)


def run(args: argparse.Namespace) -> int:
    from freezer_app.cli import launch
    from freezer_app.core.train.distributed import launched_by_torchrun

    if launched_by_torchrun():
        return _run_rank(args)
    project, changes = _project(args)
    trust = _code_trust(args)
    report = _checked_data(args, project, trust)
    processes = launch.processes_wanted(args.nproc_per_node, project.train.device)
    out = _claim_out(args, project)
    if processes > 1:
        try:
            return launch.run_torchrun(args.argv, processes, out, bool(args.resume))
        finally:
            if not args.resume:
                # A run that never started leaves no empty folder behind.
                with contextlib.suppress(OSError):
                    out.rmdir()
    return _train(args, project, changes, trust, report, out)[0]


def _run_rank(args: argparse.Namespace) -> int:
    """One rank of a torchrun job (`torchrun ... -m freezer_app train ...`, or started by
    `--nproc-per-node`): rank 0 checks the data, picks the run folder and tells the others;
    rank 0 alone prints. A failure before training is printed once, by rank 0 (or by the
    rank it happened on)."""
    from freezer_app.cli import launch
    from freezer_app.core.train.event_stream import EventStream, SetupFailed

    rank = int(os.environ["RANK"])
    launched = launch.EXIT_FILE_ENV in os.environ
    launch.use_launcher_stderr()
    # Started by the window: rank 0 streams the run's events to it and takes its commands.
    stream = EventStream.from_env() if rank == 0 else None
    dist = None
    try:
        project, changes = _project(args)
        trust = _code_trust(args)
        dist = _start_distributed(project.train.device)
        error, report, out = None, None, None
        if dist.main:
            try:
                # Already checked and printed by the command that launched this job.
                report = _checked_data(args, project, trust, say=not launched)
                out = _claim_out(args, project)
            except FreezerError as e:
                error = e
        dist.agree(error)
        report, out = dist.broadcast((report, out))
        code, together = _train(args, project, changes, trust, report, out, dist, stream)
    except FreezerError as e:
        if dist is not None:
            dist.close(together=False)
        if rank != 0:
            return EXIT_USAGE  # rank 0 says what went wrong
        if stream is not None:
            stream.send(SetupFailed(e.message, e.hint or ""))
            stream.close()
        raise
    if stream is not None:
        stream.close()
    if launched and dist.main:
        Path(os.environ[launch.EXIT_FILE_ENV]).write_text(str(code))
    # The run is over and reported: torchrun's SIGTERM (after another rank failed) has
    # nothing left to stop.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    dist.close(together=together)
    # A stop (130/143) is no failure to torchrun: it would report every rank as failed.
    return code if code in (EXIT_OK, EXIT_FAILED, EXIT_USAGE) else EXIT_OK


def _start_distributed(device: str) -> Any:
    import torch

    from freezer_app.core.train.distributed import Distributed

    device = (device or "auto").strip().lower()
    if device == "mps":
        raise FreezerError(
            "Several processes need CUDA GPUs or the CPU; Apple MPS takes one process.",
            "Use --device cpu or cuda.",
        )
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    try:
        return Distributed.start(use_cuda)
    except RuntimeError as e:
        raise FreezerError(
            f"Cannot join the torchrun job: {e}", "Use --device cpu, or check the GPUs."
        ) from None


def _train(
    args: argparse.Namespace,
    project: Any,
    changes: dict[str, Any],
    trust: Any,
    report: Any,
    out: Path,
    dist: Any = None,
    stream: Any = None,
) -> tuple[int, bool]:
    """Train in this process; the exit status, and whether every rank ended together.
    stream: rank 0's connection to the window that started the job (event_stream.py)."""
    from freezer_app.core.events import RunControl
    from freezer_app.core.train import Trainer

    main = dist is None or dist.main
    control = RunControl()
    progress = Progress(quiet=args.quiet)
    on_event: Any = progress
    if stream is not None:
        stream.control = control

        def on_event(event: Any) -> None:
            progress(event)
            stream.send(event)

    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        # Ctrl-C, `kill`, a job scheduler's SIGTERM or a closed terminal: finish the step,
        # save a checkpoint, exit. A second Ctrl-C aborts at once.
        if control.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        received.append(signum)
        if hasattr(signal, "SIGHUP") and signum == signal.SIGHUP:
            # The terminal closed: writing to it now fails (EIO), so the rest goes nowhere.
            devnull = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
            sys.stdout = sys.stderr = devnull
        try:
            progress.close()
        except OSError:
            progress.bar = None
        name = signal.Signals(signum).name
        if main:
            again = "Ctrl-C again" if signum == signal.SIGINT else "Ctrl-C"
            err(f"{name}: stopping after this step and saving a checkpoint ({again} aborts)")
        control.stop()

    handled = [signal.SIGINT, signal.SIGTERM] + (
        [signal.SIGHUP] if hasattr(signal, "SIGHUP") else []
    )
    previous = {s: signal.signal(s, on_signal) for s in handled}
    try:
        trainer = Trainer(
            project,
            out,
            on_event=on_event,
            control=control,
            resume=bool(args.resume),
            report=report,
            resume_changes=changes,
            trust=trust,
            dist=dist,
        )
        result = trainer.run()
        progress.close()
        # Still under the handlers: torchrun's SIGTERM to the ranks left after one failed
        # must not cut the summary short.
        code = _report(args, result, received, main)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        progress.close()
    return code, trainer.together


def _report(args: argparse.Namespace, result: Any, received: list[int], main: bool) -> int:
    """Print the summary (rank 0 only under torch.distributed); the exit status."""
    if not main:
        if result.reason == "error" and result.message:
            # Rank 0 may be ended by torchrun before it can say why (nccl): say it here too.
            err(f"rank {os.environ.get('RANK', '?')}: error: {result.message}")
        return EXIT_FAILED if result.reason == "error" else EXIT_OK
    if args.json:
        print(json.dumps(result.__dict__, indent=2))
    else:
        print(summary(result))
    if result.reason == "error":
        err(f"error: {result.message}")
        if result.hint:
            err(result.hint)
        return EXIT_FAILED
    if result.frozen_check_passed is False:
        return EXIT_FAILED
    if result.reason == "stopped":
        # As a shell reports a process ended by that signal: 130 for Ctrl-C, 143 for SIGTERM.
        signum = received[0] if received else signal.SIGINT
        return 128 + int(signum)
    return EXIT_OK


def summary(r: Any) -> str:
    lines = [
        f"{r.reason} after {r.epochs_completed} epoch(s), {r.steps} steps in {r.seconds:.1f} s"
    ]
    if r.best_val_acc is not None:
        lines.append(f"best val_acc {r.best_val_acc:.4f} (epoch {r.best_epoch})")
    lines.append(f"frozen check: {r.frozen_check_summary}")
    lines.append(f"run folder: {r.run_dir}")
    return "\n".join(lines)
