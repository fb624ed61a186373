"""The one table of backends. Everything that lists, picks or opens a backend reads it:
`sr_deploy.backends.load` (which backend for which file), the benchmark's backend list and
skip reasons, and the CLI's ``--backend`` choices.

A new backend is one module in this folder (a `Backend` subclass implementing `infer`) plus one
`BackendSpec` row in `BACKENDS` below: its name, the model-file kinds it opens (rows of
`sr_deploy.model_file.MODEL_FILE_KINDS`, which knows their suffixes), an availability check that
says why it cannot run here, and an opener.

This module imports nothing heavy (no torch, onnxruntime or tensorrt at import time): the CLI
reads the names from it before any command runs.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ORT_GPU_NOT_INSTALLED, TENSORRT_NOT_INSTALLED, InputError, NotInstalledError
from ..model_file import file_kind

if TYPE_CHECKING:
    from .base import Backend


@dataclass(frozen=True)
class BackendSpec:
    """One row of the backend table.

    Attributes:
        name: what ``--backend`` and `load(backend=...)` accept (``torch``, ``onnxruntime``...).
        kinds: the model-file kinds this backend opens when ``backend="auto"`` (their suffixes:
            `suffixes`).
        also_opens_kinds: further kinds it opens when asked for by name (TensorRT builds an
            engine from an ``.onnx`` file).
        refusal: the message for a file with one of `suffixes` asked to run on another backend;
            ``{path}`` and ``{backend}`` are filled in.
        available: device -> None when the backend can run on that device here, else the reason
            (one line). Cheap: it may import the runtime but builds nothing.
        open: (model file or nn.Module, device, precision, **options) -> a ready `Backend`.
        aliases: other accepted spellings (``ort``, ``trt``).
        host_input: the array kind it takes without a conversion when the data is on the CPU
            (``torch`` or ``numpy``): the benchmark times the backend on that kind.
        variants: benchmark variants of this backend, name -> extra options
            (``torch-nchw`` = torch with ``channels_last=False``).
        runs_modules: opens an in-memory ``nn.Module`` as well as files.
    """

    name: str
    kinds: tuple[str, ...]
    refusal: str
    available: Callable[[str], str | None]
    open: Callable[..., Backend]
    also_opens_kinds: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    host_input: str = "numpy"
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    runs_modules: bool = False

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(s for kind in self.kinds for s in file_kind(kind).suffixes)

    @property
    def also_opens(self) -> tuple[str, ...]:
        return tuple(s for kind in self.also_opens_kinds for s in file_kind(kind).suffixes)

    def opens(self, suffix: str) -> bool:
        return suffix in self.suffixes or suffix in self.also_opens


# ---------------------------------------------------------------------------------- availability


def _cuda_reason(device: str) -> str | None:
    """Why `device` cannot be used by PyTorch here, or None."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA device: PyTorch {torch.__version__} sees no GPU here"
    return None


def _torch_available(device: str) -> str | None:
    return _cuda_reason(device)


