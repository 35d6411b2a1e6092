"""Training in several processes with torch.distributed, as launched by torchrun.

The pieces the trainer (`Trainer(..., dist=Distributed.start(...))`) needs to run the same
loop on every rank:
- `shard`: a rank's contiguous, balanced share of a global batch, so the union of the
  ranks' batches is the single-process batch and no image is seen twice;
- `Distributed.commands`: stop, pause and a new freeze plan agreed by every rank at a step
  boundary (any rank may ask to stop: a scheduler's SIGTERM reaches them all; pause and plan
  edits come from rank 0, where the window or terminal is);
- `Distributed.wrap`: DistributedDataParallel registers only the parameters that require
  gradients when it is built, so a layer unfrozen under an old wrapper would never be
  all-reduced. The wrapper is built anew for every freeze plan; the parameters (and the
  optimizer state keyed by them) stay the same objects;
- the frozen check on every rank: each rank's `FrozenVerifier.current()` digests, gathered
  with `Distributed.gather`, checked by `FrozenVerifier.check_ranks`, which names a rank whose
  frozen tensors drifted.

Backends: torch's default for `init_process_group()`: gloo for CPU tensors, and nccl for
CUDA tensors when CUDA is present.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from freezer_app.core.errors import FreezerError
from freezer_app.core.shards import merge_short_tail, shard

T = TypeVar("T")

# The environment torchrun (torch.distributed.run) gives each worker process.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_ENV)


def is_collective_error(e: BaseException) -> bool:
    """Whether `e` is a collective that broke (a rank gone or failed), not this rank's own
    failure: gloo raises plain RuntimeErrors that name it, nccl DistBackendError."""
    if isinstance(e, dist.DistError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        word in text for word in ("gloo", "NCCL", "nccl", "ProcessGroup", "c10d")
    )


class Distributed:
    """This process's place in a torchrun job, and the collectives the trainer uses."""

    def __init__(self, rank: int, world: int, local_rank: int, device: torch.device) -> None:
        self.rank = rank
        self.world = world
        self.local_rank = local_rank
        self.device = device  # where this rank computes, and where collective tensors live

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder, prints and emits events."""
        return self.rank == 0

    @classmethod
    def start(cls, use_cuda: bool) -> Distributed:
        """Join the job torchrun started (its environment says where and who)."""
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
        if use_cuda:
            if not torch.cuda.is_available():
                raise RuntimeError("CUDA was requested but no CUDA GPU is available")
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(device_id=device if device.type == "cuda" else None)
        return cls(rank, world, local_rank, device)

    def close(self, together: bool = True) -> None:
        """Leave the job. together: every rank ends here (a barrier first, since a rank that
        tears its connections down while another still uses them can abort in gloo:
        "terminate called without an active exception"); False after a failure, when another
        rank may be gone or stuck in another collective."""
        if not dist.is_initialized():
            return
        if together:
            # A rank lost at the very end: leave all the same.
            with contextlib.suppress(Exception):
                dist.barrier()
        dist.destroy_process_group()

    # ---------------------------------------------------------------- failures
    _FAILED = "freezer/failed/"

    def report_failure(self, message: str) -> None:
        """Leave this rank's failure where the others look when their collective breaks
        (torchrun's rendezvous store), so rank 0's summary names the rank and the cause."""
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set(f"{self._FAILED}{self.rank}", message)
        except Exception:  # no store, or it is gone too: the terminal has the rank's own error
            pass

    def failures(self) -> dict[int, str]:
        """Failures other ranks reported with `report_failure`."""
        found: dict[int, str] = {}
        try:
            store = dist.distributed_c10d._get_default_store()
            for rank in range(self.world):
                key = f"{self._FAILED}{rank}"
                if rank != self.rank and store.check([key]):
                    found[rank] = store.get(key).decode("utf-8", "replace")
        except Exception:
            pass
        return found

    def agree(self, error: BaseException | None) -> None:
        """Every rank reaches this point in setup: raise on all of them when one failed, so no
        rank goes on to a collective the failed one never joins. The failing rank re-raises
        its own error; the others a FreezerError with its message."""
        mine = None
        if error is not None:
            mine = (
                (error.message, error.hint)
                if isinstance(error, FreezerError)
                else (f"{type(error).__name__}: {error}", "")
            )
        reports = self.gather(mine)
        if error is not None:
            raise error
        for rank, report in enumerate(reports):
            if report is not None:
                message, hint = report
                raise FreezerError(f"{message} (on rank {rank})", hint)

    # ---------------------------------------------------------------- collectives
    def commands(self, stop: bool, paused: bool, plan: Any | None) -> tuple[bool, bool, Any]:
        """What every rank does at this step boundary: stop if any rank was asked to (a
        signal may reach one of them first); pause and a new plan as rank 0 says."""
        flags = torch.tensor(
            [int(stop), int(paused and self.main), int(plan is not None and self.main)],
            device=self.device,
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop_all, paused_all, has_plan = (bool(v) for v in flags.tolist())
        new_plan = None
        if has_plan:
            box = [plan if self.main else None]
            dist.broadcast_object_list(box, src=0, device=self.device)
            new_plan = box[0]
        return stop_all, paused_all, new_plan

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (the project, the data report, a checkpoint)."""
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def mean_loss(self, loss: torch.Tensor, local_images: int, global_images: int) -> torch.Tensor:
        """The global batch's mean loss from each rank's mean over its share (shares may differ
        by one image): the same number a single process would log. No host synchronisation."""
        total = loss.detach().float() * local_images
        dist.all_reduce(total)
        return total / global_images

    def wrap(self, model: nn.Module) -> nn.parallel.DistributedDataParallel:
        """A DistributedDataParallel wrapper for the parameters that train now. Build a new one
        whenever that set changes (every plan applied): all ranks must call this together,
        and rank 0's weights and buffers are copied to the others here."""
        return nn.parallel.DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
        )

    def ranks_out_of_sync(self, model: nn.Module) -> list[int]:
        """Ranks whose parameters differ from rank 0's. DDP keeps the replicas equal only for
        the parameters its wrapper registered: this is the proof (a per-tensor float64 sum
        on the device, compared exactly; one small gather)."""
        with torch.no_grad():
            sums = [p.detach().double().sum() for p in model.parameters()]
            mine = torch.stack(sums).cpu().tolist() if sums else []
        every = self.gather(mine)
        return [rank for rank, values in enumerate(every) if values != every[0]]

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over every rank (validation's loss, correct and count)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


__all__ = [
    "Distributed",
    "is_collective_error",
    "launched_by_torchrun",
    "merge_short_tail",
    "shard",
]
