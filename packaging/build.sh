#!/usr/bin/env bash
# Build a self-contained folder dist/freezer-app with PyInstaller: `freezer-app` (the command
# line) and `freezer-app-gui` (the window, no console), ONNX export included. With
# --install-desktop, also add the desktop entry, icon and *.freezer.json MIME type for the
# current user (`freezer-app install-desktop`, pointed at the built freezer-app-gui).
# Run from anywhere; uses the project's .venv (created by `make run`).
#
# Tried on: Linux x86_64 (glibc 2.36), Python 3.11.7, PyInstaller 6.22.3, torch 2.14.1+cu130,
# torchvision 0.29.1, onnx 1.23.2, onnxruntime 1.32.0, onnxscript 0.7.2 (pyinstaller run by hand,
# not through this script). dist/freezer-app came to 5.2 GB (2.9 GB of it NVIDIA CUDA
# libraries, 1.1 GB torch; a CPU-only torch would be far smaller, not measured); the build took
# about 5 minutes on 2 cores. Checked from the built folder: --version, install-desktop, the
# window opening a project offscreen (freezer-app-gui PROJECT --screenshot), and an ONNX
# export validated with onnxruntime. Not tried on Windows or macOS, nor on a real desktop.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
make .venv/.installed
.venv/bin/python -m pip install -e '.[onnx]' 'pyinstaller>=6'
.venv/bin/pyinstaller --noconfirm packaging/freezer.spec
if [ "${1:-}" = "--install-desktop" ]; then
  dist/freezer-app/freezer-app install-desktop --exec "$root/dist/freezer-app/freezer-app-gui"
fi
echo "Built $root/dist/freezer-app/freezer-app and $root/dist/freezer-app/freezer-app-gui"
