"""Writing files so that none is ever left half-written: write a temporary name, then rename.

Temporary names are recognisable and say who wrote them: ``.NAME.freezer-tmp-HOST-PID-RANDOM``
(HOST: 8 hex digits of a hash of the machine's name). A write killed before its rename leaves
one behind; ``remove_stale_temp_files(folder)`` (run before every export) removes those whose
process is gone, or that are older than ``STALE_AFTER_S`` whatever their process, and nothing
else.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from freezer_app.core.errors import FreezerError

TEMP_TAG = ".freezer-tmp-"
# A temporary file or folder this old is stale even if a process with its PID is alive (the PID
# may have been reused, or the file written on another machine sharing the disk).
STALE_AFTER_S = 3600.0


class WriteError(FreezerError):
    """A file could not be written (disk full, permission denied, ...).

    errno: the OS error number when known; path: the file that could not be written.
    """

    errno: int | None = None
    path: Path | None = None


_REASONS = {
    errno_codes.ENOSPC: "the disk is full",
    errno_codes.EDQUOT: "the disk quota is exceeded",
    errno_codes.EFBIG: "the file is too large for this file system",
    errno_codes.EACCES: "permission denied",
    errno_codes.EPERM: "permission denied",
    errno_codes.EROFS: "the file system is read-only",
    errno_codes.ENOENT: "the folder does not exist",
    errno_codes.EIO: "an input/output error occurred (the disk may be failing)",
}


def reason_for(code: int | None, fallback: str = "") -> str:
    """Plain words for an OS error number."""
    return _REASONS.get(code or 0, fallback or (os.strerror(code) if code else "unknown error"))


def _explain(path: Path, e: OSError) -> WriteError:
    reason = reason_for(e.errno, e.strerror or str(e))
    err = WriteError(
        f"Could not write {path}: {reason}.",
        "Nothing was left behind. Free some space or pick another location, then try again.",
    )
    err.errno, err.path = e.errno, path
    return err


_ERRNO_IN_TEXT = re.compile(r"os error (\d+)|\[Errno (\d+)\]|errno[ =:]+(\d+)", re.I)
_TORCH_WRITER_FAILED = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


def io_errno(e: BaseException) -> int | None:
    """The OS error behind an exception, also when a library wrapped it in its own type
    (safetensors: "I/O error: ... (os error 28)"; torch's C++ writer: "file write failed",
    which names no error: EIO). None when the exception is not about writing a file."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return current.errno
        text = str(current)
        match = _ERRNO_IN_TEXT.search(text)
        if match:
            return int(next(g for g in match.groups() if g))
        if "No space left on device" in text:
            return errno_codes.ENOSPC
        if "Permission denied" in text:
            return errno_codes.EACCES
        if any(s in text for s in _TORCH_WRITER_FAILED):
            return errno_codes.EIO
        current = current.__cause__ or current.__context__
    return None


# ---------------------------------------------------------------------- temporary names
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


_HOST = _host_tag()
_TEMP_NAME = re.compile(r"^\..*\.freezer-tmp-([0-9a-f]{8})-(\d+)-[0-9a-f]+$")


def temp_name(target: Path) -> Path:
    """A fresh temporary name beside `target`: ``.NAME.freezer-tmp-HOST-PID-RANDOM``."""
    name = target.name[:150]  # leave room under the 255-byte limit
    return target.with_name(f".{name}{TEMP_TAG}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """A temporary file or folder of a Freezer write that will never finish: its process (on
    this machine) is gone, or it is older than STALE_AFTER_S."""
    match = _TEMP_NAME.match(path.name)
    if not match:
        return False
    host, pid = match.group(1), int(match.group(2))
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return True
    if host != _HOST or pid == os.getpid():
        return False  # another machine's process, or one of ours still writing
    return not _pid_alive(pid)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders that killed Freezer writes left in `folder`
    (names ``.NAME.freezer-tmp-HOST-PID-RANDOM``, see is_stale_temp); nothing else is touched.
    Returns what was removed. Errors are ignored: cleaning up never fails an operation."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        if TEMP_TAG not in entry.name or not is_stale_temp(path):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _usual_mode(tmp: Path, target: Path, directory: bool = False) -> None:
    """Temporary files are created owner-only; give the result the mode a plain write would
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


def _create_temp(path: Path, directory: bool) -> Path:
    for _ in range(100):
        tmp = temp_name(path)
        try:
            if directory:
                tmp.mkdir(mode=0o700)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno_codes.EEXIST, "no free temporary name", str(path))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`.

    On any error (or KeyboardInterrupt) the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(path, directory=False)
    except OSError as e:
        raise _explain(path, e) from None
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

    With replace=True an existing `path` is swapped out only after the new one is complete
    (deciding whether it may be replaced is the caller's job).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(path, directory=True)
    except OSError as e:
        raise _explain(path, e) from None
    try:
        yield tmp
        _usual_mode(tmp, path, directory=True)
        if path.exists() and replace:
            old = temp_name(path)
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


def write_raw(path: Path, data: bytes) -> None:
    """Write `data` at `path` as it is and flush it to the disk (no temporary name: for use
    inside atomic_path). Freezer's own bytes reach the disk here; libraries write their own."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        write_raw(tmp, data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        write_raw(tmp, text.encode("utf-8"))


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


def link_or_copy(source: str | Path, target: str | Path) -> None:
    """`target` with the bytes of `source`: a hard link where the file system allows one (no
    second write), else a copy; atomic either way. Safe because Freezer never writes a file in
    place: a later save renames a new file over the name, leaving the other name untouched."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Run `writer(tmp_path)` and rename the result into place."""
    with atomic_path(path) as tmp:
        writer(tmp)
