"""The project's side panels: model, dataset and training settings. Thin views over Project."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSortFilterProxyModel, QStringListModel, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
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
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core.catalog import all_model_names
from freezer_app.core.data import DataReport
from freezer_app.core.freeze import Phase
from freezer_app.core.project import Project


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
        menu.addAction("Weights file (.safetensors, .pth)…", self._pick_weights)
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
        self.pretrained.blockSignals(True)
        self.pretrained.setChecked(project.pretrained)
        self.pretrained.blockSignals(False)
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
class DataPanel(QWidget):
    """Choose an image folder (button or drag-and-drop) and see what the check found."""

    folderChosen = Signal(str)
    settingsChanged = Signal()
    cancelRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
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
        form = QFormLayout()
        self.val_split = QDoubleSpinBox()
        self.val_split.setRange(0.0, 0.9)
        self.val_split.setSingleStep(0.05)
        self.val_split.setToolTip(
            "Share of each class held out for validation when there is no val/ folder (seeded, stratified)"
        )
        self.image_size = QSpinBox()
        self.image_size.setRange(0, 2048)
        self.image_size.setSpecialValueText("model default")
        self.image_size.setSingleStep(16)
        self.image_size.setToolTip(
            "Training and validation image size; 'model default' uses the model's own input size"
        )
        self.augment = QComboBox()
        self.augment.addItems(["none", "light", "strong"])
        self.augment.setToolTip(
            "none: resize and crop only; light: random crops and flips; strong: RandAugment and erasing"
        )
        form.addRow("Validation split", self.val_split)
        form.addRow("Image size", self.image_size)
        form.addRow("Augmentation", self.augment)
        layout.addLayout(form)
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
        layout.addWidget(self.report, 1)
        self.browse.clicked.connect(self._browse)
        self.folder.returnPressed.connect(
            lambda: self.folderChosen.emit(self.folder.text().strip())
        )
        self.cancel.clicked.connect(self.cancelRequested)
        for w in (self.val_split, self.image_size):
            w.valueChanged.connect(self.settingsChanged)
        self.augment.currentIndexChanged.connect(self.settingsChanged)
        self.last_dir = ""

    def load(self, project: Project) -> None:
        for w in (self.val_split, self.image_size, self.augment):
            w.blockSignals(True)
        self.folder.setText(project.data.path)
        self.val_split.setValue(project.data.val_split)
        self.image_size.setValue(project.data.image_size or 0)
        self.augment.setCurrentText(project.data.augmentation)
        for w in (self.val_split, self.image_size, self.augment):
            w.blockSignals(False)

    def store(self, project: Project) -> None:
        project.data.val_split = round(self.val_split.value(), 3)
        project.data.image_size = self.image_size.value() or None
        project.data.augmentation = self.augment.currentText()

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
        self.report.clear()
        if report is None:
            self.summary.setText(
                f"<span style='color:#b00020'>{error}</span>" if error else "No dataset yet."
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
                + ", ".join(f"{n} {m}" for m, n in sorted(report.converted.items()))
                + "."
            )
        if report.skipped:
            text += f" <span style='color:#b26a00'>Skipped {len(report.skipped)} file(s).</span>"
        for w in report.warnings:
            text += f"<br><span style='color:#b26a00'>Warning: {w}</span>"
        self.summary.setText(text)
        for name, t, v in zip(
            report.classes, report.counts(report.train), report.counts(report.val)
        ):
            QTreeWidgetItem(self.report, [name, f"{t:,}", f"{v:,}"])
        if report.skipped:
            group = QTreeWidgetItem(self.report, [f"Skipped files ({len(report.skipped)})", "", ""])
            for s in report.skipped[:500]:
                item = QTreeWidgetItem(group, [s.path, "", ""])
                item.setToolTip(0, s.reason)
                item.setText(1, "")
                item.setText(2, s.reason)


# ====================================================================== settings
class SettingsPanel(QWidget):
    """Training settings with sensible defaults and tooltips."""

    changed = Signal()
    scheduleChanged = Signal(list)
    bnPolicyChanged = Signal(str)
    fineTuneRequested = Signal()  # "head first, then all": preset head-only + schedule

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        layout.addLayout(form)

        def spin(lo: int, hi: int, tip: str) -> QSpinBox:
            w = QSpinBox()
            w.setRange(lo, hi)
            w.setToolTip(tip)
            w.valueChanged.connect(self.changed)
            return w

        def dspin(lo: float, hi: float, step: float, decimals: int, tip: str) -> QDoubleSpinBox:
            w = QDoubleSpinBox()
            w.setRange(lo, hi)
            w.setDecimals(decimals)
            w.setSingleStep(step)
            w.setToolTip(tip)
            w.valueChanged.connect(self.changed)
            return w

        def combo(items: list[str], tip: str) -> QComboBox:
            w = QComboBox()
            w.addItems(items)
            w.setToolTip(tip)
            w.currentIndexChanged.connect(self.changed)
            return w

        self.epochs = spin(1, 10_000, "Passes over the training images")
        self.batch_size = spin(1, 4096, "Images per step; lower it if you run out of memory")
        self.optimizer = combo(
            ["adamw", "sgd"], "AdamW suits most fine-tuning; SGD uses Nesterov momentum"
        )
        self.lr = dspin(
            1e-7, 10.0, 1e-4, 6, "Base learning rate (peak of the warmup + cosine schedule)"
        )
        self.head_mult = dspin(
            0.01,
            1000.0,
            1.0,
            2,
            "The head's learning rate = base × this (e.g. 10 for a fresh head)",
        )
        self.layer_decay = dspin(
            0.0,
            1.0,
            0.05,
            2,
            "Layer-wise LR decay: each layer closer to the input gets × this. 0 = off",
        )
        self.layer_decay.setSpecialValueText("off")
        self.weight_decay = dspin(
            0.0, 1.0, 0.01, 4, "Not applied to norms, biases and timm's no_weight_decay parameters"
        )
        self.schedule = combo(["cosine", "constant"], "Learning-rate schedule after warmup")
        self.warmup = dspin(
            0.0, 100.0, 0.5, 1, "Epochs of linear warmup (capped at 20% of the run)"
        )
        self.grad_clip = dspin(0.0, 1000.0, 0.5, 2, "Clip the gradient norm to this; 0 = off")
        self.grad_clip.setSpecialValueText("off")
        self.label_smoothing = dspin(0.0, 0.5, 0.05, 2, "Cross-entropy label smoothing")
        self.early_stop = spin(
            0, 1000, "Stop after this many epochs without a better validation accuracy; 0 = off"
        )
        self.early_stop.setSpecialValueText("off")
        self.device = combo(_devices(), "auto: CUDA, then Apple MPS, then the CPU")
        self.amp = combo(
            ["auto", "bf16", "fp16", "off"],
            "Mixed precision; auto = bf16/fp16 on CUDA, off elsewhere",
        )
        self.bn_policy = combo(
            ["frozen", "update"],
            "frozen: frozen BatchNorm layers keep their running statistics (eval mode); update: they keep learning statistics",
        )
        self.seed = spin(0, 2**31 - 1, "Seeds weights, data order, splits and augmentation")
        self.telemetry = spin(1, 100_000, "Steps between per-layer gradient/update statistics")
        self.workers = spin(-1, 64, "Data loading processes; -1 = automatic")
        self.workers.setSpecialValueText("auto")
        rows = [
            ("Epochs", self.epochs),
            ("Batch size", self.batch_size),
            ("Optimizer", self.optimizer),
            ("Learning rate", self.lr),
            ("Head LR ×", self.head_mult),
            ("Layer decay", self.layer_decay),
            ("Weight decay", self.weight_decay),
            ("Schedule", self.schedule),
            ("Warmup epochs", self.warmup),
            ("Gradient clip", self.grad_clip),
            ("Label smoothing", self.label_smoothing),
            ("Early stopping", self.early_stop),
            ("Device", self.device),
            ("Mixed precision", self.amp),
            ("BatchNorm policy", self.bn_policy),
            ("Seed", self.seed),
            ("Telemetry every", self.telemetry),
            ("Data workers", self.workers),
        ]
        for label, widget in rows:
            form.addRow(label, widget)
        self.bn_policy.currentTextChanged.connect(self.bnPolicyChanged)

        box = QGroupBox("Gradual unfreezing")
        box.setToolTip(
            "Change the freeze preset as training goes, e.g. head only for 1 epoch, then the last stage, then all"
        )
        box_layout = QVBoxLayout(box)
        self.phases = QTableWidget(0, 2)
        self.phases.setHorizontalHeaderLabels(["After epoch", "Preset"])
        self.phases.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.phases.verticalHeader().setVisible(False)
        self.phases.setMaximumHeight(130)
        box_layout.addWidget(self.phases)
        buttons = QHBoxLayout()
        self.add_phase = QPushButton("Add step")
        self.remove_phase = QPushButton("Remove")
        self.fine_tune = QPushButton("Head first, then all")
        self.fine_tune.setToolTip("fastai's fine_tune: the head alone for 1 epoch, then everything")
        for b in (self.add_phase, self.remove_phase, self.fine_tune):
            buttons.addWidget(b)
        box_layout.addLayout(buttons)
        layout.addWidget(box)
        layout.addStretch(1)
        self.add_phase.clicked.connect(
            lambda: self._add_phase(self.phases.rowCount() + 1, "train-all")
        )
        self.remove_phase.clicked.connect(self._remove_phase)
        self.fine_tune.clicked.connect(self._fine_tune)
        self.phases.itemChanged.connect(lambda _: self.scheduleChanged.emit(self.schedule_phases()))
        self._loading = False

    def _add_phase(self, epoch: int, preset: str) -> None:
        row = self.phases.rowCount()
        self.phases.insertRow(row)
        self.phases.setItem(row, 0, QTableWidgetItem(str(epoch)))
        self.phases.setItem(row, 1, QTableWidgetItem(preset))

    def _remove_phase(self) -> None:
        rows = sorted(
            {i.row() for i in self.phases.selectedIndexes()} or {self.phases.rowCount() - 1},
            reverse=True,
        )
        for r in rows:
            if r >= 0:
                self.phases.removeRow(r)
        self.scheduleChanged.emit(self.schedule_phases())

    def _fine_tune(self) -> None:
        self.phases.blockSignals(True)
        self.phases.setRowCount(0)
        self._add_phase(1, "train-all")
        self.phases.blockSignals(False)
        self.fineTuneRequested.emit()

    def schedule_phases(self) -> list[Phase]:
        phases = []
        for r in range(self.phases.rowCount()):
            epoch, preset = self.phases.item(r, 0), self.phases.item(r, 1)
            if epoch and preset and epoch.text().strip().isdigit() and preset.text().strip():
                phases.append(Phase(int(epoch.text()), preset.text().strip()))
        return phases

    def show_schedule(self, phases: list[Phase]) -> None:
        self.phases.blockSignals(True)
        self.phases.setRowCount(0)
        for p in phases:
            if p.epoch > 0:
                self._add_phase(p.epoch, p.preset)
        self.phases.blockSignals(False)

    def load(self, project: Project) -> None:
        t = project.train
        widgets = self.findChildren(QWidget)
        for w in widgets:
            w.blockSignals(True)
        self.epochs.setValue(t.epochs)
        self.batch_size.setValue(t.batch_size)
        self.optimizer.setCurrentText(t.optimizer)
        self.lr.setValue(t.lr)
        self.head_mult.setValue(t.head_lr_mult)
        self.layer_decay.setValue(t.layer_decay or 0.0)
        self.weight_decay.setValue(t.weight_decay)
        self.schedule.setCurrentText(t.schedule)
        self.warmup.setValue(t.warmup_epochs)
        self.grad_clip.setValue(t.grad_clip or 0.0)
        self.label_smoothing.setValue(t.label_smoothing)
        self.early_stop.setValue(t.early_stop_patience)
        if self.device.findText(t.device) < 0:
            self.device.addItem(t.device)
        self.device.setCurrentText(t.device)
        self.amp.setCurrentText(t.amp)
        self.bn_policy.setCurrentText(project.plan.bn_policy)
        self.seed.setValue(t.seed)
        self.telemetry.setValue(t.telemetry_every)
        self.workers.setValue(-1 if project.data.workers is None else project.data.workers)
        for w in widgets:
            w.blockSignals(False)
        self.show_schedule(project.plan.schedule)

    def store(self, project: Project) -> None:
        t = project.train
        t.epochs = self.epochs.value()
        t.batch_size = self.batch_size.value()
        t.optimizer = self.optimizer.currentText()
        t.lr = self.lr.value()
        t.head_lr_mult = self.head_mult.value()
        t.layer_decay = self.layer_decay.value() or None
        t.weight_decay = self.weight_decay.value()
        t.schedule = self.schedule.currentText()
        t.warmup_epochs = self.warmup.value()
        t.grad_clip = self.grad_clip.value() or None
        t.label_smoothing = self.label_smoothing.value()
        t.early_stop_patience = self.early_stop.value()
        t.device = self.device.currentText()
        t.amp = self.amp.currentText()
        t.seed = self.seed.value()
        t.telemetry_every = self.telemetry.value()
        project.data.workers = None if self.workers.value() < 0 else self.workers.value()


def _devices() -> list[str]:
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices
