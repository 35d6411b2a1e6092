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


def _build(kind: type, values: dict[str, Any], section: str) -> Any:
    names = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ProjectError(
            f"Unknown setting(s) in {section}: {', '.join(unknown)}.",
            f"Known {section} settings: {', '.join(sorted(names))}.",
        )
    return kind(**values)
