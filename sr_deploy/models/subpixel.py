"""Run SRResNet's output convolution before its last pixel shuffle: the same function, faster on CPUs.

SRResNet ends with ``conv(F -> F r^2), PixelShuffle(r), PReLU, conv kxk (F -> 3)``: the last
convolution runs at the output resolution with 3 output channels. oneDNN vectorises a convolution over
its output channels, 16 fp32 lanes per AVX-512 register, so 13 of 16 lanes idle: on the bundled model
that one layer was a third of the CPU time at a fifth of the speed of the other convolutions
(docs/benchmark.md, the per-layer profile).

A convolution over a pixel-shuffled tensor is a convolution over the unshuffled one. Output pixel
``(r*i + a, r*j + b)`` reads input pixels ``(r*i + a + dy, r*j + b + dx)`` for ``|dy|, |dx| <= p``
(p = k // 2), which live in the unshuffled tensor at ``(i + (a + dy) // r, j + (b + dx) // r)``, channel
``c * r^2 + ((a + dy) % r) * r + (b + dx) % r``. So the tail becomes one convolution on the ``F r^2``
channels at the lower resolution, producing the ``3 r^2`` sub-pixel phases (12 lanes of 16 at x2),
followed by a 3-channel PixelShuffle; and a single-parameter PReLU commutes with the shuffle, so it
moves before it too. The large F-channel shuffle at the output resolution disappears. Zero padding of
p at the output resolution is zero padding of ``ceil(p / r)`` at the lower one (the reachable offsets
run from ``-ceil(p / r)`` to ``ceil(p / r)`` for every phase): the result is the same function up to
float summation order.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _tail_pattern(model: nn.Module) -> tuple[nn.Conv2d, int, nn.PReLU, nn.Conv2d] | None:
    """(last upsampling conv, r, PReLU, tail conv) when `model` ends the SRResNet way, else None."""
    upsample, tail = getattr(model, "upsample", None), getattr(model, "tail", None)
    if not isinstance(upsample, nn.Sequential) or len(upsample) < 3 or not isinstance(tail, nn.Conv2d):
        return None
    conv, shuffle, act = upsample[-3], upsample[-2], upsample[-1]
    if not (isinstance(conv, nn.Conv2d) and isinstance(shuffle, nn.PixelShuffle) and isinstance(act, nn.PReLU)):
        return None
    if act.num_parameters != 1 or tail.padding_mode != "zeros" or tail.groups != 1:
        return None
    k = tail.kernel_size
    if k[0] != k[1] or k[0] % 2 == 0 or tail.stride != (1, 1) or tail.dilation != (1, 1):
        return None
    if tail.padding != (k[0] // 2, k[0] // 2):
        return None
    return conv, shuffle.upscale_factor, act, tail


def _offsets(k: int, r: int) -> tuple[int, int]:
    """The lowest and highest low-resolution offsets a k x k kernel reaches from any phase."""
    p = k // 2
    return (-p) // r, (r - 1 + p) // r


def subpixel_weights(tail: nn.Conv2d, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tail's weight (Cout, F, k, k) and bias rewritten for the unshuffled input:
    weight (Cout r^2, F r^2, K, K) and bias (Cout r^2,), K = hi - lo + 1 (`_offsets`)."""
    w = tail.weight.detach()
    c_out, f, k, _ = w.shape
    p = k // 2
    lo, hi = _offsets(k, r)
    size = hi - lo + 1
    out = torch.zeros((c_out * r * r, f * r * r, size, size), dtype=w.dtype, device=w.device)
    for a in range(r):
        for b in range(r):
            phase = torch.arange(c_out) * r * r + a * r + b
            for dy in range(-p, p + 1):
                sy, ky = (a + dy) % r, (a + dy) // r - lo
                for dx in range(-p, p + 1):
                    sx, kx = (b + dx) % r, (b + dx) // r - lo
                    channels = torch.arange(f) * r * r + sy * r + sx
                    out[phase[:, None], channels[None, :], ky, kx] = w[:, :, dy + p, dx + p]
    bias = tail.bias.detach() if tail.bias is not None else torch.zeros(c_out, dtype=w.dtype)
    return out, bias.repeat_interleave(r * r)


def move_tail_before_shuffle(model: nn.Module) -> nn.Module:
    """An equivalent copy of `model` whose output convolution runs before the last pixel shuffle
    (see the module docstring), or `model` itself when it does not end the SRResNet way. The
    original is untouched, and torch's random state too (nothing is initialised at random)."""
    found = _tail_pattern(model)
    if found is None:
        return model
    _conv, r, act, tail = found
    _lo, hi = _offsets(tail.kernel_size[0], r)  # symmetric: lo == -hi for any odd k and r
    weight, bias = subpixel_weights(tail, r)
    fused = nn.utils.skip_init(
        nn.Conv2d, weight.shape[1], weight.shape[0], weight.shape[2], padding=hi, device=weight.device
    ).to(dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    rewritten = copy.deepcopy(model)
    rewritten.upsample = nn.Sequential(*rewritten.upsample[:-2], copy.deepcopy(act), fused, nn.PixelShuffle(r))
    rewritten.tail = nn.Identity()
    return rewritten
