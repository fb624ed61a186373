"""`sr_deploy.models.subpixel.move_tail_before_shuffle`: SRResNet's output convolution moved before the
last pixel shuffle computes the same function (float rounding apart), for x2, x3, x4 and x8, with and
without the image residual; models that do not end that way are returned untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sr_deploy.backends.torch_backend import TorchBackend
from sr_deploy.models import SRResNet, SRVGGNetCompact, load_model
from sr_deploy.models.subpixel import move_tail_before_shuffle


def _random_srresnet(seed: int, **config) -> SRResNet:
    torch.manual_seed(seed)
    model = SRResNet(num_blocks=2, num_features=16, batch_norm=False, **config).eval()
    with torch.no_grad():
        for act in (m for m in model.modules() if isinstance(m, nn.PReLU)):
            act.weight.uniform_(-0.5, 0.5)  # a PReLU that is not ReLU-like, so its place matters
    return model


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("image_residual", ["none", "bicubic"])
def test_the_rewritten_model_computes_the_same_function(scale, image_residual):
    model = _random_srresnet(scale, scale=scale, image_residual=image_residual)
    rewritten = move_tail_before_shuffle(model)
    assert isinstance(rewritten.tail, nn.Identity) and isinstance(rewritten.upsample[-1], nn.PixelShuffle)
    assert isinstance(model.tail, nn.Conv2d)  # the original is untouched
    x = torch.rand(2, 3, 13, 17, generator=torch.Generator().manual_seed(1))  # odd sizes: the borders count
    with torch.inference_mode():
        expected, got = model(x), rewritten(x)
    assert got.shape == expected.shape == (2, 3, 13 * scale, 17 * scale)
    assert torch.allclose(got, expected, atol=2e-5, rtol=0), (got - expected).abs().max()


@pytest.mark.slow
def test_the_bundled_model_is_rewritten_and_agrees_to_float_rounding():
    model = load_model("default")
    rewritten = move_tail_before_shuffle(model)
    assert rewritten is not model and rewritten.upsample[-2].out_channels == 12  # 3 colours x 4 phases
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (rewritten(x) - model(x)).abs().max().item()
    assert diff < 1e-4


def test_models_that_do_not_end_that_way_are_returned_as_they_are():
    others = [
        SRResNet(num_blocks=1, num_features=8, upsampler="nearest"),  # no pixel shuffle
        SRResNet(num_blocks=1, num_features=8, padding="reflect"),  # reflect padding does not map
        SRVGGNetCompact(num_feat=8, num_conv=2),
    ]
    for model in others:
        assert move_tail_before_shuffle(model) is model


def test_the_torch_backend_runs_the_rewritten_form():
    model = _random_srresnet(0, scale=4)
    backend = TorchBackend(model, 4, "cpu", "fp32")
    assert isinstance(backend.model.tail, nn.Identity)
    x = torch.rand(1, 3, 9, 11)
    with torch.inference_mode():
        assert torch.allclose(backend.run_tensor(x), model(x), atol=2e-5, rtol=0)


def test_the_rewrite_leaves_torch_random_state_alone():
    model = _random_srresnet(0, scale=4)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    move_tail_before_shuffle(model)
    assert torch.equal(torch.rand(3), expected)  # a training script's next draw is not shifted
