"""The only module that touches the TensorRT Python API (`import tensorrt`), imported lazily.

Nothing here runs on the development machines (TensorRT cannot be installed there): every call
below is written from NVIDIA's documentation and checked by name against it. Where TensorRT 10
and 11 differ the call site cites the page. The sources:

[PYAPI]   TensorRT Python API reference (Builder, IBuilderConfig, IOptimizationProfile,
          ICudaEngine, IExecutionContext, Runtime, ITimingCache, OnnxParser):
          https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/ and the
          bindings they document, NVIDIA/TensorRT python/src/infer/pyCore.cpp (10.x).
[USING]   "Python API Documentation" (build phase / runtime phase walkthrough, custom ILogger):
          https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/python-api-docs.html
[MIG11]   "Migrating from TensorRT 10.x to 11.x", Python pages:
          https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-patterns.html
          https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
          Removed in 11: BuilderFlag.FP16/BF16/INT8/FP8/INT4/FP4, OBEY/PREFER_PRECISION_CONSTRAINTS,
          DIRECT_IO, Builder.platform_has_fast_fp16; NetworkDefinitionCreationFlag.EXPLICIT_BATCH
          (explicit batch is the only mode); STRONGLY_TYPED kept but ignored (always strongly typed).
[MIG10]   "Migrating from TensorRT 8.x to 10.x" (name-based I/O: num_io_tensors, get_tensor_name,
          get_tensor_mode, set_input_shape, set_tensor_address, execute_async_v3).
[ONNXP]   OnnxParser / ParserError bindings (onnx-tensorrt python bindings, NvOnnxParser.h):
          parse_from_file, num_errors, get_error(i) -> ParserError.code()/desc()/node(), and
          node_name()/node_operator() (added in 10.x; looked up with getattr).
[POLY]    Polygraphy (tools/Polygraphy/polygraphy/backend/trt/loader.py, util.py): same call
          sequence (parse_from_file, check_onnx_parser_errors, create_timing_cache/set_timing_cache).

Everything version-dependent is decided by `plan_precision` (pure Python, unit-tested) and only
executed here, so the branching can be tested with a stand-in module without pretending to run
TensorRT. Every call below is checked against the real 10.13 and 11.4 bindings by the `trt_api`
tests (tests/backends/test_trt_api.py: a strict stand-in derived from the real module).

Layers (imports flow down only): backends/trt_build.py (build + parity) -> backends/trt_backend.py
(deserialize and run) -> engine.py (artifacts: profile, sidecar, cache key, GPU identity) ->
this module, which imports nothing of sr-deploy but `errors`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import TENSORRT_NOT_INSTALLED, InputError, NotInstalledError, SRDeployError
from .util.files import atomic_write_bytes

CUDA_NOT_AVAILABLE = (
    "CUDA is not available (torch.cuda.is_available() is False): TensorRT needs an NVIDIA GPU "
    "with a working driver and a CUDA build of PyTorch"
)

# 10.12 deprecated the weakly typed precision flags; strong typing is the recommended route from
# there on (issue 5 / [MIG11]). We only offer the strongly typed fp16-ONNX route on 10.x from 10.12.
STRONGLY_TYPED_MIN_10 = (10, 12)


def import_tensorrt() -> ModuleType:
    """Import and return the `tensorrt` module, or raise NotInstalledError (exit code 2) with the
    exact install hint from `sr_deploy.errors.TENSORRT_NOT_INSTALLED`."""
    try:
        import tensorrt  # noqa: PLC0415 - lazy on purpose: an optional dependency
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        raise NotInstalledError(TENSORRT_NOT_INSTALLED) from exc
    return tensorrt


def require_cuda(device: str = "cuda") -> None:
    """Raise NotInstalledError unless PyTorch sees a CUDA GPU (TensorRT runs only there)."""
    import torch

    if not torch.cuda.is_available():
        raise NotInstalledError(CUDA_NOT_AVAILABLE)
    if device not in ("cuda", "auto") and not device.startswith("cuda"):
        raise InputError(f"device {device!r}: the TensorRT backend runs on CUDA only (use cuda or cuda:N)")


def parse_version(text: str) -> tuple[int, int, int]:
    """'10.13.0.35' -> (10, 13, 0). Raises SRDeployError on a string without a major.minor."""
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not match:
        raise SRDeployError(f"cannot read the TensorRT version from {text!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def tensorrt_version(trt: ModuleType) -> str:
    """`tensorrt.__version__` (documented module attribute; Polygraphy compares it the same way)."""
    return str(trt.__version__)


def installed_version() -> str | None:
    """The importable TensorRT's version, or None (for reports; never raises)."""
    try:
        return tensorrt_version(import_tensorrt())
    except Exception:  # not installed, or a broken install
        return None


