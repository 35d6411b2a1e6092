"""torch.distributed pieces (core/train/distributed.py), with 2 gloo processes on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from freezer_app.core.data import EpochBatchSampler
from freezer_app.core.train.distributed import merge_short_tail, shard

WORKER = Path(__file__).parent / "helpers" / "ddp_worker.py"


@pytest.mark.parametrize("n", [0, 1, 5, 8, 9, 17])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_rank_shares_are_the_batch_again(n: int, world: int) -> None:
    items = list(range(n))
    shares = [shard(items, r, world) for r in range(world)]
    assert [i for s in shares for i in s] == items
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_every_epoch_image_is_in_exactly_one_rank_share() -> None:
    sampler = EpochBatchSampler(23, 8, seed=3)  # a global batch of 8 for 2 ranks
    batches = merge_short_tail(sampler.batches(), world=2)
    seen = [i for b in batches for r in range(2) for i in shard(b, r, 2)]
    assert sorted(seen) == list(range(23))
    assert all(len(shard(b, r, 2)) >= 1 for b in batches for r in range(2))


def test_a_tail_shorter_than_the_ranks_joins_the_batch_before() -> None:
    assert merge_short_tail([[0, 1, 2, 3], [4, 5]], world=4) == [[0, 1, 2, 3, 4, 5]]
    assert merge_short_tail([[0, 1], [2, 3]], world=2) == [[0, 1], [2, 3]]


@pytest.mark.parametrize("n", range(9, 40))
@pytest.mark.parametrize("world", [2, 3, 4])
def test_no_rank_trains_on_a_single_image_when_full_batches_give_it_more(
    n: int, world: int
) -> None:
    # BatchNorm1d in training refuses one image ("Expected more than 1 value per channel").
    batch = 2 * world + 1
    batches = EpochBatchSampler(n, batch, seed=n, world=world).batches()
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(len(shard(b, r, world)) >= 2 for b in batches for r in range(world))
    # A batch the user asked to be one image per rank stays so.
    assert merge_short_tail([[0, 1], [2, 3]], world=2) == [[0, 1], [2, 3]]


def _torchrun(tmp_path: Path, mode: str) -> list[dict]:
    out = tmp_path / mode
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*cmd, str(WORKER), str(out), mode], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(2)]


def test_a_layer_unfrozen_mid_run_gets_all_reduced_gradients(tmp_path: Path) -> None:
    ranks = _torchrun(tmp_path, "rebuild")
    for r in ranks:
        assert r["body_frozen_until_unfreeze"] and r["body_moved"]
        # Stop from rank 1 and rank 0's pause and plan reach every rank.
        assert r["commands"] == [True, True, {"preset": "head-only"}]
        assert r["broadcast"] == {"from": 0}
    # The wrapper built for the new plan all-reduces the unfrozen body: equal on both ranks.
    assert ranks[0]["digests"] == ranks[1]["digests"]
    assert ranks[0]["digests"][0] == ranks[0]["digests"][1]
    assert ranks[0]["mean_loss"] == ranks[1]["mean_loss"]


def test_keeping_the_first_wrapper_lets_the_ranks_drift(tmp_path: Path) -> None:
    """Why the wrapper is rebuilt: under the first one, the unfrozen body trains on each rank's
    own gradients and the ranks' copies of the model part ways."""
    ranks = _torchrun(tmp_path, "keep")
    body = [r["digests"][r_index]["body"] for r_index, r in enumerate(ranks)]
    assert body[0] != body[1]


def test_the_frozen_check_over_ranks_names_the_drifting_rank() -> None:
    from torch import nn

    from freezer_app.core.telemetry import FrozenVerifier

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    verifier = FrozenVerifier(model)
    verifier.sync(0, [], "eval")
    assert set(verifier.reference()) == {"0.weight", "0.bias"}
    same = verifier.check_ranks(1, 5, [verifier.current(), verifier.current()])
    assert same.passed and same.checked == 2
    with torch.no_grad():
        model[0].bias.add_(1e-7)  # as if only rank 1's copy moved
    check = verifier.check_ranks(1, 5, [verifier.reference(), verifier.current()])
    assert [(d.rank, d.tensor) for d in check.drifted] == [(1, "0.bias")]
    assert not check.passed
    assert check.summary() == "FAILED: 1 frozen tensor(s) changed in 0 on rank 1"
    assert check.to_json()["drifted"][0]["rank"] == 1


def test_the_ranks_loaders_share_every_epoch_and_validation_exactly(demo_data: Path) -> None:
    """Two processes with 4 images each: their training batches together are the single
    process's batches of 8, and their validation images are the validation set, once."""
    from freezer_app.core.data import build_transforms, make_loaders, scan_folder

    report = scan_folder(demo_data)
    train_tf, eval_tf = build_transforms({"input_size": (3, 32, 32)}, 32, "none")

    def loaders(rank: int, world: int) -> Any:
        return make_loaders(
            report, train_tf, eval_tf, 8, 0, 0, image_size=32, rank=rank, world=world
        )

    single, ranks = loaders(0, 1), [loaders(r, 2) for r in range(2)]
    for epoch in (0, 1):
        alone = [(b.indices, b.y.tolist(), b.x) for b in single.train_batches(epoch)]
        shared = [list(r.train_batches(epoch)) for r in ranks]
        assert len(shared[0]) == len(shared[1]) == len(alone)
        for (indices, labels, x), b0, b1 in zip(alone, *shared):
            assert b0.indices + b1.indices == indices
            assert b0.y.tolist() + b1.y.tolist() == labels
            assert b0.total == b1.total == len(indices)
            assert torch.equal(torch.cat([b0.x, b1.x]), x)
    val = [i for r in ranks for b in r.val_batches() for i in b.indices]
    assert sorted(val) == list(range(len(report.val)))


def test_fewer_training_images_than_processes_is_refused_before_any_work(
    demo_data: Path, tmp_path: Path
) -> None:
    """Every process needs an image of every step: 2 images cannot feed 4 processes."""
    import shutil

    from conftest import make_project

    from freezer_app.core.errors import ProjectError
    from freezer_app.core.run_folder import RunFolder
    from freezer_app.core.train.distributed import Distributed
    from freezer_app.core.train.setup import prepare

    data = tmp_path / "tiny"
    for split, count in (("train", 1), ("val", 1)):
        for name in ("circles", "squares"):
            (data / split / name).mkdir(parents=True)
            for path in sorted((demo_data / split / name).iterdir())[:count]:
                shutil.copy(path, data / split / name / path.name)
    dist = Distributed(rank=1, world=4, local_rank=1, device=torch.device("cpu"))
    project = make_project(data, batch_size=1)
    with pytest.raises(ProjectError, match="2 training image\\(s\\) cannot be shared by 4"):
        prepare(project, RunFolder(tmp_path / "run"), None, dist=dist)
    assert not (tmp_path / "run").exists()
