"""SRVGGNetCompact, Real-ESRGAN's small video model (Wang et al., 2021).

A plain stack of 3x3 convs at low resolution, a PixelShuffle to the output size, and the
nearest-neighbour upsampled input added. Parameter names follow Real-ESRGAN (`body.N`), so
its released state dicts (e.g. realesr-animevideov3.pth) load unchanged.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .spec import ArchSpec, Layout


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


_BODY_KEY = re.compile(r"body\.(\d+)\.(weight|bias)")


def _is_real_esrgan_compact(state: Mapping[str, torch.Tensor]) -> bool:
    return "body.0.weight" in state and all(_BODY_KEY.fullmatch(k) for k in state)


def _infer_config(state: Mapping[str, torch.Tensor]) -> dict:
    convs = sorted(int(m.group(1)) for k in state if (m := _BODY_KEY.fullmatch(k)) and state[k].dim() == 4)
    num_feat = state["body.0.weight"].shape[0]
    last = state[f"body.{convs[-1]}.weight"].shape[0]
    scale = int(round((last / 3) ** 0.5))
    act = "prelu" if "body.1.weight" in state else "leakyrelu"
    return {"scale": scale, "num_feat": num_feat, "num_conv": len(convs) - 2, "act_type": act}


SRVGG_SPEC = ArchSpec(
    name="SRVGGNetCompact",
    module=SRVGGNetCompact,
    layouts=(Layout("BasicSR state dict", _is_real_esrgan_compact, _infer_config),),
    # Its convs all run at the input resolution: 2 x 64 channels per LR pixel is 128 / scale^2 per
    # output pixel, plus the pixel-shuffled output; 64 is a safe round figure for x2 to x4.
    live_values_per_hr_pixel=64,
    example_config={"scale": 4, "num_feat": 8, "num_conv": 2},
)
