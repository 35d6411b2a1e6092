"""The project file: everything needed to reproduce a run headless.

The GUI edits a Project, the CLI builds one from flags, and every run folder holds the
`project.json` it ran, so `freezer-app train RUN/project.json` repeats it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from freezer_app.core.errors import ProjectError
from freezer_app.core.files import write_json
from freezer_app.core.freeze import FreezePlan

PROJECT_VERSION = 1
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
EARLY_STOP_METRICS = ("val_acc", "val_loss")


@dataclass
class DataSettings:
    path: str = ""
    val_split: float = 0.2
    image_size: int | None = None  # None: the model's own input size
    augmentation: str = "light"
    workers: int | None = None  # None: a sensible number for this machine
    # Filled in when a run starts, so a bundle knows its label names.
    classes: list[str] = field(default_factory=list)


@dataclass
class TrainSettings:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    grad_clip: float | None = 1.0
    head_lr_mult: float = 1.0
    layer_decay: float | None = None  # e.g. 0.75; None: same learning rate for every layer
    label_smoothing: float = 0.1
    early_stop_patience: int = 0  # epochs without improvement; 0: off
    early_stop_metric: str = "val_acc"
    device: str = "auto"
    amp: str = "auto"
    channels_last: str = "auto"  # auto | on | off
    seed: int = 0
    telemetry_every: int = 10  # steps between per-layer statistics
    max_steps: int | None = None  # stop after this many steps in all (for quick trials)


@dataclass
class Project:
    model: str = "timm:resnet18"
    pretrained: bool = False
    weights: str | None = None
    num_classes: int | None = None  # taken from the data when a run starts
    plan: FreezePlan = field(default_factory=FreezePlan)
    data: DataSettings = field(default_factory=DataSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    name: str = ""
    version: int = PROJECT_VERSION

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ProjectError naming the first setting that cannot work."""
        t, d = self.train, self.data
        checks = [
            (bool(self.model.strip()), "No model chosen.", "Pick a model, e.g. timm:resnet18."),
            (
                bool(d.path),
                "No image folder chosen.",
                "Choose a folder with one sub-folder per class.",
            ),
            (
                t.epochs >= 1,
                f"Epochs must be at least 1 (got {t.epochs}).",
                "Set epochs to 1 or more.",
            ),
            (
                t.batch_size >= 1,
                f"Batch size must be at least 1 (got {t.batch_size}).",
                "Use e.g. 32.",
            ),
            (t.lr > 0, f"Learning rate must be positive (got {t.lr}).", "Use e.g. 1e-3."),
            (t.optimizer in OPTIMIZERS, f"Unknown optimizer {t.optimizer!r}.", "Use adamw or sgd."),
            (
                t.schedule in SCHEDULES,
                f"Unknown schedule {t.schedule!r}.",
                "Use cosine or constant.",
            ),
            (
                t.amp in AMP_MODES,
                f"Unknown mixed precision mode {t.amp!r}.",
                "Use auto, bf16, fp16 or off.",
            ),
            (
                0 <= d.val_split < 1,
                f"Validation split must be in [0, 1) (got {d.val_split}).",
                "Use e.g. 0.2.",
            ),
            (
                d.image_size is None or 16 <= d.image_size <= 2048,
                f"Image size {d.image_size} is out of range.",
                "Use 16..2048.",
            ),
            (
                t.layer_decay is None or 0 < t.layer_decay <= 1,
                f"Layer decay must be in (0, 1] (got {t.layer_decay}).",
                "Use e.g. 0.75.",
            ),
            (
                t.head_lr_mult > 0,
                f"Head learning-rate multiplier must be positive (got {t.head_lr_mult}).",
                "Use e.g. 10.",
            ),
            (t.telemetry_every >= 1, "Telemetry interval must be at least 1 step.", "Use e.g. 10."),
            (
                t.early_stop_metric in EARLY_STOP_METRICS,
                f"Unknown early-stopping metric {t.early_stop_metric!r}.",
                "Use val_acc or val_loss.",
            ),
            (
                0 <= t.label_smoothing < 1,
                f"Label smoothing must be in [0, 1) (got {t.label_smoothing}).",
                "Use e.g. 0.1.",
            ),
            (
                t.grad_clip is None or t.grad_clip > 0,
                f"Gradient clipping must be positive (got {t.grad_clip}).",
                "Use e.g. 1.0, or --no-grad-clip.",
            ),
            (
                t.weight_decay >= 0,
                f"Weight decay cannot be negative (got {t.weight_decay}).",
                "Use e.g. 0.05.",
            ),
            (
                0 <= t.momentum < 1,
                f"Momentum must be in [0, 1) (got {t.momentum}).",
                "Use e.g. 0.9.",
            ),
            (
                t.warmup_epochs >= 0,
                f"Warmup cannot be negative (got {t.warmup_epochs}).",
                "Use e.g. 1.",
            ),
            (
                t.early_stop_patience >= 0,
                f"Early-stopping patience cannot be negative (got {t.early_stop_patience}).",
                "Use 0 to turn it off.",
            ),
            (
                t.max_steps is None or t.max_steps >= 0,
                f"The step limit cannot be negative (got {t.max_steps}).",
                "Use 0 for no limit.",
            ),
            (
                d.workers is None or d.workers >= 0,
                f"Data workers cannot be negative (got {d.workers}).",
                "Use 0 to load images in the training process.",
            ),
            (
                d.augmentation in ("none", "light", "strong"),
                f"Unknown augmentation {d.augmentation!r}.",
                "Use none, light or strong.",
            ),
        ]
        for ok, message, hint in checks:
            if not ok:
                raise ProjectError(message, hint)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["plan"] = self.plan.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path | None = None) -> Project:
        if not isinstance(data, dict):
            raise ProjectError(
                "A project file must hold a JSON object.", "Open a project.json written by Freezer."
            )
        version = data.get("version", PROJECT_VERSION)
        if version > PROJECT_VERSION:
            raise ProjectError(
                f"This project was written by a newer Freezer (format {version}).",
                "Update freezer-app to open it.",
            )
        try:
            project = cls(
                model=str(data.get("model", "")),
                pretrained=bool(data.get("pretrained", False)),
                weights=data.get("weights"),
                num_classes=data.get("num_classes"),
                plan=FreezePlan.from_dict(data.get("plan", {})),
                data=_build(DataSettings, data.get("data", {}), "data"),
                train=_build(TrainSettings, data.get("train", {}), "train"),
                name=str(data.get("name", "")),
            )
        except TypeError as e:
            raise ProjectError(f"Malformed project: {e}", "Check the project file.") from None
        if base_dir is not None:
            # Relative paths in a project file are relative to the file, not the shell.
            project.model = absolute_model(project.model, base_dir)
            if project.data.path and not Path(project.data.path).expanduser().is_absolute():
                project.data.path = str((base_dir / project.data.path).resolve())
            if project.weights and not Path(project.weights).expanduser().is_absolute():
                project.weights = str((base_dir / project.weights).resolve())
        return project

    @classmethod
    def load(cls, path: str | Path) -> Project:
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProjectError(f"Project file not found: {path}", "Check the path.") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ProjectError(
                f"Cannot read project {path}: {e}", "The file may be damaged."
            ) from None
        return cls.from_dict(data, base_dir=path.parent)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())


