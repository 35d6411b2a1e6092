"""The run's file writer: one background thread that formats and writes records and checkpoints
in the order they were handed over, so the training thread never waits for a disk.

The order is the guarantee the run folder relies on: the log records a checkpoint counts are
submitted (and flushed to disk) before it, so they land first. A write that fails (disk full,
no permission) stops the writer; the training thread sees the error at its next call here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from freezer_app.core.files import WriteError

Job = Callable[[], None]


class BackgroundWriter:
    def __init__(self, name: str = "freezer-writer") -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._error: BaseException | None = None
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        """Run `job` on the writer thread after everything submitted before it."""
        self.raise_error()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def wait(self) -> None:
        """Until every submitted job is done; then raise the first failure, if any."""
        if self._thread is not None:
            self._jobs.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self._error is not None:
            error = self._error
            raise (
                error
                if isinstance(error, WriteError)
                else WriteError(
                    f"Could not write the run's files: {error}.",
                    "Free some space on that disk, then continue with "
                    "`freezer-app train --resume RUN_DIR`.",
                )
            )

    def close(self) -> None:
        """Finish what was submitted and end the thread (errors are kept for raise_error)."""
        if self._thread is None:
            return
        self._jobs.put(None)
        self._thread.join()
        self._thread = None

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None:  # after a failure, later writes would only be wrong
                    job()
            except BaseException as e:
                self._error = e
            finally:
                self._jobs.task_done()
