"""MLflow and Weights & Biases, for users who keep their runs there (`--log-to mlflow|wandb`).

Trackers (trackers.py) hands these sinks the run's scalars on the writer thread: loss, each
parameter group's learning rate, validation metrics and the frozen check. The packages are
optional extras (`pip install freezer-app[mlflow]` / `[wandb]`), imported only when a run
selects them; a selected package that is missing stops the run before it starts
(`check_installed`, from Project.validate). A tracker that fails during the run (a server
that went away) is dropped with one warning: training and the run folder's own logs go on.

A resumed run continues the same tracker run: its id is kept in the run folder
(`mlflow_run_id`, `wandb_id`). Steps after the checkpoint that a killed run had already sent
are not taken back (W&B drops steps it has seen; MLflow keeps both values).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

from freezer_app.core import settings as schema
from freezer_app.core.errors import ProjectError
from freezer_app.core.files import write_text
from freezer_app.core.project import Project
from freezer_app.core.run_folder import RunFolder

Warn = Callable[[str], None]

PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker -> the package it needs
NAMES = {"mlflow": "MLflow", "wandb": "Weights & Biases"}
MLFLOW_ID_FILE = "mlflow_run_id"
WANDB_ID_FILE = "wandb_id"
MLFLOW_PARAM_CHARS = 500  # the smallest limit MLflow servers have had for a param value
MLFLOW_BATCH = 1000  # metrics per log_batch request (MLflow's limit)
MLFLOW_SEND_SECONDS = 10.0  # a request per step would hold the writer thread up


def selected(log_to: str) -> list[str]:
    """The trackers a `train.log_to` value names: "mlflow+wandb" -> ["mlflow", "wandb"]."""
    return [] if log_to in ("", "none") else log_to.split("+")


def installed(package: str) -> bool:
    if sys.modules.get(package) is not None:  # already imported (or stubbed in tests)
        return True
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def check_installed(log_to: str) -> None:
    """Raise ProjectError when a selected tracker's package is not installed."""
    missing = [name for name in selected(log_to) if not installed(PACKAGES[name])]
    if missing:  # all of them at once: one install, not one failure per package
        packages = [PACKAGES[name] for name in missing]
        extras = ",".join(missing)
        raise ProjectError(
            f"--log-to {log_to} needs the {' and '.join(packages)} package"
            f"{'s' if len(packages) > 1 else ''}: pip install {' '.join(packages)}",
            f"Or install Freezer with {'them' if len(packages) > 1 else 'it'} (pip install "
            f"'freezer-app[{extras}]'), or train without: --log-to none (Log to: none in the "
            "Training form).",
        )


def flat_settings(project: Project) -> dict[str, Any]:
    """{setting key: value} for every project setting, keyed as in project.json's reference
    (train.lr, data.image_size, plan.freeze), so both tools show the same names."""
    data = project.to_dict()
    out: dict[str, Any] = {}
    for s in schema.all_settings(Project):
        if s.key == "resumes":  # what a resume changed: not a setting of the run
            continue
        value: Any = data
        for part in s.key.split("."):
            value = value[part]
        out[s.key] = value
    return out


