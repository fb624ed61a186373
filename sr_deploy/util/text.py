"""Text for one-line messages."""

from __future__ import annotations

import re

__all__ = ["PROVENANCE_KEY", "first_line", "provenance", "shown"]

# The PNG text field and the video container tag (`comment`) that say how an output was made.
PROVENANCE_KEY = "sr-deploy"

_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException | str, limit: int = 240) -> str:
    """The first line of an exception's message (ANSI colours removed, cut to `limit`), or the
    exception's type name when it has no message: what a one-line error shows of a cause."""
    text = _ANSI_COLOUR.sub("", str(exc)).strip()
    line = text.splitlines()[0] if text else (type(exc).__name__ if isinstance(exc, BaseException) else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def shown(value: object) -> str:
    """`value` as text for one line of output: control characters (a newline or a tab inside a
    file name, an escape sequence) written as Python escapes (``\\n``, ``\\x1b``), so that a
    name cannot break a line that scripts read or paint the terminal; everything else as is."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text)


def provenance(model_id: str, precision: str) -> str:
    """What an output says about how it was made (PNG text field `PROVENANCE_KEY`, a video's
    ``comment`` tag): the model (file name and sha256 prefix) and the precision the job ran in,
    e.g. ``model=default.pt:1a2b3c4d5e6f7a8b precision=fp32``."""
    return f"model={model_id} precision={precision}"
