"""The PyInstaller build's one entry script, frozen twice: as `freezer-app` (the command line, a
console program) and as `freezer-app-gui` (the window, no console), told apart by their names."""

import os
import sys

from freezer_app.cli import main
from freezer_app.cli.gui import launch

name = os.path.basename(sys.executable).lower()
raise SystemExit(launch() if name.startswith("freezer-app-gui") else main())
