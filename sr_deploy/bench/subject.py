"""The model under test in the forms the backends need, and the backends made from it.

MODEL may be a checkpoint / bundled name / `nn.Module` (every backend; ONNX exports are made on
first use, one per precision), an ``.onnx`` file (ONNX Runtime and TensorRT) or an ``.engine``
(TensorRT). Which backend can run here, and why not, comes from the backend table
(`sr_deploy.backends.table`); this module adds what depends on the subject (an ONNX file cannot
run on torch, an fp32 graph gives no fp16 row...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backends.table import spec_for_bench_name, spec_for_suffix
from ..errors import InputError, NotInstalledError, SRDeployError
from ..model_file import kind_of_file
from ..util import Progress, first_line
from ..util.onnx_facts import graph_precision, load_onnx_file, metadata

NO_BF16_ONNX = "no bf16 ONNX export (sr-deploy export writes fp32 or fp16 graphs)"


@dataclass
class Subject:
    """The model in the forms the backends need."""

    name: str
    module: nn.Module | None  # None for an ONNX / engine input
    arch: str
    scale: int
    onnx_path: Path | None = None  # a given .onnx input
    onnx_precision: str | None = None
    engine_path: Path | None = None


def load_subject(model: str | Path | nn.Module) -> Subject:
    """MODEL as a `Subject`; InputError for a missing or unreadable file."""
    if isinstance(model, nn.Module):
        scale = getattr(model, "scale", None)
        if scale is None:
            raise InputError(f"{type(model).__name__}: no `scale` attribute")
        return Subject(type(model).__name__, model.eval(), type(model).__name__, int(scale))
    from ..models import existing_model_path, load_checkpoint, resolve_model_path

    path = resolve_model_path(model)
    spec_for_suffix(path)  # the one message for a suffix no backend opens
    kind = kind_of_file(path)  # the model-file table says what kind of file this is
    if kind is not None and kind.name == "onnx":
        proto = load_onnx_file(path, load_weights=False)
        meta = metadata(proto)
        return Subject(
            str(model),
            None,
            meta.get("sr_deploy.arch", "onnx"),
            int(meta.get("sr_deploy.scale", 0)),
            onnx_path=path,
            onnx_precision=graph_precision(proto),
        )
    if kind is not None and kind.name == "engine":
        from ..engine import check_engine_file, read_sidecar

        engine = check_engine_file(existing_model_path(path))
        sidecar = read_sidecar(engine)  # the scale it was built at; 0 (unknown) without one
        return Subject(
            str(model), None, "TensorRT engine", int(sidecar.scale or 0) if sidecar else 0, engine_path=engine
        )
    ckpt = load_checkpoint(path)
    return Subject(str(model), ckpt.model, ckpt.arch, ckpt.scale)


def given_onnx(paths: Sequence[str | Path]) -> dict[str, Path]:
    """{precision: path} for ONNX files given with --onnx; InputError for a missing / unreadable
    file or two files of the same precision."""
    out: dict[str, Path] = {}
    for p in paths:
        path = Path(p)
        prec = graph_precision(load_onnx_file(path, load_weights=False))
        if prec in out:
            raise InputError(f"{path}: two {prec} ONNX files given ({out[prec].name} and {path.name}); give one")
        out[prec] = path
    return out


class OnnxFiles:
    """ONNX exports of the subject, made once per precision on first use, in a temporary folder."""

    def __init__(self, subject: Subject, folder: Path, say: Progress, given: dict[str, Path] | None = None) -> None:
        self.subject, self.folder, self.say = subject, folder, say
        self.files: dict[str, Path] = dict(given or {})
        self.errors: dict[str, str] = {}

    def get(self, precision: str) -> Path:
        """The `precision` graph (fp32 / fp16); `subject_refusal` has refused the rows it cannot give."""
        if self.subject.onnx_path is not None:
            return self.subject.onnx_path
        if precision in self.errors:
            raise SRDeployError(self.errors[precision])
        if precision not in self.files:
            self.files[precision] = self._export(precision)
        return self.files[precision]

    def _export(self, precision: str) -> Path:
        try:
            from ..export import export_onnx
        except ImportError as exc:
            raise NotInstalledError(f"ONNX export is not available in this build ({first_line(exc)})") from exc
        out = self.folder / f"model-{precision}.onnx"
        self.say(f"exporting the model to ONNX ({precision}) for the ONNX Runtime / TensorRT rows")
        try:
            export_onnx(self.subject.module, out, fp16=(precision == "fp16"), verify=False, log=None)
        except Exception as exc:
            self.errors[precision] = f"ONNX export ({precision}) failed: {first_line(exc)}"
            raise SRDeployError(self.errors[precision]) from exc
        return out


def subject_refusal(name: str, precision: str, subject: Subject) -> str | None:
    """Why the benchmark backend `name` cannot run `subject` at `precision` whatever is installed
    (an ONNX file on torch, an engine on ONNX Runtime, a bf16 ONNX row...), or None."""
    spec, _ = spec_for_bench_name(name)
    if spec.runs_modules:
        if subject.module is None:
            return f"the {spec.name} backend needs a PyTorch checkpoint; MODEL is " + (
                "an ONNX file" if subject.onnx_path else "a TensorRT engine"
            )
        return None
    if subject.engine_path is not None:
        return (
            None if spec.opens(subject.engine_path.suffix.lower()) else f"{spec.name} cannot run a TensorRT engine file"
        )
    if precision == "bf16" and not spec.opens(".engine"):
        return NO_BF16_ONNX
    if subject.onnx_path is not None:
        graph = "fp16" if precision == "fp16" else "fp32"  # the graph `make_backend` runs for the row
        if graph != subject.onnx_precision:
            return (
                f"{subject.onnx_path.name} is an {subject.onnx_precision} graph; "
                f"benchmark an {graph} export of it for {precision} rows"
            )
    return None


def check_some_row_runs(rows: Sequence[tuple[str, str, str]], subject: Subject) -> None:
    """Before anything is measured, when none of the (backend, device, precision) `rows` can run:
    NotInstalledError (exit 2) naming what is missing here (the backend table's reasons, which name
    the extra to install) for the rows MODEL could run on; InputError (exit 2) saying why, when
    every row refuses MODEL itself (an ONNX file on torch)."""
    missing: list[str] = []
    refused: list[str] = []
    for name, device, precision in rows:
        refusal = subject_refusal(name, precision, subject)
        if refusal:
            refused.append(refusal)
            continue
        reason = spec_for_bench_name(name)[0].available(device)
        if reason is None:
            return
        missing.append(reason)
    if not missing:  # every row refused MODEL itself (an ONNX file on torch...): the command's input
        raise InputError(f"no row asked for can run MODEL: {'; '.join(dict.fromkeys(refused))}")
    raise NotInstalledError(f"no row could run on this machine: {'; '.join(dict.fromkeys(missing))}")


def make_backend(name: str, device: str, precision: str, subject: Subject, onnx_files: OnnxFiles) -> Any:
    """A ready backend for a benchmark row, or NotInstalledError / InputError with the reason it
    cannot run here (the backend table's availability check first, then the subject's own limits)."""
    from ..backends import load

    spec, variant = spec_for_bench_name(name)
    reason = spec.available(device) or subject_refusal(name, precision, subject)
    if reason:
        raise NotInstalledError(reason)
    if spec.runs_modules:
        return load(subject.module, device=device, precision=precision, backend=spec.name, **variant)
    if subject.engine_path is not None:
        return load(subject.engine_path, device=device, precision=precision, backend=spec.name, **variant)
    # fp16 lives in the ONNX graph (TensorRT 11 is strongly typed); fp32 I/O either way.
    onnx_path = onnx_files.get("fp16" if precision == "fp16" else "fp32")
    return load(onnx_path, device=device, precision=precision, backend=spec.name, **variant)


def backend_inputs(name: str, device: str, batches: list[np.ndarray]) -> list[Any]:
    """The batches in the form the backend takes without a host copy: torch tensors already on
    the GPU on CUDA, else the backend's host kind from the table (torch for torch, numpy else)."""
    if device.startswith("cuda"):
        return [torch.from_numpy(b).to(device) for b in batches]
    if spec_for_bench_name(name)[0].host_input == "torch":
        return [torch.from_numpy(b) for b in batches]
    return batches


