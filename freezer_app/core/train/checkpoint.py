"""The resume checkpoint (`checkpoints/last.pt` + the weights file it names): what it holds, how
it is written off the training thread and how it is restored.

The model's weights are a plain safetensors file beside it (`checkpoints/weights-STEP.safetensors`,
with the same metadata as model.safetensors), so the best epoch's weights and the run's final
weights are hard links of it rather than second serialisations. last.pt names its weights file;
the file is written first, then last.pt, then the older weights file is removed, so a kill at any
moment leaves a last.pt whose weights exist.

It stores the resolved architecture (model spec, class count, data config), so resuming does
not depend on where the starting bundle or weights file lives, and the optimizer state keyed
by parameter name, so it is restored into the right parameters whatever the group layout.
Read with `torch.load(weights_only=True)`: plain tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from freezer_app.core.errors import ProjectError
from freezer_app.core.files import WriteError, link_or_copy, save_safetensors, torch_save

CHECKPOINT_VERSION = 3
READABLE_VERSIONS = (2, 3)  # 2: the weights inside last.pt under "model"
WEIGHTS_GLOB = "weights-*.safetensors"
# train.ema: the averaged weights, in the run folder beside model.safetensors (export
# --checkpoint ema). The resume state keeps its own copy in last.pt, under "ema".
EMA_WEIGHTS = "model-ema.safetensors"


def weights_name(step: int) -> str:
    return f"weights-{step:09d}.safetensors"


def snapshot(value: Any) -> Any:
    """A copy of `value` whose tensors are detached CPU copies, safe to write on another
    thread while training goes on changing the originals in place. Plain blocking copies: a
    checkpoint is taken between epochs, where waiting is allowed, and pageable memory goes
    back to the system when the write is done (pinned memory would stay with the process)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        return t.clone() if t.device.type == "cpu" else t.to("cpu")
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snapshot(v) for v in value]
    if isinstance(value, tuple):
        return tuple(snapshot(v) for v in value)
    return value


def named_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """The optimizer's per-parameter state keyed by parameter name (timm's Lookahead keeps it
    in the optimizer it wraps)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    state = getattr(optimizer, "_base_optimizer", optimizer).state
    return {name_of[id(p)]: dict(s) for p, s in state.items()}


# Counters some optimizers keep per param group rather than per parameter: timm's Lamb and
# Adan count their steps in group["step"] for bias correction.
GROUP_COUNTERS = ("step",)


def named_group_counters(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """Each group's counters, keyed by every parameter name of the group, so that they find
    their group again on resume whatever order the groups are rebuilt in."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, Any] = {}
    for group in getattr(optimizer, "_base_optimizer", optimizer).param_groups:
        counters = {k: group[k] for k in GROUP_COUNTERS if k in group}
        if counters:
            out.update({name_of[id(p)]: counters for p in group["params"]})
    return out


def load_group_counters(
    optimizer: torch.optim.Optimizer, model: nn.Module, saved: dict[str, Any]
) -> None:
    """Put saved group counters back: a restarted counter would redo the bias correction of
    a first step in the middle of a run."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    for group in getattr(optimizer, "_base_optimizer", optimizer).param_groups:
        found = next((saved[n] for p in group["params"] if (n := name_of[id(p)]) in saved), None)
        if found:
            group.update(found)


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


def save(
    path: Path,
    checkpoint: dict[str, Any],
    weights: dict[str, torch.Tensor],
    metadata: dict[str, str],
    links: tuple[Path, ...] = (),
) -> Path:
    """Write the weights file, then `links` to it (the best weights: before last.pt says which
    epoch was best), then `path` naming it, each atomically; remove older weights files.
    Returns the weights file. A failed write (disk full: torch reports it as a RuntimeError
    from its C++ writer) is a WriteError that says where and how much room there was."""
    folder = path.parent
    weights_path = folder / weights_name(int(checkpoint["step"]))
    try:
        save_safetensors(weights, weights_path, metadata)
        for link in links:
            link_or_copy(weights_path, link)
        torch_save(
            {"version": CHECKPOINT_VERSION, **checkpoint, "weights": weights_path.name}, path
        )
    except (RuntimeError, OSError) as e:
        raise WriteError(
            f"Could not write the checkpoint {path}: {_why(path, e)}.",
            "Free some space on that disk (or move the run folder), then continue with "
            "`freezer-app train --resume RUN_DIR`.",
        ) from None
    remove_unused_weights(folder, weights_path.name)
    return weights_path


def save_ema(run: Path, weights: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """The EMA weights as RUN/model-ema.safetensors (atomically, like every weights file)."""
    path = run / EMA_WEIGHTS
    try:
        save_safetensors(weights, path, metadata)
    except (RuntimeError, OSError) as e:
        raise WriteError(
            f"Could not write the EMA weights {path}: {_why(path, e)}.",
            "Free some space on that disk (or move the run folder), then continue with "
            "`freezer-app train --resume RUN_DIR`.",
        ) from None


def restore_ema(ema: Any, model: nn.Module, saved: dict[str, torch.Tensor] | None) -> None:
    """Put a checkpoint's EMA weights back into `ema` (timm's ModelEmaV3); a checkpoint
    without them (a run that had no EMA) starts the average from the model's weights."""
    if saved:
        ema.module.load_state_dict(saved)
    else:
        ema.set(model)


def remove_unused_weights(folder: Path, keep: str | None) -> None:
    """Weights files no checkpoint names (older ones, or one a killed run wrote last)."""
    for old in folder.glob(WEIGHTS_GLOB):
        if old.name != keep:
            # Windows refuses to remove a file open elsewhere: it goes at the next checkpoint.
            with contextlib.suppress(OSError):
                old.unlink(missing_ok=True)


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
    if not isinstance(ckpt, dict) or ckpt.get("version") not in READABLE_VERSIONS:
        raise ProjectError(
            f"{path} was written by another version of Freezer "
            f"(checkpoint format {ckpt.get('version') if isinstance(ckpt, dict) else '?'}, "
            f"this one reads {', '.join(map(str, READABLE_VERSIONS))}).",
            "Start the run again with `freezer-app train RUN/project.json`.",
        )
    if "model" not in ckpt:
        weights = path.parent / str(ckpt.get("weights"))
        try:
            ckpt["model"] = load_file(str(weights))
        except Exception as e:
            raise ProjectError(
                f"Cannot read the checkpoint's weights {weights}: {e}",
                "The checkpoint may be damaged; start the run again with "
                "`freezer-app train RUN/project.json`.",
            ) from None
    return ckpt


def weights_file(path: Path) -> Path | None:
    """The weights file a checkpoint names (None for a format 2 checkpoint, which holds them)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    name = ckpt.get("weights") if isinstance(ckpt, dict) else None
    return path.parent / name if name else None
