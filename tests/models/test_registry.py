"""The model registry: containers unwrapped, native layouts (x1 to x8, pixel unshuffle), per-architecture
memory for tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sr_deploy.backends.base import Backend
from sr_deploy.models import (
    ARCHITECTURES,
    RRDBNet,
    SRVGGNetCompact,
    live_values_per_hr_pixel,
    load_checkpoint,
    native_specs,
)
from sr_deploy.models.rrdbnet import convert_esrgan_old
from sr_deploy.tiling import auto_tile_size


def _same_output(a: torch.nn.Module, b: torch.nn.Module, shape=(1, 3, 9, 7)) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(a.eval()(x), b.eval()(x))


def test_every_native_spec_names_its_module_and_is_in_architectures() -> None:
    specs = native_specs()
    assert [s.name for s in specs] == list(ARCHITECTURES)
    for spec in specs:
        assert spec.module.__name__ == spec.name and spec.live_values_per_hr_pixel > 0
    assert sum(len(s.layouts) for s in specs) >= 5  # BasicSR x3, ESRGAN old, leftthomas


@pytest.mark.slow
@pytest.mark.parametrize("scale, unshuffle, channels_in", [(2, 2, 12), (1, 4, 48)])
def test_realesrgan_pixel_unshuffle_layout(tmp_path, scale, unshuffle, channels_in) -> None:
    """RealESRGAN_x2plus (x1 too): 12 (48) input channels after a x2 (x4) pixel unshuffle, then two x2
    stages; odd input sizes are padded inside and the output cropped to exactly scale x the input."""
    torch.manual_seed(0)
    model = RRDBNet(scale=scale, num_blocks=1, num_features=8, growth_channels=4, pixel_unshuffle=unshuffle)
    assert model.conv_first.in_channels == channels_in and hasattr(model, "conv_up2")
    torch.save({"params_ema": model.state_dict()}, tmp_path / "x2plus.pth")
    ckpt = load_checkpoint(tmp_path / "x2plus.pth")
    assert (ckpt.arch, ckpt.scale, ckpt.size_multiple) == ("RRDBNet", scale, unshuffle)
    assert ckpt.config == {
        "scale": scale,
        "num_blocks": 1,
        "num_features": 8,
        "growth_channels": 4,
        "pixel_unshuffle": unshuffle,
    }
    x = torch.rand(1, 3, 13, 10)
    with torch.inference_mode():
        y = ckpt.model(x)
        assert y.shape == (1, 3, 13 * scale, 10 * scale)
        # Where no padding is needed, the result is the plain unshuffle -> trunk -> upsampling path.
        even = x[..., :12, :8]
        assert torch.equal(ckpt.model(even), model.eval()(even))


def test_pixel_unshuffle_padding_matches_manual_replicate_pad() -> None:
    torch.manual_seed(1)
    model = RRDBNet(scale=2, num_blocks=1, num_features=8, growth_channels=4, pixel_unshuffle=2).eval()
    x = torch.rand(1, 3, 7, 9)
    padded = F.pad(x, (0, 1, 0, 1), mode="replicate")
    with torch.inference_mode():
        assert torch.equal(model(x), model(padded)[..., :14, :18])


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 4, 8])
def test_esrgan_old_layout_any_scale(tmp_path, scale) -> None:
    torch.manual_seed(scale)
    model = RRDBNet(scale=scale, num_blocks=2, num_features=8, growth_channels=4)
    stages = len(model.factors)
    names = {"conv_first": "model.0", "conv_body": "model.1.sub.2"}
    names.update({f"conv_up{i + 1}": f"model.{3 * (i + 1)}" for i in range(stages)})
    names.update({"conv_hr": f"model.{3 * stages + 2}", "conv_last": f"model.{3 * stages + 4}"})
    old = {}
    for k, v in model.state_dict().items():
        if k.startswith("body."):
            _, i, rdb, conv, leaf = k.split(".")
            old[f"model.1.sub.{i}.{rdb.upper()}.{conv}.0.{leaf}"] = v
        else:
            name, leaf = k.split(".")
            old[f"{names[name]}.{leaf}"] = v
    assert convert_esrgan_old(old).keys() == model.state_dict().keys()
    torch.save(old, tmp_path / "old.pth")
    ckpt = load_checkpoint(tmp_path / "old.pth")
    assert (ckpt.scale, ckpt.source_format) == (scale, "ESRGAN old architecture")
    _same_output(ckpt.model, model)


@pytest.mark.parametrize(
    "wrap, expected_source",
    [
        (lambda sd: {"state_dict": sd}, "'state_dict' entry / BasicSR state dict"),
        (lambda sd: {"model": {k: v for k, v in sd.items()}}, "'model' entry / BasicSR state dict"),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "BasicSR state dict"),
        (lambda sd: {"params": {f"module.{k}": v for k, v in sd.items()}, "iter": 5}, "BasicSR/Real-ESRGAN params"),
    ],
)
def test_containers_are_unwrapped(tmp_path, wrap, expected_source) -> None:
    torch.manual_seed(2)
    model = SRVGGNetCompact(scale=2, num_feat=8, num_conv=2)
    torch.save(wrap(model.state_dict()), tmp_path / "c.pth")
    ckpt = load_checkpoint(tmp_path / "c.pth")
    assert (ckpt.arch, ckpt.scale, ckpt.source_format) == ("SRVGGNetCompact", 2, expected_source)
    _same_output(ckpt.model, model)


def test_ckpt_suffix_and_a_dict_without_tensors(tmp_path) -> None:
    model = SRVGGNetCompact(scale=3, num_feat=8, num_conv=1)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "lightning.ckpt")
    assert load_checkpoint(tmp_path / "lightning.ckpt").scale == 3
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "empty.pth")
    with pytest.raises(Exception, match="empty.pth: no tensors in the checkpoint"):
        load_checkpoint(tmp_path / "empty.pth")


class _FakeBackend(Backend):
    name = "fake"

    def __init__(self, arch: str) -> None:
        super().__init__(4, "fp32", "cpu", None)
        self.live_values_per_hr_pixel = live_values_per_hr_pixel(arch)  # what an opener sets

    def __call__(self, x):
        return np.repeat(np.repeat(x, 4, axis=2), 4, axis=3)


def test_auto_tile_size_follows_the_architecture_memory_model() -> None:
    """A window-attention transformer declares 4x the live activations of RRDBNet: its automatic
    tile (same budget) is about half as wide."""
    rrdb, swin = _FakeBackend("RRDBNet"), _FakeBackend("SwinIR")
    big = 100_000  # an image that never fits in one piece
    t_rrdb, t_swin = auto_tile_size(rrdb, big, big, overlap=0), auto_tile_size(swin, big, big, overlap=0)
    assert t_rrdb > 0 and t_swin > 0
    assert t_swin == pytest.approx(t_rrdb / 2, rel=0.05)
