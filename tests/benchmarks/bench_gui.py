"""GUI speed: the model tree for the largest timm ViT, and event-loop latency while training.

- tree: building the tree model (and showing it in a QTreeView) from the meta-device preview
  of a 900+-module ViT, and toggling the root check box (plan edit + repaint of every row).
  The issue asks for well under 100 ms each. Baseline: Qt's own QStandardItemModel filled
  with the same rows (what a "copy the tree into Qt" design would pay).
- latency: a 10 ms QTimer on the GUI thread while the demo model trains on the CPU; how late
  its ticks fire (p50/p95/max). The issue asks for p95 under 50 ms. Baseline: the same timer
  with no training.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import _common
from PySide6.QtCore import QElapsedTimer, QSettings, QTimer
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QTreeView

from freezer_app.core.catalog import preview_model
from freezer_app.core.tree import ModelTree
from freezer_app.gui.app import make_app
from freezer_app.gui.freeze_controller import FreezeController
from freezer_app.gui.main_window import MainWindow, wait_until
from freezer_app.gui.project_controller import ProjectController
from freezer_app.gui.tree_model import FreezeTreeModel
from freezer_app.gui.tree_view import TreePanel


def bench_tree(model_name: str, repeats: int) -> dict:
    app = make_app()
    loaded = preview_model(f"timm:{model_name}")
    build, toggle, baseline = [], [], []
    for _ in range(repeats):
        tree = ModelTree(loaded.module, model_name)
        # The real tree panel of the window: presets, filter, view with live-bar delegates.
        model = FreezeTreeModel()
        controller = FreezeController(model, ProjectController())
        panel = TreePanel(controller)
        panel.resize(900, 700)
        panel.show()
        app.processEvents()
        t0 = time.perf_counter()
        controller.set_tree(tree)
        app.processEvents()
        panel.view.viewport().repaint()
        build.append(time.perf_counter() - t0)
        for trainable in (False, True):
            t0 = time.perf_counter()
            controller.edit("*", trainable)
            app.processEvents()
            panel.view.viewport().repaint()
            toggle.append(time.perf_counter() - t0)
        panel.close()
        view = QTreeView()
        view.resize(900, 700)
        view.show()
        # Baseline: the same rows copied into a QStandardItemModel.
        t0 = time.perf_counter()
        std = QStandardItemModel()
        items = {"": std.invisibleRootItem()}
        for path, node in tree.nodes.items():
            if not path:
                continue
            parent = items[node.parent.path]
            row = [
                QStandardItem(node.name),
                QStandardItem(node.type_name),
                QStandardItem(f"{node.total:,}"),
            ]
            row[0].setCheckable(True)
            parent.appendRow(row)
            items[path] = row[0]
        view.setModel(std)
        view.expandToDepth(1)
        app.processEvents()
        baseline.append(time.perf_counter() - t0)
        view.close()
    return {
        "model": model_name,
        "modules": len(tree.nodes),
        "params": tree.total_params,
        "tree_build_ms": round(1000 * statistics.median(build), 1),
        "toggle_root_ms": round(1000 * statistics.median(toggle), 1),
        "qstandarditemmodel_build_ms": round(1000 * statistics.median(baseline), 1),
    }


def measure_latency(app, seconds: float, while_running=None) -> list[float]:
    lateness: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.elapsed()]

    def tick() -> None:
        now = clock.elapsed()
        lateness.append(max(0.0, now - last[0] - 10))
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end and (while_running is None or while_running()):
        app.processEvents()
        time.sleep(0.001)
    timer.stop()
    return lateness[5:]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def bench_latency(seconds: float) -> dict:
    from freezer_app.gui.app import demo_project

    app = make_app()
    window = MainWindow(QSettings(tempfile.mktemp(suffix=".ini"), QSettings.Format.IniFormat))
    project = demo_project()
    project.train.epochs = 1000
    window.set_project(project, None)
    window._runs_root = lambda: __import__("pathlib").Path(tempfile.mkdtemp())
    window.resize(1500, 900)
    window.show()
    wait_until(lambda: window.scan_task is None, 60)
    idle = measure_latency(app, 3.0)
    window.act_train.trigger()
    wait_until(lambda: window.loss_plot.steps.n > 0, 120)
    busy = measure_latency(app, seconds, lambda: window.session is not None)
    steps = window.loss_plot.steps.n
    window.stop_training()
    wait_until(lambda: window.session is None, 120)
    window.project_ctl.undo_stack.setClean()
    window.close()
    return {
        "train_seconds": seconds,
        "steps_trained": steps,
        "idle_p95_ms": round(percentile(idle, 0.95), 1),
        "training_p50_ms": round(percentile(busy, 0.5), 1),
        "training_p95_ms": round(percentile(busy, 0.95), 1),
        "training_max_ms": round(max(busy), 1) if busy else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--model", default="eva02_enormous_patch14_clip_224", help="largest timm ViT: 1,291 modules"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    _common.emit(
        {
            "benchmark": "gui",
            "tree": bench_tree(args.model, args.repeats),
            "latency": bench_latency(args.seconds),
        }
    )


if __name__ == "__main__":
    main()
