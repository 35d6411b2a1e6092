"""Optimizer parameter groups, the optimizer (timm's `create_optimizer_v2`) and the learning-rate
schedule (timm's `create_scheduler_v2`, stepped per optimizer step)."""

from __future__ import annotations

import difflib
import inspect
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import timm
import torch
from timm.models._manipulate import group_with_matcher
from timm.optim import create_optimizer_v2, get_optimizer_class, get_optimizer_info
from timm.optim import list_optimizers as timm_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn

from freezer_app.core.errors import ProjectError
from freezer_app.core.freeze import mult_of
from freezer_app.core.layout import compile_matcher, stage_matcher
from freezer_app.core.tree import ModelTree

if TYPE_CHECKING:
    from freezer_app.core.project import TrainSettings

# Suggestions in the window and --help; any name timm's create_optimizer_v2 takes is accepted.
OPTIMIZER_EXAMPLES: tuple[str, ...] = (
    "adamw",
    "sgd",
    "adam",
    "nadamw",
    "radam",
    "lamb",
    "lion",
    "adan",
    "adafactor",
    "adabelief",
    "adopt",
    "laprop",
    "madgrad",
    "rmsprop",
    "lars",
)
SCHEDULES: tuple[str, ...] = ("cosine", "constant", "none", "step", "poly", "tanh", "plateau")
# The schedules' floor and the warmup's start, × the base rate (Freezer's schedule before timm's).
FLOOR = 0.01


# ---------------------------------------------------------------------- parameter groups
def _layer_ids(model: nn.Module, names: list[str]) -> dict[str, int]:
    """Depth index of every parameter for layer-wise learning-rate decay (0 = input side).

    timm's fine-grained group_matcher (as timm's own param_groups_layer_decay uses), the
    torchvision stage matchers, or top-level children for a user's module.
    """
    spec = None
    if callable(getattr(model, "group_matcher", None)):
        try:
            spec = compile_matcher(model.group_matcher(coarse=False))
        except (NotImplementedError, TypeError):
            spec = None
    if spec is None:
        matched = stage_matcher(model)
        spec = matched[0] if matched else None
    if spec is None:
        tops = list(dict.fromkeys(n.split(".")[0] for n in names))
        return {n: tops.index(n.split(".")[0]) for n in names}
    return group_with_matcher(((n, n) for n in names), spec, reverse=True)


def _no_decay_names(model: nn.Module) -> set[str]:
    skip = getattr(model, "no_weight_decay", None)
    try:
        return set(skip()) if callable(skip) else set()
    except Exception:
        return set()


@dataclass
class GroupSpec:
    lr_scale: float  # × the scheduled base rate: head_lr_mult or layer decay, × per-layer lr_mult
    weight_decay: float
    params: list[nn.Parameter]
    names: list[str]
    name: str = ""  # how its learning rate is logged: "x10" (one name per multiplier)


def group_name(scale: float) -> str:
    return f"x{scale:g}"


def param_groups(
    model: nn.Module,
    tree: ModelTree,
    settings: TrainSettings,
    lr_mult: dict[str, float] | None = None,
) -> list[GroupSpec]:
    """Groups over *all* parameters (frozen ones included, so unfreezing mid-run needs no new
    optimizer: an unfrozen layer joins the group its multiplier and decay put it in); the
    trainer passes only the trainable ones to each optimizer step (restrict_to_trainable).

    Not timm's param_groups_layer_decay (nor create_optimizer_v2 given the model): it leaves
    out parameters with requires_grad False, so a layer frozen at the start could never join
    the optimizer later, and it knows neither head_lr_mult, per-layer multipliers nor the
    stages of torchvision and users' models. The same depth matcher is used here (_layer_ids).

    No weight decay on norms, biases and timm's no_weight_decay() parameters; the head's
    learning rate is multiplied by head_lr_mult; layer_decay scales deeper layers down;
    `lr_mult` ({module path: multiplier}, the plan's) multiplies whatever the rest gives.
    """
    by_name = dict(model.named_parameters())
    names = [p.name for p in tree.params]
    skip = _no_decay_names(model)
    head = set(tree.layout.head)
    layer_of = _layer_ids(model, names) if settings.layer_decay else {}
    n_layers = max(layer_of.values(), default=0) + 1
    groups: dict[tuple[float, float], GroupSpec] = {}
    for name in names:
        p = by_name[name]
        decay = settings.weight_decay
        if p.ndim <= 1 or name in skip or any(name.startswith(s + ".") for s in skip):
            decay = 0.0
        scale = 1.0
        if settings.layer_decay:
            scale = settings.layer_decay ** (n_layers - 1 - layer_of.get(name, n_layers - 1))
        if name in head:
            scale = settings.head_lr_mult
        if lr_mult:
            scale *= mult_of(name, lr_mult)
        key = (scale, decay)
        group = groups.setdefault(key, GroupSpec(scale, decay, [], [], group_name(scale)))
        group.params.append(p)
        group.names.append(name)
    return list(groups.values())


