"""The single-file formats (pth, TorchScript, ONNX) and the freeze plan as code, with the
helpers every writer shares to reload an export and compare its logits with the model's.

Each writer is ``writer(src, out, force, progress, should_cancel) -> ExportResult``; ``api.export``
picks one by format name.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import math
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from freezer_app import __version__
from freezer_app.core import files as file_io
from freezer_app.core import torchvision_compat
from freezer_app.core.catalog import FILE, TIMM, TORCHVISION
from freezer_app.core.errors import ExportError
from freezer_app.core.export.api import (
    ExportResult,
    ExportSource,
    Steps,
    check_targets,
    pth_config_path,
    write_marker,
)
from freezer_app.core.files import (
    atomic_dir,
    atomic_path,
    io_errno,
    torch_save,
    write_bytes,
    write_text,
)
from freezer_app.core.freeze import FreezePlan, plan_code, resolve
from freezer_app.core.tree import ModelTree

ONNX_HINT = "pip install freezer-app[onnx]"


# ---------------------------------------------------------------------- helpers
def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu") for k, v in module.state_dict().items()}


def input_size(src: ExportSource) -> tuple[int, int, int]:
    size = tuple(int(s) for s in src.loaded.data_config.get("input_size", (3, 224, 224)))
    return (size[0], size[1], size[2])


def example_input(src: ExportSource, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *input_size(src), generator=g)


def logits_of(module: Any, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = module(x)
    if not isinstance(y, torch.Tensor):
        raise ExportError(
            f"The model returns {type(y).__name__}, not a tensor of logits.",
            "Export a model whose forward() returns one tensor.",
        )
    return y.detach().float().cpu()


def compare(expected: torch.Tensor, got: torch.Tensor, what: str) -> float:
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
def quiet():
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


def serving_config(src: ExportSource) -> dict[str, Any]:
    """What whoever serves an export needs besides the weights: the labels and the
    preprocessing (input size, mean/std, interpolation, crop), and how the architecture is
    built. Carried inside the ONNX, TorchScript and torch.export files, beside a .pth."""
    loaded = src.loaded
    data = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in loaded.data_config.items()
        if k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    }
    return {
        "num_classes": loaded.num_classes,
        "label_names": list(src.label_names),
        **data,
        "model": str(loaded.spec) if loaded.spec.kind != FILE else Path(loaded.spec.name).name,
        "library": loaded.spec.kind,
        "constructor": constructor_code(src),
        "exported_by": f"freezer-app {__version__}",
    }


def serving_config_json(src: ExportSource) -> str:
    return json.dumps(serving_config(src), indent=2) + "\n"


# ---------------------------------------------------------------------- pth
def export_pth(src, out, force, progress, should_cancel) -> ExportResult:
    steps = Steps(2, progress, should_cancel)
    steps("writing the state_dict")
    model = src.loaded.module
    config_path = pth_config_path(out)
    with atomic_path(out) as tmp, atomic_path(config_path) as config_tmp:
        torch_save(cpu_state(model), tmp)
        steps("reloading and checking")
        # Read back as its users will, into a copy of the architecture.
        state = torch.load(tmp, map_location="cpu", weights_only=True)
        copy_ = copy.deepcopy(model).eval()
        copy_.load_state_dict(state)
        check = example_input(src, 3, seed=1)
        diff = compare(logits_of(model, check), logits_of(copy_, check), "reloaded .pth")
        file_io.write_raw(config_tmp, serving_config_json(src).encode("utf-8"))
    steps.finish()
    return ExportResult(
        "pth",
        str(out),
        [str(out), str(config_path)],
        [
            f"state_dict reloaded with torch.load(weights_only=True) and checked: max |diff| "
            f"{diff:.2g}",
            "a plain state_dict: torch.load(PATH, weights_only=True), then "
            f"model.load_state_dict(...) into {constructor_code(src)}",
            f"labels and preprocessing in {config_path.name}",
        ],
        validated=True,
        max_abs_diff=diff,
    )


# ---------------------------------------------------------------------- TorchScript
def export_torchscript(src, out, force, progress, should_cancel) -> ExportResult:
    steps = Steps(3, progress, should_cancel)
    model = src.loaded.module
    steps("tracing the model")
    example = example_input(src, 2)
    try:
        with quiet():
            traced = torch.jit.trace(copy.deepcopy(model).eval(), example, check_trace=False)
    except Exception as e:
        raise ExportError(
            f"TorchScript tracing failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "Try the ONNX or bundle format instead.",
        ) from None
    steps("writing and reloading")
    # Serialised in memory and written by Python: torch's C++ file writer aborts the whole
    # process when the disk fills up.
    buffer = io.BytesIO()
    config = serving_config_json(src)
    with quiet():
        torch.jit.save(traced, buffer, _extra_files={"config.json": config})
        data = buffer.getvalue()
        extra = {"config.json": ""}
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu", _extra_files=extra)
    if json.loads(extra["config.json"]) != json.loads(config):
        raise ExportError("The TorchScript file lost its config.json.", "Report this, please.")
    check = example_input(src, 3, seed=1)
    diff = compare(logits_of(model, check), logits_of(loaded, check), "reloaded TorchScript")
    steps("finishing")
    write_bytes(out, data)
    steps.finish()
    c, h, w = input_size(src)
    return ExportResult(
        "torchscript",
        str(out),
        [str(out)],
        [
            f"TorchScript reloaded with torch.jit.load and checked: max |diff| {diff:.2g}",
            f"traced at {c}x{h}x{w} input: any batch size works; other image sizes may not",
            "labels and preprocessing in its extra file config.json "
            '(torch.jit.load(PATH, _extra_files={"config.json": ""}))',
        ],
        validated=True,
        max_abs_diff=diff,
    )


# ---------------------------------------------------------------------- torch.export
def export_pt2(src, out, force, progress, should_cancel) -> ExportResult:
    """torch.export's ExportedProgram with a dynamic batch axis (the successor of TorchScript),
    with config.json as an extra file; reloaded with torch.export.load and compared."""
    steps = Steps(3, progress, should_cancel)
    model = copy.deepcopy(src.loaded.module).eval()
    steps("exporting with torch.export")
    batch = torch.export.Dim("batch", min=1, max=65_536)
    try:
        with quiet():
            program = torch.export.export(
                model, (example_input(src, 2),), dynamic_shapes=({0: batch},)
            )
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ExportError(
            f"torch.export cannot capture this model: {type(e).__name__}: {first}",
            "Try the TorchScript, ONNX or bundle format instead.",
        ) from None
    steps("writing and reloading")
    config = serving_config_json(src)
    buffer = io.BytesIO()
    with quiet():
        torch.export.save(program, buffer, extra_files={"config.json": config})
        data = buffer.getvalue()
        extra = {"config.json": ""}
        loaded = torch.export.load(io.BytesIO(data), extra_files=extra).module()
    if json.loads(extra["config.json"]) != json.loads(config):
        raise ExportError("The .pt2 file lost its config.json.", "Report this, please.")
    check = example_input(src, 3, seed=1)  # another batch size than the one traced
    diff = compare(logits_of(model, check), logits_of(loaded, check), "reloaded .pt2 program")
    steps("finishing")
    write_bytes(out, data)
    steps.finish()
    c, h, w = input_size(src)
    return ExportResult(
        "pt2",
        str(out),
        [str(out)],
        [
            f"ExportedProgram reloaded with torch.export.load(PATH).module() and checked on "
            f"another batch size: max |diff| {diff:.2g}",
            f"input batch x {c} x {h} x {w} (dynamic batch); labels and preprocessing in its "
            'extra file config.json (torch.export.load(PATH, extra_files={"config.json": ""}))',
        ],
        validated=True,
        max_abs_diff=diff,
    )


# ---------------------------------------------------------------------- ONNX
def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _onnx_export(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """Write ONNX: torch.export's (dynamo) exporter when onnxscript is installed, with a dynamic
    batch and, where the model allows, dynamic height and width (Dim.AUTO keeps an axis static
    when the model needs it, instead of failing); the TorchScript-based exporter (dynamic batch
    only, deprecated in torch 2.x) as the fallback. Returns which exporter wrote it, and why."""
    if importlib.util.find_spec("onnx") is None:
        raise ExportError(
            "ONNX export needs the onnx package, which is not installed.",
            f"Install it with: {ONNX_HINT}",
        )
    names = {"input_names": ["input"], "output_names": ["logits"]}
    newer_failed = ""
    if importlib.util.find_spec("onnxscript") is not None:
        auto = torch.export.Dim.AUTO
        try:
            with quiet():
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    dynamo=True,
                    external_data=False,
                    dynamic_shapes=({0: auto, 2: auto, 3: auto},),
                    **names,
                )
            return "torch.export-based exporter"
        except Exception as e:
            if io_errno(e) is not None:
                raise  # the file could not be written (disk full...): not the exporter's fault
            newer_failed = _first_line(e)
    try:
        with quiet(), _native_stderr_silenced():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                **names,
            )
    except Exception as legacy:
        if io_errno(legacy) is not None:
            raise
        if not newer_failed:
            raise ExportError(
                f"ONNX export failed: {_first_line(legacy)}",
                "The newer exporter may handle this model: pip install onnxscript (or "
                f"{ONNX_HINT}), then try again.",
            ) from None
        raise ExportError(
            f"ONNX export failed with both exporters: {newer_failed}; then {_first_line(legacy)}",
            "Try the TorchScript or bundle format instead.",
        ) from None
    if newer_failed:
        return f"TorchScript-based exporter (the torch.export-based one failed: {newer_failed})"
    return f"TorchScript-based exporter (onnxscript is not installed: {ONNX_HINT})"


def onnx_input_shape(path: Path) -> list[int | str]:
    """The input's dimensions as the file declares them: a number, or a symbol when dynamic."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def describe_shape(shape: list[int | str]) -> str:
    """'batch x 3 x H x W (dynamic batch, height, width)' from onnx_input_shape()."""
    axes = ("batch", "channels", "height", "width")
    dynamic = [axes[i] for i, d in enumerate(shape) if isinstance(d, str) and i < len(axes)]
    shown = " x ".join(
        (("batch", "C", "H", "W")[i] if i < 4 else str(d)) if isinstance(d, str) else str(d)
        for i, d in enumerate(shape)
    )
    return f"{shown} (dynamic {', '.join(dynamic)})" if dynamic else f"{shown} (static)"


