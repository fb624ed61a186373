"""Subprocess of tests/backends/test_trt_api.py: ONE TensorRT release per process.

    python tests/_trt_api_run.py BINDINGS_FOLDER MODEL.onnx WORK_DIR OUT.json

Imports the real bindings (`_trt_bindings.import_real`), puts the strict stand-in derived from
them (`_strict_trt.StrictTensorRT`) in `sys.modules["tensorrt"]`, pretends PyTorch sees a GPU
(the stand-in never runs anything, so no GPU work happens), then drives sr-deploy's real code:
the `build-engine` command for each route and option, and the runtime layer (deserialize,
name-based I/O, shapes, execute_async_v3, CUDA-graph bookkeeping on a CPU stand-in device).
Writes what TensorRT was asked, per scenario, to OUT.json; the test process asserts on it.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _strict_trt  # noqa: E402
import _trt_bindings  # noqa: E402

SCALE = 4
GPU = ("Strict stand-in (no GPU, nothing runs)", (9, 0))


def main(folder: Path, onnx_path: Path, work: Path, out: Path) -> None:
    real = _trt_bindings.import_real(folder)
    st = _strict_trt.StrictTensorRT(real)
    sys.modules["tensorrt"] = st  # type: ignore[assignment]

    import torch

    torch.cuda.is_available = lambda: True  # type: ignore[assignment]
    torch.cuda.get_device_name = lambda index=None: GPU[0]  # type: ignore[assignment]
    torch.cuda.get_device_capability = lambda index=None: GPU[1]  # type: ignore[assignment]

    results: dict[str, Any] = {
        "version": real.__version__,
        "strongly_typed_bit": 1 << int(real.NetworkDefinitionCreationFlag.STRONGLY_TYPED),
        "scenarios": {},
    }
    st.answers.update({("ITensor", "name"): "input", ("OnnxParser", "parse_from_file"): True})
    profile = ["--min", "1x3x16x16", "--opt", "1x3x32x32", "--max", "2x3x64x64"]
    builds = {
        "fp16": ["--fp16", *profile],
        "fp16_strongly_typed": ["--fp16", "--strongly-typed", *profile],
        "fp32": ["--fp32", *profile],
        "bf16": ["--bf16", *profile],
        "fp16_static": ["--fp16", "--static", "1x32x32"],
        "timing_cache_first": ["--fp32", *profile, "--timing-cache", str(work / "shared.timing-cache")],
        "timing_cache_second": ["--fp32", *profile, "--timing-cache", str(work / "shared.timing-cache")],
    }
    for name, args in builds.items():
        results["scenarios"][name] = _cli_build(st, onnx_path, work / f"{name}.engine", args)
    st.answers[("IBuilderConfig", "set_timing_cache")] = _strict_trt.answer_sequence([False, True])
    results["scenarios"]["timing_cache_foreign"] = _cli_build(
        st,
        onnx_path,
        work / "foreign.engine",
        ["--fp32", *profile, "--timing-cache", str(work / "shared.timing-cache")],
    )
    del st.answers[("IBuilderConfig", "set_timing_cache")]
    results["scenarios"]["runtime"] = _scenario(st, lambda: _runtime(st, real, work))
    results["scenarios"]["backend"] = _scenario(st, lambda: _backend(st, real, work))
    results["scenarios"]["self_test"] = _scenario(st, lambda: _self_test(st, real))
    out.write_text(json.dumps(results, indent=1))


def _scenario(st: _strict_trt.StrictTensorRT, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    del st.calls[:], st.violations[:]
    result: dict[str, Any] = {}
    try:
        result.update(body())
    except BaseException as exc:  # reported, asserted on by the test process
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()
    result["calls"] = [list(c) for c in st.calls]
    result["violations"] = list(st.violations)
    return result


def _cli_build(st: _strict_trt.StrictTensorRT, onnx_path: Path, engine: Path, args: list[str]) -> dict[str, Any]:
    from click.testing import CliRunner

    from sr_deploy.cli import cli

    def body() -> dict[str, Any]:
        run = CliRunner().invoke(cli, ["build-engine", str(onnx_path), "-o", str(engine), "--no-parity", *args])
        written = engine.read_bytes() if engine.is_file() else b""
        return {
            "exit_code": run.exit_code,
            "output": run.output + (run.stderr if run.stderr_bytes else ""),
            "exception": repr(run.exception) if run.exception and run.exit_code not in (0, 1, 2) else "",
            "engine_is_stand_in_bytes": written == _strict_trt.NOT_AN_ENGINE,
        }

    return _scenario(st, body)


class CpuStandInOps:
    """DeviceOps on the CPU for the bookkeeping check: buffers are CPU tensors (never written by
    TensorRT: nothing runs), stream handles are made-up numbers, a "graph" only records that
    capture was asked for. `fail_capture`: shapes whose capture raises, as a real failure would."""

    def __init__(self, fail_capture: set[tuple[int, ...]]) -> None:
        self.depth = 0
        self.fail_capture = fail_capture
        self.allocated: list[tuple[int, ...]] = []  # buffer shapes since the last capture
        self.captures = 0
        self.ordered_calls = 0

    @contextmanager
    def scope(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        import torch

        self.allocated.append(tuple(shape))
        return torch.zeros(shape, dtype=dtype)

    def scratch(self, nbytes: int) -> Any:
        import torch

        return torch.zeros((max(1, nbytes),), dtype=torch.uint8)

    def stream_handle(self) -> int:
        return 0x5151

    def synchronize(self) -> None:
        pass

    def upload(self, x: Any, dtype: Any) -> Any:
        return x.to(dtype=dtype).contiguous()

    def ordered(self, x: Any, work: Callable[[Any], Any]) -> Any:
        self.ordered_calls += 1
        return work(x)

    def capture(self, enqueue: Callable[[int], None]) -> Any:
        shapes, self.allocated = self.allocated, []
        if self.fail_capture & set(shapes):
            raise RuntimeError("stand-in capture failure (as cudaStreamEndCapture would report)")
        self.captures += 1
        enqueue(0x6262)

        class Graph:
            def replay(self) -> None:
                pass

        return Graph()


def _runtime_answers(st: _strict_trt.StrictTensorRT, real: Any, ops: CpuStandInOps) -> list[bool]:
    """What the stand-in engine says about itself (names, modes, dtypes, profile, shapes): objects
    of the documented types, so the runtime code has something to read. Returns the list that
    records, per execution context created, whether the device scope was entered then."""
    io_names = ["input", "output"]
    shapes: dict[int, tuple[int, ...]] = {}
    created_in_scope: list[bool] = []

    def set_input_shape(ctx: Any, name: str, shape: Any) -> bool:
        shapes[id(ctx)] = tuple(shape)
        return True

    def output_shape(ctx: Any, name: str) -> Any:
        n, c, h, w = shapes[id(ctx)]
        return real.Dims((n, c, h * SCALE, w * SCALE))

    def create_context(engine: Any, *args: Any, **kwargs: Any) -> Any:
        created_in_scope.append(ops.depth > 0)
        return st.default_for("tensorrt.tensorrt.IExecutionContext")

    st.answers.update(
        {
            ("ICudaEngine", "num_io_tensors"): 2,
            ("ICudaEngine", "get_tensor_name"): lambda engine, i: io_names[i],
            ("ICudaEngine", "get_tensor_mode"): lambda engine, name: (
                real.TensorIOMode.INPUT if name == "input" else real.TensorIOMode.OUTPUT
            ),
            ("ICudaEngine", "get_tensor_dtype"): lambda engine, name: real.DataType.FLOAT,
            ("ICudaEngine", "get_tensor_profile_shape"): lambda engine, name, index: [
                real.Dims((1, 3, 16, 16)),
                real.Dims((1, 3, 32, 32)),
                real.Dims((2, 3, 64, 64)),
            ],
            ("ICudaEngine", "create_execution_context"): create_context,
            ("IExecutionContext", "set_input_shape"): set_input_shape,
            ("IExecutionContext", "get_tensor_shape"): output_shape,
            ("IExecutionContext", "update_device_memory_size_for_shapes"): lambda ctx: 1000 + shapes[id(ctx)][2],
        }
    )
    return created_in_scope


def _forget_runtime_answers(st: _strict_trt.StrictTensorRT) -> None:
    for key in list(st.answers):
        if key[0] in ("ICudaEngine", "IExecutionContext"):
            del st.answers[key]


def _runtime(st: _strict_trt.StrictTensorRT, real: Any, work: Path) -> dict[str, Any]:
    import torch

    from sr_deploy import _tensorrt
    from sr_deploy.backends.trt_backend import EngineRunner

    ops = CpuStandInOps(fail_capture={(1, 3, 48, 48)})
    created_in_scope = _runtime_answers(st, real, ops)
    trt = _tensorrt.import_tensorrt()
    engine_file = work / "fp32.engine"
    _runtime, engine = _tensorrt.deserialize_engine(trt, engine_file.read_bytes(), engine_file)
    io = _tensorrt.engine_io(trt, engine, engine_file)
    dtype = _tensorrt.torch_dtype(trt, io.input_dtype)
    runner = EngineRunner(
        trt, engine, io, ops, dtype, _tensorrt.torch_dtype(trt, io.output_dtype), cuda_graph=True, graph_cache_size=2
    )
    plain = EngineRunner(trt, engine, io, ops, dtype, _tensorrt.torch_dtype(trt, io.output_dtype))
    out_shapes = [list(plain.run(torch.zeros((2, 3, 20, 24), dtype=dtype)).shape)]
    for h in (16, 32, 16, 48, 64, 32):  # 48: capture fails -> plain run; 64 evicts the least recent
        y = runner.run(torch.zeros((1, 3, h, h), dtype=dtype))
        out_shapes.append(list(y.shape))
    result = {
        "io": [io.input_name, io.output_name, list(io.profile_min), list(io.profile_opt), list(io.profile_max)],
        "out_shapes": out_shapes,
        "graphs_cached": [list(s) for s in runner.graphs],
        "graph_memory": [e.memory_bytes for e in runner.graphs.values()],
        "no_graph": [list(s) for s in runner.no_graph],
        "captures": ops.captures,
        "contexts_created_in_device_scope": created_in_scope,
    }
    _forget_runtime_answers(st)
    return result


def _backend(st: _strict_trt.StrictTensorRT, real: Any, work: Path) -> dict[str, Any]:
    """TensorRTBackend itself on an engine file written by the fp32 build scenario: sidecar
    check, deserialize, the template's fitting (batch split, padding under the profile min) and
    the runner, with the CPU stand-in device. Output values are zeros: nothing ran."""
    import numpy as np

    from sr_deploy.backends.trt_backend import TensorRTBackend

    made: list[CpuStandInOps] = []

    def device_ops(device: Any) -> CpuStandInOps:
        made.append(CpuStandInOps(fail_capture=set()))
        made[-1].device = str(device)
        return made[-1]

    result: dict[str, Any] = {}
    for graphs in (False, True):
        created = _runtime_answers(st, real, CpuStandInOps(set()))
        with TensorRTBackend(work / "fp32.engine", device="cuda:1", cuda_graph=graphs, device_ops=device_ops) as b:
            y = b(np.zeros((3, 3, 10, 12), np.float32))  # batch 3 > profile max 2, 10x12 < profile min 16x16
            result[f"graphs={graphs}"] = {
                "facts": [b.scale, b.precision, b.device, list(b.max_shape)],
                "output": [type(y).__name__, list(y.shape), str(y.dtype)],
                "ordered_calls": made[-1].ordered_calls,
                "ops_device": made[-1].device,
                "contexts": len(created),
            }
        _forget_runtime_answers(st)
    return result


def _self_test(st: _strict_trt.StrictTensorRT, real: Any) -> dict[str, Any]:
    """The stand-in must refuse what the release does not have: each of these must be a violation."""
    config = st.Builder(real.Logger()).create_builder_config()
    refused = []
    for attempt in (
        lambda: config.set_memory_pool(real.MemoryPoolType.WORKSPACE, 1),  # misspelled method
        lambda: config.set_memory_pool_limit(real.MemoryPoolType.WORKSPACE),  # missing argument
        lambda: config.set_memory_pool_limit(pool=real.MemoryPoolType.WORKSPACE, size=1),  # wrong keyword
        lambda: config.set_memory_pool_limit("WORKSPACE", 1),  # wrong kind of argument
        lambda: setattr(config, "num_optimization_profiles", 2),  # read-only property
        lambda: st.NoSuchClass,  # not in the module
        lambda: getattr(st.BuilderFlag, "NO_SUCH_FLAG", None),  # an enum member it lacks, even probed
    ):
        before = len(st.violations)
        try:
            attempt()
        except _strict_trt.StandInViolation:
            pass
        refused.extend(st.violations[before:])  # recorded even where getattr's default swallowed it
    return {"refused": refused}


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
