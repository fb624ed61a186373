"""Text for one-line messages."""

from __future__ import annotations

import re

__all__ = ["first_line"]

_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException | str, limit: int = 240) -> str:
    """The first line of an exception's message (ANSI colours removed, cut to `limit`), or the
    exception's type name when it has no message: what a one-line error shows of a cause."""
    text = _ANSI_COLOUR.sub("", str(exc)).strip()
    line = text.splitlines()[0] if text else (type(exc).__name__ if isinstance(exc, BaseException) else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."
