"""Shared fixtures. Tests never touch the network or a GPU."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Pretend to be offline so no test can reach for weights on the internet.
os.environ["FREEZER_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    """A user's own model file with two factories (with and without num_classes)."""
    path = tmp_path / "my_model.py"
    path.write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn


            class Net(nn.Module):
                def __init__(self, num_classes=10):
                    super().__init__()
                    self.features = nn.Sequential(
                        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                    )
                    self.blocks = nn.Sequential(*[nn.Linear(8, 8) for _ in range(12)])
                    self.classifier = nn.Linear(8, num_classes)

                def forward(self, x):
                    return self.classifier(self.blocks(self.features(x)))


            def build(num_classes=10):
                return Net(num_classes)


            def build_fixed():
                return Net(7)


            def not_a_model():
                return 42
            """
        )
    )
    return path


@pytest.fixture(autouse=True)
def feature_cache_folder(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Each test's own feature cache folder: nothing is written under the home folder, and no
    test starts from another's cached features."""
    folder = tmp_path_factory.mktemp("feature-cache")
    monkeypatch.setenv("FREEZER_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small learnable image folder with train/ and val/ (3 classes)."""
    from freezer_app.core.data import write_demo_data

    return write_demo_data(
        tmp_path_factory.mktemp("demo") / "data", per_class=40, val_per_class=10, size=32
    )


class Recorder:
    """An event sink that keeps every event a run emits."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def __call__(self, event: object) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]


# `train` flags for a quick CPU run on the demo data (as make_project sets them).
FAST = [
    "--image-size",
    "32",
    "--workers",
    "0",
    "--batch-size",
    "16",
    "--augment",
    "none",
    "--device",
    "cpu",
]


def make_project(data: Path, **train: object):
    """A quick CPU project on the demo data: test_resnet at 32 px, no data workers."""
    from freezer_app.core.freeze import FreezePlan
    from freezer_app.core.project import DataSettings, Project, TrainSettings

    plan = train.pop("plan", FreezePlan())
    settings = {"epochs": 2, "batch_size": 16, "lr": 3e-3, "device": "cpu", "telemetry_every": 1}
    settings.update(train)
    model = str(settings.pop("model", "timm:test_resnet"))
    return Project(
        model=model,
        plan=plan,  # type: ignore[arg-type]
        data=DataSettings(path=str(data), image_size=32, workers=0, augmentation="none"),
        train=TrainSettings(**settings),  # type: ignore[arg-type]
    )


def close_windows(qtbot, windows: list) -> None:
    """End a GUI test's windows: stop their runs, drop unsaved edits (no prompt), close."""
    from PySide6.QtCore import QThreadPool

    for w in windows:
        if w.session is not None:
            w.stop_training()
            qtbot.waitUntil(lambda w=w: w.session is None, timeout=60_000)
        w.project_ctl.undo_stack.setClean()
        w.close()
    QThreadPool.globalInstance().waitForDone(60_000)
    for w in windows:
        w.deleteLater()


def shown_window(qtbot, tmp_path: Path, project, monkeypatch):
    """A main window showing `project`, its dataset check and model preview done, runs kept
    under tmp_path, and every modal question answered "discard" (a modal dialog would block
    an offscreen test). Close it with close_windows."""
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QMessageBox

    from freezer_app.gui.main_window import MainWindow

    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    w = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    w.set_project(project, None)
    w.resize(1400, 900)
    w.show()
    qtbot.waitUntil(lambda: w.report is not None and w.preview_task is None, timeout=30_000)
    w._runs_root = lambda: tmp_path / "runs"  # keep runs out of the user's folders
    return w
