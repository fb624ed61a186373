"""Inference backends with one contract (see `base.py`), and `load`, which picks one by file type.

    from sr_deploy.backends import load
    with load("model.onnx", device="cpu") as backend:
        y = backend(x)          # (N, 3, H, W) float32 RGB [0, 1] -> (N, 3, sH, sW) float32

| file                 | backend                                               |
|----------------------|-------------------------------------------------------|
| .pt / .pth / default | TorchBackend (any checkpoint `load_checkpoint` reads) |
| .onnx                | OnnxRuntimeBackend (backend="tensorrt": trt_build)    |
| .engine / .plan      | TensorRTBackend (needs `tensorrt`, imported lazily)   |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import TENSORRT_NOT_INSTALLED, InputError, NotInstalledError
from .base import Backend

__all__ = ["Backend", "BACKEND_NAMES", "load"]

TORCH_SUFFIXES = (".pt", ".pth")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")
BACKEND_NAMES = ("auto", "torch", "onnxruntime", "tensorrt")


def _tensorrt_backend_class() -> type:
    """`TensorRTBackend`, imported only when asked for: `tensorrt` is an optional extra."""
    try:
        from .trt_backend import TensorRTBackend
    except ImportError as exc:
        raise NotInstalledError(TENSORRT_NOT_INSTALLED) from exc
    return TensorRTBackend


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
        model: an `nn.Module`, a bundled model name (``default``), or a file: .pt/.pth
            checkpoint, .onnx, .engine/.plan.
        device: ``auto`` (cuda when PyTorch sees a GPU, else cpu), ``cpu``, ``cuda``, ``cuda:N``.
        precision: ``auto`` = fp16 on cuda, fp32 on cpu, except for ONNX Runtime where it means
            the file's own precision; or ``fp32`` / ``fp16`` / ``bf16``.
        backend: ``auto`` (by suffix), ``torch``, ``onnxruntime`` or ``tensorrt`` (an .onnx file
            is then built into an engine by the TensorRT backend).
        options: passed to the backend's constructor (e.g. ``channels_last``, ``compile`` for
            torch; ``threads``, ``trt_ep_options`` for ONNX Runtime).

    Raises:
        InputError: missing file, unsupported suffix, a backend that cannot read this file type.
        NotInstalledError: TensorRT / CUDA / onnxruntime-gpu asked for but absent.
    """
    from .torch_backend import TorchBackend, resolve_device, resolve_precision

    backend = (backend or "auto").lower()
    if backend == "ort":
        backend = "onnxruntime"
    if backend not in BACKEND_NAMES:
        raise InputError(f"unknown backend {backend!r}: expected one of {', '.join(BACKEND_NAMES)}")

    if isinstance(model, nn.Module):
        if backend not in ("auto", "torch"):
            raise InputError(f"an in-memory nn.Module runs on the torch backend only (asked for {backend}); "
                             "export it first with sr_deploy.export.export_onnx")
        dev = resolve_device(device)
        return TorchBackend(model, getattr(model, "scale", None), dev, resolve_precision(precision, dev), **options)

    from ..models import load_checkpoint, resolve_model_path

    path = resolve_model_path(model)
    suffix = path.suffix.lower()
    known = TORCH_SUFFIXES + ONNX_SUFFIXES + ENGINE_SUFFIXES
    if suffix not in known:
        raise InputError(f"{path}: unsupported model file type {suffix or '(no suffix)'!r}; "
                         f"expected one of {', '.join(known)}")
    if not path.is_file():
        raise InputError(f"{path}: no such model file")

    if suffix in TORCH_SUFFIXES:
        if backend not in ("auto", "torch"):
            raise InputError(f"{path}: a PyTorch checkpoint runs on the torch backend only (asked for {backend}); "
                             f"export it first: sr-deploy export {path} -o model.onnx")
        ckpt = load_checkpoint(path)
        dev = resolve_device(device)
        return TorchBackend(ckpt.model, ckpt.scale, dev, resolve_precision(precision, dev), **options)

    if suffix in ONNX_SUFFIXES:
        if backend == "torch":
            raise InputError(f"{path}: an ONNX file cannot run on the torch backend; use onnxruntime or tensorrt")
        if backend == "tensorrt":  # build on first use (engine cache), then run the engine
            from .trt_build import load_tensorrt_from_onnx

            dev = "cuda" if device == "auto" else device
            return load_tensorrt_from_onnx(path, device=dev, precision=_trt_precision(precision), **options)
        from .ort_backend import OnnxRuntimeBackend

        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return OnnxRuntimeBackend(path, device=device, precision=precision, **options)

    # .engine / .plan
    if backend not in ("auto", "tensorrt"):
        raise InputError(f"{path}: a TensorRT engine runs on the tensorrt backend only (asked for {backend})")
    dev = "cuda" if device == "auto" else device
    return _tensorrt_backend_class()(path, device=dev, precision=_trt_precision(precision), **options)


def _trt_precision(precision: str) -> str:
    """TensorRT runs on a GPU, so `auto` means fp16 there."""
    return "fp16" if (precision or "auto").lower() == "auto" else precision
