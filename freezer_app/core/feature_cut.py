"""Where a model's forward can be cut into a frozen prefix, whose output can be cached, and the
rest, which trains on that output.

The model is traced once with torch.fx (torchvision's NodePathTracer, with the modules and
functions timm marks as not traceable kept whole), in training and in eval mode: the graph is
the model's own forward in execution order, stage boundaries, `forward_features`, pooling and
`forward_head(pre_logits=True)` included. For a freeze plan the cut is the deepest point where

- one tensor carries everything the rest of the forward needs (nothing else, not even the
  input image, is used after it: a stage or block boundary, the pooled pre-logits features);
- every parameter used before it is frozen;
- everything before it gives the same output in training as in eval mode: no dropout or
  stochastic depth that is active, no norm layer using batch statistics (`bn_policy: update`).

The cut found is then checked on a probe batch: rest(prefix(x)) must equal model(x).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from freezer_app.core.freeze import is_held_in_eval
from freezer_app.core.tree import ModelTree

# Operations that draw random numbers (by the name of the function or method called).
_RANDOM_OPS = ("dropout", "bernoulli", "rand", "normal_", "uniform_", "multinomial", "drop_")


class CutError(Exception):
    """Why a model's forward cannot be cut (one line, for the run's log)."""


@dataclass(frozen=True)
class Cut:
    """A cut of the forward: `node` is the cached tensor; `index` its place in the graph."""

    node: str  # the node's name in the traced graphs (a module path, e.g. layer4 or head_drop)
    index: int  # its position in the training graph: a deeper cut has a larger index
    label: str  # for people: "after layer4.1 (global_pool.flatten)"


@dataclass
class _Node:
    name: str
    frozen: bool  # uses only frozen parameters
    steady: bool  # same output in training and eval mode
    why: str  # when not steady or not frozen: what it is


def _tracer(model: nn.Module) -> Any:
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import NodePathTracer

    # Norm layers stay whole (not traced into their code): a frozen one is held in eval
    # whatever the model's mode, and which ones are frozen changes with the plan, so their
    # mode must be read when they run, not when the graph is traced.
    norms = {type(m) for m in model.modules() if isinstance(m, _BatchNorm)}
    return NodePathTracer(
        leaf_modules=list(get_notrace_modules()) + list(norms),
        autowrap_functions=list(get_notrace_functions()),
    )


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    was = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was)


class ForwardGraph:
    """The model's forward traced in training and eval mode, and the cuts it allows."""

    def __init__(self, model: nn.Module, tree: ModelTree) -> None:
        self.model = model
        self.tree = tree
        try:
            tracer = _tracer(model)
            with _mode(model, True):
                self.train_graph: fx.Graph = tracer.trace(model)
            with _mode(model, False):
                self.eval_graph: fx.Graph = _tracer(model).trace(model)
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise CutError(
                f"its forward cannot be traced by torch.fx ({type(e).__name__}: {first[:160]})"
            ) from None
        self._modules = dict(model.named_modules())
        # Module paths of the nodes (layer4.1.act2), for people.
        self._paths = {n.name: str(q) for n, q in tracer.node_to_qualname.items()}

    # ------------------------------------------------------------------ finding the cut
    def _params_of(self, node: fx.Node) -> list[str]:
        """The unique parameter names (the tree's) a node reads."""
        if node.op == "call_module":
            module = self._modules[str(node.target)]
            prefix = f"{node.target}."
            names = [prefix + n for n, _ in module.named_parameters(remove_duplicate=False)]
        elif node.op == "get_attr":
            names = [str(node.target)]
        else:
            return []
        index = self.tree.name_to_index
        return [self.tree.params[index[n]].name for n in names if n in index]

    def _describe(self, node: fx.Node, trainable: np.ndarray) -> _Node:
        index = self.tree.name_to_index
        params = self._params_of(node)
        frozen = not any(trainable[index[n]] for n in params)
        steady, why = True, ""
        if node.op == "call_module":
            module = self._modules[str(node.target)]
            if isinstance(module, _DropoutNd) and module.p > 0:
                steady, why = False, f"dropout {node.target}"
            elif isinstance(module, _BatchNorm) and not (
                module.track_running_stats and is_held_in_eval(module)
            ):
                # A frozen norm held in eval (bn_policy frozen) normalises with its running
                # statistics in training too; any other uses the batch's.
                steady, why = False, f"{node.target} uses batch statistics"
            elif "drop" in type(module).__name__.lower() and any(
                float(getattr(module, a, 0) or 0) > 0 for a in ("drop_prob", "p", "drop_rate")
            ):
                steady, why = False, f"stochastic depth {node.target}"
        elif node.op in ("call_function", "call_method"):
            name = node.target if isinstance(node.target, str) else node.target.__name__
            if any(op in name.lower() for op in _RANDOM_OPS) and not _inactive(node):
                steady, why = False, f"random operation {node.name}"
        if not frozen and not why:
            why = f"{node.target} trains"
        return _Node(node.name, frozen, steady, why)

    def cuts(self, trainable: np.ndarray) -> tuple[list[Cut], str]:
        """Every valid cut for this trainable mask, deepest first, and what stops a deeper
        one (the first operation that trains or is random, '' when none does)."""
        nodes = list(self.train_graph.nodes)
        position = {n: i for i, n in enumerate(nodes)}
        last_use = [max((position[u] for u in n.users), default=i) for i, n in enumerate(nodes)]
        # Whether only the classifier's parameters are used after each node.
        head = set(self.tree.layout.head)
        head_after = [True] * len(nodes)
        for i in range(len(nodes) - 2, -1, -1):
            head_after[i] = head_after[i + 1] and set(self._params_of(nodes[i + 1])) <= head
        eval_nodes = {n.name: n for n in self.eval_graph.nodes}
        eval_valid = _single_tensor_points(list(self.eval_graph.nodes))
        out: list[Cut] = []
        live: set[int] = set()
        stop = ""
        for i, node in enumerate(nodes):
            if node.op == "output":
                break
            info = self._describe(node, trainable)
            if not (info.frozen and info.steady):
                stop = info.why
                break
            live = {j for j in live if last_use[j] > i}
            if last_use[i] > i and not _extra_input(node, i):
                live.add(i)
            if (
                node.op != "placeholder"
                and live == {i}
                and node.name in eval_nodes
                and node.name in eval_valid
                and not any(u.op == "output" for u in node.users)
            ):
                label = f"after {self._paths.get(node.name, node.name)}"
                if head_after[i]:
                    label += ", the classifier's input"
                out.append(Cut(node.name, i, label))
        return out[::-1], stop

    # ------------------------------------------------------------------ building the parts
    def prefix(self, cut: Cut, training: bool = False) -> fx.GraphModule:
        """The frozen part: image batch in, the cut's tensor out (eval graph: the same output
        as in training, by the cut's conditions, which check_cut verifies with the training
        graph's prefix)."""
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in (self.train_graph if training else self.eval_graph).nodes:
            env[node] = graph.node_copy(node, lambda n: env[n])
            if node.name == cut.node:
                graph.output(env[node])
                break
        # Its modules are the model's: their mode is left to the model (and does not matter
        # before a valid cut).
        return fx.GraphModule(self.model, graph, "FrozenPrefix")

    def rest(self, cut: Cut) -> nn.Module:
        """The rest of the forward: the cut's tensor in, the model's output out; its training
        and eval graphs follow the mode, as the model's forward does."""
        from torchvision.models.feature_extraction import DualGraphModule

        graphs = [_after(self.train_graph, cut.node), _after(self.eval_graph, cut.node)]
        return DualGraphModule(self.model, graphs[0], graphs[1], "TrainedRest")


