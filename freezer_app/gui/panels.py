"""The project's side panels: model, dataset and training settings. Thin views that observe the
project controller; their settings forms are generated from the schema (gui/forms.py)."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QSize, QSortFilterProxyModel, QStringListModel, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListView,
    QMenu,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core.catalog import all_model_names
from freezer_app.core.data import DataReport, conversion_note
from freezer_app.core.project import Project
from freezer_app.core.text import printable
from freezer_app.gui import tasks
from freezer_app.gui.evaluate_view import start_thumbnails
from freezer_app.gui.forms import ScheduleEditor, SettingsForm, form_settings
from freezer_app.gui.guide import plain
from freezer_app.gui.project_controller import ProjectController, touches


# ====================================================================== model
class ModelPanel(QWidget):
    """Pick a timm/torchvision model from a searchable list, or open a file."""

    modelChosen = Signal(str, object)  # model string, weights path or None
    pretrainedChanged = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.current = QLabel()
        self.current.setWordWrap(True)
        self.current.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.current)

        names = all_model_names()
        self.search = QLineEdit()
        self.search.setPlaceholderText(f"Search {len(names):,} timm and torchvision models…")
        self.search.setClearButtonEnabled(True)
        layout.addWidget(self.search)
        self.names = QStringListModel(names)
        self.proxy = QSortFilterProxyModel()
        self.proxy.setSourceModel(self.names)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.list = QListView()
        self.list.setModel(self.proxy)
        self.list.setUniformItemSizes(True)
        self.list.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.list.setToolTip("Double-click (or press Enter) to use a model")
        layout.addWidget(self.list, 1)
        self.search.textChanged.connect(self.proxy.setFilterFixedString)
        self.search.returnPressed.connect(self._choose_first)
        self.list.activated.connect(lambda index: self.modelChosen.emit(index.data(), None))

        row = QHBoxLayout()
        self.open_weights = QPushButton("Open weights or bundle ▾")
        self.open_weights.setToolTip(
            "A .safetensors/.pth file, an exported bundle folder, or a run folder"
        )
        menu = QMenu(self.open_weights)
        menu.setToolTipsVisible(True)
        self.weights_action = menu.addAction("Weights file…", self._pick_weights)
        self.weights_action.setToolTip("A .safetensors or .pth file of this architecture")
        menu.addAction("Bundle or run folder…", self._pick_folder)
        self.open_weights.setMenu(menu)
        self.open_factory = QPushButton("Open model file (.py)…")
        self.open_factory.setToolTip(
            "Your own factory function returning an nn.Module (file.py:callable)"
        )
        row.addWidget(self.open_weights)
        row.addWidget(self.open_factory)
        layout.addLayout(row)
        self.pretrained = QCheckBox("Start from pretrained weights")
        self.pretrained.setToolTip(
            "Download the library's pretrained weights (once; later runs use the cache). "
            "Offline without a cached copy you get a clear message."
        )
        layout.addWidget(self.pretrained)
        self.classes = QLabel()
        self.classes.setWordWrap(True)
        layout.addWidget(self.classes)
        self.pretrained.toggled.connect(self.pretrainedChanged)
        self.open_factory.clicked.connect(self._pick_factory)
        self.last_dir = ""

    @property
    def controls(self) -> dict[str, tuple[str, str]]:
        """Setting key → (its control, where on this tab): messages name these rather than
        the `train` flags (gui/guide.py), in the words the widgets show."""
        return {
            "pretrained": (plain(self.pretrained.text()), ""),
            "weights": (plain(self.weights_action.text()), plain(self.open_weights.text())),
        }

    def select_model(self, model: str) -> None:
        """Highlight the current model in the list (when it is a catalog name)."""
        rows = self.names.stringList()
        if model in rows:
            index = self.proxy.mapFromSource(self.names.index(rows.index(model)))
            if index.isValid():
                self.list.setCurrentIndex(index)
                self.list.scrollTo(index, QAbstractItemView.ScrollHint.PositionAtCenter)

    def show_project(self, project: Project, info: str = "") -> None:
        self.select_model(project.model)
        weights = f"<br>weights: {Path(project.weights).name}" if project.weights else ""
        self.current.setText(
            f"<b>{project.model}</b>{weights}<br><span style='color:#555'>{info}</span>"
        )
        # Showing the value the project holds sends nothing back (the edit would be a no-op).
        self.pretrained.setChecked(project.pretrained)
        self.pretrained.setEnabled(not project.weights)
        n = project.num_classes
        self.classes.setText(
            f"Classifier: {n} classes, from the dataset."
            if n
            else "Classifier size comes from the dataset."
        )

    def _choose_first(self) -> None:
        if self.proxy.rowCount():
            self.modelChosen.emit(self.proxy.index(0, 0).data(), None)

    def _pick_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Open weights",
            self.last_dir,
            "Weights (*.safetensors *.pth *.pt *.bin);;All files (*)",
        )
        if path:
            self.last_dir = str(Path(path).parent)
            self.modelChosen.emit(path, "file")

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Open a bundle or run folder", self.last_dir
        )
        if folder:
            self.last_dir = str(Path(folder).parent)
            self.modelChosen.emit(folder, "file")

    def _pick_factory(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open model file", self.last_dir, "Python (*.py)"
        )
        if not path:
            return
        self.last_dir = str(Path(path).parent)
        import ast

        try:
            tree = ast.parse(Path(path).read_text())
            names = [
                n.name
                for n in tree.body
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
            ]
        except (OSError, SyntaxError):
            names = []
        name, ok = QInputDialog.getItem(
            self,
            "Model factory",
            "Function that returns the nn.Module:",
            names or ["build"],
            0,
            True,
        )
        if ok and name:
            self.modelChosen.emit(f"{path}:{name}", None)


# ====================================================================== data
# PIL's image modes in words (Pillow handbook, "Modes"): the Data tab says "grayscale", not "L".
MODE_WORDS = {
    "1": "black-and-white (1-bit)",
    "L": "grayscale",
    "LA": "grayscale with transparency",
    "La": "grayscale with transparency",
    "P": "palette",
    "PA": "palette with transparency",
    "RGB": "RGB",
    "RGBA": "RGB with transparency",
    "RGBa": "RGB with transparency",
    "RGBX": "RGB (padded)",
    "CMYK": "CMYK",
    "YCbCr": "YCbCr",
    "LAB": "Lab colour",
    "HSV": "HSV colour",
    "I": "32-bit grayscale (integer)",
    "F": "32-bit grayscale (floating point)",
    "I;16": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16N": "16-bit grayscale",
}
THUMBS_PER_CLASS = 4  # example images shown per class
THUMB_SIZE = 48  # pixels: small enough for four in the narrow left column
THUMB_CLASSES = 200  # classes that get examples (a 1000-class folder would decode 4000 files)


def mode_words(mode: str) -> str:
    """An image mode as people say it: "grayscale" for "L", "palette" for "P"."""
    return MODE_WORDS.get(mode, f"mode {printable(mode)}")


def conversion_words(mode: str) -> str:
    """What loading does to images of this mode, without PIL's mode letters."""
    note = conversion_note(mode)
    # core says "L converted to RGB" for modes it converts as they are: the mode's words
    # already lead the line.
    return "converted to RGB" if note.startswith(f"{printable(mode)} ") else note


