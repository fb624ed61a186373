"""PyTorch -> ONNX: one self-contained file with dynamic shapes, metadata, and a parity check.

    from sr_deploy.export import export_onnx
    result = export_onnx("default", "model.onnx")              # fp32, dynamic N/H/W, opset 18
    result = export_onnx(model, "model-fp16.onnx", fp16=True)  # fp16 graph, float32 I/O

The graph takes one input `input`: (N, 3, H, W) float32 RGB in [0, 1] and returns `output`:
(N, 3, sH, sW) float32, unclamped. `metadata_props` carry `sr_deploy.scale`, `sr_deploy.arch`,
`sr_deploy.input` (`rgb_float01_nchw`), `sr_deploy.live_values_per_hr_pixel` (tiling's memory
model), `sr_deploy.version`, `sr_deploy.source_sha256`,
`sr_deploy.precision` (fp32/fp16) and `sr_deploy.exporter`.
"""

from __future__ import annotations

import hashlib
import io
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import __version__
from .errors import InputError, SRDeployError
from .export_shapes import export_with_shapes
from .models.registry import module_facts
from .models.spec import ModelFacts
from .onnx_graph import (  # noqa: F401 - FP16_* and count_fp16_tensors re-exported: callers import them from here
    FP16_MAX_RELATIVE_ERROR,
    FP16_SAFE_MAX,
    calibrate_fp16_block_list,
    convert_to_fp16,
    count_fp16_tensors,
    name_nodes,
    save_onnx,
)
from .parity import ParityReport, check_thresholds, parity, parity_inputs
from .util import Progress, check_local_path, first_line, parse_dims, progress_to, quiet, to_stderr
from .util.memory import check_call_fits
from .util.onnx_facts import (
    LIVE_VALUES_KEY,
    read_onnx_metadata,  # noqa: F401 - re-exported: callers import it from here
)

INPUT_NAME = "input"
OUTPUT_NAME = "output"
INPUT_CONVENTION = "rgb_float01_nchw"
EXPORTERS = ("dynamo", "legacy")
# The example input the graph is traced with; its values do not matter, the dims are made dynamic.
EXAMPLE_SHAPE = (2, 3, 32, 32)


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how it checked it."""

    path: Path
    arch: str
    scale: int
    opset: int
    exporter: str  # the exporter that produced the file: "dynamo" or "legacy"
    fallback_reason: str | None  # why the dynamo exporter was abandoned, when it was
    static_shape: tuple[int, int, int] | None
    precision: str  # "fp32" or "fp16"
    fp16_block_list: list[str] = field(default_factory=list)
    simplified: bool = False
    seconds: float = 0.0  # export + checks, without the parity run
    parity: ParityReport | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


class ParityError(SRDeployError):
    """The exported file disagrees with the torch model (exit 1); the file is kept."""

    def __init__(self, message: str, result: ExportResult) -> None:
        super().__init__(message)
        self.result = result
        self.parity = result.parity


def parse_static_shape(text: str | Sequence[int] | None) -> tuple[int, int, int] | None:
    """`"1x3x64x64"`-style or `"N,H,W"` / `"NxHxW"` text (or a sequence) -> (N, H, W)."""
    if text is None:
        return None
    if isinstance(text, str):
        values = list(parse_dims(text, what="--static", expected="NxHxW, e.g. 1x256x256", counts=(3, 4)))
    else:
        values = [int(v) for v in text]
    if len(values) == 4 and values[1] == 3:
        values = [values[0], values[2], values[3]]
    if len(values) != 3 or min(values) < 1:
        raise InputError(f"--static {text!r}: expected NxHxW with positive sizes, e.g. 1x256x256")
    return values[0], values[1], values[2]


def check_opset(opset: int) -> int:
    """InputError unless the installed onnx package knows `opset` (and the exporters can aim at it)."""
    import onnx

    highest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or opset < 9 or opset > highest:
        raise InputError(
            f"opset {opset} is not available: the installed onnx {onnx.__version__} handles opsets 9 to {highest}"
        )
    return opset


def _check_output(output: Path, source: Path | None) -> None:
    """The output must be a .onnx path in an existing, writable folder, and not the input."""
    if output.suffix.lower() != ".onnx":
        raise InputError(f"{output}: the output file must end in .onnx")
    parent = output.parent
    if not parent.is_dir():
        raise InputError(f"{output}: the output folder {parent} does not exist")
    if source is not None and output.resolve() == source.resolve():
        raise InputError(f"{output}: the output would overwrite the input model")
    try:  # os.access says yes to root even on read-only mounts: try for real
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{output.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise InputError(f"{output}: the output folder {parent} is not writable ({exc.strerror or exc})") from None


def _state_sha256(model: nn.Module) -> str:
    """A fingerprint of an in-memory model's weights, standing in for a file's sha256."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_source(model: str | Path | nn.Module) -> tuple[nn.Module, ModelFacts, str, Path | None]:
    """(folded float32 CPU eval model, what is known about it, source sha256, source path or None).
    The facts come from the checkpoint's detection, or from the registry for a module built in code."""
    from .model_file import file_kind
    from .models import fold_batch_norm, load_checkpoint, resolve_model_path

    if isinstance(model, nn.Module):
        try:
            facts = module_facts(model)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        net, sha, path = model, _state_sha256(model), None
    else:
        path = resolve_model_path(model)
        if path.suffix.lower() not in file_kind("checkpoint").suffixes:
            raise InputError(
                f"{path}: unsupported model file type {path.suffix or '(no suffix)'!r}; "
                "export takes a PyTorch checkpoint (.pt / .pth / .ckpt / .safetensors)"
            )
        ckpt = load_checkpoint(path)  # InputError for missing / unreadable files
        net, facts, sha = ckpt.model, ckpt.facts, ckpt.sha256
    folded = fold_batch_norm(net).float().cpu().eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded, facts, sha, path


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int, static: bool) -> Any:
    dynamic_shapes = None
    if not static:
        # By position: the forward's argument need not be called `x`.
        dynamic_shapes = (
            {
                0: torch.export.Dim("batch", min=1, max=4096),
                2: torch.export.Dim("height", min=8, max=16384),
                3: torch.export.Dim("width", min=8, max=16384),
            },
        )
    with quiet():
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            optimize=True,
            verify=False,
            verbose=False,
            report=False,
        )
    if program is None:
        raise RuntimeError("the dynamo exporter returned no program")
    return program.model_proto


