"""Which Python files a model may run, and who said so.

A model string ``PATH.py:CALLABLE`` imports PATH when the model is built. It runs when the user
named it: the ``--model`` flag of ``train``, the MODEL argument of ``inspect``/``eval``/
``predict``/``export``, the window's "Open model file (.py)…" dialog. A ``.py`` named by a file
(a project.json, a run folder, a bundle's config.json, a weights file's ``freezer.model``
metadata) runs only when the user trusts it: ``--trust-code`` on the command line (as Hugging
Face's ``trust_remote_code``), or a yes to the window's question, which shows the file's path and
SHA-256 (``confirm``). Otherwise building raises UntrustedCodeError, naming the file.

A file allowed once is allowed for the rest of the process while its contents stay the same
(the same path and SHA-256): an export reloading the bundle it just wrote, or the window's
evaluation of a run it trained, does not ask again. No Qt here: the window passes its question in.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from freezer_app.core.errors import FreezerError

TRUST_FLAG = "--trust-code"


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's contents, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class CodeFile:
    """A Python file that building a model would import."""

    path: Path  # absolute
    digest: str  # SHA-256 of its contents
    named_in: str  # the file whose contents named it; "" when the user named it


class UntrustedCodeError(FreezerError):
    """A model would import a Python file that a file (not the user) named, without trust."""

    def __init__(self, code: CodeFile) -> None:
        super().__init__(
            f"{code.named_in} names the Python file {code.path} as its model; building the "
            "model would run that file's code, so it was not run.",
            f"If you trust {code.path.name} (SHA-256 {code.digest[:16]}…), pass {TRUST_FLAG} "
            "(in the window: answer Yes when asked).",
        )
        self.code = code


Confirm = Callable[[CodeFile], bool]

_approved: set[tuple[Path, str]] = set()
_lock = threading.Lock()


def approved(code: CodeFile) -> bool:
    """Whether this file, with these contents, was allowed earlier in this process."""
    with _lock:
        return (code.path, code.digest) in _approved


def _approve(code: CodeFile) -> None:
    with _lock:
        _approved.add((code.path, code.digest))


def approve_copy(original: str | Path, copy: str | Path) -> bool:
    """Allow `copy` when it has the contents of `original` and `original` was allowed in this
    process (a bundle carries a copy of the model file it was exported from, and its check
    builds the model from that copy). Returns whether it was allowed."""
    original, copy = Path(original).resolve(), Path(copy).resolve()
    digest = file_digest(original)
    if file_digest(copy) != digest or not approved(CodeFile(original, digest, "")):
        return False
    _approve(CodeFile(copy, digest, ""))
    return True


@dataclass(frozen=True)
class CodeTrust:
    """Whether a model's factory file may be imported.

    from_user: the model string itself came from the user (a flag, an argument, a file dialog),
        so a ``.py`` it names runs. False when it was read from the file `source`.
    trust_code: a ``.py`` named by any file runs too (``--trust-code``).
    confirm: asked about a ``.py`` named by a file when trust_code is off (the window's dialog;
        it is called on the thread that builds the model).
    """

    from_user: bool = True
    source: str = ""
    trust_code: bool = False
    confirm: Confirm | None = None

    @classmethod
    def from_file(
        cls, source: str | Path, trust_code: bool = False, confirm: Confirm | None = None
    ) -> CodeTrust:
        """For a model string read from the file `source`."""
        return cls(False, str(source), trust_code, confirm)

    def read_from(self, source: str | Path) -> CodeTrust:
        """The same trust, for a model string read from the file `source`."""
        return replace(self, from_user=False, source=str(source))

    def require(self, path: str | Path, named_in: str = "") -> CodeFile | None:
        """Allow importing `path`, or raise UntrustedCodeError.

        named_in: the file whose contents named `path`; "" when the model string did (then it
        is the user's unless this trust says the string was read from a file). Returns None
        when there is no such file (nothing can run; the builder says it is missing).
        """
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            return None
        if not named_in and not self.from_user:
            named_in = self.source or "A file"
        code = CodeFile(path, file_digest(path), named_in)
        if (
            not code.named_in
            or self.trust_code
            or approved(code)
            or (self.confirm is not None and self.confirm(code))
        ):
            _approve(code)
            return code
        raise UntrustedCodeError(code)


USER = CodeTrust()
