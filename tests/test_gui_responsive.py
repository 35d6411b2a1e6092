"""Nothing slow on the GUI thread: the model preview (and the user's .py it runs), the weights
check, the dataset scan and the evaluation thumbnails run as background tasks that show
progress and can be cancelled or superseded. Driven through the window's real widgets."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import shiboken6
import timm
import torch
from conftest import make_project
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile
from PySide6.QtCore import QSettings, Qt, QThreadPool, QTimer
from PySide6.QtWidgets import QFileDialog, QInputDialog, QMessageBox
from safetensors.torch import save_file

from freezer_app.core import data as core_data
from freezer_app.core.errors import DataError
from freezer_app.core.evaluate import ClassProbability, PredictionResult
from freezer_app.core.weights import read_shapes
from freezer_app.gui.evaluate_view import THUMBNAIL_SIZE, decode_thumbnail
from freezer_app.gui.main_window import MainWindow


@pytest.fixture
def window(qtbot, tmp_path: Path, demo_data: Path, monkeypatch) -> MainWindow:
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    w = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    w.set_project(make_project(demo_data), None)
    w.resize(1400, 900)
    w.show()
    qtbot.waitUntil(lambda: w.report is not None and w.preview_task is None, timeout=30_000)
    w._runs_root = lambda: tmp_path / "runs"
    yield w
    if shiboken6.isValid(w):  # (a test may close and delete it)
        w.project_ctl.undo_stack.setClean()
        w.close()
        w.deleteLater()
    QThreadPool.globalInstance().waitForDone(60_000)


@pytest.fixture
def slow_factory(tmp_path: Path) -> tuple[Path, Path]:
    """A user's model file whose factory blocks until the test creates `gate` (at most 20 s),
    and leaves a file behind when it returns."""
    gate = tmp_path / "gate"
    path = tmp_path / "slow_model.py"
    path.write_text(
        textwrap.dedent(
            f"""
            import time
            from pathlib import Path
            from torch import nn

            def build(num_classes=10):
                end = time.monotonic() + 20
                while not Path({str(gate)!r}).exists() and time.monotonic() < end:
                    time.sleep(0.01)
                Path({str(gate)!r} + ".built").touch()
                return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Linear(8, num_classes))
            """
        )
    )
    return path, gate


def open_model_file(qtbot, w: MainWindow, path: Path, monkeypatch) -> None:
    """The Model tab's "Open model file (.py)…" button, its two dialogs answered."""
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(path), ""))
    monkeypatch.setattr(QInputDialog, "getItem", lambda *a, **k: ("build", True))
    qtbot.mouseClick(w.model_panel.open_factory, Qt.MouseButton.LeftButton)


def type_model(qtbot, w: MainWindow, name: str) -> None:
    """Type a model name into the Model tab's search field and press Enter."""
    w.model_panel.search.setText(name)
    qtbot.keyClick(w.model_panel.search, Qt.Key.Key_Return)


def wait_for_ticks(qtbot, n: int) -> None:
    """Wait until a 10 ms QTimer on the GUI thread has fired n times (the event loop runs)."""
    ticks = [0]
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.__setitem__(0, ticks[0] + 1))
    timer.start(10)
    try:
        qtbot.waitUntil(lambda: ticks[0] >= n, timeout=20_000)
    finally:
        timer.stop()


def test_a_slow_model_file_is_built_in_the_background(
    window: MainWindow, qtbot, slow_factory, monkeypatch
) -> None:
    path, gate = slow_factory
    open_model_file(qtbot, window, path, monkeypatch)
    # Nothing changed yet: the project takes the model once its tree is built.
    assert window.preview_task is not None
    assert window.project.model == "timm:test_resnet"
    assert window.tree_panel.busy.isVisible()
    assert "Building the model preview" in window.tree_panel.busy_label.text()
    assert "Building the model preview" in window.statusBar().currentMessage()
    # The GUI thread keeps processing events while the factory is stuck.
    wait_for_ticks(qtbot, 20)
    assert window.preview_task is not None and not Path(str(gate) + ".built").exists()
    # Train waits for the preview, and says so.
    window.act_train.trigger()
    assert window.session is None
    assert "Still building the model preview" in window.statusBar().currentMessage()
    gate.touch()
    qtbot.waitUntil(lambda: window.preview_task is None, timeout=20_000)
    assert window.project.model == f"{path}:build"
    assert set(window.controller.tree.nodes) >= {"1", "2"}
    assert not window.tree_panel.busy.isVisible()
    assert "Building" not in window.statusBar().currentMessage()
    # Undo and redo of the model change rebuild the tree, in the background too.
    window.act_undo.trigger()
    assert window.project.model == "timm:test_resnet"
    qtbot.waitUntil(lambda: window.preview_task is None, timeout=20_000)
    assert "layer4" in window.controller.tree.nodes
    window.act_redo.trigger()
    qtbot.waitUntil(lambda: window.preview_task is None, timeout=20_000)
    assert window.project.model == f"{path}:build" and "layer4" not in window.controller.tree.nodes


