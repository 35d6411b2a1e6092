"""What models exist and how to build one.

A model is named by one string, the same in the CLI, project files and the GUI:

- ``timm:NAME``         any timm architecture (``NAME`` may carry a pretrained tag, ``resnet50.a1_in1k``)
- ``torchvision:NAME``  a torchvision classification model
- ``PATH.py:CALLABLE``  the user's own factory returning an ``nn.Module``
- ``DIR``               an exported bundle (``config.json`` + ``model.safetensors``) or a run folder
- ``FILE.safetensors`` / ``FILE.pth``  weights whose architecture is recorded in them (Freezer's
  safetensors metadata) or beside them (``FILE.config.json`` of a pth export, a bundle's
  ``config.json``, a run's ``project.json``)
- ``NAME``              bare: timm first, then torchvision

Building a ``PATH.py`` model runs that file: `load_model` and `preview_model` ask their
``trust`` (core/trust.py) first. A model string given directly runs its file by default; a
``.py`` named inside a file (a project.json, a bundle's config.json, a weights file's metadata)
needs trust. Relative paths inside a file are resolved against that file's folder.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.util
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config
from timm.models import split_model_name_tag
from torch import nn

from freezer_app.core import torchvision_compat
from freezer_app.core.errors import FreezerError, ModelNotFoundError, OfflineError, WeightsError
from freezer_app.core.layout import find_head_paths
from freezer_app.core.network import download_guard, host_reachable
from freezer_app.core.project import absolute_model
from freezer_app.core.trust import USER, CodeFile, CodeTrust
from freezer_app.core.weights import (
    WEIGHT_SUFFIXES,
    check_fit,
    head_classes,
    load_weights,
    read_metadata,
    read_shapes,
    read_state_dict,
)

TIMM = "timm"
TORCHVISION = "torchvision"
FILE = "file"

# safetensors metadata keys Freezer writes so a weights file names its own architecture.
META_MODEL = "freezer.model"
META_NUM_CLASSES = "freezer.num_classes"
META_LABELS = "freezer.label_names"


@dataclass(frozen=True)
class ModelSpec:
    """An architecture: where it comes from and its name (or factory file and callable)."""

    kind: str
    name: str
    factory: str = ""
    # For a factory file: the file whose contents named it ("" when the model string did).
    named_in: str = field(default="", compare=False, repr=False)

    def __str__(self) -> str:
        if self.kind == FILE:
            return f"{self.name}:{self.factory}"
        return f"{self.kind}:{self.name}"


@dataclass
class ModelSource:
    """What a model string resolves to: an architecture, plus weights and labels if it names a
    bundle, run folder or weights file."""

    spec: ModelSpec
    weights: Path | None = None
    num_classes: int | None = None
    label_names: list[str] | None = None
    data_config: dict[str, Any] | None = None
    # torchvision's transform_input flag the weights were trained with (not in the state_dict);
    # None: not recorded, the architecture's default.
    transform_input: bool | None = None


@dataclass
class LoadedModel:
    module: nn.Module
    spec: ModelSpec
    num_classes: int
    head_paths: tuple[str, ...]
    data_config: dict[str, Any]
    label_names: list[str] | None = None
    weights_note: str = "randomly initialised"
    dropped_head_keys: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- names
@functools.cache
def torchvision_names() -> tuple[str, ...]:
    return tuple(torchvision.models.list_models(module=torchvision.models))


@functools.cache
def timm_names() -> tuple[str, ...]:
    return tuple(timm.list_models())


def all_model_names() -> list[str]:
    """Every architecture as a model string: timm's, then torchvision's."""
    return [f"{TIMM}:{n}" for n in timm_names()] + [
        f"{TORCHVISION}:{n}" for n in torchvision_names()
    ]


def search_models(query: str = "") -> list[str]:
    """Model strings containing `query` (case-insensitive; `*` and `?` work as wildcards)."""
    names = all_model_names()
    q = query.strip().lower()
    if not q:
        return names
    if any(c in q for c in "*?["):
        import fnmatch

        pattern = q if ":" in q else f"*:{q}"
        return [n for n in names if fnmatch.fnmatch(n.lower(), pattern)]
    return [n for n in names if q in n.lower()]


def _timm_known(name: str) -> bool:
    arch, _tag = split_model_name_tag(name)
    return timm.is_model(arch)


def _unknown(name: str, kind: str | None = None) -> ModelNotFoundError:
    pool = {
        TIMM: list(timm_names()),
        TORCHVISION: list(torchvision_names()),
    }.get(kind or "", list(timm_names()) + list(torchvision_names()))
    close = difflib.get_close_matches(name, pool, n=5, cutoff=0.6)
    if not close:
        close = [n for n in pool if name.lower() in n.lower()][:5]
    where = {TIMM: "timm", TORCHVISION: "torchvision"}.get(kind or "", "timm or torchvision")
    hint = (
        f"Did you mean: {', '.join(close)}?"
        if close
        else "List models with `freezer-app models SEARCH`."
    )
    return ModelNotFoundError(f"Unknown {where} model {name!r}.", hint)


def parse_model(text: str, named_in: str = "") -> ModelSpec:
    """Parse a model string naming an architecture (not a bundle or weights file).

    named_in: the file the string was read from, if any (recorded on a factory file's spec)."""
    text = text.strip()
    if not text:
        raise ModelNotFoundError(
            "No model given.", "Name one, e.g. timm:resnet18 or torchvision:resnet18."
        )
    if ".py:" in text:
        path, _, factory = text.rpartition(":")
        if not factory.isidentifier():
            raise ModelNotFoundError(
                f"{factory!r} is not a Python name.",
                "Write PATH.py:FUNCTION, e.g. mymodel.py:build.",
            )
        return ModelSpec(FILE, str(Path(path).expanduser()), factory, named_in)
    kind, sep, name = text.partition(":")
    if sep and kind == TIMM:
        if not _timm_known(name):
            raise _unknown(name, TIMM)
        return ModelSpec(TIMM, name)
    if sep and kind == TORCHVISION:
        if name not in torchvision_names():
            raise _unknown(name, TORCHVISION)
        return ModelSpec(TORCHVISION, name)
    if _timm_known(text):
        return ModelSpec(TIMM, text)
    if text in torchvision_names():
        return ModelSpec(TORCHVISION, text)
    raise _unknown(text)


def resolve_source(text: str, named_in: str = "") -> ModelSource:
    """Resolve any model string, including bundles, run folders and weights files.

    Reads files only; nothing is imported. named_in: the file `text` was read from (its
    relative paths must already be resolved against that file's folder: `absolute_model`)."""
    candidate = Path(text).expanduser()
    if named_in and not candidate.is_absolute():
        # A name read from a file is a library name, never a path in the current directory.
        return ModelSource(parse_model(text, named_in))
    if not _names_path(text):
        return ModelSource(parse_model(text, named_in))
    if not candidate.exists():
        raise WeightsError(
            f"No such file or folder: {candidate}",
            "Check the path (`freezer-app runs DIR` lists the runs in a folder). A library "
            "model is named timm:NAME or torchvision:NAME.",
        )
    if candidate.is_dir() or candidate.suffix in WEIGHT_SUFFIXES:
        return _source_from_path(candidate)
    if candidate.suffix == ".py":
        raise ModelNotFoundError(
            f"{text} names no function that builds the model.",
            f"Write PATH.py:FUNCTION, e.g. {text}:build (a function returning the nn.Module).",
        )
    raise ModelNotFoundError(
        f"{candidate} is not a model Freezer can open.",
        "A model is a run or bundle folder, a weights file ("
        + ", ".join(WEIGHT_SUFFIXES)
        + "), timm:NAME, torchvision:NAME or FILE.py:FUNCTION.",
    )


# A library prefix: timm:, torchvision:, timm's own hf-hub: and local-dir: (never a drive letter).
_PREFIX = re.compile(r"[A-Za-z][\w-]+:")


def _names_path(text: str) -> bool:
    """Whether a model string is written as a file or folder rather than a library name: an
    existing folder, or text with a path separator, a leading `.` or `~`, or the suffix of a
    weights file or .py. `timm:NAME`, `torchvision:NAME` and other `PREFIX:` forms (timm's
    `hf-hub:ORG/NAME`) are names, as is `PATH.py:CALLABLE` (a factory, built elsewhere),
    unless a file or folder of that name exists (a run folder named `exp:1`)."""
    candidate = Path(text).expanduser()
    if candidate.exists():
        return True
    if ".py:" in text or _PREFIX.match(text):
        return False
    return (
        "/" in text
        or os.sep in text
        or text.startswith((".", "~"))
        or candidate.suffix in (*WEIGHT_SUFFIXES, ".py")
    )


def _named_in(path: Path, text: str) -> tuple[str, str]:
    """A model string read from the file `path`, its relative paths resolved against its folder."""
    return absolute_model(text, path.parent), str(path)


def _source_from_path(path: Path) -> ModelSource:
    if path.is_dir():
        config = path / "config.json"
        project = path / "project.json"
        weights = next(
            (
                path / n
                for n in ("model.safetensors", "pytorch_model.bin", "model.pth")
                if (path / n).exists()
            ),
            None,
        )
        if config.exists():
            return _source_from_config(config, weights)
        if project.exists():
            return _source_from_project(project, weights)
        raise WeightsError(
            f"{path} is neither an exported bundle (config.json) nor a run folder (project.json).",
            "Open the bundle folder, the run folder, or a weights file.",
        )
    meta = read_metadata(path)
    if META_MODEL in meta:
        labels = json.loads(meta[META_LABELS]) if META_LABELS in meta else None
        n = int(meta[META_NUM_CLASSES]) if META_NUM_CLASSES in meta else None
        spec = parse_model(*_named_in(path, meta[META_MODEL]))
        # A bundle or run folder around the file knows the input size it was trained at.
        try:
            beside = _source_beside(path)
        except FreezerError:
            beside = None
        same = beside is not None and beside.spec == spec
        return ModelSource(
            spec,
            path,
            n,
            labels,
            beside.data_config if same else None,
            beside.transform_input if same else None,
        )
    beside = _source_beside(path)
    if beside is not None:
        return beside
    raise WeightsError(
        f"Cannot tell which architecture {path.name} belongs to: nothing beside it names one "
        f"({_pth_config(path).name}, config.json or project.json).",
        "Name the architecture as MODEL and give the file as its weights: MODEL --weights FILE, "
        f"e.g. `freezer-app predict timm:resnet18 --weights {path} IMAGE` (the number of "
        "classes is read from the weights).",
    )


def _architecture(text: str, named_in: str = "") -> ModelSpec:
    """The architecture a model string names; a bundle, run folder or weights file names its own."""
    if _names_path(text):
        return resolve_source(text, named_in).spec
    return parse_model(text, named_in)


def _pth_config(path: Path) -> Path:
    """MODEL.config.json: what Freezer's pth export writes beside MODEL.pth (labels,
    preprocessing, architecture; core/export `pth_config_path`)."""
    return path.with_name(path.stem + ".config.json")


def _source_beside(path: Path) -> ModelSource | None:
    """What a Freezer `FILE.config.json` beside a weights file says, else a config.json or
    project.json next to it (or one folder up)."""
    described = _source_from_pth_config(_pth_config(path), path)
    if described is not None:
        return described
    for folder in (path.parent, path.parent.parent):
        if (folder / "config.json").exists():
            return _source_from_config(folder / "config.json", path)
        if (folder / "project.json").exists():
            return _source_from_project(folder / "project.json", path)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"Cannot read {path}: {e}", "The file may be damaged.") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{path} is not a JSON object.", "The file may be damaged.")
    return data


