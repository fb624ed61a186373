"""Progress messages: one callback type for every long-running function, and the package logger.

A function that reports progress takes a `Progress` (``Callable[[str], None]``): the CLI passes
one that prints to stderr, tests pass ``messages.append``, library users ``None`` for silence or
`to_logger` to route messages into `logging` under the ``sr_deploy`` logger.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Callable, Iterator

__all__ = [
    "DEBUG_ENV",
    "LOGGER",
    "debug_traceback",
    "Progress",
    "progress_to",
    "quiet",
    "silent",
    "to_logger",
    "to_stderr",
]

LOGGER = logging.getLogger("sr_deploy")

Progress = Callable[[str], None]
"""A callback that receives one human-readable progress line (no trailing newline)."""


# Set by `sr-deploy --debug` (and inherited by subprocesses and Ray workers started after it).
DEBUG_ENV = "SR_DEPLOY_DEBUG"


def debug_traceback() -> str:
    """The traceback of the exception being handled, when `--debug` is on, else ""; for errors
    that are caught and reported per file instead of ending the run."""
    import os
    import traceback

    return traceback.format_exc().rstrip() if os.environ.get(DEBUG_ENV) == "1" else ""


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


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Silence a third-party call's prints, warnings and torch log records; yields the captured
    text (for error messages)."""
    buffer = io.StringIO()
    # torch logs "torchvision is not installed. Skipping ...", and whole graphs when torch.export
    # fails: the one-line reason we report says enough.
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        torch_logger.setLevel(level)
