"""Optimizer parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from timm.models._manipulate import group_with_matcher
from torch import nn

from freezer_app.core.layout import compile_matcher, stage_matcher
from freezer_app.core.project import TrainSettings
from freezer_app.core.tree import ModelTree


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
    lr_scale: float
    weight_decay: float
    params: list[nn.Parameter]
    names: list[str]


def param_groups(model: nn.Module, tree: ModelTree, settings: TrainSettings) -> list[GroupSpec]:
    """Groups over *all* parameters (frozen ones included, so unfreezing mid-run needs no new
    optimizer); the trainer passes only the trainable ones to each optimizer step.

    No weight decay on norms, biases and timm's no_weight_decay() parameters; the head's
    learning rate is multiplied by head_lr_mult; layer_decay scales deeper layers down.
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
        key = (scale, decay)
        group = groups.setdefault(key, GroupSpec(scale, decay, [], []))
        group.params.append(p)
        group.names.append(name)
    return list(groups.values())


def build_optimizer(groups: list[GroupSpec], settings: TrainSettings) -> torch.optim.Optimizer:
    torch_groups = [
        {
            "params": list(g.params),
            "lr": settings.lr * g.lr_scale,
            "weight_decay": g.weight_decay,
            "lr_scale": g.lr_scale,
        }
        for g in groups
    ]

    def make(**kernel: bool) -> torch.optim.Optimizer:
        if settings.optimizer == "sgd":
            return torch.optim.SGD(
                torch_groups,
                lr=settings.lr,
                momentum=settings.momentum,
                nesterov=settings.momentum > 0,
                **kernel,
            )
        return torch.optim.AdamW(torch_groups, lr=settings.lr, **kernel)

    # The fused kernels: one call per step instead of one per parameter (AdamW on the CPU is
    # 9× faster than torch's per-parameter default), and on CUDA the grad scaler hands them
    # its inf check without a host-device synchronisation. foreach where fused is unsupported.
    # torch checks fused support only at the first step, so decide here from the parameters.
    params = [p for g in torch_groups for p in g["params"]]
    if all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params):
        try:
            return make(fused=True)
        except (RuntimeError, ValueError):
            pass
    return make(foreach=True)


def restrict_to_trainable(optimizer: torch.optim.Optimizer, groups: list[GroupSpec]) -> None:
    """Give each group only its parameters that train now; forget the state of frozen ones.

    Parameters that stay trainable keep their optimizer state (momentum, Adam moments).
    """
    for torch_group, spec in zip(optimizer.param_groups, groups):
        torch_group["params"] = [p for p in spec.params if p.requires_grad]
        for p in spec.params:
            if not p.requires_grad:
                optimizer.state.pop(p, None)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate after `step` optimizer steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return 0.01 + 0.99 * step / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))