def _kind_of(value: Any) -> str:
    """A JSON value's type in plain words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# The preprocessing Freezer reads from a config: key -> (test, expected).
_DATA_TYPES: dict[str, tuple[Any, str]] = {
    "input_size": (
        lambda v: isinstance(v, list) and len(v) == 3 and all(_is_count(x) for x in v),
        "a list of 3 whole numbers (channels, height, width)",
    ),
    "mean": (
        lambda v: isinstance(v, list) and bool(v) and all(_is_number(x) for x in v),
        "a list of numbers",
    ),
    "std": (
        lambda v: isinstance(v, list) and bool(v) and all(_is_number(x) and x > 0 for x in v),
        "a list of positive numbers",
    ),
    "interpolation": (lambda v: isinstance(v, str), "text (e.g. bicubic)"),
    "crop_pct": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "crop_mode": (lambda v: isinstance(v, str), "text (e.g. center)"),
}
_CLASS_TYPES: dict[tuple[str, str], tuple[Any, str]] = {
    ("", "num_classes"): (_is_count, "a whole number of 1 or more"),
    ("", "label_names"): (
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "a list of class names (text)",
    ),
}

# What _source_from_config reads from a bundle's config.json: (where, key) -> (test, expected).
_CONFIG_TYPES: dict[tuple[str, str], tuple[Any, str]] = {
    ("", "architecture"): (lambda v: isinstance(v, str) and bool(v), "a model name (text)"),
    **_CLASS_TYPES,
    ("", "freezer"): (lambda v: isinstance(v, dict), "an object"),
    ("", "pretrained_cfg"): (lambda v: isinstance(v, dict), "an object"),
    ("", "model_args"): (lambda v: isinstance(v, dict), "an object"),
    ("freezer", "model"): (lambda v: isinstance(v, str) and bool(v), "a model string (text)"),
    **{("pretrained_cfg", k): v for k, v in _DATA_TYPES.items()},
}

# What _source_from_pth_config reads from the MODEL.config.json of a pth export.
_PTH_CONFIG_TYPES: dict[tuple[str, str], tuple[Any, str]] = {
    **_CLASS_TYPES,
    ("", "library"): (lambda v: isinstance(v, str), "text (timm, torchvision or file)"),
    ("", "constructor"): (lambda v: isinstance(v, str), "Python code (text)"),
    **{("", k): v for k, v in _DATA_TYPES.items()},
}


def _check_config_types(
    config: dict[str, Any],
    config_path: Path,
    types: dict[tuple[str, str], tuple[Any, str]] = _CONFIG_TYPES,
    again: str = "export the bundle again",
) -> None:
    """Each value Freezer reads from config.json has the type it needs (absent and, outside
    pretrained_cfg, null are fine): a wrong one is named, instead of failing later."""
    for (where, key), (ok, expected) in types.items():
        section = config.get(where) if where else config
        if not isinstance(section, dict) or key not in section:
            continue
        value = section[key]
        if (value is None and not where) or ok(value):
            continue
        name = f"{where}.{key}" if where else key
        shown = json.dumps(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise WeightsError(
            f'{config_path}: "{name}" must be {expected}, not {shown} ({_kind_of(value)}).',
            f"Correct that value in {config_path.name}, or {again}.",
        )


def _source_from_config(config_path: Path, weights: Path | None) -> ModelSource:
    config = _read_json(config_path)
    _check_config_types(config, config_path)
    freezer = config.get("freezer", {}) if isinstance(config.get("freezer"), dict) else {}
    model = freezer.get("model") or (
        f"{TIMM}:{config['architecture']}" if "architecture" in config else None
    )
    if not model:
        raise WeightsError(f"{config_path} names no architecture.", "Re-export the bundle.")
    pcfg = config.get("pretrained_cfg") or {}
    data_config = {
        k: pcfg[k]
        for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        if k in pcfg
    }
    model_args = config.get("model_args")
    transform_input = model_args.get("transform_input") if isinstance(model_args, dict) else None
    return ModelSource(
        parse_model(*_named_in(config_path, model)),
        weights,
        config.get("num_classes"),
        config.get("label_names"),
        data_config or None,
        transform_input if isinstance(transform_input, bool) else None,
    )


def _source_from_pth_config(config_path: Path, weights: Path) -> ModelSource | None:
    """What the MODEL.config.json of Freezer's pth export says about MODEL.pth; None when
    there is none, or it is not Freezer's (no "model" and "library")."""
    if not config_path.is_file():
        return None
    config = _read_json(config_path)
    model, library = config.get("model"), config.get("library")
    if not (isinstance(model, str) and model and isinstance(library, str)):
        return None
    _check_config_types(config, config_path, _PTH_CONFIG_TYPES, "export the model again")
    constructor = config.get("constructor") or ""
    if library == FILE:
        # The export names the user's model file by name and its factory in the constructor
        # code ("build(num_classes=3)"); the file is looked for beside the config.
        factory = re.match(r"\s*([A-Za-z_]\w*)\(", constructor)
        if not factory:
            raise WeightsError(
                f'{config_path}: "constructor" does not name the factory function of {model}.',
                "Export the model again, or name it: MODEL.py:FUNCTION --weights FILE.",
            )
        model = f"{model}:{factory.group(1)}"
        py = config_path.parent / Path(model.rsplit(":", 1)[0]).name
        if not py.is_file():
            # The pth export does not copy the user's model file (a bundle does).
            raise WeightsError(
                f"{weights.name} was exported from your model file {py.name}, which is not "
                f"beside it in {config_path.parent}.",
                f"Copy {py.name} beside {weights.name} (then add --trust-code), or name it: "
                f"PATH/{py.name}:{factory.group(1)} --weights {weights}.",
            )
    flag = re.search(r"transform_input=(True|False)", constructor)
    data_config = {k: config[k] for k in _DATA_TYPES if config.get(k) is not None}
    return ModelSource(
        parse_model(*_named_in(config_path, model)),
        weights,
        config.get("num_classes"),
        config.get("label_names"),
        data_config or None,
        flag.group(1) == "True" if flag else None,
    )