# --------------------------------------------------------------------------- precision plan


@dataclass(frozen=True)
class PrecisionPlan:
    """How one engine gets its precision on one TensorRT version (decided once, executed once).

    route: "fp32" (float32 ONNX, TF32 cleared), "flag" (weakly typed network + a builder
        precision flag; TensorRT 10 only) or "strongly_typed" (the graph's own tensor types
        decide: an fp16 ONNX with float32 I/O; TensorRT 11, or 10.12+ when asked).
    strongly_typed_flag: pass NetworkDefinitionCreationFlag.STRONGLY_TYPED to create_network
        (10.12+ only; on 11 the flag is ignored [MIG11], so we pass no flag at all).
    builder_flags: names of BuilderFlag members to set (e.g. ["FP16"]); never on 11.
    clear_flags: BuilderFlag members to clear (["TF32"] for fp32 reference engines).
    needs_fp16_onnx: the ONNX fed to the parser must already hold fp16 tensors.
    """

    major: int
    route: str
    precision: str
    strongly_typed_flag: bool = False
    builder_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    needs_fp16_onnx: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)


def plan_precision(version: tuple[int, int, int], precision: str, strongly_typed: bool = False) -> PrecisionPlan:
    """Pick the one precision route for `precision` ("fp32" | "fp16" | "bf16") on TensorRT `version`.

    - 11.x: always strongly typed; fp16 = an fp16 ONNX, no flags, no EXPLICIT_BATCH [MIG11].
      bf16 would need a bf16 ONNX, which we do not produce: refused with a clear message.
    - 10.x: fp16/bf16 = BuilderFlag.FP16/BF16 on a weakly typed network (default), or, when
      `strongly_typed` is asked and the version is >= 10.12, the fp16-ONNX route with
      STRONGLY_TYPED (a strongly typed 10.x network refuses the FP16 flag, so never both).
    - fp32 everywhere: no precision flag, TF32 cleared so the engine is a float32 reference.
    """
    major, minor = version[0], version[1]
    if precision not in ("fp32", "fp16", "bf16"):
        raise InputError(f"unknown precision {precision!r}: expected fp32, fp16 or bf16")
    if major < 10:
        raise InputError(
            f"TensorRT {'.'.join(map(str, version))} is too old: sr-deploy needs TensorRT 10 or 11 "
            "(the name-based I/O API)"
        )
    if precision == "fp32":
        return PrecisionPlan(
            major, "fp32", precision, clear_flags=("TF32",), notes=("TF32 cleared: a float32 reference engine",)
        )
    if major >= 11:
        if precision == "bf16":
            raise InputError(
                "--bf16 on TensorRT 11: BuilderFlag.BF16 was removed (strong typing only) and sr-deploy "
                "produces fp16 ONNX graphs, not bf16 ones; use --fp16 or --fp32"
            )
        return PrecisionPlan(
            major,
            "strongly_typed",
            precision,
            needs_fp16_onnx=True,
            notes=("TensorRT 11: strongly typed network, fp16 comes from the ONNX graph",),
        )
    # TensorRT 10.x
    if strongly_typed:
        if (major, minor) < STRONGLY_TYPED_MIN_10:
            raise InputError(
                f"--strongly-typed needs TensorRT 10.12 or newer (found {major}.{minor}); "
                "leave it off to use the BuilderFlag route"
            )
        if precision == "bf16":
            raise InputError("--strongly-typed with --bf16: sr-deploy produces fp16 ONNX graphs only; use --fp16")
        return PrecisionPlan(
            major,
            "strongly_typed",
            precision,
            strongly_typed_flag=True,
            needs_fp16_onnx=True,
            notes=("TensorRT 10.12+: STRONGLY_TYPED network from an fp16 ONNX (no FP16 flag)",),
        )
    flag = "FP16" if precision == "fp16" else "BF16"
    return PrecisionPlan(
        major,
        "flag",
        precision,
        builder_flags=(flag,),
        notes=(f"TensorRT 10: BuilderFlag.{flag} on a weakly typed float32 network",),
    )


