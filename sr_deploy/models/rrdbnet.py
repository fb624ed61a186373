"""RRDBNet, the ESRGAN generator (Wang et al., ECCV 2018 workshops).

Maps RGB float in [0, 1], NCHW, to RGB float of `scale` x the height and width. Parameter
names follow BasicSR (`conv_first`, `body.N.rdbK.convM`, `conv_body`, `conv_upN`, `conv_hr`,
`conv_last`), so BasicSR / Real-ESRGAN x4 state dicts load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .common import upsampling_factors


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs with LeakyReLU(0.2); output scaled by beta and added."""

    def __init__(self, num_features: int, growth_channels: int, residual_scaling: float) -> None:
        super().__init__()
        f, g = num_features, growth_channels
        self.conv1 = nn.Conv2d(f, g, 3, padding=1)
        self.conv2 = nn.Conv2d(f + g, g, 3, padding=1)
        self.conv3 = nn.Conv2d(f + 2 * g, g, 3, padding=1)
        self.conv4 = nn.Conv2d(f + 3 * g, g, 3, padding=1)
        self.conv5 = nn.Conv2d(f + 4 * g, f, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2)
        self.residual_scaling = residual_scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x + self.residual_scaling * x5


class RRDB(nn.Module):
    """Residual-in-residual dense block: three RDBs, the result scaled by beta and added."""

    def __init__(self, num_features: int, growth_channels: int, residual_scaling: float) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_features, growth_channels, residual_scaling)
        self.rdb2 = ResidualDenseBlock(num_features, growth_channels, residual_scaling)
        self.rdb3 = ResidualDenseBlock(num_features, growth_channels, residual_scaling)
        self.residual_scaling = residual_scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scaling * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN's generator: no BN, RRDB trunk, nearest-neighbour upsampling + conv stages.

    Args:
        scale: 2, 3, 4 or 8 (one nearest x2 / x3 + conv stage per factor).
        num_blocks: RRDB blocks (paper: 23).
        num_features: trunk width (paper: 64).
        growth_channels: dense growth rate (paper: 32).
        residual_scaling: beta (paper: 0.2).
    """

    def __init__(
        self,
        scale: int = 4,
        num_blocks: int = 23,
        num_features: int = 64,
        growth_channels: int = 32,
        residual_scaling: float = 0.2,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.factors = upsampling_factors(scale)
        f = num_features
        self.conv_first = nn.Conv2d(3, f, 3, padding=1)
        self.body = nn.Sequential(
            *[RRDB(f, growth_channels, residual_scaling) for _ in range(num_blocks)]
        )
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        # conv_up1, conv_up2, ... as BasicSR names them.
        for i in range(len(self.factors)):
            self.add_module(f"conv_up{i + 1}", nn.Conv2d(f, f, 3, padding=1))
        self.conv_hr = nn.Conv2d(f, f, 3, padding=1)
        self.conv_last = nn.Conv2d(f, 3, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i, r in enumerate(self.factors):
            conv = getattr(self, f"conv_up{i + 1}")
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=r, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))
