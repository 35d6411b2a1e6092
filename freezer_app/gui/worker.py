"""The bridge between the GUI and core.train: a worker object living on a QThread.

The training thread hands events to the GUI as Qt signals carrying plain data, coalesced so
that the window redraws at most ~30 times a second however fast steps come. Commands go the
other way through the thread-safe RunControl; the GUI never touches the model.

With the Device "all N GPUs" (cuda:all) the run happens in N torchrun processes
(`freezer-app train`, core/train/launcher.py); this thread then relays rank 0's events from
a local authenticated connection (core/train/event_stream.py) to the same signals, and
passes Pause, Stop and plan edits back to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from PySide6.QtCore import QObject, QThread, Signal, Slot

from freezer_app.core import events as ev
from freezer_app.core.errors import FreezerError
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.project import Project, absolute_model
from freezer_app.core.train import Trainer, launcher
from freezer_app.core.train.event_stream import EventListener, SetupFailed
from freezer_app.core.trust import CodeTrust

# The training thread cannot ask: a model's .py runs only if the window allowed it before
# (core/trust.py remembers that for the process) or the user chose it in the window.
WINDOW_TRUST = CodeTrust.from_file("The window's project")

MAX_UPDATES_PER_SECOND = 30
# Events that should reach the window at once rather than wait for the next batch.
_URGENT = (
    ev.RunStarted,
    ev.EpochEvent,
    ev.FrozenCheckEvent,
    ev.PlanApplied,
    ev.FeatureCacheEvent,
    ev.PausedEvent,
    ev.LogEvent,
)


def _yield_to_the_window() -> None:
    """Run this thread (and the threads and loader processes it starts) at a lower CPU priority
    than the window's: on a machine with few cores the window's redraws then get a core at
    once instead of queueing behind training. Training loses nothing while the window is idle;
    `freezer-app train` is not affected. (Linux: nice +10 for this thread; elsewhere Qt's low
    thread priority.)"""
    if sys.platform.startswith("linux"):
        try:
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 10))
        except OSError:
            pass
    else:
        QThread.currentThread().setPriority(QThread.Priority.LowPriority)


class TrainingWorker(QObject):
    events = Signal(list)  # a batch of core.events objects, in order
    finished = Signal(object)  # core.events.Finished
    failed = Signal(str, str, str)  # message, hint, details (a traceback for unexpected errors)

    def __init__(
        self,
        project: Project,
        run_dir: str | Path,
        resume: bool = False,
        trust: CodeTrust | None = None,
    ) -> None:
        super().__init__()
        self.project = project
        self.trust = trust or WINDOW_TRUST
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.control = ev.RunControl()
        self._batch: list[object] = []
        self._lock = threading.Lock()
        self._last_emit = 0.0

    # ------------------------------------------------------------------ commands (any thread)
    def stop(self) -> None:
        self.control.stop()

    def pause(self) -> None:
        self.control.pause()

    def resume_run(self) -> None:
        self.control.resume()

    def set_plan(self, plan: FreezePlan) -> None:
        self.control.set_plan(plan)

    # ------------------------------------------------------------------ the training thread
    def _on_event(self, event: object) -> None:
        with self._lock:
            self._batch.append(event)
            now = time.monotonic()
            due = now - self._last_emit >= 1.0 / MAX_UPDATES_PER_SECOND
            if not (due or isinstance(event, _URGENT)):
                return
            batch, self._batch = self._batch, []
            self._last_emit = now
        self.events.emit(batch)

    def _flush(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
        if batch:
            self.events.emit(batch)

    @Slot()
    def run(self) -> None:
        processes = launcher.processes_for(self.project.train.device)
        if processes > 1:
            self._run_processes(processes)
            return
        _yield_to_the_window()
        # The same number of CPU threads as `freezer-app train` uses: float reductions depend
        # on it, and a run started here must repeat headless with bit-identical losses.
        try:
            result = Trainer(
                self.project,
                self.run_dir,
                on_event=self._on_event,
                control=self.control,
                resume=self.resume,
                trust=self.trust,
            ).run()
        except FreezerError as e:
            self._flush()
            self.failed.emit(e.message, e.hint or "", "")
            return
        except Exception as e:
            self._flush()
            self.failed.emit(
                f"Training failed unexpectedly: {type(e).__name__}: {e}",
                "The app is still usable. Please report this with the details below.",
                traceback.format_exc(),
            )
            return
        self._flush()
        self.finished.emit(result)

    # ------------------------------------------------------------------ several processes
    def _run_processes(self, processes: int) -> None:
        """The run in `processes` torchrun ranks; rank 0's events arrive here as if the
        trainer ran on this thread."""
        from freezer_app.core.catalog import check_code

        try:
            # Asked here (the window's trust): the ranks get --trust-code only for a .py
            # this window already allowed.
            trusted = check_code(self.project.model, self.trust) is not None
        except FreezerError as e:
            self.failed.emit(e.message, e.hint or "", "")
            return
        listener = EventListener()
        with tempfile.TemporaryDirectory(prefix="freezer-window-run-") as tmp:
            log_path = Path(tmp) / "torchrun.log"
            argv = self._train_argv(Path(tmp), trusted)
            env = {**launcher.launch_env(processes), **listener.env()}
            with open(log_path, "w") as log:
                proc = subprocess.Popen(
                    launcher.torchrun_command(argv, processes),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # the window's signals are its own
                )
            try:
                result, setup_failed = self._relay(listener, proc)
            finally:
                listener.close()
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    launcher.kill_job(proc.pid)
                    proc.wait()
            self._flush()
            if setup_failed is not None:
                self.failed.emit(setup_failed.message, setup_failed.hint, "")
            elif result is None:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
                self.failed.emit(
                    f"The {processes} training processes ended without finishing the run "
                    f"(exit status {proc.returncode}).",
                    "Checkpoints written so far are kept; the details show the processes' output.",
                    tail,
                )
            else:
                self.finished.emit(result)

    def _train_argv(self, folder: Path, trusted: bool) -> list[str]:
        """`freezer-app train` for the ranks: the window's project as a file (paths made
        absolute: the file lives elsewhere), or --resume of the run folder."""
        extra = ["--quiet"] + (["--trust-code"] if trusted else [])
        if self.resume:
            return ["train", "--resume", str(self.run_dir), *extra]
        data = self.project.to_dict()
        data["model"] = absolute_model(self.project.model, Path.cwd())
        if data["data"].get("path"):
            data["data"]["path"] = str(Path(data["data"]["path"]).expanduser().resolve())
        project_file = folder / "project.json"
        project_file.write_text(json.dumps(data))
        return ["train", str(project_file), "--out", str(self.run_dir), *extra]

    def _relay(
        self, listener: EventListener, proc: subprocess.Popen
    ) -> tuple[ev.Finished | None, SetupFailed | None]:
        conn = None
        while conn is None and proc.poll() is None:
            conn = listener.wait_connected(0.2)
        if conn is None:
            return None, None
        result: ev.Finished | None = None
        setup_failed: SetupFailed | None = None
        commands = _CommandRelay(self.control, conn)
        while True:
            commands.send_changes()
            try:
                if not conn.poll(0.05):
                    if proc.poll() is not None and not conn.poll(0):
                        break
                    continue
                item = conn.recv()
            except (EOFError, OSError):
                break  # rank 0 is done (or gone)
            if isinstance(item, SetupFailed):
                setup_failed = item
                continue
            self._on_event(item)
            if isinstance(item, ev.Finished):
                result = item
        return result, setup_failed


class _CommandRelay:
    """Stop, pause/resume and plan edits given to the window's RunControl, sent to rank 0."""

    def __init__(self, control: ev.RunControl, conn) -> None:
        self.control = control
        self.conn = conn
        self.stopped = False
        self.paused = False

    def send_changes(self) -> None:
        control = self.control
        try:
            if control.stop_requested and not self.stopped:
                self.stopped = True
                self.conn.send(("stop",))
            if control.paused != self.paused and not self.stopped:
                self.paused = control.paused
                self.conn.send(("pause",) if self.paused else ("resume",))
            plan = control.take_plan()
            if plan is not None:
                self.conn.send(("plan", plan.to_dict()))
        except (OSError, ValueError):
            pass  # rank 0 has gone: the relay loop ends on its own


class TrainingSession(QObject):
    """Owns the thread and the worker of one run; tidies both up when the run ends."""

    events = Signal(list)
    finished = Signal(object)
    failed = Signal(str, str, str)
    ended = Signal()  # the thread has stopped, whatever the outcome

    def __init__(
        self,
        project: Project,
        run_dir: str | Path,
        resume: bool = False,
        parent: QObject | None = None,
        trust: CodeTrust | None = None,
    ) -> None:
        super().__init__(parent)
        self.thread = QThread()
        self.thread.setObjectName("freezer-training")
        self.worker = TrainingWorker(project, run_dir, resume, trust)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.events.connect(self.events)
        self.worker.finished.connect(self.finished)
        self.worker.failed.connect(self.failed)
        self.worker.finished.connect(self.thread.quit)
        self.worker.failed.connect(self.thread.quit)
        self.thread.finished.connect(self._cleanup)

    def start(self) -> None:
        self.thread.start()

    def is_running(self) -> bool:
        return self.thread.isRunning()

    def _cleanup(self) -> None:
        self.worker.deleteLater()
        self.thread.deleteLater()
        self.ended.emit()
