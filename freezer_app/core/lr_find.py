"""The learning-rate range test (fastai's `lr_find`, Lightning's `Tuner.lr_find`).

Trains a few steps with the learning rate growing exponentially from `start_lr` to `end_lr`,
with the project's model, data, freeze plan (the plan its first step trains), optimizer and
parameter groups exactly as a run builds them (train/setup.py), and records the loss. The
suggestion is read off the smoothed loss curve:

- *steepest*: where the smoothed loss falls fastest against log(lr) (fastai's `steep`);
- *valley*: fastai's `valley`, a point of the longest run of falling loss. It is steadier than
  the steepest point on noisy curves (fastai's default), so it is `suggested_lr`.

The rate tested is the base rate (`train.lr`): every group keeps its multiplier (head,
layer decay), as training would. The project's weights are never changed: the test loads its
own copy of the model, puts every tensor of its state (parameters and buffers, BatchNorm
running statistics included) back as it was when it ends, and leaves the random number
generators as it found them.

    result = find_lr(project, on_point=print)
    result.suggested_lr
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from freezer_app.core import timeline
from freezer_app.core.data import DataReport
from freezer_app.core.device import select_device
from freezer_app.core.errors import FreezerError, ProjectError
from freezer_app.core.freeze import FreezePlan, apply_mask, resolve
from freezer_app.core.optim import inner_optimizer, restrict_to_trainable
from freezer_app.core.project import Project
from freezer_app.core.run_folder import RunFolder
from freezer_app.core.train.setup import RunParts, prepare
from freezer_app.core.trust import CodeTrust

START_LR = 1e-7
END_LR = 10.0
STEPS = 100
MAX_STEPS = 1000  # the valley search is quadratic in the points
BETA = 0.98  # fastai's smoothing of the loss
DIVERGE = 4.0  # stop once the smoothed loss is this many times its best

# Why a test stopped.
COMPLETED, DIVERGED, NON_FINITE, CANCELLED = "completed", "diverged", "non-finite", "cancelled"


@dataclass
class LrPoint:
    """One step of the test: the base learning rate it trained with and its loss."""

    step: int
    lr: float
    loss: float
    smoothed: float  # EMA (BETA) with bias correction


@dataclass
class LrFindResult:
    points: list[LrPoint] = field(default_factory=list)
    steepest_lr: float | None = None
    valley_lr: float | None = None
    suggested_lr: float | None = None  # the valley
    stopped: str = COMPLETED
    start_lr: float = START_LR
    end_lr: float = END_LR
    steps: int = STEPS  # asked for; len(points) were run

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggested_lr": self.suggested_lr,
            "steepest_lr": self.steepest_lr,
            "valley_lr": self.valley_lr,
            "stopped": self.stopped,
            "start_lr": self.start_lr,
            "end_lr": self.end_lr,
            "steps": self.steps,
            "curve": [
                {"step": p.step, "lr": p.lr, "loss": p.loss, "smoothed": p.smoothed}
                for p in self.points
            ],
        }

    def point_near(self, lr: float | None) -> LrPoint | None:
        """The recorded point whose rate is closest to `lr` (in log scale), for marking it."""
        if lr is None or not self.points:
            return None
        return min(self.points, key=lambda p: abs(math.log(p.lr) - math.log(lr)))


# ---------------------------------------------------------------------- the schedule
def lr_at(step: int, steps: int, start_lr: float, end_lr: float) -> float:
    """The rate of step `step` (0-based) of `steps`: start_lr at the first, end_lr at the last."""
    if steps <= 1:
        return start_lr
    return start_lr * (end_lr / start_lr) ** (step / (steps - 1))


def check_range(steps: int, start_lr: float, end_lr: float) -> None:
    if not (5 <= steps <= MAX_STEPS):
        raise FreezerError(
            f"The range test needs 5 to {MAX_STEPS} steps, not {steps}.",
            f"Use --steps between 5 and {MAX_STEPS} (100 is usual).",
        )
    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise FreezerError(
            f"The learning rates must grow from --start-lr to --end-lr (got {start_lr:g} to "
            f"{end_lr:g}).",
            "Use e.g. --start-lr 1e-7 --end-lr 10.",
        )


# ---------------------------------------------------------------------- suggestions
def _trimmed(lrs: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """As fastai: leave out the first tenth (the smoothing still warming up) and the last five
    points (the blow-up), where enough points remain."""
    n = len(lrs)
    lo, hi = n // 10, n - 5
    if hi - lo >= 3:
        return lrs[lo:hi], losses[lo:hi]
    return lrs, losses


def steepest(lrs: np.ndarray, losses: np.ndarray) -> float | None:
    """fastai's `steep`: the rate where the loss falls fastest against log(lr)."""
    lrs, losses = _trimmed(np.asarray(lrs, float), np.asarray(losses, float))
    if len(lrs) < 2:
        return None
    grads = np.diff(losses) / np.diff(np.log(lrs))
    return float(lrs[int(np.argmin(grads))])


