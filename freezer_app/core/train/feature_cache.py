"""The trainer's feature cache: the frozen prefix of the forward computed once per image.

For each plan in effect the deepest cut (core/feature_cut.py) is chosen; batches whose rows the
store holds (core/feature_store.py) skip the prefix (and their images are not even loaded),
the others run it once and keep its output. When a plan change moves the cut, the run goes on
from the new cut (filled again) or uncached, and says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import timm
import torch
from torch import nn

from freezer_app.core.events import FeatureCacheEvent, LogEvent
from freezer_app.core.feature_cut import Cut, CutError, ForwardGraph, check_cut, weights_digest
from freezer_app.core.feature_store import FeatureStore
from freezer_app.core.files import WriteError
from freezer_app.core.image_cache import cache_budget
from freezer_app.core.telemetry import FrozenVerifier
from freezer_app.core.text import byte_size

# The share of the forward's work a cut must save. An epoch is the forward and the backward
# of what trains (about twice its forward), so a prefix doing a share s of the forward saves
# about s / (3 - 2s) of it: below a quarter, under 10 % (bench_feature_cache.py measured no gain
# at 18-20 %), not worth the memory the cached activations take.
MIN_WORK_SHARE = 0.25


class FeatureCache:
    """Owned by the trainer for one run. `train_items`/`val_items`: the splits' (path, label);
    the store's rows are the training images then the validation images, or (augmented
    training) the validation images only."""

    def __init__(
        self,
        model: nn.Module,
        tree: Any,
        setting: str,
        budget_mb: int | None,
        architecture: str,
        transform: str,
        image_size: int,
        train_items: list[tuple[str, int]],
        val_items: list[tuple[str, int]],
        augmented: bool,
        device: torch.device,
        autocast_dtype: torch.dtype | None,
        channels_last: bool,
        verifier: FrozenVerifier | None = None,
        disabled: str = "",
    ) -> None:
        """disabled: why the cache is not used whatever the setting says (e.g. several
        processes)."""
        self.model = model
        self.tree = tree
        self.architecture = architecture
        self.transform = transform
        self.image_size = image_size
        rows = list(val_items) if augmented else list(train_items) + list(val_items)
        self.images = [path for path, _ in rows]
        self.labels = torch.as_tensor([label for _, label in rows], dtype=torch.long)
        self.val_offset = 0 if augmented else len(train_items)
        self.augmented = augmented
        self.device = device
        self.autocast_dtype = autocast_dtype
        # Set by the trainer: where the cache's events (LogEvent, FeatureCacheEvent) go.
        self.emit: Callable[[Any], None] = lambda event: None
        self.channels_last = channels_last
        self.verifier = verifier
        self.budget = cache_budget(budget_mb)
        self.graph: ForwardGraph | None = None
        self.unavailable = ""
        if disabled:
            self.unavailable = disabled
        elif setting == "off":
            self.unavailable = "turned off (train.feature_cache: off)"
        else:
            try:
                self.graph = ForwardGraph(model, tree)
            except CutError as e:
                self.unavailable = f"the model cannot be cut: {e}"
        self.cut: Cut | None = None
        self.prefix: nn.Module | None = None
        self.rest: nn.Module | None = None
        self.store: FeatureStore | None = None
        self.reason = self.unavailable
        self._fill_started: float | None = None
        self._fill_seconds: float | None = None
        self._reported_full = False
        self._persist_failed = False
        self._spill_reported = False
        self._counted = 0  # rows held at the last epoch_record
        self._node: str | None = None  # the cut chosen for the plan in effect, used or not
        self.last_event: FeatureCacheEvent | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ the plan
    def follow_plan(self, step: int) -> None:
        """After a plan is applied (requires_grad and the frozen norms set): choose the cut for
        it, and say so when anything changed."""
        if self.graph is None:
            if self.last_event is None:
                self._event(step, self.unavailable)
            return
        cuts, stop = self.graph.cuts(self.tree.trainable)
        cut = cuts[0] if cuts else None
        why = (
            f"nothing before the first layer that changes in training can be cached ({stop})"
            if cut is None
            else ""
        )
        node = cut.node if cut else None
        if self.last_event is not None and node == self._node:
            return  # the same cut (used, or found not worth it), or still none
        self._node = node
        before = self.cut
        self._close_store()
        problem = why if cut is None else self._open(cut, stop)
        self.reason = problem
        if problem:
            self._event(step, self._moved(before, None, problem))
        else:
            self._event(step, self._moved(before, cut, ""))

    def _moved(self, before: Cut | None, after: Cut | None, why: str) -> str:
        if before is None:
            return why
        if after is None:
            return f"the plan trains part of the cached prefix, so the run goes on uncached ({why})"
        deeper = "a deeper" if after.index > before.index else "a shallower"
        return f"the plan moved the cut to {deeper} one ({after.label}); it fills again"

    def _open(self, cut: Cut, stop: str) -> str:
        problem, share = check_cut(self.graph, cut, self.image_size, self.device)
        if problem:
            return problem
        if share < MIN_WORK_SHARE:
            return (
                f"only {share:.0%} of the forward's work comes before the first layer that "
                f"changes in training ({stop}); caching pays off from {MIN_WORK_SHARE:.0%}"
            )
        prefix, rest = self.graph.prefix(cut), self.graph.rest(cut)
        with torch.no_grad(), self.autocast():
            probe = prefix(self._probe_input())
        if not isinstance(probe, torch.Tensor):
            return "the value at the cut is not a tensor"
        key = {
            "architecture": self.architecture,
            "cut": cut.node,
            "where": cut.label,  # for `cache list`
            # Its generated code and its modules' settings (LeakyReLU(0.1)...).
            "code": hashlib.sha256((prefix.code + repr(prefix)).encode()).hexdigest()[:16],
            "weights": weights_digest(prefix, self.known_digests()),
            "transform": self.transform,
            "image_size": self.image_size,
            "dtype": str(probe.dtype),
            "device": self.device.type,
            "channels_last": self.channels_last,
            "torch": torch.__version__,
            "timm": timm.__version__,
        }
        budget, device = self.budget, torch.device("cpu")
        if self.device.type == "cuda":
            # Rows kept in GPU memory (a quarter of what is free at most): cached epochs then
            # copy nothing between host and device. What does not fit goes to the file.
            free, _ = torch.cuda.mem_get_info(self.device)
            budget, device = min(budget, free // 4), self.device
        self.store = FeatureStore(
            key, self.images, tuple(probe.shape[1:]), probe.dtype, budget, device=device
        )
        self.cut, self.prefix, self.rest = cut, prefix, rest
        self._fill_started = None
        self._fill_seconds = None
        self._reported_full = self.store.complete
        self._counted = self.store.count  # rows found on disk were not added by this run
        return ""

    def known_digests(self) -> dict[str, str]:
        """Digests the frozen check took of the frozen tensors (current: they are frozen)."""
        if self.verifier is None:
            return {}
        return {name: entry[0] for name, entry in self.verifier.tracked.items()}

    def _probe_input(self) -> torch.Tensor:
        x = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _close_store(self) -> None:
        if self.store is not None:
            self.store.close()
        self.store = self.cut = self.prefix = self.rest = None

    # ------------------------------------------------------------------ batches
    def row_items(self, split: str, indices: list[int]) -> list[int]:
        return list(indices) if split == "train" else [self.val_offset + i for i in indices]

    def holds(self, split: str, indices: list[int]) -> bool:
        store = self.store
        if store is None or (split == "train" and self.augmented):
            return False
        return store.holds(self.row_items(split, indices))

    def serves(self, split: str) -> bool:
        return self.store is not None and (split == "val" or not self.augmented)

    def features(
        self,
        split: str,
        indices: list[int],
        images: Callable[[], torch.Tensor],
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """The prefix's output for a batch on the device: from the store, or computed from
        `images()` (a batch on the device) and kept. `labels`: the batch's, as loaded."""
        store = self.store
        assert store is not None and self.prefix is not None
        items = self.row_items(split, indices)
        if store.holds(items):
            rows = store.get(items)
            if rows.device.type == self.device.type:  # kept on the GPU
                return rows
            cuda = self.device.type == "cuda"
            return (rows.pin_memory() if cuda else rows).to(self.device, non_blocking=cuda)
        if self._fill_started is None:
            self._fill_started = time.monotonic()
        with torch.no_grad(), self.autocast():
            out = self.prefix(images())
        # An image that could not be decoded is replaced by the next one, with its label: keep
        # only rows whose image carries its own label, so a cached epoch labels rows rightly.
        own = (labels.cpu() == self.labels[items]).nonzero().flatten()
        if len(own) == len(items):
            store.put(items, out)
        elif len(own):
            store.put([items[k] for k in own.tolist()], out[own.to(out.device)])
        if store.spill_error is not None and not self._spill_reported:
            self._spill_reported = True
            self.emit(
                LogEvent(
                    f"feature cache: cannot write to {store.folder} "
                    f"({store.spill_error.strerror or store.spill_error}); images beyond its "
                    "memory budget go through the frozen layers every epoch",
                    "warning",
                )
            )
        return out.to(store.dtype)

    # ------------------------------------------------------------------ epochs
    def _counts(self) -> tuple[int, int]:
        """(rows held, rows wanted)."""
        store = self.store
        assert store is not None
        return store.count, store.n

    def epoch_done(self, step: int) -> None:
        """At the end of an epoch (validation included): keep what was computed on disk, and
        report once the cache is full."""
        if self.store is None:
            return
        held, wanted = self._counts()
        if self._fill_started is not None and self._fill_seconds is None and held >= wanted:
            self._fill_seconds = time.monotonic() - self._fill_started
        self._persist()
        if held >= wanted and not self._reported_full:
            self._reported_full = True
            self._event(step + 1, "")

    def epoch_record(self) -> dict[str, Any] | None:
        """For the epoch's line in metrics.jsonl: what the cache held, and what this epoch
        added to it (a filling epoch)."""
        store = self.store
        if store is None:
            self._counted = 0
            return None
        held, wanted = self._counts()
        added, self._counted = max(0, store.count - self._counted), store.count
        return {
            "cut": self.cut.label if self.cut else "",
            "images": held,
            "of": wanted,
            "added": added,
            "ram_bytes": store.ram_bytes,
            "disk_bytes": store.disk_bytes,
            "fill_seconds": self._fill_seconds,
        }

    def _persist(self) -> None:
        store = self.store
        if store is None or self._persist_failed:
            return
        try:
            store.persist()
        except (OSError, WriteError) as e:
            # The cache is only a speed-up: the run goes on with the rows in memory.
            self._persist_failed = True
            why = e.message if isinstance(e, WriteError) else e.strerror or str(e)
            self.emit(
                LogEvent(
                    f"feature cache: cannot write to {store.folder} ({why}); the "
                    "cached features stay in memory for this run only",
                    "warning",
                )
            )

    def close(self) -> None:
        """At the end of the run: what was computed is kept for the next run."""
        self._persist()
        self._close_store()

    # ------------------------------------------------------------------ reports
    def _event(self, step: int, reason: str) -> None:
        store = self.store
        if store is None:
            message = (
                f"feature cache: not used from step {step}: {reason}"
                if step > 1
                else (f"feature cache: not used: {reason}")
            )
            event = FeatureCacheEvent(
                step, False, "", reason, 0, len(self.images), 0, 0, None, "", False, message
            )
        else:
            cut = self.cut
            assert cut is not None
            shape = "×".join(str(d) for d in store.shape)
            what = (
                "validation images only (training images are augmented each epoch)"
                if self.augmented
                else "training and validation images"
            )
            held, wanted = self._counts()
            where = f"{byte_size(store.ram_bytes)} in memory"
            if store.disk_bytes:
                where += f", {byte_size(store.disk_bytes)} in {store.folder}"
            if held >= wanted and self._fill_seconds is not None:
                message = (
                    f"feature cache: {held:,} {what} cached {cut.label} ({shape} values per image; "
                    f"{where}); filling took {self._fill_seconds:.1f} s, later epochs skip the "
                    "frozen layers"
                )
                if not self._persist_failed:
                    message += f"; saved in {store.folder} for later runs"
            elif held >= wanted:
                message = (
                    f"feature cache: {held:,} {what} {cut.label} ({shape} values per image) read from "
                    f"an earlier run ({store.folder}; {where}): no filling epoch"
                )
            else:
                reused = f"; {store.reused:,} found from an earlier run" if store.reused else ""
                message = (
                    f"feature cache: on for {what}, {cut.label} ({shape} values per image){reused}; "
                    "the first epoch fills it"
                )
            if reason:
                message += f" ({reason})" if step <= 1 else f"; from step {step}: {reason}"
            event = FeatureCacheEvent(
                step,
                True,
                cut.label,
                reason,
                held,
                wanted,
                store.ram_bytes,
                store.disk_bytes,
                self._fill_seconds,
                str(store.folder),
                not self.augmented,
                message,
            )
        self.last_event = event
        self.emit(LogEvent(message, "notice" if step > 1 and not event.used else "info"))
        self.emit(event)

    def record(self) -> dict[str, Any]:
        """For plans.jsonl and the final summary."""
        event = self.last_event
        if event is None:
            return {"used": False, "reason": self.reason}
        out = asdict(event)
        out.pop("message")
        return out
