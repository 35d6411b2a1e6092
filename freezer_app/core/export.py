"""Exports that other tools load as they are.

- ``bundle``       a folder in the Hugging Face / timm layout: ``model.safetensors`` and a
                   ``config.json`` (written by timm's own ``save_config_for_hf``), so that
                   ``timm.create_model("local-dir:PATH", pretrained=True)`` loads it; torchvision
                   and user models get the same folder and the code to load it. The folder also
                   holds the freeze plan (JSON and code), the training settings and final
                   metrics, and a README model card.
- ``pth``          the ``state_dict``, for ``torch.load(PATH, weights_only=True)``
- ``torchscript``  a traced module, for ``torch.jit.load``
- ``onnx``         ONNX with a dynamic batch axis, validated with onnxruntime when installed
- ``code``         the freeze plan as a PyTorch snippet and as JSON

Every export is written under a temporary name and renamed when complete: a failed or
cancelled export leaves nothing behind, and an existing target is replaced only with
``force=True``. TorchScript, ONNX and bundle exports are reloaded and their logits compared
with the model's before they are put in place.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from freezer_app import __version__
from freezer_app.core.catalog import (
    FILE,
    META_LABELS,
    META_MODEL,
    META_NUM_CLASSES,
    TIMM,
    TORCHVISION,
    LoadedModel,
    load_model,
)
from freezer_app.core.errors import Cancelled, ExportError, FreezerError, TargetExistsError
from freezer_app.core.files import (
    atomic_dir,
    atomic_path,
    save_safetensors,
    torch_save,
    write_json,
    write_text,
    write_with,
)
from freezer_app.core.freeze import FreezePlan, plan_code, resolve
from freezer_app.core.run_folder import read_jsonl
from freezer_app.core.tree import ModelTree

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
ONNX_HINT = "pip install freezer-app[onnx]"

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


def is_run_folder(path: str | Path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and (p / "project.json").is_file() and not (p / "config.json").is_file()


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
class _Steps:
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
    writer = {
        "bundle": _export_bundle,
        "pth": _export_pth,
        "torchscript": _export_torchscript,
        "onnx": _export_onnx,
        "code": _export_code,
    }[fmt]
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


# ---------------------------------------------------------------------- helpers
def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu") for k, v in module.state_dict().items()}


def _input_size(src: ExportSource) -> tuple[int, int, int]:
    size = tuple(int(s) for s in src.loaded.data_config.get("input_size", (3, 224, 224)))
    return (size[0], size[1], size[2])


def _example(src: ExportSource, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *_input_size(src), generator=g)


def _logits(module: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = module(x)
    if not isinstance(y, torch.Tensor):
        raise ExportError(
            f"The model returns {type(y).__name__}, not a tensor of logits.",
            "Export a model whose forward() returns one tensor.",
        )
    return y.detach().float().cpu()


def _compare(expected: torch.Tensor, got: torch.Tensor, what: str) -> float:
    if tuple(expected.shape) != tuple(got.shape):
        raise ExportError(
            f"The {what} returns shape {tuple(got.shape)}, the model {tuple(expected.shape)}.",
            "This model cannot be exported in this format as it is.",
        )
    diff = float((expected - got).abs().max())
    tolerance = 1e-3 * max(1.0, float(expected.abs().max()))
    if not math.isfinite(diff) or diff > tolerance:
        raise ExportError(
            f"The {what} does not reproduce the model's outputs (max |diff| {diff:.3g}).",
            "Nothing was written. The model may use operations this format does not capture.",
        )
    return diff


@contextlib.contextmanager
def _quiet():
    """Exporters warn and print a lot; keep the terminal and JSON output clean."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _native_stderr_silenced():
    """The TorchScript-based ONNX exporter dumps its whole graph to the process's stderr (from
    C++) when it fails; the failure is reported as a message instead."""
    log_was_on = bool(torch._C._jit_is_onnx_log_enabled())
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                # Its log goes to a buffered C++ stdout by default; send it to the (silenced)
                # unbuffered stderr instead.
                torch._C._jit_set_onnx_log_output_stream("stderr")
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
        # torch's exporter switches its log on and never off again.
        torch._C._jit_set_onnx_log_enabled(log_was_on)


def _metadata(src: ExportSource) -> dict[str, str]:
    meta = {META_MODEL: str(src.loaded.spec), META_NUM_CLASSES: str(src.loaded.num_classes)}
    if src.loaded.label_names:
        meta[META_LABELS] = json.dumps(src.loaded.label_names)
    return meta


