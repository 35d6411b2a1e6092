"""The module tree of a model: structure, parameter counts and trainable state.

The tree holds no tensors, only names, shapes and a trainable mask over the model's unique
parameters, so a tree built from a meta-device preview works for the real model too. Tied
(shared) parameters appear under every name they have but are counted and frozen once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from torch import nn

from freezer_app.core.layout import StageLayout, compute_layout


class State(str, Enum):
    TRAINABLE = "trainable"
    FROZEN = "frozen"
    PARTIAL = "partial"
    NONE = "-"  # a module without parameters (activation, pooling, dropout)


@dataclass(eq=False)
class ParamInfo:
    """One unique parameter: its canonical name and any other names it is shared under."""

    index: int
    name: str
    shape: tuple[int, ...]
    numel: int
    dtype: str
    aliases: list[str] = field(default_factory=list)


@dataclass(eq=False)
class ParamEntry:
    """A parameter as it appears directly under one module (a tied one appears more than once)."""

    local_name: str
    full_name: str
    info: ParamInfo

    @property
    def shared(self) -> bool:
        return bool(self.info.aliases)


@dataclass(eq=False)
class ModuleNode:
    path: str  # "" for the root
    type_name: str
    type_names: tuple[str, ...]  # the class and its bases, for `type:` selectors
    parent: ModuleNode | None
    row: int
    children: list[ModuleNode] = field(default_factory=list)
    params: list[ParamEntry] = field(default_factory=list)
    has_running_stats: bool = False
    # Indices of unique parameters in this subtree (set once the tree is complete).
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    total: int = 0

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1] if self.path else ""

    @property
    def depth(self) -> int:
        return 0 if not self.path else self.path.count(".") + 1


class ModelTree:
    """Structure of an `nn.Module` plus a trainable mask over its unique parameters."""

    def __init__(self, model: nn.Module, label: str = "") -> None:
        self.label = label or type(model).__name__
        self.params: list[ParamInfo] = []
        self.name_to_index: dict[str, int] = {}
        by_id: dict[int, ParamInfo] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            info = by_id.get(id(p))
            if info is None:
                info = ParamInfo(
                    len(self.params), name, tuple(p.shape), p.numel(), str(p.dtype)[6:]
                )
                by_id[id(p)] = info
                self.params.append(info)
            elif name != info.name:
                info.aliases.append(name)
            self.name_to_index[name] = info.index
        self.numel = np.array([p.numel for p in self.params], dtype=np.int64)
        self.trainable = np.array([True] * len(self.params), dtype=bool)
        for name, p in model.named_parameters():
            self.trainable[self.name_to_index[name]] = p.requires_grad

        self.nodes: dict[str, ModuleNode] = {}
        for path, module in model.named_modules(remove_duplicate=False):
            if path in self.nodes:
                continue
            parent = self.nodes[path.rsplit(".", 1)[0] if "." in path else ""] if path else None
            node = ModuleNode(
                path=path,
                type_name=type(module).__name__,
                type_names=tuple(c.__name__ for c in type(module).__mro__[:-1]),
                parent=parent,
                row=len(parent.children) if parent else 0,
                has_running_stats=isinstance(module, nn.modules.batchnorm._NormBase)
                and module.track_running_stats,
            )
            for local, p in module.named_parameters(recurse=False):
                full = f"{path}.{local}" if path else local
                node.params.append(ParamEntry(local, full, by_id[id(p)]))
            if parent is not None:
                parent.children.append(node)
            self.nodes[path] = node
        self.root = self.nodes[""]
        self._fill_indices(self.root)
        self.layout: StageLayout = compute_layout(model, [p.name for p in self.params])
        self._stage_labels: dict[int, str] = {}

    def _fill_indices(self, node: ModuleNode) -> np.ndarray:
        own = [e.info.index for e in node.params]
        parts = [np.asarray(own, dtype=np.int64)] + [self._fill_indices(c) for c in node.children]
        node.indices = np.unique(np.concatenate(parts))
        node.total = int(self.numel[node.indices].sum())
        return node.indices

    # ----------------------------------------------------------------- counts and state
    @property
    def total_params(self) -> int:
        return int(self.numel.sum())

    @property
    def trainable_params(self) -> int:
        return int(self.numel[self.trainable].sum())

    def trainable_in(self, node: ModuleNode) -> int:
        return int(self.numel[node.indices[self.trainable[node.indices]]].sum())

    def state_of(self, node: ModuleNode) -> State:
        if node.indices.size == 0:
            return State.NONE
        flags = self.trainable[node.indices]
        if flags.all():
            return State.TRAINABLE
        if not flags.any():
            return State.FROZEN
        return State.PARTIAL

    def param_state(self, info: ParamInfo) -> State:
        return State.TRAINABLE if self.trainable[info.index] else State.FROZEN

    def indices_of_names(self, names: list[str]) -> np.ndarray:
        return np.array([self.name_to_index[n] for n in names], dtype=np.int64)

    def requires_grad(self) -> dict[str, bool]:
        """Every canonical parameter name (as `named_parameters()` yields them) -> trainable."""
        return {p.name: bool(self.trainable[p.index]) for p in self.params}

    def layers(self) -> list[ModuleNode]:
        """Modules that own parameters directly, in forward (registration) order."""
        return [n for n in self.nodes.values() if n.params]

    def frozen_norm_paths(self) -> list[str]:
        """Norm layers with running statistics whose parameters are all frozen.

        A norm layer without affine parameters counts as frozen when the nearest enclosing
        module that has parameters is entirely frozen.
        """
        out = []
        for node in self.nodes.values():
            if not node.has_running_stats:
                continue
            owner: ModuleNode | None = node
            while owner is not None and owner.indices.size == 0:
                owner = owner.parent
            if owner is not None and not self.trainable[owner.indices].any():
                out.append(node.path)
        return out

    def stage_label(self, index: int) -> str:
        """A short name for stage `index`: the module paths it covers."""
        cached = self._stage_labels.get(index)
        if cached is None:
            cached = self._stage_labels[index] = self._label_for_stage(index)
        return cached

    def _label_for_stage(self, index: int) -> str:
        mask = np.zeros(len(self.params), dtype=bool)
        mask[self.indices_of_names(self.layout.stages[index])] = True
        parts = self.maximal_subtrees(mask)
        if len(parts) <= 3:
            return ", ".join(parts)
        return f"{parts[0]} … {parts[-1]}"

    def maximal_subtrees(self, mask: np.ndarray) -> list[str]:
        """Fewest module paths / parameter names that cover exactly the params where mask is True.

        "" stands for the whole model. Used to describe a selection compactly.
        """
        out: list[str] = []

        def visit(node: ModuleNode) -> None:
            if node.indices.size == 0:
                return
            flags = mask[node.indices]
            if flags.all():
                out.append(node.path)
                return
            if not flags.any():
                return
            for entry in node.params:
                if mask[entry.info.index] and entry.full_name == entry.info.name:
                    out.append(entry.full_name)
            for child in node.children:
                visit(child)

        visit(self.root)
        return out
