"""Freeze plans: which parameters train, resolved against a model tree and applied to a model.

A plan is applied in a fixed order: its preset, then every `freeze` selector, then every
`unfreeze` selector. A selector is a module path or parameter name (that module and everything
under it; `blocks.1` never matches `blocks.10`), a glob over paths (`blocks.[0-2]`, `*.bias`),
or `type:CLASSNAME` (every module of that class, subclasses included).
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from torch import nn

from freezer_app.core import settings as settings_schema
from freezer_app.core.errors import SelectorError
from freezer_app.core.settings import setting
from freezer_app.core.tree import ModelTree

BnPolicy = Literal["frozen", "update"]
BN_POLICIES: tuple[str, ...] = ("frozen", "update")
PRESET_FAMILIES: tuple[str, ...] = ("train-all", "head-only", "freeze-stages:K", "train-last:K")


PRESET_HELP = ", ".join(PRESET_FAMILIES)
FREEZE_HELP = "Module paths, globs or type:CLASS frozen after the preset"
UNFREEZE_HELP = "Selectors unfrozen after the freezes"


@dataclass
class Phase:
    """One step of a gradual-unfreezing schedule: from `epoch` on, train with this selection."""

    epoch: int = setting(
        1, help="Epochs completed before this selection takes over (0: from the start)", minimum=0
    )
    preset: str = setting("train-all", help=PRESET_HELP)
    freeze: list[str] = setting(default_factory=list, help=FREEZE_HELP)
    unfreeze: list[str] = setting(default_factory=list, help=UNFREEZE_HELP)


@dataclass
class Edit:
    """A change of the selection made during a run (a click in the tree), keyed by step:
    `step` is the first optimizer step trained with it."""

    step: int = setting(1, help="The first optimizer step trained with this selection", minimum=1)
    preset: str = setting("train-all", help=PRESET_HELP)
    freeze: list[str] = setting(default_factory=list, help=FREEZE_HELP)
    unfreeze: list[str] = setting(default_factory=list, help=UNFREEZE_HELP)


@dataclass
class LrMult:
    """A per-layer learning-rate multiplier: every parameter under `path` trains at the
    group's rate × `mult` (the most specific path of a parameter applies)."""

    path: str = setting("", help="A module path or parameter name (not a glob)")
    mult: float = setting(
        1.0,
        help="Learning-rate multiplier for that module's parameters",
        minimum=0.0,
        exclusive_minimum=True,
        maximum=10_000.0,
    )


@dataclass
class FreezePlan:
    """Which parameters train: a selection (preset, then freezes, then unfreezes) and its
    timeline (schedule phases by epoch, edits by step)."""

    preset: str = setting(
        "train-all",
        help=PRESET_HELP,
        flag="--preset",
        metavar="P",
        form=False,  # the window edits the selection in the tree
    )
    freeze: list[str] = setting(
        default_factory=list,
        help=FREEZE_HELP,
        form=False,
    )
    unfreeze: list[str] = setting(default_factory=list, help=UNFREEZE_HELP, form=False)
    bn_policy: str = setting(
        "frozen",
        help="frozen: frozen norm layers keep their running statistics (eval mode); update: "
        "they keep learning statistics",
        choices=BN_POLICIES,
        label="BatchNorm policy",
    )
    # Gradual unfreezing: from its epoch on, a phase's selection replaces the plan's own.
    schedule: list[Phase] = setting(
        default_factory=list, help="Gradual unfreezing: selections keyed by epoch", form=False
    )
    edits: list[Edit] = setting(
        default_factory=list, help="Changes made during a run, keyed by step", form=False
    )
    # Last, so positional FreezePlan(preset, freeze, unfreeze, bn_policy, ...) calls still work.
    lr_mult: list[LrMult] = setting(
        default_factory=list,
        help="Per-layer learning-rate multipliers (module path and factor; the most specific "
        "path applies; combined with head and layer-decay multipliers by multiplication)",
        form=False,  # edited in the tree's LR × column
    )

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FreezePlan:
        return settings_schema.load(cls, data, "plan", SelectorError)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FreezePlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SelectorError(
                f"The freeze plan is not valid JSON: {e}.", "Check the file."
            ) from None
        return cls.from_dict(data)

    # ------------------------------------------------------------------ selections
    def selection(self) -> FreezePlan:
        """This plan's own selection, without its timeline."""
        return FreezePlan(self.preset, list(self.freeze), list(self.unfreeze), self.bn_policy)

    def with_selection(self, preset: str, freeze: list[str], unfreeze: list[str]) -> FreezePlan:
        """The same timeline, BatchNorm policy and multipliers with another selection."""
        return FreezePlan(
            preset,
            list(freeze),
            list(unfreeze),
            self.bn_policy,
            copy.deepcopy(self.schedule),
            copy.deepcopy(self.edits),
            copy.deepcopy(self.lr_mult),
        )

    def lr_mults(self) -> dict[str, float]:
        """{path: multiplier} of the per-layer learning-rate multipliers."""
        return {m.path: m.mult for m in self.lr_mult}

    def with_lr_mult(self, path: str, mult: float | None) -> FreezePlan:
        """A copy with `path`'s multiplier set (None removes it: the one inherited applies;
        1 is kept, to override an inherited one)."""
        plan = copy.deepcopy(self)
        kept = [m for m in plan.lr_mult if m.path != path]
        if mult is not None:
            # In place when already listed, so the file keeps the user's order.
            at = next((i for i, m in enumerate(plan.lr_mult) if m.path == path), len(kept))
            kept.insert(at, LrMult(path, float(mult)))
        plan.lr_mult = kept
        return plan

    def same_selection(self, other: FreezePlan) -> bool:
        return (self.preset, self.freeze, self.unfreeze, self.bn_policy) == (
            other.preset,
            other.freeze,
            other.unfreeze,
            other.bn_policy,
        )

    def describe(self) -> str:
        parts = [self.preset]
        if self.freeze:
            parts.append("freeze " + ", ".join(self.freeze))
        if self.unfreeze:
            parts.append("unfreeze " + ", ".join(self.unfreeze))
        return "; ".join(parts)


