"""Per-layer gradient and update statistics, and the proof that frozen layers never moved.

Statistics are computed on the device with batched `torch._foreach_norm` calls and copied to
the CPU in one transfer, only on reporting steps; other steps pay nothing. Frozen parameters
have no gradient (None) and are never in an optimizer step, so they report exactly zero; the
FrozenVerifier then checks, bit for bit, that they really did not change.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from freezer_app.core.tree import ModelTree


@dataclass
class TelemetryRecord:
    """Per-layer statistics at one step (arrays are indexed like the run's layer names)."""

    step: int
    epoch: int
    grad_norm: np.ndarray  # ||g||_2 over the layer's parameters
    grad_mean_abs: np.ndarray  # mean |g|
    grad_max: np.ndarray  # max |g|
    weight_norm: np.ndarray  # ||w||_2 after the step
    update_norm: np.ndarray  # ||w_after - w_before||_2
    update_ratio: np.ndarray  # update_norm / weight_norm
    trainable: np.ndarray  # bool: the layer had trainable parameters at this step

    def to_json(self) -> dict:
        def r(a: np.ndarray) -> list:
            return [float(f"{x:.6g}") for x in a.tolist()]

        return {
            "step": self.step,
            "epoch": self.epoch,
            "grad_norm": r(self.grad_norm),
            "grad_mean_abs": r(self.grad_mean_abs),
            "grad_max": r(self.grad_max),
            "weight_norm": r(self.weight_norm),
            "update_norm": r(self.update_norm),
            "update_ratio": r(self.update_ratio),
            "trainable": [bool(x) for x in self.trainable],
        }


class LayerIndex:
    """Layers (modules that own parameters) and which layer each unique parameter belongs to."""

    def __init__(self, model: nn.Module, tree: ModelTree) -> None:
        by_name = dict(model.named_parameters())
        self.params: list[nn.Parameter] = [by_name[p.name] for p in tree.params]
        owner = [p.name.rsplit(".", 1)[0] if "." in p.name else "" for p in tree.params]
        self.names: list[str] = list(dict.fromkeys(owner))
        position = {n: i for i, n in enumerate(self.names)}
        self.param_layer = np.array([position[o] for o in owner], dtype=np.int64)
        self.layer_numel = np.bincount(
            self.param_layer, weights=tree.numel, minlength=len(self.names)
        )

    def layer_trainable(self) -> np.ndarray:
        flags = np.array([p.requires_grad for p in self.params], dtype=bool)
        out = np.zeros(len(self.names), dtype=bool)
        np.logical_or.at(out, self.param_layer, flags)
        return out


@dataclass
class PendingRecord:
    """A report still on the device: five rows of per-layer values (grad norm, mean |g|, max
    |g|, weight norm, update norm). The trainer copies it to the host together with the
    step losses, in one transfer, and calls `to_record` with the host copy."""

    step: int
    epoch: int
    values: torch.Tensor  # (5, layers), on the device
    trainable: np.ndarray

    def to_record(self, host: np.ndarray) -> TelemetryRecord:
        grad_norm, mean_abs, grad_max, weight_norm, update_norm = host.reshape(5, -1)
        ratio = np.divide(
            update_norm, weight_norm, out=np.zeros_like(update_norm), where=weight_norm > 0
        )
        return TelemetryRecord(
            self.step,
            self.epoch,
            grad_norm,
            mean_abs,
            grad_max,
            weight_norm,
            update_norm,
            ratio,
            self.trainable,
        )


class TelemetryProbe:
    """Collects per-layer statistics every `every` steps. Call order on a step: `begin(step)`
    after gradients are final and before the optimizer step, `end()` after it.

    Nothing here synchronises with the device: the index tensors that map parameters to layers
    are built once per set of parameters (a freeze plan) and cached on the device, and the
    result stays there (PendingRecord). The copy of the weights that the update norms need is
    taken in `begin` and freed in `end`, so telemetry holds no second copy of the model between
    reports.
    """

    def __init__(self, layers: LayerIndex, device: torch.device, every: int = 10) -> None:
        self.layers = layers
        self.every = max(1, every)
        self.device = device
        self.numel = torch.as_tensor(layers.layer_numel, dtype=torch.float32, device=device)
        self._index: dict[tuple[int, ...], torch.Tensor] = {}
        self._snap: list[torch.Tensor] = []
        self._snap_for: tuple[int, ...] = ()
        self._grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._frozen_cache: tuple[tuple[int, ...], torch.Tensor] | None = None
        self._step = 0
        self._epoch = 0

    def wants(self, step: int) -> bool:
        return (step - 1) % self.every == 0

    def _layer_index(self, params: tuple[int, ...]) -> torch.Tensor:
        """The layer of each listed parameter, as a device tensor (cached per parameter set)."""
        index = self._index.get(params)
        if index is None:
            if len(self._index) > 64:  # many plan changes: keep the cache small
                self._index.clear()
            # Built on the host and copied without waiting: no synchronisation.
            layers = torch.as_tensor(self.layers.param_layer[list(params)])
            index = layers.to(self.device, non_blocking=self.device.type == "cuda")
            self._index[params] = index
        return index

    def begin(self, step: int, epoch: int) -> None:
        """On a reporting step: gradient statistics and a copy of what is about to be updated."""
        if not self.wants(step):
            self._grads = None
            return
        self._step, self._epoch = step, epoch
        n_layers = len(self.layers.names)
        params = self.layers.params
        with_grad = tuple(i for i, p in enumerate(params) if p.grad is not None)
        zeros = torch.zeros(n_layers, device=self.device)
        sq, l1, mx = zeros.clone(), zeros.clone(), zeros.clone()
        if with_grad:
            grads = [params[i].grad.detach() for i in with_grad]
            idx = self._layer_index(with_grad)
            l2_norms = torch.stack(torch._foreach_norm(grads, 2)).float()
            l1_norms = torch.stack(torch._foreach_norm(grads, 1)).float()
            inf_norms = torch.stack(torch._foreach_norm(grads, math.inf)).float()
            sq.index_add_(0, idx, l2_norms.square())
            l1.index_add_(0, idx, l1_norms)
            mx.scatter_reduce_(0, idx, inf_norms, reduce="amax")
        self._snap_for = tuple(i for i, p in enumerate(params) if p.requires_grad)
        self._snap = torch._foreach_mul([params[i].detach() for i in self._snap_for], 1.0)
        self._grads = (sq, l1, mx)

    def end(self) -> PendingRecord | None:
        """After the optimizer step: update and weight norms. Nothing leaves the device."""
        if self._grads is None:
            return None
        params = self.layers.params
        n_layers = len(self.layers.names)
        update_sq = torch.zeros(n_layers, device=self.device)
        weight_sq = self._frozen_weight_sq().clone()
        if self._snap_for:
            current = [params[i].detach() for i in self._snap_for]
            idx = self._layer_index(self._snap_for)
            # In place: the copy becomes (before - after), whose norm is the update's.
            torch._foreach_sub_(self._snap, current)
            norms = torch.stack(torch._foreach_norm(self._snap, 2)).float()
            update_sq.index_add_(0, idx, norms.square())
            weights = torch.stack(torch._foreach_norm(current, 2)).float()
            weight_sq.index_add_(0, idx, weights.square())
        self._snap = []  # freed: no copy of the weights outlives the report
        sq, l1, mx = self._grads
        self._grads = None
        values = torch.stack(
            [sq.sqrt(), l1 / self.numel.clamp(min=1), mx, weight_sq.sqrt(), update_sq.sqrt()]
        )
        return PendingRecord(self._step, self._epoch, values, self.layers.layer_trainable())

    def _frozen_weight_sq(self) -> torch.Tensor:
        """Squared weight norms of frozen parameters per layer: they cannot change, so they are
        computed once per freeze plan rather than on every report."""
        frozen = tuple(i for i, p in enumerate(self.layers.params) if not p.requires_grad)
        if self._frozen_cache is None or self._frozen_cache[0] != frozen:
            sq = torch.zeros(len(self.layers.names), device=self.device)
            if frozen:
                norms = torch.stack(
                    torch._foreach_norm([self.layers.params[i].detach() for i in frozen], 2)
                )
                sq.index_add_(0, self._layer_index(frozen), norms.float().square())
            self._frozen_cache = (frozen, sq)
        return self._frozen_cache[1]

    def release(self) -> None:
        self._snap, self._snap_for = [], ()
        self._grads = None
        self._frozen_cache = None
        self._index.clear()


# ---------------------------------------------------------------------- frozen verification
def tensor_digest(t: torch.Tensor) -> str:
    """A digest of the tensor's exact bytes: equal digests mean bit-identical tensors."""
    data = t.detach().to("cpu").contiguous()
    # reshape(-1): a channels_last 1×1 convolution weight is "contiguous" with a last stride
    # other than 1, which view(uint8) refuses; the flat view has stride 1.
    raw = data.reshape(-1).view(torch.uint8)
    h = hashlib.blake2b(digest_size=20)
    h.update(str(tuple(t.shape)).encode())
    h.update(raw.numpy().tobytes() if raw.numel() else b"")
    return h.hexdigest()


@dataclass
class Drift:
    layer: str
    tensor: str
    kind: str  # "parameter" or "buffer"
    expected: bool = False  # a buffer the user let update (bn_policy "update")
    rank: int | None = None  # the process it drifted in (torch.distributed); None: this one


@dataclass
class FrozenCheck:
    epoch: int
    step: int
    checked: int
    drifted: list[Drift] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(not d.expected for d in self.drifted)

    def summary(self) -> str:
        bad = [d for d in self.drifted if not d.expected]
        if not self.checked:
            return "PASSED: nothing is frozen"
        if not bad:
            note = ""
            allowed = [d for d in self.drifted if d.expected]
            if allowed:
                note = (
                    f"; {len(allowed)} BatchNorm statistic(s) updated as the 'update' policy allows"
                )
            return f"PASSED: {self.checked} frozen tensors bit-identical to when they were frozen{note}"
        layers = sorted({d.layer for d in bad})
        ranks = sorted({d.rank for d in bad if d.rank is not None})
        where = f" on rank {', '.join(map(str, ranks))}" if ranks else ""
        return f"FAILED: {len(bad)} frozen tensor(s) changed in {', '.join(layers[:10])}{where}"

    def to_json(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "passed": self.passed,
            "checked": self.checked,
            "drifted": [d.__dict__ for d in self.drifted],
        }


class FrozenVerifier:
    """Remembers digests of frozen tensors and checks they are unchanged."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # name -> (digest, kind, layer, step it was frozen at, buffer allowed to update)
        self.tracked: dict[str, tuple[str, str, str, int, bool]] = {}

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = dict(self.model.named_parameters())
        out.update(dict(self.model.named_buffers()))
        return out

    def sync(self, step: int, frozen_norm_layers: list[str], bn_policy: str) -> None:
        """Track every frozen parameter and the buffers of norm layers whose parameters are all
        frozen; stop tracking what trains now. New entries are digested at `step`.

        With bn_policy "update" those buffers may change: drift there is reported as expected.
        """
        params = dict(self.model.named_parameters())
        wanted: dict[str, tuple[str, str, bool]] = {}
        for name, p in params.items():
            if not p.requires_grad:
                wanted[name] = ("parameter", name.rsplit(".", 1)[0] if "." in name else "", False)
        for layer in frozen_norm_layers:
            module = self.model.get_submodule(layer)
            for bname, _ in module.named_buffers(recurse=False):
                full = f"{layer}.{bname}" if layer else bname
                wanted[full] = ("buffer", layer, bn_policy == "update")
        tensors = self._tensors()
        for name in list(self.tracked):
            if name not in wanted:
                del self.tracked[name]
        for name, (kind, layer, allowed) in wanted.items():
            if name not in self.tracked:
                self.tracked[name] = (tensor_digest(tensors[name]), kind, layer, step, allowed)
            else:
                digest, _, _, since, _ = self.tracked[name]
                self.tracked[name] = (digest, kind, layer, since, allowed)

    def reference(self) -> dict[str, str]:
        """Each tracked tensor's digest from when it was frozen."""
        return {name: entry[0] for name, entry in self.tracked.items()}

    def current(self) -> dict[str, str]:
        """Each tracked tensor's digest now (on another rank: gathered and compared with
        `reference` by `check_ranks`)."""
        tensors = self._tensors()
        return {name: tensor_digest(tensors[name]) for name in self.tracked}

    def check_ranks(self, epoch: int, step: int, per_rank: list[dict[str, str]]) -> FrozenCheck:
        """The check over every process of a torch.distributed run: `per_rank` holds each
        rank's `current()` digests (gathered); a drift names its rank."""
        result = FrozenCheck(epoch, step, len(self.tracked))
        for rank, digests in enumerate(per_rank):
            for name, (digest, kind, layer, _since, allowed) in self.tracked.items():
                if digests.get(name) != digest:
                    result.drifted.append(Drift(layer, name, kind, allowed, rank))
        return result

    def check(self, epoch: int, step: int) -> FrozenCheck:
        tensors = self._tensors()
        result = FrozenCheck(epoch, step, len(self.tracked))
        for name, (digest, kind, layer, _since, allowed) in self.tracked.items():
            if tensor_digest(tensors[name]) != digest:
                result.drifted.append(Drift(layer, name, kind, allowed))
        return result

    def state_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.tracked.items()}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.tracked = {
            k: (str(v[0]), str(v[1]), str(v[2]), int(v[3]), bool(v[4])) for k, v in state.items()
        }