def _describe_onnx(path: Path, src: ExportSource) -> None:
    """The labels (a JSON list) and the whole serving config in the model's metadata_props,
    where onnxruntime's `get_modelmeta().custom_metadata_map` finds them."""
    import onnx

    model = onnx.load(str(path))
    props = {"labels": json.dumps(list(src.label_names)), "config": serving_config_json(src)}
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def _write_onnx(src: ExportSource, model: nn.Module, path: Path, steps: Steps) -> tuple:
    """ONNX of `model` at `path`, described (metadata_props) and run with onnxruntime when it
    is installed: on a batch of 3 and, when height and width are dynamic, at a second size too.
    Returns (notes, validated, max |diff|)."""
    notes: list[str] = []
    validated, diff = False, None
    steps("exporting to ONNX")
    how = _onnx_export(model, example_input(src, 2), path)
    _describe_onnx(path, src)
    shape = onnx_input_shape(path)
    steps("validating with onnxruntime")
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        check = example_input(src, 3, seed=1)
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: check.numpy()})[0]
        except Exception as e:
            raise ExportError(
                f"onnxruntime cannot run the exported model: {_first_line(e)}",
                "Nothing was written. Try the TorchScript or bundle format instead.",
            ) from None
        diff = compare(logits_of(model, check), torch.from_numpy(got).float(), "ONNX model")
        validated = True
        notes.append(f"ONNX validated with onnxruntime on a batch of 3: max |diff| {diff:.2g}")
        if len(shape) == 4 and isinstance(shape[2], str) and isinstance(shape[3], str):
            notes.append(_check_other_size(model, session, check))
    else:
        notes.append(f"not validated: onnxruntime is not installed ({ONNX_HINT})")
    notes.append(f"input 'input' ({describe_shape(shape)}), output 'logits'; {how}")
    return notes, validated, diff