def _source_from_project(project_path: Path, weights: Path | None) -> ModelSource:
    project = _read_json(project_path)
    model = project.get("model")
    if not isinstance(model, str):
        raise WeightsError(f"{project_path} names no model.", "The project file may be damaged.")
    model, named_in = _named_in(project_path, model)
    if Path(model).expanduser().resolve() == project_path.parent.resolve():
        raise WeightsError(f"{project_path} names its own folder as the model.", "Fix its model.")
    try:
        spec = _architecture(model, named_in)
    except FreezerError:
        # The run started from a bundle or weights file that has moved since; its own
        # weights name the architecture.
        meta = read_metadata(weights) if weights else {}
        if weights is None or META_MODEL not in meta:
            raise
        spec = parse_model(*_named_in(weights, meta[META_MODEL]))
    data = project.get("data") or {}
    classes = data.get("classes")
    size = data.get("image_size")
    # The run trained at this size; the rest of the data config is the model's own.
    data_config = {"input_size": (3, int(size), int(size))} if isinstance(size, int) else None
    return ModelSource(
        spec,
        weights,
        project.get("num_classes") or (len(classes) if classes else None),
        classes,
        data_config,
        _trained_transform_input(spec, model, bool(project.get("pretrained"))),
    )


def _trained_transform_input(spec: ModelSpec, model: str, pretrained: bool) -> bool | None:
    """The transform_input flag a run trained with: set by torchvision's pretrained weights, or
    carried over from the bundle, run or weights file it started from."""
    if spec.kind != TORCHVISION or not torchvision_compat.has_quirks(spec.name):
        return None
    if pretrained:
        return torchvision_compat.constructor_kwargs(spec.name, pretrained=True).get(
            "transform_input"
        )
    if not _names_path(model):
        return None
    try:
        source = resolve_source(model)
    except FreezerError:
        return None
    return source.transform_input if source.spec == spec else None


