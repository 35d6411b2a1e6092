"""The torchvision constructor quirks Freezer must know about, written once.

GoogLeNet and Inception v3 are built with auxiliary classifiers by default (their training-mode
output is then a tuple) and carry a ``transform_input`` flag that is not part of the
``state_dict``: torchvision's pretrained weights expect it on, a model built without weights has
it off. Building, loading weights, exporting a bundle and the code a bundle's README gives must
all agree on these, so they all ask this module:

- ``constructor_kwargs(name, pretrained)``  extra arguments for ``torchvision.models.get_model``
- ``strip_aux_heads(name, model)``          drop the auxiliary classifiers after the weights load
- ``transform_input_of(name, model)`` / ``set_transform_input(name, model, value)``
- ``loader_kwargs`` / ``constructor_code`` / ``loader_code``: how to rebuild a trained model
  with torchvision alone, so that its ``state_dict`` loads and it computes the same logits
- ``AUX_HEADS``: the auxiliary classifiers' last layers (they change size with num_classes)
"""

from __future__ import annotations

from typing import Any

from torch import nn

# Model name -> the attributes holding auxiliary classifiers.
AUX_CLASSIFIERS: dict[str, tuple[str, ...]] = {
    "googlenet": ("aux1", "aux2"),
    "inception_v3": ("AuxLogits",),
}
# Model class -> module paths of the auxiliary classifiers' output layers (present only while
# the model is built with aux_logits, e.g. to load torchvision's pretrained weights).
AUX_HEADS: dict[str, tuple[str, ...]] = {
    "GoogLeNet": ("aux1.fc2", "aux2.fc2"),
    "Inception3": ("AuxLogits.fc",),
}


def has_quirks(name: str) -> bool:
    """Whether the torchvision model `name` needs any of the arguments below."""
    return name in AUX_CLASSIFIERS


def constructor_kwargs(name: str, pretrained: bool = False) -> dict[str, Any]:
    """Extra keyword arguments for ``torchvision.models.get_model(name, weights=None, ...)``.

    pretrained: the model is about to receive torchvision's pretrained weights, which hold the
    auxiliary classifiers and expect ``transform_input`` on (as torchvision's own builders do);
    call ``strip_aux_heads`` once they are loaded. Otherwise the model is built without
    auxiliary classifiers (training-mode outputs stay plain logits) and initialised the way
    torchvision will by default.
    """
    if not has_quirks(name):
        return {}
    if pretrained:
        return {"aux_logits": True, "init_weights": False, "transform_input": True}
    return {"aux_logits": False, "init_weights": True}


def strip_aux_heads(name: str, model: nn.Module) -> None:
    """Remove the auxiliary classifiers (fine-tuning uses the main head only)."""
    if not has_quirks(name):
        return
    model.aux_logits = False
    for attr in AUX_CLASSIFIERS[name]:
        setattr(model, attr, None)


def transform_input_of(name: str, model: nn.Module) -> bool | None:
    """The model's ``transform_input`` flag, or None for models without one."""
    if not has_quirks(name):
        return None
    return bool(getattr(model, "transform_input", False))


def set_transform_input(name: str, model: nn.Module, value: bool) -> None:
    if has_quirks(name):
        model.transform_input = bool(value)


def loader_kwargs(name: str, transform_input: bool | None = None) -> dict[str, Any]:
    """Keyword arguments that rebuild a model Freezer trained so its state_dict loads into it.

    No auxiliary classifiers (Freezer trains without them), no initialisation (the weights are
    loaded next), and the ``transform_input`` flag the trained model had.
    """
    if not has_quirks(name):
        return {}
    return {"aux_logits": False, "init_weights": False, "transform_input": bool(transform_input)}


def constructor_code(name: str, num_classes: int, transform_input: bool | None = None) -> str:
    """The ``torchvision.models.get_model(...)`` expression that rebuilds the trained model."""
    args = [repr(name), f"num_classes={num_classes}"]
    args += [f"{k}={v!r}" for k, v in loader_kwargs(name, transform_input).items()]
    return f"torchvision.models.get_model({', '.join(args)})"


def loader_code(name: str, num_classes: int, transform_input: bool | None = None) -> str:
    """Python lines (needing ``import torchvision``) that build ``model`` ready for the weights."""
    lines = []
    if has_quirks(name):
        lines.append(
            "# No auxiliary classifiers (trained without them); transform_input as when trained."
        )
    lines.append(f"model = {constructor_code(name, num_classes, transform_input)}")
    return "\n".join(lines)
