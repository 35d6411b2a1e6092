"""Small views of a run: the frozen-check result, the feature cache line and the run log."""

from __future__ import annotations

import html
import time

from PySide6.QtCore import Qt
from PySide6.QtGui import QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core.events import FeatureCacheEvent
from freezer_app.core.telemetry import FrozenCheck
from freezer_app.core.text import byte_size
from freezer_app.gui.tree_model import PARTIAL_COLOUR, TRAINABLE_COLOUR

FAIL_COLOUR = "#b00020"
NOTICE_COLOUR = "#8a5a00"
QUIET_COLOUR = "#666"


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
        # Long lines wrap rather than hide behind a horizontal scroll bar.
        self.list.setWordWrap(True)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setResizeMode(QListWidget.ResizeMode.Adjust)
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


def describe_feature_cache(event: FeatureCacheEvent) -> str:
    """The cache's state in one short line; the core's full sentence (`message`) says the rest."""
    if not event.used:
        when = f" from step {event.step}" if event.step > 1 else ""
        return f"Feature cache: not used{when} — {event.reason}"
    which = "images" if event.training_cached else "validation images"
    # "after global_pool.flatten, the classifier's input": the layer is enough here.
    cut = event.cut.split(", ")[0]
    parts = [cut + (f" from step {event.step}" if event.reason and event.step > 1 else "")]
    if event.images < event.total:
        parts.append(f"filling: {event.images:,} of {event.total:,} {which}")
    else:
        memory = f"{byte_size(event.ram_bytes)} RAM"
        if event.disk_bytes:
            memory += f" + {byte_size(event.disk_bytes)} on disk"
        parts += [f"{event.images:,} {which}", memory]
        parts.append(
            f"filled in {event.fill_seconds:.1f} s"
            if event.fill_seconds is not None
            else "from an earlier run"
        )
    return "Feature cache: " + " · ".join(parts)


class FeatureCacheView(QLabel):
    """One line under the run's plots: whether the run caches the frozen layers' output, where
    and what the cache holds, from the run's FeatureCacheEvents (the full message is the tooltip).
    Always one line, elided to the width it gets: a long reason never widens or reflows the
    window."""

    IDLE = "Feature cache: shown when a run starts"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.last: FeatureCacheEvent | None = None  # the last one of this run
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setContentsMargins(6, 3, 6, 3)
        self.clear()

    def clear(self) -> None:
        self.last = None
        self._show(
            self.IDLE,
            "Whether the run computes the frozen layers once per image and trains the rest from "
            "their cached output (Training tab: Feature cache)",
            QUIET_COLOUR,
        )

    def add(self, event: FeatureCacheEvent) -> bool:
        """Show this event. True when it changes whether or where the run caches (a plan
        change during the run), not when it only reports the cache filled."""
        before, self.last = self.last, event
        colour = "" if event.used else (NOTICE_COLOUR if event.step > 1 else QUIET_COLOUR)
        self._show(describe_feature_cache(event), event.message, colour)
        return before is not None and (before.used, before.cut) != (event.used, event.cut)

    def _show(self, text: str, tooltip: str, colour: str) -> None:
        self.setText(text)
        self.setToolTip(f"<p>{html.escape(tooltip)}</p>")  # rich text: the tooltip wraps
        self.setStyleSheet(f"color: {colour}" if colour else "")

    def paintEvent(self, event: QPaintEvent) -> None:
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, rect.width())
        painter = QPainter(self)
        self.style().drawItemText(
            painter,
            rect,
            int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
            self.palette(),
            self.isEnabled(),
            text,
            self.foregroundRole(),
        )


class RunLog(QPlainTextEdit):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(5000)

    def add(self, message: str) -> None:
        self.appendPlainText(f"{time.strftime('%H:%M:%S')}  {message}")
