"""The run's metrics for the tools users already have: `metrics.csv` (spreadsheets, pandas)
and TensorBoard event files under `tensorboard/` (`tensorboard --logdir runs/` shows every
run), written beside the line logs on the run's writer thread.

TensorBoard needs the `tensorboard` package (`pip install freezer-app[trackers]`); without it
the run says so once and writes the CSV only. On resume, events after the checkpoint's step
are purged (SummaryWriter's purge_step) and the CSV is rebuilt from metrics.jsonl, so nothing
is counted twice, as in the line logs.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
from pathlib import Path
from typing import IO, Any

from freezer_app.core.run_folder import RunFolder, read_json_lines

CSV_COLUMNS = (
    "type",
    "step",
    "epoch",
    "loss",
    "lr",
    "train_loss",
    "val_loss",
    "val_acc",
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

    def __init__(self, folder: RunFolder, layer_names: list[str] | None = None) -> None:
        self.folder = folder
        self.layer_names = list(layer_names or [])
        self._csv: IO[str] | None = None
        self._csv_writer: Any = None
        self._tb: Any = None
        self._purge_step: int | None = None

    # ---------------------------------------------------------------- records
    def step(self, record: dict[str, Any]) -> None:
        self._row(record)
        tb = self._board()
        if tb is not None:
            tb.add_scalar("train/loss", record["loss"], record["step"])
            tb.add_scalar("train/lr", record["lr"], record["step"])
            for name, lr in (record.get("lrs") or {}).items():
                tb.add_scalar(f"lr/{name}", lr, record["step"])

    def epoch(self, record: dict[str, Any]) -> None:
        self._row(record)
        tb = self._board()
        if tb is None:
            return
        step = record["step"]
        for key, tag in (
            ("train_loss", "epoch/train_loss"),
            ("val_loss", "epoch/val_loss"),
            ("val_acc", "epoch/val_acc"),
            ("images_per_s", "epoch/images_per_s"),
        ):
            if record.get(key) is not None:
                tb.add_scalar(tag, record[key], step)

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
        tb = self._board()
        if tb is None:
            return
        drifted = record.get("drifted") or []
        text = (
            f"PASSED: {record.get('checked', 0)} frozen tensors bit-identical"
            if not drifted
            else "FAILED: " + ", ".join(str(d.get("param")) for d in drifted)
        )
        tb.add_text("frozen_check", text, record.get("step", 0))

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

    def close(self) -> None:
        if self._csv is not None:
            with contextlib.suppress(OSError):
                self._csv.close()
            self._csv, self._csv_writer = None, None
        if self._tb is not None:
            with contextlib.suppress(OSError):
                self._tb.close()
            self._tb = None

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
