#!/usr/bin/env bash
# Build a self-contained folder dist/freezer-app with PyInstaller: `freezer-app` (the command
# line) and `freezer-app-gui` (the window, no console), ONNX export included. With
# --install-desktop, also add the desktop entry, icon and *.freezer.json MIME type for the
# current user (`freezer-app install-desktop`, pointed at the built freezer-app-gui).
# Run from anywhere. By default it uses the project's .venv (created by `make run`) and installs
# '.[onnx]' and PyInstaller into it; PYTHON=/path/to/venv/bin/python uses that interpreter
# instead (the project and PyInstaller are installed into its environment). DISTPATH and
# WORKPATH move the output (default dist/) and PyInstaller's work folder (default build/).
#
# Tried on 2026-11-24: Debian GNU/Linux 12 (bookworm), x86_64, glibc 2.36, CPU only (no GPU), 2
# cores shared with other jobs; Python 3.11.7 in a fresh venv outside the repository
# (PYTHON=/tmp/pkgvenv/bin/python), PyInstaller 6.22.3, torch 2.14.1+cu130 and torchvision
# 0.29.1+cu130 (the wheels pip offered there; no CPU-only wheel was reachable), timm 1.0.31, PySide6
# 6.11.3, onnx 1.23.2, onnxruntime 1.32.0, onnxscript 0.7.2. The build took 3 min 1 s and 5 min 14 s
# wall (2 min 9 s / 2 min 13 s CPU user time). dist/freezer-app: 5.2 GB (du -sh; 5,549,889,484
# bytes, 4,067 files): 2.9 GB NVIDIA CUDA libraries, 1.1 GB torch, 891 MB triton, 129 MB PySide6, 35
# MB onnxruntime; as a tar.gz (`tar -czf`, not made by this script) 2.9 GB (3,053,549,788 bytes, 3
# min 54 s to pack). A CPU-only torch would drop the CUDA libraries and most of triton (not
# measured). Checked from the built folder: `freezer-app --help` and --version; demo-data, then
# train timm:test_resnet 2 epochs; export --format onnx (the torch.export-based exporter, dynamic
# batch/height/width, validated with onnxruntime, labels and config in metadata_props) and bundle,
# pth, torchscript, pt2 and triton, each reloaded and checked; predict with the bundle;
# `freezer-app-gui PROJECT.json --screenshot FILE --train-steps 8` under QT_QPA_PLATFORM=offscreen
# (window opens the project and trains; same gradient norms as the unfrozen install);
# install-desktop --exec .../freezer-app-gui into a scratch XDG_DATA_HOME, entry passes
# desktop-file-validate; the GUI executable built with console=False (EXE-01.toc), the CLI with
# console=True. Not tried on Windows or macOS, nor on a real X11/Wayland desktop (libxcb-keysyms and
# libxcb-icccm were missing on the build machine, so the xcb platform plugin's copies of them are
# not bundled: the target desktop must have them).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ -n "${PYTHON:-}" ]; then
  py="$PYTHON"
  "$py" -m pip install "$root[onnx]" 'pyinstaller>=6'
else
  make .venv/.installed
  py=.venv/bin/python
  "$py" -m pip install -e '.[onnx]' 'pyinstaller>=6'
fi
dist="${DISTPATH:-$root/dist}"
"$py" -m PyInstaller --noconfirm --distpath "$dist" --workpath "${WORKPATH:-$root/build}" \
  packaging/freezer.spec
if [ "${1:-}" = "--install-desktop" ]; then
  "$dist/freezer-app/freezer-app" install-desktop --exec "$dist/freezer-app/freezer-app-gui"
fi
echo "Built $dist/freezer-app/freezer-app and $dist/freezer-app/freezer-app-gui"
