"""The runs of a project, side by side: what each run folder holds (model, freeze plan, epochs,
best validation accuracy, frozen check, how it ended) and its curves, for the Runs tab and
`freezer-app runs`.

Everything here only reads run folders (layout in run_folder.py) and never fails on one: a
folder that is half-written, damaged or not a run is listed as "unreadable" with the reason, or
skipped when it holds nothing of a run.

A run's status is what it recorded as it ended (outcome.json: finished, stopped or failed,
with the error); a run that could not record it (killed, or older than that file) is read
from its other files:
  running    another process (or this one) holds the folder's lock (run_folder.RunLock)
  finished   final weights written after its last epoch (or an early stop)
  stopped    final weights and a checkpoint written before the last epoch: stopped by the
             user, a signal or --max-steps; `freezer-app train --resume` continues it
  crashed    steps logged after the last checkpoint and no final weights: the process ended
             without saving (killed, or a failure); resuming continues from the checkpoint
  failed     the same, when the caller knows the run reported a failure (`mark_failed`)
  unreadable no readable project.json (or not a run folder)
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from freezer_app.core.errors import FreezerError
from freezer_app.core.run_folder import RunFolder, RunLock, read_json_lines

STATUSES = ("running", "finished", "stopped", "failed", "crashed", "unreadable")
# Without OS locks (Windows) a run whose metrics changed this recently counts as running.
RECENT_S = 120.0
_STAMP = re.compile(r"-(\d{8}-\d{6})(?:-\d+)?$")  # new_run_dir's NAME-YYYYmmdd-HHMMSS[-N]
_WEIGHTS = re.compile(r"^weights-(\d+)\.safetensors$")


@dataclass
class RunInfo:
    """One row of the runs table."""

    path: Path
    model: str = ""
    plan: str = ""  # plan_summary() of the run's freeze plan
    started: datetime | None = None
    epochs_done: int = 0
    epochs_planned: int | None = None
    steps: int = 0
    best_val_acc: float | None = None
    best_epoch: int | None = None
    frozen_check: str = "not run"  # "passed" | "failed" | "not run"
    status: str = "unreadable"  # one of STATUSES
    detail: str = ""  # why: the step limit, the damaged file, the failure's message

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def readable(self) -> bool:
        return self.status != "unreadable"

    def epochs_text(self) -> str:
        planned = "?" if self.epochs_planned is None else str(self.epochs_planned)
        return f"{self.epochs_done}/{planned}"

    def best_text(self) -> str:
        return "" if self.best_val_acc is None else f"{self.best_val_acc:.3f}"

    def started_text(self) -> str:
        return self.started.strftime("%Y-%m-%d %H:%M") if self.started else ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "model": self.model,
            "plan": self.plan,
            "started": self.started.isoformat(timespec="seconds") if self.started else None,
            "epochs_done": self.epochs_done,
            "epochs_planned": self.epochs_planned,
            "steps": self.steps,
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "frozen_check": self.frozen_check,
            "status": self.status,
            "detail": self.detail,
        }


@dataclass
class RunCurves:
    """A run's curves for overlays: training loss per step, validation per epoch."""

    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lrs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    epoch_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    val_losses: np.ndarray = field(default_factory=lambda: np.zeros(0))  # NaN: not measured
    val_accs: np.ndarray = field(default_factory=lambda: np.zeros(0))  # NaN: not measured


@dataclass
class Run:
    """A run folder read once: its row and its curves."""

    info: RunInfo
    curves: RunCurves


# ---------------------------------------------------------------------- reading one run
def plan_summary(plan: dict[str, Any]) -> str:
    """A short line for a freeze plan (a project.json "plan"): its selection as
    FreezePlan.describe() words it, then its gradual-unfreezing phases and edit count, e.g.
    "head-only → train-all after epoch 1" or "train-last:2; freeze layer1 (+2 edits)"."""
    parts = [str(plan.get("preset") or "train-all")]
    if plan.get("freeze"):
        parts.append("freeze " + ", ".join(map(str, plan["freeze"])))
    if plan.get("unfreeze"):
        parts.append("unfreeze " + ", ".join(map(str, plan["unfreeze"])))
    text = "; ".join(parts)
    for phase in plan.get("schedule") or []:
        if isinstance(phase, dict):
            text += f" → {phase.get('preset', '?')} after epoch {phase.get('epoch', '?')}"
    edits = len(plan.get("edits") or [])
    if edits:
        text += f" (+{edits} edit{'s' if edits > 1 else ''})"
    if plan.get("bn_policy") == "update":
        text += ", BN stats update"
    return text


