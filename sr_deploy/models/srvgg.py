"""SRVGGNetCompact, Real-ESRGAN's small video model (Wang et al., 2021).

A plain stack of 3x3 convs at low resolution, a PixelShuffle to the output size, and the
nearest-neighbour upsampled input added. Parameter names follow Real-ESRGAN (`body.N`), so
its released state dicts (e.g. realesr-animevideov3.pth) load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class SRVGGNetCompact(nn.Module):
    """Args:
        scale: upscaling factor (the last conv has 3 * scale^2 channels).
        num_feat: feature maps per conv (released models: 64).
        num_conv: convolutions in the body (animevideov3: 16).
        act_type: ``prelu`` (one slope per channel), ``relu`` or ``leakyrelu`` (0.1).
    """

    def __init__(self, scale: int = 4, num_feat: int = 64, num_conv: int = 16, act_type: str = "prelu") -> None:
        super().__init__()
        self.scale = scale

        def act() -> nn.Module:
            if act_type == "prelu":
                return nn.PReLU(num_parameters=num_feat)
            if act_type == "relu":
                return nn.ReLU()
            if act_type == "leakyrelu":
                return nn.LeakyReLU(0.1)
            raise ValueError(f"act_type must be prelu, relu or leakyrelu, got {act_type!r}")

        layers: list[nn.Module] = [nn.Conv2d(3, num_feat, 3, padding=1), act()]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, padding=1), act()]
        layers.append(nn.Conv2d(num_feat, 3 * scale * scale, 3, padding=1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.upsampler(out) + F.interpolate(x, scale_factor=self.scale, mode="nearest")
