"""Losses of the three recipes: pixel (MSE / L1), VGG19 perceptual, and adversarial (standard GAN
and relativistic average GAN). Images are RGB float in [0, 1], NCHW; discriminator outputs are
logits (the sigmoid lives inside `binary_cross_entropy_with_logits`, which is stable in fp16)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sr_deploy.errors import InputError

from .vgg import load_vgg19


def pixel_criterion(kind: str):
    """`F.mse_loss` for ``mse``, `F.l1_loss` for ``l1``."""
    if kind == "mse":
        return F.mse_loss
    if kind == "l1":
        return F.l1_loss
    raise InputError(f"loss type {kind!r}: expected mse or l1")


class PerceptualLoss(nn.Module):
    """Distance between VGG19 feature maps of SR and HR at one layer.

    SRGAN's VGG54: ``layer="conv5_4", before_activation=False`` (i.e. relu5_4), MSE, features
    rescaled by 1/12.75 (the paper's factor "to obtain VGG losses of a scale comparable to the
    MSE loss"). ESRGAN: ``before_activation=True`` (conv5_4 itself), L1, rescale 1.
    """

    def __init__(
        self,
        layer: str = "conv5_4",
        before_activation: bool = False,
        criterion: str = "mse",
        rescale: float = 1.0,
        weights: str | Path | None = None,
        vgg: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not layer.startswith("conv"):
            raise InputError(f"losses.perceptual.layer {layer!r}: name the conv (e.g. conv5_4) and set before_activation")
        name = layer if before_activation else layer.replace("conv", "relu", 1)
        self.vgg = vgg if vgg is not None else load_vgg19(name, weights)
        self.criterion = pixel_criterion(criterion)
        self.rescale = float(rescale)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.vgg(hr) * self.rescale
        return self.criterion(self.vgg(sr) * self.rescale, target)


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def discriminator_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``gan``: -log D(x_r) - log(1 - D(x_f)). ``ragan`` (ESRGAN eq. 2):
    -E[log D_Ra(x_r, x_f)] - E[log(1 - D_Ra(x_f, x_r))], D_Ra(a, b) = sigmoid(C(a) - E[C(b)])."""
    if kind == "gan":
        return _bce(real_logits, True) + _bce(fake_logits, False)
    if kind == "ragan":
        return _bce(real_logits - fake_logits.mean(), True) + _bce(fake_logits - real_logits.mean(), False)
    raise InputError(f"losses.adversarial.type {kind!r}: expected gan or ragan")


def generator_adversarial_loss(kind: str, real_logits: torch.Tensor | None, fake_logits: torch.Tensor) -> torch.Tensor:
    """``gan``: -log D(G(x)) (the non-saturating form of SRGAN eq. 6). ``ragan`` (ESRGAN eq. 3):
    -E[log(1 - D_Ra(x_r, x_f))] - E[log D_Ra(x_f, x_r)]; `real_logits` should be detached."""
    if kind == "gan":
        return _bce(fake_logits, True)
    if kind == "ragan":
        assert real_logits is not None
        return _bce(real_logits - fake_logits.mean(), False) + _bce(fake_logits - real_logits.mean(), True)
    raise InputError(f"losses.adversarial.type {kind!r}: expected gan or ragan")