# ---------------------------------------------------------------------- the optimizer
def optimizer_problem(name: str) -> str | None:
    """Why `name` is not an optimizer Freezer can train with, or None when it is."""
    known = timm_optimizers()
    parts = name.strip().lower().split("_")
    base = parts[-1]
    if not name.strip() or len(parts) > 2 or (len(parts) == 2 and parts[0] != "lookahead"):
        base = ""
    if base not in known:
        # lookahead_X: suggest lookahead_ + the names close to X.
        wrapped = name.strip().lower().startswith("lookahead_")
        asked = name.strip().lower().removeprefix("lookahead_")
        close = difflib.get_close_matches(asked, known, n=5, cutoff=0.5)
        close = [f"lookahead_{c}" for c in close] if wrapped else close
        hint = f"Did you mean: {', '.join(close)}?" if close else ""
        return (
            f"{name!r} is not one of timm's optimizers. {hint} Any name of "
            "timm.optim.list_optimizers() works (e.g. adamw, sgd, lamb, lion, adan, adafactor), "
            "optionally as lookahead_NAME"
        ).replace("  ", " ")
    info = get_optimizer_info(base)
    if info.second_order:
        return f"{base} needs second-order gradients, which Freezer's training step does not make"
    try:
        get_optimizer_class(info, bind_defaults=False)
    except (ImportError, AssertionError) as e:
        return f"{base} cannot be used here: {str(e) or 'it needs CUDA'}"
    return None


def check_optimizer(name: str) -> None:
    problem = optimizer_problem(name)
    if problem:
        raise ProjectError(
            f"Setting train.optimizer: {problem}.",
            "Pick another optimizer (--optimizer adamw works everywhere).",
        )


def inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The optimizer holding the per-parameter state (timm's Lookahead wraps another)."""
    return getattr(optimizer, "_base_optimizer", optimizer)


def build_optimizer(groups: list[GroupSpec], settings: TrainSettings) -> torch.optim.Optimizer:
    """timm's `create_optimizer_v2(settings.optimizer)` over Freezer's groups.

    Each group's rate is base × lr_scale with `initial_lr` the base: timm's schedulers start
    from `initial_lr` and multiply by `lr_scale` themselves, so the scale is applied once.
    """
    check_optimizer(settings.optimizer)
    torch_groups = [
        {
            "params": list(g.params),
            "lr": settings.lr * g.lr_scale,
            "initial_lr": settings.lr,
            "weight_decay": g.weight_decay,
            "lr_scale": g.lr_scale,
            "name": g.name,
        }
        for g in groups
    ]
    name = settings.optimizer.strip().lower()
    info = get_optimizer_info(name.split("_")[-1])
    opt_class = get_optimizer_class(info, bind_defaults=False)
    kwargs: dict[str, Any] = {}
    if info.has_momentum and settings.momentum == 0 and (info.defaults or {}).get("nesterov"):
        kwargs["nesterov"] = False  # Nesterov needs momentum (as before: Nesterov when > 0)

    def make(**kernel: Any) -> torch.optim.Optimizer:
        return create_optimizer_v2(
            torch_groups,
            opt=name,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            momentum=settings.momentum,
            **kwargs,
            **kernel,
        )

    # torch's fused kernels: one call per step instead of one per parameter (AdamW on the CPU
    # is 9× faster than torch's per-parameter default), and on CUDA the grad scaler hands them
    # its inf check without a host-device synchronisation. foreach where fused is unsupported.
    # torch checks fused support only at the first step, so decide here from the parameters.
    # Not SGD: its fused kernel fails when a layer unfrozen mid-run joins a group whose other
    # parameters have momentum buffers (foreach creates the missing ones).
    params = [p for g in torch_groups for p in g["params"]]
    if opt_class in (torch.optim.AdamW, torch.optim.Adam) and all(
        p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params
    ):
        try:
            return make(fused=True)
        except (RuntimeError, ValueError):
            pass
    try:
        accepts_foreach = "foreach" in inspect.signature(opt_class).parameters
    except (TypeError, ValueError):
        accepts_foreach = False
    return make(foreach=True) if accepts_foreach else make()


def restrict_to_trainable(optimizer: torch.optim.Optimizer, groups: list[GroupSpec]) -> None:
    """Give each group only its parameters that train now; forget the state of frozen ones.

    This is what keeps frozen parameters out of every optimizer's step: a parameter that is
    not in a group is never visited, so no optimizer can move it, even one that applies
    decoupled weight decay or a momentum update to every parameter of a group whatever its
    gradient. Parameters that stay trainable keep their state (momentum, Adam moments).
    """
    state = inner_optimizer(optimizer).state
    for torch_group, spec in zip(optimizer.param_groups, groups):
        torch_group["params"] = [p for p in spec.params if p.requires_grad]
        for p in spec.params:
            if not p.requires_grad:
                state.pop(p, None)


# ---------------------------------------------------------------------- the schedule
class LrSchedule:
    """timm's scheduler for `settings.schedule`, stepped after every optimizer step.

    Counted in optimizer steps (t_in_epochs=False, one "epoch" of timm's per step), warmup
    first (timm's warmup_prefix): `cosine` with no cycles is the schedule Freezer had before,
    warmup from 1% of the rate, then down to 1% of it. timm multiplies each group's rate by its
    `lr_scale` (head, layer decay, per-layer multipliers). `plateau` is stepped by epoch with
    the epoch's early-stopping metric (`epoch_end`); its warmup still moves every step.

    Every schedule but plateau is a function of the step: a resume rebuilds it from the
    (possibly changed) settings and moves it to the step. Plateau's state (best metric,
    patience counters, the rates it reached) goes into the checkpoint: timm does not save it.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        settings: TrainSettings,
        schedule_steps: int,
        warmup_steps: int,
        steps_per_epoch: int,
    ) -> None:
        t = settings
        self.name = t.schedule
        self.optimizer = optimizer
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.warmup_steps = 0 if t.schedule == "none" else max(0, warmup_steps)
        floor = FLOOR * t.lr
        common: dict[str, Any] = {"warmup_lr": floor, "min_lr": floor, "noise": None}
        if self.name == "plateau":
            with warnings.catch_warnings():
                # timm deprecates it because it cannot save its state; Freezer saves it.
                warnings.simplefilter("ignore", FutureWarning)
                scheduler, _ = create_scheduler_v2(
                    optimizer,
                    sched="plateau",
                    warmup_epochs=self.warmup_steps / self.steps_per_epoch,  # per step: below
                    decay_rate=t.lr_decay_rate,
                    patience_epochs=t.lr_patience,
                    plateau_mode="max",  # the trainer's metric: higher is better
                    step_on_epochs=True,
                    **common,
                )
            plateau = scheduler.lr_scheduler
            # Absolute improvements: the metric may be negative (-val_loss), where a relative
            # threshold would take a worse value for a better one.
            plateau.threshold_mode = "abs"
            # Each group's floor is 1% of its own rate, as for the other schedules.
            plateau.min_lrs = [floor * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
        else:
            span = max(1, schedule_steps - self.warmup_steps)
            cycles = max(1, t.lr_cycles)
            decay_steps = (
                t.lr_decay_epochs * self.steps_per_epoch
                if t.lr_decay_epochs is not None
                else span / 3
            )
            scheduler, _ = create_scheduler_v2(
                optimizer,
                # "none": timm's none leaves the rate alone, lr_scale too; constant applies it.
                sched="constant" if self.name == "none" else self.name,
                num_epochs=max(1, span // cycles),
                warmup_epochs=self.warmup_steps,
                warmup_prefix=True,
                decay_epochs=max(1, round(decay_steps)),
                # step: × this per decay; poly: timm reads it as the power (1: linear).
                decay_rate=1.0 if self.name == "poly" else t.lr_decay_rate,
                cycle_limit=cycles,
                cycle_decay=t.lr_cycle_decay,
                step_on_epochs=False,
                updates_per_epoch=1,  # counts are in steps already
                **common,
            )
        if scheduler is None:  # an older timm that does not know this name returns none
            raise ProjectError(
                f"This timm ({timm.__version__}) has no {self.name!r} schedule.",
                "Upgrade timm (pip install -U timm), or choose another --schedule.",
            )
        self.scheduler = scheduler

    def step_update(self, step: int) -> None:
        """After optimizer step `step`: set the rates of step `step + 1`."""
        if self.name != "plateau":
            self.scheduler.step_update(step)
        elif 0 < step <= self.warmup_steps:
            # timm's plateau warms up by epoch; a fraction of an epoch makes it per step.
            self.scheduler.step(step / self.steps_per_epoch)

    def epoch_end(self, step: int, metric: float | None) -> None:
        """Plateau: the epoch's early-stopping metric (higher is better) may decay the rate."""
        if self.name == "plateau" and step > self.warmup_steps and metric is not None:
            self.scheduler.step(step / self.steps_per_epoch, float(metric))

    def base_lr(self) -> float:
        """The scheduled rate before the groups' multipliers."""
        group = self.optimizer.param_groups[0]
        return float(group["lr"]) / float(group.get("lr_scale", 1.0))

    def group_lrs(self) -> dict[str, float]:
        """Each group's rate by its name (one per multiplier)."""
        return {
            str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)
        }

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"schedule": self.name}
        if self.name == "plateau":
            state["plateau"] = dict(self.scheduler.lr_scheduler.state_dict())
            state["lrs"] = [float(g["lr"]) for g in self.optimizer.param_groups]
        return state

    def load_state_dict(self, state: dict[str, Any] | None, step: int) -> None:
        """Continue after optimizer step `step` (the state: from a checkpoint, or None)."""
        if self.name == "plateau" and state and state.get("schedule") == "plateau":
            self.scheduler.lr_scheduler.load_state_dict(state["plateau"])
            lrs = state.get("lrs") or []
            if len(lrs) == len(self.optimizer.param_groups):
                for group, lr in zip(self.optimizer.param_groups, lrs):
                    group["lr"] = float(lr)
        self.step_update(step)
