"""`train --nproc-per-node N` (or `--device cuda:all`): the same `train` command in N processes
on this machine, started by torchrun's launcher (torch.distributed.run --standalone).

This process checks the project and data first (errors come at once, printed once), claims
the run folder, then runs torchrun and waits. Rank 0 prints the progress and the summary; the
exit status is rank 0's (passed back through a file: a stop is no failure to torchrun).
Ctrl-C, SIGTERM or a closed terminal reach every process once, as a SIGTERM: each finishes
its step, and rank 0 saves a checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from freezer_app.cli.common import EXIT_FAILED, err
from freezer_app.core.errors import FreezerError
from freezer_app.core.train.launcher import (
    kill_job,
    launch_env,
    signal_workers,
    torchrun_command,
)

# Set for the ranks this command starts: where rank 0 leaves its exit status.
EXIT_FILE_ENV = "FREEZER_EXIT_FILE"
# ...and this command's stderr (a /proc path: torchrun closes inherited descriptors): the
# ranks print there, while torchrun's own log (its warnings, and a Python traceback for any
# failed rank) goes to a file, shown only when rank 0 could not say what happened.
STDERR_ENV = "FREEZER_STDERR"


def use_launcher_stderr() -> None:
    """In a rank: print to the terminal of the command that launched the job."""
    path = os.environ.get(STDERR_ENV)
    if not path:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return  # torchrun's stderr, then: the same terminal, with its log mixed in
    os.dup2(fd, sys.stderr.fileno())
    os.close(fd)


def processes_wanted(nproc: int | None, device: str) -> int:
    """How many processes: --nproc-per-node, else one per GPU for `cuda:all`, else one."""
    device = (device or "auto").strip().lower()
    if nproc is not None and nproc < 1:
        raise FreezerError(f"--nproc-per-node must be 1 or more, not {nproc}.")
    if device == "cuda:all" or (nproc and nproc > 1):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device == "cuda:all" and gpus == 0:
            raise FreezerError(
                "--device cuda:all trains on every CUDA GPU, and this machine has none.",
                "Use --device cpu --nproc-per-node N for N processes on the CPU, or --device auto.",
            )
        if device == "mps":
            raise FreezerError(
                "Several processes need CUDA GPUs or the CPU; Apple MPS takes one process.",
                "Drop --nproc-per-node, or use --device cpu.",
            )
        wants_cuda = device.startswith("cuda") or (device == "auto" and gpus > 0)
        if nproc and wants_cuda and gpus and nproc > gpus:
            raise FreezerError(
                f"--nproc-per-node {nproc} asks for more processes than this machine's "
                f"{gpus} GPU(s).",
                f"Use --nproc-per-node {gpus} (one per GPU), or --device cpu.",
            )
        if nproc is None:
            return gpus
    return nproc or 1


def worker_argv(argv: list[str], out: Path | None) -> list[str]:
    """The command line for each rank: this one without --nproc-per-node, with the run
    folder this process claimed (every rank must name the same)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc-per-node":
            skip = True
            continue
        if arg.startswith("--nproc-per-node="):
            continue
        kept.append(arg)
    if out is not None and not any(a == "--out" or a.startswith("--out=") for a in kept):
        kept += ["--out", str(out)]
    return kept


def run_torchrun(argv: list[str], processes: int, out: Path | None, resume: bool) -> int:
    """Run `train` in `processes` ranks through torchrun; rank 0's exit status."""
    with tempfile.TemporaryDirectory(prefix="freezer-launch-") as tmp:
        exit_file = Path(tmp) / "exit"
        agent_log = Path(tmp) / "torchrun.log"
        env = launch_env(processes)
        env[EXIT_FILE_ENV] = str(exit_file)
        stderr_path = Path(f"/proc/{os.getpid()}/fd/{sys.stderr.fileno()}")
        separate = stderr_path.exists()  # Linux; elsewhere torchrun's log shows as it comes
        if separate:
            env[STDERR_ENV] = str(stderr_path)
        command = torchrun_command(worker_argv(argv, None if resume else out), processes)
        with open(agent_log, "w") as log:
            # Its own session: the terminal's Ctrl-C reaches this process only, which passes
            # one SIGTERM on (torchrun would otherwise forward a second signal to every rank).
            proc = subprocess.Popen(
                command, env=env, start_new_session=True, stderr=log if separate else None
            )
        received: list[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            if hasattr(signal, "SIGHUP") and signum == signal.SIGHUP:
                # The terminal closed: writing to it now fails (EIO).
                devnull = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
                sys.stdout = sys.stderr = devnull
            if received and signum == signal.SIGINT:
                with contextlib.suppress(OSError):
                    err("aborting all processes")
                kill_job(proc.pid)
                return
            received.append(signum)
            with contextlib.suppress(OSError):
                name = signal.Signals(signum).name
                again = "Ctrl-C again" if signum == signal.SIGINT else "Ctrl-C"
                err(
                    f"{name}: every process stops after this step and a checkpoint is saved "
                    f"({again} aborts)"
                )
            # The workers themselves, with the same signal (130 for Ctrl-C, 143 for SIGTERM):
            # torchrun's agent would give them only 30 s to finish.
            signal_workers(proc.pid, signum)

        handled = [signal.SIGINT, signal.SIGTERM] + (
            [signal.SIGHUP] if hasattr(signal, "SIGHUP") else []
        )
        previous = {s: signal.signal(s, on_signal) for s in handled}
        try:
            returncode = proc.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        try:
            return int(exit_file.read_text().strip())
        except (OSError, ValueError):
            pass
        # Rank 0 never got to the end (a rank failed before the run started, or rank 0 was
        # killed): torchrun's own account of it.
        lines = agent_log.read_text(errors="replace").splitlines()
        if lines:
            err("torchrun's log (the ranks' processes):")
            err("\n".join(lines[-25:]))
        return returncode if returncode > 0 else EXIT_FAILED
