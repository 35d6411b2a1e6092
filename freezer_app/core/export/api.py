"""The export entry point: what to export, where, and in which format.

``export()`` opens the source (a run folder, bundle, weights file or model string, or an
``ExportSource`` the GUI built), checks the target (an existing one is replaced only with
``force=True``), reports progress, honours cancel requests between steps, and hands the work to
the format's writer (``formats.py``, ``bundle.py``). The format table, default export paths and
the target checks the GUI asks about before exporting live here too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from freezer_app import __version__
from freezer_app.core.catalog import LoadedModel, load_model
from freezer_app.core.errors import Cancelled, ExportError, FreezerError, TargetExistsError
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.run_folder import is_run_folder, read_jsonl

FORMATS: tuple[str, ...] = ("bundle", "pth", "torchscript", "onnx", "code")
CHECKPOINTS: tuple[str, ...] = ("final", "best")
# Default names under RUN_DIR/export/ (with "-best" added for the best checkpoint).
DEFAULT_NAMES = {
    "bundle": "bundle",
    "pth": "model.pth",
    "torchscript": "model.torchscript.pt",
    "onnx": "model.onnx",
    "code": "code",
}
FORMAT_TITLES = {
    "bundle": "Bundle for timm / torchvision (safetensors + config.json)",
    "pth": "PyTorch state_dict (.pth)",
    "torchscript": "TorchScript (.pt)",
    "onnx": "ONNX (.onnx)",
    "code": "Freeze plan as code (.py + .json)",
}

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
        raise ExportError(f"Unknown checkpoint {checkpoint!r}.", "Use final or best.")
    if checkpoint == "best":
        path = run / "checkpoints" / "best.safetensors"
        hint = "No epoch has finished yet; export the final weights, or let the run go on."
    else:
        path = run / "model.safetensors"
        hint = (
            "The run has not finished (or ended with an error); export --checkpoint best, "
            "or finish the run with `freezer-app train --resume RUN_DIR`."
        )
    if not path.is_file():
        raise ExportError(f"{run} has no {checkpoint} weights ({path.name}).", hint)
    return path


def open_source(source: str | Path, checkpoint: str = "final") -> ExportSource:
    """A run folder, bundle folder, weights file or model string, ready to export.

    checkpoint: for a run folder, "final" (model.safetensors) or "best"
    (checkpoints/best.safetensors).
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
            "--checkpoint best applies to run folders only.",
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

    return {
        "exported_by": f"freezer-app {__version__}",
        "run": str(run.resolve()),
        "checkpoint": checkpoint,
        "model": project.get("model"),
        "classes": (project.get("data") or {}).get("classes"),
        "plan": project.get("plan"),
        "train": project.get("train"),
        "data": project.get("data"),
        "steps": steps[-1]["step"] if steps else (epochs[-1]["step"] if epochs else 0),
        "epochs_completed": len(epochs),
        "final_metrics": epochs[-1] if epochs else None,
        "best_metrics": max(epochs, key=score) if epochs else None,
        "frozen_check": checks[-1] if checks else None,
    }


# ---------------------------------------------------------------------- targets
def default_export_path(source: str | Path, fmt: str, checkpoint: str = "final") -> Path:
    """RUN_DIR/export/NAME for a run folder; other sources need an explicit path."""
    _check_format(fmt)
    path = Path(str(source)).expanduser()
    if not is_run_folder(path):
        raise ExportError(
            f"Say where to write the export of {source}.",
            "Pass --out PATH (the default RUN_DIR/export/... applies to run folders only).",
        )
    name = DEFAULT_NAMES[fmt]
    if checkpoint == "best":
        stem, dot, ext = name.partition(".")
        name = f"{stem}-best{dot}{ext}"
    return path / "export" / name


def export_targets(fmt: str, out: str | Path) -> list[Path]:
    """The paths an export to `out` writes (a folder, or one or two files)."""
    _check_format(fmt)
    out = Path(out).expanduser()
    if fmt == "code" and out.suffix == ".py":
        return [out, out.with_suffix(".json")]
    return [out]


def existing_targets(fmt: str, out: str | Path) -> list[Path]:
    """Targets that exist already: the GUI asks before passing force=True."""
    return [t for t in export_targets(fmt, out) if t.exists() or t.is_symlink()]


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}.", f"Use one of: {', '.join(FORMATS)}.")


def _check_targets(fmt: str, out: Path, force: bool) -> None:
    wants_dir = fmt == "bundle" or (fmt == "code" and out.suffix != ".py")
    for target in existing_targets(fmt, out):
        if not force:
            raise TargetExistsError(str(target))
        if target.is_dir() != wants_dir:
            kind = "a folder" if target.is_dir() else "a file"
            raise ExportError(
                f"{target} is {kind}; this export would replace it with "
                f"{'a folder' if wants_dir else 'a file'}.",
                "Choose another --out, or remove it first.",
            )


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
    force: replace an existing target (only after the new one is complete).
    progress(done, total, message) is called before each step; should_cancel() is checked
    between steps (raising Cancelled, leaving nothing behind).
    Raises TargetExistsError, ExportError, WriteError (disk full, permission denied) or
    Cancelled; on any of them no partial file is left.
    """
    _check_format(fmt)
    if isinstance(source, ExportSource):
        src = source
        if out is None:
            if src.kind != "run" or src.path is None:
                raise ExportError("Say where to write the export.", "Pass an output path.")
            out = default_export_path(src.path, fmt, src.checkpoint)
        out = Path(out).expanduser()
        _check_targets(fmt, out, force)
    else:
        # Check the target before building the model: refusing is instant.
        out = (
            Path(out).expanduser() if out else default_export_path(source, fmt, checkpoint)
        ).absolute()
        _check_targets(fmt, out, force)
        src = open_source(source, checkpoint)
    out = out.absolute()
    writer = _writer(fmt)
    model = src.loaded.module
    was_training = model.training
    model.eval()
    try:
        result = writer(src, out, force, progress, should_cancel)
    finally:
        model.train(was_training)
    result.source = str(src.path) if src.path else str(src.loaded.spec)
    result.checkpoint = src.checkpoint
    return result


def _writer(fmt: str) -> Callable[..., ExportResult]:
    """The function that writes `fmt`: writer(src, out, force, progress, should_cancel)."""
    # Imported here: the writers build on this module's ExportResult, ExportSource and Steps.
    from freezer_app.core.export import bundle, formats

    return {
        "bundle": bundle.export_bundle,
        "pth": formats.export_pth,
        "torchscript": formats.export_torchscript,
        "onnx": formats.export_onnx,
        "code": formats.export_code,
    }[fmt]
