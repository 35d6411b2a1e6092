"""Reading weight files safely and loading them into a model with clear errors.

Besides plain state_dicts this reads other tools' training checkpoints as starting weights:
timm's (`CheckpointSaver`: the weights under `state_dict`, the run's `argparse.Namespace` under
`args`) and PyTorch Lightning's `.ckpt` (the LightningModule's `state_dict`, whose keys carry
the attribute the model lives in, e.g. `model.`; `hyper_parameters` an `AttributeDict`). Both
are still read with `weights_only=True`: only the few data-only containers they hold are
allowed (`_SAFE_GLOBALS`), and a file naming any other class or function is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import pickle
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from freezer_app.core.errors import WeightsError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Wrappers that training scripts put around a state_dict.
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "module", "ema")


class _AsPlainDict:
    """Stands in for a dict subclass that only adds attribute access (Lightning's
    `AttributeDict`): unpickling "creates" one as a plain dict, which then receives the items.
    Nothing of the named class is imported or run (Lightning need not be installed)."""

    def __new__(cls, *args: object, **kwargs: object) -> dict[Any, Any]:  # type: ignore[misc]
        return {}


# The only globals a weights file may name beyond torch's own weights_only allow-list: data
# containers that run no code when rebuilt (NEWOBJ + BUILD/SETITEMS on a fresh instance).
_AS_PLAIN_DICT = (
    # Lightning >= 2: `lightning.fabric.utilities.data.AttributeDict` (also re-exported as
    # `lightning.pytorch.utilities.parsing.AttributeDict`); the standalone packages'
    # `lightning_fabric` and `pytorch_lightning` (< 2) spellings.
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)


def _numpy_number(dtype: Any, data: bytes | None = None) -> Any:
    """Stands in for numpy's scalar reconstructor (NumPy numbers in Lightning's
    hyper_parameters, e.g. a learning rate from np.logspace): numbers only, as Python numbers;
    any other dtype is refused."""
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"a NumPy scalar of dtype {dtype!r} is not allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0].item()


def _numpy_globals() -> list[Any]:
    try:
        import numpy as np
    except ImportError:
        return []
    # A dtype is rebuilt from its type code ("f8") and then given its state (byte order):
    # the unpickler checks the state's class, one per numeric dtype.
    numeric = {type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}
    return [
        np.dtype,
        *sorted(numeric, key=lambda t: t.__name__),
        # NumPy 2 pickles numbers as numpy._core.multiarray.scalar, NumPy 1 as numpy.core...
        (_numpy_number, "numpy._core.multiarray.scalar"),
        (_numpy_number, "numpy.core.multiarray.scalar"),
    ]


_SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,  # timm's train.py saves its arguments in the checkpoint
    *((_AsPlainDict, name) for name in _AS_PLAIN_DICT),
    *_numpy_globals(),
]
_safe_lock = threading.Lock()
_safe_users = 0
_safe_context: Any = None
_UNSUPPORTED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")


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
            _check_torch_file(path)
            state = _torch_load(path)
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
        _check_torch_file(path)
        try:
            loaded = _torch_load(path, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            loaded = _torch_load(path)
    return {k: tuple(v.shape) for k, v in _unwrap(loaded, path).items()}


def _torch_load(path: Path, mmap: bool = False) -> object:
    """`torch.load(weights_only=True)` that also accepts the containers in `_SAFE_GLOBALS`.

    Never falls back to full unpickling: any other global is refused (UnpicklingError)."""
    with _safe_globals_allowed():
        if mmap:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        return torch.load(str(path), map_location="cpu", weights_only=True)


@contextlib.contextmanager
def _safe_globals_allowed() -> Iterator[None]:
    """`torch.serialization.safe_globals(_SAFE_GLOBALS)`, shared by overlapping reads.

    torch keeps the allow-list in one process-wide set, so one thread leaving the context
    would take the entries away from another still reading; the entries are added by the
    first reader in and removed by the last one out."""
    global _safe_users, _safe_context
    with _safe_lock:
        if _safe_users == 0:
            _safe_context = torch.serialization.safe_globals(_SAFE_GLOBALS)
            _safe_context.__enter__()
        _safe_users += 1
    try:
        yield
    finally:
        with _safe_lock:
            _safe_users -= 1
            if _safe_users == 0:
                _safe_context.__exit__(None, None, None)
                _safe_context = None


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}", "Check the path and try again.")
    return path


_NOT_WEIGHTS_HINT = (
    "Freezer reads .safetensors files and PyTorch checkpoints saved with torch.save "
    "(.pth, .pt, .bin, .ckpt)."
)


def _not_weights(path: Path, why: str = "") -> WeightsError:
    return WeightsError(
        f"{path.name} is not a weights file Freezer can read{why}.", _NOT_WEIGHTS_HINT
    )


def _check_torch_file(path: Path) -> None:
    """Refuse a file that cannot be a torch.save checkpoint before torch's unpickler reads it:
    a zip archive (PyTorch >= 1.6), a pickle (older torch.save: protocol 2 or later starts with
    0x80) or a tar archive (the oldest). A text file fed to the unpickler fails in many odd
    ways (KeyError, IndexError, or torch's advice to load it with weights_only=False)."""
    try:
        with path.open("rb") as f:
            head = f.read(262)
    except OSError as e:
        raise WeightsError(
            f"Could not read {path}: {e.strerror or e}", "Check the file's permissions."
        ) from None
    if not head:
        raise _not_weights(path, " (it is empty)")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x80")) or head[257:262] == b"ustar":
        return
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        raise WeightsError(
            f"{path.name} is a safetensors file with the suffix {path.suffix or '(none)'}.",
            f"Rename it to {path.stem}.safetensors.",
        )
    text = all(b >= 32 or b in b"\t\r\n" for b in head)
    raise _not_weights(path, " (it holds text)" if text else "")


@contextlib.contextmanager
def _read_errors(path: Path) -> Iterator[None]:
    """Reading errors as WeightsErrors that say what is wrong with the file.

    torch's own message for a refused pickle advises loading it with weights_only=False
    (which runs whatever code the file names); it is never passed on."""
    try:
        yield
    except WeightsError:
        raise
    except pickle.UnpicklingError as e:
        named = _UNSUPPORTED_GLOBAL.search(str(e))
        if not named and "not allowed" not in str(e):
            # Nothing refused by name: a damaged pickle, one in a form the safe reader does
            # not take (an old pickle protocol), or not a checkpoint at all.
            raise WeightsError(
                f"{path.name} could not be read as weights: {_first_line(e)}",
                "Save the weights again with torch.save(model.state_dict(), PATH) (a recent "
                "PyTorch) or as .safetensors; the file may also be damaged.",
            ) from None
        what = f"Python objects ({named.group(1)})" if named else "Python objects"
        raise WeightsError(
            f"{path.name} contains {what}, not just tensors, and is not loaded: rebuilding "
            "them could run code.",
            "Save only the weights (torch.save(model.state_dict(), PATH)) or use .safetensors.",
        ) from None
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise WeightsError(
            f"Could not read weights from {path}: {_first_line(e)}",
            "The file may be truncated or not a PyTorch/safetensors weights file.",
        ) from None
    except (KeyError, IndexError, TypeError, AttributeError):
        # torch's weights_only unpickler on bytes that are not a pickle it wrote.
        raise _not_weights(path) from None


def _first_line(e: BaseException) -> str:
    """The first line of an error's message; never torch's advice to load with
    weights_only=False."""
    text = str(e).strip()
    line = text.splitlines()[0] if text else repr(e)
    return type(e).__name__ if "weights_only" in line else line


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
    Any other missing, unexpected or mis-shaped key is an error naming those keys. Keys under
    the attribute a wrapper kept the model in (Lightning's `model.`) are matched to the
    model's own names first (`_model_names`).
    """
    state = _model_names(model, state)
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
    shapes = _model_names(model, shapes)
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


def head_classes(
    model: nn.Module, shapes: Mapping[str, tuple[int, ...]], dropped: Iterable[str]
) -> int | None:
    """How many classes the classifier in weights of these shapes has: the leading size of
    its head tensors that did not fit `model` (`check_fit`'s dropped keys). None when they
    disagree or there are none."""
    shapes = _model_names(model, shapes)
    sizes = {shapes[k][0] for k in dropped if shapes.get(k)}
    return sizes.pop() if len(sizes) == 1 else None


_V = TypeVar("_V")


def _model_names(model: nn.Module, state: Mapping[str, _V]) -> Mapping[str, _V]:
    """`state` with the leading prefix removed that makes its keys the model's own names.

    A wrapper's checkpoint names the model's tensors after the attribute it kept the model in
    (a LightningModule's `self.model` gives `model.conv1.weight`; `net.`, `backbone.`,
    `model.module.` likewise). Left as it is when its keys already are the model's names or
    no prefix makes more of them so. A prefix shared by every key is removed from all; one
    shared by only some keys is taken only when those keys then cover every tensor of the
    model, and the other keys (the wrapper's own: a loss's buffers, an EMA copy) are left out.
    """
    own = set(model.state_dict())
    if not state or all(k in own for k in state):
        return state
    needed = {k for k in own if not k.endswith("num_batches_tracked")}
    best, best_hits = "", sum(k in own for k in state)
    counts = _prefixes(state)
    for prefix in sorted(counts, key=len):
        shared = counts[prefix] == len(state)
        if not shared and counts[prefix] < len(needed):
            continue
        renamed = {k[len(prefix) :] for k in state if k.startswith(prefix)}
        hits = len(renamed & own)
        if hits > best_hits and (shared or needed <= renamed):
            best, best_hits = prefix, hits
    if not best:
        return state
    return {k[len(best) :]: v for k, v in state.items() if k.startswith(best)}


def _prefixes(keys: Iterable[str], depth: int = 3) -> Counter[str]:
    """How many of `keys` start with each leading dotted part ("model.", "model.module."),
    up to `depth` parts deep."""
    found: Counter[str] = Counter()
    for key in keys:
        parts = key.split(".")[:-1]
        found.update(".".join(parts[:i]) + "." for i in range(1, min(depth, len(parts)) + 1))
    return found


def _on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())
