"""The project: everything needed to repeat a run headless, declared once in the schema.

The window edits a Project, the CLI builds one from flags, and every run folder holds the
`project.json` it ran (its freeze timeline included), so `freezer-app train RUN/project.json`
repeats the run. Each field is a `setting(...)`: see core/settings.py for what is derived.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freezer_app.core import settings as schema
from freezer_app.core.data import AUGMENTATIONS, auto_augment_problem
from freezer_app.core.errors import ProjectError
from freezer_app.core.files import write_json
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.optim import OPTIMIZER_EXAMPLES, SCHEDULES, check_optimizer
from freezer_app.core.settings import setting

PROJECT_VERSION = 2  # 2: plan.edits and resumes; version 1 files load unchanged
# train.log_to: external trackers, read by core/train/external_trackers.py ("+" joins two).
LOG_TO = ("none", "mlflow", "wandb", "mlflow+wandb")


@dataclass
class DataSettings:
    """The image folder and how images are read."""

    path: str = setting(
        "",
        help="Image folder: one sub-folder per class, or train/ and val/ folders",
        flag="--data",
        metavar="DIR",
        required=True,
        form=False,
        label="Image folder",
    )
    val_split: float = setting(
        0.2,
        help="Share of each class held out for validation when there is no val/ folder "
        "(seeded, stratified)",
        minimum=0.0,
        maximum=1.0,
        exclusive_maximum=True,
        label="Validation split",
    )
    image_size: int | None = setting(
        None,
        help="Training and validation image size in pixels",
        minimum=16,
        maximum=2048,
        none="the model's own input size",
        none_word="auto",
        unit="px",
        label="Image size",
    )
    augmentation: str = setting(
        "light",
        help="none: resize and crop only; light: random crops and flips; strong: RandAugment "
        "and random erasing",
        choices=AUGMENTATIONS,
        flag="--augment",
        label="Augmentation",
    )
    auto_augment: str | None = setting(
        None,
        help="timm auto-augment policy for training images: rand-m9-mstd0.5-inc1 (RandAugment), "
        "trivialaugment, augmix-m5-w4-d2, original (AutoAugment), or off; needs augmentation "
        "light or strong",
        # Free text, not choices: any policy timm reads is allowed (checked in validate).
        none="the augmentation preset's (strong: rand-m9-mstd0.5-inc1, light: off)",
        none_word="auto",
        metavar="POLICY",
        label="Auto-augment",
    )
    random_erase: float | None = setting(
        None,
        help="Probability of erasing a random rectangle of each training image (timm's "
        "RandomErasing); needs augmentation light or strong",
        minimum=0.0,
        maximum=1.0,
        none="the augmentation preset's (strong: 0.25, light: 0)",
        none_word="auto",
        metavar="P",
        label="Random erasing",
    )
    workers: int | None = setting(
        None,
        help="Data loading processes",
        minimum=0,
        maximum=64,
        none="a sensible number for this machine",
        none_word="auto",
        zero="load images in the training process",
        label="Data workers",
    )
    image_cache: int | None = setting(
        None,
        help="Memory for images kept between epochs, so later epochs skip decoding "
        "(validation images and, with augmentation none, training images ready to use; "
        "with augmentation, training images as decoded)",
        minimum=0,
        maximum=16_777_216,
        none="up to a quarter of the free memory",
        none_word="auto",
        zero="off: decode every image each epoch",
        unit="MB",
        label="Image cache",
    )
    classes: list[str] = setting(
        default_factory=list,
        help="Class names, filled in when a run starts (so an export knows its labels)",
        flag="",
        form=False,
    )


@dataclass
class TrainSettings:
    """How the model is trained."""

    epochs: int = setting(
        5, help="Passes over the training images", minimum=1, maximum=100_000, resumable=True
    )
    batch_size: int = setting(
        32, help="Images per step; lower it if you run out of memory", minimum=1, maximum=65_536
    )
    lr: float = setting(
        1e-3,
        help="Base learning rate (the peak of the warmup + cosine schedule)",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=100.0,
        label="Learning rate",
    )
    optimizer: str = setting(
        "adamw",
        help="Any optimizer of timm's create_optimizer_v2 (timm.optim.list_optimizers(), "
        "optionally lookahead_NAME); AdamW suits most fine-tuning; SGD uses Nesterov momentum",
        choices=OPTIMIZER_EXAMPLES,
        open_choices=True,  # checked against timm's list in Project.validate
        metavar="NAME",
    )
    weight_decay: float = setting(
        0.05,
        help="Weight decay; never applied to norms, biases and timm's no_weight_decay() parameters",
        minimum=0.0,
        maximum=10.0,
    )
    momentum: float = setting(
        0.9,
        help="Momentum of the optimizers that take one (sgd: Nesterov when above 0; rmsprop, "
        "lars, …)",
        minimum=0.0,
        maximum=1.0,
        exclusive_maximum=True,
    )
    schedule: str = setting(
        "cosine",
        help="Learning-rate schedule after warmup (timm's schedulers, stepped every optimizer "
        "step; down to 1% of the rate): cosine, tanh, poly (linear), step (× LR decay rate "
        "every LR decay epochs), plateau (× LR decay rate when the early-stopping metric "
        "stalls), constant; none: no warmup either",
        choices=SCHEDULES,
        label="LR schedule",
    )
    lr_cycles: int = setting(
        1,
        help="cosine, tanh, poly: restart the schedule this many times (equal cycles)",
        minimum=1,
        maximum=1000,
        label="LR cycles",
    )
    lr_cycle_decay: float = setting(
        1.0,
        help="cosine, tanh, poly: each cycle's peak rate = the previous cycle's × this",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=1.0,
        label="LR cycle decay",
    )
    lr_decay_rate: float = setting(
        0.1,
        help="step and plateau: multiply the learning rate by this at each decay",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=1.0,
        label="LR decay rate",
    )
    lr_decay_epochs: float | None = setting(
        None,
        help="step: epochs between decays",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=100_000.0,
        none="a third of the run after warmup",
        none_word="auto",
        unit="epochs",
        label="LR decay every",
    )
    lr_patience: int = setting(
        1,
        help="plateau: epochs without a better early-stopping metric before the rate decays",
        minimum=0,
        maximum=100_000,
        unit="epochs",
        label="LR patience",
    )
    warmup_epochs: float = setting(
        1.0,
        help="Epochs of linear warmup (capped at 20% of the run)",
        minimum=0.0,
        maximum=1000.0,
    )
    grad_clip: float | None = setting(
        1.0,
        help="Clip the gradient norm to this",
        minimum=0.0,
        exclusive_minimum=True,
        none="no clipping",
        none_word="off",
        label="Gradient clip",
    )
    head_lr_mult: float = setting(
        1.0,
        help="The head's learning rate = base × this (e.g. 10 for a fresh head)",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=10_000.0,
        label="Head LR ×",
    )
    layer_decay: float | None = setting(
        None,
        help="Layer-wise learning-rate decay: each layer closer to the input gets × this "
        "(e.g. 0.75)",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=1.0,
        none="the same learning rate for every layer",
        none_word="off",
    )
    label_smoothing: float = setting(
        0.1,
        help="Cross-entropy label smoothing",
        minimum=0.0,
        maximum=1.0,
        exclusive_maximum=True,
    )
    mixup: float = setting(
        0.0,
        help="Mixup alpha (timm's Mixup): blend pairs of training images and their labels, "
        "trained with the soft-target loss (label smoothing folded in); e.g. 0.8",
        minimum=0.0,
        maximum=100.0,
        zero="off",
        metavar="ALPHA",
        label="Mixup α",
    )
    cutmix: float = setting(
        0.0,
        help="CutMix alpha (timm's Mixup): paste a patch of another training image, labels "
        "mixed by area; with mixup too, each batch uses one or the other; e.g. 1.0",
        minimum=0.0,
        maximum=100.0,
        zero="off",
        metavar="ALPHA",
        label="CutMix α",
    )
    ema: float | None = setting(
        None,
        help="Keep an exponential moving average of the weights with this decay (timm's "
        "ModelEmaV3), validated each epoch and saved as model-ema.safetensors (export "
        "--checkpoint ema); e.g. 0.9998, lower for short runs",
        minimum=0.0,
        maximum=1.0,
        exclusive_minimum=True,
        exclusive_maximum=True,
        none="no EMA",
        none_word="off",
        example="0.9998",
        flag_alone="0.9998",
        metavar="DECAY",
        label="Model EMA",
    )
    accum_steps: int = setting(
        1,
        help="Batches per optimizer step (gradient accumulation): the effective batch is "
        "batch size × this; steps, the step limit, the schedule and the timeline count "
        "optimizer steps",
        minimum=1,
        maximum=4096,
        metavar="N",
        label="Accumulation steps",
    )
    class_balance: str = setting(
        "off",
        help="For classes of very different sizes: sampler draws training images inversely "
        "to their class's count; loss weights the cross-entropy by inverse class frequency",
        choices=("off", "sampler", "loss"),
        label="Class balance",
    )
    early_stop_patience: int = setting(
        0,
        help="Stop after this many epochs without a better early-stopping metric",
        minimum=0,
        maximum=100_000,
        zero="off",
        flag="--early-stop",
        metavar="EPOCHS",
        resumable=True,
        label="Early stopping",
    )
    early_stop_metric: str = setting(
        "val_acc",
        help="What early stopping and the best checkpoint follow",
        choices=("val_acc", "val_loss"),
        label="Early-stop metric",
    )
    device: str = setting(
        "auto",
        help="Where to train; auto picks CUDA, then Apple MPS, then the CPU; cuda:all trains on "
        "every GPU of this machine, one process each (torchrun)",
        choices=("auto", "cpu", "cuda", "mps"),
        open_choices=True,
        metavar="D",
    )
    amp: str = setting(
        "auto",
        help="Mixed precision; auto = bf16 (or fp16) on CUDA, off elsewhere",
        choices=("auto", "bf16", "fp16", "off"),
        label="Mixed precision",
    )
    channels_last: str = setting(
        "auto",
        help="channels_last memory format; auto = on for convolutional models on CUDA",
        choices=("auto", "on", "off"),
        label="Channels last",
    )
    seed: int = setting(
        0,
        help="Seeds weights, data order, splits and augmentation",
        minimum=0,
        maximum=2**31 - 1,
    )
    telemetry_every: int = setting(
        10,
        help="Steps between per-layer gradient and update statistics",
        minimum=1,
        maximum=1_000_000,
        label="Telemetry every",
    )
    checkpoint_every: int = setting(
        1,
        help="Epochs between resume checkpoints (written off the training thread); the last "
        "epoch, a stop and an early stop always write one",
        minimum=1,
        maximum=100_000,
        unit="epochs",
        resumable=True,
        label="Checkpoint every",
    )
    log_to: str = setting(
        "none",
        help="Also send the settings and metrics to MLflow or Weights & Biases (needs that "
        "package; metrics.csv and TensorBoard events are written either way)",
        choices=LOG_TO,
        resumable=True,
        label="Log to",
    )
    compile: bool = setting(
        False,
        help="Compile the model with torch.compile (slower start, often faster steps on a "
        "GPU; recompiled when the freeze plan changes)",
        label="torch.compile",
    )
    sync_bn: bool = setting(
        False,
        help="With several GPUs: turn BatchNorm layers into SyncBatchNorm, so trainable ones "
        "normalise over the global batch (frozen ones stay in eval); CUDA only",
        label="Sync BatchNorm",
    )
    feature_cache: str = setting(
        "auto",
        help="auto: when a frozen prefix of the model gives the same output every epoch "
        "(frozen, norms in eval, no dropout in it; augmentation none for training images), "
        "compute it once per image and train the rest from the cached output; off: never",
        choices=("auto", "off"),
        resumable=True,
        label="Feature cache",
    )
    feature_cache_budget: int | None = setting(
        None,
        help="Memory for cached features; what does not fit goes to a memory-mapped file in "
        "the user cache folder",
        minimum=0,
        maximum=16_777_216,
        none="up to a quarter of the free memory",
        none_word="auto",
        unit="MB",
        resumable=True,
        label="Feature cache memory",
    )
    max_steps: int | None = setting(
        None,
        help="Stop after this many optimizer steps in all (for quick trials; the learning-rate "
        "schedule still spans every epoch, so a resume continues the same run)",
        minimum=1,
        none="no limit: train every epoch",
        none_word="none",
        resumable=True,
        label="Step limit",
    )


@dataclass
class ResumeRecord:
    """What a resume changed, kept in the run's project.json."""

    step: int = setting(0, help="The step the run resumed after", minimum=0)
    changes: list[str] = setting(
        default_factory=list, help="Settings the resume changed, as 'key: old -> new'"
    )