def _onnxruntime_available(device: str) -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed: pip install onnxruntime"
    if device.startswith("cuda"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return f"{ORT_GPU_NOT_INSTALLED}; or add an onnxruntime@cpu row for ONNX Runtime on the CPU"
    return None


def _tensorrt_available(device: str) -> str | None:
    reason = _cuda_reason(device)
    if reason:
        return reason
    if importlib.util.find_spec("tensorrt") is None:
        return TENSORRT_NOT_INSTALLED
    if not device.startswith("cuda"):
        return "TensorRT runs on a CUDA device only (this row asked for the CPU)"
    return None


# ---------------------------------------------------------------------------------- openers


def _open_torch(model: Any, device: str, precision: str, **options: Any) -> Backend:
    """``auto`` precision: fp16 on CUDA; on the CPU bf16 where it is faster and passes parity, else
    fp32 (`cpu_precision`). The backend's `precision_reason` says which and why."""
    from torch import nn

    from .torch_backend import TorchBackend, resolve_device, resolve_precision

    dev = resolve_device(device)
    live = None
    if isinstance(model, nn.Module):
        net, scale, sha256 = model, getattr(model, "scale", None), None
    else:
        from ..models import load_checkpoint

        ckpt = load_checkpoint(model)
        net, scale, sha256, live = ckpt.model, ckpt.scale, ckpt.sha256, ckpt.live_values_per_hr_pixel
    reason = ""
    if (precision or AUTO).lower() == AUTO:
        from .cpu_precision import auto_precision

        choice = auto_precision(net, sha256, scale, dev)
        precision, reason = choice.precision, choice.reason
    backend = TorchBackend(net, scale, dev, resolve_precision(precision, dev), **options)
    if live is not None:  # the detection's memory figure travels on the backend
        backend.live_values_per_hr_pixel = live
    backend.precision_reason = reason or f"{backend.precision}: asked for with --precision"
    return backend


def _open_onnxruntime(path: Path, device: str, precision: str, **options: Any) -> Backend:
    from .ort_backend import OnnxRuntimeBackend

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return OnnxRuntimeBackend(path, device=device, precision=precision, **options)


def _open_tensorrt(path: Path, device: str, precision: str, **options: Any) -> Backend:
    """TensorRT runs on a GPU: ``auto`` means cuda and fp16. An ``.onnx`` is built into an engine
    on first use and reused from the engine cache (`sr_deploy.backends.trt_build`)."""
    device = "cuda" if device == "auto" else device
    precision = "fp16" if (precision or "auto").lower() == "auto" else precision
    try:
        if path.suffix.lower() in file_kind("onnx").suffixes:
            from .trt_build import load_tensorrt_from_onnx as opener
        else:
            from .trt_backend import TensorRTBackend as opener
    except ImportError as exc:
        raise NotInstalledError(TENSORRT_NOT_INSTALLED) from exc
    return opener(path, device=device, precision=precision, **options)


def opener(module: str, name: str) -> Callable[..., Backend]:
    """An opener that imports `name` from the module `module` of this package when a backend is
    opened (so that the table stays cheap to import): a new backend's row says
    ``open=opener("my_backend", "MyBackend")``; it is called as (path, device, precision, **options)."""

    def open_backend(model: Any, device: str, precision: str, **options: Any) -> Backend:
        found = getattr(importlib.import_module(f"{__package__}.{module}"), name)
        return found(model, device=device, precision=precision, **options)

    return open_backend


# ---------------------------------------------------------------------------------- the table

BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec(
        name="torch",
        kinds=("checkpoint",),
        runs_modules=True,
        host_input="torch",
        refusal=(
            "{path}: a PyTorch checkpoint runs on the torch backend only (asked for {backend}); "
            "export it first: sr-deploy export {path} -o model.onnx"
        ),
        available=_torch_available,
        open=_open_torch,
        variants={"torch-nchw": {"channels_last": False}},
    ),
    BackendSpec(
        name="onnxruntime",
        kinds=("onnx",),
        aliases=("ort",),
        refusal="{path}: an ONNX file cannot run on the {backend} backend; use onnxruntime or tensorrt",
        available=_onnxruntime_available,
        open=_open_onnxruntime,
    ),
    BackendSpec(
        name="tensorrt",
        kinds=("engine",),
        also_opens_kinds=("onnx",),
        aliases=("trt",),
        refusal="{path}: a TensorRT engine runs on the tensorrt backend only (asked for {backend})",
        available=_tensorrt_available,
        open=_open_tensorrt,
    ),
)

AUTO = "auto"
BACKEND_NAMES: tuple[str, ...] = (AUTO,) + tuple(spec.name for spec in BACKENDS)
"""What ``--backend`` accepts: ``auto`` (by file type) and every backend's name."""

MODEL_SUFFIXES: tuple[str, ...] = tuple(s for spec in BACKENDS for s in spec.suffixes)
"""Every model-file suffix some backend opens, in table order."""


def bench_names() -> tuple[str, ...]:
    """The benchmark's backend names: each backend, then its variants (torch, torch-nchw, ...)."""
    return tuple(n for spec in BACKENDS for n in (spec.name, *spec.variants))


def spec_named(name: str) -> BackendSpec:
    """The row for a backend name or alias (case-insensitive); InputError for an unknown name."""
    key = (name or AUTO).lower()
    for spec in BACKENDS:
        if key == spec.name or key in spec.aliases:
            return spec
    raise InputError(f"unknown backend {name!r}: expected one of {', '.join(BACKEND_NAMES)}")


def spec_for_bench_name(name: str) -> tuple[BackendSpec, dict[str, Any]]:
    """A benchmark backend name (``torch-nchw``, an alias...) -> (its row, the variant's options)."""
    key = (name or "").lower()
    for spec in BACKENDS:
        if key in spec.variants:
            return spec, dict(spec.variants[key])
    return spec_named(key), {}


def runner_for(path: Path, backend: str = AUTO) -> BackendSpec:
    """The row that runs the model file `path` when asked for `backend` (``auto``: the one its
    suffix says). InputError with the file kind's `refusal` when that backend cannot open it (a
    checkpoint on tensorrt, an ONNX file on torch): the rule `load` applies, for a command that
    hands the pair to another process (a Triton model) and must refuse it before writing."""
    owner = spec_for_suffix(path)
    runner = owner if (backend or AUTO).lower() == AUTO else spec_named(backend)
    if not runner.opens(path.suffix.lower()):
        raise InputError(owner.refusal.format(path=path, backend=runner.name))
    return runner


def spec_for_suffix(path: Path) -> BackendSpec:
    """The row that opens `path` by default, from its suffix; InputError for an unknown suffix."""
    suffix = path.suffix.lower()
    for spec in BACKENDS:
        if suffix in spec.suffixes:
            return spec
    raise InputError(
        f"{path}: unsupported model file type {suffix or '(no suffix)'!r}; expected one of {', '.join(MODEL_SUFFIXES)}"
    )
