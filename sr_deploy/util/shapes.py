"""Shapes written as text on the command line: ``270x480``, ``1x256x256``, ``1x3x64x64``."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError

__all__ = ["parse_dims"]


def parse_dims(text: str, *, what: str, expected: str, counts: Sequence[int]) -> tuple[int, ...]:
    """Integers separated by ``x`` (any case; ``*`` and ``,`` too) -> a tuple, each >= 1.

    Args:
        text: e.g. ``"1x3x64x64"``; spaces around the parts are ignored.
        what: how the message names the value (an option such as ``--static``).
        expected: the accepted form(s), with an example, for the message.
        counts: the numbers of parts accepted (e.g. ``(3, 4)`` for NxHxW or NxCxHxW).

    Raises:
        InputError: ``{what} {text!r}: expected {expected}`` when a part is not an integer or the
            number of parts is not in `counts`; ``...: every dimension must be >= 1`` otherwise.
    """
    parts = str(text).strip().lower().replace("*", "x").replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise InputError(f"{what} {text!r}: expected {expected}") from None
    if len(dims) not in counts:
        raise InputError(f"{what} {text!r}: expected {expected} ({len(dims)} dimensions given)")
    if min(dims) < 1:
        raise InputError(f"{what} {text!r}: every dimension must be >= 1")
    return dims
