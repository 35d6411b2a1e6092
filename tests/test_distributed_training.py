"""`freezer-app train --nproc-per-node 2`: the whole run in 2 torchrun processes (gloo, CPU),
driven as a user drives it, and compared with the same run in one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from freezer_app.core.run_folder import RunFolder, read_json_lines
from freezer_app.core.train import checkpoint

# A head-only run: every BatchNorm is frozen (eval), so 2 processes × 8 images compute exactly
# the steps of 1 process × 16 images (up to float summation order).
RUN = [
    "--model",
    "timm:test_resnet",
    "--image-size",
    "32",
    "--workers",
    "0",
    "--augment",
    "none",
    "--device",
    "cpu",
    "--lr",
    "0.003",
    "--telemetry-every",
    "1",
]


def train(
    *args: str, env: dict[str, str] | None = None, timeout: int = 240
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "freezer_app", "train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def start(*args: str, marker: str) -> subprocess.Popen:
    env = {**os.environ, "FREEZER_TEST_MARKER": marker}
    return subprocess.Popen(
        [sys.executable, "-m", "freezer_app", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def rank_pid(marker: str, rank: int) -> int | None:
    """The pid of a torchrun worker of the run started with `marker`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"FREEZER_TEST_MARKER={marker}".encode() in environ and (
            f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ
        ):
            return int(entry.name)
    return None


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(RunFolder(run).weights))


def steps(run: Path) -> list[dict]:
    return [r for r in read_json_lines(RunFolder(run).metrics).records if r["type"] == "step"]


def epochs(run: Path) -> list[dict]:
    return [r for r in read_json_lines(RunFolder(run).metrics).records if r["type"] == "epoch"]


@pytest.fixture(scope="module")
def one_process(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    done = train(
        "--data", str(demo_data), *RUN, "--preset", "head-only", "--epochs", "2",
        "--batch-size", "16", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_processes_train_what_one_process_trains(
    demo_data: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "two"
    done = train(
        "--data", str(demo_data), *RUN, "--preset", "head-only", "--epochs", "2",
        "--batch-size", "8", "--nproc-per-node", "2", "--out", str(out), "--json", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # rank 0 alone prints: one summary
    assert summary["reason"] == "completed" and summary["frozen_check_passed"] is True
    assert "2 processes (cpu, gloo): global batch 16 (8 images per process)" in done.stderr
    assert done.stderr.count("frozen check: PASSED") >= 2  # once per epoch, by rank 0 only
    assert not (out / "rank-1").exists() and sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in one_process.iterdir()
    )
    # The same steps, losses and weights as one process with the same global batch.
    two, one = steps(out), steps(one_process)
    assert [s["step"] for s in two] == [s["step"] for s in one] == list(range(1, 17))
    for a, b in zip(two, one, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    for a, b in zip(epochs(out), epochs(one_process), strict=True):
        assert a["val_acc"] == b["val_acc"]  # every validation image once, summed exactly
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["replicas_in_sync"] is True
    w2, w1 = weights(out), weights(one_process)
    assert w2.keys() == w1.keys()
    check = json.loads(RunFolder(out).frozen_check.read_text().splitlines()[-1])
    assert check["passed"]
    head = {k for k in w1 if k.startswith("fc.")}
    for key in w1:
        if key in head:
            torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5)
        else:  # frozen: bit for bit what one process kept (and that run's own check passed)
            assert torch.equal(w2[key], w1[key]), key


def test_an_unfreeze_phase_takes_effect_on_every_process(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "phase"
    done = train(
        "--data", str(demo_data), *RUN, "--preset", "head-only", "--epochs", "2",
        "--unfreeze-schedule", "1:train-last:2", "--batch-size", "8", "--nproc-per-node", "2",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    plans = read_json_lines(RunFolder(out).plans).records
    assert [(p["step"], p["reason"]) for p in plans] == [(1, "start"), (9, "schedule")]
    assert plans[1]["trainable_params"] > plans[0]["trainable_params"]
    grads = {r["step"]: r["grad_norm"] for r in read_json_lines(RunFolder(out).telemetry).records}
    # Rank 0 sees the all-reduced gradients: layers with none before the phase get them after.
    frozen = [i for i in range(len(grads[1])) if all(grads[s][i] == 0 for s in range(1, 9))]
    woke = [i for i in frozen if all(grads[s][i] > 0 for s in range(9, 17))]
    assert woke
    # The unfrozen layers trained identically in both processes (a new DDP wrapper).
    assert all(e["replicas_in_sync"] for e in epochs(out))
    assert "frozen check: PASSED" in done.stderr


def test_a_killed_process_ends_the_run_and_the_checkpoint_resumes(
    demo_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    marker = uuid.uuid4().hex
    proc = start(
        "--data", str(demo_data), *RUN, "--preset", "head-only", "--epochs", "300",
        "--batch-size", "4", "--nproc-per-node", "2", "--out", str(out), "--quiet",
        marker=marker,
    )  # fmt: skip
    try:
        wait_for(RunFolder(out).last_checkpoint, proc)
        pid = rank_pid(marker, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "stopped on every process" in stderr, stderr[-3000:]
    assert "--resume" in stderr
    # The last checkpoint is whole: the run continues in one process, to a shorter end.
    done = train("--resume", str(out), "--epochs", "3", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "completed after 3 epoch(s)" in done.stdout
    assert "frozen check: PASSED" in done.stdout


def test_a_stopped_two_process_run_resumes_in_one_process_as_if_uninterrupted(
    demo_data: Path, one_process: Path, tmp_path: Path
) -> None:
    out = tmp_path / "stopped"
    marker = uuid.uuid4().hex
    proc = start(
        "--data", str(demo_data), *RUN, "--preset", "head-only", "--epochs", "2",
        "--batch-size", "8", "--nproc-per-node", "2", "--max-steps", "5", "--out", str(out),
        "--quiet", marker=marker,
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "reached the step limit at step 5" in stderr
    # One process, the same global batch of 16: it takes the remaining 11 steps.
    done = train("--resume", str(out), "--max-steps", "none", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed, whole = steps(out), steps(one_process)
    assert [s["step"] for s in resumed] == list(range(1, 17))
    for a, b in zip(resumed, whole, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    torch.testing.assert_close(weights(out), weights(one_process), rtol=1e-4, atol=1e-5)


def test_sigterm_stops_every_process_with_a_checkpoint(demo_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "sigterm"
    proc = start(
        "--data", str(demo_data), *RUN, "--preset", "head-only", "--epochs", "300",
        "--batch-size", "4", "--nproc-per-node", "2", "--out", str(out), "--quiet",
        marker=uuid.uuid4().hex,
    )  # fmt: skip
    try:
        wait_for(RunFolder(out).last_checkpoint, proc)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped after" in stdout and "frozen check: PASSED" in stdout
    record = checkpoint.load(RunFolder(out).last_checkpoint)
    assert record["world_size"] == 2 and record["global_batch"] == 8
