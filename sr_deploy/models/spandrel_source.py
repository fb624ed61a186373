"""spandrel as one more source of architectures for the registry (optional: `sr-deploy[spandrel]`).

spandrel (MIT, used by chaiNNer and ComfyUI) recognises ~40 image-model architectures from a state
dict alone: ESRGAN variants, Compact, SPAN, PLKSR / RealPLKSR, OmniSR, SwinIR, HAT, DAT, SAFMN,
RealCUGAN and more. It is asked only when none of our native layouts matched.

A spandrel model is wrapped in `SpandrelModule`, which gives it the contract every sr-deploy model
has: `forward` takes (N, 3, H, W) float32 RGB in [0, 1] of any H, W (inputs are padded to the
architecture's size multiple and minimum, and the output cropped back) and returns
(N, 3, scale*H, scale*W), unclamped; `scale` and `size_multiple` attributes.

Refused with one line: inpainting models (they need a mask), models whose input or output is not
3-channel RGB (greyscale denoisers, RGBA). Restoration models of scale 1 (denoisers, JPEG
artefact removal) are accepted as x1 models.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..util.text import first_line
from .spec import DEFAULT_LIVE_VALUES_PER_HR_PIXEL, Detection, StateDict

INSTALL_HINT = "pip install 'sr-deploy[spandrel]'"

# Tiling's memory model per architecture (values alive per output pixel). Window-attention
# transformers keep many wide feature maps plus attention matrices at the input resolution; the
# convolutional ones are near the ESRGAN figure. Rough, on the safe side: an out-of-memory error
# still halves the tile.
_TRANSFORMERS = (
    "SwinIR",
    "Swin2SR",
    "HAT",
    "DAT",
    "DRCT",
    "ATD",
    "GRL",
    "RGT",
    "IPT",
    "CRAFT",
    "FDAT",
    "MoSR",
    "Uformer",
    "SCUNet",
    "DITN",
    "OmniSR",
    "SeemoRe",
    "MoESR",
)


# TorchScript tracing exports more of these architectures, and a failure there is an exception,
# where the dynamo exporter can crash the process (`sr_deploy.export_shapes`).
PREFERRED_EXPORTER = "legacy"


def live_values_for(arch: str) -> int:
    """Tiling's memory model for a spandrel architecture id."""
    if arch in _TRANSFORMERS:
        return 4 * DEFAULT_LIVE_VALUES_PER_HR_PIXEL
    return DEFAULT_LIVE_VALUES_PER_HR_PIXEL


class SpandrelModule(nn.Module):
    """A spandrel model with the sr-deploy model contract (see the module docstring).

    Args:
        model: the architecture's `nn.Module`.
        arch: spandrel's architecture id (the registry's name for it).
        call: how spandrel calls it (`descriptor._call_fn`; most are `model(x)`).
        scale: the upscaling factor (1 for restoration models).
        size_multiple: input H and W must be multiples of this (padding makes them so).
        minimum: smallest input side the architecture takes (padding makes it so).
    """

    def __init__(
        self,
        model: nn.Module,
        call: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        scale: int,
        size_multiple: int = 1,
        minimum: int = 0,
        arch: str = "",
    ) -> None:
        super().__init__()
        self.model = model
        self.arch = arch or type(model).__name__
        self._call = call
        self.scale = scale
        self.size_multiple = max(1, size_multiple)
        self.minimum = minimum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = False
        if self.size_multiple > 1:
            m = self.size_multiple
            x = F.pad(x, (0, (m - width % m) % m, 0, (m - height % m) % m), mode="replicate")
            padded = True
        if self.minimum > 0 and not (torch.compiler.is_exporting() or torch.jit.is_tracing()):
            # Only inputs under the minimum (tiny tiles) need it; an exported graph (traced at a
            # size above it) leaves it out rather than fix its shapes.
            pad_h, pad_w = max(0, self.minimum - int(x.shape[-2])), max(0, self.minimum - int(x.shape[-1]))
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
                padded = True
        if not padded:
            x = x.clone()  # some architectures scale their input in place (RCAN: x *= 255): not the caller's
        out = self._call(self.model, x)
        if padded:
            out = out[..., : height * self.scale, : width * self.scale]
        return out


class SpandrelSource:
    """The registry's `SpecSource` for spandrel."""

    name = "spandrel"

    def available(self) -> str | None:
        try:
            import spandrel  # noqa: F401
        except ImportError as exc:
            return f"spandrel is not installed ({exc}); {INSTALL_HINT} reads ~40 more architectures"
        except Exception as exc:  # e.g. a torchvision that does not match torch
            text = first_line(exc, limit=10_000)
            return f"spandrel cannot be imported ({type(exc).__name__}: {text})"
        return None

    def version(self) -> str:
        import spandrel

        return getattr(spandrel, "__version__", "?")

    def detect(self, state: StateDict) -> Detection | None:
        from spandrel import MAIN_REGISTRY

        support = next((a for a in MAIN_REGISTRY.architectures("detection") if _quietly(a.detect, state)), None)
        if support is None:
            return None
        arch = str(support.architecture.id)
        try:
            descriptor = _quietly(support.architecture.load, state)
        except Exception as exc:
            raise ValueError(
                f"spandrel recognised {arch} but could not load it ({first_line(exc, limit=160)})"
            ) from exc
        return _detection(arch, descriptor, self.version())


def _detection(arch: str, descriptor: Any, version: str) -> Detection:
    purpose = getattr(descriptor, "purpose", "?")
    if purpose == "Inpainting":
        raise ValueError(f"a {arch} inpainting model (it needs a mask), not a super-resolution model")
    channels = (descriptor.input_channels, descriptor.output_channels)
    if channels != (3, 3):
        raise ValueError(
            f"a {arch} model with {channels[0]} input and {channels[1]} output channels; "
            "sr-deploy runs RGB models (3 in, 3 out)"
        )
    req = descriptor.size_requirements
    if getattr(req, "square", False):
        raise ValueError(f"a {arch} model that needs square inputs; sr-deploy tiles rectangles")
    scale = int(descriptor.scale)
    module = SpandrelModule(descriptor.model, descriptor._call_fn, scale, req.multiple_of, req.minimum, arch)
    module = module.float().eval()
    config: dict[str, Any] = {
        "purpose": purpose,
        "tags": list(descriptor.tags),
        "size_multiple": module.size_multiple,
        "minimum_size": req.minimum,
        "supports_fp16": bool(descriptor.supports_half),
        "supports_bf16": bool(descriptor.supports_bfloat16),
    }
    notes = []
    if scale == 1:
        notes.append(f"a x1 {purpose.lower()} model: the output has the input's size")
    if not descriptor.supports_half:
        notes.append("spandrel marks it as not fp16-safe: prefer fp32")
    return Detection(
        arch=arch,
        config=config,
        scale=scale,
        source=f"spandrel {version} ({arch})",
        build=lambda: module,
        live_values_per_hr_pixel=live_values_for(arch),
        size_multiple=module.size_multiple,
        notes=notes,
        minimum=int(req.minimum or 0),
        preferred_exporter=PREFERRED_EXPORTER,
    )


def _quietly(fn: Callable[..., Any], *args: Any) -> Any:
    """Run spandrel code without its warnings and prints (timm / deprecation chatter)."""
    logger = logging.getLogger("spandrel")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return fn(*args)
    finally:
        logger.setLevel(level)


SPANDREL = SpandrelSource()
