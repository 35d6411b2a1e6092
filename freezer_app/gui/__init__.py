"""PySide6 + pyqtgraph views over freezer_app.core (no training logic lives here)."""