def valley(lrs: np.ndarray, losses: np.ndarray) -> float | None:
    """fastai's `valley`: the longest decreasing run of the loss (a longest decreasing
    subsequence), and a rate a little past its first third, before the minimum where
    training is still fast but stable."""
    lrs, losses = _trimmed(np.asarray(lrs, float), np.asarray(losses, float))
    n = len(losses)
    if n < 2:
        return None
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[min(max(idx, 0), n - 1)])


def suggest(result: LrFindResult) -> None:
    """Fill in the steepest, valley and suggested rates from the recorded points."""
    lrs = np.array([p.lr for p in result.points])
    smoothed = np.array([p.smoothed for p in result.points])
    result.steepest_lr = steepest(lrs, smoothed)
    result.valley_lr = valley(lrs, smoothed)
    result.suggested_lr = result.valley_lr


# ---------------------------------------------------------------------- state kept intact
@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Random number generators as they were before: the test (and its setup, which seeds
    them as a run does) must not change what the app draws next."""
    py, np_state = random.getstate(), np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


@contextlib.contextmanager
def kept_state(model: nn.Module) -> Iterator[None]:
    """Every tensor of the model (parameters and buffers: BatchNorm running statistics and
    counters, non-persistent buffers too) put back bit for bit afterwards; requires_grad and
    the mode too."""
    tensors = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    saved = {name: t.detach().clone() for name, t in tensors.items()}
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    training = model.training
    try:
        yield
    finally:
        with torch.no_grad():
            for name, t in tensors.items():
                t.copy_(saved[name])
        for name, p in model.named_parameters():
            p.requires_grad_(grads[name])
            p.grad = None
        model.train(training)


# ---------------------------------------------------------------------- the test
def prepare_parts(
    project: Project, report: DataReport | None = None, trust: CodeTrust | None = None
) -> RunParts:
    """The model, data and optimizer a run of `project` would start with (nothing written:
    the run folder `prepare` asks for is an empty temporary one it never writes to)."""
    with tempfile.TemporaryDirectory(prefix="freezer-lr-find-") as tmp:
        return prepare(project, RunFolder(tmp), report, trust)


def release(parts: RunParts) -> None:
    """Free what the parts hold: loader workers, caches, device memory."""
    parts.features.close()
    parts.loaders.close()
    parts.probe.release()
    inner_optimizer(parts.optimizer).state.clear()  # Lookahead keeps its moments inside
    if parts.device.type == "cuda":
        parts.model.to("cpu")
        torch.cuda.empty_cache()


def range_test(
    parts: RunParts,
    plan: FreezePlan,
    steps: int = STEPS,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    grad_clip: float | None = None,
    on_point: Callable[[LrPoint], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> LrFindResult:
    """The range test on prepared parts, with freeze plan `plan` (a FreezePlan selection).
    The model's state is restored afterwards whatever happens."""
    check_range(steps, start_lr, end_lr)
    model, optimizer = parts.model, parts.optimizer
    result = LrFindResult(start_lr=start_lr, end_lr=end_lr, steps=steps)
    with kept_rng(), kept_state(model):
        mask = resolve(plan, parts.tree)
        if not mask.any():
            raise ProjectError(
                f"The freeze plan '{plan.describe()}' leaves nothing to train.",
                "Unfreeze some layers (e.g. --preset head-only) first.",
            )
        apply_mask(model, parts.tree, mask, plan.bn_policy)
        restrict_to_trainable(optimizer, parts.groups)
        trainable = [p for g in optimizer.param_groups for p in g["params"]]
        # Each group keeps its multiplier of the base rate (head, layer decay).
        scales = [float(g.get("lr_scale", 1.0)) for g in optimizer.param_groups]
        model.train()
        avg, best = 0.0, math.inf
        batches = _batches(parts)
        # With gradient accumulation a training step spans `accum` batches: so does each
        # step of the test, so the rate found suits the effective batch.
        accum = max(1, int(getattr(parts, "accum_steps", 1)))
        step_batches = iter(lambda: list(itertools.islice(batches, accum)), [])
        try:
            for step, batch in zip(range(steps), step_batches):
                if should_cancel is not None and should_cancel():
                    result.stopped = CANCELLED
                    break
                lr = lr_at(step, steps, start_lr, end_lr)
                for group, scale in zip(optimizer.param_groups, scales):
                    group["lr"] = lr * scale
                loss = _train_step(parts, batch, trainable, grad_clip)
                if not math.isfinite(loss):
                    result.stopped = NON_FINITE
                    break
                avg = BETA * avg + (1 - BETA) * loss
                smoothed = avg / (1 - BETA ** (step + 1))
                point = LrPoint(step + 1, lr, loss, smoothed)
                result.points.append(point)
                if on_point is not None:
                    on_point(point)
                best = min(best, smoothed)
                if smoothed > DIVERGE * best:
                    result.stopped = DIVERGED
                    break
        finally:
            batches.close()  # its loader iterator ends now, not when collected
            optimizer.zero_grad(set_to_none=True)
            optimizer.state.clear()  # the moments of the test are no run's
    suggest(result)
    return result


