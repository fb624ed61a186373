"""Errors that the CLI turns into one line on stderr and an exit code.

`InputError` (exit 2) is for bad usage or bad input: a missing or unreadable file, a wrong
suffix, an argument out of range. `SRDeployError` (exit 1) is for a runtime failure after the
input was accepted (a parity check that failed, a build that failed). Every message names the
file it is about, so the one line is enough to act on.
"""

from __future__ import annotations


class SRDeployError(Exception):
    """A failure reported as one line; exit code 1 (runtime failure)."""

    exit_code = 1


class InputError(SRDeployError):
    """Bad usage or bad input (missing file, wrong format, bad argument); exit code 2."""

    exit_code = 2


class NotInstalledError(InputError):
    """An optional dependency (TensorRT, CUDA, onnxruntime-gpu...) is not available; exit code 2."""


def first_line(exc: BaseException | str, limit: int = 240) -> str:
    """The first line of an exception's message (ANSI colours removed, cut to `limit`), or the
    exception's type name when it has no message: what a one-line error shows of a cause."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    line = text.splitlines()[0] if text else (type(exc).__name__ if isinstance(exc, BaseException) else "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


TENSORRT_NOT_INSTALLED = (
    "TensorRT is not installed: pip install 'sr-deploy[tensorrt]' on a machine with an NVIDIA GPU"
)
