"""TensorRT runtime backend: deserializes an engine (`sr-deploy build-engine`) and runs it with
torch CUDA tensors as device buffers (no pycuda). It never builds: an `.onnx` goes through
`sr_deploy.backends.trt_build` (build + parity + engine cache), which sits above this module.

    with TensorRTBackend("model.engine") as backend:
        y = backend(x)   # x: (N, 3, H, W) float32 RGB [0, 1], numpy or torch -> same kind

- Refuses an engine whose sidecar (`model.engine.json`) says another TensorRT version or GPU.
- Everything runs inside `torch.cuda.device(N)` of the backend's `cuda:N`: execution contexts,
  their memory and CUDA graphs belong to that GPU, whichever device is current for the caller.
- Work runs on a dedicated stream ordered after the caller's current stream (and the caller's
  stream waits for the result), so torch pre/post-processing on the GPU stays correct.
- `max_shape` / `min_shape` come from the engine's optimization profile: the caller tiles
  larger inputs; smaller ones are edge-padded here to the profile min and cropped back.
- `cuda_graph=True` captures one CUDA graph per input shape (`EngineRunner`): at most
  `graph_cache_size` graphs (least recently used dropped), each with its own execution context
  whose activation memory is user-managed and sized for that shape (not the profile max); a
  shape whose capture fails runs without a graph.

The TensorRT calls are in `sr_deploy._tensorrt` (imported lazily by it): this module imports
without TensorRT and raises NotInstalledError (exit 2) when a backend is constructed.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from .. import _tensorrt
from ..engine import check_sidecar_matches, gpu_identity, read_sidecar
from ..errors import InputError, SRDeployError
from .base import TORCH, Backend

DEFAULT_GRAPH_CACHE_SIZE = 4


class DeviceBuffer(Protocol):
    """A device tensor as the runner uses it (a torch CUDA tensor on a GPU)."""

    shape: Any

    def data_ptr(self) -> int: ...

    def copy_(self, other: Any) -> Any: ...

    def clone(self) -> Any: ...


class CapturedGraph(Protocol):
    def replay(self) -> None: ...


class DeviceOps(Protocol):
    """What `EngineRunner` needs from the device; `TorchCudaOps` on a GPU."""

    def scope(self) -> AbstractContextManager[Any]:
        """Make the backend's GPU current (contexts, memory and graphs are created there)."""

    def empty(self, shape: tuple[int, ...], dtype: Any) -> DeviceBuffer: ...

    def scratch(self, nbytes: int) -> DeviceBuffer:
        """`nbytes` of device memory (a user-managed context's activation memory)."""

    def stream_handle(self) -> int:
        """The cudaStream_t of the stream work is enqueued on."""

    def synchronize(self) -> None: ...

    def capture(self, enqueue: Callable[[int], None]) -> CapturedGraph:
        """Capture what `enqueue(stream_handle)` launches into a graph; raises when capture fails."""

    def upload(self, x: Any, dtype: Any) -> DeviceBuffer:
        """`x` (a torch tensor anywhere) on this device as `dtype`, contiguous."""

    def ordered(self, x: DeviceBuffer, work: Callable[[DeviceBuffer], DeviceBuffer]) -> DeviceBuffer:
        """Run `work(x)` on the runner's stream, ordered after the caller's stream (which produced
        `x`), and make the caller's stream wait for the result."""


@dataclass
class _GraphEntry:
    graph: CapturedGraph
    static_in: DeviceBuffer
    static_out: DeviceBuffer
    context: Any  # trt.IExecutionContext, USER_MANAGED
    memory: DeviceBuffer  # the context's activation memory, kept alive with it
    memory_bytes: int