_TYPES = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "list[str]": (list,),
}


def _check_type(section: str, name: str, annotation: str, value: Any) -> None:
    """Values from a JSON file must have the type the setting declares (e.g. 5, not "5")."""
    options = [a.strip() for a in annotation.split("|")]
    if value is None and "None" in options:
        return
    allowed = tuple(t for o in options for t in _TYPES.get(o, ()))
    if allowed and (
        not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
    ):
        wanted = " or ".join(o for o in options if o != "None") + (
            " or null" if "None" in options else ""
        )
        raise ProjectError(
            f"Setting {section}.{name} must be {wanted}, not {json.dumps(value)}.",
            "Fix the project file (numbers without quotes, true/false, null).",
        )


def _build(kind: type, values: dict[str, Any], section: str) -> Any:
    if not isinstance(values, dict):
        raise ProjectError(
            f"The {section} section must be a JSON object.", "Check the project file."
        )
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ProjectError(
            f"Unknown setting(s) in {section}: {', '.join(unknown)}.",
            f"Known {section} settings: {', '.join(sorted(known))}.",
        )
    for name, value in values.items():
        _check_type(section, name, str(known[name].type), value)
    return kind(**values)


def absolute_model(model: str, base: Path) -> str:
    """A model string whose file paths (factory .py, bundle, weights) are made absolute."""
    if ".py:" in model:
        path, _, factory = model.rpartition(":")
        if not Path(path).expanduser().is_absolute():
            return f"{(base / Path(path).expanduser()).resolve()}:{factory}"
        return model
    candidate = Path(model).expanduser()
    if not candidate.is_absolute() and (base / candidate).exists():
        return str((base / candidate).resolve())
    return model