def thumbnail_strip(images: list[QImage], size: int = THUMB_SIZE) -> QPixmap:
    """A class's example images side by side, each centred in a size×size cell (grey until
    decoded, so the row does not jump)."""
    gap = 4
    strip = QPixmap(len(images) * (size + gap) - gap, size)
    strip.fill(Qt.GlobalColor.transparent)
    painter = QPainter(strip)
    for i, image in enumerate(images):
        x = i * (size + gap)
        if image.isNull():
            painter.fillRect(x, 0, size, size, QColor("#e4e4e4"))
            continue
        painter.drawImage(x + (size - image.width()) // 2, (size - image.height()) // 2, image)
    painter.end()
    return strip


class DataPanel(QWidget):
    """Choose an image folder (button or drag-and-drop), its settings (a form generated from
    the schema) and what the check found."""

    folderChosen = Signal(str)
    cancelRequested = Signal()

    def __init__(self, controller: ProjectController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.setAcceptDrops(True)
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("Drop an image folder here, or browse…")
        self.folder.setToolTip(
            "One sub-folder per class, or train/ and val/ folders with class sub-folders"
        )
        self.browse = QPushButton("Browse…")
        row.addWidget(self.folder, 1)
        row.addWidget(self.browse)
        layout.addLayout(row)
        self.form = SettingsForm(controller, form_settings(Project, ("data",)))
        layout.addWidget(self.form)
        scan_row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        self.cancel = QPushButton("Cancel")
        self.cancel.setVisible(False)
        scan_row.addWidget(self.progress, 1)
        scan_row.addWidget(self.cancel)
        layout.addLayout(scan_row)
        self.summary = QLabel("No dataset yet.")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.report = QTreeWidget()
        self.report.setHeaderLabels(["Class / file", "Train", "Val"])
        self.report.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.report.setRootIsDecorated(True)
        self.report.setIconSize(QSize(THUMBS_PER_CLASS * (THUMB_SIZE + 4) - 4, THUMB_SIZE))
        layout.addWidget(self.report, 1)
        # Example images of each class, decoded on a background task (a row under the class).
        self.thumbnail_task: tasks.Task | None = None
        self._thumbnail_rows: list[tuple[QTreeWidgetItem, list[QImage]]] = []
        self.browse.clicked.connect(self._browse)
        self.folder.returnPressed.connect(
            lambda: self.folderChosen.emit(self.folder.text().strip())
        )
        self.cancel.clicked.connect(self.cancelRequested)
        self.last_dir = ""
        controller.changed.connect(self._project_changed)
        self._project_changed({"*"})

    def _project_changed(self, keys: set[str]) -> None:
        if touches(keys, "data.path"):
            self.folder.setText(self.controller.value("data.path"))

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Image folder", self.last_dir or self.folder.text()
        )
        if folder:
            self.folderChosen.emit(folder)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls() and any(
            Path(u.toLocalFile()).is_dir() for u in event.mimeData().urls()
        ):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        for url in event.mimeData().urls():
            if Path(url.toLocalFile()).is_dir():
                self.folderChosen.emit(url.toLocalFile())
                event.acceptProposedAction()
                return

    def scanning(self, active: bool) -> None:
        self.progress.setVisible(active)
        self.cancel.setVisible(active)
        self.progress.setRange(0, 0)
        if active:
            self.summary.setText("Checking images…")

    def set_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, total)
        self.progress.setValue(done)

    def show_report(self, report: DataReport | None, error: str = "") -> None:
        self._cancel_thumbnails()
        self.report.clear()
        if report is None:
            self.summary.setText(
                f"<span style='color:#b00020'>{html.escape(printable(error))}</span>"
                if error
                else "No dataset yet."
            )
            return
        how = (
            "train/ and val/ folders"
            if report.layout == "train/val"
            else "validation split from one folder"
        )
        text = (
            f"<b>{report.num_classes} classes</b>, {len(report.train):,} training and "
            f"{len(report.val):,} validation images ({how})."
        )
        if report.converted:
            text += (
                " Converted to RGB: "
                + ", ".join(
                    f"{n:,} {html.escape(mode_words(m))}"
                    for m, n in sorted(report.converted.items())
                )
                + "."
            )
        if report.skipped:
            text += f" <span style='color:#b26a00'>Skipped {len(report.skipped)} file(s).</span>"
        for w in report.warnings:
            text += f"<br><span style='color:#b26a00'>Warning: {html.escape(printable(w))}</span>"
        self.summary.setText(text)
        examples: list[str] = []
        # A few images per class, in one pass that stops as soon as each class has them (a
        # folder of a million images must not hold the window up).
        per_class: dict[int, list[str]] = {
            i: [] for i in range(min(THUMB_CLASSES, len(report.classes)))
        }
        wanted = len(per_class)
        for p, label in report.train:
            got = per_class.get(label)
            if got is not None and len(got) < THUMBS_PER_CLASS:
                got.append(p)
                wanted -= len(got) == THUMBS_PER_CLASS
                if not wanted:
                    break
        for i, (name, t, v) in enumerate(
            zip(report.classes, report.counts(report.train), report.counts(report.val))
        ):
            item = QTreeWidgetItem(self.report, [printable(name), f"{t:,}", f"{v:,}"])
            if i < THUMB_CLASSES:
                paths = per_class[i]
                if paths:
                    examples += paths
                    row = QTreeWidgetItem(item)
                    row.setFirstColumnSpanned(True)
                    row.setToolTip(0, "\n".join(printable(p) for p in paths))
                    images = [QImage() for _ in paths]
                    row.setIcon(0, thumbnail_strip(images))
                    self._thumbnail_rows.append((row, images))
                    item.setExpanded(True)
        if report.converted:
            group = QTreeWidgetItem(
                self.report,
                [f"Converted images ({sum(report.converted.values()):,})", "", ""],
            )
            group.setFirstColumnSpanned(True)  # the title is wider than the class column
            for mode, n in sorted(report.converted.items()):
                line = f"{n:,} {mode_words(mode)}: {conversion_words(mode)}"
                item = QTreeWidgetItem(group, [line])
                item.setToolTip(0, f"{line} (image mode {printable(mode)})")
                item.setFirstColumnSpanned(True)
            group.setExpanded(True)
        if report.skipped:
            group = QTreeWidgetItem(self.report, [f"Skipped files ({len(report.skipped)})", "", ""])
            group.setFirstColumnSpanned(True)
            for s in report.skipped[:500]:
                path, reason = printable(s.path), printable(s.reason)
                item = QTreeWidgetItem(group, [f"{path}: {reason}"])
                item.setToolTip(0, f"{path}\n{reason}")
                item.setFirstColumnSpanned(True)
            if len(report.skipped) > 500:
                QTreeWidgetItem(group, [f"... and {len(report.skipped) - 500} more"])
            group.setExpanded(True)
        self._decode_thumbnails(examples)

    # ------------------------------------------------------------------ example images
    def _decode_thumbnails(self, paths: list[str]) -> None:
        if not paths:
            return
        self.thumbnail_task = start_thumbnails(
            paths, self._thumbnails_decoded, self._thumbnails_done, THUMB_SIZE
        )

    def _cancel_thumbnails(self) -> None:
        if self.thumbnail_task is not None:
            self.thumbnail_task.cancel()
            self.thumbnail_task = None
        self._thumbnail_rows = []

    def _current_thumbnails(self) -> bool:
        """Thumbnails of a report that was replaced are dropped."""
        task = self.thumbnail_task
        return task is not None and self.sender() is task.signals

    def _thumbnails_decoded(self, batch: list[tuple[int, QImage]]) -> None:
        if not self._current_thumbnails():
            return
        touched: set[int] = set()
        for index, image in batch:
            # `index` counts through the classes' examples in order.
            for r, (_row, images) in enumerate(self._thumbnail_rows):
                if index < len(images):
                    images[index] = image
                    touched.add(r)
                    break
                index -= len(images)
        for r in touched:
            row, images = self._thumbnail_rows[r]
            row.setIcon(0, thumbnail_strip(images))

    def _thumbnails_done(self, *_args: object) -> None:
        if self._current_thumbnails():
            self.thumbnail_task = None

    def thumbnails_shown(self) -> list[int]:
        """How many example images each class row shows (decoded ones), for tests."""
        return [sum(not i.isNull() for i in images) for _row, images in self._thumbnail_rows]


