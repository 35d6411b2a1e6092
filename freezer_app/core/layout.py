"""Where a model's classifier head, stem and stages are.

timm models describe themselves (`pretrained_cfg['classifier']`, `group_matcher`). torchvision
models do not, so their heads and stages are written here once per model class, in the same
matcher format timm uses, and grouped with timm's own `group_with_matcher`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from timm.models._manipulate import group_with_matcher
from torch import nn

from freezer_app.core.torchvision_compat import AUX_HEADS

# The classifier of each torchvision classification model class. Inception and GoogLeNet also
# carry auxiliary classifiers (present only when built with aux_logits): see torchvision_compat.
_MAIN_HEADS: dict[str, tuple[str, ...]] = {
    "AlexNet": ("classifier.6",),
    "ConvNeXt": ("classifier.2",),
    "DenseNet": ("classifier",),
    "EfficientNet": ("classifier.1",),
    "GoogLeNet": ("fc",),
    "Inception3": ("fc",),
    "MNASNet": ("classifier.1",),
    "MaxVit": ("classifier.5",),
    "MobileNetV2": ("classifier.1",),
    "MobileNetV3": ("classifier.3",),
    "RegNet": ("fc",),
    "ResNet": ("fc",),
    "ShuffleNetV2": ("fc",),
    "SqueezeNet": ("classifier.1",),
    "SwinTransformer": ("head",),
    "VGG": ("classifier.6",),
    "VisionTransformer": ("heads.head",),
}
TORCHVISION_HEADS: dict[str, tuple[str, ...]] = {
    cls: heads + AUX_HEADS.get(cls, ()) for cls, heads in _MAIN_HEADS.items()
}

MATCH_PREV_GROUP = 99999.0  # timm's marker: "belongs to the group before me"
_UNMATCHED = math.inf

Ordinal = tuple[float, ...]
Matcher = Callable[[str], Ordinal]


def _downsample_pairs(prefix: str, stem_index: int = 0) -> Matcher:
    """`features.0` stem, then (stage, downsample) pairs: ConvNeXt and Swin interleave them."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")

    def ordinal(name: str) -> Ordinal:
        m = pattern.match(name)
        if not m:
            return (MATCH_PREV_GROUP,) if name.startswith("norm") else (_UNMATCHED,)
        k = int(m.group(1))
        return (0.0,) if k == stem_index else (1.0, float(k // 2 + 1))

    return ordinal


def _pool_separated(model: nn.Module, container: str) -> Matcher:
    """VGG, AlexNet and SqueezeNet are one flat Sequential: a stage ends at each max-pool."""
    seq = model.get_submodule(container)
    stage_of: dict[int, int] = {}
    stage = 1
    for i, layer in enumerate(seq):
        stage_of[i] = stage
        if isinstance(layer, nn.MaxPool2d):
            stage += 1
    pattern = re.compile(rf"^{re.escape(container)}\.(\d+)\.")

    def ordinal(name: str) -> Ordinal:
        m = pattern.match(name)
        if m:
            return (1.0, float(stage_of[int(m.group(1))]))
        return (2.0,) if name.startswith("classifier") else (_UNMATCHED,)

    return ordinal


# timm-format matchers (coarse: one group per stage) for torchvision model classes.
_TORCHVISION_MATCHERS: dict[str, Callable[[nn.Module], dict | Matcher]] = {
    "ResNet": lambda m: {"stem": r"^conv1|^bn1", "blocks": r"^layer(\d+)"},
    "RegNet": lambda m: {"stem": r"^stem", "blocks": r"^trunk_output\.block(\d+)"},
    "ShuffleNetV2": lambda m: {
        "stem": r"^conv1",
        "blocks": [(r"^stage(\d+)", None), (r"^conv5", (MATCH_PREV_GROUP,))],
    },
    "MobileNetV2": lambda m: {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"},
    "MobileNetV3": lambda m: {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"},
    "EfficientNet": lambda m: {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"},
    "MNASNet": lambda m: {
        "stem": r"^layers\.[0-7]\.",
        "blocks": [(r"^layers\.1[4-6]\.", (MATCH_PREV_GROUP,)), (r"^layers\.(\d+)", None)],
    },
    "ConvNeXt": lambda m: _downsample_pairs("features"),
    "SwinTransformer": lambda m: _downsample_pairs("features"),
    "DenseNet": lambda m: {
        "stem": r"^features\.(?:conv0|norm0)",
        "blocks": [
            (r"^features\.(?:denseblock|transition)(\d+)", None),
            (r"^features\.norm5", (MATCH_PREV_GROUP,)),
        ],
    },
    "VGG": lambda m: _pool_separated(m, "features"),
    "AlexNet": lambda m: _pool_separated(m, "features"),
    "SqueezeNet": lambda m: _pool_separated(m, "features"),
    "GoogLeNet": lambda m: {
        "stem": r"^conv[123]\.",
        # The auxiliary classifiers branch off stage 4.
        "blocks": [(r"^inception(\d)", None), (r"^aux\d", (4.0, MATCH_PREV_GROUP))],
    },
    "Inception3": lambda m: {
        "stem": r"^Conv2d_|^maxpool",
        # The auxiliary classifier branches off stage 6.
        "blocks": [(r"^Mixed_(\d)", None), (r"^AuxLogits", (6.0, MATCH_PREV_GROUP))],
    },
    "VisionTransformer": lambda m: {
        "stem": r"^class_token|^conv_proj|^encoder\.pos_embedding",
        "blocks": [
            (r"^encoder\.layers\.encoder_layer_(\d+)", None),
            (r"^encoder\.ln", (MATCH_PREV_GROUP,)),
        ],
    },
    "MaxVit": lambda m: {
        "stem": r"^stem",
        "blocks": [(r"^blocks\.(\d+)", None), (r"^classifier", (MATCH_PREV_GROUP,))],
    },
}


def compile_matcher(spec: dict | Matcher) -> Matcher:
    """A timm group-matcher dict as a function; unmatched names get +inf (as in timm)."""
    if callable(spec):
        return spec
    compiled: list[tuple[re.Pattern[str], Ordinal, tuple | None]] = []
    for ordinal, (_, mspec) in enumerate(spec.items()):
        if mspec is None:
            continue
        if isinstance(mspec, (tuple, list)):
            compiled += [(re.compile(s[0]), (float(ordinal),), s[1]) for s in mspec]
        else:
            compiled.append((re.compile(mspec), (float(ordinal),), None))

    def ordinal_of(name: str) -> Ordinal:
        for pattern, prefix, suffix in compiled:
            m = pattern.match(name)
            if m:
                groups = tuple(float(g) for g in m.groups() if g is not None)
                return prefix + groups + tuple(float(s) for s in (suffix or ()))
        return (_UNMATCHED,)

    return ordinal_of


def stage_matcher(model: nn.Module) -> tuple[Matcher, bool] | None:
    """The coarse stage matcher for `model` and whether its first group is a stem."""
    if callable(getattr(model, "group_matcher", None)):
        try:
            spec = model.group_matcher(coarse=True)
        except (NotImplementedError, TypeError):
            spec = None
        if spec is not None:
            has_stem = isinstance(spec, dict) and next(iter(spec), "") == "stem"
            return compile_matcher(spec), has_stem
    factory = _TORCHVISION_MATCHERS.get(type(model).__name__)
    if factory is not None and type(model).__module__.startswith("torchvision."):
        spec = factory(model)
        has_stem = not isinstance(spec, dict) or next(iter(spec), "") == "stem"
        return compile_matcher(spec), has_stem
    return None


def find_head_paths(model: nn.Module) -> tuple[tuple[str, ...], str]:
    """Module paths of the classifier head and where that answer came from."""
    modules = dict(model.named_modules())
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("classifier"):
        names = cfg["classifier"]
        names = (names,) if isinstance(names, str) else tuple(names)
        found = tuple(n for n in names if n in modules)
        if found:
            return found, "timm pretrained_cfg['classifier']"
    cls = type(model)
    if cls.__module__.startswith("torchvision.") and cls.__name__ in TORCHVISION_HEADS:
        found = tuple(n for n in TORCHVISION_HEADS[cls.__name__] if n in modules)
        return found, "torchvision head attribute"
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
        except Exception:
            head = None
        for path, module in modules.items():
            if head is not None and module is head and path:
                return (path,), "the model's get_classifier()"
    last_linear = [p for p, m in modules.items() if isinstance(m, nn.Linear) and p]
    if last_linear:
        return (last_linear[-1],), "the last Linear layer"
    return (), "none found"


@dataclass
class StageLayout:
    """Parameter names of the head, the stem and each stage, in forward order."""

    head: list[str] = field(default_factory=list)
    stem: list[str] = field(default_factory=list)
    stages: list[list[str]] = field(default_factory=list)
    head_source: str = ""


def compute_layout(model: nn.Module, param_names: list[str]) -> StageLayout:
    """Split `param_names` (unique names, forward order) into head, stem and stages."""
    head_paths, source = find_head_paths(model)
    head = [n for n in param_names if any(n.startswith(h + ".") for h in head_paths)]
    head_set = set(head)
    body = [n for n in param_names if n not in head_set]
    layout = StageLayout(head=head, head_source=source)
    matched = stage_matcher(model)
    if matched is None:
        # A user's own module: its top-level children are the stages, in registration order.
        groups: dict[str, list[str]] = {}
        for n in body:
            groups.setdefault(n.split(".")[0] if "." in n else "", []).append(n)
        root_params = groups.pop("", [])
        stages = list(groups.values())
        if stages:
            stages[0] = root_params + stages[0]
        elif root_params:
            stages = [root_params]
        layout.stages = stages
        return layout
    matcher, has_stem = matched
    ordinals = {n: matcher(n) for n in body}
    grouped = group_with_matcher(((n, n) for n in body), lambda n: ordinals[n])
    groups_in_order = [grouped[k] for k in sorted(grouped)]
    # Unmatched non-head parameters (a neck or head norm) belong to the last stage, the way
    # timm's MATCH_PREV_GROUP attaches a final norm to the last block.
    if len(groups_in_order) > 1 and all(ordinals[n][0] == _UNMATCHED for n in groups_in_order[-1]):
        tail = groups_in_order.pop()
        groups_in_order[-1].extend(tail)
    if has_stem and groups_in_order and all(ordinals[n][0] == 0.0 for n in groups_in_order[0]):
        layout.stem = groups_in_order.pop(0)
    layout.stages = [g for g in groups_in_order if g]
    return layout