# ---------------------------------------------------------------------- selectors
def _is_glob(selector: str) -> bool:
    return any(c in selector for c in "*?[")


def _close_matches(tree: ModelTree, selector: str) -> list[str]:
    candidates = [p for p in tree.nodes if p] + list(tree.name_to_index)
    close = difflib.get_close_matches(selector, candidates, n=5, cutoff=0.5)
    if not close:
        # Fall back to paths sharing the selector's first component (blocks.99 -> blocks.*).
        head = selector.split(".")[0]
        close = [c for c in candidates if c.split(".")[0] == head][:5]
    return close


def select(tree: ModelTree, selector: str) -> np.ndarray:
    """Indices of the unique parameters a selector covers. Matching nothing is an error."""
    selector = selector.strip()
    if not selector:
        raise SelectorError("Empty selector.", "Use a module path, a glob like 'blocks.*', or '*'.")
    if selector.startswith("type:"):
        type_name = selector[5:]
        nodes = [n for n in tree.nodes.values() if type_name in n.type_names]
        if not nodes:
            types = sorted({n.type_name for n in tree.nodes.values()})
            close = difflib.get_close_matches(type_name, types, n=5, cutoff=0.4)
            raise SelectorError(
                f"No module of type {type_name!r} in {tree.label}.",
                f"Did you mean: {', '.join('type:' + t for t in close)}?"
                if close
                else f"Types in this model: {', '.join(types[:12])}.",
            )
        parts = [n.indices for n in nodes]
    elif _is_glob(selector):
        parts = [n.indices for p, n in tree.nodes.items() if p and fnmatch.fnmatchcase(p, selector)]
        parts += [
            np.array([i])
            for name, i in tree.name_to_index.items()
            if fnmatch.fnmatchcase(name, selector)
        ]
        if not parts:
            raise SelectorError(
                f"The pattern {selector!r} matches no module or parameter of {tree.label}.",
                _suggestion(_close_matches(tree, selector.replace("*", "").replace("?", ""))),
            )
    elif selector in tree.nodes:
        parts = [tree.nodes[selector].indices]
    elif selector in tree.name_to_index:
        parts = [np.array([tree.name_to_index[selector]])]
    else:
        raise SelectorError(
            f"No module or parameter named {selector!r} in {tree.label}.",
            _suggestion(_close_matches(tree, selector)),
        )
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(parts).astype(np.int64))


def _suggestion(close: list[str]) -> str:
    if close:
        return "Closest module paths: " + ", ".join(close)
    return "Run `freezer-app inspect MODEL` to see the module paths."


# ---------------------------------------------------------------------- learning-rate multipliers
def mult_of(name: str, mults: dict[str, float]) -> float:
    """A parameter's multiplier: that of its most specific listed path ("blocks.1" covers
    "blocks.1.x", never "blocks.10"), 1 when none covers it."""
    path = name
    while True:
        if path in mults:
            return mults[path]
        if "." not in path:
            return 1.0
        path = path.rsplit(".", 1)[0]


