"""What a training run reports (events out) and how it is steered (commands in).

Events are plain dataclasses of numbers, strings and numpy arrays, safe to hand to another
thread. The GUI worker forwards them as Qt signals; the CLI prints them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from freezer_app.core.freeze import FreezePlan
from freezer_app.core.telemetry import FrozenCheck, TelemetryRecord


@dataclass
class RunStarted:
    run_dir: str
    model: str
    device: str
    precision: str
    classes: list[str]
    total_params: int
    trainable_params: int
    layer_names: list[str]
    layer_trainable: np.ndarray
    epochs: int
    steps_per_epoch: int
    start_step: int  # > 0 when resuming
    total_steps: int = 0
    data_report: dict[str, Any] = field(default_factory=dict)
    processes: int = 1  # > 1 under torch.distributed (torchrun)
    global_batch: int = 0  # images per step over every process


@dataclass
class StepEvent:
    step: int
    epoch: int
    loss: float
    lr: float
    images_per_s: float


@dataclass
class TelemetryEvent:
    record: TelemetryRecord


@dataclass
class EpochEvent:
    epoch: int  # 1-based: the number of epochs completed
    step: int
    train_loss: float
    val_loss: float | None
    val_acc: float | None
    images_per_s: float
    seconds: float
    is_best: bool


@dataclass
class FrozenCheckEvent:
    check: FrozenCheck


@dataclass
class PlanApplied:
    """The plan in effect changed (or a change was refused: the plan in effect stays).

    `step` is the first optimizer step trained with `plan`; `mask` is the per-parameter
    trainable mask (ModelTree order) the run now trains with."""

    step: int
    plan: FreezePlan
    trainable_params: int
    total_params: int
    layer_trainable: np.ndarray
    reason: str  # "start", "resume", "schedule", "edit" or "refused"
    mask: np.ndarray | None = None
    message: str = ""


@dataclass
class LogEvent:
    message: str
    level: str = "info"  # info | notice (worth showing now) | warning


@dataclass
class FeatureCacheEvent:
    """Whether the frozen prefix's output is cached (core/train/feature_cache.py), and what the
    cache holds; sent when the run starts, when the plan moves the cut, and after filling."""

    step: int  # the first step it applies to
    used: bool
    cut: str  # "after layer4" ('' when not used)
    reason: str  # why not used, or what changed
    images: int  # rows held
    total: int  # rows wanted (training and validation images)
    ram_bytes: int
    disk_bytes: int
    fill_seconds: float | None  # of the epoch that filled it
    folder: str
    training_cached: bool  # training images too (augmentation none), not validation only
    message: str


@dataclass
class ErrorEvent:
    """A failure during training (NaN/Inf loss, out of memory); Finished follows with reason
    "error". Problems found before training starts raise FreezerError instead."""

    kind: str  # "non-finite-loss" | "out-of-memory" | "exception"
    step: int
    message: str
    hint: str


@dataclass
class PausedEvent:
    paused: bool
    step: int


@dataclass
class Finished:
    reason: str  # completed | stopped | step-limit | early-stopped | error
    run_dir: str
    steps: int
    epochs_completed: int
    best_val_acc: float | None
    best_epoch: int | None
    last_val_acc: float | None
    frozen_check_passed: bool | None
    frozen_check_summary: str
    seconds: float
    message: str = ""
    hint: str = ""
    details: str = ""  # a traceback, for failures Freezer did not foresee
    peak_device_memory: int | None = None  # bytes allocated on the GPU at most (CUDA only)
    feature_cache: dict[str, Any] | None = None  # the last FeatureCacheEvent's fields


Event = (
    RunStarted
    | StepEvent
    | TelemetryEvent
    | EpochEvent
    | FrozenCheckEvent
    | PlanApplied
    | LogEvent
    | ErrorEvent
    | PausedEvent
    | Finished
)
EventSink = Callable[[Event], None]


class RunControl:
    """Commands into a run, thread-safe. The run checks them at every step boundary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._plan: FreezePlan | None = None

    # ---------------------------------------------------------------- from any thread
    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # a paused run must wake up to stop

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def set_plan(self, plan: FreezePlan) -> None:
        """Apply this freeze plan at the next step boundary."""
        with self._lock:
            self._plan = plan

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    # ---------------------------------------------------------------- from the run
    def take_plan(self) -> FreezePlan | None:
        with self._lock:
            plan, self._plan = self._plan, None
        return plan

    def wait_while_paused(self, timeout: float = 0.1) -> None:
        self._running.wait(timeout)