# ---------------------------------------------------------------------- building
def _import_factory(spec: ModelSpec) -> Any:
    path = Path(spec.name)
    if not path.is_file():
        raise ModelNotFoundError(
            f"Model file not found: {path}", "Check the path to your .py file."
        )
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"freezer_user_model_{digest}"
    try:
        mod_spec = importlib.util.spec_from_file_location(module_name, path)
        assert mod_spec and mod_spec.loader
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[module_name] = module
        mod_spec.loader.exec_module(module)
    except Exception as e:
        raise ModelNotFoundError(
            f"Importing {path.name} failed: {type(e).__name__}: {e}",
            "Fix the error in your model file and try again.",
        ) from e
    factory = getattr(module, spec.factory, None)
    if not callable(factory):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(spec.factory, names, n=3)
        raise ModelNotFoundError(
            f"{path.name} has no callable named {spec.factory!r}.",
            f"Did you mean: {', '.join(close)}?"
            if close
            else f"Callables in it: {', '.join(names[:10])}",
        )
    return factory


def _accepts_num_classes(factory: Any) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)


def _build_user_model(spec: ModelSpec, num_classes: int | None) -> nn.Module:
    factory = _import_factory(spec)
    kwargs = {"num_classes": num_classes} if num_classes and _accepts_num_classes(factory) else {}
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise ModelNotFoundError(
            f"{spec.factory}() in {Path(spec.name).name} raised {type(e).__name__}: {e}",
            "Fix your factory function and try again.",
        ) from e
    if not isinstance(model, nn.Module):
        raise ModelNotFoundError(
            f"{spec.factory}() returned {type(model).__name__}, not a torch.nn.Module.",
            "Return the model instance from your factory.",
        )
    if num_classes and not kwargs:
        _resize_head(model, num_classes)
    return model


