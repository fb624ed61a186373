"""SRResNet / SRGAN generator (Ledig et al., CVPR 2017) and BasicSR's modified SRResNet.

Both map RGB float in [0, 1], NCHW, to RGB float of `scale` x the height and width.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from .common import apply_output_activation, image_upsample, upsampling_factors
from .spec import ArchSpec, Layout, StateDict


class ResidualBlock(nn.Module):
    """conv3x3 - BN - PReLU - conv3x3 - BN, plus the identity (Ledig et al., Fig. 4).

    The conv/BN pairs live in `nn.Sequential`s so that `fold_batch_norm` can fold them.
    """

    def __init__(self, num_features: int, batch_norm: bool, padding_mode: str) -> None:
        super().__init__()
        self.conv1 = _conv_bn(num_features, num_features, 3, batch_norm, padding_mode)
        self.act = nn.PReLU()
        self.conv2 = _conv_bn(num_features, num_features, 3, batch_norm, padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


def _conv_bn(cin: int, cout: int, k: int, batch_norm: bool, padding_mode: str) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, padding_mode=padding_mode)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    return nn.Sequential(*layers)


class SRResNet(nn.Module):
    """The SRResNet of Ledig et al. 2017, which is also the SRGAN generator.

    9x9 conv + PReLU; B residual blocks; conv3x3 + BN and a long skip; sub-pixel upsampling
    stages (conv F -> F*r^2, PixelShuffle(r), PReLU); 9x9 conv to RGB.

    Args:
        scale: upscaling factor, 2, 3, 4 or 8.
        num_blocks: B, the number of residual blocks (paper: 16).
        num_features: feature maps per conv (paper: 64).
        batch_norm: BN after the body convs (paper: on; ESRGAN showed it is better off).
        upsampler: ``pixelshuffle`` (paper) or ``nearest`` (nearest-neighbour resize + conv,
            which some reimplementations use against checkerboard artefacts).
        padding: ``zeros`` (paper) or ``reflect`` (against dark borders).
        output_activation: ``identity`` (paper) or ``tanh01``: (tanh(x) + 1) / 2.
        body_end_prelu: end the trunk with conv3x3 + PReLU instead of conv3x3 + BN, as the
            leftthomas/SRGAN reimplementation does.
        image_residual: ``none`` (paper), or ``bilinear`` / ``bicubic`` / ``nearest``: add that
            interpolation of the input to the output, so the network learns only the
            residual detail (as BasicSR's MSRResNet does); training converges much faster.
    """

    def __init__(
        self,
        scale: int = 4,
        num_blocks: int = 16,
        num_features: int = 64,
        batch_norm: bool = True,
        upsampler: str = "pixelshuffle",
        padding: str = "zeros",
        output_activation: str = "identity",
        body_end_prelu: bool = False,
        image_residual: str = "none",
    ) -> None:
        super().__init__()
        if upsampler not in ("pixelshuffle", "nearest"):
            raise ValueError(f"upsampler must be 'pixelshuffle' or 'nearest', got {upsampler!r}")
        if padding not in ("zeros", "reflect"):
            raise ValueError(f"padding must be 'zeros' or 'reflect', got {padding!r}")
        if image_residual not in ("none", "nearest", "bilinear", "bicubic"):
            raise ValueError(f"image_residual must be none/nearest/bilinear/bicubic, got {image_residual!r}")
        apply_output_activation(torch.zeros(1), output_activation)  # validates the name
        self.scale = scale
        self.output_activation = output_activation
        self.image_residual = image_residual
        f = num_features
        self.head = nn.Sequential(nn.Conv2d(3, f, 9, padding=4, padding_mode=padding), nn.PReLU())
        self.body = nn.Sequential(*[ResidualBlock(f, batch_norm, padding) for _ in range(num_blocks)])
        self.body_end = _conv_bn(f, f, 3, batch_norm and not body_end_prelu, padding)
        if body_end_prelu:
            self.body_end.append(nn.PReLU())
        stages: list[nn.Module] = []
        for r in upsampling_factors(scale):
            if upsampler == "pixelshuffle":
                stages += [nn.Conv2d(f, f * r * r, 3, padding=1, padding_mode=padding), nn.PixelShuffle(r)]
            else:
                stages += [
                    nn.Upsample(scale_factor=r, mode="nearest"),
                    nn.Conv2d(f, f, 3, padding=1, padding_mode=padding),
                ]
            stages.append(nn.PReLU())
        self.upsample = nn.Sequential(*stages)
        self.tail = nn.Conv2d(f, 3, 9, padding=4, padding_mode=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        out = self.tail(self.upsample(feat + self.body_end(self.body(feat))))
        if self.image_residual != "none":
            out = out + image_upsample(x, self.scale, self.image_residual)
        return apply_output_activation(out, self.output_activation)


class MSRResNet(nn.Module):
    """BasicSR's "modified SRResNet": no BN, ReLU residual blocks, 3x3 convs, LeakyReLU(0.1)
    upsampling, and a bilinear upsampling of the input added to the output.

    Parameter names follow BasicSR (`conv_first`, `body.N.conv1`, `upconv1`, `conv_hr`,
    `conv_last`) so its released state dicts load unchanged.
    """

    def __init__(self, scale: int = 4, num_blocks: int = 16, num_features: int = 64) -> None:
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"MSRResNet supports scale 2, 3 or 4, got {scale}")
        self.scale = scale
        f = num_features
        self.conv_first = nn.Conv2d(3, f, 3, padding=1)
        self.body = nn.Sequential(*[_BasicSRResidualBlock(f) for _ in range(num_blocks)])
        factors = upsampling_factors(scale)
        self.upconv1 = nn.Conv2d(f, f * factors[0] ** 2, 3, padding=1)
        self.upconv2 = nn.Conv2d(f, f * 4, 3, padding=1) if len(factors) > 1 else None
        self.pixel_shuffle1 = nn.PixelShuffle(factors[0])
        self.conv_hr = nn.Conv2d(f, f, 3, padding=1)
        self.conv_last = nn.Conv2d(f, 3, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.lrelu(self.conv_first(x))
        out = self.body(feat)
        out = self.lrelu(self.pixel_shuffle1(self.upconv1(out)))
        if self.upconv2 is not None:
            out = self.lrelu(nn.functional.pixel_shuffle(self.upconv2(out), 2))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        return out + image_upsample(x, self.scale, "bilinear")


class _BasicSRResidualBlock(nn.Module):
    def __init__(self, f: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


def _is_leftthomas(state: Mapping[str, torch.Tensor]) -> bool:
    return "block1.0.weight" in state and any(re.match(r"block\d+\.conv1\.weight", k) for k in state)


def _infer_leftthomas(state: Mapping[str, torch.Tensor]) -> dict:
    blocks = sorted(int(m.group(1)) for k in state if (m := re.match(r"block(\d+)\.conv1\.weight", k)))
    ups = sum(1 for k in state if re.fullmatch(r"block\d+\.\d+\.conv\.weight", k))
    return {
        "scale": 2**ups,
        "num_blocks": len(blocks),
        "num_features": state["block1.0.weight"].shape[0],
        "batch_norm": True,
        "output_activation": "tanh01",
        "body_end_prelu": f"block{blocks[-1] + 1}.1.running_mean" not in state,
    }


def convert_leftthomas(state: Mapping[str, torch.Tensor]) -> StateDict:
    """leftthomas/SRGAN: block1 = head, block2..blockB+1 = residual blocks, block(B+2) =
    conv+BN after the trunk, block(B+3) = [UpsampleBLock x n, final conv]."""
    res_ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"block(\d+)\.conv1\.", k))})
    end_id, up_id = res_ids[-1] + 1, res_ids[-1] + 2
    ups = sorted({int(m.group(1)) for k in state if (m := re.match(rf"block{up_id}\.(\d+)\.conv\.", k))})
    out: StateDict = {}
    for k, v in state.items():
        name = k
        if m := re.fullmatch(r"block1\.(\d)\.(\w+)", k):
            name = f"head.{m.group(1)}.{m.group(2)}"
        elif (m := re.fullmatch(r"block(\d+)\.(conv1|bn1|conv2|bn2|prelu)\.(\w+)", k)) and int(m.group(1)) in res_ids:
            i = res_ids.index(int(m.group(1)))
            part = {"conv1": "conv1.0", "bn1": "conv1.1", "conv2": "conv2.0", "bn2": "conv2.1", "prelu": "act"}
            name = f"body.{i}.{part[m.group(2)]}.{m.group(3)}"
        elif m := re.fullmatch(rf"block{end_id}\.(\d)\.(\w+)", k):
            name = f"body_end.{m.group(1)}.{m.group(2)}"
        elif m := re.fullmatch(rf"block{up_id}\.(\d+)\.(conv|prelu)\.(\w+)", k):
            j = ups.index(int(m.group(1)))
            name = f"upsample.{3 * j + (0 if m.group(2) == 'conv' else 2)}.{m.group(3)}"
        elif m := re.fullmatch(rf"block{up_id}\.(\d+)\.(weight|bias)", k):
            name = f"tail.{m.group(2)}"
        out[name] = v
    return out


_MSRRESNET_KEY = re.compile(r"(conv_first|upconv1|upconv2|conv_hr|conv_last|body\.\d+\.conv[12])\.(weight|bias)")


def _is_basicsr_msrresnet(state: Mapping[str, torch.Tensor]) -> bool:
    return (
        "upconv1.weight" in state and "body.0.conv1.weight" in state and all(_MSRRESNET_KEY.fullmatch(k) for k in state)
    )


def _infer_msrresnet(state: Mapping[str, torch.Tensor]) -> dict:
    f = state["conv_first.weight"].shape[0]
    num_blocks = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"body\.(\d+)\.conv1", k)))
    r2 = state["upconv1.weight"].shape[0] // f
    scale = 4 if "upconv2.weight" in state else int(round(r2**0.5))
    return {"scale": scale, "num_blocks": num_blocks, "num_features": f}


# SRResNet is read from our own checkpoints and from the leftthomas/SRGAN generator.
SRRESNET_SPEC = ArchSpec(
    name="SRResNet",
    module=SRResNet,
    layouts=(Layout("leftthomas/SRGAN generator", _is_leftthomas, _infer_leftthomas, convert_leftthomas),),
    live_values_per_hr_pixel=128,
    example_config={"scale": 4, "num_blocks": 1, "num_features": 8},
)
MSRRESNET_SPEC = ArchSpec(
    name="MSRResNet",
    module=MSRResNet,
    layouts=(Layout("BasicSR state dict", _is_basicsr_msrresnet, _infer_msrresnet),),
    live_values_per_hr_pixel=128,
    example_config={"scale": 4, "num_blocks": 1, "num_features": 8},
)
