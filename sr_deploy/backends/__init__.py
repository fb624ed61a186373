"""Inference backends with one contract (see `base.py`), one table (see `table.py`), and `load`,
which picks a backend by file type.

    from sr_deploy.backends import load
    with load("model.onnx", device="cpu") as backend:
        y = backend(x)          # (N, 3, H, W) float32 RGB [0, 1] -> (N, 3, sH, sW) float32

| file                 | backend                                               |
|----------------------|-------------------------------------------------------|
| .pt .pth .ckpt .safetensors / default | TorchBackend (any checkpoint `load_checkpoint` reads) |
| .onnx                | OnnxRuntimeBackend (backend="tensorrt": trt_build)    |
| .engine / .plan      | TensorRTBackend (needs `tensorrt`, imported lazily)   |

Importing this package is cheap (numpy only): torch and the runtimes are imported when a
backend is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError
from .base import Backend
from .table import AUTO, BACKEND_NAMES, BACKENDS, BackendSpec, runner_for, spec_for_suffix, spec_named

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BACKENDS", "BACKEND_NAMES", "Backend", "BackendSpec", "load", "runner_for", "spec_for_suffix", "spec_named"]


def load(
    model: str | Path | nn.Module,
    device: str = "auto",
    precision: str = "auto",
    *,
    backend: str = "auto",
    **options: Any,
) -> Backend:
    """A ready backend for `model`.

    Args:
        model: an `nn.Module`, a bundled model name (``default``), or a file: .pt/.pth/.ckpt/.safetensors
            checkpoint, .onnx, .engine/.plan.
        device: ``auto`` (cuda when PyTorch sees a GPU, else cpu), ``cpu``, ``cuda``, ``cuda:N``.
        precision: ``auto`` = fp16 on cuda, fp32 on cpu, except for ONNX Runtime where it means
            the file's own precision; or ``fp32`` / ``fp16`` / ``bf16``.
        backend: ``auto`` (by suffix) or a name from the backend table (``torch``,
            ``onnxruntime``/``ort``, ``tensorrt``/``trt``: an .onnx file is then built into an
            engine by the TensorRT backend).
        options: passed to the backend's constructor (e.g. ``channels_last``, ``compile`` for
            torch; ``threads``, ``trt_ep_options`` for ONNX Runtime).

    Raises:
        InputError: missing file, unsupported suffix, a backend that cannot read this file type.
        NotInstalledError: TensorRT / CUDA / onnxruntime-gpu asked for but absent.
    """
    from torch import nn

    asked = None if (backend or AUTO).lower() == AUTO else spec_named(backend)
    if isinstance(model, nn.Module):
        runner = asked or next(spec for spec in BACKENDS if spec.runs_modules)
        if not runner.runs_modules:
            raise InputError(
                f"an in-memory nn.Module runs on the torch backend only (asked for {runner.name}); "
                "export it first with sr_deploy.export.export_onnx"
            )
        return runner.open(model, device, precision, **options)

    from ..models import existing_model_path

    path = existing_model_path(model)
    return runner_for(path, backend).open(path, device, precision, **options)