def _resize_head(model: nn.Module, num_classes: int) -> None:
    """Give a user model without a num_classes argument a head of the right size."""
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(num_classes)
        return
    paths, _ = find_head_paths(model)
    for path in paths:
        head = model.get_submodule(path)
        if isinstance(head, nn.Linear) and head.out_features != num_classes:
            new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
            model.set_submodule(path, new.to(head.weight.device))


def _torchvision_state(name: str) -> dict[str, torch.Tensor]:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    online = cached.exists() or host_reachable("download.pytorch.org")
    if not online:
        raise _offline_error(f"{TORCHVISION}:{name}", "download.pytorch.org", cached.parent)
    try:
        with download_guard(True):
            return weights.get_state_dict(progress=True, check_hash=False)
    except OSError as e:
        raise _offline_error(
            f"{TORCHVISION}:{name}", "download.pytorch.org", cached.parent, e
        ) from None


def _offline_error(
    model: str, host: str, cache: Path | str, cause: Exception | None = None
) -> OfflineError:
    detail = f" ({cause})" if cause else f" ({host} is unreachable)"
    return OfflineError(
        f"Pretrained weights for {model} are not on this machine and cannot be downloaded{detail}.",
        f"Connect to the internet once to cache them (in {cache}), use a local file with "
        "--weights FILE, or train without --pretrained.",
    )


