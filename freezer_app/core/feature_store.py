"""Cached activations of a frozen prefix (core/feature_cut.py), one row per image.

Rows live in RAM up to a budget; the rest go to a memory-mapped `.npy` file under the user
cache directory. A store is keyed by what its rows depend on (architecture, the prefix's
weights and code, the cut, the transform, the dtype: `key`), and each row by its image's path,
size and modification time, so a second run of the same project on the same data reads the
rows the first one computed, and a changed image is computed again.

On disk (one folder per key, `cache_root()/<hash>/`):
- `features-<id>.npy`: the rows, written in place only where no index lists them yet;
- `index.json`: the key, the row shape and dtype, and [path, size, mtime_ns, row] for every
  complete row; replaced atomically, so a reader never sees a row that is not complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from freezer_app.core.files import remove_stale_temp_files, temp_name, write_json

FORMAT = 1
CACHE_ENV = "FREEZER_CACHE_DIR"
INDEX = "index.json"
_STORAGE = {torch.float32: "<f4", torch.float16: "<f2", torch.bfloat16: "<u2"}


def cache_root() -> Path:
    """Where feature caches live: $FREEZER_CACHE_DIR, else the platform's user cache folder."""
    given = os.environ.get(CACHE_ENV)
    if given:
        return Path(given).expanduser() / "features"
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "freezer" / "cache" / "features"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "freezer" / "features"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "freezer" / "features"


