"""Small, randomly initialised instances of every spandrel super-resolution architecture.

Used by `benchmarks/model_matrix.py` (the compatibility matrix in docs/models.md) and by the tests.
Each entry builds the architecture's own `nn.Module` from spandrel's source tree, a few blocks and
a few channels wide, so that a state dict of it goes through sr-deploy's loader exactly as a
downloaded file would. The weights are random: only loading, shapes, export and parity mean
anything, not the pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ZooEntry:
    """`name`: the row label; `arch`: spandrel's architecture id (what detection should find, or
    our native name); `make`: builds the module; `purpose`: "SR" or "Restoration"."""

    name: str
    arch: str
    make: Callable[[], nn.Module]
    scale: int
    purpose: str = "SR"


def _cls(arch: str, name: str | None = None) -> Any:
    import importlib

    module = importlib.import_module(f"spandrel.architectures.{arch}")
    return getattr(module, name or arch)


def _e(
    name: str, arch: str, expected_scale: int, cls: str | None = None, purpose: str = "SR", **kwargs: Any
) -> ZooEntry:
    return ZooEntry(name, arch, lambda: _cls(arch, cls)(**kwargs), expected_scale, purpose)


# Window sizes and channel counts are cut down; divisibility rules of each architecture kept.
SR_ENTRIES: tuple[ZooEntry, ...] = (
    _e("ESRGAN (RRDBNet)", "ESRGAN", 4, num_filters=16, num_blocks=1, scale=4),
    # spandrel's class: `scale` is the trunk's upsampling, the x2 pixel unshuffle divides it.
    _e(
        "ESRGAN x2 pixel-unshuffle (RealESRGAN_x2plus)",
        "ESRGAN",
        2,
        in_nc=12,
        num_filters=16,
        num_blocks=1,
        scale=4,
        shuffle_factor=2,
    ),
    _e("Compact (SRVGGNetCompact)", "Compact", 4, num_feat=16, num_conv=2, upscale=4),
    _e("SwiftSRGAN", "SwiftSRGAN", 4, num_channels=16, num_blocks=2, upscale_factor=4),
    _e("SPAN", "SPAN", 4, num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=4),
    _e("PLKSR", "PLKSR", 2, dim=16, n_blocks=2, upscaling_factor=2, kernel_size=9),
    _e("RealPLKSR", "PLKSR", 2, cls="RealPLKSR", dim=16, n_blocks=2, upscaling_factor=2, kernel_size=9),
    _e("SAFMN", "SAFMN", 4, dim=16, n_blocks=2, upscaling_factor=4),
    _e("OmniSR", "OmniSR", 4, num_feat=16, block_num=1, window_size=8, res_num=1, up_scale=4),
    _e("RealCUGAN x2", "RealCUGAN", 2, cls="UpCunet2x"),
    _e("RealCUGAN x3", "RealCUGAN", 3, cls="UpCunet3x"),
    _e("RealCUGAN x4", "RealCUGAN", 4, cls="UpCunet4x"),
    _e("RCAN", "RCAN", 2, scale=2, n_resgroups=1, n_resblocks=1, n_feats=16, reduction=4),
    _e("DCTLSA", "DCTLSA", 2, nf=20, num_modules=6, upscale=2, num_head=4),
    _e(
        "SwinIR",
        "SwinIR",
        2,
        embed_dim=12,
        depths=[2],
        num_heads=[2],
        window_size=4,
        upscale=2,
        upsampler="pixelshuffledirect",
        img_size=16,
    ),
    _e(
        "SwinIR x4 pixelshuffle",
        "SwinIR",
        4,
        embed_dim=16,
        depths=[1],
        num_heads=[2],
        window_size=4,
        upscale=4,
        upsampler="pixelshuffle",
        img_size=16,
    ),
    _e(
        "Swin2SR",
        "Swin2SR",
        2,
        embed_dim=12,
        depths=[2],
        num_heads=[2],
        window_size=4,
        upscale=2,
        upsampler="pixelshuffledirect",
        img_size=16,
    ),
    _e(
        "HAT",
        "HAT",
        2,
        embed_dim=30,
        depths=(1,),
        num_heads=(2,),
        window_size=4,
        upscale=2,
        upsampler="pixelshuffle",
        img_size=16,
        compress_ratio=3,
        squeeze_factor=30,
    ),
    _e("DAT", "DAT", 2, embed_dim=24, depth=[2], num_heads=[2], split_size=[2, 4], upscale=2, img_size=16),
    _e("RGT", "RGT", 2, embed_dim=12, depth=[2], num_heads=[2], split_size=[4, 8], upscale=2, img_size=16),
    _e(
        "CRAFT",
        "CRAFT",
        2,
        embed_dim=12,
        depths=[1],
        num_heads=[2],
        window_size=8,
        split_size_0=4,
        split_size_1=8,
        upscale=2,
    ),
    _e("DITN", "DITN", 2, dim=12, ITL_blocks=1, SAL_blocks=1, UFONE_blocks=1, patch_size=8, upscale=2),
    _e(
        "ATD",
        "ATD",
        2,
        embed_dim=12,
        depths=(2,),
        num_heads=(2,),
        window_size=4,
        category_size=16,
        num_tokens=8,
        reducted_dim=4,
        upscale=2,
        upsampler="pixelshuffledirect",
        img_size=16,
    ),
    _e(
        "DRCT",
        "DRCT",
        2,
        embed_dim=12,
        depths=(1,),
        num_heads=(2,),
        window_size=4,
        upscale=2,
        upsampler="pixelshuffle",
        gc=8,
        img_size=16,
    ),
    _e(
        "GRL",
        "GRL",
        2,
        embed_dim=16,
        depths=[1],
        num_heads_window=[1],
        num_heads_stripe=[1],
        window_size=8,
        stripe_size=[8, 8],
        upscale=2,
        upsampler="pixelshuffle",
        img_size=16,
    ),
    _e("SeemoRe", "SeemoRe", 2, scale=2, num_experts=2, num_layers=1, embedding_dim=16, recursive=1),
    _e("MoSR", "MoSR", 2, upscale=2, n_block=2, dim=16),
    _e("MoESR", "MoESR", 2, scale=2, dim=16, n_blocks=1, n_block=1, upsample_dim=16),
    _e(
        "FDAT",
        "FDAT",
        2,
        scale=2,
        embed_dim=16,
        num_groups=1,
        depth_per_group=1,
        num_heads=2,
        window_size=4,
        mid_dim=16,
    ),
    _e(
        "MMRealSR",
        "MMRealSR",
        4,
        num_in_ch=3,
        num_out_ch=3,
        scale=4,
        num_feat=16,
        num_block=1,
        num_grow_ch=8,
        num_feats=[16, 32, 64, 128],
        num_blocks=[1, 1, 1, 1],
    ),
    _e("IPT", "IPT", 2, patch_size=12, n_feats=16, num_heads=2, num_layers=1, scale=[2]),
)

# Scale-1 restoration models: accepted as x1 or refused with one line.
RESTORATION_ENTRIES: tuple[ZooEntry, ...] = (
    _e("DnCNN (colour)", "DnCNN", 1, purpose="Restoration", in_nc=3, out_nc=3, nc=8, nb=17),
    _e("DnCNN (greyscale)", "DnCNN", 1, purpose="Restoration", in_nc=1, out_nc=1, nc=8, nb=17),
    _e("NAFNet", "NAFNet", 1, purpose="Restoration", width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]),
    _e("SAFMNBCIE", "SAFMNBCIE", 1, purpose="Restoration", dim=16, n_blocks=1, num_layers=1, upscaling_factor=2),
)


def state_dict_of(entry: ZooEntry, seed: int = 0) -> dict[str, torch.Tensor]:
    """The entry's module, freshly initialised with `seed`, as a state dict of CPU tensors."""
    torch.manual_seed(seed)
    model = entry.make()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