def test_a_newer_model_choice_supersedes_a_preview_still_being_built(
    window: MainWindow, qtbot, slow_factory, monkeypatch
) -> None:
    path, gate = slow_factory
    open_model_file(qtbot, window, path, monkeypatch)
    assert window.preview_task is not None
    type_model(qtbot, window, "timm:test_vit")
    qtbot.waitUntil(lambda: window.preview_task is None, timeout=20_000)
    assert window.project.model == "timm:test_vit"
    # The slow one finishes later: its result is dropped.
    gate.touch()
    qtbot.waitUntil(lambda: Path(str(gate) + ".built").exists(), timeout=20_000)
    QThreadPool.globalInstance().waitForDone(20_000)
    qtbot.wait(50)
    assert window.project.model == "timm:test_vit"
    assert "blocks" in window.controller.tree.nodes
    assert window.project_ctl.undo_stack.count() == 1  # one model change, not two
    assert window.project_ctl.undo_stack.undoText() == "Model timm:test_vit"


def test_cancel_drops_the_preview_and_closing_during_one_is_safe(
    window: MainWindow, qtbot, slow_factory, monkeypatch
) -> None:
    path, gate = slow_factory
    open_model_file(qtbot, window, path, monkeypatch)
    qtbot.mouseClick(window.tree_panel.busy_cancel, Qt.MouseButton.LeftButton)
    assert window.preview_task is None and not window.tree_panel.busy.isVisible()
    assert window.project.model == "timm:test_resnet"
    assert "layer4" in window.controller.tree.nodes  # still the project's model
    open_model_file(qtbot, window, path, monkeypatch)
    assert window.preview_task is not None
    window.close()  # mid-preview
    window.deleteLater()
    qtbot.wait(10)
    gate.touch()
    QThreadPool.globalInstance().waitForDone(20_000)
    qtbot.wait(50)  # the late result reaches no one