def check_lr_mult(plan: FreezePlan, tree: ModelTree) -> None:
    """Every multiplier's path names a module or parameter of the model, once."""
    seen: set[str] = set()
    for m in plan.lr_mult:
        if m.path in seen:
            raise SelectorError(
                f"The learning-rate multiplier of {m.path!r} is given twice.",
                "Keep one entry per path in plan.lr_mult.",
            )
        seen.add(m.path)
        if any(c in m.path for c in "*?[") or m.path.startswith("type:"):
            raise SelectorError(
                f"A learning-rate multiplier names one module or parameter: {m.path!r} is a "
                "pattern.",
                "Give each path its own multiplier (e.g. --lr-mult layer3=0.5 --lr-mult "
                "layer4=0.5); a module's multiplier covers everything inside it.",
            )
        if not m.path or (m.path not in tree.nodes and m.path not in tree.name_to_index):
            raise SelectorError(
                f"No module or parameter named {m.path!r} in {tree.label} "
                "(learning-rate multiplier).",
                _suggestion(_close_matches(tree, m.path)),
            )


# ---------------------------------------------------------------------- presets
@dataclass
class PresetInfo:
    name: str
    description: str
    trainable_params: int


def _parse_k(preset: str, family: str, tree: ModelTree, low: int) -> int:
    n = len(tree.layout.stages)
    raw = preset.split(":", 1)[1] if ":" in preset else ""
    try:
        k = int(raw)
    except ValueError:
        raise SelectorError(
            f"Preset {preset!r} needs a whole number of stages, e.g. {family}:1.",
            f"{tree.label} has {n} stages.",
        ) from None
    if not low <= k <= n:
        raise SelectorError(
            f"Preset {preset!r}: {tree.label} has {n} stages, so K must be {low}..{n}.",
            f"Stages: {', '.join(tree.stage_label(i) for i in range(n))}",
        )
    return k


def preset_mask(tree: ModelTree, preset: str) -> np.ndarray:
    """The trainable mask a preset gives, before any freeze/unfreeze selectors."""
    layout = tree.layout
    mask = np.ones(len(tree.params), dtype=bool)
    if preset in ("train-all", ""):
        return mask
    if preset == "head-only":
        if not layout.head:
            raise SelectorError(
                f"{tree.label} has no classifier head with parameters, so 'head-only' does not apply.",
                "Freeze modules by path instead, e.g. --freeze '*' --unfreeze LAYER.",
            )
        mask[:] = False
        mask[tree.indices_of_names(layout.head)] = True
        return mask
    family = preset.split(":", 1)[0]
    if family in ("freeze-stages", "train-last"):
        if not layout.stages:
            raise SelectorError(
                f"Could not find stages in {tree.label}, so {family!r} does not apply.",
                "Freeze modules by path instead (see `freezer-app inspect`).",
            )
        if family == "freeze-stages":
            k = _parse_k(preset, family, tree, 0)
            frozen = list(layout.stem) + [n for s in layout.stages[:k] for n in s]
            if frozen:
                mask[tree.indices_of_names(frozen)] = False
            return mask
        k = _parse_k(preset, family, tree, 0)
        mask[:] = False
        trainable = list(layout.head) + [
            n for s in layout.stages[len(layout.stages) - k :] for n in s
        ]
        if trainable:
            mask[tree.indices_of_names(trainable)] = True
        return mask
    raise SelectorError(
        f"Unknown preset {preset!r}.",
        f"Presets: {', '.join(PRESET_FAMILIES)} (see `freezer-app inspect --list-presets MODEL`).",
    )


def available_presets(tree: ModelTree) -> list[PresetInfo]:
    """Every preset that applies to this model, with the trainable count each gives."""
    layout = tree.layout
    out: list[PresetInfo] = []

    def add(name: str, description: str) -> None:
        mask = preset_mask(tree, name)
        out.append(PresetInfo(name, description, int(tree.numel[mask].sum())))

    add("train-all", "train every parameter")
    if layout.head:
        head = ", ".join(sorted({n.rsplit(".", 1)[0] for n in layout.head}))
        add("head-only", f"train only the classifier ({head})")
    n = len(layout.stages)
    stem = "the stem and " if layout.stem else ""
    for k in range(1, n + 1):
        stages = "stage 1" if k == 1 else f"stages 1-{k}"
        add(f"freeze-stages:{k}", f"freeze {stem}{stages} (through {tree.stage_label(k - 1)})")
    for k in range(1, n + 1):
        stages = "stage" if k == 1 else f"{k} stages"
        add(
            f"train-last:{k}",
            f"train the head and the last {stages} (from {tree.stage_label(n - k)})",
        )
    return out