def _build_timm(spec: ModelSpec, num_classes: int | None, pretrained: bool) -> nn.Module:
    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if not pretrained:
        return timm.create_model(spec.name, **kwargs)
    online = host_reachable("huggingface.co")
    try:
        with download_guard(online):
            return timm.create_model(spec.name, pretrained=True, **kwargs)
    except RuntimeError as e:
        if "No pretrained weights" in str(e) or "no pretrained" in str(e).lower():
            raise WeightsError(
                f"timm has no pretrained weights for {spec.name!r}.",
                "Pick a tagged variant (see `freezer-app models NAME`) or train without --pretrained.",
            ) from None
        raise
    except OSError as e:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise _offline_error(
            str(spec), "huggingface.co", HF_HUB_CACHE, None if not online else e
        ) from None


def _build_torchvision(
    spec: ModelSpec, num_classes: int | None, pretrained: bool
) -> tuple[nn.Module, list[str]]:
    if not pretrained:
        kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
        kwargs.update(torchvision_compat.constructor_kwargs(spec.name, pretrained=False))
        with warnings_suppressed():
            return torchvision.models.get_model(spec.name, weights=None, **kwargs), []
    state = _torchvision_state(spec.name)
    weights = torchvision.models.get_model_weights(spec.name).DEFAULT
    n = num_classes or len(weights.meta["categories"])
    # Pretrained torchvision models may need architecture flags their weights imply.
    extra = torchvision_compat.constructor_kwargs(spec.name, pretrained=True)
    with warnings_suppressed():
        model = torchvision.models.get_model(spec.name, weights=None, num_classes=n, **extra)
    heads, _ = find_head_paths(model)
    dropped = load_weights(model, state, heads, f"torchvision weights for {spec.name}")
    torchvision_compat.strip_aux_heads(spec.name, model)
    return model, dropped


@contextlib.contextmanager
def warnings_suppressed():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _build_random(spec: ModelSpec, num_classes: int | None) -> nn.Module:
    if spec.kind == TIMM:
        return _build_timm(spec, num_classes, False)
    if spec.kind == TORCHVISION:
        return _build_torchvision(spec, num_classes, False)[0]
    return _build_user_model(spec, num_classes)


