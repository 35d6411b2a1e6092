"""Guidance for a newcomer: the "1 Choose images → 2 Pick a model → 3 Train" strip, the Help
menu's Quick guide and Keyboard shortcuts, and messages in the window's own words.

Core's messages speak the command line ("use --weights FILE, or train without --pretrained").
The flag in such a message is its placeholder: the schema (core/settings.py) says which setting
it is, and the window says where that setting's control is, so `in_window_words` names the
control instead ("untick “Start from pretrained weights” (Model tab)"). Messages are written
once, in core; neither face keeps a second copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from importlib.resources import files
from typing import TYPE_CHECKING

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QSizePolicy,
    QTextBrowser,
    QToolButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from freezer_app.core import settings as schema
from freezer_app.core.freeze import FreezePlan
from freezer_app.core.project import Project

if TYPE_CHECKING:
    from freezer_app.gui.main_window import MainWindow

GUIDE_FILE = "quick-guide.md"
DISMISSED_KEY = "guide/steps_dismissed"

# ====================================================================== messages
# (control, place): "Device", "Training tab"; the place may be "" (the control is in view).
Control = tuple[str, str]


def plain(text: str) -> str:
    """A widget's text as a user reads it: no mnemonic '&', no menu arrow, no trailing dots."""
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&").rstrip("▾ …").strip()


def _quote(control: Control) -> str:
    name, place = control
    return f"“{name}” ({place})" if place else f"“{name}”"


def window_controls(window: MainWindow) -> dict[str, Control]:
    """Each `train` flag of the schema → the control that sets the same setting in this window.

    Form settings are found in the tabs' generated forms (their row label is the setting's
    label); the Model tab names its own controls (`ModelPanel.controls`)."""
    tabs = window.left
    by_key: dict[str, Control] = {}
    for i in range(tabs.count()):
        page, place = tabs.widget(i), f"{plain(tabs.tabText(i))} tab"
        form = getattr(page, "form", None)
        for key in getattr(form, "editors", {}):
            by_key[key] = (schema.find(Project, key).label, place)
        for key, (name, where) in getattr(page, "controls", {}).items():
            by_key[key] = (name, f"{place} ▸ {where}" if where else place)
    out: dict[str, Control] = {}
    for s in schema.all_settings(Project):
        if s.spec.flag != "" and s.key in by_key:
            out.setdefault(s.flag, by_key[s.key])
    return out


def _value_pattern(s: schema.Setting) -> str:
    """What may follow the flag as its value in a message: a choice, a number, or the
    metavar (FILE, DIR, EPOCHS)."""
    words = [re.escape(c) for c in s.spec.choices]
    if s.spec.metavar:
        words.append(re.escape(s.spec.metavar))
    if s.kind in (int, float):
        words.append(r"\d[\d.e+-]*")
    return "|".join(words)


def in_window_words(
    text: str, controls: Mapping[str, Control], phrases: Mapping[str, str] | None = None
) -> str:
    """`text` with each `train` flag (and its value) replaced by the window's control.

    phrases: other command-line wording the caller's window answers differently (a command
    → its menu item, an `export` flag → a field of the dialog), replaced first, as regexes."""
    if not text:
        return text
    for pattern, words in (phrases or {}).items():
        text = re.sub(pattern, words, text)
    settings = {s.flag: s for s in schema.all_settings(Project) if s.spec.flag != ""}
    # Longest first: --early-stop-metric before --early-stop.
    for flag in sorted(controls, key=len, reverse=True):
        if flag not in text:
            continue
        s, control = settings[flag], controls[flag]
        name, place = control
        where = f" ({place})" if place else ""
        f = re.escape(flag) + r"(?![\w-])"
        value = _value_pattern(s)
        values = rf"((?:{value})(?: or (?:{value}))*)" if value else "()"
        # "(--device cpu)" → "(Training tab: “Device” set to cpu)": no parentheses in parentheses
        text = re.sub(
            rf"\({f}(?: {values})?(?=[,)])",
            lambda m, name=name, place=place: (
                f"({place + ': ' if place else ''}“{name}”"
                + (f" set to {m.group(1)}" if m.group(1) else "")
            ),
            text,
        )
        if s.kind is bool:
            # "train without --pretrained" → "untick “Start from pretrained weights” (Model tab)"
            text = re.sub(rf"\b(?:train |start )?without {f}", f"untick “{name}”{where}", text)
        if value and s.spec.metavar and not s.spec.choices and s.kind is str:
            # "--weights FILE" → the control that picks the file
            text = re.sub(rf"{f} (?:{value})\b", _quote(control), text)
        elif value:
            # "Use --device auto or cpu" → "Set “Device” to auto or cpu (Training tab)"
            def set_to(m: re.Match[str], name: str = name, where: str = where) -> str:
                verb = "Set" if m.group(1)[0].isupper() else "set"
                return f"{verb} “{name}” to {m.group(2) or ''}{m.group(3)}{where}"

            text = re.sub(
                rf"\b(Use|use|Give|give|Pass|pass) (e\.g\. )?{f} {values}\b",
                set_to,
                text,
            )
            text = re.sub(rf"{f} ((?:{value}))\b", rf"“{name}” set to \1{where}", text)
        text = re.sub(f, _quote(control), text)
    return text