# ---------------------------------------------------------------------- resolution
def resolve(plan: FreezePlan, tree: ModelTree) -> np.ndarray:
    """The trainable mask over `tree.params` that `plan` describes (schedule not applied)."""
    mask = preset_mask(tree, plan.preset)
    for s in plan.freeze:
        mask[select(tree, s)] = False
    for s in plan.unfreeze:
        mask[select(tree, s)] = True
    return mask


def plan_for_mask(tree: ModelTree, mask: np.ndarray, base: FreezePlan) -> FreezePlan:
    """A plan that gives exactly `mask`, using as few selectors as it can.

    Used when an edit in the GUI cannot be expressed by appending one selector. Three shapes
    are tried: selectors relative to `base`'s preset, "freeze everything, unfreeze what trains",
    and "train-all, freeze what is frozen".
    """
    preset = preset_mask(tree, base.preset)
    relative = (
        _covering(tree, ~mask, preset & ~mask),  # trainable by the preset, frozen in the target
        _covering(tree, mask, ~preset & mask),
    )
    everything = (["*"], _covering(tree, mask, mask))
    freeze, unfreeze = min(relative, everything, key=lambda fu: len(fu[0]) + len(fu[1]))
    preset = base.preset
    # Once edits have moved far from the preset, "train all but these" may read better.
    plain = _covering(tree, ~mask, ~mask)
    if len(plain) < len(freeze) + len(unfreeze):
        preset, freeze, unfreeze = "train-all", plain, []
    return base.with_selection(preset, freeze, unfreeze)


def _covering(tree: ModelTree, allowed: np.ndarray, needed: np.ndarray) -> list[str]:
    """Largest subtrees entirely inside `allowed` that contain something `needed`."""
    out: list[str] = []

    def visit(node) -> None:
        idx = node.indices
        if idx.size == 0 or not needed[idx].any():
            return
        if allowed[idx].all():
            out.append(node.path or "*")
            return
        for entry in node.params:
            i = entry.info.index
            if needed[i] and entry.full_name == entry.info.name:
                out.append(entry.full_name)
        for child in node.children:
            visit(child)

    visit(tree.root)
    return out


def edit_plan(tree: ModelTree, plan: FreezePlan, selector: str, trainable: bool) -> FreezePlan:
    """The plan after the user freezes (or unfreezes) everything `selector` covers.

    Appends the selector when that alone gives the intended result, so plans stay readable
    (`head-only` + `unfreeze layer4`); otherwise rewrites the selectors from the target mask.
    """
    current = resolve(plan, tree)
    target = current.copy()
    target[select(tree, selector)] = trainable
    if trainable:
        candidate = plan.with_selection(
            plan.preset,
            plan.freeze,
            [s for s in plan.unfreeze if s != selector] + [selector],
        )
    else:
        # Unfreeze selectors entirely inside the newly frozen part would undo the edit.
        covered = ~target
        kept_unfreeze = [s for s in plan.unfreeze if not covered[select(tree, s)].all()]
        candidate = plan.with_selection(
            plan.preset, [s for s in plan.freeze if s != selector] + [selector], kept_unfreeze
        )
    if np.array_equal(resolve(candidate, tree), target):
        return _drop_redundant(tree, candidate)
    return plan_for_mask(tree, target, plan)


def _drop_redundant(tree: ModelTree, plan: FreezePlan) -> FreezePlan:
    """Remove selectors that no longer change the result (e.g. freeze X after freeze *)."""
    target = resolve(plan, tree)
    for attr in ("unfreeze", "freeze"):
        i = 0
        while i < len(getattr(plan, attr)):
            trial = plan.with_selection(plan.preset, plan.freeze, plan.unfreeze)
            del getattr(trial, attr)[i]
            if np.array_equal(resolve(trial, tree), target):
                plan = trial
            else:
                i += 1
    return plan


# ---------------------------------------------------------------------- applying to a model


@dataclass
class AppliedPlan:
    trainable: int
    total: int
    frozen_norms: list[str]