def lock_held(folder: Path) -> bool:
    """Whether a process trains in `folder` now: its RunLock is held. Tried with a shared,
    non-blocking lock that is let go at once. Without OS locks (Windows): whether its metrics
    changed in the last RECENT_S seconds."""
    try:
        import fcntl
    except ImportError:
        metrics = RunFolder(folder).metrics
        with contextlib.suppress(OSError):
            return time.time() - metrics.stat().st_mtime < RECENT_S
        return False
    path = RunLock(folder).path
    try:
        handle = open(path)  # noqa: SIM115 - closed below; reading never creates it
    except OSError:
        return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False
    finally:
        handle.close()


def _records(path: Path) -> tuple[list[dict[str, Any]], str]:
    """A line log's records and a note on what was skipped. A damaged line in the middle
    (not what a kill leaves) is skipped here too: the table shows what can be read."""
    try:
        return read_json_lines(path).records, ""
    except FreezerError as e:
        note = e.message
    except OSError as e:
        return [], f"cannot read {path.name}: {e.strerror}"
    records = []
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    records.append(record)
    return records, note


def _started(folder: RunFolder) -> datetime | None:
    match = _STAMP.search(folder.path.name)
    if match:
        with contextlib.suppress(ValueError):
            return datetime.strptime(match.group(1), "%Y%m%d-%H%M%S")
    for path in (folder.data_report, folder.layers, folder.project):
        with contextlib.suppress(OSError):
            return datetime.fromtimestamp(path.stat().st_mtime)
    return None


def _last_checkpoint_step(folder: RunFolder) -> int | None:
    """The step of the newest checkpoint: its weights file is named by it (None: no such
    file, as in runs of earlier versions, whose last.pt held the weights)."""
    steps: list[int] = []
    with contextlib.suppress(OSError):
        for p in folder.checkpoints.iterdir():
            match = _WEIGHTS.match(p.name)
            if match:
                steps.append(int(match.group(1)))
    return max(steps, default=None)


def _ended_cleanly(folder: RunFolder, steps: int) -> bool:
    """Final weights written, and no step logged after the last checkpoint. Without named
    checkpoint weights: the final weights are no older than the last log lines (flushed just
    after them)."""
    if not folder.weights.exists():
        return False
    last = _last_checkpoint_step(folder)
    if last is not None:
        return steps <= last
    try:
        return folder.weights.stat().st_mtime >= folder.metrics.stat().st_mtime - 5.0
    except OSError:
        return True


