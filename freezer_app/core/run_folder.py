"""The run folder: one per training run.

project.json          everything needed to run it again (`freezer-app train project.json`)
data_report.json      what the dataset check found
metrics.jsonl         per step: loss, lr; per epoch: train_loss, val_loss, val_acc, images_per_s
telemetry.jsonl       per-layer statistics every few steps (layer names in layers.json)
frozen_check.jsonl    per epoch: were all frozen tensors bit-identical?
checkpoints/last.pt   everything needed to resume (written each epoch and on stop)
checkpoints/best.safetensors   weights of the best validation epoch
model.safetensors     final weights, keys exactly as model.state_dict()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from freezer_app.core.errors import ProjectError
from freezer_app.core.files import write_json, write_text


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._streams: dict[str, IO[str]] = {}

    project = property(lambda self: self.path / "project.json")
    data_report = property(lambda self: self.path / "data_report.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    telemetry = property(lambda self: self.path / "telemetry.jsonl")
    layers = property(lambda self: self.path / "layers.json")
    frozen_check = property(lambda self: self.path / "frozen_check.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    best_weights = property(lambda self: self.path / "checkpoints" / "best.safetensors")
    weights = property(lambda self: self.path / "model.safetensors")

    def check_new(self) -> None:
        """Refuse a folder that already holds files: a run never writes over other work."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise ProjectError(
                f"The run folder {self.path} already holds files.",
                "Pick a new --out folder, or continue that run with --resume.",
            )

    def create(self) -> None:
        """Make a new run folder; refuse to write into one that holds a run."""
        self.check_new()
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ProjectError(
                f"Cannot create the run folder {self.path}: {e.strerror}.",
                "Pick another --out folder.",
            ) from None

    def check_resumable(self) -> None:
        if not self.project.exists():
            raise ProjectError(
                f"{self.path} is not a run folder (no project.json).",
                "Pass the folder a run wrote.",
            )
        if not self.last_checkpoint.exists():
            raise ProjectError(
                f"{self.path} has no checkpoint to resume from.",
                "The run stopped before its first checkpoint; start it again with `freezer-app train PROJECT.json`.",
            )

    # ---------------------------------------------------------------- line logs
    def append(self, name: str, record: dict[str, Any]) -> None:
        stream = self._streams.get(name)
        if stream is None:
            stream = open(self.path / name, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
            self._streams[name] = stream
        stream.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        for stream in self._streams.values():
            stream.flush()

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()

    def truncate_after(self, step: int, epoch: int) -> None:
        """On resume: drop log lines written after the checkpoint, so nothing is counted twice."""
        self.close()
        for path, keep in (
            (
                self.metrics,
                lambda r: (
                    r.get("step", 0) <= step
                    if r.get("type") == "step"
                    else r.get("epoch", 0) <= epoch
                ),
            ),
            (self.telemetry, lambda r: r.get("step", 0) <= step),
            (self.frozen_check, lambda r: r.get("epoch", 0) <= epoch),
        ):
            if not path.exists():
                continue
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and keep(json.loads(line))
            ]
            write_text(path, "".join(line + "\n" for line in kept))

    def write_json(self, path: Path, data: Any) -> None:
        write_json(path, data)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
