"""ONNX graph transforms shared by the ONNX exporter (`sr_deploy.export`) and the TensorRT builder
(`sr_deploy.backends.trt_build`): fp16 conversion with float32 I/O, the calibration of which nodes
stay fp32, counting fp16 tensors, node naming, the atomic save of a self-contained file.

Below the backends in the layers: it runs ONNX Runtime directly (for calibration), never a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SRDeployError
from .util import atomic_write, quiet
from .util.onnx_facts import load_onnx_file

# An activation above this magnitude is kept in fp32: fp16 tops out at 65504 and other
# images than the calibration crops may go higher, so leave a 4x margin.
FP16_SAFE_MAX = 16384.0
# fp16 keeps ~11 significant bits: its rounding alone gives an RMS relative error near 3e-4.
# Several times that means values fall into fp16's subnormal range and lose precision.
FP16_MAX_RELATIVE_ERROR = 2e-3


def name_nodes(model: Any) -> None:
    """Give every node a unique name, so that fp16 block lists can name nodes."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _as_model(model_or_path: Any, load_weights: bool = True) -> Any:
    if isinstance(model_or_path, (str, Path)):
        return load_onnx_file(model_or_path, load_weights)
    return model_or_path


def _split_block_list(model: Any, block_list: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Entries naming an op type present in the graph block that op type; others name nodes."""
    op_types = {n.op_type for n in model.graph.node}
    ops = [b for b in block_list or [] if b in op_types]
    nodes = [b for b in block_list or [] if b not in op_types]
    return ops, nodes


def convert_to_fp16(
    onnx_model_or_path: Any, output: str | Path | None = None, block_list: Sequence[str] | None = None
) -> Any:
    """An fp16 copy of an fp32 ONNX graph with float32 inputs and outputs (Cast nodes at the edges).

    Args:
        onnx_model_or_path: an `onnx.ModelProto` or a path to one.
        output: where to write the result (temporary name + rename); None: only return it.
        block_list: node names (e.g. from `calibrate_fp16_block_list`) and/or op types to keep
            in fp32, on top of onnxconverter-common's default op block list (Resize, ...).

    Returns the converted `onnx.ModelProto`.
    """
    from onnxconverter_common import float16

    model = _as_model(onnx_model_or_path)
    ops, nodes = _split_block_list(model, block_list)
    op_block_list = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(ops))
    with quiet():
        converted = float16.convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=op_block_list,
            node_block_list=nodes or None,
            # weights are small; clamping tiny ones to 1e-7 flushes nothing that matters
            min_positive_val=1e-7,
            max_finite_val=65504.0,
        )
    if output is not None:
        save_onnx(converted, Path(output))
    return converted


def count_fp16_tensors(model: Any) -> int:
    """How many float16 tensors a graph holds: initializers, Constant values, typed values
    (inputs, outputs, value_info). 0 means the graph computes nothing in fp16."""
    from onnx import TensorProto

    model = _as_model(model, load_weights=False)
    fp16 = TensorProto.FLOAT16
    count = sum(1 for t in model.graph.initializer if t.data_type == fp16)
    for node in model.graph.node:
        if node.op_type == "Constant":
            count += sum(1 for a in node.attribute if a.HasField("t") and a.t.data_type == fp16)
        if node.op_type == "Cast":
            count += sum(1 for a in node.attribute if a.name == "to" and a.i == fp16)
    values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    count += sum(1 for v in values if v.type.tensor_type.elem_type == fp16)
    return count


def calibrate_fp16_block_list(
    onnx_model_or_path: Any,
    inputs: Sequence[np.ndarray],
    safe_max: float = FP16_SAFE_MAX,
    max_relative_error: float = FP16_MAX_RELATIVE_ERROR,
    chunk: int = 192,
) -> list[str]:
    """Names of the nodes whose tensors would not survive fp16, in graph order.

    Runs the fp32 graph on `inputs` (float32 (N, 3, H, W) batches, real images) on ONNX Runtime
    CPU with every intermediate tensor exposed (in chunks, to bound memory). A tensor is unsafe
    when it exceeds `safe_max` in magnitude (fp16 overflows at 65504) or loses more than
    `max_relative_error` (RMS, relative) when rounded to fp16 (values in the subnormal range).
    Flagged: the producer and every consumer of an unsafe activation (a consumer would read
    it through a cast to fp16), and every node with an unsafe float weight. The result feeds
    `convert_to_fp16(block_list=...)`.
    """
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    model = _as_model(onnx_model_or_path)
    model = onnx.ModelProto.FromString(model.SerializeToString())  # work on a copy
    name_nodes(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    float_values = {v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    graph_outputs = {o.name for o in model.graph.output}
    producer = {}
    for node in model.graph.node:
        for out in node.output:
            if out and (out in float_values or out in graph_outputs):
                producer[out] = node.name
    names = [n for n in producer if n not in graph_outputs]
    input_name = model.graph.input[0].name
    opts = ort.SessionOptions()
    # The graph as written: fusions would hide the tensors asked for.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node.name)
    flagged: set[str] = set()
    for init in model.graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name in consumers:
            if _fp16_unsafe(onnx.numpy_helper.to_array(init), safe_max, max_relative_error):
                flagged.update(consumers[init.name])
    unsafe: set[str] = set()
    for start in range(0, len(names), chunk):
        part = names[start : start + chunk]
        probe = onnx.ModelProto.FromString(model.SerializeToString())
        probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in part)
        session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for x in inputs:
            for j in range(x.shape[0]):  # one image at a time bounds the memory
                values = session.run(part, {input_name: np.ascontiguousarray(x[j : j + 1], dtype=np.float32)})
                for name, value in zip(part, values):
                    if name in unsafe or value.dtype != np.float32 or value.size == 0:
                        continue
                    if _fp16_unsafe(value, safe_max, max_relative_error):
                        unsafe.add(name)
                        flagged.add(producer[name])
                        flagged.update(consumers.get(name, []))
        del session
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    return sorted(flagged, key=lambda n: order.get(n, 0))


def _fp16_unsafe(value: np.ndarray, safe_max: float, max_relative_error: float) -> bool:
    finite = value[np.isfinite(value)]
    if finite.size == 0:
        return False
    if float(np.abs(finite).max()) > safe_max:
        return True
    rms = float(np.sqrt(np.mean(np.square(finite, dtype=np.float64))))
    if rms == 0.0:
        return False
    err = finite - finite.astype(np.float16).astype(np.float32)
    return float(np.sqrt(np.mean(np.square(err, dtype=np.float64)))) / rms > max_relative_error


def save_onnx(model: Any, output: Path, verified: Callable[[Path], None] | None = None) -> None:
    """Write one self-contained file beside `output` under a temporary name, then rename;
    `verified` runs on the written file before it takes its name (a Ctrl-C there leaves none)."""
    import onnx

    try:
        with atomic_write(output) as tmp:
            onnx.save_model(model, str(tmp), save_as_external_data=False)
            if verified is not None:
                verified(tmp)
    except OSError as exc:
        raise SRDeployError(f"{output}: could not write it ({exc.strerror or exc}); nothing written") from exc