def apply_mask(
    model: nn.Module, tree: ModelTree, mask: np.ndarray, bn_policy: BnPolicy = "frozen"
) -> AppliedPlan:
    """Set `requires_grad` from `mask`; frozen parameters lose any gradient they held.

    With bn_policy 'frozen', norm layers whose parameters are all frozen are kept in eval mode
    (their running statistics stay put) even after `model.train()` (_HeldInEval).
    """
    for name, p in model.named_parameters():
        trainable = bool(mask[tree.name_to_index[name]])
        p.requires_grad_(trainable)
        if not trainable:
            p.grad = None
    tree.trainable = mask.copy()
    norms = tree.frozen_norm_paths() if bn_policy == "frozen" else []
    _set_norm_guard(model, [model.get_submodule(p) for p in norms])
    return AppliedPlan(tree.trainable_params, tree.total_params, norms)


def apply_plan(model: nn.Module, plan: FreezePlan, tree: ModelTree | None = None) -> AppliedPlan:
    tree = tree or ModelTree(model)
    return apply_mask(model, tree, resolve(plan, tree), plan.bn_policy)


class _HeldInEval:
    """A frozen norm layer's `train`: whatever mode is asked for, the layer stays in eval
    mode (its running statistics stay put). nn.Module.train recurses through each child's own
    `train`, so `model.train()` anywhere (the trainer's, a user's) keeps it: nothing to pay on
    every forward pass, as a hook would."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def is_held_in_eval(module: nn.Module) -> bool:
    """Whether a (frozen norm) module stays in eval mode whatever mode the model is in."""
    return isinstance(module.__dict__.get("train"), _HeldInEval)


def _set_norm_guard(model: nn.Module, norms: list[nn.Module]) -> None:
    """Hold `norms` in eval; release every other module of `model` held before (found on
    the modules themselves, so a copied model is handled like the original)."""
    kept = {id(n) for n in norms}
    for module in model.modules():
        held = module.__dict__.get("train")
        if isinstance(held, _HeldInEval) and id(module) not in kept:
            # Unfrozen now: follow the model's mode again (train mode mid-epoch).
            del module.__dict__["train"]
            module.training = model.training
    for norm in norms:
        held = norm.__dict__.get("train")
        if not isinstance(held, _HeldInEval) or held.module is not norm:
            object.__setattr__(norm, "train", _HeldInEval(norm))
        norm.training = False


# ---------------------------------------------------------------------- code for users
def plan_code(
    tree: ModelTree, mask: np.ndarray, plan: FreezePlan, model_expr: str = "model"
) -> str:
    """Plain PyTorch that reproduces the plan, to paste into a user's own training script."""
    frozen = tree.maximal_subtrees(~mask)
    trainable = tree.maximal_subtrees(mask)
    lines = [
        f"# Freezer plan for {tree.label}: {plan.describe()}",
        f"# trainable {tree.numel[mask].sum():,} / {tree.total_params:,} parameters",
    ]
    if not frozen:
        lines += [f"for param in {model_expr}.parameters():", "    param.requires_grad = True"]
    elif not trainable:
        lines += [f"for param in {model_expr}.parameters():", "    param.requires_grad = False"]
    else:
        # List whichever side is shorter; a prefix matches itself or what follows a dot,
        # so "blocks.1" never matches "blocks.10".
        use_trainable = len(trainable) < len(frozen)
        listed = trainable if use_trainable else frozen
        var = "TRAINABLE" if use_trainable else "FROZEN"
        lines.append(f"{var} = (")
        lines += [f"    {p!r}," for p in listed]
        lines.append(")")
        lines += [
            f"for name, param in {model_expr}.named_parameters():",
            f"    listed = any(name == p or name.startswith(p + '.') for p in {var})",
            f"    param.requires_grad = {'listed' if use_trainable else 'not listed'}",
        ]
    # frozen_norm_paths reads tree.trainable; compute against the given mask instead.
    saved = tree.trainable
    tree.trainable = mask
    try:
        norms = tree.frozen_norm_paths() if plan.bn_policy == "frozen" else []
    finally:
        tree.trainable = saved
    if norms:
        lines += [
            "",
            "# Frozen BatchNorm layers keep their running statistics: hold them in eval mode,",
            "# also after every model.train().",
            "FROZEN_NORMS = [",
        ]
        lines += [f"    {model_expr}.get_submodule({p!r})," for p in norms]
        lines += [
            "]",
            "",
            "",
            "def keep_frozen_norms_in_eval(module, args):",
            "    for norm in FROZEN_NORMS:",
            "        norm.eval()",
            "",
            "",
            f"{model_expr}.register_forward_pre_hook(keep_frozen_norms_in_eval)",
        ]
    lines += [
        "",
        "# Give the optimizer only what trains, so momentum and weight decay cannot move frozen weights.",
        f"params = [p for p in {model_expr}.parameters() if p.requires_grad]",
    ]
    return "\n".join(lines) + "\n"
