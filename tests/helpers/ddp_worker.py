"""Run under torchrun (2 gloo processes) by tests/test_distributed.py; writes rank R's
findings to OUT/rank-R.json.

A two-layer model trains the head only for 3 steps, then the body is unfrozen at a step
boundary and 3 more steps run, each rank on its own data. `rebuild` says whether the
DistributedDataParallel wrapper is built anew for the new plan (what the trainer does) or the
first one is kept (what a hand-written loop usually does)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from freezer_app.core.telemetry import tensor_digest
from freezer_app.core.train.distributed import Distributed

out, rebuild = Path(sys.argv[1]), sys.argv[2] == "rebuild"
d = Distributed.start(use_cuda=False)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
body, head = model[0], model[2]
frozen_at_start = {n: tensor_digest(p) for n, p in model.named_parameters()}
body.requires_grad_(False)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
wrapped = d.wrap(model)
data = torch.Generator().manual_seed(100 + d.rank)  # every rank sees other images
body_digest_before_unfreeze = ""
for step in range(1, 7):
    if step == 4:
        body_digest_before_unfreeze = tensor_digest(body.weight)
        body.requires_grad_(True)  # the plan changes at this boundary
        if rebuild:
            wrapped = d.wrap(model)
    stop, paused, plan = d.commands(stop=False, paused=False, plan=None)
    x = torch.randn(4, 8, generator=data)
    y = torch.randint(0, 3, (4,), generator=data)
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(wrapped(x), y)
    loss.backward()
    optimizer.step()
    mean = d.mean_loss(loss, 4, 8)

# Commands: rank 1 asks to stop, rank 0 pauses and sends a plan; every rank agrees.
agreed = d.commands(stop=d.rank == 1, paused=True, plan={"preset": "head-only"} if d.main else None)
digests = d.gather({"body": tensor_digest(body.weight), "head": tensor_digest(head.weight)})
result = {
    "digests": digests,
    "body_frozen_until_unfreeze": body_digest_before_unfreeze == frozen_at_start["0.weight"],
    "body_moved": tensor_digest(body.weight) != frozen_at_start["0.weight"],
    "commands": [agreed[0], agreed[1], agreed[2]],
    "mean_loss": float(mean),
    "broadcast": d.broadcast({"from": d.rank}),
}
(out / f"rank-{d.rank}.json").write_text(json.dumps(result))
del wrapped  # its reducer holds the process group: gone before the group is
d.close()
