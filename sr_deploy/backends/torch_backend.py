"""PyTorch backend: a generator `nn.Module` run under `torch.inference_mode`.

BatchNorm is folded into the preceding convs once at construction, the model is put in eval
mode and cast to the compute precision. Inputs and outputs are always float32 RGB NCHW
(the contract in `base.py`); with fp16 / bf16 only the computation inside is reduced.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InputError, NotInstalledError
from ..models import fold_batch_norm
from ..models.registry import live_values_per_hr_pixel
from ..models.subpixel import move_tail_before_shuffle
from ..util.malloc import keep_freed_memory
from .base import TORCH, Backend, check_batch_shape

TORCH_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when a CUDA GPU is visible, else `cpu`; `cuda`/`cuda:N` are checked
    to be available (NotInstalledError otherwise)."""
    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise NotInstalledError(f"device {device!r}: CUDA is not available to PyTorch on this machine")
        return device
    raise InputError(f"unknown device {device!r}: expected auto, cpu, cuda or cuda:N")


def resolve_precision(precision: str | None, device: str) -> str:
    """`auto` -> fp16 on CUDA, fp32 on the CPU; otherwise one of fp32 / fp16 / bf16."""
    precision = (precision or "auto").lower()
    aliases = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}
    precision = aliases.get(precision, precision)
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision not in TORCH_DTYPES:
        raise InputError(f"unknown precision {precision!r}: expected auto, fp32, fp16 or bf16")
    return precision


class TorchBackend(Backend):
    """Runs `model` with PyTorch.

    Args:
        model: a generator mapping (N, 3, H, W) float RGB [0, 1] to (N, 3, sH, sW). It is not
            modified: BN folding works on a copy.
        scale: the model's upscaling factor; None reads `model.scale`.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (``auto`` picks cuda when available).
        precision: ``fp32``, ``fp16`` or ``bf16`` compute (``auto``: fp16 on CUDA, fp32 on CPU).
            Inputs and outputs stay float32.
        channels_last: NHWC memory format inside (faster convs on CPU with oneDNN and on
            tensor cores); results equal NCHW to float rounding.
        compile: wrap the model in `torch.compile` (first calls per shape are slow).
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        scale: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        device = resolve_device(device)
        precision = resolve_precision(precision, device)
        if scale is None:
            scale = getattr(model, "scale", None)
            if scale is None:
                raise InputError(f"{type(model).__name__}: no `scale` attribute; pass scale=")
        super().__init__(int(scale), precision, device, None)
        # the registry's memory figure for this module's architecture (the opener of a checkpoint
        # replaces it with the detection's own)
        self.live_values_per_hr_pixel = live_values_per_hr_pixel(getattr(model, "arch", None) or type(model).__name__)
        if device == "cpu":
            keep_freed_memory()  # no page faults for every fresh feature map (util/malloc.py)
        self.dtype = TORCH_DTYPES[precision]
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        net = fold_batch_norm(model)
        if device == "cpu":
            # SRResNet's 3-channel output conv wastes 13 of 16 AVX-512 lanes: run it before the last
            # pixel shuffle instead (same function; 1.4x faster on the bundled model, models/subpixel.py).
            net = move_tail_before_shuffle(net)
        net = net.float().to(device=device, dtype=self.dtype)
        net = net.to(memory_format=self.memory_format)
        for p in net.parameters():
            p.requires_grad_(False)
        self.model: nn.Module | Any = torch.compile(net) if compile else net

    def input_kinds(self, kind: str) -> tuple[str, ...]:
        return (TORCH,)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float tensor on any device -> (N, 3, sH, sW) float32 on this backend's device."""
        x = x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=self.memory_format)
        with torch.inference_mode():
            y = self.model(x)
        return y.float().contiguous()

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """`infer` with the shape check: a tensor in, a float32 tensor on this backend's device out."""
        check_batch_shape(tuple(x.shape))
        return self.infer(x)

    def close(self) -> None:
        self.model = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
