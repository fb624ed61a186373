"""Losses of the three recipes: pixel (MSE / L1), perceptual (VGG16 / VGG19 ImageNet features),
and adversarial (standard GAN and relativistic average GAN). Images are RGB float in [0, 1], NCHW; discriminator outputs are
logits (the sigmoid lives inside `binary_cross_entropy_with_logits`, which is stable in fp16)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sr_deploy.errors import InputError
from sr_deploy.perceptual import feature_extractor


def pixel_criterion(kind: str):
    """`F.mse_loss` for ``mse``, `F.l1_loss` for ``l1``."""
    if kind == "mse":
        return F.mse_loss
    if kind == "l1":
        return F.l1_loss
    raise InputError(f"loss type {kind!r}: expected mse or l1")


def perceptual_layers(spec: dict) -> dict[str, float]:
    """Layer name -> weight of a ``losses.perceptual`` config section.

    Either ``layers: {conv5_3: 1.0, ...}`` (names as `sr_deploy.perceptual.FeatureExtractor`:
    ``convB_C`` = before activation, ``reluB_C`` = after), or the one-layer form of the original
    recipes: ``layer: conv5_4`` with ``before_activation: true|false``.
    """
    layers = spec.get("layers")
    if layers:
        if not isinstance(layers, dict):
            raise InputError(f"losses.perceptual.layers {layers!r}: expected a mapping of layer name to weight")
        return {str(k): float(v) for k, v in layers.items()}
    layer = str(spec.get("layer", "conv5_4"))
    if not layer.startswith("conv"):
        raise InputError(f"losses.perceptual.layer {layer!r}: name the conv (e.g. conv5_4) and set before_activation")
    return {layer if spec.get("before_activation") else layer.replace("conv", "relu", 1): 1.0}


class PerceptualLoss(nn.Module):
    """Weighted sum over layers of the distance between ImageNet-network features of SR and HR.

    SRGAN's VGG54 content loss: one layer after activation (``relu5_4`` of VGG19, ``relu5_3`` of
    VGG16), MSE, features rescaled by 1/12.75 (the paper's factor "to obtain VGG losses of a scale
    comparable to the MSE loss"). ESRGAN: the same layer BEFORE activation (``conv5_4`` /
    ``conv5_3``), L1, rescale 1. Real-ESRGAN: several pre-activation layers with weights.

    `extractor` (a `FeatureExtractor` returning the maps of `layers`' keys in order) replaces the
    weight loading in tests; otherwise the ImageNet weights of `network` are found by
    `sr_deploy.perceptual.load_weights` (unknown files refused unless `allow_unknown`), and
    `self.source` describes them (recorded in every checkpoint of the run).
    """

    def __init__(
        self,
        layers: dict[str, float],
        network: str = "vgg16",
        criterion: str = "l1",
        rescale: float = 1.0,
        weights: str | Path | None = None,
        allow_unknown: bool = False,
        extractor: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.layer_weights = list(layers.values())
        if extractor is None:
            extractor, loaded = feature_extractor(network, list(layers), weights, allow_unknown=allow_unknown)
            self.source = loaded.describe()
        else:
            self.source = {"arch": network, "file": "(given module)", "sha256": "", "release": "unknown"}
        self.extractor = extractor
        self.criterion = pixel_criterion(criterion)
        self.rescale = float(rescale)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = self.extractor(hr)
        outputs = self.extractor(sr)
        total = sr.new_zeros((), dtype=torch.float32)
        for weight, out, target in zip(self.layer_weights, outputs, targets):
            total = total + weight * self.criterion(out.float() * self.rescale, target.float() * self.rescale)
        return total


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


def local_variance(residual: torch.Tensor, kernel: int) -> torch.Tensor:
    """Per-pixel variance of (N, 1, H, W) `residual` over a `kernel` x `kernel` window (reflected
    borders, unbiased), as LDL computes it."""
    pad = (kernel - 1) // 2
    windows = (
        nn.functional.pad(residual, (pad, pad, pad, pad), mode="reflect").unfold(2, kernel, 1).unfold(3, kernel, 1)
    )
    return windows.var(dim=(-1, -2), unbiased=True)


def artifact_map(hr: torch.Tensor, sr: torch.Tensor, sr_ema: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """LDL's refined artifact map (Liang et al., CVPR 2022), (N, 1, H, W), no gradient: where the
    generator's residual to HR is both locally erratic (high local variance, times the patch's
    global variance ** 1/5) and worse than the EMA model's, which is slower and so more stable;
    zero elsewhere. Multiplying output and target by it penalises GAN artefacts (speckle,
    checkerboard) without pulling down texture the EMA model agrees with."""
    with torch.no_grad():
        residual = (hr - sr).abs().sum(1, keepdim=True)
        residual_ema = (hr - sr_ema).abs().sum(1, keepdim=True)
        patch_weight = residual.var(dim=(-1, -2, -3), keepdim=True) ** 0.2
        weight = patch_weight * local_variance(residual, kernel)
        return weight.masked_fill(residual < residual_ema, 0.0)
