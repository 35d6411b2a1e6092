"""The Export dialog: a run folder (or bundle / weights file) to a format others can load."""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core.errors import FreezerError
from freezer_app.core.export import (
    CHECKPOINTS,
    FORMAT_TITLES,
    FORMATS,
    ExportResult,
    available_checkpoints,
    default_export_path,
    existing_targets,
    export,
    replace_refusal,
)
from freezer_app.gui import tasks
from freezer_app.gui.guide import in_window_words, model_list_phrases, plain

# timm:NAME, torchvision:NAME, hf-hub:..., PATH.py:FUNCTION (never a drive letter's "C:").
MODEL_STRING = re.compile(r"[A-Za-z][\w-]+:|.*\.py:")
REPORT_LINES = (5, 12)  # the result's box: at least / at most this many lines, then it scrolls


class ExportDialog(QDialog):
    def __init__(self, source: Path | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export")
        self.setMinimumWidth(640)
        self.task: tasks.Task | None = None
        self.result: ExportResult | None = None
        self._out_edited = False
        layout = QVBoxLayout(self)
        intro = QLabel(
            "Write the trained model in a form timm, torchvision, TorchScript or ONNX users load "
            "without Freezer. Every export is reloaded and its outputs compared before it is kept."
        )
        intro.setWordWrap(True)
        layout.addWidget(intro)
        form = QFormLayout()
        self.source = QLineEdit(str(source or ""))
        self.source.setPlaceholderText("A run folder, exported bundle or weights file")
        browse_source = QPushButton("Browse…")
        row = QHBoxLayout()
        row.addWidget(self.source, 1)
        row.addWidget(browse_source)
        form.addRow("From", row)
        self.format = QComboBox()
        for fmt in FORMATS:
            self.format.addItem(FORMAT_TITLES[fmt], fmt)
        form.addRow("Format", self.format)
        self.checkpoint = QComboBox()
        self.checkpoint.addItem("final weights (end of training)", "final")
        self.checkpoint.addItem("best validation epoch", "best")
        self.checkpoint.addItem("moving average of the weights (EMA)", "ema")
        assert [self.checkpoint.itemData(i) for i in range(self.checkpoint.count())] == list(
            CHECKPOINTS
        )
        self.checkpoint_label = QLabel("Weights")
        form.addRow(self.checkpoint_label, self.checkpoint)
        self.out = QLineEdit()
        browse_out = QPushButton("Browse…")
        row = QHBoxLayout()
        row.addWidget(self.out, 1)
        row.addWidget(browse_out)
        self.out_label = QLabel("To")
        form.addRow(self.out_label, row)
        layout.addLayout(form)
        self.progress = QProgressBar()
        self.progress.setVisible(False)
        layout.addWidget(self.progress)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.status)
        # The result (what was written, how it was checked) scrolls in a box of its own
        # rather than pushing the buttons off the dialog.
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.report.setVisible(False)
        line = self.report.fontMetrics().lineSpacing()
        frame = 2 * self.report.frameWidth() + 8  # frame and document margins
        self.report.setMinimumHeight(REPORT_LINES[0] * line + frame)
        self.report.setMaximumHeight(REPORT_LINES[1] * line + frame)
        layout.addWidget(self.report, 1)
        self.buttons = QDialogButtonBox()
        self.export_button = self.buttons.addButton(
            "Export", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.open_button = self.buttons.addButton(
            "Open folder", QDialogButtonBox.ButtonRole.ActionRole
        )
        self.open_button.setEnabled(False)
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        layout.addWidget(self.buttons)

        browse_source.clicked.connect(self._browse_source)
        browse_out.clicked.connect(self._browse_out)
        self.export_button.clicked.connect(self.start)
        self.open_button.clicked.connect(self._open_folder)
        self.cancel_button.clicked.connect(self._cancel_or_close)
        self.format.currentIndexChanged.connect(self._default_out)
        self.checkpoint.currentIndexChanged.connect(self._default_out)
        self.source.textChanged.connect(self._default_out)
        self.source.textChanged.connect(self._offer_checkpoints)
        self._offer_checkpoints()
        self.out.textEdited.connect(lambda _t: setattr(self, "_out_edited", True))
        self._default_out()

    # ------------------------------------------------------------------ inputs
    def fmt(self) -> str:
        return str(self.format.currentData())

    def _offer_checkpoints(self) -> None:
        """Only the weights the run has can be picked (e.g. EMA only after a run with it)."""
        available = available_checkpoints(self.source.text().strip() or ".")
        model = self.checkpoint.model()
        for i in range(self.checkpoint.count()):
            model.item(i).setEnabled(self.checkpoint.itemData(i) in available)
        if self.checkpoint.currentData() not in available and available:
            self.checkpoint.setCurrentIndex(self.checkpoint.findData(available[0]))

    def _default_out(self) -> None:
        if self._out_edited:
            return
        source = self.source.text().strip()
        try:
            self.out.setText(
                str(default_export_path(source, self.fmt(), str(self.checkpoint.currentData())))
                if source
                else ""
            )
        except FreezerError:
            self.out.setText("")

    def _browse_source(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder or bundle", self.source.text())
        if folder:
            self.source.setText(folder)

    def _browse_out(self) -> None:
        if self.fmt() in ("bundle", "code", "triton"):  # exports that are folders
            path = QFileDialog.getExistingDirectory(self, "Export to folder", self.out.text())
        else:
            path, _ = QFileDialog.getSaveFileName(self, "Export to file", self.out.text())
        if path:
            self.out.setText(path)
            self._out_edited = True

    # ------------------------------------------------------------------ export
    def start(self, force: bool = False) -> None:
        source, out = self.source.text().strip(), self.out.text().strip()
        if not source or not out:
            self._error("Choose what to export and where to.", "")
            return
        # From chooses a folder or file: one that is not there is said as such (core would try
        # the text as a library model's name). A model string (timm:NAME, FILE.py:FUNCTION)
        # is core's to check.
        if not MODEL_STRING.match(source) and not Path(source).expanduser().exists():
            self._error(
                f"Run folder or file not found: {source}.",
                # (Browse… picks folders; a weights file is typed or pasted.)
                "Choose a run folder or bundle with Browse…, or type the path of a weights file.",
            )
            return
        # A target no export may replace (a folder Freezer did not write, a folder where a file
        # goes...) is refused here as the CLI refuses it, whatever --force: never offered.
        refusal = replace_refusal(self.fmt(), out)
        if refusal is not None:
            self._error(refusal.message, refusal.hint or "")
            return
        if not force and existing_targets(self.fmt(), out):
            answer = QMessageBox.question(
                self,
                "Replace?",
                f"{out} holds a previous {self.fmt()} export. Replace it? (It is swapped only "
                "once the new export is complete.)",
            )
            if answer != QMessageBox.StandardButton.Yes:
                return
            force = True
        fmt, checkpoint = self.fmt(), str(self.checkpoint.currentData())

        def work(progress, should_cancel):
            return export(
                source,
                fmt,
                out,
                force=force,
                checkpoint=checkpoint,
                progress=progress,
                should_cancel=should_cancel,
            )

        # A new export: the previous one's result goes (an error below says so alone); answering
        # No to Replace above started nothing and keeps it.
        self._clear_result()
        task = tasks.Task(work)
        task.signals.progress.connect(self._progress)
        task.signals.message.connect(self.status.setText)
        task.signals.done.connect(self._done)
        task.signals.failed.connect(self._failed)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.status.setStyleSheet("")
        self.status.setText("Exporting…")
        self.export_button.setEnabled(False)
        self.cancel_button.setText("Cancel")
        self.task = tasks.start(task)

    def _progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(done)

    def _finished_task(self) -> None:
        self.task = None
        self.progress.setVisible(False)
        self.export_button.setEnabled(True)
        self.cancel_button.setText("Close")

    def _done(self, result: ExportResult) -> None:
        self._finished_task()
        self.result = result
        self.status.setStyleSheet("color: #2e7d32")
        self.status.setText(f"Exported to {result.path}")
        self.report.setPlainText(result.summary())
        self.report.setVisible(True)
        self.adjustSize()  # room for the result box, within the screen
        self.open_button.setEnabled(True)

    def _failed(self, message: str, hint: str, details: str) -> None:
        self._finished_task()
        self._error(message, hint)

    def _clear_result(self) -> None:
        """No export's result shown: no report, nothing for Open folder to open."""
        self.result = None
        self.report.clear()
        self.report.setVisible(False)
        self.open_button.setEnabled(False)
        self.status.setStyleSheet("")
        self.status.setText("")

    def _error(self, message: str, hint: str) -> None:
        """The error alone: no earlier export's result under it."""
        self._clear_result()
        self.status.setStyleSheet("color: #b00020")
        self.status.setText(self.in_own_words(f"{message} {hint}".strip()))

    def in_own_words(self, text: str) -> str:
        """A core message naming `export` flags, with this dialog's fields instead (and the
        window's controls for `train` flags, see gui/guide.py)."""
        to, weights = (
            f"“{plain(self.out_label.text())}”",
            f"“{plain(self.checkpoint_label.text())}”",
        )
        choice = lambda value: self.checkpoint.itemText(self.checkpoint.findData(value))
        phrases = {
            r"with or without --force": "even when you answer yes to Replace",
            r"Pass --force to replace it": "Answer yes to Replace",
            r"without --checkpoint": f"with {weights} set to {choice('final')}",
            r"--checkpoint best": f"{weights} set to {choice('best')}",
            r"--checkpoint ema": f"{weights} set to {choice('ema')}",
            r"--out(?: PATH)?(?![\w-])": to,
            **model_list_phrases(),  # (the window's own tab names, below, when it is the parent)
        }
        window = self.parent()
        if hasattr(window, "act_resume_run"):  # the main window: its controls and menus
            from freezer_app.gui.guide import window_controls, window_phrases

            return in_window_words(
                text, window_controls(window), {**phrases, **window_phrases(window)}
            )
        return in_window_words(text, {}, phrases)

    def _cancel_or_close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.status.setText("Cancelling: nothing will be left half-written…")
        else:
            self.reject()

    def _open_folder(self) -> None:
        if self.result is not None:
            path = Path(self.result.path)
            QDesktopServices.openUrl(
                QUrl.fromLocalFile(str(path if path.is_dir() else path.parent))
            )

    def reject(self) -> None:
        if self.task is not None:
            self.task.cancel()
        super().reject()
