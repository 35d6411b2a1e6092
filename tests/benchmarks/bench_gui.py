"""GUI speed: the model tree for the largest timm ViT, and event-loop latency in each situation
where the window does something slow in the background.

- tree: building the tree model (and showing it in a QTreeView) from the meta-device preview
  of a 900+-module ViT, and toggling the root check box (plan edit + repaint of every row).
  The issue asks for well under 100 ms each. Baseline: Qt's own QStandardItemModel filled
  with the same rows (what a "copy the tree into Qt" design would pay).
- latency: a 10 ms QTimer on the GUI thread; how late its ticks fire (p50/p95/max), the issue
  asks for p95 under 50 ms in each situation, driven through the window's own widgets:
  - idle: nothing running (the baseline).
  - training: the demo model trains on the CPU.
  - preview: a ~300M-parameter model (timm vit_large_patch16_224 and a twin, pretrained off,
    meta device) typed into the Model tab's search field + Enter, again and again.
  - weights: a ~1.2 GB .safetensors (naming its architecture) and a ~1.2 GB .pt of that
    model, opened in turn with Open weights > Weights file…, each checked against the model.
  - scan: a 10,000-image folder typed into the Data tab's folder field + Enter: once to the
    end, once superseded half way by choosing it again.
  - thumbnails: the Evaluate tab's image list for 200 JPEGs of 3000×2000 (what the
    prediction of dropped images shows), several times in a row.
  Each situation also reports what used to run on the GUI thread, timed on its own
  ("blocking_*"): building the preview, reading the whole weights file, decoding full size.

Generated data (images, weights files) goes to a temporary folder, or to --data-dir to keep it
for the next run. Pick situations with --only (e.g. --only preview,weights).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("FREEZER_OFFLINE", "1")  # nothing here may download
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _common
import numpy as np
from PySide6.QtCore import QElapsedTimer, QSettings, Qt, QTimer
from PySide6.QtGui import QPixmap, QStandardItem, QStandardItemModel
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QFileDialog, QMessageBox, QTreeView

from freezer_app.core.catalog import META_MODEL, preview_model
from freezer_app.core.evaluate import ClassProbability, PredictionResult
from freezer_app.core.project import Project
from freezer_app.core.tree import ModelTree
from freezer_app.gui.app import make_app
from freezer_app.gui.evaluate_view import placeholder_icon
from freezer_app.gui.freeze_controller import FreezeController
from freezer_app.gui.main_window import MainWindow, wait_until
from freezer_app.gui.project_controller import ProjectController
from freezer_app.gui.tree_model import FreezeTreeModel
from freezer_app.gui.tree_view import TreePanel

SITUATIONS = ("tree", "training", "preview", "weights", "scan", "thumbnails")


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


def summary(samples: list[float]) -> dict:
    return {
        "p50_ms": round(percentile(samples, 0.5), 1),
        "p95_ms": round(percentile(samples, 0.95), 1),
        "max_ms": round(max(samples), 1) if samples else None,
        "ticks": len(samples),
    }


def new_window(project: Project | None = None) -> MainWindow:
    app = make_app()
    # A benchmark has no one to answer questions ("save changes?").
    QMessageBox.question = staticmethod(lambda *a, **k: QMessageBox.StandardButton.Discard)
    window = MainWindow(QSettings(tempfile.mktemp(suffix=".ini"), QSettings.Format.IniFormat))
    if project is not None:
        window.set_project(project, None)
    window._runs_root = lambda: Path(tempfile.mkdtemp())
    window.resize(1500, 900)
    window.show()
    wait_until(lambda: window.scan_task is None and window.preview_task is None, 120)
    app.processEvents()
    return window


def close_window(window: MainWindow) -> None:
    window.project_ctl.undo_stack.setClean()
    window.close()
    window.deleteLater()
    wait_until(lambda: False, 0.2)


def measure_actions(app, actions: list, busy, settle_s: float = 0.2, timeout_s: float = 900):
    """Event-loop lateness while `actions` run one after another, each started (from a timer,
    as a click would be) once the window is no longer `busy()` and `settle_s` has passed.
    Returns (lateness samples, seconds each action kept the window busy)."""
    queue = list(actions)
    clock = {"next": time.monotonic() + settle_s, "started": None}
    durations: list[float] = []

    def step() -> None:
        if clock["started"] is not None:
            if busy():
                return
            durations.append(time.monotonic() - clock["started"])
            clock["started"], clock["next"] = None, time.monotonic() + settle_s
        if queue and time.monotonic() >= clock["next"]:
            clock["started"] = time.monotonic()
            queue.pop(0)()

    driver = QTimer()
    driver.timeout.connect(step)
    driver.start(5)
    samples = measure_latency(app, timeout_s, lambda: bool(queue) or clock["started"] is not None)
    driver.stop()
    return samples, durations


def bench_training(seconds: float) -> dict:
    from freezer_app.gui.app import demo_project

    app = make_app()
    project = demo_project()
    project.train.epochs = 1000
    window = new_window(project)
    idle = measure_latency(app, 3.0)
    window.act_train.trigger()
    wait_until(lambda: window.loss_plot.steps.n > 0, 120)
    busy = measure_latency(app, seconds, lambda: window.session is not None)
    steps = window.loss_plot.steps.n
    window.stop_training()
    wait_until(lambda: window.session is None, 120)
    close_window(window)
    return {
        "idle": summary(idle),
        "training": {"train_seconds": seconds, "steps_trained": steps, **summary(busy)},
    }


def type_model(window: MainWindow, name: str) -> None:
    """Type a model name into the Model tab's search field and press Enter."""
    window.left.setCurrentWidget(window.model_panel)
    window.model_panel.search.setText(name)
    QTest.keyClick(window.model_panel.search, Qt.Key.Key_Return)


