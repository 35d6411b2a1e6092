"""The run's metrics for the tools users already have: `metrics.csv` (spreadsheets, pandas)
and TensorBoard event files under `tensorboard/` (`tensorboard --logdir runs/` shows every
run), written beside the line logs on the run's writer thread.

TensorBoard needs the `tensorboard` package (`pip install freezer-app[trackers]`); without it
the run says so once and writes the CSV only. On resume, events after the checkpoint's step
are purged (SummaryWriter's purge_step) and the CSV is rebuilt from metrics.jsonl, so nothing
is counted twice, as in the line logs.

With `train.log_to` the same scalars also go to MLflow and/or Weights & Biases
(external_trackers.py).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
from pathlib import Path
from typing import IO, Any

from freezer_app.core.project import Project
from freezer_app.core.run_folder import RunFolder, read_json_lines
from freezer_app.core.train.external_trackers import ExternalTrackers, Warn

CSV_COLUMNS = (
    "type",
    "step",
    "epoch",
    "loss",
    "lr",
    "train_loss",
    "val_loss",
    "val_acc",
    "ema_val_loss",
    "ema_val_acc",
    "images_per_s",
    "seconds",
)


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def csv_path(folder: RunFolder) -> Path:
    return folder.path / "metrics.csv"


def tensorboard_dir(folder: RunFolder) -> Path:
    return folder.path / "tensorboard"


class Trackers:
    """Receives the logbook's records (on the writer thread) and writes them again."""

    def __init__(
        self,
        folder: RunFolder,
        layer_names: list[str] | None = None,
        project: Project | None = None,
        warn: Warn | None = None,
    ) -> None:
        """project: its `train.log_to` trackers get the scalars too, and its settings.
        warn: how a tracker that fails is reported (once) to the user."""
        self.folder = folder
        self.layer_names = list(layer_names or [])
        self.external = ExternalTrackers(folder, project, warn) if project is not None else None
        self.outcome = "completed"  # set by the trainer before it closes the logbook
        self._csv: IO[str] | None = None
        self._csv_writer: Any = None
        self._tb: Any = None
        self._purge_step: int | None = None

    # ---------------------------------------------------------------- records
    def step(self, record: dict[str, Any]) -> None:
        self._row(record)
        scalars = {"train/loss": record["loss"], "train/lr": record["lr"]}
        for name, lr in (record.get("lrs") or {}).items():
            scalars[f"lr/{name}"] = lr
        tb = self._board()
        if tb is not None:
            for tag, value in scalars.items():
                tb.add_scalar(tag, value, record["step"])
        if self.external:
            self.external.scalars(scalars, record["step"])

    def epoch(self, record: dict[str, Any]) -> None:
        self._row(record)
        step = record["step"]
        scalars = {
            f"epoch/{key}": record[key]
            for key in (
                "train_loss",
                "val_loss",
                "val_acc",
                "ema_val_loss",
                "ema_val_acc",
                "images_per_s",
            )
            if record.get(key) is not None
        }
        tb = self._board()
        if tb is not None:
            for tag, value in scalars.items():
                tb.add_scalar(tag, value, step)
        if self.external:
            self.external.scalars({**scalars, "epoch": record["epoch"]}, step)

    def telemetry(self, record: dict[str, Any]) -> None:
        tb = self._board()
        if tb is None or not self.layer_names:
            return
        step = record["step"]
        for key in ("grad_norm", "update_norm"):
            values = record.get(key) or []
            for name, value in zip(self.layer_names, values):
                tb.add_scalar(f"{key}/{name}", value, step)

    def frozen_check(self, record: dict[str, Any]) -> None:
        drifted = record.get("drifted") or []
        text = (
            f"PASSED: {record.get('checked', 0)} frozen tensors bit-identical"
            if not drifted
            else "FAILED: " + ", ".join(str(d.get("param")) for d in drifted)
        )
        tb = self._board()
        if tb is not None:
            tb.add_text("frozen_check", text, record.get("step", 0))
        if self.external:
            # The latest result as a tag/summary; the count of drifted tensors as a curve.
            self.external.scalars({"frozen_check/drifted": len(drifted)}, record.get("step", 0))
            self.external.text("frozen_check", text)

    # ---------------------------------------------------------------- files
    def _row(self, record: dict[str, Any]) -> None:
        if self._csv_writer is None:
            path = csv_path(self.folder)
            new = not path.exists() or path.stat().st_size == 0
            self._csv = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115
            self._csv_writer = csv.DictWriter(self._csv, CSV_COLUMNS, extrasaction="ignore")
            if new:
                self._csv_writer.writeheader()
        self._csv_writer.writerow(record)

    def _board(self) -> Any:
        if self._tb is None and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                str(tensorboard_dir(self.folder)), purge_step=self._purge_step, flush_secs=30
            )
        return self._tb

    def flush(self) -> None:
        if self._csv is not None:
            self._csv.flush()
        if self._tb is not None:
            self._tb.flush()
        if self.external:
            self.external.flush()

    def close(self) -> None:
        if self._csv is not None:
            with contextlib.suppress(OSError):
                self._csv.close()
            self._csv, self._csv_writer = None, None
        if self._tb is not None:
            with contextlib.suppress(OSError):
                self._tb.close()
            self._tb = None
        if self.external:
            self.external.close(self.outcome)

    def resume_after(self, step: int) -> None:
        """Before a resumed run writes: the CSV as metrics.jsonl now is (already truncated to
        the checkpoint), and TensorBoard events after `step` dropped when it next writes."""
        self.close()
        path = csv_path(self.folder)
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for record in read_json_lines(self.folder.metrics).records:
                writer.writerow(record)
        self._purge_step = step + 1
