"""A run's progress on the taskbar or dock icon, where the desktop offers it.

Qt 6 has no taskbar-progress API of its own (Qt 5's QWinTaskbarProgress is gone). On Linux,
KDE Plasma, Ubuntu's dock (Dash to Dock), Plank and others show the progress that an app
announces with the Unity LauncherEntry D-Bus signal for its desktop entry, which
`freezer-app install-desktop` installs as freezer-app.desktop. Elsewhere (no session bus, no
QtDBus, Windows, macOS) this does nothing; the status bar's progress bar is always there.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

DESKTOP_ENTRY = "application://freezer-app.desktop"
_PATH = "/com/freezer_app/launcher"
_INTERFACE = "com.canonical.Unity.LauncherEntry"


class TaskbarProgress:
    def __init__(self) -> None:
        self._bus: Any = None
        self._shown: int | None = None  # the last percentage sent; None: hidden
        if not sys.platform.startswith("linux"):
            return
        with contextlib.suppress(ImportError, RuntimeError):
            from PySide6.QtDBus import QDBusConnection

            bus = QDBusConnection.sessionBus()
            if bus.isConnected():
                self._bus = bus

    @property
    def available(self) -> bool:
        return self._bus is not None

    def set_fraction(self, fraction: float | None) -> None:
        """Show `fraction` (0..1) on the icon; None hides it."""
        percent = None if fraction is None else max(0, min(100, round(fraction * 100)))
        if percent == self._shown or self._bus is None:
            return
        self._shown = percent
        props: dict[str, Any] = {"progress-visible": percent is not None}
        if percent is not None:
            props["progress"] = percent / 100.0
        self._send(props)

    def _send(self, props: dict[str, Any]) -> None:
        from PySide6.QtDBus import QDBusMessage

        message = QDBusMessage.createSignal(_PATH, _INTERFACE, "Update")
        message.setArguments([DESKTOP_ENTRY, props])
        with contextlib.suppress(RuntimeError, TypeError):
            self._bus.send(message)
