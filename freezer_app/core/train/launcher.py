"""The command that starts a run in several processes: torchrun's launcher
(torch.distributed.run) on this machine, running `freezer-app train` in every rank. Used by
`train --nproc-per-node` and by the window's "all GPUs" device."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path


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


def workers_of(agent: int) -> list[int]:
    """torchrun's worker processes (Linux /proc); empty where the system does not say. They
    run in sessions of their own, so signalling the agent's group does not reach them."""
    try:
        text = Path(f"/proc/{agent}/task/{agent}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def signal_workers(agent: int, signum: int) -> None:
    """Each worker gets `signum` itself (its handler stops the run at the next step); the
    agent, where the workers cannot be found, SIGTERM (it passes that on, allowing 30 s)."""
    workers = workers_of(agent)
    for pid in workers or [agent]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum if workers else signal.SIGTERM)


def kill_job(agent: int) -> None:
    """SIGKILL the workers and the agent: nothing of the job keeps holding a GPU."""
    for pid in [*workers_of(agent), agent]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