@contextlib.contextmanager
def _initialisers_skipped():
    """Make torch.nn.init functions no-ops, so building allocates but never fills tensors."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def _build_on_meta(spec: ModelSpec, num_classes: int | None) -> nn.Module:
    """Build with every tensor on the meta device, so nothing is allocated.

    A few constructors compute layer sizes with real tensor arithmetic (torchvision's RegNet
    calls .tolist()); those are built on the CPU with initialisation skipped, then moved.
    """
    try:
        with torch.device("meta"), warnings_suppressed():
            return _build_random(spec, num_classes)
    except NotImplementedError:
        with _initialisers_skipped(), warnings_suppressed():
            return _build_random(spec, num_classes).to("meta")


def data_config_for(module: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    """Input size, mean/std, interpolation and crop the model expects (timm's data config)."""
    if getattr(module, "pretrained_cfg", None):
        return dict(resolve_data_config({}, model=module))
    if spec.kind == TORCHVISION:
        try:
            t = torchvision.models.get_model_weights(spec.name).DEFAULT.transforms()
            crop = int(t.crop_size[0])
            return {
                "input_size": (3, crop, crop),
                "interpolation": str(t.interpolation.value),
                "mean": tuple(t.mean),
                "std": tuple(t.std),
                "crop_pct": round(crop / int(t.resize_size[0]), 4),
                "crop_mode": "center",
            }
        except (ValueError, AttributeError, IndexError, TypeError):
            pass
    return {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "crop_pct": 0.875,
        "crop_mode": "center",
    }


def _count_classes(module: nn.Module, head_paths: tuple[str, ...]) -> int:
    get = getattr(module, "num_classes", None)
    if isinstance(get, int):
        return get
    for path in head_paths:
        head = module.get_submodule(path)
        for attr in ("out_features", "out_channels"):
            if isinstance(getattr(head, attr, None), int):
                return int(getattr(head, attr))
    return 0


def check_code(text: str, trust: CodeTrust | None = None) -> CodeFile | None:
    """Ask `trust` about the Python file that building this model would import, without
    building anything. Raises UntrustedCodeError when it may not run; None when it imports none
    or the string does not resolve (building it says why)."""
    try:
        spec = resolve_source(text).spec
    except FreezerError:
        return None
    return _allow_code(spec, trust)


def _allow_code(spec: ModelSpec, trust: CodeTrust | None) -> CodeFile | None:
    if spec.kind != FILE:
        return None
    return (trust or USER).require(spec.name, spec.named_in)


def load_model(
    text: str,
    num_classes: int | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
    meta: bool = False,
    trust: CodeTrust | None = None,
    trained_head: bool = False,
) -> LoadedModel:
    """Build a model from a model string.

    num_classes: size of the classifier. None: the bundle's or run's; with weights whose
        classifier has another size, the weights' own; else the library's default.
    pretrained: download (or take from cache) the library's pretrained weights.
    weights: a local .safetensors/.pth file; head keys are dropped when the class count differs.
    meta: allocate nothing (meta device), for an instant architecture preview. Weights are
        checked against the architecture (names and shapes, from the file's header) but not
        read or copied.
    trust: whether a factory .py may run (core/trust.py). The default runs a .py that `text`
        names itself (the user's own string) and refuses one named inside a file.
    trained_head: the classifier must be the trained one (eval, predict): a num_classes other
        than the weights' (or the pretrained weights') is refused, never met with a new,
        randomly initialised head.
    """
    _check_classes(num_classes)
    return _load(resolve_source(text), num_classes, pretrained, weights, meta, trust, trained_head)


def _check_classes(num_classes: int | None) -> None:
    if num_classes is not None and num_classes < 1:
        raise FreezerError(
            f"The number of classes must be 1 or more (got {num_classes}).",
            "Use e.g. --num-classes 10.",
        )


def _pretrained_classes(spec: ModelSpec) -> int | None:
    """How many classes the library's pretrained weights for `spec` classify (no download)."""
    try:
        if spec.kind == TIMM:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(spec.name)
            return int(cfg.num_classes) if cfg and cfg.num_classes else None
        if spec.kind == TORCHVISION:
            weights = torchvision.models.get_model_weights(spec.name).DEFAULT
            return len(weights.meta["categories"])
    except (RuntimeError, ValueError, KeyError, AttributeError, TypeError):
        return None
    return None


def _untrained_head(what: str, has: int | None, asked: int | None, outputs: int) -> FreezerError:
    """A classifier that would be new (random) where the trained one is needed."""
    if has is None:
        return FreezerError(
            f"{what} hold a classifier that does not fit this model's {outputs} outputs: "
            "a new head would be untrained and its predictions random.",
            "Pass --num-classes N, the number of classes the weights were trained for.",
        )
    return FreezerError(
        f"{what} hold a classifier for {has} classes, not {asked} (--num-classes {asked}): "
        f"a new head for {asked} classes would be untrained and its predictions random.",
        f"Leave out --num-classes (the weights' {has} classes are used), or pass "
        f"--num-classes {has}.",
    )


def _build(
    spec: ModelSpec,
    num_classes: int | None,
    pretrained: bool,
    meta: bool,
    transform_input: bool | None,
) -> tuple[nn.Module, list[str], str]:
    """The module, the head keys of pretrained weights left out, and where its weights are from."""
    note = "randomly initialised"
    dropped: list[str] = []
    try:
        if meta:
            module = _build_on_meta(spec, num_classes)
            if pretrained:
                note = "pretrained weights (preview)"
        elif spec.kind == TIMM:
            module = _build_timm(spec, num_classes, pretrained)
            if pretrained:
                note = "timm pretrained weights"
        elif spec.kind == TORCHVISION:
            module, dropped = _build_torchvision(spec, num_classes, pretrained)
            if pretrained:
                note = "torchvision pretrained weights"
        else:
            module = _build_user_model(spec, num_classes)
    except FreezerError:
        raise
    except Exception as e:
        raise ModelNotFoundError(
            f"Building {spec} failed: {type(e).__name__}: {e}",
            "Check the model name and the number of classes.",
        ) from e
    if transform_input is not None and spec.kind == TORCHVISION:
        torchvision_compat.set_transform_input(spec.name, module, transform_input)
    return module, dropped, note


def _load(
    source: ModelSource,
    num_classes: int | None,
    pretrained: bool,
    weights: str | Path | None,
    meta: bool,
    trust: CodeTrust | None,
    trained_head: bool = False,
) -> LoadedModel:
    _check_classes(num_classes)
    spec = source.spec
    asked = num_classes
    if num_classes is None:
        num_classes = source.num_classes
    weights_path = Path(weights).expanduser() if weights else source.weights
    if pretrained and weights_path is not None:
        raise FreezerError(
            "Choose either pretrained weights or a weights file, not both.",
            "Drop --pretrained or --weights.",
        )
    if trained_head and pretrained and asked is not None:
        has = _pretrained_classes(spec)
        if has is not None and has != asked:
            raise _untrained_head(f"The pretrained weights of {spec}", has, asked, asked)
    transform_input = source.transform_input
    if weights_path is not None and source.weights is None:
        # Weights from a run or bundle carry the flag they were trained with and, for
        # predicting with their trained head, their class names and preprocessing.
        try:
            beside = _source_beside(weights_path)
        except FreezerError:
            beside = None
        if beside is not None and beside.spec == spec:
            if transform_input is None:
                transform_input = beside.transform_input
            if trained_head:
                source = ModelSource(
                    spec,
                    None,
                    source.num_classes,
                    source.label_names or beside.label_names,
                    source.data_config or beside.data_config,
                    transform_input,
                )
    _allow_code(spec, trust)
    module, dropped, note = _build(spec, num_classes, pretrained, meta, transform_input)
    heads, _ = find_head_paths(module)
    if weights_path is not None:
        # A preview only checks the fit: names and shapes from the file's header (or a
        # memory map), never its tensor data.
        state = None if meta else read_state_dict(weights_path)
        shapes = read_shapes(weights_path) if state is None else _shapes(state)
        dropped = check_fit(module, shapes, heads, weights_path.name)
        if dropped:
            has = head_classes(module, shapes, dropped)
            if asked is None and has is not None:
                # No number of classes was asked for: the weights' classifier is the model's,
                # not a new random one (of the library's default size or a stale count).
                module, _, _ = _build(spec, has, False, meta, transform_input)
                heads, _ = find_head_paths(module)
            elif trained_head:
                raise _untrained_head(
                    f"The weights in {weights_path}", has, asked, _count_classes(module, heads)
                )
        if state is None:
            dropped = check_fit(module, shapes, heads, weights_path.name)
        else:
            dropped = load_weights(module, state, heads, weights_path.name)
        note = f"weights from {weights_path.name}"
        if dropped:
            note += f" (head re-initialised for {_count_classes(module, heads)} classes)"
    module.eval()
    labels = (
        source.label_names
        if source.label_names and len(source.label_names) == _count_classes(module, heads)
        else None
    )
    return LoadedModel(
        module=module,
        spec=spec,
        num_classes=_count_classes(module, heads),
        head_paths=heads,
        data_config={**data_config_for(module, spec), **(source.data_config or {})},
        label_names=labels,
        weights_note=note,
        dropped_head_keys=dropped,
    )


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def preview_model(
    text: str, num_classes: int | None = None, trust: CodeTrust | None = None
) -> LoadedModel:
    """The architecture without weights (meta device): instant even for billion-parameter models.

    trust: as for load_model (a preview builds the model too, so a factory .py runs)."""
    source = resolve_source(text)
    n = num_classes if num_classes is not None else source.num_classes
    return _load(ModelSource(source.spec), n, False, None, True, trust)