# ---------------------------------------------------------------------- pth
def _export_pth(src, out, force, progress, should_cancel) -> ExportResult:
    steps = _Steps(1, progress, should_cancel)
    steps("writing the state_dict")
    torch_save(_cpu_state(src.loaded.module), out)
    steps.finish()
    return ExportResult(
        "pth",
        str(out),
        [str(out)],
        [
            "a plain state_dict: torch.load(PATH, weights_only=True), then "
            f"model.load_state_dict(...) into {_constructor(src)}"
        ],
    )


# ---------------------------------------------------------------------- TorchScript
def _export_torchscript(src, out, force, progress, should_cancel) -> ExportResult:
    steps = _Steps(3, progress, should_cancel)
    model = src.loaded.module
    steps("tracing the model")
    example = _example(src, 2)
    try:
        with _quiet():
            traced = torch.jit.trace(copy.deepcopy(model).eval(), example, check_trace=False)
    except Exception as e:
        raise ExportError(
            f"TorchScript tracing failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "Try the ONNX or bundle format instead.",
        ) from None
    steps("writing and reloading")
    with atomic_path(out) as tmp:
        with _quiet():
            traced.save(str(tmp))
            loaded = torch.jit.load(str(tmp), map_location="cpu")
        check = _example(src, 3, seed=1)
        diff = _compare(_logits(model, check), _logits(loaded, check), "reloaded TorchScript")
        steps("finishing")
    steps.finish()
    c, h, w = _input_size(src)
    return ExportResult(
        "torchscript",
        str(out),
        [str(out)],
        [
            f"TorchScript reloaded with torch.jit.load and checked: max |diff| {diff:.2g}",
            f"traced at {c}x{h}x{w} input: any batch size works; other image sizes may not",
        ],
        validated=True,
        max_abs_diff=diff,
    )


# ---------------------------------------------------------------------- ONNX
def _onnx_export(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ONNX with a dynamic batch axis: the TorchScript-based exporter (needs only the
    onnx package), or torch.export's when that fails and onnxscript is installed."""
    if importlib.util.find_spec("onnx") is None:
        raise ExportError(
            "ONNX export needs the onnx package, which is not installed.",
            f"Install it with: {ONNX_HINT}",
        )
    names = {"input_names": ["input"], "output_names": ["logits"]}
    try:
        with _quiet(), _native_stderr_silenced():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                **names,
            )
        return "TorchScript-based exporter"
    except Exception as legacy:
        first = f"{type(legacy).__name__}: {str(legacy).splitlines()[0] if str(legacy) else ''}"
        if importlib.util.find_spec("onnxscript") is None:
            raise ExportError(
                f"ONNX export failed: {first}",
                "The newer exporter may handle this model: pip install onnxscript, then try again.",
            ) from None
    try:
        batch = torch.export.Dim("batch", min=1)
        with _quiet():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                dynamic_shapes=({0: batch},),
                **names,
            )
        return "torch.export-based exporter"
    except Exception as e:
        raise ExportError(
            f"ONNX export failed with both exporters: {first}; then "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "Try the TorchScript or bundle format instead.",
        ) from None


def _export_onnx(src, out, force, progress, should_cancel) -> ExportResult:
    steps = _Steps(3, progress, should_cancel)
    model = copy.deepcopy(src.loaded.module).eval()
    notes = []
    validated, diff = False, None
    with atomic_path(out) as tmp:
        steps("exporting to ONNX")
        how = _onnx_export(model, _example(src, 2), tmp)
        steps("validating with onnxruntime")
        if importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime

            try:
                session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
                check = _example(src, 3, seed=1)
                got = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
            except Exception as e:
                raise ExportError(
                    f"onnxruntime cannot run the exported model: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}",
                    "Nothing was written. Try the TorchScript or bundle format instead.",
                ) from None
            diff = _compare(_logits(model, check), torch.from_numpy(got).float(), "ONNX model")
            validated = True
            notes.append(f"ONNX validated with onnxruntime on a batch of 3: max |diff| {diff:.2g}")
        else:
            notes.append(f"not validated: onnxruntime is not installed ({ONNX_HINT})")
        steps("finishing")
    steps.finish()
    c, h, w = _input_size(src)
    notes.append(f"input 'input' (batch x {c} x {h} x {w}, dynamic batch), output 'logits'; {how}")
    return ExportResult("onnx", str(out), [str(out)], notes, validated=validated, max_abs_diff=diff)