def _check_other_size(model: nn.Module, session: Any, check: torch.Tensor) -> str:
    """A dynamic height/width is only a promise until the file runs at another size and
    matches the model there."""
    h, w = check.shape[2], check.shape[3]
    other = torch.nn.functional.interpolate(check, size=(h + 32, w + 32), mode="bilinear")
    try:
        expected = logits_of(model, other)
    except Exception:
        return f"the model itself does not run at {h + 32} x {w + 32}: use {h} x {w} inputs"
    try:
        got = session.run(None, {session.get_inputs()[0].name: other.numpy()})[0]
    except Exception as e:
        raise ExportError(
            f"the ONNX file declares a dynamic height and width but fails at {h + 32} x "
            f"{w + 32}: {_first_line(e)}",
            "Nothing was written. Try the TorchScript or bundle format instead.",
        ) from None
    other_diff = compare(expected, torch.from_numpy(got).float(), "ONNX model (other size)")
    return f"also matches at {h + 32} x {w + 32}: max |diff| {other_diff:.2g}"


def export_onnx(src, out, force, progress, should_cancel) -> ExportResult:
    steps = Steps(3, progress, should_cancel)
    model = copy.deepcopy(src.loaded.module).eval()
    with atomic_path(out) as tmp:
        notes, validated, diff = _write_onnx(src, model, tmp, steps)
        steps("finishing")
    steps.finish()
    notes.append("labels and preprocessing in its metadata_props: 'labels' (JSON list), 'config'")
    return ExportResult("onnx", str(out), [str(out)], notes, validated=validated, max_abs_diff=diff)