def menu_path(window: MainWindow, action: QAction) -> str:
    """ "Run ▸ Resume a stopped run…": where an action sits in the menu bar."""

    def find(menu: QMenu, trail: list[str]) -> list[str] | None:
        for a in menu.actions():
            if a is action:
                return [*trail, plain(a.text())]
            if a.menu() is not None:
                found = find(a.menu(), [*trail, plain(a.text())])
                if found:
                    return found
        return None

    for top in window.menuBar().actions():
        if top.menu() is not None:
            found = find(top.menu(), [plain(top.text())])
            if found:
                return " ▸ ".join(found)
    return plain(action.text())


def model_list_phrases(place: str = "Model tab") -> dict[str, str]:
    """`freezer-app models SEARCH` in core's hints → the window's model list (its search field
    is on the Model tab)."""
    where = f"the model list on the {place}"
    return {
        r"\b[Ll]ist models with `?freezer-app models(?: [A-Z_]+)?`?": f"Search {where}",
        r"`?freezer-app models(?: [A-Z_]+)?`?": where,
    }


def window_phrases(window: MainWindow) -> dict[str, str]:
    """Command lines in core's messages that this window does with a menu item or a tab."""
    tabs = window.left
    model_tab = f"{plain(tabs.tabText(tabs.indexOf(window.model_panel)))} tab"
    return {
        r"`?freezer-app train --resume [A-Z_/.]+`?": menu_path(window, window.act_resume_run),
        **model_list_phrases(model_tab),
    }


def window_message(window: MainWindow, text: str) -> str:
    """A core message as the window says it (see the module's docstring)."""
    return in_window_words(text, window_controls(window), window_phrases(window))


# ====================================================================== the steps strip
STEPS = ("Choose images", "Pick a model and what to freeze", "Train")
HINTS = (
    "Data tab: Browse… for an image folder with one sub-folder per class, or drop it here",
    "Model tab: pick a model; then untick the layers to freeze in the tree, or use a preset",
    "Press Train (Ctrl+Return)",
)


def steps_done(window: MainWindow) -> tuple[bool, bool, bool]:
    """What a newcomer has done, read from the window's own state each time (no copies):
    a dataset checked without error; a model built and picked (or the plan or model changed
    from a new project's); a run started or finished."""
    project = window.project
    ran = window.run_ctl.running or window.last_finished is not None
    data = window.report is not None and window.scan_task is None
    picked = (
        project.model != Project().model
        or bool(project.weights)
        or project.plan != FreezePlan()
        or window.project_path is not None
    )
    model = window.controller.tree is not None and window.preview_task is None and picked
    return data, model or ran, ran


class StepsStrip(QFrame):
    """A slim strip above the main area: the three steps, ticked as they are done. It hides
    once all are done, and for good when dismissed (remembered in the window's settings)."""

    def __init__(self, window: MainWindow, settings: QSettings) -> None:
        super().__init__()
        self.window_ = window
        self.settings = settings
        self.setObjectName("steps-strip")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setStyleSheet(
            "#steps-strip { background: #eef4fb; border: 1px solid #c9d9ee; border-radius: 4px; }"
        )
        row = QHBoxLayout(self)
        row.setContentsMargins(10, 3, 4, 3)
        row.addWidget(QLabel("<b>Getting started:</b>"))
        self.steps: list[QLabel] = []
        for i, _text in enumerate(STEPS):
            if i:
                arrow = QLabel("→")
                arrow.setStyleSheet("color: #7a8aa0")
                row.addWidget(arrow)
            label = QLabel()
            self.steps.append(label)
            row.addWidget(label)
        # What to do for the next step, in a word (the step's tooltip says the same).
        self.next_hint = QLabel()
        self.next_hint.setStyleSheet("color: #5f6b7a; margin-left: 12px")
        # Cut at the window's edge rather than setting the window's minimum width.
        self.next_hint.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        row.addWidget(self.next_hint)
        row.addStretch(1)
        self.guide = QToolButton()
        self.guide.setText("Quick guide")
        self.guide.setAutoRaise(True)
        self.guide.clicked.connect(lambda: quick_guide(window))
        row.addWidget(self.guide)
        self.dismiss = QToolButton()
        self.dismiss.setText("✕")
        self.dismiss.setAutoRaise(True)
        self.dismiss.setToolTip("Hide these steps (Help ▸ Quick guide has them too)")
        self.dismiss.clicked.connect(self._dismiss)
        row.addWidget(self.dismiss)

        signals = (
            window.project_ctl.changed,
            window.datasetChecked,
            window.controller.planChanged,
            window.tree_model.modelReset,
            window.run_ctl.started,
            window.run_ctl.ended,
            window.runFinished,
        )
        for signal in signals:
            signal.connect(lambda *_args: self.refresh())
        self.refresh()

    def dismissed(self) -> bool:
        return str(self.settings.value(DISMISSED_KEY, "false")).lower() == "true"

    def _dismiss(self) -> None:
        self.settings.setValue(DISMISSED_KEY, True)
        self.refresh()

    def refresh(self) -> None:
        done = steps_done(self.window_)
        for i, (label, text, ok) in enumerate(zip(self.steps, STEPS, done)):
            if ok:
                label.setText(f"<span style='color:#2e7d32'>✓ {i + 1} {text}</span>")
            else:
                next_one = i == done.index(False)
                style = "font-weight:600; color:#1f3b63" if next_one else "color:#44546a"
                label.setText(f"<span style='{style}'>{i + 1} {text}</span>")
            label.setToolTip(HINTS[i])
        self.next_hint.setText(HINTS[done.index(False)] if not all(done) else "")
        self.setVisible(not self.dismissed() and not all(done))