def _counts(record: dict[str, Any], *keys: str) -> bool:
    """Whether the record's `keys` hold whole numbers (a hand-edited line may not)."""
    return all(math.isfinite(n := _number(record.get(k))) and n == int(n) for k in keys)


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def read_run(path: str | Path) -> Run:
    """Read one run folder. Never raises: what cannot be read makes the run "unreadable"."""
    folder = RunFolder(path)
    info = RunInfo(path=folder.path)
    curves = RunCurves()
    try:
        info.started = _started(folder)
        running = lock_held(folder.path)
        try:
            project = json.loads(folder.project.read_text(encoding="utf-8"))
            if not isinstance(project, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            info.status = "running" if running else "unreadable"
            info.detail = "starting" if running else "no project.json: not a run folder"
            return Run(info, curves)
        except (OSError, ValueError) as e:
            info.status = "running" if running else "unreadable"
            info.detail = f"project.json cannot be read: {e}"
            return Run(info, curves)
        info.model = str(project.get("model", ""))
        plan = project.get("plan")
        info.plan = plan_summary(plan if isinstance(plan, dict) else {})
        train = project.get("train") if isinstance(project.get("train"), dict) else {}
        assert isinstance(train, dict)
        with contextlib.suppress(TypeError, ValueError):
            info.epochs_planned = int(train.get("epochs"))  # type: ignore[arg-type]

        records, note = _records(folder.metrics)
        step_rows = [r for r in records if r.get("type") == "step" and _counts(r, "step")]
        epoch_rows = [
            r for r in records if r.get("type") == "epoch" and _counts(r, "step", "epoch")
        ]
        damaged = (
            sum(r.get("type") in ("step", "epoch") for r in records)
            - len(step_rows)
            - len(epoch_rows)
        )
        if damaged and not note:
            note = f"{damaged} record(s) of {folder.metrics.name} without a step or epoch number"
        curves = RunCurves(
            steps=np.array([int(_number(r.get("step"))) for r in step_rows], dtype=np.int64)
            if step_rows
            else np.zeros(0, dtype=np.int64),
            losses=np.array([_number(r.get("loss")) for r in step_rows]),
            lrs=np.array([_number(r.get("lr")) for r in step_rows]),
            epoch_steps=np.array([int(_number(r.get("step"))) for r in epoch_rows], dtype=np.int64)
            if epoch_rows
            else np.zeros(0, dtype=np.int64),
            val_losses=np.array([_number(r.get("val_loss")) for r in epoch_rows]),
            val_accs=np.array([_number(r.get("val_acc")) for r in epoch_rows]),
        )
        info.steps = int(curves.steps.max()) if curves.steps.size else 0
        info.epochs_done = max((int(_number(r.get("epoch"))) for r in epoch_rows), default=0)
        accs = [(a, int(_number(r.get("epoch")))) for r, a in zip(epoch_rows, curves.val_accs)]
        accs = [(a, e) for a, e in accs if math.isfinite(a)]
        if accs:
            best = max(accs, key=lambda t: t[0])
            info.best_val_acc, info.best_epoch = float(best[0]), best[1]

        checks, check_note = _records(folder.frozen_check)
        if checks:
            info.frozen_check = "passed" if all(c.get("passed") for c in checks) else "failed"
        note = note or check_note

        info.status, info.detail = _status(folder, info, train, running)
        if note:
            info.detail = f"{info.detail}; {note}" if info.detail else note
    except Exception as e:  # a listing never fails on one folder
        info.status, info.detail = "unreadable", f"{type(e).__name__}: {e}"
    return Run(info, curves)


# outcome.json's reason (written by the trainer as the run ends) → status
_OUTCOMES = {
    "completed": "finished",
    "early-stopped": "finished",
    "step-limit": "stopped",
    "stopped": "stopped",
    "error": "failed",
}


def _recorded_status(folder: RunFolder) -> tuple[str, str] | None:
    """The ending the run recorded itself, when it could (a killed process records none)."""
    try:
        outcome = json.loads(folder.outcome.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    reason = outcome.get("reason") if isinstance(outcome, dict) else None
    if reason not in _OUTCOMES:
        return None
    step = outcome.get("step")
    detail = {
        "early-stopped": "early stop",
        "step-limit": f"step limit {step}",
        "stopped": f"at step {step}",
        "error": str(outcome.get("message") or "an error"),
    }.get(reason, "")
    return _OUTCOMES[reason], detail


def _status(
    folder: RunFolder, info: RunInfo, train: dict[str, Any], running: bool
) -> tuple[str, str]:
    if running:
        return "running", ""
    recorded = _recorded_status(folder)
    if recorded is not None:
        return recorded
    if not _ended_cleanly(folder, info.steps):
        if not info.steps:
            return "crashed", "ended before its first step"
        last = _last_checkpoint_step(folder)
        where = (
            "no checkpoint"
            if not folder.last_checkpoint.exists()
            else "resume continues from its checkpoint"
            if last is None
            else f"resume continues from step {last}"
        )
        return "crashed", f"ended at step {info.steps} without saving; {where}"
    planned = info.epochs_planned
    if planned is not None and info.epochs_done >= planned:
        return "finished", ""
    patience = int(_number(train.get("early_stop_patience")) or 0)
    if (
        patience > 0
        and info.best_epoch is not None
        and info.epochs_done - info.best_epoch >= patience
    ):
        return "finished", "early stop"
    limit = train.get("max_steps")
    if isinstance(limit, int) and limit and info.steps >= limit:
        return "stopped", f"step limit {limit}"
    return "stopped", f"at step {info.steps}"


def mark_failed(info: RunInfo, message: str) -> None:
    """A run that ended without saving is "failed" when its failure is known (the window saw
    it end with an error), with the message."""
    if info.status == "crashed":
        info.status = "failed"
        info.detail = message or info.detail


# ---------------------------------------------------------------------- listing
def holds_run(path: Path) -> bool:
    """A folder worth a row: it has a run's project.json, line logs or checkpoints, or is
    locked by a run starting in it. An exported bundle (config.json) and other folders are not."""
    folder = RunFolder(path)
    if not path.is_dir() or (path / "config.json").is_file():
        return False
    return (
        folder.project.exists()
        or folder.metrics.exists()
        or folder.checkpoints.is_dir()
        or lock_held(path)
    )


def run_folders(root: str | Path) -> list[Path]:
    """The run folders in `root` (or `root` itself when it is one)."""
    root = Path(root).expanduser()
    run = RunFolder(root)
    # A run folder itself (a saved project's folder holds a project.json but no logs).
    if holds_run(root) and (run.metrics.exists() or run.checkpoints.is_dir()):
        return [root]
    try:
        children = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except OSError:
        return []
    return [p for p in children if holds_run(p)]


def _newest_first(run: Run) -> tuple[float, str]:
    started = run.info.started.timestamp() if run.info.started else 0.0
    return (-started, run.info.name)


def read_runs(root: str | Path | None, extra: list[Path] | tuple[Path, ...] = ()) -> list[Run]:
    """Every run in `root` and the run folders in `extra` (once each), newest first."""
    seen: set[Path] = set()
    runs: list[Run] = []
    folders = run_folders(root) if root is not None else []
    for path in [*folders, *(Path(p).expanduser() for p in extra)]:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        runs.append(read_run(path))
    return sorted(runs, key=_newest_first)


def list_runs(root: str | Path | None, extra: list[Path] | tuple[Path, ...] = ()) -> list[RunInfo]:
    """The rows of `read_runs`."""
    return [r.info for r in read_runs(root, extra)]


def load_curves(path: str | Path) -> RunCurves:
    """A run's loss per step and validation loss/accuracy per epoch (empty when unreadable)."""
    return read_run(path).curves


# ---------------------------------------------------------------------- replay
@dataclass
class RunRecord:
    """What the window shows of a run, read back from its folder: its layer names, per-layer
    telemetry, plan changes and frozen checks (the curves are in RunCurves)."""

    layers: list[str]
    telemetry: list[dict[str, Any]]  # telemetry.jsonl records (arrays as lists)
    plans: list[dict[str, Any]]  # plans.jsonl records
    frozen_checks: list[Any]  # core.telemetry.FrozenCheck
    notes: list[str]


def read_record(path: str | Path) -> RunRecord:
    """Read a run's telemetry, plan changes and frozen checks to show them again. Damaged
    files are skipped with a note, never raised."""
    from freezer_app.core.telemetry import Drift, FrozenCheck

    folder = RunFolder(path)
    notes: list[str] = []
    layers: list[str] = []
    try:
        data = json.loads(folder.layers.read_text(encoding="utf-8"))
        layers = [str(n) for n in data.get("layers", [])]
    except (OSError, ValueError, AttributeError) as e:
        notes.append(f"layers.json cannot be read ({e}): no gradient flow or heat map")
    telemetry, note = _records(folder.telemetry)
    telemetry = [
        r
        for r in telemetry
        if len(r.get("update_ratio") or []) == len(layers) == len(r.get("trainable") or [])
    ]
    plans, note2 = _records(folder.plans)
    checks: list[FrozenCheck] = []
    raw, note3 = _records(folder.frozen_check)
    for r in raw:
        with contextlib.suppress(TypeError, ValueError):
            drifted = [Drift(**d) for d in r.get("drifted", []) if isinstance(d, dict)]
            checks.append(FrozenCheck(int(r["epoch"]), int(r["step"]), int(r["checked"]), drifted))
    notes += [n for n in (note, note2, note3) if n]
    return RunRecord(layers, telemetry, plans, checks, notes)


def telemetry_arrays(record: dict[str, Any]) -> dict[str, np.ndarray]:
    """A telemetry.jsonl record's arrays, as numpy arrays."""
    out = {
        k: np.asarray(v, dtype=float)
        for k, v in record.items()
        if isinstance(v, list) and k != "trainable"
    }
    out["trainable"] = np.asarray(record.get("trainable", []), dtype=bool)
    return out