def _export_legacy(model: nn.Module, example: torch.Tensor, opset: int, static: bool) -> Any:
    import onnx

    dynamic_axes = None
    if not static:
        dynamic_axes = {
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"},
        }
    buffer = io.BytesIO()
    with quiet():
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def _input_dims(model: Any) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


def _simplify(model: Any) -> Any:
    """onnxslim, keeping the symbolic batch / height / width."""
    try:
        import onnxslim
    except ImportError:
        raise InputError("--simplify needs onnxslim: pip install 'sr-deploy[simplify]'") from None
    before = _input_dims(model)
    with quiet():
        slim = onnxslim.slim(model)
    if _input_dims(slim) != before:
        raise SRDeployError(f"onnxslim changed the input dims {before} -> {_input_dims(slim)}")
    return slim


def _metadata(
    scale: int,
    arch: str,
    source_sha: str,
    precision: str,
    exporter: str,
    source_path: Path | None,
    block_list: Sequence[str],
) -> dict[str, str]:
    """The `metadata_props` an exported file carries (see the module docstring)."""
    meta = {
        "sr_deploy.scale": str(scale),
        "sr_deploy.arch": arch,
        "sr_deploy.input": INPUT_CONVENTION,
        "sr_deploy.version": __version__,
        "sr_deploy.source_sha256": source_sha,
        "sr_deploy.precision": precision,
        "sr_deploy.exporter": exporter,
    }
    if source_path is not None:
        meta["sr_deploy.source"] = source_path.name
    if block_list:
        meta["sr_deploy.fp16_block_list"] = ",".join(block_list)
    return meta


def _set_metadata(model: Any, meta: dict[str, str]) -> None:
    keep = [p for p in model.metadata_props if p.key not in meta]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)


def _check_and_save(proto: Any, output: Path, verified: Callable[[Path], None] | None = None) -> None:
    """`onnx.checker` (full check), then the atomic write, `verified` run on the written file before
    it takes its name (a Ctrl-C in the parity check leaves none); SRDeployError naming `output`."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        why = first_line(exc)
        raise SRDeployError(f"{output}: the exported graph fails onnx.checker ({why}); nothing written") from exc
    save_onnx(proto, output, verified)


def _root_cause(exc: BaseException) -> str:
    """`Type: first line` of the innermost cause: torch.onnx wraps the real reason."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {first_line(exc)}"