class Sink:
    """One external tracker: started on its first record, on the writer thread."""

    name = ""

    def __init__(self, folder: RunFolder, project: Project) -> None:
        self.folder = folder
        self.project = project
        # How the run ended ("completed", "stopped", "error", ...): the tracker's run status.
        self.outcome = "completed"

    def start(self) -> None:
        raise NotImplementedError

    def scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def text(self, key: str, value: str) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Send what is buffered."""

    def close(self) -> None:
        raise NotImplementedError

    def _stored_id(self, file: str) -> str | None:
        path = self.folder.path / file
        with contextlib.suppress(OSError):
            return path.read_text(encoding="utf-8").strip() or None
        return None

    def _store_id(self, file: str, run_id: str) -> None:
        write_text(self.folder.path / file, run_id + "\n")


class MlflowSink(Sink):
    """An MLflow run named after the run folder, in the experiment and at the tracking URI
    MLflow's own settings choose (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME)."""

    name = "mlflow"

    def __init__(self, folder: RunFolder, project: Project) -> None:
        super().__init__(folder, project)
        self._mlflow: Any = None
        self._client: Any = None
        self._metric: Any = None  # mlflow.entities.Metric
        self._run_id = ""
        self._pending: list[Any] = []
        self._sent_at = 0.0

    def start(self) -> None:
        import mlflow
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        run_id = self._stored_id(MLFLOW_ID_FILE)
        if run_id:  # a resume: the same MLflow run goes on (its params are kept)
            run = mlflow.start_run(run_id=run_id)
        else:
            run = mlflow.start_run(run_name=self.folder.path.name)
            self._store_id(MLFLOW_ID_FILE, run.info.run_id)
            mlflow.log_params(
                {
                    key: (value if isinstance(value, str) else json.dumps(value))[
                        :MLFLOW_PARAM_CHARS
                    ]
                    for key, value in flat_settings(self.project).items()
                }
            )
            mlflow.set_tag("freezer.run_dir", str(self.folder.path))
        self._mlflow, self._client = mlflow, MlflowClient()
        self._run_id = run.info.run_id
        self._sent_at = time.monotonic()

    def scalars(self, values: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        self._pending += [self._metric(k, float(v), stamp, step) for k, v in values.items()]
        if len(self._pending) >= MLFLOW_BATCH or (
            time.monotonic() - self._sent_at >= MLFLOW_SEND_SECONDS
        ):
            self.flush()

    def text(self, key: str, value: str) -> None:
        self.flush()  # metrics first, in the order they happened
        self._mlflow.set_tag(key, value)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._sent_at = time.monotonic()
        for i in range(0, len(pending), MLFLOW_BATCH):
            self._client.log_batch(self._run_id, metrics=pending[i : i + MLFLOW_BATCH])

    def close(self) -> None:
        try:
            self.flush()
        finally:
            status = {"error": "FAILED", "stopped": "KILLED"}.get(self.outcome, "FINISHED")
            self._mlflow.end_run(status=status)


class WandbSink(Sink):
    """A W&B run named after the run folder, in the project WANDB_PROJECT names ("freezer" by
    default), its local files under RUN/wandb."""

    name = "wandb"

    def __init__(self, folder: RunFolder, project: Project) -> None:
        super().__init__(folder, project)
        self._run: Any = None

    def start(self) -> None:
        import wandb

        run_id = self._stored_id(WANDB_ID_FILE)
        resumed = run_id is not None
        if run_id is None:
            # Chosen and kept before init: a run killed during init still resumes into it.
            run_id = uuid.uuid4().hex[:12]
            self._store_id(WANDB_ID_FILE, run_id)
        config = flat_settings(self.project)
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "freezer",
            name=self.folder.path.name,
            id=run_id,
            resume="allow",
            dir=str(self.folder.path),
            config=None if resumed else config,
        )
        if resumed:  # settings a resume may change (epochs, step limit) are updated
            self._run.config.update(config, allow_val_change=True)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self._run.log(dict(values), step=step)

    def text(self, key: str, value: str) -> None:
        self._run.summary[key] = value

    def close(self) -> None:
        self._run.finish(exit_code=1 if self.outcome == "error" else 0)


SINKS: dict[str, type[Sink]] = {"mlflow": MlflowSink, "wandb": WandbSink}


class ExternalTrackers:
    """The external trackers a project selects. Each starts on its first record; one that
    raises is dropped with one warning, so a tracker never stops training."""

    def __init__(self, folder: RunFolder, project: Project, warn: Warn | None = None) -> None:
        self._sinks = [SINKS[name](folder, project) for name in selected(project.train.log_to)]
        self._started: set[str] = set()
        self._warn = warn or _warn

    def __bool__(self) -> bool:
        return bool(self._sinks)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if values:
            self._each(lambda sink: sink.scalars(values, step))

    def text(self, key: str, value: str) -> None:
        self._each(lambda sink: sink.text(key, value))

    def flush(self) -> None:
        self._each(lambda sink: sink.flush(), start=False)

    def close(self, outcome: str = "completed") -> None:
        """End the tracker runs with the run's outcome; a later record starts them again (the
        same runs)."""
        for sink in self._sinks:
            sink.outcome = outcome
        self._each(lambda sink: sink.close(), start=False)
        self._started.clear()

    def _each(self, call: Callable[[Sink], None], start: bool = True) -> None:
        for sink in list(self._sinks):
            if sink.name not in self._started and not start:
                continue
            try:
                if sink.name not in self._started:
                    sink.start()
                    self._started.add(sink.name)
                call(sink)
            except Exception as e:  # anything a tracker raises: training goes on
                self._drop(sink, e)

    def _drop(self, sink: Sink, error: Exception) -> None:
        self._sinks.remove(sink)
        if sink.name in self._started:
            self._started.discard(sink.name)
            with contextlib.suppress(Exception):
                sink.close()  # so a later run in this process starts clean
        first = str(error).splitlines()[0][:300] if str(error) else ""
        self._warn(
            f"{NAMES[sink.name]} logging failed ({type(error).__name__}: {first}); the run goes "
            "on without it (metrics.csv and the run folder's logs are complete)"
        )


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)