def test_a_model_that_fails_to_build_keeps_the_old_one_and_says_why(
    window: MainWindow, qtbot, tmp_path: Path, monkeypatch
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("def build(num_classes=10):\n    raise ValueError('no layers today')\n")
    open_model_file(qtbot, window, broken, monkeypatch)
    qtbot.waitUntil(lambda: window.preview_task is None, timeout=20_000)
    assert window.project.model == "timm:test_resnet"
    assert "no layers today" in window.last_error[1]
    window._open_dialog.close()


# ---------------------------------------------------------------------- weights
def _garble_safetensors_data(path: Path) -> None:
    """Overwrite every tensor byte after the header (shapes stay readable, data is noise)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    raw[start:] = np.random.default_rng(0).integers(0, 256, len(raw) - start, np.uint8).tobytes()
    path.write_bytes(bytes(raw))


def test_weights_are_checked_from_their_header_only(
    window: MainWindow, qtbot, tmp_path: Path, monkeypatch
) -> None:
    import safetensors.torch

    state = timm.create_model("test_resnet", num_classes=3).state_dict()
    st = tmp_path / "resnet.safetensors"
    save_file(state, str(st))
    _garble_safetensors_data(st)
    assert read_shapes(st) == {k: tuple(v.shape) for k, v in state.items()}
    pt = tmp_path / "resnet.pt"
    torch.save(state, pt)

    full_reads: list[str] = []
    monkeypatch.setattr(
        safetensors.torch, "load_file", lambda *a, **k: full_reads.append("safetensors")
    )
    real_load = torch.load

    def load(*args, **kwargs):
        if not kwargs.get("mmap"):
            full_reads.append("torch.load without mmap")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    for path in (st, pt):
        # Open weights ▾ > Weights file…: no architecture recorded, so the current model's.
        monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, p=path, **k: (str(p), ""))
        menu = window.model_panel.open_weights.menu()
        next(a for a in menu.actions() if a.text().startswith("Weights file")).trigger()
        assert window.preview_task is not None
        qtbot.waitUntil(lambda: window.preview_task is None, timeout=20_000)
        assert window.project.weights == str(path), getattr(window, "last_error", None)
    assert full_reads == []

    # Weights of another architecture: the check (from the header) says which keys differ.
    vit = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit", num_classes=3).state_dict(), str(vit))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(vit), ""))
    menu = window.model_panel.open_weights.menu()
    next(a for a in menu.actions() if a.text().startswith("Weights file")).trigger()
    qtbot.waitUntil(lambda: window.preview_task is None, timeout=20_000)
    assert window.project.weights == str(pt)
    assert "does not fit" in window.last_error[1] and "missing keys" in window.last_error[1]
    window._open_dialog.close()
    assert full_reads == []


# ---------------------------------------------------------------------- dataset scan
def _image_folder(root: Path, per_class: int) -> int:
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(root / c / f"{i}.png")
    return 2 * per_class


def test_cancelling_a_scan_stops_it_without_checking_every_file(
    tmp_path: Path, monkeypatch
) -> None:
    total = _image_folder(tmp_path / "data", 300)
    checked: list[Path] = []
    real = core_data._check_file
    monkeypatch.setattr(core_data, "_check_file", lambda p: checked.append(p) or real(p))
    progressed: list[int] = []
    with pytest.raises(DataError, match="cancelled"):
        core_data.scan_folder(
            tmp_path / "data",
            progress=lambda done, _total: progressed.append(done),
            should_cancel=lambda: bool(progressed),
        )
    started = len(checked)
    assert progressed == [64]
    # Only the files already queued when it was cancelled were checked, and no more follow.
    assert started <= 64 + core_data._SCAN_AHEAD < total
    time.sleep(0.2)
    assert len(checked) == started


def test_choosing_another_folder_stops_the_scan_of_the_first(
    window: MainWindow, qtbot, tmp_path: Path, demo_data: Path, monkeypatch
) -> None:
    big = tmp_path / "big"
    total = _image_folder(big, 300)
    checked: list[Path] = []
    real = core_data._check_file
    monkeypatch.setattr(core_data, "_check_file", lambda p: checked.append(p) or real(p))
    for folder in (big, demo_data / "train"):
        window.data_panel.folder.setText(str(folder))
        qtbot.keyClick(window.data_panel.folder, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.scan_task is None and window.report is not None, timeout=30_000)
    QThreadPool.globalInstance().waitForDone(30_000)
    assert window.report.root == str(demo_data / "train")
    assert len([p for p in checked if big in p.parents]) < total


# ---------------------------------------------------------------------- thumbnails
def test_thumbnails_are_decoded_at_display_size(tmp_path: Path, monkeypatch) -> None:
    big = tmp_path / "big.jpg"
    Image.new("RGB", (1800, 1200), (10, 200, 30)).save(big, quality=80)
    drafts: list[tuple] = []
    real_draft = JpegImageFile.draft

    def draft(self, mode, size):
        result = real_draft(self, mode, size)
        drafts.append((size, self.size))  # the size it will decode at
        return result

    monkeypatch.setattr(JpegImageFile, "draft", draft)
    image = decode_thumbnail(str(big))
    assert max(image.width(), image.height()) == THUMBNAIL_SIZE
    asked, decoded = drafts[0]  # (thumbnail() asks again, for nothing smaller)
    assert asked == (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    assert decoded[0] < 1800 // 4  # a reduced DCT scale, not the full image
    # 16-bit grey and transparent images come out as 8-bit, display size; junk is a null image.
    Image.fromarray(np.full((300, 200), 40000, np.uint16)).save(tmp_path / "grey16.png")
    Image.new("RGBA", (200, 300), (0, 0, 255, 128)).save(tmp_path / "alpha.png")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    for name in ("grey16.png", "alpha.png"):
        image = decode_thumbnail(str(tmp_path / name))
        assert max(image.width(), image.height()) == THUMBNAIL_SIZE
    assert decode_thumbnail(str(tmp_path / "junk.jpg")).isNull()


def test_evaluation_thumbnails_arrive_in_the_background(
    window: MainWindow, qtbot, tmp_path: Path
) -> None:
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (1200, 900), (40 * i, 0, 0)).save(path)
        paths.append(str(path))
    view = window.evaluate_view
    window.right.setCurrentWidget(view)
    results = [PredictionResult(p, [ClassProbability("a", 0, 0.9)]) for p in paths]
    view.show_predictions(results)
    assert view.images.count() == 6  # rows (with a placeholder icon) at once
    first = view.thumbnail_task
    assert first is not None
    view.show_predictions(results[:3])  # a newer list: the older decoding is cancelled
    assert first.cancelled.is_set()
    qtbot.waitUntil(lambda: view.thumbnail_task is None, timeout=20_000)
    QThreadPool.globalInstance().waitForDone(20_000)
    qtbot.wait(20)
    assert view.images.count() == 3
    for row in range(3):
        icon = view.images.item(row).icon()
        size = icon.availableSizes()[0]
        assert max(size.width(), size.height()) == THUMBNAIL_SIZE
        # The decoded image, not the grey placeholder.
        colour = icon.pixmap(size).toImage().pixelColor(size.width() // 2, size.height() // 2)
        assert abs(colour.red() - 40 * row) <= 4 and colour.green() < 10  # (JPEG is lossy)
    view.show_predictions(results)
    view.cancel_all()  # what closing the window does
    assert view.thumbnail_task is None