def flops_of(subject: Subject) -> tuple[float | None, str]:
    """(convolution FLOPs per input pixel or None, where the count comes from)."""
    if subject.module is not None:
        from ..models import count_flops_per_lr_pixel

        return count_flops_per_lr_pixel(subject.module), "PyTorch model (sr_deploy.models.count_flops_per_lr_pixel)"
    if subject.onnx_path is not None:
        try:
            return onnx_conv_flops_per_lr_pixel(subject.onnx_path), "ONNX graph Conv nodes"
        except Exception as exc:
            return None, f"unknown ({first_line(exc)})"
    return None, "unknown (TensorRT engine)"


class Reference:
    """The parity reference, cached per input batch: PyTorch fp32 on the CPU (NCHW) for a module;
    ONNX Runtime fp32 on the CPU for an fp32 ONNX file; none otherwise (`fn` is None)."""

    def __init__(self, subject: Subject) -> None:
        self.fn: Callable[[np.ndarray], Any] | None = None
        self.description = "none (no float32 model to compare with)"
        self.note = ""
        if subject.module is not None:
            from ..backends.torch_backend import TorchBackend

            self.fn = TorchBackend(subject.module, subject.scale, "cpu", "fp32", channels_last=False)
            self.description = "PyTorch fp32 on the CPU (NCHW)"
        elif subject.onnx_path is not None and subject.onnx_precision == "fp32":
            from ..backends.ort_backend import OnnxRuntimeBackend

            self.fn = OnnxRuntimeBackend(subject.onnx_path, device="cpu", precision="fp32")
            self.description = f"ONNX Runtime fp32 on the CPU running {subject.onnx_path.name} (no PyTorch model given)"
            self.note = "MODEL is an ONNX file: parity is against ONNX Runtime fp32 on the CPU, not PyTorch."
        self._cache: dict[tuple[int, ...], np.ndarray] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        key = (id(x),) + tuple(x.shape)
        if key not in self._cache:
            self._cache[key] = np.asarray(self.fn(x))  # type: ignore[misc]
        return self._cache[key]

    def close(self) -> None:
        if self.fn is not None and hasattr(self.fn, "close"):
            self.fn.close()