def key_hash(key: dict[str, Any]) -> str:
    text = json.dumps({"format": FORMAT, **key}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


Identity = tuple[str, int, int]


def image_identity(path: str) -> Identity:
    """(absolute path, size, mtime in ns); a file that cannot be read never matches."""
    full = os.path.abspath(path)
    try:
        st = os.stat(full)
    except OSError:
        return (full, -1, -1)
    return (full, st.st_size, st.st_mtime_ns)


def _read_index(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


class FeatureStore:
    """The rows of one key for the images of one run (training images, then validation)."""

    def __init__(
        self,
        key: dict[str, Any],
        images: list[str],
        shape: tuple[int, ...],
        dtype: torch.dtype,
        ram_bytes: int,
        root: Path | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if dtype not in _STORAGE:
            dtype = torch.float32
        self.key = key
        self.shape = tuple(shape)
        self.dtype = dtype
        self.folder = (root or cache_root()) / key_hash(key)
        self.identities = [image_identity(p) for p in images]
        self._readable = np.array([ident[1] >= 0 for ident in self.identities], dtype=bool)
        n = len(images)
        self.n = n
        self.row_bytes = math.prod(self.shape) * torch.empty((), dtype=dtype).element_size()
        self.ram_rows = max(0, min(n, ram_bytes // max(1, self.row_bytes)))
        # In the accelerator's memory when given one: batches are gathered there, no copies.
        self.ram = torch.empty((self.ram_rows, *self.shape), dtype=dtype, device=device)
        self.held = np.zeros(n, dtype=bool)
        # Rows beyond RAM: in this run's own file (row i = image i) or an earlier run's.
        self._own: np.memmap | None = None
        self._own_path: Path | None = None  # where it is now (a temporary name until persisted)
        self._final_path: Path | None = None
        self._in_own = np.zeros(n, dtype=bool)
        self._source: np.memmap | None = None
        self._source_file: str | None = None
        self._source_row = np.full(n, -1, dtype=np.int64)
        self.reused = 0  # rows found on disk when opened
        self.spill_error: OSError | None = None  # why rows beyond RAM could not be kept
        self._dirty = False
        self._open_earlier()

    # ------------------------------------------------------------------ reading earlier runs
    def _open_earlier(self) -> None:
        with contextlib.suppress(OSError):
            remove_stale_temp_files(self.folder)
        try:
            self._read_earlier()
        except Exception:
            # A damaged index or rows file (edited, truncated...) is as good as none: the rows
            # are computed again and the next save replaces it.
            self.held[:] = False
            self._source, self._source_file = None, None
            self._source_row[:] = -1
            self.reused = 0

    def _read_earlier(self) -> None:
        index = _read_index(self.folder)
        if (
            index is None
            or index.get("key") != self.key
            or tuple(index.get("shape", ())) != self.shape
            or index.get("dtype") != str(self.dtype)
        ):
            return
        source = np.load(self.folder / str(index["file"]), mmap_mode="r")
        if tuple(source.shape[1:]) != self.shape or source.dtype != np.dtype(_STORAGE[self.dtype]):
            return
        rows = {
            (str(r[0]), int(r[1]), int(r[2])): int(r[3])
            for r in index.get("rows", [])
            if isinstance(r, list) and len(r) == 4
        }
        found = [
            (i, rows[ident])
            for i, ident in enumerate(self.identities)
            if ident in rows and ident[1] >= 0
        ]
        found = [(i, r) for i, r in found if 0 <= r < source.shape[0]]
        if not found:
            return
        self._source, self._source_file = source, str(index["file"])
        for i, r in found:
            self._source_row[i] = r
        self.held[[i for i, _ in found]] = True
        self.reused = len(found)
        ram = [(i, r) for i, r in found if i < self.ram_rows]
        if ram:
            at = torch.as_tensor([i for i, _ in ram])
            rows_in_ram = np.asarray(source[[r for _, r in ram]])
            self.ram[at.to(self.ram.device)] = self._tensor(rows_in_ram).to(self.ram.device)
        with contextlib.suppress(OSError):
            os.utime(self.folder / INDEX)  # the last use, for `cache list`

    # ------------------------------------------------------------------ rows
    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(array, copy=True))  # off the (read-only) mapping
        return t.view(self.dtype) if self.dtype == torch.bfloat16 else t

    def _numpy(self, t: torch.Tensor) -> np.ndarray:
        t = t.detach().to("cpu", self.dtype).contiguous()
        return (t.view(torch.uint16) if self.dtype == torch.bfloat16 else t).numpy()

    def holds(self, items: list[int]) -> bool:
        return bool(self.held[items].all())

    @property
    def count(self) -> int:
        return int(self.held.sum())

    @property
    def complete(self) -> bool:
        return bool(self.held.all())

    def get(self, items: list[int]) -> torch.Tensor:
        """The rows of `items` (all held), as one CPU tensor."""
        index = np.asarray(items)
        if index.size and index.max() < self.ram_rows:
            return self.ram[torch.as_tensor(index, device=self.ram.device)]
        out = torch.empty((len(items), *self.shape), dtype=self.dtype)
        for k, i in enumerate(items):
            if i < self.ram_rows:
                out[k] = self.ram[i].cpu()
            elif self._in_own[i]:
                out[k] = self._tensor(self._own[i])
            else:
                out[k] = self._tensor(self._source[self._source_row[i]])
        return out

    def put(self, items: list[int], rows: torch.Tensor) -> None:
        """Keep the rows computed for `items` (a batch's prefix output)."""
        if tuple(rows.shape[1:]) != self.shape:
            return
        rows = rows.detach().to(dtype=self.dtype)
        index = np.asarray(items)
        # An image gone since the scan has no identity to find it by again: not kept.
        new = ~self.held[index] & self._readable[index]
        if not new.any():
            return
        in_ram = new & (index < self.ram_rows)
        if in_ram.any():
            device = self.ram.device
            at = torch.as_tensor(index[in_ram], device=device)
            self.ram[at] = rows[torch.as_tensor(np.nonzero(in_ram)[0], device=rows.device)].to(
                device
            )
        spill = new & (index >= self.ram_rows)
        if spill.any():
            try:
                own = self._own_file()
            except OSError as e:
                # No room on disk for what RAM cannot hold: those rows are computed each epoch.
                self.spill_error = self.spill_error or e
                new &= ~spill
                spill[:] = False
            else:
                at = index[spill]
                own[at] = self._numpy(
                    rows[torch.as_tensor(np.nonzero(spill)[0], device=rows.device)]
                )
                self._in_own[at] = True
        self.held[index[new]] = True
        self._dirty = True

    # ------------------------------------------------------------------ the file
    def _own_file(self) -> np.memmap:
        if self._own is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            final = self.folder / f"features-{secrets.token_hex(6)}.npy"
            tmp = temp_name(final)
            own = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=_STORAGE[self.dtype], shape=(self.n, *self.shape)
            )
            if hasattr(os, "posix_fallocate"):
                # The disk space now: a full disk is an error here, not a crash (SIGBUS)
                # when a page of the mapping is first written.
                try:
                    with open(tmp, "rb+") as f:
                        os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # not "unsupported"
                        del own
                        tmp.unlink(missing_ok=True)
                        raise
            self._own = own
            self._own_path = tmp
            self._final_path = final
        return self._own

    @property
    def ram_bytes(self) -> int:
        return int(self.held[: self.ram_rows].sum()) * self.row_bytes

    @property
    def disk_bytes(self) -> int:
        return int(self.held[self.ram_rows :].sum()) * self.row_bytes

    def persist(self) -> None:
        """Write every held row not on disk yet, then the index naming them (atomically): a
        later run of the same data starts from them."""
        if not self._dirty:
            return
        own = self._own_file()
        todo = self.held & ~self._in_own
        from_ram = np.nonzero(todo[: self.ram_rows])[0]
        if from_ram.size:  # one copy (from the accelerator, where they are there)
            own[from_ram] = self._numpy(self.ram[torch.as_tensor(from_ram, device=self.ram.device)])
        from_source = np.nonzero(todo & (np.arange(self.n) >= self.ram_rows))[0]
        if from_source.size:
            own[from_source] = self._source[self._source_row[from_source]]
        self._in_own |= todo
        own.flush()
        with open(self._own_path, "rb+") as f:
            os.fsync(f.fileno())
        if self._own_path != self._final_path:
            os.replace(self._own_path, self._final_path)
            self._own_path = self._final_path
        listed = np.nonzero(self.held)[0]
        write_json(
            self.folder / INDEX,
            {
                "format": FORMAT,
                "key": self.key,
                "shape": list(self.shape),
                "dtype": str(self.dtype),
                "file": self._final_path.name,
                "images": int(listed.size),
                "bytes": int(listed.size) * self.row_bytes,
                "written": time.time(),
                "rows": [[*self.identities[i], int(i)] for i in listed],
            },
        )
        self._dirty = False
        # The earlier run's file: no index names it now (a reader that has it open keeps it).
        if self._source_file and self._source_file != self._final_path.name:
            with contextlib.suppress(OSError):
                (self.folder / self._source_file).unlink()
            self._source_file = None

    def close(self) -> None:
        """Free RAM and the mappings; an unpersisted temporary file is removed."""
        self.ram = torch.empty((0, *self.shape), dtype=self.dtype, device=self.ram.device)
        own_path, final = self._own_path, self._final_path
        self._own = self._source = None
        if own_path is not None and own_path != final:
            with contextlib.suppress(OSError):
                own_path.unlink()


# ---------------------------------------------------------------------- cache list / clear
@dataclass
class CacheEntry:
    folder: Path
    key: dict[str, Any]
    images: int
    bytes: int  # on disk
    used: float  # last written or read (seconds since the epoch)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.folder.name,
            "folder": str(self.folder),
            "architecture": self.key.get("architecture"),
            "cut": self.key.get("where") or self.key.get("cut"),
            "image_size": self.key.get("image_size"),
            "images": self.images,
            "bytes": self.bytes,
            "last_used": self.used,
        }


def _disk_bytes(folder: Path) -> int:
    total = 0
    try:
        files = list(folder.iterdir())
    except OSError:  # unreadable: counted as empty, still listed (and removable)
        return 0
    for f in files:
        with contextlib.suppress(OSError):
            st = f.stat()
            blocks = getattr(st, "st_blocks", None)  # what the file takes (POSIX)
            total += blocks * 512 if blocks is not None else st.st_size
    return total


def list_caches(root: Path | None = None) -> list[CacheEntry]:
    """The feature caches on disk, most recently used first."""
    root = root or cache_root()
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        index = _read_index(folder)
        try:
            used = (folder / INDEX).stat().st_mtime if index else folder.stat().st_mtime
        except OSError:
            used = 0.0
        key = index.get("key") if index else None
        try:
            images = int(index.get("images", 0)) if index else 0
        except (TypeError, ValueError):
            images = 0
        out.append(
            CacheEntry(
                folder,
                dict(key) if isinstance(key, dict) else {},
                images,
                _disk_bytes(folder),
                used,
            )
        )
    return sorted(out, key=lambda e: -e.used)


def clear_caches(ids: list[str] | None = None, root: Path | None = None) -> list[CacheEntry]:
    """Remove the caches with these ids (folder names, or unique prefixes of them), or all;
    returns what was removed. An unknown or ambiguous id raises KeyError, before anything is
    removed; an id given twice (or two prefixes of one cache) removes it once."""
    entries = list_caches(root)
    if ids:
        chosen: list[CacheEntry] = []
        for wanted in ids:
            # A whole folder name is that folder even where it is a prefix of another one.
            match = [e for e in entries if e.folder.name == wanted] or [
                e for e in entries if wanted and e.folder.name.startswith(wanted)
            ]
            if len(match) != 1:
                raise KeyError(wanted)
            if match[0] not in chosen:
                chosen += match
        entries = chosen
    for e in entries:
        shutil.rmtree(e.folder, ignore_errors=True)
    return entries
