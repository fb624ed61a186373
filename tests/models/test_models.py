"""Generator architectures: shapes, FLOPs, BN folding, and the real released weights."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sr_deploy.models import (
    RRDBNet,
    SRResNet,
    count_flops_per_lr_pixel,
    fold_batch_norm,
    load_checkpoint,
    native_specs,
)

# Every registered architecture (its spec's `example_config`), plus SRResNet's other options.
VARIANTS = {spec.name: (spec.module, dict(spec.example_config)) for spec in native_specs()}
VARIANTS["SRResNet-nearest-reflect"] = (
    SRResNet,
    dict(
        num_blocks=1,
        num_features=8,
        upsampler="nearest",
        padding="reflect",
        batch_norm=False,
        image_residual="bicubic",
    ),
)


def _tiny(arch: str, scale: int) -> torch.nn.Module:
    module, config = VARIANTS[arch]
    return module(**{**config, "scale": scale})


@pytest.mark.parametrize("arch", list(VARIANTS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_forward_shapes_for_odd_sizes(arch: str, scale: int) -> None:
    model = _tiny(arch, scale).eval()
    with torch.inference_mode():
        y = model(torch.rand(1, 3, 37, 53))
    assert y.shape == (1, 3, 37 * scale, 53 * scale)
    assert torch.isfinite(y).all()


def test_srresnet_x8_shape() -> None:
    with torch.inference_mode():
        assert SRResNet(scale=8, num_blocks=1, num_features=8).eval()(torch.rand(2, 3, 9, 11)).shape == (2, 3, 72, 88)


@pytest.mark.slow
def test_flops_match_the_papers_models() -> None:
    # Ledig et al.'s SRResNet x4 (16 blocks, 64 features): 4.44 MFLOP per LR pixel by hand:
    # 16 blocks * 2 convs * 2*9*64*64 + 9x9 head/tail + two 64->256 upsampling convs.
    assert count_flops_per_lr_pixel(SRResNet()) / 1e6 == pytest.approx(4.4, rel=0.05)
    assert count_flops_per_lr_pixel(RRDBNet()) / 1e6 == pytest.approx(35.8, rel=0.02)


def test_flops_independent_of_probe_size() -> None:
    model = SRResNet(num_blocks=2, num_features=16)
    assert count_flops_per_lr_pixel(model, 16, 16) == pytest.approx(count_flops_per_lr_pixel(model, 40, 24))


def _set5_tensor(set5_dir, name: str = "butterfly.png") -> torch.Tensor:
    bgr = cv2.imread(str(set5_dir / name), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


@pytest.mark.slow
def test_fold_batch_norm_keeps_outputs_on_real_images(set5_dir, tiny_srresnet) -> None:
    x = _set5_tensor(set5_dir)[:, :, :96, :80]
    folded = fold_batch_norm(tiny_srresnet)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_srresnet.modules()), "original untouched"
    with torch.inference_mode():
        ref, out = tiny_srresnet(x), folded(x)
    assert (ref - out).abs().max().item() <= 1e-5
    assert ref.abs().mean().item() > 1e-3  # a non-trivial output was compared


@pytest.mark.slow
def test_real_leftthomas_srgan_folds_within_1e5(set5_dir, weights_dir) -> None:
    model = load_checkpoint(weights_dir / "leftthomas_SRGAN_netG_epoch_4_100.pth").model
    x = _set5_tensor(set5_dir, "bird.png")[:, :, :64, :64]
    with torch.inference_mode():
        diff = (model(x) - fold_batch_norm(model)(x)).abs().max().item()
    assert diff <= 1e-5