# ---------------------------------------------------------------------- code
def _constructor(src: ExportSource) -> str:
    spec, n = src.loaded.spec, src.loaded.num_classes
    if spec.kind == TIMM:
        return f"timm.create_model({spec.name!r}, num_classes={n})"
    if spec.kind == TORCHVISION:
        return f"torchvision.models.get_model({spec.name!r}, num_classes={n})"
    return f"{spec.factory}(num_classes={n})"


def _construction_code(src: ExportSource) -> list[str]:
    spec = src.loaded.spec
    if spec.kind == TIMM:
        return ["import timm", "", f"model = {_constructor(src)}"]
    if spec.kind == TORCHVISION:
        return ["import torchvision", "", f"model = {_constructor(src)}"]
    path = Path(spec.name)
    return [
        "import sys",
        "",
        f"sys.path.insert(0, {str(path.parent.resolve())!r})",
        f"from {path.stem} import {spec.factory}  # your model file",
        "",
        f"model = {_constructor(src)}",
    ]


def _plan_or_fail(src: ExportSource) -> FreezePlan:
    if src.plan is None:
        raise ExportError(
            f"{src.path or src.loaded.spec} carries no freeze plan.",
            "Export the code from a run folder or a bundle Freezer wrote.",
        )
    return src.plan


def freeze_plan_code(src: ExportSource) -> str:
    """A runnable script: build the model, then freeze it as the plan says."""
    plan = _plan_or_fail(src)
    tree = ModelTree(src.loaded.module, str(src.loaded.spec))
    body = plan_code(tree, resolve(plan, tree), plan)
    header = [
        f'"""Freezer freeze plan for {src.loaded.spec} ({src.loaded.num_classes} classes)."""'
    ]
    if plan.schedule:
        header.append("# Gradual unfreezing (see freeze_plan.json), from epoch:")
        header += [
            f"#   {p.epoch}: {p.preset} {p.freeze or ''} {p.unfreeze or ''}" for p in plan.schedule
        ]
    lines = [
        *header,
        "",
        *_construction_code(src),
        "# To start from the fine-tuned weights of a bundle:",
        "# from safetensors.torch import load_file",
        '# model.load_state_dict(load_file("model.safetensors"))',
        "",
    ]
    return "\n".join(lines) + "\n" + body


def _export_code(src, out, force, progress, should_cancel) -> ExportResult:
    plan = _plan_or_fail(src)
    steps = _Steps(2, progress, should_cancel)
    steps("writing the freeze plan")
    code = freeze_plan_code(src)
    plan_json = plan.to_json() + "\n"
    if out.suffix == ".py":
        json_path = out.with_suffix(".json")
        # Both files complete under temporary names first, then both renamed: a failure
        # leaves the previous pair (or nothing) in place, never one old and one new file.
        with atomic_path(out) as py_tmp, atomic_path(json_path) as json_tmp:
            py_tmp.write_text(code)
            steps("writing the plan as JSON")
            json_tmp.write_text(plan_json)
        files = [out, json_path]
    else:
        with atomic_dir(out, replace=force) as tmp:
            write_text(tmp / "freeze_plan.py", code)
            steps("writing the plan as JSON")
            write_text(tmp / "freeze_plan.json", plan_json)
        files = [out / "freeze_plan.py", out / "freeze_plan.json"]
    steps.finish()
    return ExportResult(
        "code",
        str(out),
        [str(f) for f in files],
        [f"freeze plan '{plan.describe()}' as runnable PyTorch code and as JSON"],
    )


# ---------------------------------------------------------------------- bundle
def _bundle_config(src: ExportSource, path: Path) -> None:
    """config.json: timm's own writer for timm models, the same layout for the others."""
    loaded = src.loaded
    data_config = {
        k: loaded.data_config[k]
        for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        if k in loaded.data_config
    }
    freezer = {
        "model": str(loaded.spec),
        "library": loaded.spec.kind,
        "exported_by": f"freezer-app {__version__}",
        "checkpoint": src.checkpoint,
    }
    if loaded.spec.kind == TIMM:
        from timm.models._hub import save_config_for_hf

        model_config: dict[str, Any] = {"freezer": freezer}
        if loaded.label_names:
            model_config["label_names"] = list(loaded.label_names)

        def write(tmp: Path) -> None:
            save_config_for_hf(
                loaded.module, str(tmp), model_config=model_config, data_config=data_config
            )

        try:
            write_with(path, write)
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            raise ExportError(
                f"timm could not describe this model in config.json: {e}",
                "Export the pth or ONNX format instead.",
            ) from None
        return
    architecture = loaded.spec.name if loaded.spec.kind == TORCHVISION else str(loaded.spec)
    config: dict[str, Any] = {"architecture": architecture, "num_classes": loaded.num_classes}
    if loaded.label_names:
        config["label_names"] = list(loaded.label_names)
    config["pretrained_cfg"] = {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
        "num_classes": loaded.num_classes,
    }
    config["freezer"] = freezer
    write_json(path, config)


