"""Text that is safe to show: names taken from files and folders, escaped before printing."""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """`text` with control and other invisible characters escaped, for a terminal or a dialog.

    A class folder or file name can hold anything a file system allows: ANSI escape codes
    (which would recolour or rewrite the terminal), newlines (which would forge extra report
    lines), bidirectional overrides (which reorder what is shown) and, on Linux, bytes that are
    not UTF-8 (which `print` cannot encode). Each such character is written as a Python-style
    escape (`\\x1b`, `\\n`, `\\u202e`, `\\udcff`); everything else, spaces and non-ASCII letters
    included, is kept as it is.
    """
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or unicodedata.category(ch) == "Zs":
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        else:
            code = ord(ch)
            out.append(
                f"\\x{code:02x}"
                if code < 0x100
                else f"\\u{code:04x}"
                if code < 0x10000
                else f"\\U{code:08x}"
            )
    return "".join(out)


def byte_size(n: float) -> str:
    """Bytes in 1024-based units, as every message and view writes them: 512 B, 56.2 KB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TB"
