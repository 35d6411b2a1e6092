"""Images kept in RAM across epochs, so later epochs skip decoding (the memory budget is the
project's `data.image_cache` setting: MB, or a quarter of the free memory).

- PreparedImages: for a deterministic transform (validation; training with augmentation
  "none") the finished uint8 image of each index, held by the training process, which then
  serves whole batches itself: no decoding, no worker processes, no copies between processes.
- DecodedImages: for a random transform (augmentation) the decoded RGB image of each index,
  before the transform, in memory shared with the data-loader workers (an anonymous shared
  mapping they inherit when they fork), so every worker reuses what any worker decoded.

Either holds the first images that fit its budget; the rest are decoded each epoch as before.
"""

from __future__ import annotations

import math
import mmap
import multiprocessing
import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image


def available_memory() -> int:
    """Bytes of memory the system could give this process now (Linux: MemAvailable)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 0


def cache_budget(megabytes: int | None) -> int:
    """The image cache's size in bytes: the setting in MB, or (None) a quarter of free memory."""
    if megabytes is None:
        return available_memory() // 4
    return megabytes * 1024 * 1024


class PreparedImages:
    """Finished uint8 images of one split (all the same shape), in the training process."""

    def __init__(self, n: int, shape: tuple[int, ...], budget: int) -> None:
        per_image = math.prod(shape)
        self.capacity = max(0, min(n, budget // max(1, per_image)))
        self.images = torch.empty((self.capacity, *shape), dtype=torch.uint8)
        self.labels = torch.empty(self.capacity, dtype=torch.long)
        self.filled = np.zeros(self.capacity, dtype=bool)
        self._per_image = per_image

    @property
    def nbytes_budgeted(self) -> int:
        return self.capacity * self._per_image

    @property
    def count(self) -> int:
        return int(self.filled.sum())

    @property
    def nbytes(self) -> int:
        return self.count * self._per_image

    def holds(self, batch: list[int]) -> bool:
        return all(i < self.capacity and self.filled[i] for i in batch)

    def get(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(batch)
        return self.images[index], self.labels[index]

    def put(self, batch: list[int], x: torch.Tensor, y: torch.Tensor) -> None:
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != tuple(self.images.shape[1:]):
            return
        rows = [k for k, i in enumerate(batch) if i < self.capacity]
        if not rows:
            return
        index = torch.as_tensor([batch[k] for k in rows])
        self.images[index] = x[rows]
        self.labels[index] = y[rows]
        self.filled[index.numpy()] = True


def can_share_with_workers(workers: int) -> bool:
    """Whether worker processes would see DecodedImages' memory: they must be forked."""
    if workers == 0:
        return True
    try:
        return multiprocessing.get_start_method(allow_none=False) == "fork"
    except RuntimeError:
        return False


class DecodedImages:
    """Decoded RGB images by index, in one shared block of `budget` bytes that the data-loader
    workers inherit. Space is handed out first come, first served, under a lock shared by the
    processes; an image's entry is published (its offset set) only after its pixels are in."""

    def __init__(self, n: int, budget: int) -> None:
        self.budget = max(0, budget)
        # Anonymous shared mappings: pages are only taken when written.
        self._pixels = mmap.mmap(-1, max(1, self.budget))
        self._table = mmap.mmap(-1, 8 * (3 * n + 1))
        table = np.frombuffer(self._table, dtype=np.int64)
        self.used = table[:1]  # bytes handed out so far
        self.offset = table[1 : n + 1]  # -1: not held
        self.shape = table[n + 1 :].reshape(n, 2)  # height, width
        self.offset[:] = -1
        self.lock = multiprocessing.Lock()

    @property
    def count(self) -> int:
        return int((self.offset >= 0).sum())

    @property
    def nbytes(self) -> int:
        return int(self.used[0])

    def get(self, index: int) -> Image.Image | None:
        start = int(self.offset[index])
        if start < 0:
            return None
        h, w = (int(v) for v in self.shape[index])
        pixels = np.frombuffer(self._pixels, dtype=np.uint8, count=h * w * 3, offset=start)
        return Image.fromarray(pixels.reshape(h, w, 3), "RGB")

    def put(self, index: int, image: Image.Image) -> None:
        if self.offset[index] >= 0 or image.mode != "RGB":
            return
        w, h = image.size
        size = h * w * 3
        with self.lock:
            start = int(self.used[0])
            if start + size > self.budget:
                return
            self.used[0] = start + size
        target = np.frombuffer(self._pixels, dtype=np.uint8, count=size, offset=start)
        target[:] = np.asarray(image, dtype=np.uint8).reshape(-1)
        self.shape[index] = (h, w)
        self.offset[index] = start  # last: readers see the entry only when complete

    def __getstate__(self) -> dict:
        raise TypeError(
            "DecodedImages lives in memory the data-loader workers inherit by forking; it "
            "cannot be sent to a spawned process"
        )


Decoder = Callable[[str], Image.Image]
