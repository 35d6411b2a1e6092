"""The run folder: one per training run, its layout, its name, and which images it scores.

project.json          everything needed to run it again (`freezer-app train project.json`),
                      the freeze timeline's edits and what each resume changed included
data_report.json      what the dataset check found
metrics.jsonl         per step: loss, lr; per epoch: train_loss, val_loss, val_acc, images_per_s
telemetry.jsonl       per-layer statistics every few steps (layer names in layers.json)
plans.jsonl           every freeze-plan change the run applied (or refused), by step
frozen_check.jsonl    per epoch: were all frozen tensors bit-identical?
checkpoints/last.pt   everything needed to resume (each --checkpoint-every epochs, at the end
                      and on stop), with the name of its weights file:
checkpoints/weights-STEP.safetensors   the model's weights at that checkpoint
checkpoints/best.safetensors   weights of the best validation epoch (a hard link of a
                      checkpoint's weights file where the file system allows)
model.safetensors     final weights, keys exactly as model.state_dict() (likewise a link)
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezer_app.core.errors import ProjectError
from freezer_app.core.files import write_json


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    project = property(lambda self: self.path / "project.json")
    data_report = property(lambda self: self.path / "data_report.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    telemetry = property(lambda self: self.path / "telemetry.jsonl")
    plans = property(lambda self: self.path / "plans.jsonl")
    layers = property(lambda self: self.path / "layers.json")
    frozen_check = property(lambda self: self.path / "frozen_check.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    best_weights = property(lambda self: self.path / "checkpoints" / "best.safetensors")
    weights = property(lambda self: self.path / "model.safetensors")
    # How the run ended (reason, step, message), written last; removed when it resumes.
    outcome = property(lambda self: self.path / "outcome.json")

    def check_new(self) -> None:
        """Refuse a folder that already holds files: a run never writes over other work."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise ProjectError(
                f"The run folder {self.path} already holds files.",
                "Pick a new --out folder, or continue that run with --resume.",
            )

    def create(self) -> None:
        """Make a new run folder; refuse to write into one that holds a run."""
        self.check_new()
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ProjectError(
                f"Cannot create the run folder {self.path}: {e.strerror}.",
                "Pick another --out folder.",
            ) from None

    def check_resumable(self) -> None:
        if not self.project.exists():
            raise ProjectError(
                f"{self.path} is not a run folder (no project.json).",
                "Pass the folder a run wrote.",
            )
        if not self.last_checkpoint.exists():
            raise ProjectError(
                f"{self.path} has no checkpoint to resume from.",
                "The run stopped before its first checkpoint; start it again with `freezer-app train PROJECT.json`.",
            )

    def write_json(self, path: Path, data: Any) -> None:
        write_json(path, data)


def is_run_folder(path: str | Path) -> bool:
    """A folder a run wrote (a bundle holds a config.json instead)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / "project.json").is_file() and not (p / "config.json").is_file()


def run_stem(name: str, model: str) -> str:
    """A file-name-safe stem for a project's runs: its name, else the model's."""
    stem = name or model.split(":")[-1].split("/")[-1].removesuffix(".py")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "run"
    return stem[:80]


def new_run_dir(root: str | Path, name: str, model: str) -> Path:
    """Claim runs/NAME-YYYYmmdd-HHMMSS (with a counter when that is taken, e.g. two runs
    started in the same second): the folder is created here, atomically, so two processes
    never pick the same one. A run that then cannot start removes it again."""
    root = Path(root)
    base = f"{run_stem(name, model)}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while True:
        candidate = root / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            n += 1
        except OSError as e:
            raise ProjectError(
                f"Cannot create a run folder in {root}: {e.strerror}.",
                "Pick another folder with --out.",
            ) from None


def evaluation_split(run: str | Path, data: str | Path) -> tuple[float | None, int]:
    """Which images of `data` a run is scored on: when the run trained on this same folder and
    held out a validation share (no val/ of its own), that share (val_split, seed), so its
    training images are not scored; otherwise (None, 0): every image of the folder's eval set."""
    project_file = Path(run) / "project.json"
    if not project_file.is_file():
        return None, 0
    try:
        report = Path(run) / "data_report.json"
        if report.is_file() and json.loads(report.read_text()).get("layout") == "train/val":
            return None, 0  # its validation images are the val/ folder: scored as they are
        project = json.loads(project_file.read_text())
        same = Path(project["data"]["path"]).resolve() == Path(data).expanduser().resolve()
        if not same:
            return None, 0
        return float(project["data"]["val_split"]), int(project["train"]["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, 0


@dataclass
class JsonLines:
    """The records of a line log, and what was left out of it."""

    records: list[dict[str, Any]]
    torn: int = 0  # an unfinished last line (a kill or a full disk mid-write), skipped
    path: str = ""

    def note(self) -> str:
        if not self.torn:
            return ""
        return f"{self.path}: skipped an unfinished last line (the run was killed mid-write)"


def read_json_lines(path: str | Path) -> JsonLines:
    """Read a line log, skipping (and counting) a torn last line. A damaged line elsewhere is
    an error naming the file and the line: that is not what a kill leaves behind."""
    path = Path(path)
    if not path.exists():
        return JsonLines([], 0, str(path))
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records: list[dict[str, Any]] = []
    torn = 0
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            if i == last:
                torn += 1
                continue
            raise ProjectError(
                f"{path} line {i + 1} is damaged.",
                "Remove that line (or the file) and try again.",
            ) from None
        records.append(record)
    return JsonLines(records, torn, str(path))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a line log (a torn last line skipped)."""
    return read_json_lines(path).records


class RunLock:
    """An OS lock on a run folder for as long as a process trains in it. The kernel releases
    it when the process ends, however it ends, so a killed run never leaves it behind."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self._file: Any = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks here; a second run is not refused
            return
        try:
            handle = open(self.path, "a+")  # noqa: SIM115 - held for the run
        except OSError as e:
            raise ProjectError(
                f"Cannot open {self.path}: {e.strerror}.", "Check the run folder's permissions."
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ProjectError(
                f"The run folder {self.path.parent} is in use by {holder}.",
                "Wait for that run to finish (or stop it); one folder takes one run at a time.",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"Freezer process {os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the lock
            self._file = None
