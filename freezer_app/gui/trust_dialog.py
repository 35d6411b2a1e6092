"""The window's question before a model's Python file runs when a file (not the user) named it.

It shows the file's path and SHA-256; a yes is remembered in QSettings for that path and those
contents, so the same file does not ask again and a changed one does. The rule itself lives in
core/trust.py; this is only the question.
"""

from __future__ import annotations

import hashlib

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox, QWidget

from freezer_app.core.trust import CodeFile

TITLE = "Run this model's code?"


def _key(code: CodeFile) -> str:
    return "trusted_code/" + hashlib.sha256(str(code.path).encode()).hexdigest()[:32]


def remembered(settings: QSettings, code: CodeFile) -> bool:
    """Whether the user said yes to this file with these contents before."""
    return settings.value(_key(code), "") == code.digest


def ask_to_run(parent: QWidget | None, settings: QSettings, code: CodeFile) -> bool:
    """Yes if the user trusts `code` (now, or before with the same contents)."""
    if remembered(settings, code):
        return True
    answer = QMessageBox.question(
        parent,
        TITLE,
        f"{code.named_in} names a Python file as its model:\n\n{code.path}\n"
        f"SHA-256 {code.digest}\n\nBuilding the model runs the code in this file, with your "
        "permissions. Run it only if you trust where it came from. The answer is remembered "
        "for this file while its contents stay the same.",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    if answer != QMessageBox.StandardButton.Yes:
        return False
    settings.setValue(_key(code), code.digest)
    return True
