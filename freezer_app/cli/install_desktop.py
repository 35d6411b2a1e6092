"""`freezer-app install-desktop [--uninstall]`: the desktop entry, its icon and the Freezer project
MIME type (`*.freezer.json`) for the current user, under $XDG_DATA_HOME (~/.local/share), so a
file manager opens projects in the window. Nothing outside that folder is touched."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from freezer_app.cli.common import EXIT_OK, err

DESKTOP = "freezer-app.desktop"
MIME_XML = "freezer-app.xml"
ICON = "freezer.svg"
ICON_NAME = "freezer-app"  # the desktop entry's and the MIME type's Icon=
GUI_SCRIPT = "freezer-app-gui"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "install-desktop",
        help="add Freezer to the desktop's applications for this user; open *.freezer.json in it",
        description="Install the desktop entry, icon and the Freezer project MIME type "
        "(*.freezer.json) under $XDG_DATA_HOME (default ~/.local/share), then refresh the "
        "desktop's MIME and application databases.",
    )
    p.add_argument("--uninstall", action="store_true", help="remove what install-desktop wrote")
    p.add_argument(
        "--exec",
        dest="exec_path",
        metavar="PROGRAM",
        help="the program the entry starts (default: the installed freezer-app-gui script)",
    )
    p.set_defaults(func=run)


def data_home() -> Path:
    # The spec ignores a relative (or empty) XDG_DATA_HOME.
    value = os.environ.get("XDG_DATA_HOME", "")
    return Path(value) if os.path.isabs(value) else Path.home() / ".local" / "share"


@dataclass(frozen=True)
class Targets:
    desktop: Path
    icon: Path
    mime: Path

    @classmethod
    def under(cls, base: Path) -> Targets:
        return cls(
            desktop=base / "applications" / DESKTOP,
            icon=base / "icons" / "hicolor" / "scalable" / "apps" / f"{ICON_NAME}.svg",
            mime=base / "mime" / "packages" / MIME_XML,
        )

    def all(self) -> tuple[Path, Path, Path]:
        return (self.desktop, self.icon, self.mime)


def gui_command() -> list[str]:
    """The window's command: the `freezer-app-gui` script beside this interpreter (a desktop
    launcher's PATH rarely has the virtual environment on it), else one on PATH, else
    `python -m freezer_app gui`."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(GUI_SCRIPT, path=path)
    if found:
        return [str(Path(found).absolute())]
    return [sys.executable, "-m", "freezer_app", "gui"]


_RESERVED = set(" \t\n\"'\\><~|&;$*?#()`")


def exec_arg(arg: str) -> str:
    """One argument of an Exec= line: quoted where the desktop entry spec asks, `%` doubled,
    and backslashes escaped once more for the string value itself."""
    arg = arg.replace("%", "%%")
    if any(c in _RESERVED for c in arg):
        arg = '"' + re.sub(r'(["`$\\])', r"\\\1", arg) + '"'
    return arg.replace("\\", "\\\\")


def desktop_entry(command: list[str]) -> str:
    """The shipped desktop entry with its Exec= starting `command` on the opened file."""
    text = (files("freezer_app.resources") / DESKTOP).read_text(encoding="utf-8")
    line = "Exec=" + " ".join(exec_arg(a) for a in command) + " %f"
    out, n = re.subn(r"(?m)^Exec=.*$", lambda _m: line, text)
    if n != 1:
        raise RuntimeError(f"{DESKTOP} has {n} Exec= lines, expected one")
    return out


def _refresh(base: Path) -> None:
    for tool, folder in (
        ("update-mime-database", base / "mime"),
        ("update-desktop-database", base / "applications"),
    ):
        program = shutil.which(tool)
        if program is None:
            print(f"{tool} not found: skipped (the desktop picks the change up at next login)")
            continue
        if not folder.is_dir():
            continue
        done = subprocess.run([program, str(folder)], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            print(f"ran {tool} {folder}")
        else:
            message = (done.stderr or done.stdout).strip()
            err(f"warning: {tool} {folder} failed ({done.returncode}): {message}")


def install(base: Path, command: list[str]) -> list[Path]:
    targets = Targets.under(base)
    resources = files("freezer_app.resources")
    contents = {
        targets.desktop: desktop_entry(command).encode("utf-8"),
        targets.icon: (resources / ICON).read_bytes(),
        targets.mime: (resources / MIME_XML).read_bytes(),
    }
    for path, data in contents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return list(contents)


def uninstall(base: Path) -> list[Path]:
    removed = []
    for path in Targets.under(base).all():
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


def run(args: argparse.Namespace) -> int:
    base = data_home()
    if args.uninstall:
        removed = uninstall(base)
        for path in removed:
            print(f"removed {path}")
        if not removed:
            print(f"nothing to remove under {base}")
            return EXIT_OK
    else:
        command = [str(Path(args.exec_path).absolute())] if args.exec_path else gui_command()
        for path in install(base, command):
            print(f"wrote {path}")
        print(f"the entry runs: {' '.join(command)} FILE")
    _refresh(base)
    return EXIT_OK