def _inactive(node: fx.Node) -> bool:
    """A dropout call traced with training=False or p=0 (eval graph, or a rate of 0)."""
    training = node.kwargs.get("training", True)
    p = node.kwargs.get("p", None)
    if p is None and len(node.args) > 1 and isinstance(node.args[1], (int, float)):
        p = node.args[1]
    if len(node.args) > 2 and isinstance(node.args[2], bool):
        training = node.args[2]
    return training is False or p == 0


def _extra_input(node: fx.Node, position: int) -> bool:
    """A forward argument after the image (attn_mask=None...): its default is passed to the
    rest's graph as well, so it does not have to travel through the cut."""
    return node.op == "placeholder" and position > 0


def _single_tensor_points(nodes: list[fx.Node]) -> set[str]:
    """Names of the nodes after which nothing but that node's value is used again."""
    position = {n: i for i, n in enumerate(nodes)}
    last_use = [max((position[u] for u in n.users), default=i) for i, n in enumerate(nodes)]
    live: set[int] = set()
    out = set()
    for i, node in enumerate(nodes):
        live = {j for j in live if last_use[j] > i}
        if last_use[i] > i and not _extra_input(node, i):
            live.add(i)
        if live == {i}:
            out.add(node.name)
    return out


def _after(source: fx.Graph, cut: str) -> fx.Graph:
    """A graph of what `source` computes after node `cut`, taking `cut`'s value as input."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    started = False
    extra = [n for i, n in enumerate(source.nodes) if _extra_input(n, i)]
    for node in source.nodes:
        if not started:
            if node.name == cut:
                env[node] = graph.placeholder("features")
                for n in extra:
                    env[n] = graph.node_copy(n)
                started = True
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    if not started:
        raise CutError(f"node {cut} is not in the graph")
    return graph


def weights_digest(module: nn.Module, known: dict[str, str] | None = None) -> str:
    """A hash of a module's parameters and buffers (what the cached features depend on).
    `known`: digests (telemetry.tensor_digest) already taken of some of them, by name."""
    from freezer_app.core.telemetry import tensor_digest

    known = known or {}
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{known.get(name) or tensor_digest(t)};".encode())
    return h.hexdigest()


@torch.no_grad()
def check_cut(graph: ForwardGraph, cut: Cut, size: int, device: torch.device) -> tuple[str, float]:
    """('' or why the cut is wrong, the share of the forward's floating-point work done
    before it), from a probe batch:

    - the prefix gives the same output in training (twice, with other random numbers) as in
      eval mode: nothing before the cut depends on the mode or on chance (attention dropout,
      an `if self.training` branch, a random activation), whatever its name;
    - rest(prefix(x)) equals model(x) in eval mode.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from freezer_app.core.train.trainer import logits_of

    model = graph.model
    prefix, rest, trained = graph.prefix(cut), graph.rest(cut), graph.prefix(cut, training=True)
    generator = torch.Generator().manual_seed(0)  # the run's random numbers stay untouched
    x = torch.randn(2, 3, size, size, generator=generator).to(device)
    # Training mode may update buffers (running statistics): put them back afterwards.
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with _mode(model, False), _mode(rest, False):
            with FlopCounterMode(display=False) as whole:
                expected = logits_of(model(x)).float()
            with FlopCounterMode(display=False) as before:
                features = prefix(x)
            got = logits_of(rest(features)).float()
        cuda = [device.index or 0] if device.type == "cuda" else []
        with _mode(model, True), torch.random.fork_rng(devices=cuda):
            runs = []
            for seed in (1, 2):
                torch.manual_seed(seed)
                runs.append(trained(x))
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        return f"the cut forward failed ({type(e).__name__}: {first[:160]})", 0.0
    finally:
        for b, saved in buffers:
            b.copy_(saved)
    if not isinstance(features, torch.Tensor):
        return "the value at the cut is not a tensor", 0.0
    if not all(
        isinstance(r, torch.Tensor)
        and r.shape == features.shape
        and torch.allclose(r, features, rtol=1e-5, atol=1e-6)
        for r in runs
    ):
        return (
            "the layers before the cut behave differently in training (random or mode-dependent)",
            0.0,
        )
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
        return "the cut forward does not reproduce the model's output", 0.0
    total = whole.get_total_flops()
    return "", before.get_total_flops() / total if total else 1.0
