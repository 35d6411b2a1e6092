"""Errors a user can act on: each says what is wrong and what to do about it.

Messages name a setting by its `train` flag, in these forms: `--weights FILE` (the schema's
metavar), `--device cpu` / `Use --device auto or cpu` (values), `without --pretrained`
(switches). The CLI prints them as written; the window puts the control that sets the same
setting in the flag's place (gui/guide.py, from the schema), so one message serves both.
"""

from __future__ import annotations


class FreezerError(Exception):
    """A problem caused by input the user controls (names, files, folders, settings).

    The CLI prints these without a traceback; the GUI shows them in a dialog or the status bar.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class ModelNotFoundError(FreezerError):
    """The model name is not known to timm, torchvision, or the given file."""


class WeightsError(FreezerError):
    """A weights file is missing, unreadable, or does not fit the architecture."""


class OfflineError(FreezerError):
    """Pretrained weights must be downloaded but there is no network and no cached copy."""


class SelectorError(FreezerError):
    """A freeze selector or preset does not match anything in the model."""


class DataError(FreezerError):
    """The image folder cannot be used for training as it is."""


class ProjectError(FreezerError):
    """A project file or run folder is missing, malformed, or would be overwritten."""


class ExportError(FreezerError):
    """An export could not be written or did not reproduce the model's outputs."""


class TargetExistsError(ExportError):
    """The export target already exists; replacing it needs an explicit yes (--force)."""

    def __init__(self, path: str, hint: str | None = None) -> None:
        super().__init__(
            f"{path} already exists and was left as it is.",
            hint or "Pass --force to replace it, or choose another --out.",
        )
        self.path = path


class Cancelled(FreezerError):
    """The user cancelled a long operation; nothing was left half-done."""
