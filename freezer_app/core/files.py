"""Writing files so that none is ever left half-written: write a temporary name, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from freezer_app.core.errors import FreezerError


class WriteError(FreezerError):
    """A file could not be written (disk full, permission denied, ...)."""


def _explain(path: Path, e: OSError) -> WriteError:
    import errno

    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "the file system is read-only",
        errno.ENOENT: "the folder does not exist",
    }
    reason = reasons.get(e.errno or 0, e.strerror or str(e))
    return WriteError(
        f"Could not write {path}: {reason}.",
        "Nothing was left behind. Free some space or pick another location, then try again.",
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _usual_mode(tmp: Path, target: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create owner-only files; give the result the mode a plain write would
    (the replaced file's mode, or the umask's default) so others can read exports."""
    try:
        mode = (
            target.stat().st_mode & 0o7777
            if target.exists()
            else (0o777 if directory else 0o666) & ~_UMASK
        )
        os.chmod(tmp, mode)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    On any error (or KeyboardInterrupt) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _explain(path, e) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        _usual_mode(tmp, path)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _explain(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it becomes `path`.

    With replace=True an existing `path` is swapped out only after the new one is complete.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise _explain(path, e) from None
    try:
        yield tmp
        _usual_mode(tmp, path, directory=True)
        if path.exists() and replace:
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old, path)  # put the previous version back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _explain(path, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def torch_save(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def state_dict_for_safetensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors with every key kept: tied tensors are stored once per name,
    since safetensors refuses shared storage."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in state.items():
        t = v.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        out[k] = t
    return out


def save_safetensors(
    state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    tensors = state_dict_for_safetensors(state)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Run `writer(tmp_path)` and rename the result into place."""
    with atomic_path(path) as tmp:
        writer(tmp)
