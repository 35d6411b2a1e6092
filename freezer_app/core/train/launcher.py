"""The command that starts a run in several processes: torchrun's launcher
(torch.distributed.run) on this machine, running `freezer-app train` in every rank. Used by
`train --nproc-per-node` and by the window's "all GPUs" device."""

from __future__ import annotations

import os
import sys


def torchrun_command(argv: list[str], processes: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "freezer_app",
        *argv,
    ]


def launch_env(processes: int) -> dict[str, str]:
    env = dict(os.environ)
    # torchrun sets 1 thread per process (with a warning) when unset: share the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def processes_for(device: str) -> int:
    """Processes the window starts for a Device setting: one per GPU for `cuda:all`."""
    if (device or "").strip().lower() != "cuda:all":
        return 1
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1
