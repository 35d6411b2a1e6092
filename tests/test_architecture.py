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
    modules = sorted(
        ".".join(p.relative_to(CORE).with_suffix("").parts).removesuffix(".__init__")
        for p in CORE.rglob("*.py")
    )
    assert "train.trainer" in modules and "export.bundle" in modules
    code = "\n".join(f"import freezer_app.core.{m}" for m in modules) + (
        "\nimport sys\nbad = [m for m in sys.modules if m.split('.')[0] in "
        f"{QT!r}]\nassert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_qt_signals_keep_python_reference_counts() -> None:
    """PySide6 6.12.0 drops a reference to True on every emit from Python; a long session
    (or this test suite) then aborts at exit with "deallocating True or False". pyproject.toml
    excludes that release; this says so plainly if such a build is installed anyway."""
    code = (
        "import sys\n"
        "from PySide6.QtCore import QCoreApplication, QObject, Signal\n"
        "app = QCoreApplication([])\n"
        "class O(QObject):\n"
        "    s = Signal(object)\n"
        "o = O()\n"
        "o.s.connect(lambda value: None)\n"
        "before = sys.getrefcount(True)\n"
        "for _ in range(100):\n"
        "    o.s.emit(1)\n"
        "print(sys.getrefcount(True) - before)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    import PySide6

    assert abs(int(result.stdout.strip())) < 50, (
        f"PySide6 {PySide6.__version__} loses a reference on every signal emit; "
        "install another version (pyproject.toml excludes 6.12.0)"
    )