# ---------------------------------------------------------------------- Triton
TRITON_MAX_BATCH = 64


def triton_name(src: ExportSource) -> str:
    """The model's name in the repository: letters, digits, - and _ only."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", src.name or src.loaded.spec.name).strip("_")
    return name or "model"


def triton_config(src: ExportSource, name: str) -> str:
    """config.pbtxt for Triton's onnxruntime backend: FP32 NCHW input, logits with labels."""
    c, h, w = input_size(src)
    return "\n".join(
        [
            f'name: "{name}"',
            'backend: "onnxruntime"',
            f"max_batch_size: {TRITON_MAX_BATCH}",
            "input [",
            "  {",
            '    name: "input"',
            "    data_type: TYPE_FP32",
            f"    dims: [ {c}, {h}, {w} ]",
            "  }",
            "]",
            "output [",
            "  {",
            '    name: "logits"',
            "    data_type: TYPE_FP32",
            f"    dims: [ {src.loaded.num_classes} ]",
            '    label_filename: "labels.txt"',
            "  }",
            "]",
            "dynamic_batching { }",
            "",
        ]
    )


def export_triton(src, out, force, progress, should_cancel) -> ExportResult:
    """A Triton model repository: NAME/config.pbtxt, NAME/labels.txt, NAME/1/model.onnx."""
    steps = Steps(4, progress, should_cancel)
    model = copy.deepcopy(src.loaded.module).eval()
    name = triton_name(src)
    files = [f"{name}/config.pbtxt", f"{name}/labels.txt", f"{name}/1/model.onnx"]
    with atomic_dir(out, replace=force) as tmp:
        (tmp / name / "1").mkdir(parents=True)
        notes, validated, diff = _write_onnx(src, model, tmp / name / "1" / "model.onnx", steps)
        steps("writing config.pbtxt and labels.txt")
        write_text(tmp / name / "config.pbtxt", triton_config(src, name))
        write_text(tmp / name / "labels.txt", "".join(f"{label}\n" for label in src.label_names))
        write_marker(tmp, "triton", files)
        check_targets("triton", out, force)  # again, just before the swap
    steps.finish()
    notes.append(
        f"serve it with: tritonserver --model-repository {out} (model '{name}', "
        f"onnxruntime backend, batches up to {TRITON_MAX_BATCH}, labels in labels.txt)"
    )
    return ExportResult(
        "triton",
        str(out),
        [str(out / f) for f in files],
        notes,
        validated=validated,
        max_abs_diff=diff,
    )


