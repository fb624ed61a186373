"""Small pieces shared by the generator architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_SCALES = (2, 3, 4, 8)


def upsampling_factors(scale: int) -> list[int]:
    """Split `scale` into the x2 / x3 stages the papers stack: 4 -> [2, 2], 8 -> [2, 2, 2], 3 -> [3]."""
    if scale == 3:
        return [3]
    if scale in (2, 4, 8, 16):
        return [2] * {2: 1, 4: 2, 8: 3, 16: 4}[scale]
    raise ValueError(f"scale must be one of {SUPPORTED_SCALES}, got {scale}")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H', W') with H', W' the next multiples of `multiple`, the last row and
    column repeated (replicate padding: no reflection artefacts at 1-pixel-wide inputs). The
    amounts are computed from the traced shape, so an ONNX export keeps H and W dynamic."""
    height, width = x.shape[-2:]
    pad_h = (multiple - height % multiple) % multiple
    pad_w = (multiple - width % multiple) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def apply_output_activation(x: torch.Tensor, output_activation: str) -> torch.Tensor:
    """`identity` leaves the generator's output as is; `tanh01` maps it through (tanh(x) + 1) / 2,
    the [0, 1] output that the leftthomas/SRGAN generator was trained with."""
    if output_activation == "identity":
        return x
    if output_activation == "tanh01":
        return (torch.tanh(x) + 1.0) / 2.0
    raise ValueError(f"output_activation must be 'identity' or 'tanh01', got {output_activation!r}")


def image_upsample(x: torch.Tensor, scale: int, mode: str) -> torch.Tensor:
    """The fixed interpolation added to a generator's output when it learns a residual image
    (BasicSR's MSRResNet uses bilinear, Real-ESRGAN's SRVGGNetCompact nearest)."""
    if mode == "nearest":
        return F.interpolate(x, scale_factor=scale, mode="nearest")
    return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)


def count_flops_per_lr_pixel(model: nn.Module, height: int = 32, width: int = 32) -> float:
    """Floating-point operations (2 x multiply-accumulates) of convolutions and linear layers per
    low-resolution input pixel, measured by running `model` once on a (1, 3, height, width) input.

    Element-wise work (activations, additions, pixel shuffle) is left out, as in the papers.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        macs_per_output = (module.in_channels // module.groups) * kh * kw
        total += 2 * macs_per_output * out.numel()

    def linear_hook(module: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * module.in_features * out.numel()

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(torch.zeros(1, 3, height, width, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total / (height * width)