def _batches(parts: RunParts) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches on the device, epoch after epoch for as long as the test asks."""
    loaders = parts.loaders
    epoch = 0
    while True:
        batches = loaders.train_batches(epoch)
        got = False
        try:
            for batch in batches:
                got = True
                x = batch.x if batch.x is not None else loaders.load("train", batch.indices)[0]
                x = x.to(parts.device, non_blocking=parts.device.type == "cuda")
                if loaders.train_finish is not None:
                    x = loaders.train_finish(x)
                if parts.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                yield x, batch.y.to(parts.device)
        finally:
            batches.close()
        if not got:
            raise FreezerError(
                "There are no training images to run the range test on.",
                "Choose an image folder with images in each class.",
            )
        epoch += 1


def _train_step(
    parts: RunParts,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    trainable: list[nn.Parameter],
    grad_clip: float | None,
) -> float:
    """One optimizer step as the trainer takes it (autocast, mixup, accumulation over
    `batches`, grad scaler, clipping); the step's loss (the mean over its images)."""
    from freezer_app.core.train.trainer import logits_of

    optimizer = parts.optimizer
    optimizer.zero_grad(set_to_none=True)
    dtype = parts.precision.autocast_dtype
    images = sum(int(y.shape[0]) for _, y in batches)
    total = 0.0
    for x, y in batches:
        target: torch.Tensor = _mixed(parts, x, y) if getattr(parts, "mixup", None) else y
        autocast = (
            torch.autocast(parts.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        )
        with autocast:
            loss = parts.criterion(logits_of(parts.model(x)), target)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value
        total += value * y.shape[0] / images
        scaled = loss * (y.shape[0] / images) if len(batches) > 1 else loss
        if parts.scaler:
            parts.scaler.scale(scaled).backward()
        else:
            scaled.backward()
    if parts.scaler:
        parts.scaler.unscale_(optimizer)
    if grad_clip:
        nn.utils.clip_grad_norm_(trainable, grad_clip)
    if parts.scaler:
        parts.scaler.step(optimizer)
        parts.scaler.update()
    else:
        optimizer.step()
    return total


def _mixed(parts: RunParts, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mixup/CutMix `x` in place as a run does (timm's Mixup needs an even batch: an odd last
    image keeps its own smoothed label); the soft targets."""
    from timm.data.mixup import mixup_target

    mixup = parts.mixup
    even = x.shape[0] - x.shape[0] % 2
    pieces = [mixup(x[:even], y[:even])[1]] if even else []
    if even < x.shape[0]:
        pieces.append(mixup_target(y[even:], mixup.num_classes, 1.0, mixup.label_smoothing))
    return torch.cat(pieces) if len(pieces) > 1 else pieces[0]


def find_lr(
    project: Project,
    steps: int = STEPS,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    on_point: Callable[[LrPoint], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    report: DataReport | None = None,
    trust: CodeTrust | None = None,
    on_status: Callable[[str], None] | None = None,
) -> LrFindResult:
    """The range test of `project` (not changed: a copy is prepared). Raises FreezerError when
    the project cannot train (bad settings, no data, a plan that leaves nothing to train)."""
    check_range(steps, start_lr, end_lr)
    project = copy.deepcopy(project)  # `prepare` notes the classes in it
    project.train.ema = None  # the test never reads an EMA copy: do not build one
    say = on_status or (lambda text: None)
    say("building the model and loading the data")
    if select_device(project.train.device).type == "cuda":
        torch.cuda.init()  # now, so that kept_rng saves (and restores) the CUDA generators too
    # `prepare` seeds the generators as a run does: the test draws what a run would, and
    # the app's generators are as they were afterwards.
    with kept_rng():
        parts = prepare_parts(project, report, trust)
        try:
            if should_cancel is not None and should_cancel():
                return LrFindResult(
                    stopped=CANCELLED, start_lr=start_lr, end_lr=end_lr, steps=steps
                )
            entries = timeline.entries(project.plan, parts.steps_per_epoch)
            plan = timeline.entry_at(entries, 1).plan  # the selection a run's first step trains
            say(f"range test on {parts.device}: {steps} steps from {start_lr:g} to {end_lr:g}")
            return range_test(
                parts,
                plan,
                steps,
                start_lr,
                end_lr,
                project.train.grad_clip,
                on_point,
                should_cancel,
            )
        finally:
            release(parts)


__all__ = [
    "CANCELLED",
    "COMPLETED",
    "DIVERGED",
    "NON_FINITE",
    "LrFindResult",
    "LrPoint",
    "find_lr",
    "prepare_parts",
    "range_test",
    "steepest",
    "suggest",
    "valley",
]
