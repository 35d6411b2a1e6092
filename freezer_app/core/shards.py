"""How the processes of a torch.distributed run share the images of a global batch (used by the
loaders in data.py and by core/train/distributed.py)."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def shard(items: list[T], rank: int, world: int) -> list[T]:
    """Rank `rank`'s contiguous share of `items`: shares differ in size by one at most, and
    in rank order they are `items` again."""
    base, extra = divmod(len(items), world)
    start = rank * base + min(rank, extra)
    return items[start : start + base + (1 if rank < extra else 0)]


def merge_short_tail(batches: list[list[int]], world: int, min_share: int = 1) -> list[list[int]]:
    """A last global batch with fewer images than processes would leave a rank with nothing
    to compute (and DistributedDataParallel needs every rank in every step): it joins the
    batch before it. With `min_share` 2 so does one that would leave a rank a single image:
    BatchNorm in training needs more than one value per channel (BatchNorm1d fails on one)."""
    out = [list(b) for b in batches]
    while len(out) > 1 and len(out[-1]) < world * min_share:
        tail = out.pop()
        out[-1] += tail
    return out