@dataclass
class Project:
    """A Freezer project: the model, its freeze timeline, the data and the training settings."""

    version: int = setting(
        PROJECT_VERSION, help="Format version of this file", minimum=1, flag="", form=False
    )
    name: str = setting(
        "", help="The project's name; run folders are named after it", metavar="NAME", form=False
    )
    model: str = setting(
        "timm:resnet18",
        help="timm:NAME, torchvision:NAME, FILE.py:CALLABLE, a bundle or run folder, or a "
        "weights file",
        metavar="MODEL",
        required=True,
        form=False,
    )
    pretrained: bool = setting(
        False, help="Start from the library's pretrained weights", form=False
    )
    weights: str | None = setting(
        None,
        help="Start from a local .safetensors/.pth file",
        none="no weights file",
        metavar="FILE",
        form=False,
    )
    num_classes: int | None = setting(
        None,
        help="Size of the classifier, taken from the data when a run starts",
        minimum=1,
        none="from the data",
        flag="",
        form=False,
    )
    plan: FreezePlan = setting(
        default_factory=FreezePlan,
        help="The freeze plan and its timeline: schedule phases and step-keyed edits",
    )
    data: DataSettings = setting(default_factory=DataSettings, help="The image folder")
    train: TrainSettings = setting(default_factory=TrainSettings, help="Training settings")
    resumes: list[ResumeRecord] = setting(
        default_factory=list, help="What each resume of this run changed", flag="", form=False
    )

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ProjectError naming the first setting that cannot work."""
        schema.validate(self)
        self._validate_recipe()
        check_optimizer(self.train.optimizer)  # any of timm's names: not a closed choice
        if self.pretrained and self.weights:
            raise ProjectError(
                "Choose either pretrained weights or a weights file, not both.",
                "Turn off pretrained, or remove the weights file.",
            )
        # Imported here: core.train imports this module. A tracker the user asked for that
        # cannot work stops the run before it starts, not silently later.
        from freezer_app.core.train.external_trackers import check_installed

        check_installed(self.train.log_to)

    def _validate_recipe(self) -> None:
        """Augmentation, mixup and class-balance settings that cannot work together."""
        d, t = self.data, self.train
        extras = [
            flag
            for flag, given in (
                ("--auto-augment", d.auto_augment is not None and d.auto_augment != "off"),
                ("--random-erase", bool(d.random_erase)),
            )
            if given
        ]
        if extras and d.augmentation == "none":
            raise ProjectError(
                f"{' and '.join(extras)} {'needs' if len(extras) == 1 else 'need'} "
                "augmentation light or strong, not none.",
                "Give --augment light (or strong) with them; none keeps training images "
                "unchanged (as the feature cache needs).",
            )
        problem = auto_augment_problem(d.auto_augment)
        if problem:
            raise ProjectError(
                f"Unknown auto-augment policy {d.auto_augment!r} ({problem}).",
                "Use e.g. rand-m9-mstd0.5-inc1 (RandAugment), trivialaugment, "
                "augmix-m5-w4-d2 (AugMix), original or v0 (AutoAugment), or off.",
            )
        if t.class_balance == "loss" and (t.mixup or t.cutmix):
            raise ProjectError(
                "--class-balance loss cannot weight mixup's or cutmix's mixed labels.",
                "Use --class-balance sampler with mixup or cutmix.",
            )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Path | None = None) -> Project:
        if not isinstance(data, dict):
            raise ProjectError(
                "A project file must hold a JSON object.", "Open a project.json written by Freezer."
            )
        version = data.get("version", PROJECT_VERSION)
        if isinstance(version, int) and version > PROJECT_VERSION:
            raise ProjectError(
                f"This project was written by a newer Freezer (format {version}).",
                "Update freezer-app to open it.",
            )
        project = schema.load(cls, {**data, "version": PROJECT_VERSION})
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
        if path.is_dir():
            inside = path / "project.json"
            raise ProjectError(
                f"{path} is a folder, not a project file.",
                f"It holds a run's project: pass {inside}."
                if inside.is_file()
                else "Pass a project file (PROJECT.json), e.g. a run folder's project.json.",
            )
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProjectError(f"Project file not found: {path}", "Check the path.") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProjectError(
                f"Cannot read project {path}: {e}", "The file may be damaged."
            ) from None
        return cls.from_dict(data, base_dir=path.parent)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    def copy(self) -> Project:
        return Project.from_dict(self.to_dict())


def resumable_keys() -> list[str]:
    """Settings that `train --resume` accepts: the run stays the run its checkpoint belongs to."""
    return [s.key for s in schema.all_settings(Project) if s.spec.resumable]


def absolute_model(model: str, base: Path) -> str:
    """A model string whose file paths (factory .py, bundle, run folder, weights) are made
    absolute against `base`: the folder of the file the string was read from (or the current
    directory for a command-line flag). Library names (timm:NAME, torchvision:NAME, a bare NAME
    with no such file in `base`) are kept as they are."""
    if ".py:" in model:
        path, _, factory = model.rpartition(":")
        if not Path(path).expanduser().is_absolute():
            return f"{(base / Path(path).expanduser()).resolve()}:{factory}"
        return model
    candidate = Path(model).expanduser()
    if candidate.is_absolute():
        return model
    from freezer_app.core.weights import WEIGHT_SUFFIXES

    library = model.startswith(("timm:", "torchvision:"))
    pathlike = "/" in model or "\\" in model or candidate.suffix in WEIGHT_SUFFIXES
    if (base / candidate).exists() or (pathlike and not library):
        return str((base / candidate).resolve())
    return model


def project_schema() -> dict[str, Any]:
    """The JSON Schema of project.json."""
    return schema.json_schema(Project)


def project_reference() -> str:
    """The README's table of project.json keys."""
    return schema.markdown_reference(Project)