def install_steps_strip(window: MainWindow) -> StepsStrip:
    """Put the strip above the window's central widget (which it keeps)."""
    main = window.takeCentralWidget()
    central = QWidget()
    box = QVBoxLayout(central)
    box.setContentsMargins(4, 4, 4, 0)
    box.setSpacing(4)
    strip = StepsStrip(window, window.settings)
    box.addWidget(strip)
    box.addWidget(main, 1)
    window.setCentralWidget(central)
    return strip


# ====================================================================== help dialogs
def guide_text() -> str:
    return (files("freezer_app.resources") / GUIDE_FILE).read_text(encoding="utf-8")


class QuickGuideDialog(QDialog):
    """Help ▸ Quick guide: the bundled Markdown guide, rendered."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Freezer quick guide")
        layout = QVBoxLayout(self)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(True)
        self.browser.setMarkdown(guide_text())
        self.browser.document().setDocumentMargin(12)
        layout.addWidget(self.browser)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(680, 760)


def shortcut_rows(window: MainWindow) -> list[tuple[str, str, str]]:
    """(menu, action, shortcut) for every action of the window that has a shortcut, read
    from the actions themselves, in menu order; actions outside the menus come last."""
    rows: list[tuple[str, str, str]] = []
    seen: set[int] = set()

    def name(action: QAction) -> str:
        # Undo/redo actions carry what they would undo in their text.
        if action is window.act_undo:
            return "Undo"
        if action is window.act_redo:
            return "Redo"
        return plain(action.text())

    def add(menu: str, action: QAction) -> None:
        if id(action) in seen or action.shortcut().isEmpty():
            return
        seen.add(id(action))
        keys = ", ".join(
            k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts()
        )
        rows.append((menu, name(action), keys))

    def walk(menu: QMenu, trail: str) -> None:
        for a in menu.actions():
            if a.menu() is not None:
                walk(a.menu(), f"{trail} ▸ {plain(a.text())}")
            else:
                add(trail, a)

    for top in window.menuBar().actions():
        if top.menu() is not None:
            walk(top.menu(), plain(top.text()))
    for action in window.findChildren(QAction):
        add("Other", action)
    return rows


class ShortcutsDialog(QDialog):
    """Help ▸ Keyboard shortcuts: the window's actions and their keys."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.setWindowTitle("Keyboard shortcuts")
        layout = QVBoxLayout(self)
        self.table = QTreeWidget()
        self.table.setHeaderLabels(["Action", "Shortcut", "Menu"])
        self.table.setRootIsDecorated(False)
        self.table.setAlternatingRowColors(True)
        for menu, action, keys in shortcut_rows(window):
            QTreeWidgetItem(self.table, [action, keys, menu])
        header = self.table.header()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        layout.addWidget(self.table)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)
        self.resize(520, 480)


def _show_one(window: MainWindow, kind: type[QDialog], make: Callable[[], QDialog]) -> QDialog:
    """One dialog of each kind at a time: a second click raises the open one. Modeless, so
    the guide can stay open beside the window."""
    open_ = [d for d in window.findChildren(kind) if d.isVisible()]
    if open_:
        open_[-1].raise_()
        return open_[-1]
    dialog = make()
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.show()
    dialog.raise_()
    return dialog


def quick_guide(window: MainWindow) -> QDialog:
    return _show_one(window, QuickGuideDialog, lambda: QuickGuideDialog(window))


def keyboard_shortcuts(window: MainWindow) -> QDialog:
    return _show_one(window, ShortcutsDialog, lambda: ShortcutsDialog(window))


__all__ = [
    "QuickGuideDialog",
    "ShortcutsDialog",
    "StepsStrip",
    "in_window_words",
    "install_steps_strip",
    "keyboard_shortcuts",
    "quick_guide",
    "window_controls",
    "window_message",
]
