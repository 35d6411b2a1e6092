"""Reading weight files safely and loading them into a model with clear errors."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from freezer_app.core.errors import WeightsError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Wrappers that training scripts put around a state_dict.
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module", "ema")


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a .safetensors file (empty for other formats)."""
    if path.suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return {}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or a .pth/.pt file read with weights_only=True.

    Pickled files are never loaded with code execution: anything that is not plain tensors
    and containers is refused with a message saying so.
    """
    path = _existing(path)
    with _read_errors(path):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    return _unwrap(state, path)


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor in a weights file, reading as little as it can.

    .safetensors: the header only (`safe_open`, `get_slice(name).get_shape()`); no tensor data.
    .pth/.pt: `torch.load(mmap=True, weights_only=True)`, so tensor data stays on disk (only
    the pages a tensor's values live in would be read, and none are); files in the old
    pre-zip format cannot be mapped and are read whole. Same refusals and messages as
    `read_state_dict`.
    """
    path = _existing(path)
    with _read_errors(path):
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                state = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            return _unwrap_shapes(state, path)
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: tuple(v.shape) for k, v in _unwrap(loaded, path).items()}


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}", "Check the path and try again.")
    return path


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Reading errors as WeightsErrors that say what is wrong with the file."""
    try:
        yield
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path.name} contains Python objects, not just tensors, and is not loaded "
            "because unpickling it could run code.",
            "Save only the weights (torch.save(model.state_dict(), PATH)) or use .safetensors. "
            f"Detail: {str(e).splitlines()[0]}",
        ) from None
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise WeightsError(
            f"Could not read weights from {path}: {str(e).splitlines()[0] if str(e) else e!r}",
            "The file may be truncated or not a PyTorch/safetensors weights file.",
        ) from None


def _unwrap_shapes(state: dict[str, tuple[int, ...]], path: Path) -> dict[str, tuple[int, ...]]:
    if not state:
        raise WeightsError(
            f"{path.name} does not hold a state_dict (a mapping of names to tensors).",
            "Save weights with torch.save(model.state_dict(), PATH) or safetensors.",
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
            for key in _WRAPPER_KEYS:
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
            else:
                break
    if not isinstance(state, dict) or not state:
        raise WeightsError(
            f"{path.name} does not hold a state_dict (a mapping of names to tensors).",
            "Save weights with torch.save(model.state_dict(), PATH) or safetensors.",
        )
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    # DataParallel / DistributedDataParallel wrap every key in "module.".
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    head_paths: tuple[str, ...] = (),
    source: str = "the weights file",
) -> list[str]:
    """Load `state` into `model` strictly, except for a classifier head of another size.

    Returns the head keys that were dropped (re-initialised for a new number of classes).
    Any other missing, unexpected or mis-shaped key is an error naming those keys.
    """
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    dropped = check_fit(model, shapes, head_paths, source)
    state = {k: v for k, v in state.items() if k not in dropped}
    model.load_state_dict(state, strict=False, assign=_on_meta(model))
    return dropped


def check_fit(
    model: nn.Module,
    shapes: Mapping[str, tuple[int, ...]],
    head_paths: tuple[str, ...] = (),
    source: str = "the weights file",
) -> list[str]:
    """Whether weights with these names and shapes (`read_shapes`) fit `model`, as
    `load_weights` decides, without any tensor data: returns the head keys that would be
    dropped; raises WeightsError naming every other missing, unexpected or mis-shaped key."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    in_head = lambda k: any(k == h or k.startswith(h + ".") for h in head_paths)
    dropped = [k for k, shape in shapes.items() if in_head(k) and k in own and shape != own[k]]
    mismatched = [
        f"{k} {shape} vs model {own[k]}"
        for k, shape in shapes.items()
        if k in own and k not in dropped and shape != own[k]
    ]
    # Old checkpoints lack BatchNorm's step counter; it does not affect the weights.
    missing = [
        k
        for k in own
        if k not in shapes and k not in dropped and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in shapes if k not in own]
    if mismatched or missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_list(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches: {_list(mismatched, 4)}")
        raise WeightsError(
            f"{source} does not fit this architecture ({type(model).__name__}): "
            + "; ".join(parts)
            + ".",
            "Pick the model these weights were saved from, or train without them.",
        )
    return dropped


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())