def apply_resume_changes(
    project: Project, given: dict[str, Any], step: int = 0, epochs_done: int = 0
) -> list[str]:
    """Apply the settings a resume may change; anything else is a clear error.

    `step` and `epochs_done` are where the checkpoint stands. A run stopped by its step limit
    continues to the end of its epochs unless a new limit is given; a run stopped another way
    keeps its limit. Returns the changes as 'key: old -> new' for the run's record.
    """
    allowed = resumable_keys()
    refused = sorted(k for k in given if k not in allowed)
    if refused:
        flags = {s.key: s.flag for s in schema.all_settings(Project)}
        raise ProjectError(
            "A resumed run keeps the settings it started with; these cannot change: "
            + ", ".join(flags.get(k, k) for k in refused)
            + ".",
            "Only "
            + ", ".join(flags[k] for k in allowed)
            + " may be given with --resume. To train with other settings, start a new run "
            "(e.g. `freezer-app train --model RUN_DIR --data ...` continues from its weights).",
        )
    changes = dict(given)
    limit = project.train.max_steps
    if "train.max_steps" not in changes and limit is not None and step >= limit:
        changes["train.max_steps"] = None  # it stopped at its limit: go on to the end
    new_limit = changes.get("train.max_steps", limit)
    if new_limit is not None and new_limit <= step:
        raise ProjectError(
            f"The run is at step {step}, so a step limit of {new_limit} leaves nothing to do.",
            f"Give --max-steps above {step}, or leave it out to train to the end.",
        )
    epochs = changes.get("train.epochs", project.train.epochs)
    if epochs <= epochs_done:
        raise ProjectError(
            f"The run has completed {epochs_done} of {epochs} epoch(s): there is nothing left "
            "to train.",
            f"Give --epochs above {epochs_done} to train longer.",
        )
    out = []
    for key, value in changes.items():
        old = schema.get_value(project, key)
        if old != value:
            schema.set_value(project, key, value)
            out.append(f"{key}: {json.dumps(old)} -> {json.dumps(value)}")
    schema.validate(project)
    return out