# --------------------------------------------------------------------------- build


class _FileLogger:
    """Factory for a trt.ILogger subclass that appends every message to a build log file and
    forwards errors to `echo`. Subclassing trt.ILogger and calling trt.ILogger.__init__ is the
    documented way to write a custom logger [USING]."""

    @staticmethod
    def create(trt: ModuleType, log_path: Path | None, verbose: bool, echo: Callable[[str], None]) -> Any:
        min_severity = trt.Logger.VERBOSE if verbose else trt.Logger.INFO
        errors = {trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR}
        order = [trt.Logger.INTERNAL_ERROR, trt.Logger.ERROR, trt.Logger.WARNING, trt.Logger.INFO, trt.Logger.VERBOSE]
        handle = open(log_path, "a", encoding="utf-8") if log_path else None

        class Logger(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.handle = handle
                self.errors: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                try:
                    rank = order.index(severity)
                except ValueError:
                    rank = len(order)
                if rank > order.index(min_severity):
                    return
                if self.handle is not None:
                    self.handle.write(f"[{severity}] {msg}\n")
                    self.handle.flush()
                if severity in errors:
                    self.errors.append(msg)
                    echo(f"TensorRT: {msg}")
                elif verbose:
                    echo(f"TensorRT: {msg}")

            def close(self) -> None:
                if self.handle is not None:
                    self.handle.close()
                    self.handle = None

        return Logger()


@dataclass
class ParserFailure:
    """One ONNX parser error, named by ONNX node."""

    node_index: int
    node_name: str
    op_type: str
    code: str
    desc: str

    def __str__(self) -> str:
        where = f"node {self.node_index}" + (f" {self.node_name!r}" if self.node_name else "")
        where += f" ({self.op_type})" if self.op_type else ""
        return f"{where}: {self.code}: {self.desc}"


def _parser_failures(parser: Any, onnx_nodes: list[tuple[str, str]]) -> list[ParserFailure]:
    """Read parser.num_errors / parser.get_error(i) [ONNXP] and name each failing ONNX node.
    ParserError.node() is the node's index in the graph; node_name() / node_operator() (both
    releases) name it directly and win when not empty."""
    failures = []
    for i in range(int(parser.num_errors)):
        err = parser.get_error(i)
        index = int(err.node())
        name, op = onnx_nodes[index] if 0 <= index < len(onnx_nodes) else ("", "")
        name = str(err.node_name() or name)
        op = str(err.node_operator() or op)
        failures.append(ParserFailure(index, name, op, str(err.code()), str(err.desc())))
    return failures


@dataclass
class BuildRequest:
    """Everything `build_serialized_engine` needs; shapes are (N, C, H, W)."""

    onnx_path: Path
    onnx_nodes: list[tuple[str, str]]  # (name, op_type) per graph node, to name parser failures
    plan: PrecisionPlan
    min_shape: tuple[int, int, int, int]
    opt_shape: tuple[int, int, int, int]
    max_shape: tuple[int, int, int, int]
    workspace_bytes: int
    opt_level: int | None = None
    timing_cache: Path | None = None
    log_path: Path | None = None
    verbose: bool = False


class BuildFailed(SRDeployError):
    """build_serialized_network returned None (the log names the reason)."""


def build_serialized_engine(trt: ModuleType, req: BuildRequest, echo: Callable[[str], None] = print) -> bytes:
    """Parse `req.onnx_path` and build a serialized engine; returns the plan bytes.

    Call sequence ([USING], [PYAPI], [POLY]): Builder(logger) -> create_network(flags) ->
    OnnxParser(network, logger).parse_from_file(path) -> create_builder_config() ->
    set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes) -> builder_optimization_level ->
    set_flag/clear_flag per the PrecisionPlan -> create_optimization_profile().set_shape(name,
    min, opt, max) -> add_optimization_profile -> create_timing_cache(bytes) + set_timing_cache(
    cache, ignore_mismatch=False) -> build_serialized_network(network, config) ->
    get_timing_cache().serialize() written back.
    """
    plan = req.plan
    logger = _FileLogger.create(trt, req.log_path, req.verbose, echo)
    try:
        builder = trt.Builder(logger)
        # Network flags. 11.x: pass nothing -- EXPLICIT_BATCH no longer exists and STRONGLY_TYPED is
        # ignored (every network is strongly typed) [MIG11]. 10.x: EXPLICIT_BATCH is deprecated and
        # ignored since 10.0 (Builder page, NetworkDefinitionCreationFlag) so we never pass it either;
        # STRONGLY_TYPED only on the 10.12+ fp16-ONNX route.
        flags = 0
        if plan.strongly_typed_flag and plan.major == 10:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        # parse_from_file keeps the ONNX location so external weights resolve [POLY loader.py].
        ok = parser.parse_from_file(str(req.onnx_path))
        failures = _parser_failures(parser, req.onnx_nodes)
        if failures or not ok:
            detail = "; ".join(str(f) for f in failures) or "the parser returned failure without an error"
            raise SRDeployError(f"{req.onnx_path}: TensorRT could not parse the ONNX graph: {detail}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(req.workspace_bytes))
        if req.opt_level is not None:
            config.builder_optimization_level = int(req.opt_level)
        for name in plan.builder_flags:
            # BuilderFlag.FP16 / BF16 exist on 10.x only; removed in 11 [MIG11] -- plan_precision never
            # asks for them there.
            config.set_flag(_builder_flag(trt, name))
        for name in plan.clear_flags:
            config.clear_flag(_builder_flag(trt, name))  # TF32: present in 10.x and 11.x

        input_name = network.get_input(0).name
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, req.min_shape, req.opt_shape, req.max_shape)
        config.add_optimization_profile(profile)

        _load_timing_cache(config, req.timing_cache, echo)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            last = logger.errors[-1] if logger.errors else "no error message; see the build log"
            raise BuildFailed(f"{req.onnx_path}: TensorRT build failed: {last}")
        engine = bytes(memoryview(serialized))
        if req.timing_cache is not None:
            _save_timing_cache(config, req.timing_cache, echo)  # never loses the engine just built
        return engine
    finally:
        logger.close()


def _builder_flag(trt: ModuleType, name: str) -> Any:
    """trt.BuilderFlag.<name>, or SRDeployError naming the release that lacks it (a wrong plan)."""
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise SRDeployError(f"BuilderFlag.{name} does not exist in TensorRT {tensorrt_version(trt)}")
    return flag


def _load_timing_cache(config: Any, path: Path | None, echo: Callable[[str], None]) -> None:
    """create_timing_cache(bytes) + set_timing_cache(cache, ignore_mismatch=False) [PYAPI]. The
    call returns False when the file was written by another TensorRT version or for another GPU
    (or is damaged): then the build starts from an empty cache instead of silently using none."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    if config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
        if data:
            echo(f"timing cache: loaded {path} ({len(data):,} bytes)")
        return
    echo(
        f"timing cache: {path} does not match this TensorRT version or GPU (or is damaged); ignoring it, "
        "a new one is saved after the build"
    )
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        echo("timing cache: TensorRT refused an empty timing cache; building without one")


def _save_timing_cache(config: Any, path: Path, echo: Callable[[str], None]) -> None:
    """get_timing_cache().serialize() written back atomically; get_timing_cache() may return None
    (no cache attached), and a failure here is reported, not raised: the engine is built."""
    cache = config.get_timing_cache()
    if cache is None:
        echo(f"timing cache: TensorRT returned no timing cache; {path} not updated")
        return
    try:
        data = bytes(memoryview(cache.serialize()))
        atomic_write_bytes(path, data, make_parents=True)  # concurrent builds share it: a temporary name each
    except (OSError, TypeError, ValueError) as exc:
        echo(f"timing cache: could not save {path} ({exc}); the engine is not affected")
        return
    echo(f"timing cache: saved {path} ({len(data):,} bytes)")


# --------------------------------------------------------------------------- runtime


@dataclass
class EngineIO:
    """The engine's single image input and output, by name [MIG10]."""

    input_name: str
    output_name: str
    input_dtype: Any
    output_dtype: Any
    profile_min: tuple[int, ...]
    profile_opt: tuple[int, ...]
    profile_max: tuple[int, ...]


def deserialize_engine(trt: ModuleType, data: bytes, path: Path) -> tuple[Any, Any]:
    """Runtime(logger).deserialize_cuda_engine(bytes) [USING]; returns (runtime, engine). The
    runtime is returned so the caller keeps it alive as long as the engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise SRDeployError(
            f"{path}: TensorRT {tensorrt_version(trt)} could not deserialize this engine "
            "(built by another TensorRT version or for another GPU? rebuild it with sr-deploy build-engine)"
        )
    return runtime, engine


def engine_io(trt: ModuleType, engine: Any, path: Path) -> EngineIO:
    """Find the one input and one output with num_io_tensors / get_tensor_name(i) /
    get_tensor_mode(name) == TensorIOMode.INPUT, their dtypes (get_tensor_dtype) and the input's
    profile 0 shapes (get_tensor_profile_shape(name, 0) -> [min, opt, max]) [PYAPI]."""
    inputs, outputs = [], []
    for i in range(int(engine.num_io_tensors)):
        name = engine.get_tensor_name(i)
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(
            f"{path}: expected an engine with one input and one output, found inputs {inputs} and outputs {outputs}"
        )
    pmin, popt, pmax = engine.get_tensor_profile_shape(inputs[0], 0)
    return EngineIO(
        inputs[0],
        outputs[0],
        engine.get_tensor_dtype(inputs[0]),
        engine.get_tensor_dtype(outputs[0]),
        tuple(int(d) for d in pmin),
        tuple(int(d) for d in popt),
        tuple(int(d) for d in pmax),
    )


def torch_dtype(trt: ModuleType, dtype: Any) -> Any:
    """trt.DataType -> torch dtype for the I/O buffers (float32 normally: keep_io_types)."""
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    bf16 = getattr(trt.DataType, "BF16", None)
    if bf16 is not None:
        table[bf16] = torch.bfloat16
    if dtype not in table:
        raise SRDeployError(f"unsupported engine I/O dtype {dtype}")
    return table[dtype]


def create_context(trt: ModuleType, engine: Any, user_managed_memory: bool = False) -> Any:
    """engine.create_execution_context(strategy) [PYAPI]; one per CUDA stream (contexts are not
    thread/stream safe). With `user_managed_memory` the context gets no activation memory of its
    own (ExecutionContextAllocationStrategy.USER_MANAGED): the caller sizes it for the shapes it
    sets (`context_memory_size`) and attaches it (`set_context_memory`) -- instead of each
    context holding the max-profile size (STATIC, the default)."""
    strategies = trt.ExecutionContextAllocationStrategy
    strategy = strategies.USER_MANAGED if user_managed_memory else strategies.STATIC
    context = engine.create_execution_context(strategy)
    if context is None:
        raise SRDeployError("TensorRT could not create an execution context (out of GPU memory?)")
    return context


def context_memory_size(context: Any) -> int:
    """Activation memory (bytes) the context needs for the input shapes set on it:
    update_device_memory_size_for_shapes() [PYAPI IExecutionContext], after set_input_shape."""
    return int(context.update_device_memory_size_for_shapes())


def set_context_memory(context: Any, pointer: int, size: int) -> None:
    """Attach `size` bytes of device memory at `pointer` to a USER_MANAGED context:
    set_device_memory(memory, size) [PYAPI IExecutionContext]. The memory must outlive the context's use."""
    context.set_device_memory(int(pointer), int(size))


def enqueue(context: Any, io: EngineIO, x_ptr: int, y_ptr: int, stream_handle: int) -> None:
    """set_tensor_address for input and output, then execute_async_v3(stream_handle) [MIG10].
    The input shape must already be set (`set_shape`)."""
    context.set_tensor_address(io.input_name, int(x_ptr))
    context.set_tensor_address(io.output_name, int(y_ptr))
    if not context.execute_async_v3(int(stream_handle)):
        raise SRDeployError("TensorRT execute_async_v3 failed (see the TensorRT log above)")


def set_shape(context: Any, io: EngineIO, shape: tuple[int, int, int, int]) -> tuple[int, ...]:
    """context.set_input_shape(name, shape), then the output shape from
    context.get_tensor_shape(output_name) (known once every input shape is set) [PYAPI]."""
    if not context.set_input_shape(io.input_name, tuple(int(d) for d in shape)):
        raise InputError(
            f"input shape {tuple(shape)} is outside the engine's profile (min {io.profile_min}, max {io.profile_max})"
        )
    return tuple(int(d) for d in context.get_tensor_shape(io.output_name))
