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


class NonFiniteOutput(SRDeployError):
    """The model produced NaN or Inf (after the fp32 retry, where there is one)."""


# What a missing optional install is called, one text per extra, wherever it is found missing.
TENSORRT_NOT_INSTALLED = "TensorRT is not installed: pip install 'sr-deploy[tensorrt]' on a machine with an NVIDIA GPU"
ORT_GPU_NOT_INSTALLED = (
    "onnxruntime-gpu with the CUDA execution provider is not installed: "
    "pip uninstall onnxruntime && pip install 'sr-deploy[gpu]' on a machine with an NVIDIA GPU"
)

__all__ = [
    "ORT_GPU_NOT_INSTALLED",
    "TENSORRT_NOT_INSTALLED",
    "InputError",
    "NonFiniteOutput",
    "NotInstalledError",
    "SRDeployError",
]
