"""Rules from DESIGN.md that keep the code simple."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "freezer_app" / "core"
QT = ("PySide6", "pyqtgraph", "shiboken6")


def test_core_never_imports_qt_in_source() -> None:
    for path in CORE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in QT, f"{path.name} imports {name}"


def test_importing_core_loads_no_qt() -> None:
    modules = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
    code = "\n".join(f"import freezer_app.core.{m}" for m in modules) + (
        "\nimport sys\nbad = [m for m in sys.modules if m.split('.')[0] in "
        f"{QT!r}]\nassert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
