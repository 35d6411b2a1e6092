#!/usr/bin/env bash
# Build a self-contained folder dist/freezer-app with PyInstaller and install the desktop entry
# for the current user. Run from anywhere; uses the project's .venv (created by `make run`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
make .venv/.installed
.venv/bin/python -m pip install 'pyinstaller>=6'
.venv/bin/pyinstaller --noconfirm packaging/freezer.spec
if [ "${1:-}" = "--install-desktop" ]; then
  apps="${XDG_DATA_HOME:-$HOME/.local/share}/applications"
  icons="${XDG_DATA_HOME:-$HOME/.local/share}/icons/hicolor/scalable/apps"
  mkdir -p "$apps" "$icons"
  sed "s|^Exec=freezer-app|Exec=$root/dist/freezer-app/freezer-app|" resources/freezer-app.desktop > "$apps/freezer-app.desktop"
  cp resources/freezer.svg "$icons/freezer.svg"
  echo "Installed $apps/freezer-app.desktop"
fi
echo "Built $root/dist/freezer-app/freezer-app"
