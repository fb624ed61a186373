"""Progress messages: one callback type for every long-running function, and the package logger.

A function that reports progress takes a `Progress` (``Callable[[str], None]``): the CLI passes
one that prints to stderr, tests pass ``messages.append``, library users ``None`` for silence or
`to_logger` to route messages into `logging` under the ``sr_deploy`` logger.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

__all__ = ["LOGGER", "Progress", "progress_to", "silent", "to_logger", "to_stderr"]

LOGGER = logging.getLogger("sr_deploy")

Progress = Callable[[str], None]
"""A callback that receives one human-readable progress line (no trailing newline)."""


def to_stderr(message: str) -> None:
    """Print `message` to stderr at once (progress must not wait for a buffer)."""
    print(message, file=sys.stderr, flush=True)


def silent(message: str) -> None:
    """Drop `message`."""


def to_logger(message: str) -> None:
    """Log `message` at INFO on the ``sr_deploy`` logger."""
    LOGGER.info(message)


def progress_to(progress: bool | Progress | None) -> Progress:
    """The callback for a ``progress`` argument: a callable is used as is, True prints to stderr,
    False / None is silent."""
    if callable(progress):
        return progress
    return to_stderr if progress else silent