# ---------------------------------------------------------------------- code
def transform_input(src: ExportSource) -> bool | None:
    """torchvision's transform_input flag of the model (not in its state_dict), if it has one."""
    spec = src.loaded.spec
    if spec.kind != TORCHVISION:
        return None
    return torchvision_compat.transform_input_of(spec.name, src.loaded.module)


def constructor_code(src: ExportSource) -> str:
    """The expression that builds the architecture, ready for the model's state_dict."""
    spec, n = src.loaded.spec, src.loaded.num_classes
    if spec.kind == TIMM:
        return f"timm.create_model({spec.name!r}, num_classes={n})"
    if spec.kind == TORCHVISION:
        return torchvision_compat.constructor_code(spec.name, n, transform_input(src))
    return f"{spec.factory}(num_classes={n})"


def construction_code(src: ExportSource, model_dir: str | None = None) -> list[str]:
    """Imports and the line that builds ``model``. model_dir: where the user's model file
    is found from the code's point of view (a bundle carries a copy: "."), else its folder."""
    spec = src.loaded.spec
    if spec.kind == TIMM:
        return ["import timm", "", f"model = {constructor_code(src)}"]
    if spec.kind == TORCHVISION:
        n = src.loaded.num_classes
        return [
            "import torchvision",
            "",
            torchvision_compat.loader_code(spec.name, n, transform_input(src)),
        ]
    path = Path(spec.name)
    folder = model_dir or str(path.parent.resolve())
    if path.stem.isidentifier():
        return [
            "import sys",
            "",
            f"sys.path.insert(0, {folder!r})",
            f"from {path.stem} import {spec.factory}  # your model file",
            "",
            f"model = {constructor_code(src)}",
        ]
    # A file name that is no Python name (my-model.py) cannot be imported by name.
    return [
        "import importlib.util",
        "import os",
        "",
        f"_spec = importlib.util.spec_from_file_location({'user_model'!r}, "
        f"os.path.join({folder!r}, {path.name!r}))  # your model file",
        "_module = importlib.util.module_from_spec(_spec)",
        "_spec.loader.exec_module(_module)",
        f"{spec.factory} = _module.{spec.factory}",
        "",
        f"model = {constructor_code(src)}",
    ]


def _plan_or_fail(src: ExportSource) -> FreezePlan:
    if src.plan is None:
        raise ExportError(
            f"{src.path or src.loaded.spec} carries no freeze plan.",
            "Export the code from a run folder or a bundle Freezer wrote.",
        )
    return src.plan


