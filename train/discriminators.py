"""Discriminators: SRGAN's (Ledig et al. 2017, Fig. 4), ESRGAN's VGG-style one (BasicSR's
VGGStyleDiscriminator) and Real-ESRGAN's U-Net with spectral normalisation (BasicSR's
UNetDiscriminatorSN). Input: RGB float in [0, 1], NCHW, of exactly `input_size` squared (the U-Net:
any multiple of 8; its state-dict keys are torch's parametrization names, not BasicSR's).
Output: logits, one per image, shape (N, 1), for SRGAN's and the VGG-style one; one per pixel,
shape (N, 1, H, W), for the U-Net (the losses average over every logit either way)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sr_deploy.errors import InputError


def _conv_bn_lrelu(cin: int, cout: int, k: int, stride: int, bn: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, padding=k // 2 if stride == 1 else 1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return layers


class SRGANDiscriminator(nn.Module):
    """Eight 3x3 convs, 64 -> 512 features doubling every second conv and a stride-2 conv halving
    the resolution after each width (4 halvings: the input shrinks 16x), LeakyReLU(0.2), BN on all
    but the first conv, then dense 1024, LeakyReLU, dense 1 (a logit; the paper's sigmoid lives in
    the loss). `input_size` (the HR crop, 96 in the paper) must be a multiple of 16."""

    def __init__(self, input_size: int = 96, num_features: int = 64) -> None:
        super().__init__()
        if input_size % 16:
            raise InputError(f"SRGAN discriminator: crop size {input_size} is not a multiple of 16")
        f = num_features
        widths = [
            (3, f, 1),
            (f, f, 2),
            (f, 2 * f, 1),
            (2 * f, 2 * f, 2),
            (2 * f, 4 * f, 1),
            (4 * f, 4 * f, 2),
            (4 * f, 8 * f, 1),
            (8 * f, 8 * f, 2),
        ]
        layers: list[nn.Module] = []
        for i, (cin, cout, stride) in enumerate(widths):
            layers += _conv_bn_lrelu(cin, cout, 3, stride, bn=i > 0)
        self.features = nn.Sequential(*layers)
        side = input_size // 16
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * f * side * side, 1024), nn.LeakyReLU(0.2, inplace=True), nn.Linear(1024, 1)
        )
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's discriminator: five stages of [3x3 conv, 4x4 stride-2 conv] (64, 128, 256, 512,
    512 features; BN on all but the first conv; LeakyReLU(0.2)), then dense 100, dense 1.
    The input shrinks 32x: the paper's 128 crop gives 4x4x512. `input_size` must be a multiple of 32."""

    def __init__(self, input_size: int = 128, num_features: int = 64) -> None:
        super().__init__()
        if input_size % 32:
            raise InputError(f"VGG-style discriminator: crop size {input_size} is not a multiple of 32")
        f = num_features
        widths = [f, 2 * f, 4 * f, 8 * f, 8 * f]
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers += _conv_bn_lrelu(cin, w, 3, 1, bn=i > 0)
            layers += _conv_bn_lrelu(w, w, 4, 2, bn=True)
            cin = w
        self.features = nn.Sequential(*layers)
        side = input_size // 32
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * f * side * side, 100), nn.LeakyReLU(0.2, inplace=True), nn.Linear(100, 1)
        )
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's discriminator (Wang et al. 2021, Sec. 3.3 and Fig. 6): a U-Net that judges
    every pixel, so that the generator gets a gradient where the texture is wrong rather than one
    verdict for the crop; spectral normalisation on all but the first and last conv keeps it
    stable against the strong degradations. Encoder: 3x3 conv to `num_features`, three 4x4
    stride-2 convs doubling the width (64 -> 512); decoder: three (bilinear 2x upsample, 3x3 conv
    halving the width) with the encoder's feature of that size added (skip connections); two
    3x3 convs and a 3x3 conv to one logit per pixel; LeakyReLU(0.2) throughout.
    `input_size` must be a multiple of 8 (three halvings)."""

    def __init__(self, input_size: int = 256, num_features: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        if input_size % 8:
            raise InputError(f"U-Net discriminator: crop size {input_size} is not a multiple of 8")
        f = num_features
        self.skip_connection = skip_connection
        self.conv0 = nn.Conv2d(3, f, 3, 1, 1)
        self.down = nn.ModuleList(
            spectral_norm(nn.Conv2d(cin, cout, 4, 2, 1, bias=False))
            for cin, cout in ((f, 2 * f), (2 * f, 4 * f), (4 * f, 8 * f))
        )
        self.up = nn.ModuleList(
            spectral_norm(nn.Conv2d(cin, cout, 3, 1, 1, bias=False))
            for cin, cout in ((8 * f, 4 * f), (4 * f, 2 * f), (2 * f, f))
        )
        self.extra = nn.ModuleList(spectral_norm(nn.Conv2d(f, f, 3, 1, 1, bias=False)) for _ in range(2))
        self.conv_out = nn.Conv2d(f, 1, 3, 1, 1)
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = F.leaky_relu(self.conv0(x), 0.2)
        skips = [feature]
        for conv in self.down:
            feature = F.leaky_relu(conv(feature), 0.2)
            skips.append(feature)
        skips.pop()  # the bottleneck is not a skip
        for conv in self.up:
            feature = F.interpolate(feature, scale_factor=2, mode="bilinear", align_corners=False)
            feature = F.leaky_relu(conv(feature), 0.2)
            if self.skip_connection:
                feature = feature + skips.pop()
        for conv in self.extra:
            feature = F.leaky_relu(conv(feature), 0.2)
        return self.conv_out(feature)


DISCRIMINATORS = {"srgan": SRGANDiscriminator, "vgg": VGGStyleDiscriminator, "unet": UNetDiscriminatorSN}


def build_discriminator(arch: str, input_size: int, num_features: int = 64) -> nn.Module:
    if arch not in DISCRIMINATORS:
        raise InputError(f"discriminator.arch {arch!r}: expected one of {', '.join(DISCRIMINATORS)}")
    return DISCRIMINATORS[arch](input_size=input_size, num_features=num_features)
