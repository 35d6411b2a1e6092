"""Terminal rendering of model trees and presets for the CLI."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from freezer_app.core.freeze import PresetInfo
from freezer_app.core.tree import ModelTree, ModuleNode, State

_COLOURS = {
    State.TRAINABLE: "\033[32m",
    State.FROZEN: "\033[34m",
    State.PARTIAL: "\033[33m",
    State.NONE: "\033[2m",
}
_RESET = "\033[0m"


def use_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "0.00%"


def summary_line(tree: ModelTree) -> str:
    t, n = tree.trainable_params, tree.total_params
    return f"trainable {t:,} / {n:,} parameters ({percent(t, n)})"


def render_tree(
    tree: ModelTree,
    depth: int | None = None,
    show_all: bool = False,
    show_params: bool = False,
    colour: bool = False,
) -> str:
    """One line per module: path (indented by depth), type, parameters, trainable, state.

    Modules without parameters are left out unless show_all, so a 900-module model stays
    readable; `depth` cuts the tree at that many levels below the root.
    """
    rows: list[tuple[int, str, str, str, str, State, str]] = []

    def visit(node: ModuleNode) -> None:
        if depth is not None and node.depth > depth:
            return
        state = tree.state_of(node)
        if node.path and state is State.NONE and not show_all:
            return
        label = node.path or tree.label
        shared = [e for e in node.params if e.shared]
        note = ""
        if shared:
            others = sorted(
                {a for e in shared for a in [e.info.name, *e.info.aliases]}
                - {e.full_name for e in shared}
            )
            note = "shares " + ", ".join(others)
        total = f"{node.total:,}" if node.indices.size else ""
        trainable = f"{tree.trainable_in(node):,}" if node.indices.size else ""
        rows.append((node.depth, label, node.type_name, total, trainable, state, note))
        if show_params:
            for e in node.params:
                st = tree.param_state(e.info)
                shape = "×".join(str(d) for d in e.info.shape) or "scalar"
                note = f"shared with {e.info.name}" if e.full_name != e.info.name else ""
                if e.full_name == e.info.name and e.info.aliases:
                    note = "shared with " + ", ".join(e.info.aliases)
                rows.append(
                    (
                        node.depth + 1,
                        e.full_name,
                        f"[{shape}]",
                        f"{e.info.numel:,}",
                        f"{e.info.numel if st is State.TRAINABLE else 0:,}",
                        st,
                        note,
                    )
                )
        for child in node.children:
            visit(child)

    visit(tree.root)
    name_w = max(len("module"), *(2 * d + len(label) for d, label, *_ in rows))
    type_w = max(len("type"), *(len(r[2]) for r in rows))
    num_w = max(len("parameters"), *(len(r[3]) for r in rows))
    tr_w = max(len("trainable"), *(len(r[4]) for r in rows))
    header = f"{'module':<{name_w}}  {'type':<{type_w}}  {'parameters':>{num_w}}  {'trainable':>{tr_w}}  state"
    lines = [header, "-" * len(header)]
    for d, label, type_name, total, trainable, state, note in rows:
        text = state.value
        if colour:
            text = f"{_COLOURS[state]}{text}{_RESET}"
        line = f"{'  ' * d + label:<{name_w}}  {type_name:<{type_w}}  {total:>{num_w}}  {trainable:>{tr_w}}  {text}"
        if note:
            line += f"  ({note})"
        lines.append(line.rstrip())
    return "\n".join(lines)


def render_presets(tree: ModelTree, presets: list[PresetInfo]) -> str:
    layout = tree.layout
    n = len(layout.stages)
    lines = [f"Presets for {tree.label}"]
    head = ", ".join(sorted({x.rsplit(".", 1)[0] for x in layout.head})) or "none"
    lines.append(f"  head: {head} (from {layout.head_source})")
    if layout.stem:
        lines.append(f"  stem: {', '.join(tree.maximal_subtrees(_mask(tree, layout.stem)))}")
    lines.append(f"  stages ({n}): " + "; ".join(tree.stage_label(i) for i in range(n)))
    lines.append("")
    name_w = max(len(p.name) for p in presets)
    desc_w = max(len(p.description) for p in presets)
    total = tree.total_params
    for p in presets:
        lines.append(
            f"  {p.name:<{name_w}}  {p.description:<{desc_w}}  "
            f"trainable {p.trainable_params:>{len(f'{total:,}')},} / {total:,} ({percent(p.trainable_params, total)})"
        )
    return "\n".join(lines)


def _mask(tree: ModelTree, names: list[str]):
    import numpy as np

    mask = np.zeros(len(tree.params), dtype=bool)
    mask[tree.indices_of_names(names)] = True
    return mask


def write(text: str, stream: TextIO = sys.stdout) -> None:
    stream.write(text if text.endswith("\n") else text + "\n")
