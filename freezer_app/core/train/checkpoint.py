"""The resume checkpoint (`checkpoints/last.pt`): what it holds and how it is restored.

It stores the resolved architecture (model spec, class count, data config), so resuming does
not depend on where the starting bundle or weights file lives, and the optimizer state keyed
by parameter name, so it is restored into the right parameters whatever the group layout.
Read with `torch.load(weights_only=True)`: plain tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from freezer_app.core.errors import ProjectError
from freezer_app.core.files import WriteError, torch_save

CHECKPOINT_VERSION = 2


def named_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """The optimizer's per-parameter state keyed by parameter name."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {name_of[id(p)]: dict(state) for p, state in optimizer.state.items()}


def load_named_optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, saved: dict[str, Any]
) -> list[str]:
    """Put saved per-parameter state back by name (through `load_state_dict`, so tensors are
    cast and moved as the optimizer wants). Returns the names that found no parameter."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    current = optimizer.state_dict()
    state: dict[int, Any] = {}
    index = 0
    placed = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = name_of[id(p)]
            if name in saved:
                state[index] = saved[name]
                placed.add(name)
            index += 1
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
    return sorted(set(saved) - placed)


def save(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically; a failed write (disk full: torch reports it as a RuntimeError from
    its C++ writer) is a WriteError that says where and how much room there was."""
    try:
        torch_save({"version": CHECKPOINT_VERSION, **checkpoint}, path)
    except RuntimeError as e:
        raise WriteError(
            f"Could not write the checkpoint {path}: {_why(path, e)}.",
            "Free some space on that disk (or move the run folder), then continue with "
            "`freezer-app train --resume RUN_DIR`.",
        ) from None


def _why(path: Path, e: BaseException) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return str(e).splitlines()[0]
    return f"the disk is full or failing ({free / 1e6:,.1f} MB free there)"


def load(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ProjectError(f"Cannot read {path}: {e}", "The checkpoint may be damaged.") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise ProjectError(
            f"{path} was written by another version of Freezer "
            f"(checkpoint format {ckpt.get('version') if isinstance(ckpt, dict) else '?'}, "
            f"this one reads {CHECKPOINT_VERSION}).",
            "Start the run again with `freezer-app train RUN/project.json`.",
        )
    return ckpt