# ====================================================================== training
class TrainingPanel(QWidget):
    """Training settings (a form generated from the schema) and the unfreezing schedule."""

    findLrRequested = Signal()  # "Find learning rate…": the window runs the range test

    def __init__(self, controller: ProjectController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        # The form is long (every training setting): it scrolls, so the window still fits a
        # laptop screen.
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        content = QWidget()
        scroll.setWidget(content)
        self.scroll = scroll
        layout = QVBoxLayout(content)
        self.form = SettingsForm(controller, form_settings(Project, ("train", "plan")))
        layout.addWidget(self.form)
        # Right under the learning rate it suggests (gui/lr_find_view.py).
        self.find_lr = QPushButton("Find learning rate…")
        self.find_lr.setToolTip(
            "A short range test with the current freeze plan: plots the loss against the "
            "learning rate and suggests one. The model's weights are not changed."
        )
        self.find_lr.clicked.connect(self.findLrRequested)
        lr_row, _role = self.form.layout_.getWidgetPosition(self.form.editor("train.lr"))
        self.form.layout_.insertRow(lr_row + 1, "", self.find_lr)
        box = QGroupBox("Gradual unfreezing")
        box.setToolTip(
            "Change the freeze selection as training goes, e.g. head only for 1 epoch, then the "
            "last stage, then all"
        )
        box_layout = QVBoxLayout(box)
        self.schedule = ScheduleEditor(controller)
        box_layout.addWidget(self.schedule)
        layout.addWidget(box)
        layout.addStretch(1)