def bench_preview(models: list[str], repeats: int) -> dict:
    app = make_app()
    loaded = preview_model(f"timm:{models[0]}")
    tree = ModelTree(loaded.module, models[0])
    t0 = time.perf_counter()
    ModelTree(preview_model(f"timm:{models[0]}").module, models[0])
    blocking = time.perf_counter() - t0
    window = new_window(Project(model="timm:test_resnet"))
    names = [f"timm:{models[i % len(models)]}" for i in range(repeats)]
    samples, durations = measure_actions(
        app,
        [lambda n=n: type_model(window, n) for n in names],
        lambda: window.preview_task is not None,
    )
    assert window.project.model == names[-1], window.project.model
    close_window(window)
    return {
        "models": models,
        "params": tree.total_params,
        "modules": len(tree.nodes),
        "previews": len(durations),
        "preview_s_median": round(statistics.median(durations), 3),
        "blocking_preview_and_tree_ms": round(1000 * blocking, 1),
        **summary(samples),
    }


def make_weights(folder: Path, model: str) -> tuple[Path, Path]:
    """A .safetensors naming its architecture and a .pt of the same model (zeros, full size)."""
    import torch
    from safetensors.torch import save_file

    st, pt = folder / f"{model}.safetensors", folder / f"{model}.pt"
    if st.exists() and pt.exists():
        return st, pt
    folder.mkdir(parents=True, exist_ok=True)
    meta = preview_model(f"timm:{model}").module.state_dict()
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in meta.items()}
    save_file(state, str(st), metadata={META_MODEL: f"timm:{model}"})
    torch.save(state, pt)
    return st, pt


def open_weights(window: MainWindow, path: Path) -> None:
    """Model tab: Open weights or bundle ▾ > Weights file…, the file dialog answered."""
    QFileDialog.getOpenFileName = staticmethod(lambda *a, **k: (str(path), ""))
    menu = window.model_panel.open_weights.menu()
    next(a for a in menu.actions() if a.text().startswith("Weights file")).trigger()


def bench_weights(folder: Path, model: str, repeats: int) -> dict:
    from freezer_app.core.weights import read_state_dict

    app = make_app()
    st, pt = make_weights(folder, model)
    blocking = {}
    for path in (st, pt):
        t0 = time.perf_counter()
        read_state_dict(path)
        blocking[path.suffix] = round(time.perf_counter() - t0, 2)
    window = new_window(Project(model="timm:test_resnet"))
    errors: list[str] = []
    window.error_dialog = lambda title, message, *a: errors.append(message)
    files = [st if i % 2 == 0 else pt for i in range(repeats)]
    samples, durations = measure_actions(
        app,
        [lambda f=f: open_weights(window, f) for f in files],
        lambda: window.preview_task is not None,
    )
    assert not errors and window.project.weights == str(files[-1]), errors
    close_window(window)
    return {
        "model": model,
        "safetensors_gb": round(st.stat().st_size / 1e9, 2),
        "pt_gb": round(pt.stat().st_size / 1e9, 2),
        "checks": len(durations),
        "check_s_median": round(statistics.median(durations), 3),
        "blocking_read_state_dict_s": blocking,
        **summary(samples),
    }


def make_image_folder(folder: Path, images: int, classes: int = 10) -> Path:
    from PIL import Image

    marker = folder / f".complete-{images}"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        d = folder / f"class_{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(d / f"{i}.png")
    marker.touch()
    return folder


def choose_folder(window: MainWindow, folder: Path) -> None:
    """Data tab: type the folder into its field and press Enter."""
    window.left.setCurrentWidget(window.data_panel)
    window.data_panel.folder.setText(str(folder))
    QTest.keyClick(window.data_panel.folder, Qt.Key.Key_Return)


