"""A run's events and commands between processes: the window and rank 0 of a torchrun job.

The window listens on 127.0.0.1 (`EventListener`) and starts the job with the address and a
random key in the environment; rank 0 connects (`EventStream.from_env`), sends every event it
emits (the same dataclasses a run in the window's own process emits) and applies the
commands it receives (stop, pause, resume, a new freeze plan) to its RunControl, from where
they reach every rank at the next step boundary. The connection is authenticated
(multiprocessing.connection's HMAC handshake), so no other local process can join it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from freezer_app.core.events import RunControl
from freezer_app.core.freeze import FreezePlan

ADDRESS_ENV = "FREEZER_EVENTS_ADDRESS"
KEY_ENV = "FREEZER_EVENTS_KEY"


class SetupFailed:
    """Sent instead of events when the run could not start (a FreezerError on some rank)."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint


class EventStream:
    """Rank 0's end: events out, commands in."""

    def __init__(self, conn: Connection, control: RunControl | None = None) -> None:
        self.conn = conn
        self._control = control
        self._pending: list[tuple] = []  # commands that came before the run had a control
        self._control_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="freezer-commands", daemon=True)
        self._reader.start()

    @classmethod
    def from_env(cls) -> EventStream | None:
        address = os.environ.get(ADDRESS_ENV)
        if not address:
            return None
        host, port = address.rsplit(":", 1)
        key = bytes.fromhex(os.environ[KEY_ENV])
        return cls(Client((host, int(port)), authkey=key))

    @property
    def control(self) -> RunControl | None:
        return self._control

    @control.setter
    def control(self, control: RunControl | None) -> None:
        """The run's control: commands received before it existed (a Stop pressed while the
        processes started) are applied to it now."""
        with self._control_lock:
            self._control = control
            pending, self._pending = self._pending, []
        if control is not None:
            for command in pending:
                _apply(control, command)

    def send(self, event: Any) -> None:
        try:
            with self._send_lock:
                self.conn.send(event)
        except (OSError, EOFError, ValueError):
            # The window is gone: the run stops at the next step and keeps its checkpoint.
            if self.control is not None:
                self.control.stop()

    def _read(self) -> None:
        while True:
            try:
                command = self.conn.recv()
            except (OSError, EOFError, ValueError):
                if self.control is not None:
                    self.control.stop()  # the window closed the connection
                return
            with self._control_lock:
                control = self._control
                if control is None:
                    self._pending.append(command)
                    continue
            _apply(control, command)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def _apply(control: RunControl, command: tuple) -> None:
    kind = command[0]
    if kind == "stop":
        control.stop()
    elif kind == "pause":
        control.pause()
    elif kind == "resume":
        control.resume()
    elif kind == "plan":
        control.set_plan(FreezePlan.from_dict(command[1]))


class EventListener:
    """The window's end: where rank 0 connects, and the environment that tells it how."""

    def __init__(self) -> None:
        self.key = secrets.token_bytes(32)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.key)
        self.conn: Connection | None = None
        self._accepted = threading.Event()
        self._error: BaseException | None = None
        threading.Thread(target=self._accept, name="freezer-accept", daemon=True).start()

    def env(self) -> dict[str, str]:
        host, port = self.listener.address
        return {ADDRESS_ENV: f"{host}:{port}", KEY_ENV: self.key.hex()}

    def _accept(self) -> None:
        try:
            while True:
                try:
                    self.conn = self.listener.accept()
                    return
                except AuthenticationError:
                    continue  # another local process without the key: wait for rank 0
        except BaseException as e:  # the listener was closed
            self._error = e
        finally:
            self._accepted.set()

    def wait_connected(self, timeout: float) -> Connection | None:
        self._accepted.wait(timeout)
        return self.conn

    def close(self) -> None:
        if not self._accepted.is_set():
            # Nobody connected: connect once so the waiting accept() returns (closing the
            # socket under it does not wake it everywhere).
            with contextlib.suppress(OSError, EOFError, ValueError):
                Client(self.listener.address, authkey=self.key).close()
            self._accepted.wait(5)
        with contextlib.suppress(OSError):
            self.listener.close()
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.close()