def _bundle_check(src: ExportSource, folder: Path) -> tuple[float, str]:
    """Load the bundle the way its users will and compare logits."""
    spec, n = src.loaded.spec, src.loaded.num_classes
    if spec.kind == TIMM:
        import timm

        with _quiet():
            reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
        how = "timm.create_model('local-dir:...', pretrained=True)"
    elif spec.kind == TORCHVISION:
        import torchvision
        from safetensors.torch import load_file

        with _quiet():
            reloaded = torchvision.models.get_model(spec.name, num_classes=n)
        reloaded.load_state_dict(load_file(str(folder / "model.safetensors")))
        how = f"torchvision.models.get_model({spec.name!r}, num_classes={n}) + safetensors"
    else:
        reloaded = load_model(str(folder)).module
        how = "Freezer (your factory) + safetensors"
    reloaded.eval()
    x = _example(src, 2, seed=1)
    diff = _compare(_logits(src.loaded.module, x), _logits(reloaded, x), "reloaded bundle")
    return diff, how


def _loading_code(src: ExportSource, folder: Path) -> str:
    spec, n = src.loaded.spec, src.loaded.num_classes
    path = str(folder)
    if spec.kind == TIMM:
        return f"""import timm
import torch
from PIL import Image

model = timm.create_model("local-dir:{path}", pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)
labels = model.pretrained_cfg["label_names"]

image = Image.open("image.jpg").convert("RGB")
with torch.no_grad():
    probs = model(transform(image).unsqueeze(0)).softmax(-1)[0]
print(labels[int(probs.argmax())], float(probs.max()))
"""
    if spec.kind == TORCHVISION:
        return f"""import json
import math

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torchvision import transforms as T

folder = "{path}"
model = torchvision.models.get_model({spec.name!r}, num_classes={n})
model.load_state_dict(load_file(f"{{folder}}/model.safetensors"))
model.eval()

config = json.load(open(f"{{folder}}/config.json"))
cfg, labels = config["pretrained_cfg"], config.get("label_names")
size = cfg["input_size"][-1]
transform = T.Compose([
    T.Resize(math.floor(size / cfg["crop_pct"]), T.InterpolationMode(cfg["interpolation"])),
    T.CenterCrop(size),
    T.ToTensor(),
    T.Normalize(cfg["mean"], cfg["std"]),
])

image = Image.open("image.jpg").convert("RGB")
with torch.no_grad():
    probs = model(transform(image).unsqueeze(0)).softmax(-1)[0]
print(labels[int(probs.argmax())], float(probs.max()))
"""
    construction = "\n".join(_construction_code(src))
    return f"""{construction}
from safetensors.torch import load_file

model.load_state_dict(load_file("{path}/model.safetensors"))
model.eval()
# Preprocessing: see pretrained_cfg in config.json (input size, mean, std, crop).
"""


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _readme(src: ExportSource, folder: Path, check_how: str) -> str:
    from freezer_app.core.telemetry import Drift, FrozenCheck

    loaded = src.loaded
    spec = loaded.spec
    library = {TIMM: "timm", TORCHVISION: "torchvision", FILE: "pytorch"}[spec.kind]
    title = src.name or spec.name
    labels = src.label_names
    dc = loaded.data_config
    lines = [
        "---",
        f"library_name: {library}",
        "tags:",
        "- image-classification",
        "- freezer-app",
        "---",
        "",
        f"# {title}",
        "",
        f"`{spec}` fine-tuned with Freezer (freezer-app) for {loaded.num_classes} "
        f"classes: {', '.join(labels)}.",
        "",
        "## Load it",
        "",
        "```python",
        _loading_code(src, folder).rstrip(),
        "```",
        "",
        f"Checked when exported: {check_how} reproduces the trained model's logits.",
        "",
        "Continue fine-tuning it with Freezer: "
        f"`freezer-app train --model {folder} --data IMAGES`, or predict: "
        f"`freezer-app predict {folder} image.jpg`.",
        "",
        "## Input",
        "",
        f"- size: {'x'.join(str(s) for s in dc.get('input_size', ()))}",
        f"- mean {list(dc.get('mean', ()))}, std {list(dc.get('std', ()))}",
        f"- interpolation: {dc.get('interpolation')}, crop_pct: {dc.get('crop_pct')}",
    ]
    if src.plan is not None:
        tree = ModelTree(loaded.module, str(spec))
        mask = resolve(src.plan, tree)
        lines += [
            "",
            "## Freeze plan",
            "",
            f"{src.plan.describe()}: {int(tree.numel[mask].sum()):,} of {tree.total_params:,} "
            f"parameters trained; BatchNorm: {src.plan.bn_policy}. "
            "See `freeze_plan.json` and `freeze_plan.py`.",
        ]
    training = src.training or {}
    if training:
        t = training.get("train") or {}
        lines += ["", "## Training", ""]
        if t:
            lines.append(
                f"- {training.get('epochs_completed')} epoch(s), {training.get('steps')} steps; "
                f"{t.get('optimizer')} lr {t.get('lr')}, batch size {t.get('batch_size')}, "
                f"weight decay {t.get('weight_decay')}, {t.get('schedule')} schedule"
            )
        for key, label in (("final_metrics", "final epoch"), ("best_metrics", "best epoch")):
            m = training.get(key)
            if m:
                lines.append(
                    f"- {label} ({m.get('epoch')}): train_loss {_fmt(m.get('train_loss'))}, "
                    f"val_loss {_fmt(m.get('val_loss'))}, val_acc {_fmt(m.get('val_acc'))}"
                )
        lines.append(f"- weights exported: {training.get('checkpoint', src.checkpoint)}")
        check = training.get("frozen_check")
        if check:
            fc = FrozenCheck(
                int(check.get("epoch", 0)),
                int(check.get("step", 0)),
                int(check.get("checked", 0)),
                [Drift(**d) for d in check.get("drifted", [])],
            )
            lines.append(f"- frozen check: {fc.summary()}")
        lines.append("- all settings: `training.json`")
    lines += [
        "",
        "## Files",
        "",
        "- `model.safetensors`: the weights (keys as `model.state_dict()`)",
        "- `config.json`: architecture, classes and preprocessing (timm / Hugging Face layout)",
    ]
    if src.plan is not None:
        lines.append("- `freeze_plan.json`, `freeze_plan.py`: which layers were frozen")
    if training:
        lines.append("- `training.json`: training settings, metrics and the frozen check")
    return "\n".join(lines) + "\n"


