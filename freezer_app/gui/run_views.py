"""Small views of a run: the frozen-check result and the run log."""

from __future__ import annotations

import time

from PySide6.QtWidgets import (
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core.telemetry import FrozenCheck
from freezer_app.gui.tree_model import PARTIAL_COLOUR, TRAINABLE_COLOUR

FAIL_COLOUR = "#b00020"


class FrozenCheckView(QWidget):
    """After each epoch: were all frozen tensors bit-identical? A clear pass/fail with names."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setMargin(10)
        layout.addWidget(self.banner)
        explain = QLabel(
            "At every epoch end (and when a run stops) Freezer compares every frozen parameter, and the "
            "running statistics of frozen BatchNorm layers, bit for bit with their values when they were "
            "frozen. Any drift is listed here by layer."
        )
        explain.setWordWrap(True)
        explain.setStyleSheet("color: #555")
        layout.addWidget(explain)
        self.list = QListWidget()
        layout.addWidget(self.list, 1)
        self.clear()

    def clear(self) -> None:
        self.list.clear()
        self._banner("No check yet: it runs after each epoch of training.", "#eceff1", "#333")

    def _banner(self, text: str, background: str, colour: str) -> None:
        self.banner.setText(text)
        self.banner.setStyleSheet(
            f"background: {background}; color: {colour}; border-radius: 6px; font-size: 14px;"
        )

    def add(self, check: FrozenCheck) -> None:
        where = f"epoch {check.epoch}" if check.epoch else "start"
        if check.passed:
            self._banner(
                f"<b>✔ Frozen check passed</b> ({where}, step {check.step}): {check.summary()[8:]}",
                "#e8f5e9",
                TRAINABLE_COLOUR.name(),
            )
        else:
            layers = sorted({d.layer for d in check.drifted if not d.expected})
            self._banner(
                f"<b>✘ Frozen check FAILED</b> ({where}, step {check.step}): frozen tensors changed in "
                + ", ".join(layers[:12]),
                "#ffebee",
                FAIL_COLOUR,
            )
        item = QListWidgetItem(
            f"{'✔' if check.passed else '✘'}  {where}, step {check.step}: {check.summary()}"
        )
        item.setForeground(TRAINABLE_COLOUR if check.passed else PARTIAL_COLOUR)
        self.list.insertItem(0, item)
        for d in check.drifted:
            note = " (allowed: BatchNorm policy 'update')" if d.expected else ""
            child = QListWidgetItem(f"      {d.kind} {d.tensor} changed{note}")
            self.list.insertItem(1, child)


class RunLog(QPlainTextEdit):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(5000)

    def add(self, message: str) -> None:
        self.appendPlainText(f"{time.strftime('%H:%M:%S')}  {message}")
