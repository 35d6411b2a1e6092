"""The export entry point: what to export, where, and in which format.

``export()`` opens the source (a run folder, bundle, weights file or model string, or an
``ExportSource`` the GUI built), checks the target, removes temporary files that killed exports
left beside it, reports progress, honours cancel requests between steps, and hands the work to
the format's writer (``formats.py``, ``bundle.py``). A write that fails (disk full, permission
denied) becomes an ``ExportWriteError`` saying where, how much room was needed and what was kept.
The format table, default export paths and the target checks the GUI asks about before exporting
live here too.

What ``force=True`` may replace (anything else is refused, with or without it):
- for bundle and code-folder exports, a folder Freezer wrote: it holds the marker file
  ``.freezer-export`` (JSON: the format and the files written), the format is the same, and it
  holds no file the marker does not list; or an empty folder;
- for pth, torchscript, onnx and code ``.py`` exports, a regular file (never a folder, a
  symbolic link or a device).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from freezer_app import __version__
from freezer_app.core.catalog import LoadedModel, load_model
from freezer_app.core.errors import Cancelled, ExportError, FreezerError, TargetExistsError
from freezer_app.core.files import (
    WriteError,
    io_errno,
    reason_for,
    remove_stale_temp_files,
    write_json,
)
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.run_folder import is_run_folder, read_json_lines, read_jsonl

FORMATS: tuple[str, ...] = ("bundle", "pth", "torchscript", "pt2", "onnx", "triton", "code")
# final: model.safetensors; best: the best epoch's; ema: the moving average (train.ema).
CHECKPOINTS: tuple[str, ...] = ("final", "best", "ema")
# Default names under RUN_DIR/export/ (with "-best" or "-ema" added for those checkpoints).
DEFAULT_NAMES = {
    "bundle": "bundle",
    "pth": "model.pth",
    "torchscript": "model.torchscript.pt",
    "pt2": "model.pt2",
    "onnx": "model.onnx",
    "triton": "triton",
    "code": "code",
}
FORMAT_TITLES = {
    "bundle": "Bundle for timm / torchvision (safetensors + config.json)",
    "pth": "PyTorch state_dict (.pth)",
    "torchscript": "TorchScript (.pt)",
    "pt2": "torch.export program (.pt2)",
    "onnx": "ONNX (.onnx)",
    "triton": "Triton model repository (ONNX + config.pbtxt)",
    "code": "Freeze plan as code (.py + .json)",
}

# The file in every folder export (bundle, code) that says Freezer wrote it, and what.
MARKER = ".freezer-export"
# Written into folders by file browsers, not by people: no reason to refuse a replacement.
OS_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})

ProgressFn = Callable[[int, int, str], None]
CancelFn = Callable[[], bool]


# ---------------------------------------------------------------------- results
@dataclass
class ExportResult:
    """What an export wrote (absolute paths) and what was checked."""

    format: str
    path: str
    files: list[str]
    notes: list[str] = field(default_factory=list)
    source: str = ""
    checkpoint: str = "final"
    validated: bool | None = None  # None: no reload check was possible
    max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"wrote {self.format}: {self.path}"]
        if len(self.files) > 1:
            lines += [f"  {Path(f).name}" for f in self.files]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------- the source
@dataclass
class ExportSource:
    """A model to export, with what is known about how it was trained.

    The GUI may build one directly: ``ExportSource(loaded, "model", plan=current_plan)``.
    """

    loaded: LoadedModel
    kind: str  # "run", "bundle", "weights" or "model"
    path: Path | None = None
    checkpoint: str = "final"
    plan: FreezePlan | None = None
    training: dict[str, Any] | None = None  # for training.json: settings, metrics, frozen check
    name: str = ""  # shown in README and comments

    @property
    def label_names(self) -> list[str]:
        return self.loaded.label_names or [f"class {i}" for i in range(self.loaded.num_classes)]


def _run_weights(run: Path, checkpoint: str) -> Path:
    if checkpoint not in CHECKPOINTS:
        raise ExportError(f"Unknown checkpoint {checkpoint!r}.", "Use final, best or ema.")
    if checkpoint == "best":
        path = run / "checkpoints" / "best.safetensors"
        hint = "No epoch has finished yet; export the final weights, or let the run go on."
    elif checkpoint == "ema":
        from freezer_app.core.train.checkpoint import EMA_WEIGHTS

        path = run / EMA_WEIGHTS
        hint = (
            "EMA weights exist for runs trained with --ema DECAY, from their first checkpoint "
            "on; export the final or best weights of this one."
        )
    else:
        path = run / "model.safetensors"
        hint = (
            "The run has not finished (or ended with an error); export --checkpoint best, "
            "or finish the run with `freezer-app train --resume RUN_DIR`."
        )
    if not path.is_file():
        raise ExportError(f"{run} has no {checkpoint} weights ({path.name}).", hint)
    return path


def available_checkpoints(source: str | Path) -> tuple[str, ...]:
    """The checkpoints a run folder has weights for (all of them for other sources, which
    have one set of weights and ignore the choice)."""
    run = Path(source).expanduser()
    if not (run / "project.json").is_file():
        return CHECKPOINTS
    found = []
    for checkpoint in CHECKPOINTS:
        try:
            _run_weights(run, checkpoint)
        except ExportError:
            continue
        found.append(checkpoint)
    return tuple(found)


def open_source(source: str | Path, checkpoint: str = "final") -> ExportSource:
    """A run folder, bundle folder, weights file or model string, ready to export.

    checkpoint: for a run folder, "final" (model.safetensors), "best"
    (checkpoints/best.safetensors) or "ema" (model-ema.safetensors, with train.ema).
    """
    from freezer_app.core.project import Project

    text = str(source)
    path = Path(text).expanduser()
    if is_run_folder(path):
        weights = _run_weights(path, checkpoint)
        loaded = load_model(str(path), weights=weights)
        project = Project.load(path / "project.json")
        return ExportSource(
            loaded,
            "run",
            path,
            checkpoint,
            project.plan,
            training_info(path, project.to_dict(), checkpoint),
            project.name or path.name,
        )
    if checkpoint != "final":
        raise ExportError(
            f"--checkpoint {checkpoint} applies to run folders only.",
            f"Export {text} without --checkpoint, or pass the run folder.",
        )
    loaded = load_model(text)
    if path.is_dir():
        plan = _read_plan(path / "freeze_plan.json")
        training = _read_json_or_none(path / "training.json")
        return ExportSource(loaded, "bundle", path, checkpoint, plan, training, path.name)
    if path.is_file():
        return ExportSource(loaded, "weights", path, checkpoint, name=path.stem)
    return ExportSource(loaded, "model", None, checkpoint, name=str(loaded.spec))


def _read_json_or_none(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_plan(path: Path) -> FreezePlan | None:
    data = _read_json_or_none(path)
    if data is None:
        return None
    try:
        return FreezePlan.from_dict(data)
    except (FreezerError, TypeError):
        return None


def training_info(run: Path, project: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """Settings, final and best epoch metrics and the last frozen check of a run."""
    metrics = read_jsonl(run / "metrics.jsonl")
    epochs = [r for r in metrics if r.get("type") == "epoch"]
    steps = [r for r in metrics if r.get("type") == "step"]
    checks = read_jsonl(run / "frozen_check.jsonl")
    metric = (project.get("train") or {}).get("early_stop_metric", "val_acc")

    def score(r: dict[str, Any]) -> float:
        if metric == "val_acc" and r.get("val_acc") is not None:
            return float(r["val_acc"])
        if metric == "val_loss" and r.get("val_loss") is not None:
            return -float(r["val_loss"])
        return -float(r.get("train_loss") or 0.0)

    data = dict(project.get("data") or {})
    if data.get("path"):
        data["path"] = Path(str(data["path"])).name  # a bundle publishes no local paths
    report = read_json_or_empty(run / "data_report.json")
    return {
        "exported_by": f"freezer-app {__version__}",
        "run": run.resolve().name,
        "checkpoint": checkpoint,
        "model": public_model(str(project.get("model") or "")),
        "pretrained": bool(project.get("pretrained")),
        "weights": Path(str(project["weights"])).name if project.get("weights") else None,
        "classes": data.get("classes"),
        "data_summary": {
            "train_images": dict(zip(report.get("classes", []), report.get("train_counts", []))),
            "val_images": dict(zip(report.get("classes", []), report.get("val_counts", []))),
        }
        if report
        else None,
        "plan": project.get("plan"),
        "train": project.get("train"),
        "data": data,
        "steps": steps[-1]["step"] if steps else (epochs[-1]["step"] if epochs else 0),
        "epochs_completed": len(epochs),
        "final_metrics": epochs[-1] if epochs else None,
        "best_metrics": max(epochs, key=score) if epochs else None,
        "frozen_check": checks[-1] if checks else None,
    }


def public_model(model: str) -> str:
    """A model string fit to publish: library names as they are; a file or folder by its
    name alone (FILE.py:CALLABLE keeps its callable)."""
    if not model or model.startswith(("timm:", "torchvision:", "hf-hub:")) or "/" not in model:
        return model
    head, colon, factory = model.rpartition(":") if ".py:" in model else (model, "", "")
    return Path(head).name + colon + factory


def read_json_or_empty(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------- targets
def default_export_path(source: str | Path, fmt: str, checkpoint: str = "final") -> Path:
    """RUN_DIR/export/NAME for a run folder; other sources need an explicit path."""
    _check_format(fmt)
    path = Path(str(source)).expanduser()
    if not is_run_folder(path) and not path.exists() and ":" not in str(source):
        raise ExportError(  # a path, not a model name: say that first
            f"No run folder, bundle or weights file at {source}.",
            "Check the path (freezer-app runs lists the runs in a folder).",
        )
    if not is_run_folder(path):
        raise ExportError(
            f"Say where to write the export of {source}.",
            "Pass --out PATH (the default RUN_DIR/export/... applies to run folders only).",
        )
    name = DEFAULT_NAMES[fmt]
    if checkpoint != "final":
        stem, dot, ext = name.partition(".")
        name = f"{stem}-{checkpoint}{dot}{ext}"
    return path / "export" / name


def export_targets(fmt: str, out: str | Path) -> list[Path]:
    """The paths an export to `out` writes (a folder, or one or two files)."""
    _check_format(fmt)
    out = Path(out).expanduser()
    if fmt == "code" and out.suffix == ".py":
        return [out, out.with_suffix(".json")]
    if fmt == "pth":
        return [out, pth_config_path(out)]
    return [out]


def pth_config_path(out: Path) -> Path:
    """MODEL.pth's description (labels, preprocessing): MODEL.config.json beside it (a folder
    may hold several exports, and a config.json there may be someone else's)."""
    return out.with_name(out.stem + ".config.json")


def existing_targets(fmt: str, out: str | Path) -> list[Path]:
    """Targets that exist already: the GUI asks before passing force=True."""
    return [t for t in export_targets(fmt, out) if t.exists() or t.is_symlink()]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}.", f"Use one of: {', '.join(FORMATS)}.")


def is_folder_export(fmt: str, out: str | Path) -> bool:
    return fmt in ("bundle", "triton") or (fmt == "code" and Path(out).suffix != ".py")


def write_marker(folder: Path, fmt: str, files: list[str]) -> None:
    """The marker of a folder export, written last into its temporary folder."""
    write_json(
        folder / MARKER,
        {
            "written_by": f"freezer-app {__version__}",
            "format": fmt,
            "files": sorted(files),
            "note": "Freezer wrote this folder: `freezer-app export --force` may replace it, "
            "unless it holds files other than these.",
        },
    )


def _read_marker(folder: Path) -> dict[str, Any] | None:
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    data = _read_json_or_none(marker)
    if data is None or not isinstance(data.get("format"), str):
        return None
    if not isinstance(data.get("files"), list):
        return None
    return data


def _names(entries: list[str], limit: int = 5) -> str:
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _not_our_folder(fmt: str, folder: Path) -> str | None:
    """Why `folder` is not a previous `fmt` export Freezer wrote (None: it is, or it is empty)."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError as e:
        return f"is a folder Freezer cannot list ({reason_for(e.errno, str(e))})"
    if not entries:
        return None
    marker = _read_marker(folder)
    count = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {_names(entries)}"
    if marker is None:
        return f"is a folder Freezer did not write (no {MARKER} marker; {count})"
    if marker["format"] != fmt:
        return f"holds a Freezer {marker['format']} export, not a {fmt} one"
    listed = {str(f) for f in marker["files"]} | {MARKER}
    extra = []
    # Every file below it (a Triton repository nests NAME/1/model.onnx) must be one it listed.
    for root, dirs, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        for d in dirs:
            if (Path(root) / d).is_symlink():
                extra.append(str(base / d))
        for f in files:
            rel = (base / f).as_posix()
            if f in OS_LITTER:
                continue
            if rel not in listed or (Path(root) / f).is_symlink():
                extra.append(rel)
    if extra:
        return (
            f"is a {fmt} export Freezer wrote, but it now also holds what Freezer did not "
            f"write: {_names(extra)}"
        )
    return None


def replace_refusal(fmt: str, out: str | Path) -> ExportError | None:
    """The error for a target that no export may replace, --force or not (None: there is no
    target yet, or --force may replace it). The GUI shows it instead of asking "Replace?"."""
    hint = (
        "It was left as it is, with or without --force: Freezer replaces only a previous export "
        "of the same kind that it wrote. Choose another --out (a new name), or move it away "
        "yourself first."
    )
    wants_dir = is_folder_export(fmt, out)
    for target in export_targets(fmt, out):
        problem: str | None = None
        run = _run_folder_holding(target)
        if run is not None:
            # A run's own files (project.json, weights, checkpoints) are never export targets;
            # its export/ folder is where exports of it go.
            problem = f"is inside the run folder {run}, which only its run writes"
        elif target.is_symlink():
            problem = f"is a symbolic link (to {os.readlink(target)})"
        elif not target.exists():
            continue
        elif wants_dir:
            problem = (
                f"is a file, and a {fmt} export is a folder"
                if not target.is_dir()
                else _not_our_folder(fmt, target)
            )
        elif target.is_dir():
            problem = f"is a folder, and a {fmt} export is a single file"
        elif not target.is_file():
            problem = "is not a regular file (a device, pipe or socket)"
        if problem:
            return ExportError(f"{target} {problem}.", hint)
    return None


def _run_folder_holding(target: Path) -> Path | None:
    """The run folder `target` would land in (outside its export/ folder), if any."""
    target = Path(target).expanduser().absolute()
    for parent in target.parents:
        # A run wrote it (a saved project's folder holds a project.json too, but no logs).
        if is_run_folder(parent) and (parent / "metrics.jsonl").exists():
            inside = target.relative_to(parent).parts
            return None if inside and inside[0] == "export" else parent
    return None


def check_targets(fmt: str, out: Path, force: bool) -> None:
    """Refuse a target no export may replace; ask for force to replace a previous export."""
    refusal = replace_refusal(fmt, out)
    if refusal is not None:
        raise refusal
    existing = existing_targets(fmt, out)
    if existing and not force:
        raise TargetExistsError(str(existing[0]))


# ---------------------------------------------------------------------- write failures
class ExportWriteError(ExportError, WriteError):
    """An export could not be written (disk full, permission denied, ...); nothing was kept."""


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _size(n: float) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} KB"


def _needed_bytes(fmt: str, src: ExportSource) -> int | None:
    """About how much an export takes on disk: the weights, plus a little."""
    if fmt == "code":
        return None
    tensors = src.loaded.module.state_dict().values()
    return sum(t.numel() * t.element_size() for t in tensors) + 64_000


def _free_bytes(path: Path) -> int | None:
    for folder in (path.parent, *path.parent.parents):
        if folder.is_dir():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _write_failed(
    fmt: str, out: Path, src: ExportSource, code: int | None, existed: bool, detail: str
) -> ExportWriteError:
    needed, free = _needed_bytes(fmt, src), _free_bytes(out)
    if code in (None, errno.EIO) and needed is not None and free is not None and free < needed:
        code = errno.ENOSPC  # torch's C++ writer names no error; the missing room does
    message = f"Could not write the {fmt} export {out}: {reason_for(code, detail)}"
    if code in _NO_ROOM:
        room = [f"it needs about {_size(needed)}"] if needed is not None else []
        if free is not None:
            room.append(f"{_size(free)} is free on the disk holding {out.parent}")
        message += f" ({'; '.join(room)})" if room else ""
        todo = "Free some space there or choose another --out, then export again."
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        message += f" (in {out.parent})"
        todo = "Choose a folder you can write to (--out), then export again."
    else:
        todo = "Check the disk, or choose another --out, then export again."
    kept = (
        f"the previous export at {out} is unchanged" if existed else f"nothing was created at {out}"
    )
    error = ExportWriteError(
        message + ".",
        f"Nothing half-written was kept: its temporary files were removed and {kept}. {todo}",
    )
    error.errno, error.path = code, out
    return error


# ---------------------------------------------------------------------- progress and cancel
class Steps:
    """The steps of one writer: progress reports, and the cancel check between them."""

    def __init__(self, total: int, progress: ProgressFn | None, should_cancel: CancelFn | None):
        self.total, self.done = total, 0
        self.progress, self.should_cancel = progress, should_cancel

    def __call__(self, message: str) -> None:
        """Before each piece of work: stop here if cancelled, else report it."""
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled("Export cancelled; nothing was written.", "Start it again when ready.")
        if self.progress is not None:
            self.progress(self.done, self.total, message)
        self.done += 1

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(self.total, self.total, "done")


# ---------------------------------------------------------------------- entry point
def export(
    source: str | Path | ExportSource,
    fmt: str = "bundle",
    out: str | Path | None = None,
    *,
    force: bool = False,
    checkpoint: str = "final",
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> ExportResult:
    """Export a run folder, bundle, weights file or model in one format.

    out: the file or folder to write (default RUN_DIR/export/NAME for a run folder).
    force: replace a previous export of the same kind (only after the new one is complete);
        any other existing target is refused whatever force says (see replace_refusal).
    progress(done, total, message) is called before each step; should_cancel() is checked
    between steps (raising Cancelled, leaving nothing behind).
    Raises TargetExistsError, ExportError, ExportWriteError (disk full, permission denied: an
    ExportError and a WriteError) or Cancelled; on any of them no partial file is left.
    """
    _check_format(fmt)
    if isinstance(source, ExportSource):
        src = source
        if out is None:
            if src.kind != "run" or src.path is None:
                raise ExportError("Say where to write the export.", "Pass an output path.")
            out = default_export_path(src.path, fmt, src.checkpoint)
        out = Path(out).expanduser()
        check_targets(fmt, out, force)
    else:
        # Check the target before building the model: refusing is instant.
        out = (
            Path(out).expanduser() if out else default_export_path(source, fmt, checkpoint)
        ).absolute()
        check_targets(fmt, out, force)
        src = open_source(source, checkpoint)
    out = out.absolute()
    writer = _writer(fmt)
    model = src.loaded.module
    was_training = model.training
    model.eval()
    remove_stale_temp_files(out.parent)
    existed = bool(existing_targets(fmt, out))
    failed: tuple[int | None, str] | None = None
    try:
        result = writer(src, out, force, progress, should_cancel)
    except (ExportError, Cancelled):
        raise
    except WriteError as e:
        failed = (e.errno, e.message)
    except Exception as e:
        code = io_errno(e)
        if code is None:
            raise
        failed = (code, str(e).splitlines()[0] if str(e) else type(e).__name__)
    finally:
        model.train(was_training)
    if failed is not None:
        # Out of the except block: the library's half-written, already unlinked file is
        # closed once its traceback is gone, so the free space reported is the real one.
        gc.collect()
        raise _write_failed(fmt, out, src, failed[0], existed, failed[1])
    result.source = str(src.path) if src.path else str(src.loaded.spec)
    result.checkpoint = src.checkpoint
    if src.path is not None and is_run_folder(src.path):
        for name in ("metrics.jsonl", "frozen_check.jsonl"):
            note = read_json_lines(Path(src.path) / name).note()
            if note:
                result.notes.append(note)
    return result


def _writer(fmt: str) -> Callable[..., ExportResult]:
    """The function that writes `fmt`: writer(src, out, force, progress, should_cancel)."""
    # Imported here: the writers build on this module's ExportResult, ExportSource and Steps.
    from freezer_app.core.export import bundle, formats

    return {
        "bundle": bundle.export_bundle,
        "pth": formats.export_pth,
        "torchscript": formats.export_torchscript,
        "pt2": formats.export_pt2,
        "onnx": formats.export_onnx,
        "triton": formats.export_triton,
        "code": formats.export_code,
    }[fmt]