def bench_scan(folder: Path, images: int) -> dict:
    app = make_app()
    data = make_image_folder(folder, images)
    window = new_window(Project(model="timm:test_resnet"))
    scanning = lambda: window.scan_task is not None or window.preview_task is not None
    full, durations = measure_actions(app, [lambda: choose_folder(window, data)], scanning)
    assert window.report is not None and len(window.report.train) + len(window.report.val) == images

    # Superseded: the same folder again, and again half way through (the first stops).
    def supersede() -> None:
        choose_folder(window, data)
        QTimer.singleShot(int(500 * durations[0]), lambda: choose_folder(window, data))

    superseded, again = measure_actions(app, [supersede], scanning)
    close_window(window)
    return {
        "images": images,
        "scan_s": round(durations[0], 2),
        "superseded_scan_s": round(again[0], 2),
        **summary(full + superseded),
    }


def make_large_jpegs(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    from PIL import Image

    w, h = size
    paths = [folder / f"{i:04d}.jpg" for i in range(count)]
    if all(p.exists() for p in paths):
        return [str(p) for p in paths]
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.int16)
    for i, path in enumerate(paths):
        # Grain on a gradient: about the file size of a photo (1-2 MB), not of a flat colour.
        noise = rng.integers(-12, 13, (h, w, 1), np.int16)
        image = np.clip(base + noise + 3 * i, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(path, quality=90)
    return [str(p) for p in paths]


def bench_thumbnails(folder: Path, count: int, size: tuple[int, int], repeats: int) -> dict:
    app = make_app()
    paths = make_large_jpegs(folder, count, size)
    t0 = time.perf_counter()
    for p in paths[:10]:
        QPixmap(p)  # what the list used to do per image, on the GUI thread
    blocking = (time.perf_counter() - t0) / 10
    window = new_window(Project(model="timm:test_resnet"))
    view = window.evaluate_view
    window.right.setCurrentWidget(view)
    results = [
        PredictionResult(p, [ClassProbability(f"class {i % 5}", i % 5, 0.5)])
        for i, p in enumerate(paths)
    ]
    samples, durations = measure_actions(
        app,
        [lambda: view.show_predictions(results) for _ in range(repeats)],
        lambda: view.thumbnail_task is not None,
    )
    grey = placeholder_icon().cacheKey()
    decoded = sum(view.images.item(i).icon().cacheKey() != grey for i in range(view.images.count()))
    close_window(window)
    return {
        "images": count,
        "image_size": list(size),
        "lists_shown": len(durations),
        "list_s_median": round(statistics.median(durations), 2),
        "icons_decoded": decoded,
        "blocking_full_decode_ms_per_image": round(1000 * blocking, 1),
        **summary(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="eva02_enormous_patch14_clip_224", help="largest timm ViT: 1,291 modules"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0, help="training time measured")
    parser.add_argument(
        "--only", default=",".join(SITUATIONS), help=f"comma-separated: {', '.join(SITUATIONS)}"
    )
    parser.add_argument(
        "--preview-models",
        default="vit_large_patch16_224,vit_large_patch16_384",
        help="~300M-parameter timm models, chosen in turn",
    )
    parser.add_argument("--previews", type=int, default=10, help="model choices measured")
    parser.add_argument("--weights-model", default="vit_large_patch16_224")
    parser.add_argument("--weights-checks", type=int, default=6, help="weights files opened")
    parser.add_argument("--images", type=int, default=10_000, help="images in the scanned folder")
    parser.add_argument("--thumbnails", type=int, default=200, help="large images in the list")
    parser.add_argument("--thumbnail-size", default="3000x2000", help="WIDTHxHEIGHT")
    parser.add_argument("--thumbnail-lists", type=int, default=3, help="times the list is shown")
    parser.add_argument(
        "--data-dir", type=Path, help="keep generated images and weights here (reused next time)"
    )
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SITUATIONS)
    if unknown:
        parser.error(f"unknown situation(s): {', '.join(sorted(unknown))}")
    data = args.data_dir or Path(tempfile.mkdtemp(prefix="freezer-bench-gui-"))
    make_app()
    result: dict = {"benchmark": "gui"}
    latency: dict = {}
    try:
        if "tree" in only:
            result["tree"] = bench_tree(args.model, args.repeats)
        if "training" in only:
            latency.update(bench_training(args.seconds))
        if "preview" in only:
            latency["preview"] = bench_preview(args.preview_models.split(","), args.previews)
        if "weights" in only:
            latency["weights"] = bench_weights(
                data / "weights", args.weights_model, args.weights_checks
            )
        if "scan" in only:
            latency["scan"] = bench_scan(data / f"images-{args.images}", args.images)
        if "thumbnails" in only:
            w, h = (int(v) for v in args.thumbnail_size.lower().split("x"))
            latency["thumbnails"] = bench_thumbnails(
                data / f"jpegs-{w}x{h}", args.thumbnails, (w, h), args.thumbnail_lists
            )
    finally:
        if args.data_dir is None:
            shutil.rmtree(data, ignore_errors=True)
    if latency:
        result["latency"] = latency
    _common.emit(result)


if __name__ == "__main__":
    main()
