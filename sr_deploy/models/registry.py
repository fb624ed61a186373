"""The model registry: the list of architectures sr-deploy can build from a state dict, and the
lookups over it. The vocabulary (`ArchSpec`, `Layout`, `Detection`, `SpecSource`) is `spec.py`.

Every architecture module (`srresnet.py`, `rrdbnet.py`, `srvgg.py`, ...) ends with one or more
`ArchSpec`s; `native_specs()` below lists them. Adding an architecture is one module plus one
line there (the tests parametrise over this list, so they pick it up by themselves).

External libraries plug in as `SpecSource`s (`spandrel_source.py`): asked only when no native
layout matched, so our own architectures keep priority.
"""

from __future__ import annotations

from torch import nn

from . import rrdbnet, srresnet, srvgg
from .spandrel_source import PREFERRED_EXPORTER, SPANDREL, SpandrelModule, live_values_for
from .spec import DEFAULT_LIVE_VALUES_PER_HR_PIXEL, ArchSpec, Layout, ModelFacts, SpecSource, StateDict


def native_specs() -> tuple[ArchSpec, ...]:
    """Our own architectures, in detection order. One line per architecture."""
    return (
        srresnet.SRRESNET_SPEC,
        srresnet.MSRRESNET_SPEC,
        rrdbnet.RRDBNET_SPEC,
        srvgg.SRVGG_SPEC,
    )


def external_sources() -> tuple[SpecSource, ...]:
    """Libraries asked after the native specs, in order."""
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
        return live_values_for(arch)
    return DEFAULT_LIVE_VALUES_PER_HR_PIXEL


def module_facts(model: nn.Module) -> ModelFacts:
    """What export needs about a module built in code (no checkpoint, so no detection): its spec's
    facts, and the instance's own `scale` and `size_multiple` (they follow its config). ValueError
    when the module has no `scale`."""
    scale = getattr(model, "scale", None)
    if scale is None:
        raise ValueError(f"{type(model).__name__}: the model has no `scale` attribute")
    if isinstance(model, SpandrelModule):
        return ModelFacts(
            model.arch, int(scale), model.size_multiple, model.minimum, PREFERRED_EXPORTER, live_values_for(model.arch)
        )
    spec = spec_by_name(type(model).__name__)
    return ModelFacts(
        type(model).__name__,
        int(scale),
        int(getattr(model, "size_multiple", 1)),
        preferred_exporter=spec.preferred_exporter if spec else None,
        live_values_per_hr_pixel=spec.live_values_per_hr_pixel if spec else DEFAULT_LIVE_VALUES_PER_HR_PIXEL,
    )
