"""The vocabulary of the model registry: what an architecture declares about itself (`ArchSpec`,
its state-dict `Layout`s), what a state dict turned out to be (`Detection`), and what an external
library of architectures provides (`SpecSource`).

Architecture modules (`srresnet.py`, `rrdbnet.py`, `srvgg.py`...) import this module and end with
their `ArchSpec`s; `registry.py` lists them. Nothing here imports an architecture, so the
vocabulary, the architectures and the list stand in one direction (as spandrel keeps its
vocabulary, registry mechanism and architectures apart).

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
        example_config: constructor kwargs of a small instance (x4 unless it says otherwise):
            the tests build, save, reload, export and run every registered architecture with it.
        preferred_exporter: the ONNX exporter tried first (None: dynamo, then legacy).

    A module whose input sizes must be a multiple of something pads and crops inside `forward`
    and says so in a `size_multiple` attribute, which the detection reads once (the instance's
    value depends on its config); export and the ONNX metadata read it from the detection.
    """

    name: str
    module: type[nn.Module]
    layouts: tuple[Layout, ...] = ()
    live_values_per_hr_pixel: int = DEFAULT_LIVE_VALUES_PER_HR_PIXEL
    example_config: Mapping[str, Any] = field(default_factory=dict)
    preferred_exporter: str | None = None


@dataclass
class Detection:
    """What a state dict turned out to be, and how to build its model.

    `build()` returns the model with the weights loaded, in eval mode, float32, on the CPU; it
    raises `ValueError` with the reason when the weights do not fit. The facts beside it are what
    deployment reads (tiling's memory model, export's size multiple, minimum size and exporter):
    from here, never from the module's attributes.
    """

    arch: str
    config: dict[str, Any]
    scale: int
    source: str
    build: Callable[[], nn.Module]
    live_values_per_hr_pixel: int = DEFAULT_LIVE_VALUES_PER_HR_PIXEL
    size_multiple: int = 1
    notes: list[str] = field(default_factory=list)
    minimum: int = 0
    preferred_exporter: str | None = None


@dataclass(frozen=True)
class ModelFacts:
    """What export reads about a built model: its architecture and scale, the input sizes it
    pads to (`size_multiple`, `minimum`), the exporter to try first, and tiling's memory figure.
    From a checkpoint's detection (`LoadedCheckpoint.facts`) or, for a module built in code,
    from the registry (`registry.module_facts`)."""

    arch: str
    scale: int
    size_multiple: int = 1
    minimum: int = 0
    preferred_exporter: str | None = None
    live_values_per_hr_pixel: int = DEFAULT_LIVE_VALUES_PER_HR_PIXEL


class SpecSource(Protocol):
    """An external library of architectures (e.g. spandrel)."""

    name: str

    def available(self) -> str | None:
        """None when usable, else why not (one line, naming what to install)."""

    def detect(self, state: StateDict) -> Detection | None:
        """The detection for `state`, or None when the library does not know it. May raise
        `ValueError` when it knows the layout but cannot build it (the reason in one line)."""
