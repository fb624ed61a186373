"""Which input shapes an exported graph gets: dynamic N/H/W when the graph really is dynamic,
else a static shape, said so.

An exporter can "succeed" and still give a graph that only works at the example's size: the
dynamo exporter specialises a dim it cannot keep symbolic (the input then reads 32 instead of
`height`), and TorchScript tracing bakes window-attention reshapes (`H // window`) as constants.
So a dynamic export is accepted only when its input dims are symbolic AND ONNX Runtime gives the
torch result at two other shapes (`PROBE_SHAPES`, odd sizes and batch 2). Otherwise the other
exporter is tried, and when neither gives a dynamic graph, a static one of
`STATIC_FALLBACK_SIZE` (rounded up to the model's `size_multiple`): runtimes pad smaller inputs
to it and tile larger ones (`OnnxRuntimeBackend`'s `max_shape`, `sr_deploy.tiling`).

Models may name the exporter to try first (`preferred_exporter`): spandrel's architectures prefer
the TorchScript exporter, which handles more of them and never crashes the process (the dynamo
exporter segfaults inside torch on SPAN with torch 2.14).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .errors import SRDeployError
from .models.spec import ModelFacts
from .util.text import first_line

# (model, example input, opset, static) -> onnx.ModelProto
Exporter = Callable[[nn.Module, torch.Tensor, int, bool], Any]
STATIC_FALLBACK_SIZE = 128
PROBE_SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 3, 37, 29), (2, 3, 24, 44))
# A dynamic graph that is right gives the torch result to float rounding; a baked shape is far off.
PROBE_TOLERANCE = 1e-3


@dataclass
class ShapePlan:
    """What `export_with_shapes` produced: the graph, the exporter that made it, its static
    (N, H, W) or None for dynamic, and why dynamic export was given up (empty when it was not)."""

    proto: Any
    exporter: str
    static: tuple[int, int, int] | None
    failures: list[str] = field(default_factory=list)

    @property
    def note(self) -> str | None:
        """One line for `ExportResult.fallback_reason` and the metadata, or None."""
        if not self.failures:
            return None
        text = "; ".join(self.failures)
        if self.static is not None:
            text = f"static {'x'.join(map(str, self.static))} graph: no dynamic export ({text})"
        return text


def exporter_order(preferred: str | None, requested: str, exporters: Sequence[str]) -> list[str]:
    """`requested` first, then the others, unless the model prefers one (its spec's
    `preferred_exporter`) and the default (dynamo) was asked for."""
    first = preferred if preferred in exporters and requested == "dynamo" else requested
    return [first] + [e for e in exporters if e != first]


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {first_line(exc, 160)}"


def dynamic_problem(net: nn.Module, proto: Any) -> str | None:
    """None when `proto` has symbolic N/H/W and matches `net` at `PROBE_SHAPES` on ONNX Runtime
    CPU; else why not, in a few words."""
    import onnxruntime as ort

    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    fixed = [name for name, d in zip(("N", "C", "H", "W"), dims) if name != "C" and not isinstance(d, str)]
    if fixed:
        return f"the exporter fixed {'/'.join(fixed)} (input {'x'.join(map(str, dims))})"
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        return f"ONNX Runtime cannot load it ({first_line(exc, 120)})"
    name = session.get_inputs()[0].name
    for shape in PROBE_SHAPES:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[2]))
        with torch.inference_mode():
            ref = net(x).float().numpy()
        try:
            out = session.run(None, {name: x.numpy()})[0]
        except Exception as exc:
            return f"fails at {'x'.join(map(str, shape))} ({first_line(exc, 120)})"
        if out.shape != ref.shape:
            return f"gives {'x'.join(map(str, out.shape))} at {'x'.join(map(str, shape))}, torch {'x'.join(map(str, ref.shape))}"
        err = float(np.abs(out - ref).max())
        if not err <= PROBE_TOLERANCE * max(1.0, float(np.abs(ref).max())):
            return f"differs from torch at {'x'.join(map(str, shape))} (max abs {err:.2g})"
    return None


def static_fallback_shape(facts: ModelFacts, size: int | None = None) -> tuple[int, int, int]:
    """(1, S, S): `size` (default `STATIC_FALLBACK_SIZE`) rounded up to the model's `size_multiple`
    and its `minimum`."""
    multiple = max(1, facts.size_multiple)
    side = max(size or STATIC_FALLBACK_SIZE, facts.minimum)
    side = -(-side // multiple) * multiple
    return 1, side, side


def export_with_shapes(
    net: nn.Module,
    facts: ModelFacts,
    opset: int,
    requested: str,
    exporters: Mapping[str, Exporter],
    example_shape: tuple[int, int, int, int],
    say: Callable[[str], None],
    output_name: str,
) -> ShapePlan:
    """A dynamic graph when one of `exporters` gives a working one, else a static graph (see the
    module docstring). SRDeployError naming `output_name` when no exporter gives any graph."""
    order = exporter_order(facts.preferred_exporter, requested, list(exporters))
    failures: list[str] = []
    example = torch.rand(example_shape, generator=torch.Generator().manual_seed(0))
    for i, name in enumerate(order):
        following = f"falling back to the {order[i + 1]} exporter" if i + 1 < len(order) else "no exporter left"
        try:
            proto = exporters[name](net, example, opset, False)
        except Exception as exc:
            failures.append(f"{name}: {_root_cause(exc)}")
            say(f"{name} exporter failed ({failures[-1].split(': ', 1)[1]}); {following}")
            continue
        problem = dynamic_problem(net, proto)
        if problem is None:
            return ShapePlan(proto, name, None, failures)
        failures.append(f"{name}: {problem}")
        say(f"{name} exporter gave no working dynamic graph ({problem}); {following}")
    static = static_fallback_shape(facts)
    say(
        f"no dynamic graph ({'; '.join(failures)}); exporting a static {'x'.join(map(str, static))} graph: "
        "smaller inputs are padded to it, larger ones tiled"
    )
    example = torch.rand((static[0], 3, static[1], static[2]), generator=torch.Generator().manual_seed(0))
    static_failures = []
    for name in order:
        try:
            return ShapePlan(exporters[name](net, example, opset, True), name, static, failures)
        except Exception as exc:
            static_failures.append(f"{name}: {_root_cause(exc)}")
    raise SRDeployError(
        f"{output_name}: ONNX export failed (dynamic: {'; '.join(failures)}; static: "
        f"{'; '.join(static_failures)}); nothing written"
    )