def _export_bundle(src, out, force, progress, should_cancel) -> ExportResult:
    steps = _Steps(6, progress, should_cancel)
    loaded = src.loaded
    names = ["model.safetensors", "config.json"]
    with atomic_dir(out, replace=force) as tmp:
        steps("writing model.safetensors")
        save_safetensors(_cpu_state(loaded.module), tmp / "model.safetensors", _metadata(src))
        steps("writing config.json")
        _bundle_config(src, tmp / "config.json")
        steps("writing the freeze plan and training record")
        if src.plan is not None:
            write_json(tmp / "freeze_plan.json", src.plan.to_dict())
            write_text(tmp / "freeze_plan.py", freeze_plan_code(src))
            names += ["freeze_plan.json", "freeze_plan.py"]
        if src.training:
            write_json(tmp / "training.json", src.training)
            names.append("training.json")
        steps("checking that the bundle loads")
        diff, how = _bundle_check(src, tmp)
        steps("writing README.md")
        write_text(tmp / "README.md", _readme(src, out, how))
        names.append("README.md")
        steps("finishing")
    steps.finish()
    spec = loaded.spec
    if spec.kind == TIMM:
        load = f"timm.create_model('local-dir:{out}', pretrained=True)"
    elif spec.kind == TORCHVISION:
        load = (
            f"torchvision.models.get_model({spec.name!r}, num_classes={loaded.num_classes}) "
            "+ safetensors.torch.load_file (code in README.md)"
        )
    else:
        load = f"your factory {spec} + safetensors.torch.load_file (code in README.md)"
    notes = [
        f"load it with {load}",
        f"reloaded with {how} and checked: max |diff| {diff:.2g}",
    ]
    return ExportResult(
        "bundle",
        str(out),
        [str(out / n) for n in names],
        notes,
        validated=True,
        max_abs_diff=diff,
    )