class EngineRunner:
    """Runs one deserialized engine on one device: a plain execution context per runner, and
    (with `cuda_graph`) a bounded LRU cache of captured CUDA graphs, one per input shape.

    All TensorRT calls go through `sr_deploy._tensorrt`, all device work through `ops`, and
    both happen inside `ops.scope()`.
    """

    def __init__(
        self,
        trt: ModuleType,
        engine: Any,
        io: _tensorrt.EngineIO,
        ops: DeviceOps,
        in_dtype: Any,
        out_dtype: Any,
        cuda_graph: bool = False,
        graph_cache_size: int = DEFAULT_GRAPH_CACHE_SIZE,
    ) -> None:
        if graph_cache_size < 1:
            raise InputError(f"graph_cache_size {graph_cache_size}: expected at least 1")
        self.trt, self.engine, self.io, self.ops = trt, engine, io, ops
        self.in_dtype, self.out_dtype = in_dtype, out_dtype
        self.cuda_graph = cuda_graph
        self.graph_cache_size = graph_cache_size
        self.graphs: OrderedDict[tuple[int, ...], _GraphEntry] = OrderedDict()
        self.no_graph: set[tuple[int, ...]] = set()  # shapes whose capture failed: run plain
        self._context: Any = None

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        with self.ops.scope():
            return _tensorrt.set_shape(self._plain_context(), self.io, shape)

    def run(self, x: DeviceBuffer) -> DeviceBuffer:
        """x: contiguous device tensor of the engine's input dtype, shape within the profile.
        Returns a new device tensor (N, 3, sH, sW) of the engine's output dtype."""
        shape = tuple(int(d) for d in x.shape)
        with self.ops.scope():
            if self.cuda_graph and shape not in self.no_graph:
                y = self._run_graph(x, shape)
                if y is not None:
                    return y
            context = self._plain_context()
            out_shape = _tensorrt.set_shape(context, self.io, shape)
            y = self.ops.empty(out_shape, self.out_dtype)
            _tensorrt.enqueue(context, self.io, x.data_ptr(), y.data_ptr(), self.ops.stream_handle())
            return y

    def _plain_context(self) -> Any:
        if self._context is None:
            self._context = _tensorrt.create_context(self.trt, self.engine)
        return self._context

    def _run_graph(self, x: DeviceBuffer, shape: tuple[int, ...]) -> DeviceBuffer | None:
        entry = self.graphs.get(shape)
        if entry is None:
            entry = self._capture(x, shape)
            if entry is None:
                return None
            self.graphs[shape] = entry
            while len(self.graphs) > self.graph_cache_size:
                self.graphs.popitem(last=False)  # least recently used: its context and memory go with it
        else:
            self.graphs.move_to_end(shape)
        entry.static_in.copy_(x)
        entry.graph.replay()
        return entry.static_out.clone()

    def _capture(self, x: DeviceBuffer, shape: tuple[int, ...]) -> _GraphEntry | None:
        """A graph bakes in its context's shapes and addresses: a dedicated USER_MANAGED context
        with memory sized for this shape, fixed buffers, a plain run first (TensorRT flushes
        deferred shape-dependent work there), then capture on the runner's stream."""
        context = _tensorrt.create_context(self.trt, self.engine, user_managed_memory=True)
        out_shape = _tensorrt.set_shape(context, self.io, shape)
        size = _tensorrt.context_memory_size(context)
        memory = self.ops.scratch(size)
        _tensorrt.set_context_memory(context, memory.data_ptr(), size)
        static_in = self.ops.empty(shape, self.in_dtype)
        static_out = self.ops.empty(out_shape, self.out_dtype)
        static_in.copy_(x)
        in_ptr, out_ptr = static_in.data_ptr(), static_out.data_ptr()
        _tensorrt.enqueue(context, self.io, in_ptr, out_ptr, self.ops.stream_handle())
        self.ops.synchronize()
        try:
            graph = self.ops.capture(lambda handle: _tensorrt.enqueue(context, self.io, in_ptr, out_ptr, handle))
        except (RuntimeError, SRDeployError) as exc:
            self.no_graph.add(shape)
            warnings.warn(
                f"CUDA graph capture failed for input {shape} ({exc}); running it without a graph",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        return _GraphEntry(graph, static_in, static_out, context, memory, size)

    def close(self) -> None:
        self.graphs.clear()
        self._context = None


class TorchCudaOps:
    """DeviceOps on one CUDA device with torch: buffers are torch CUDA tensors, work goes to a
    dedicated (non-default) stream, graphs are `torch.cuda.CUDAGraph`."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.device = device
        with torch.cuda.device(device):
            self.stream = torch.cuda.Stream(device=device)

    def scope(self) -> AbstractContextManager[Any]:
        return self.torch.cuda.device(self.device)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        return self.torch.empty(shape, dtype=dtype, device=self.device)

    def scratch(self, nbytes: int) -> Any:
        return self.torch.empty((max(1, int(nbytes)),), dtype=self.torch.uint8, device=self.device)

    def stream_handle(self) -> int:
        return int(self.torch.cuda.current_stream(self.device).cuda_stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def capture(self, enqueue: Callable[[int], None]) -> Any:
        graph = self.torch.cuda.CUDAGraph()
        with self.torch.cuda.graph(graph, stream=self.stream):
            enqueue(int(self.torch.cuda.current_stream(self.device).cuda_stream))
        return graph

    def upload(self, x: Any, dtype: Any) -> Any:
        return x.to(self.device, dtype=dtype, non_blocking=True).contiguous()

    def ordered(self, x: Any, work: Callable[[Any], Any]) -> Any:
        cuda = self.torch.cuda
        with cuda.device(self.device):
            caller = cuda.current_stream(self.device)
            self.stream.wait_stream(caller)  # x was produced on the caller's stream
            with cuda.stream(self.stream):
                y = work(x)
            x.record_stream(self.stream)
            y.record_stream(caller)
            caller.wait_stream(self.stream)
        return y


class TensorRTBackend(Backend):
    """Runs a TensorRT engine on a CUDA GPU.

    Args:
        engine_path: a `.engine` / `.plan` file (build one with `sr-deploy build-engine`, or
            from an `.onnx` with `sr_deploy.backends.trt_build.load_tensorrt_from_onnx`).
        device: ``cuda`` or ``cuda:N``.
        precision: reported when the engine has no sidecar (the sidecar's word wins).
        cuda_graph: capture and replay a CUDA graph per input shape.
        graph_cache_size: at most this many captured graphs (least recently used dropped).
        check_sidecar: refuse an engine whose sidecar names another TensorRT version or GPU.
        device_ops: makes the DeviceOps for the device (buffers, streams, graphs); torch CUDA.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine_path: str | Path,
        device: str = "cuda",
        precision: str | None = None,
        cuda_graph: bool = False,
        graph_cache_size: int = DEFAULT_GRAPH_CACHE_SIZE,
        check_sidecar: bool = True,
        device_ops: Callable[[Any], DeviceOps] = TorchCudaOps,
    ) -> None:
        path = Path(engine_path)
        device = "cuda" if device in (None, "auto") else device
        if path.suffix.lower() == ".onnx":
            raise InputError(
                f"{path}: TensorRTBackend runs engines; build one with sr-deploy build-engine "
                "(or load(..., backend='tensorrt'), which builds and caches it)"
            )
        trt = _tensorrt.import_tensorrt()
        _tensorrt.require_cuda(device)
        import torch

        if not path.is_file():
            raise InputError(f"{path}: no such engine file")
        self.path = path
        self.torch_device = torch.device(device)
        sidecar = read_sidecar(path)
        if sidecar is not None and check_sidecar:
            gpu_name, cc = gpu_identity(device)
            check_sidecar_matches(sidecar, path, _tensorrt.tensorrt_version(trt), gpu_name, cc)
        self.sidecar = sidecar

        self._ops = device_ops(self.torch_device)
        with self._ops.scope():
            self._runtime, self._engine = _tensorrt.deserialize_engine(trt, path.read_bytes(), path)
            self.io = _tensorrt.engine_io(trt, self._engine, path)
            self._in_dtype = _tensorrt.torch_dtype(trt, self.io.input_dtype)
            out_dtype = _tensorrt.torch_dtype(trt, self.io.output_dtype)
        self.runner = EngineRunner(
            trt,
            self._engine,
            self.io,
            self._ops,
            self._in_dtype,
            out_dtype,
            cuda_graph=cuda_graph,
            graph_cache_size=graph_cache_size,
        )
        self.cuda_graph = bool(cuda_graph)

        pmin, pmax = self.io.profile_min, self.io.profile_max
        self.min_shape = (pmin[0], pmin[2], pmin[3])
        self.profile = (pmin, self.io.profile_opt, pmax)
        # scale from the sidecar, else from the output shape at the opt shape
        scale = sidecar.scale if sidecar is not None and sidecar.scale else self._probe_scale()
        # An engine's precision is fixed at build time: the sidecar's word wins over the request.
        reported = sidecar.precision if sidecar is not None else (precision or "unknown")
        super().__init__(
            scale=scale,
            precision=reported,
            device=str(self.torch_device),
            max_shape=(pmax[0], pmax[2], pmax[3]),
            min_shape=self.min_shape,
        )

    # ----------------------------------------------------------------- internals

    def _probe_scale(self) -> int:
        opt = tuple(self.io.profile_opt)
        out = self.runner.output_shape(opt)
        if out[2] % opt[2] or out[3] % opt[3]:
            raise SRDeployError(f"{self.path}: output {out} is not an integer multiple of input {opt}")
        return out[2] // opt[2]

    def _run_chunk(self, x: Any) -> Any:
        """x: contiguous device tensor of the engine's input dtype, shape within the profile.
        Returns a new device tensor (N, 3, sH, sW) in the engine's output dtype, ready on the
        caller's current stream."""
        return self._ops.ordered(x, self.runner.run)

    # ----------------------------------------------------------------- the template's hooks

    def input_kinds(self, kind: str) -> tuple[str, ...]:
        """torch tensors only: uploaded to the GPU here (a CUDA tensor stays where it is)."""
        return (TORCH,)

    def too_large_message(self, h: int, w: int) -> str:
        _, max_h, max_w = self.max_shape  # type: ignore[misc]
        return (
            f"input {h}x{w} is larger than the engine's profile max {max_h}x{max_w}; tile it (sr_deploy.tiling) "
            "or rebuild the engine with a larger --max"
        )

    def infer(self, x: Any) -> Any:
        """One batch already fitted to the engine's profile by the template (split, padded):
        (n, 3, h, w) torch tensor -> (n, 3, s*h, s*w) CUDA tensor in the engine's output dtype,
        ready on the caller's current stream."""
        return self._run_chunk(self._ops.upload(x, self._in_dtype))

    def close(self) -> None:
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.close()
        self._engine = None
        self._runtime = None