def onnx_conv_flops_per_lr_pixel(onnx_path: str | Path, height: int = 32, width: int = 32) -> float:
    """Convolution FLOPs (2 x MACs) per input pixel of an ONNX super-resolution graph, counted from
    its Conv nodes' weights and the output sizes that shape inference gives for a (1, 3, height,
    width) input: the same count as `sr_deploy.models.count_flops_per_lr_pixel`."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (1, 3, height, width)):
        d.Clear()
        d.dim_value = v
    inferred = shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    # fp16 graphs may feed a Conv through Cast / Identity nodes from an initializer.
    producers = {o: n for n in model.graph.node for o in n.output}
    total = 0
    for node in inferred.graph.node:
        if node.op_type != "Conv":
            continue
        wname = node.input[1]
        while wname not in weights and wname in producers and producers[wname].op_type in ("Cast", "Identity"):
            wname = producers[wname].input[0]
        if wname not in weights:
            constant = producers.get(wname)
            if constant is None or constant.op_type != "Constant":
                raise ValueError(f"{onnx_path}: cannot find the weights of Conv {node.name}")
            wshape = tuple(numpy_helper.to_array(constant.attribute[0].t).shape)
        else:
            wshape = weights[wname]
        out = shapes.get(node.output[0])
        if not out or len(out) != 4 or min(out) <= 0:
            raise ValueError(f"{onnx_path}: shape inference gave no output size for Conv {node.name}")
        macs_per_output = int(np.prod(wshape[1:]))  # (Cin / groups) * kh * kw
        total += 2 * macs_per_output * int(np.prod(out))
    return total / (height * width)