def _export_graph(
    net: nn.Module, output: Path, opset: int, static: tuple[int, int, int] | None, exporter: str, say: Progress
) -> tuple[Any, str, str | None]:
    """(ONNX ModelProto with local functions inlined and every node named, the exporter used, why the
    dynamo exporter was abandoned or None). SRDeployError when no exporter succeeds."""
    example = torch.rand(
        (static[0], 3, static[1], static[2]) if static else EXAMPLE_SHAPE, generator=torch.Generator().manual_seed(0)
    )
    used, fallback_reason = exporter, None
    if exporter == "dynamo":
        try:
            proto = _export_dynamo(net, example, opset, static is not None)
        except Exception as exc:
            fallback_reason = _root_cause(exc)
            say(f"dynamo exporter failed ({fallback_reason}); falling back to the legacy exporter")
            used = "legacy"
    if used == "legacy":
        try:
            proto = _export_legacy(net, example, opset, static is not None)
        except Exception as exc:
            reasons = f"; dynamo: {fallback_reason}" if fallback_reason else ""
            raise SRDeployError(
                f"{output}: ONNX export failed (legacy: {first_line(exc)}{reasons}); nothing written"
            ) from exc
    return _inlined(proto), used, fallback_reason


def _export_any_shape(
    net: nn.Module,
    facts: ModelFacts,
    output: Path,
    opset: int,
    static: tuple[int, int, int] | None,
    exporter: str,
    say: Progress,
) -> tuple[Any, str, str | None, tuple[int, int, int] | None, dict[str, str]]:
    """(graph, exporter used, fallback note, static shape or None, shape metadata). Asked for
    dynamic: dynamic only when the graph really is, else static with the reason (export_shapes.py).
    The metadata records the static fallback's reason and the model's `size_multiple` (the graph
    pads to it inside; inputs of that multiple need no padding)."""
    meta: dict[str, str] = {}
    if static is None:
        exporters = {"dynamo": _export_dynamo, "legacy": _export_legacy}
        plan = export_with_shapes(net, facts, opset, exporter, exporters, EXAMPLE_SHAPE, say, str(output))
        proto, used, static, note = _inlined(plan.proto), plan.exporter, plan.static, plan.note
        if static is not None:
            meta["sr_deploy.static_reason"] = note or ""
    else:
        proto, used, note = _export_graph(net, output, opset, static, exporter, say)
    if facts.size_multiple > 1:
        meta["sr_deploy.size_multiple"] = str(facts.size_multiple)
    return proto, used, note, static, meta


def _inlined(proto: Any) -> Any:
    """`proto` with local functions inlined and every node named (fp16 block lists name nodes)."""
    import onnx

    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    name_nodes(proto)
    return proto


def _to_fp16(
    proto: Any, static: tuple[int, int, int] | None, fp16_block_list: Sequence[str] | None, say: Progress
) -> tuple[Any, list[str]]:
    """(the fp16 graph, the nodes kept in fp32): `fp16_block_list` as given, or calibrated on Set5
    crops at the static shape (64x64, batch 2 when dynamic) when None."""
    if fp16_block_list is not None:
        block_list = list(fp16_block_list)
    else:
        say("calibrating the fp16 block list on Set5 crops")
        sizes = ((static[1], static[2]),) if static else ((64, 64),)
        block_list = calibrate_fp16_block_list(proto, parity_inputs(sizes, static[0] if static else 2))
    return convert_to_fp16(proto, block_list=block_list), block_list


def verify_onnx(
    reference: nn.Module,
    onnx_path: str | Path,
    precision: str,
    static_shape: tuple[int, int, int] | None = None,
    sizes: Sequence[tuple[int, int]] = ((64, 64), (50, 70)),
    batch: int = 2,
) -> ParityReport:
    """Parity of the ONNX file on ONNX Runtime CPU against `reference` in torch float32, on Set5
    crops at `sizes` with `batch` images each (the static shape alone for a static file).
    An fp16 graph runs with real fp16 rounding between nodes, as on a GPU (`emulate_fp16`; the CPU
    provider alone would compute it in float32). Thresholds are checked (`report.passed`) for
    `precision`; nothing is raised."""
    from .backends.ort_backend import OnnxRuntimeBackend
    from .backends.torch_backend import TorchBackend

    if static_shape is not None:
        sizes, batch = ((static_shape[1], static_shape[2]),), static_shape[0]
    torch_fp32 = TorchBackend(reference, None, "cpu", "fp32", channels_last=False)
    with OnnxRuntimeBackend(onnx_path, device="cpu", emulate_fp16=True) as candidate:
        report = parity(torch_fp32, candidate, parity_inputs(sizes, batch))
    check_thresholds(report, precision)
    return report


