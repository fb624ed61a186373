"""The model registry: which architectures sr-deploy can build from a state dict, and what it
needs to know about each.

Every architecture module (`srresnet.py`, `rrdbnet.py`, `srvgg.py`, ...) ends with one or more
`ArchSpec`s: the `nn.Module` class, the state-dict layouts it recognises (each: a key test, the
hyper-parameters it implies, a renaming to the module's own keys), and its memory use per pixel.
`NATIVE_SPECS` below lists them; adding an architecture is one module plus one line there.

External libraries plug in as `SpecSource`s (`spandrel_source.py`): asked only when no native
layout matched, so our own architectures keep priority.

A state dict (`StateDict`) maps parameter names to CPU tensors, already unwrapped from its
container (`checkpoint.py` does that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]

# Memory model for the automatic tile size (`sr_deploy.tiling`): values a generator keeps alive per
# output (high-resolution) pixel while it runs. The SRResNet / ESRGAN family holds about two
# 64-channel feature maps at the output resolution.
DEFAULT_LIVE_VALUES_PER_HR_PIXEL = 128


@dataclass(frozen=True)
class Layout:
    """One way an architecture's weights are laid out in the wild.

    Attributes:
        source: how `info` names it, e.g. "BasicSR state dict", "ESRGAN old architecture".
        matches: True when a state dict is in this layout (cheap key tests only).
        infer_config: the constructor kwargs, read from the state dict in this layout.
        convert: the state dict renamed to the module's own parameter names (identity by default).
    """

    source: str
    matches: Callable[[Mapping[str, torch.Tensor]], bool]
    infer_config: Callable[[Mapping[str, torch.Tensor]], dict[str, Any]]
    convert: Callable[[Mapping[str, torch.Tensor]], StateDict] = dict


@dataclass(frozen=True)
class ArchSpec:
    """A native architecture: its module, the layouts it reads, its memory and size needs.

    Attributes:
        name: the class name, stored as `arch` in our checkpoints.
        module: the `nn.Module` class; its kwargs are the checkpoint's `config`.
        layouts: foreign layouts recognised, tried in order (our own format needs none).
        live_values_per_hr_pixel: activation values alive per output pixel (tiling's memory model).

    A module whose input sizes must be a multiple of something pads and crops inside `forward`
    and says so in a `size_multiple` attribute (exported to the ONNX metadata).
    """

    name: str
    module: type[nn.Module]
    layouts: tuple[Layout, ...] = ()
    live_values_per_hr_pixel: int = DEFAULT_LIVE_VALUES_PER_HR_PIXEL


@dataclass
class Detection:
    """What a state dict turned out to be, and how to build its model.

    `build()` returns the model with the weights loaded, in eval mode, float32, on the CPU; it
    raises `ValueError` with the reason when the weights do not fit.
    """

    arch: str
    config: dict[str, Any]
    scale: int
    source: str
    build: Callable[[], nn.Module]
    live_values_per_hr_pixel: int = DEFAULT_LIVE_VALUES_PER_HR_PIXEL
    size_multiple: int = 1
    notes: list[str] = field(default_factory=list)


class SpecSource(Protocol):
    """An external library of architectures (e.g. spandrel)."""

    name: str

    def available(self) -> str | None:
        """None when usable, else why not (one line, naming what to install)."""

    def detect(self, state: StateDict) -> Detection | None:
        """The detection for `state`, or None when the library does not know it. May raise
        `ValueError` when it knows the layout but cannot build it (the reason in one line)."""


def native_specs() -> tuple[ArchSpec, ...]:
    """Our own architectures, in detection order. One line per architecture."""
    from . import rrdbnet, srresnet, srvgg

    return (
        srresnet.SRRESNET_SPEC,
        srresnet.MSRRESNET_SPEC,
        rrdbnet.RRDBNET_SPEC,
        srvgg.SRVGG_SPEC,
    )


def external_sources() -> tuple[SpecSource, ...]:
    """Libraries asked after the native specs, in order."""
    from .spandrel_source import SPANDREL

    return (SPANDREL,)


def spec_by_name(name: str) -> ArchSpec | None:
    """The native spec whose `name` is `name`, or None."""
    return next((s for s in native_specs() if s.name == name), None)


def architectures() -> dict[str, type[nn.Module]]:
    """Native architecture name -> module class (what our checkpoints may name)."""
    return {s.name: s.module for s in native_specs()}


def detect_native(state: StateDict) -> tuple[ArchSpec, Layout] | None:
    """The first native (spec, layout) whose layout matches `state`, or None."""
    for spec in native_specs():
        for layout in spec.layouts:
            if layout.matches(state):
                return spec, layout
    return None


def live_values_per_hr_pixel(arch: str | None) -> int:
    """Tiling's memory model for `arch` (a native or an external architecture name); the
    SRResNet/ESRGAN family's figure when unknown."""
    if arch:
        spec = spec_by_name(arch)
        if spec is not None:
            return spec.live_values_per_hr_pixel
        from .spandrel_source import live_values_for

        return live_values_for(arch)
    return DEFAULT_LIVE_VALUES_PER_HR_PIXEL
