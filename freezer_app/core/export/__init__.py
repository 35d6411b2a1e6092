"""Exports that other tools load as they are.

- ``bundle``       a folder in the Hugging Face / timm layout (``bundle.py``, README by
                   ``model_card.py``): ``model.safetensors``, ``config.json``, the freeze plan,
                   the training record and a model card
- ``pth``          the ``state_dict``, for ``torch.load(PATH, weights_only=True)``, with
                   ``MODEL.config.json`` beside it (labels, preprocessing)
- ``torchscript``  a traced module, for ``torch.jit.load``; ``config.json`` as an extra file
- ``pt2``          a torch.export ExportedProgram (dynamic batch), ``config.json`` as an extra file
- ``onnx``         ONNX by torch.export's exporter (dynamic batch, and height/width where the
                   model allows; the TorchScript-based exporter as the fallback), validated
                   with onnxruntime when installed; ``labels`` and ``config`` in metadata_props
- ``triton``       a Triton model repository (config.pbtxt, labels.txt, 1/model.onnx)
- ``code``         the freeze plan as a PyTorch snippet and as JSON (``formats.py``)

``api.export`` is the entry point. Every export is written under a temporary name and renamed
when complete: a failed or cancelled export leaves nothing behind (a full disk or a denied write
is an ``ExportWriteError``). ``force=True`` replaces only a previous export of the same kind: a
folder Freezer wrote (marked by ``.freezer-export``) or a single regular file; any other target
is refused (``replace_refusal``). pth, TorchScript, pt2, ONNX and bundle exports are reloaded and their
logits compared with the model's before they are put in place.
"""

from freezer_app.core.export.api import (
    CHECKPOINTS,
    FORMAT_TITLES,
    FORMATS,
    MARKER,
    ExportResult,
    ExportSource,
    ExportWriteError,
    available_checkpoints,
    default_export_path,
    existing_targets,
    export,
    replace_refusal,
)

__all__ = [
    "CHECKPOINTS",
    "FORMATS",
    "FORMAT_TITLES",
    "MARKER",
    "ExportResult",
    "ExportSource",
    "ExportWriteError",
    "available_checkpoints",
    "default_export_path",
    "existing_targets",
    "export",
    "replace_refusal",
]