def freeze_plan_code(src: ExportSource, model_dir: str | None = None) -> str:
    """freeze_plan.py: `freeze(model)` applies the plan to the user's own model (in place,
    and returns it); `build_model()` builds the architecture the plan was made for. Exec'd
    where a `model` is defined, the file freezes that model; run alone it builds one and
    freezes it; imported, it only defines the two functions. model_dir: as for
    construction_code (a bundle's script names its own copy of the model file)."""
    plan = _plan_or_fail(src)
    spec = src.loaded.spec
    name = f"{Path(spec.name).name}:{spec.factory}" if model_dir and spec.kind == FILE else spec
    tree = ModelTree(src.loaded.module, str(name))
    lines = [
        # Raw: a Windows path (C:\\Users\\...) in the name is no escape sequence.
        f'r"""Freezer freeze plan for {name} ({src.loaded.num_classes} classes): {plan.describe()}.',
        "",
        "Freeze your own model (this architecture, e.g. with your weights loaded):",
        "",
        "    from freeze_plan import freeze",
        "",
        "    freeze(model)",
        "    params = [p for p in model.parameters() if p.requires_grad]  # for the optimizer",
        "",
        'or exec(open("freeze_plan.py").read()) where `model` is defined: that model is frozen.',
        "Run alone (python freeze_plan.py), it builds the architecture with fresh weights",
        "(build_model) and freezes that.",
        '"""',
    ]
    if plan.schedule:
        lines.append("# Gradual unfreezing (see freeze_plan.json), from epoch:")
        lines += [
            f"#   {p.epoch}: {p.preset} {p.freeze or ''} {p.unfreeze or ''}" for p in plan.schedule
        ]
    lines += [
        "",
        "",
        "def freeze(model):",
        '    """Freeze `model` as the plan says, in place, and return it."""',
        *_indented(_freeze_body(plan_code(tree, resolve(plan, tree), plan))),
        "    return model",
        "",
        "",
        "def build_model():",
        '    """The architecture the plan was made for, with fresh weights."""',
        *_indented(construction_code(src, model_dir)),
        "    # To start from the fine-tuned weights of a bundle:",
        "    # from safetensors.torch import load_file",
        '    # model.load_state_dict(load_file("model.safetensors"))',
        "    return model",
        "",
        "",
        "try:",
        "    # exec'd where `model` is defined (a name lookup also sees a function's locals).",
        "    model  # noqa: B018, F821",
        "except NameError:",
        '    if __name__ == "__main__" or globals().get("__spec__") is None:',
        "        # Run alone (python freeze_plan.py, runpy.run_path), not imported: build one.",
        "        model = freeze(build_model())",
        "else:",
        "    freeze(model)  # that model, frozen in place (it is not replaced)",
    ]
    return "\n".join(lines) + "\n"


def _freeze_body(code: str) -> list[str]:
    """The lines of plan_code that set requires_grad (and hold frozen norms in eval), to run
    inside freeze(model): blank lines single, the optimizer advice (in the docstring) left out."""
    lines = code.rstrip("\n").split("\n")
    advice = next(
        (i for i, line in enumerate(lines) if line.startswith("# Give the optimizer")), None
    )
    if advice is not None:
        lines = lines[:advice]
    body: list[str] = []
    for line in lines:
        if line.strip() or (body and body[-1].strip()):
            body.append(line)
    while body and not body[-1].strip():
        body.pop()
    return body


def _indented(lines: list[str]) -> list[str]:
    return [f"    {line}" if line.strip() else "" for line in lines]


def export_code(src, out, force, progress, should_cancel) -> ExportResult:
    plan = _plan_or_fail(src)
    steps = Steps(2, progress, should_cancel)
    steps("writing the freeze plan")
    code = freeze_plan_code(src)
    plan_json = plan.to_json() + "\n"
    if out.suffix == ".py":
        json_path = out.with_suffix(".json")
        # Both files complete under temporary names first, then both renamed: a failure
        # leaves the previous pair (or nothing) in place, never one old and one new file.
        with atomic_path(out) as py_tmp, atomic_path(json_path) as json_tmp:
            file_io.write_raw(py_tmp, code.encode("utf-8"))
            steps("writing the plan as JSON")
            file_io.write_raw(json_tmp, plan_json.encode("utf-8"))
        files = [out, json_path]
    else:
        with atomic_dir(out, replace=force) as tmp:
            write_text(tmp / "freeze_plan.py", code)
            steps("writing the plan as JSON")
            write_text(tmp / "freeze_plan.json", plan_json)
            write_marker(tmp, "code", ["freeze_plan.py", "freeze_plan.json"])
            check_targets("code", out, force)  # again, just before the swap
        files = [out / "freeze_plan.py", out / "freeze_plan.json"]
    steps.finish()
    return ExportResult(
        "code",
        str(out),
        [str(f) for f in files],
        [f"freeze plan '{plan.describe()}' as runnable PyTorch code and as JSON"],
    )
