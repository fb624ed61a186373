"""RRDBNet, the ESRGAN generator (Wang et al., ECCV 2018 workshops).

Maps RGB float in [0, 1], NCHW, to RGB float of `scale` x the height and width. Parameter
names follow BasicSR (`conv_first`, `body.N.rdbK.convM`, `conv_body`, `conv_upN`, `conv_hr`,
`conv_last`), so BasicSR / Real-ESRGAN state dicts load unchanged, including the x2 / x1 models
that pixel-unshuffle their input first (RealESRGAN_x2plus: 12 input channels, two x2 stages).
The original ESRGAN repository's "old architecture" keys (`model.0`, `model.1.sub.N.RDBk`) are
renamed on load (`RRDBNET_SPEC`).
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .common import pad_to_multiple, upsampling_factors
from .spec import ArchSpec, Layout, StateDict


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
        scale: 1, 2, 3, 4 or 8: the model's overall factor.
        num_blocks: RRDB blocks (paper: 23).
        num_features: trunk width (paper: 64).
        growth_channels: dense growth rate (paper: 32).
        residual_scaling: beta (paper: 0.2).
        pixel_unshuffle: 1 (paper), or 2 / 4: fold the input into 4x / 16x the channels at
            1/2 / 1/4 the size first (BasicSR's x2 / x1 models), then upsample by
            `scale * pixel_unshuffle` (one nearest x2 / x3 + conv stage per factor). Inputs
            whose sides are not a multiple of it are padded (edge replicated) and the output
            cropped, so any size works; `size_multiple` says which sizes need no padding.
    """

    def __init__(
        self,
        scale: int = 4,
        num_blocks: int = 23,
        num_features: int = 64,
        growth_channels: int = 32,
        residual_scaling: float = 0.2,
        pixel_unshuffle: int = 1,
    ) -> None:
        super().__init__()
        if pixel_unshuffle not in (1, 2, 4):
            raise ValueError(f"pixel_unshuffle must be 1, 2 or 4, got {pixel_unshuffle}")
        self.scale = scale
        self.pixel_unshuffle = pixel_unshuffle
        self.size_multiple = pixel_unshuffle
        self.factors = upsampling_factors(scale * pixel_unshuffle)
        f = num_features
        self.conv_first = nn.Conv2d(3 * pixel_unshuffle**2, f, 3, padding=1)
        self.body = nn.Sequential(*[RRDB(f, growth_channels, residual_scaling) for _ in range(num_blocks)])
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        # conv_up1, conv_up2, ... as BasicSR names them.
        for i in range(len(self.factors)):
            self.add_module(f"conv_up{i + 1}", nn.Conv2d(f, f, 3, padding=1))
        self.conv_hr = nn.Conv2d(f, f, 3, padding=1)
        self.conv_last = nn.Conv2d(f, 3, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.pixel_unshuffle > 1:
            x = F.pixel_unshuffle(pad_to_multiple(x, self.pixel_unshuffle), self.pixel_unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i, r in enumerate(self.factors):
            conv = getattr(self, f"conv_up{i + 1}")
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=r, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        if self.pixel_unshuffle > 1:
            out = out[..., : height * self.scale, : width * self.scale]
        return out


def _is_basicsr(state: Mapping[str, torch.Tensor]) -> bool:
    return "body.0.rdb1.conv1.weight" in state and "conv_first.weight" in state


def _infer_basicsr(state: Mapping[str, torch.Tensor]) -> dict:
    """Hyper-parameters from BasicSR key names; `pixel_unshuffle` only when it is not 1, so that
    plain x4 configs read as before."""
    first = state["conv_first.weight"]
    unshuffle = {3: 1, 12: 2, 48: 4}.get(first.shape[1])
    if unshuffle is None:
        raise ValueError(
            f"RRDBNet conv_first takes {first.shape[1]} channels; expected 3, 12 or 48 (RGB, pixel-unshuffled x2 or x4)"
        )
    num_blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.rdb1", k)))
    ups = sum(1 for k in state if re.fullmatch(r"conv_up\d+\.weight", k))
    upsample = 2**ups
    if upsample % unshuffle:
        raise ValueError(f"RRDBNet with {ups} x2 stages cannot undo a x{unshuffle} pixel unshuffle")
    config = {
        "scale": upsample // unshuffle,
        "num_blocks": num_blocks,
        "num_features": first.shape[0],
        "growth_channels": state["body.0.rdb1.conv1.weight"].shape[0],
    }
    if unshuffle != 1:
        config["pixel_unshuffle"] = unshuffle
    return config


def _is_esrgan_old(state: Mapping[str, torch.Tensor]) -> bool:
    return "model.0.weight" in state and any(k.startswith("model.1.sub.") for k in state)


def convert_esrgan_old(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename the original ESRGAN repository's keys to BasicSR's RRDBNet names.

    Its `model` Sequential is: 0 conv_first, 1 the trunk (`sub.N.RDBk.convM.0`, then the trunk's
    last conv as `sub.<num_blocks>`), then per x2 stage [upsample, conv, lrelu] (convs at 3, 6, 9
    ...), then conv_hr, lrelu, conv_last.
    """
    top = sorted({int(m.group(1)) for k in state if (m := re.fullmatch(r"model\.(\d+)\.(weight|bias)", k))})
    convs = [i for i in top if i >= 3]
    fixed = {"model.0": "conv_first"}
    if len(convs) >= 2:
        *ups, hr, last = convs
        fixed.update({f"model.{i}": f"conv_up{j + 1}" for j, i in enumerate(ups)})
        fixed.update({f"model.{hr}": "conv_hr", f"model.{last}": "conv_last"})
    out: StateDict = {}
    for k, v in state.items():
        if m := re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", k):
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = v
            continue
        prefix, _, leaf = k.rpartition(".")
        if prefix in fixed:
            out[f"{fixed[prefix]}.{leaf}"] = v
        elif re.fullmatch(r"model\.1\.sub\.\d+", prefix):
            out[f"conv_body.{leaf}"] = v  # the trunk's last conv, model.1.sub.<num_blocks>
        else:
            out[k] = v  # left as is: the strict load names it as unexpected
    return out


RRDBNET_SPEC = ArchSpec(
    name="RRDBNet",
    module=RRDBNet,
    layouts=(
        Layout("BasicSR state dict", _is_basicsr, _infer_basicsr),
        Layout(
            "ESRGAN old architecture",
            _is_esrgan_old,
            lambda s: _infer_basicsr(convert_esrgan_old(s)),
            convert_esrgan_old,
        ),
    ),
    # Two 64-channel feature maps at the output resolution.
    live_values_per_hr_pixel=128,
    example_config={"scale": 4, "num_blocks": 1, "num_features": 8, "growth_channels": 4},
)