# long: its 13 options take a line each after `ruff format`; the body itself is 71 lines
def export_onnx(
    model: str | Path | nn.Module,
    output: str | Path,
    *,
    opset: int = 18,
    static_shape: str | Sequence[int] | None = None,
    exporter: str = "dynamo",
    fp16: bool = False,
    fp16_block_list: Sequence[str] | None = None,
    simplify: bool = False,
    verify: bool = True,
    log: Progress | None = to_stderr,
) -> ExportResult:
    """Export a generator to one self-contained ONNX file.

    Args:
        model: a checkpoint path (.pt/.pth/.ckpt/.safetensors, any layout `load_checkpoint` reads), a bundled name
            (``default``) or an `nn.Module` with a `scale` attribute.
        output: the `.onnx` file to write, in an existing writable folder.
        opset: ONNX opset (default 18).
        static_shape: None for dynamic batch / height / width, or (N, H, W) / "NxHxW" to fix them.
        exporter: ``dynamo`` (torch.export based; falls back to ``legacy`` with the reason
            logged when it fails) or ``legacy`` (TorchScript based).
        fp16: write an fp16 graph with float32 inputs and outputs.
        fp16_block_list: nodes / op types kept in fp32; None calibrates it on Set5 crops
            (`calibrate_fp16_block_list`), [] keeps nothing back.
        simplify: run onnxslim (keeps the dynamic dims).
        verify: after writing, check parity with the torch float32 model on ONNX Runtime CPU
            (fp32: max abs <= 1e-4; fp16: PSNR >= 50 dB).
        log: where progress and the fallback reason go (default stderr; None for silence).

    Raises:
        InputError (exit 2): missing / unsupported model file, bad output folder, bad opset or
            static shape, unknown exporter. Nothing is written.
        SRDeployError (exit 1): export or checker failure (nothing written), or a failed
            parity check (the file is kept, and named in the message).
    """
    say = progress_to(log)
    output = check_local_path(output)
    if exporter not in EXPORTERS:
        raise InputError(f"unknown exporter {exporter!r}: expected dynamo or legacy")
    check_opset(opset)
    static = parse_static_shape(static_shape)
    net, facts, source_sha, source_path = _load_source(model)
    arch, scale = facts.arch, facts.scale
    _check_output(output, source_path)
    if static:  # the export and its parity check run the model at that shape
        shape, live = "x".join(map(str, static)), facts.live_values_per_hr_pixel
        check_call_fits(f"--static {shape}", math.prod(static), scale, live)

    start = time.perf_counter()
    proto, used, fallback_reason, static, shape_meta = _export_any_shape(
        net, facts, output, opset, static, exporter, say
    )
    if simplify:
        proto = _simplify(proto)
        name_nodes(proto)

    block_list: list[str] = []
    if fp16:
        proto, block_list = _to_fp16(proto, static, fp16_block_list, say)
    precision = "fp16" if fp16 else "fp32"
    meta = _metadata(scale, arch, source_sha, precision, used, source_path, block_list)
    meta[LIVE_VALUES_KEY] = str(facts.live_values_per_hr_pixel)
    meta.update(shape_meta)
    _set_metadata(proto, meta)
    result = ExportResult(
        path=output,
        arch=arch,
        scale=scale,
        opset=opset,
        exporter=used,
        fallback_reason=fallback_reason,
        static_shape=static,
        precision=precision,
        fp16_block_list=block_list,
        simplified=simplify,
        metadata=meta,
    )

    def checked(written: Path) -> None:  # before the file takes its final name
        result.seconds = time.perf_counter() - start
        if verify:
            say("checking parity with the torch float32 model on ONNX Runtime CPU")
            result.parity = verify_onnx(net, written, precision, static)

    _check_and_save(proto, output, checked)
    if result.parity is not None and not result.parity.passed:
        raise ParityError(
            f"{output}: parity check failed ({result.parity.criterion}); the file is kept for inspection", result
        )
    return result
