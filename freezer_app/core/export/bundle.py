"""The bundle: a folder other tools load as it is.

``model.safetensors`` and a ``config.json`` in the Hugging Face / timm layout (written by timm's
own ``save_config_for_hf`` for timm models), so ``timm.create_model("local-dir:PATH",
pretrained=True)`` loads it; torchvision and user models get the same folder, with the
constructor arguments in ``config.json``'s ``model_args`` and the code to load them in the
README. The folder also holds the freeze plan (JSON and code) and the training record. Before it
is put in place the bundle is loaded the way its users will load it, and its logits compared.
Last comes the marker ``.freezer-export`` (``api.write_marker``): a later ``--force`` replaces
only a folder that holds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from freezer_app import __version__
from freezer_app.core import torchvision_compat
from freezer_app.core.catalog import (
    FILE,
    META_LABELS,
    META_MODEL,
    META_NUM_CLASSES,
    TIMM,
    TORCHVISION,
    load_model,
)
from freezer_app.core.errors import ExportError
from freezer_app.core.export.api import (
    ExportResult,
    ExportSource,
    Steps,
    check_targets,
    public_model,
    write_marker,
)
from freezer_app.core.export.formats import (
    compare,
    construction_code,
    constructor_code,
    cpu_state,
    example_input,
    freeze_plan_code,
    logits_of,
    quiet,
    transform_input,
)
from freezer_app.core.export.model_card import readme
from freezer_app.core.files import (
    atomic_dir,
    save_safetensors,
    write_bytes,
    write_json,
    write_text,
    write_with,
)
from freezer_app.core.trust import approve_copy


def bundled_model(src: ExportSource) -> str:
    """The model string the bundle records: a user's model file by the name of the copy the
    bundle carries (resolved against the bundle's folder when read back), never a local path."""
    spec = src.loaded.spec
    if spec.kind == FILE:
        return f"{Path(spec.name).name}:{spec.factory}"
    return str(spec)


def _metadata(src: ExportSource) -> dict[str, str]:
    meta = {META_MODEL: bundled_model(src), META_NUM_CLASSES: str(src.loaded.num_classes)}
    if src.loaded.label_names:
        meta[META_LABELS] = json.dumps(src.loaded.label_names)
    return meta


def _bundle_config(src: ExportSource, path: Path) -> None:
    """config.json: timm's own writer for timm models, the same layout for the others."""
    loaded = src.loaded
    data_config = {
        k: loaded.data_config[k]
        for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
        if k in loaded.data_config
    }
    freezer = {
        "model": bundled_model(src),
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
    # No timm "architecture" field: timm.create_model("local-dir:...") would take a
    # torchvision name for a timm one. Freezer reads "freezer.model"; others the loader below.
    config: dict[str, Any] = {"num_classes": loaded.num_classes}
    if loaded.spec.kind == TORCHVISION:
        config["library_name"] = "torchvision"
        config["torchvision"] = {
            "model": loaded.spec.name,
            "loader": torchvision_compat.loader_code(
                loaded.spec.name, loaded.num_classes, transform_input(src)
            ),
            "weights": "model.safetensors (safetensors.torch.load_file)",
        }
    else:
        config["library_name"] = "pytorch"
        config["factory"] = public_model(str(loaded.spec))
    if loaded.spec.kind == TORCHVISION:
        # Constructor arguments beyond num_classes (as timm's model_args): without them the
        # state_dict of GoogLeNet or Inception v3 does not load, or the logits differ.
        model_args = torchvision_compat.loader_kwargs(loaded.spec.name, transform_input(src))
        if model_args:
            config["model_args"] = model_args
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

        with quiet():
            reloaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
        how = "timm.create_model('local-dir:...', pretrained=True)"
    elif spec.kind == TORCHVISION:
        import torchvision
        from safetensors.torch import load_file

        # The same call as the README's loading code.
        kwargs = torchvision_compat.loader_kwargs(spec.name, transform_input(src))
        with quiet():
            reloaded = torchvision.models.get_model(spec.name, num_classes=n, **kwargs)
        try:
            reloaded.load_state_dict(load_file(str(folder / "model.safetensors")))
        except RuntimeError as e:
            raise ExportError(
                f"The bundle's weights do not load into {constructor_code(src)}: "
                f"{str(e).splitlines()[0]}",
                "Nothing was written. Export the pth or ONNX format instead.",
            ) from None
        how = f"{constructor_code(src)} + safetensors"
    else:
        reloaded = load_model(str(folder)).module
        how = "Freezer (your factory) + safetensors"
    reloaded.eval()
    x = example_input(src, 2, seed=1)
    diff = compare(logits_of(src.loaded.module, x), logits_of(reloaded, x), "reloaded bundle")
    return diff, how


def _loading_code(src: ExportSource, folder: Path) -> str:
    spec, n = src.loaded.spec, src.loaded.num_classes
    # Paths relative to the bundle (run it from this folder): it may be copied or pushed.
    path = "."
    if spec.kind == TIMM:
        return f"""import timm
import torch
from PIL import Image

# From this folder; elsewhere "local-dir:PATH/TO/IT", or "hf-hub:USER/REPO" once pushed.
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

folder = "{path}"  # this folder (or where it was downloaded to)
{torchvision_compat.loader_code(spec.name, n, transform_input(src))}
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
    construction = "\n".join(construction_code(src, model_dir=path))
    return f"""{construction}
from safetensors.torch import load_file

model.load_state_dict(load_file("{path}/model.safetensors"))
model.eval()
# Preprocessing: see pretrained_cfg in config.json (input size, mean, std, crop).
"""


def export_bundle(src, out, force, progress, should_cancel) -> ExportResult:
    steps = Steps(6, progress, should_cancel)
    loaded = src.loaded
    names = ["model.safetensors", "config.json"]
    with atomic_dir(out, replace=force) as tmp:
        steps("writing model.safetensors")
        save_safetensors(cpu_state(loaded.module), tmp / "model.safetensors", _metadata(src))
        if loaded.spec.kind == FILE:
            # The model's own code travels with it: the bundle loads on another machine.
            model_file = Path(loaded.spec.name)
            try:
                code = model_file.read_bytes()
            except OSError as e:
                raise ExportError(
                    f"The model file {model_file} cannot be read ({e.strerror or e}); the bundle "
                    "carries a copy of it.",
                    "Put the file back where the run found it, or export the pth format.",
                ) from None
            write_bytes(tmp / model_file.name, code)
            # The same code already built this model: the bundle's check may build it again.
            approve_copy(model_file, tmp / model_file.name)
            names.append(model_file.name)
        steps("writing config.json")
        _bundle_config(src, tmp / "config.json")
        steps("writing the freeze plan and training record")
        if src.plan is not None:
            write_json(tmp / "freeze_plan.json", src.plan.to_dict())
            write_text(tmp / "freeze_plan.py", freeze_plan_code(src, model_dir="."))
            names += ["freeze_plan.json", "freeze_plan.py"]
        if src.training:
            write_json(tmp / "training.json", src.training)
            names.append("training.json")
        steps("checking that the bundle loads")
        diff, how = _bundle_check(src, tmp)
        steps("writing README.md")
        write_text(tmp / "README.md", readme(src, _loading_code(src, out), how))
        names.append("README.md")
        steps("finishing")
        write_marker(tmp, "bundle", [Path(n).name for n in names])
        # Checked again just before the swap: whatever is there now must still be ours.
        check_targets("bundle", out, force)
    if loaded.spec.kind == FILE:
        # In place under its final name, the copy is still the code this process runs.
        approve_copy(loaded.spec.name, out / Path(loaded.spec.name).name)
    steps.finish()
    spec = loaded.spec
    if spec.kind == TIMM:
        load = f"timm.create_model('local-dir:{out}', pretrained=True)"
    elif spec.kind == TORCHVISION:
        load = f"{constructor_code(src)} + safetensors.torch.load_file (code in README.md)"
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
