"""The run's line logs: metrics, telemetry, freeze-plan changes and frozen checks.

Records are formatted and written on the run's writer thread, buffered in open files for the
length of the run and flushed at epoch ends, on pause and on stop. Before a checkpoint is renamed into place the records are flushed and
fsynced, so the checkpoint is always the last thing to change: a resumed run never lacks a
record its checkpoint counts. On resume, lines written after the checkpoint (and a torn last
line from a kill) are dropped first, so a resumed run never counts a step twice.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from freezer_app.core.files import WriteError, write_text
from freezer_app.core.run_folder import RunFolder, read_json_lines
from freezer_app.core.train.trackers import Trackers
from freezer_app.core.train.writer import BackgroundWriter

Record = dict[str, Any] | Callable[[], dict[str, Any]]


class Logbook:
    """Appends records on the run's writer thread (writer.py): formatting and writing cost the
    training thread nothing. A record may be a dict or a function returning one (formatted
    there too)."""

    def __init__(
        self,
        folder: RunFolder,
        writer: BackgroundWriter | None = None,
        trackers: Trackers | None = None,
    ) -> None:
        self.folder = folder
        self.writer = writer or BackgroundWriter()
        self.trackers = trackers  # metrics.csv and TensorBoard (trackers.py)
        self._streams: dict[Path, IO[str]] = {}

    def _append(
        self, path: Path, record: Record, also: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.writer.submit(lambda: self._write(path, record, also))

    def _write(
        self, path: Path, record: Record, also: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        data = record() if callable(record) else record
        try:
            stream = self._streams.get(path)
            if stream is None:
                stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run
                self._streams[path] = stream
            stream.write(json.dumps(data) + "\n")
            if also is not None:
                also(data)
        except OSError as e:
            raise _write_error(path, e) from None

    def _tracker(self, name: str) -> Callable[[dict[str, Any]], None] | None:
        return getattr(self.trackers, name) if self.trackers is not None else None

    def step(
        self, step: int, epoch: int, loss: float, lr: float, lrs: dict[str, float] | None = None
    ) -> None:
        record: dict[str, Any] = {
            "type": "step",
            "step": step,
            "epoch": epoch,
            "loss": loss,
            "lr": lr,
        }
        if lrs:
            record["lrs"] = lrs  # each parameter group's (head, body, layer-decay groups)
        self._append(self.folder.metrics, record, self._tracker("step"))

    def epoch(self, record: dict[str, Any]) -> None:
        self._append(self.folder.metrics, {"type": "epoch", **record}, self._tracker("epoch"))

    def telemetry(self, record: Record) -> None:
        self._append(self.folder.telemetry, record, self._tracker("telemetry"))

    def frozen_check(self, record: dict[str, Any]) -> None:
        self._append(self.folder.frozen_check, record, self._tracker("frozen_check"))

    def plan(self, record: dict[str, Any]) -> None:
        self._append(self.folder.plans, record)

    def flush(self, durable: bool = False, wait: bool = False) -> None:
        """Hand every record submitted so far to the OS; durable: also to the disk. wait:
        return only when that is done (on pause and at the end, when someone may read them)."""
        self.writer.submit(lambda: self.flush_now(durable))
        if wait:
            self.writer.wait()

    def flush_now(self, durable: bool = False) -> None:
        """On the writer thread (or with it idle): flush the open files now."""
        for path, stream in self._streams.items():
            try:
                stream.flush()
                if durable:
                    os.fsync(stream.fileno())
            except OSError as e:
                raise _write_error(path, e) from None
        if self.trackers is not None:
            try:
                self.trackers.flush()
            except OSError as e:
                raise _write_error(self.folder.path, e) from None

    def close(self) -> None:
        """Write what is queued, close the files and end the writer thread."""
        with contextlib.suppress(WriteError):
            self.writer.submit(self._close_streams)
        self.writer.close()
        self._close_streams()

    def _close_streams(self) -> None:
        for stream in self._streams.values():
            with contextlib.suppress(OSError):  # already reported when it was written
                stream.close()
        self._streams.clear()
        if self.trackers is not None:
            self.trackers.close()

    def truncate_after(self, step: int, epoch: int) -> None:
        """On resume: drop log lines written after the checkpoint, so nothing is counted twice."""
        self.writer.wait()
        self._close_streams()
        folder = self.folder
        for path, keep in (
            (
                folder.metrics,
                lambda r: (
                    r.get("step", 0) <= step
                    if r.get("type") == "step"
                    else r.get("epoch", 0) <= epoch
                ),
            ),
            (folder.telemetry, lambda r: r.get("step", 0) <= step),
            # A change keyed by step s was applied before step s ran: the checkpoint after
            # `step` steps holds the plan of every change up to s = step, none after.
            (folder.plans, lambda r: r.get("step", 0) <= step),
            (folder.frozen_check, lambda r: r.get("epoch", 0) <= epoch),
        ):
            if not path.exists():
                continue
            kept = [json.dumps(r) for r in read_json_lines(path).records if keep(r)]
            write_text(path, "".join(line + "\n" for line in kept))
        if self.trackers is not None:
            self.trackers.resume_after(step)


def _write_error(path: Path, e: OSError) -> WriteError:
    reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return WriteError(
        f"Could not write {path}: {reason}.",
        "Free some space on that disk, then continue with `freezer-app train --resume RUN_DIR`.",
    )


class NullLogbook:
    """The logbook of a process that writes nothing: ranks other than 0 of a
    torch.distributed run (rank 0 writes the run folder)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _nothing


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None
