"""Run a long core function off the GUI thread, with progress and cancel (dataset checks,
exports, evaluation). Results come back as signals with plain data."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from freezer_app.core.errors import FreezerError


class TaskSignals(QObject):
    progress = Signal(int, int)  # done, total
    message = Signal(str)  # what it is doing now (when the function says)
    done = Signal(object)
    failed = Signal(str, str, str)  # message, hint, details
    partial = Signal(object)  # a piece of the result, ready before the rest (`Task.partial`)


class Task(QRunnable):
    """`fn(progress, should_cancel)` on the thread pool; emits done(result) or failed(...).

    `progress(done, total)` or `progress(done, total, message)` may be called from `fn`.
    """

    def __init__(self, fn: Callable[[Callable[[int, int], None], Callable[[], bool]], Any]) -> None:
        super().__init__()
        self.fn = fn
        self.signals = TaskSignals()
        self.cancelled = threading.Event()
        self.setAutoDelete(False)

    def cancel(self) -> None:
        self.cancelled.set()

    def partial(self, value: object) -> None:
        """Hand part of the result to the GUI thread now (thumbnails as they are decoded)."""
        self.signals.partial.emit(value)

    def run(self) -> None:
        try:
            self._run()
        except RuntimeError as e:
            # The application quit while this ran: its signals are gone and nobody listens.
            if "deleted" not in str(e):
                raise
        finally:
            _running.discard(self)

    def _run(self) -> None:
        try:
            result = self.fn(self._progress, self.cancelled.is_set)
        except FreezerError as e:
            self.signals.failed.emit(e.message, e.hint or "", "")
            return
        except Exception as e:
            self.signals.failed.emit(f"{type(e).__name__}: {e}", "", traceback.format_exc())
            return
        self.signals.done.emit(result)

    def _progress(self, done: int, total: int, message: str = "") -> None:
        self.signals.progress.emit(done, total)
        if message:
            self.signals.message.emit(message)


# Tasks in flight, kept alive here: the view that started one may be closed (and its Python
# references dropped) while the task still runs and will emit its result.
_running: set[Task] = set()


# Threads for tasks, whatever the number of cores: most of them wait on files or on code
# that releases the interpreter lock, and a user's model file that hangs (its preview is
# superseded, but its thread cannot be stopped) must not hold up the dataset check behind it.
MIN_THREADS = 8


def start(task: Task) -> Task:
    _running.add(task)
    pool = QThreadPool.globalInstance()
    if pool.maxThreadCount() < MIN_THREADS:
        pool.setMaxThreadCount(MIN_THREADS)
    pool.start(task)
    return task
