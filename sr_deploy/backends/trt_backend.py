"""TensorRT backend: runs a serialized engine (`sr-deploy build-engine`) with torch CUDA tensors
as device buffers (no pycuda).

    with TensorRTBackend("model.engine") as backend:      # or "model.onnx": build-or-reuse
        y = backend(x)   # x: (N, 3, H, W) float32 RGB [0, 1], numpy or torch -> same kind

- Refuses an engine whose sidecar (`model.engine.json`) says another TensorRT version or GPU.
- One execution context per CUDA stream; the input shape is set on every call.
- Work runs on a dedicated stream ordered after the caller's current stream (and the caller's
  stream waits for the result), so torch pre/post-processing on the GPU stays correct.
- `max_shape` / `min_shape` come from the engine's optimization profile: the caller tiles
  larger inputs; smaller ones are edge-padded here to the profile min and cropped back.
- `cuda_graph=True` captures one CUDA graph per input shape (its own execution context, a plain
  run first, capture on the non-default stream, fixed buffers) and replays it.

The TensorRT calls are in `sr_deploy._tensorrt` (imported lazily): this module imports
without TensorRT and raises NotInstalledError (exit 2) when one is constructed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, SRDeployError
from .base import Backend


class TensorRTBackend(Backend):
    """Runs a TensorRT engine on a CUDA GPU.

    Args:
        engine_path: a `.engine` / `.plan` file, or an `.onnx` file (its engine is built on
            first use and reused from the engine cache, see `sr_deploy.engine.ensure_engine`).
        device: ``cuda`` or ``cuda:N``.
        precision: only used when building from an `.onnx` (fp16 default); for an engine the
            sidecar's precision is reported.
        cuda_graph: capture and replay a CUDA graph per input shape.
        check_sidecar: refuse an engine whose sidecar names another TensorRT version or GPU.
        build_options: passed to `ensure_engine` when `engine_path` is an `.onnx`.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, device: str = "cuda", precision: str | None = None,
                 cuda_graph: bool = False, check_sidecar: bool = True, **build_options: Any) -> None:
        from .. import _tensorrt
        from ..engine import check_sidecar_matches, ensure_engine, gpu_identity, read_sidecar

        path = Path(engine_path)
        device = "cuda" if device in (None, "auto") else device
        trt = _tensorrt.import_tensorrt()
        _tensorrt.require_cuda(device)
        import torch

        if path.suffix.lower() == ".onnx":
            path = ensure_engine(path, precision or "fp16", device=device, **build_options)
        elif build_options:
            raise InputError(f"{path}: build options {sorted(build_options)} apply to an .onnx input only")
        if not path.is_file():
            raise InputError(f"{path}: no such engine file")
        self._trt = trt
        self.path = path
        self.torch_device = torch.device(device)
        sidecar = read_sidecar(path)
        version = _tensorrt.tensorrt_version(trt)
        if sidecar is not None and check_sidecar:
            gpu_name, cc = gpu_identity(device)
            check_sidecar_matches(sidecar, path, version, gpu_name, cc)
        self.sidecar = sidecar

        with torch.cuda.device(self.torch_device):
            self._runtime, self._engine = _tensorrt.deserialize_engine(trt, path.read_bytes(), path)
            self.io = _tensorrt.engine_io(trt, self._engine, path)
            self._in_dtype = _tensorrt.torch_dtype(trt, self.io.input_dtype)
            self._out_dtype = _tensorrt.torch_dtype(trt, self.io.output_dtype)
            self._stream = torch.cuda.Stream(device=self.torch_device)  # dedicated, non-default
        self._contexts: dict[int, Any] = {}
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any, Any]] = {}
        self.cuda_graph = bool(cuda_graph)

        pmin, pmax = self.io.profile_min, self.io.profile_max
        self.min_shape = (pmin[0], pmin[2], pmin[3])
        self.profile = (pmin, self.io.profile_opt, pmax)
        # scale from the sidecar, else from the output shape at the opt shape
        scale = sidecar.scale if sidecar is not None and sidecar.scale else self._probe_scale()
        # An engine's precision is fixed at build time: the sidecar's word wins over the request.
        reported = sidecar.precision if sidecar is not None else (precision or "unknown")
        super().__init__(scale=scale, precision=reported, device=str(self.torch_device),
                         max_shape=(pmax[0], pmax[2], pmax[3]), min_shape=self.min_shape)

    # ----------------------------------------------------------------- internals

    def _context(self, stream: Any) -> Any:
        """One execution context per stream (a context must not run on two streams at once)."""
        from .. import _tensorrt

        key = int(stream.cuda_stream)
        if key not in self._contexts:
            self._contexts[key] = _tensorrt.create_context(self._engine)
        return self._contexts[key]

    def _probe_scale(self) -> int:
        from .. import _tensorrt

        opt = tuple(self.io.profile_opt)
        out = _tensorrt.set_shape(self._context(self._stream), self.io, opt)  # type: ignore[arg-type]
        if out[2] % opt[2] or out[3] % opt[3]:
            raise SRDeployError(f"{self.path}: output {out} is not an integer multiple of input {opt}")
        return out[2] // opt[2]

    def _run_chunk(self, x: Any) -> Any:
        """x: contiguous CUDA tensor of the engine's input dtype, shape within the profile.
        Returns a new CUDA tensor (N, 3, sH, sW) in the engine's output dtype, ready on the
        caller's current stream."""
        import torch

        from .. import _tensorrt

        caller = torch.cuda.current_stream(self.torch_device)
        stream = self._stream
        context = self._context(stream)
        shape = tuple(int(d) for d in x.shape)
        stream.wait_stream(caller)  # x was produced on the caller's stream
        with torch.cuda.stream(stream):
            if self.cuda_graph:
                y = self._run_graph(context, x, shape, stream)
            else:
                out_shape = _tensorrt.set_shape(context, self.io, shape)  # type: ignore[arg-type]
                y = torch.empty(out_shape, dtype=self._out_dtype, device=self.torch_device)
                _tensorrt.enqueue(context, self.io, x.data_ptr(), y.data_ptr(), stream.cuda_stream)
        x.record_stream(stream)
        y.record_stream(caller)
        caller.wait_stream(stream)
        return y

    def _run_graph(self, context: Any, x: Any, shape: tuple[int, ...], stream: Any) -> Any:
        """Replay (capturing first if needed) a CUDA graph for this shape. TensorRT requires a
        plain enqueue before capture (it flushes deferred shape-dependent work), capture on a
        non-default stream, and fixed tensor addresses -- hence static buffers per shape."""
        import torch

        from .. import _tensorrt

        entry = self._graphs.get(shape)
        if entry is None:
            # A graph bakes in its context's shapes and addresses: one dedicated context per graph.
            context = _tensorrt.create_context(self._engine)
            static_in = torch.empty(shape, dtype=self._in_dtype, device=self.torch_device)
            out_shape = _tensorrt.set_shape(context, self.io, shape)  # type: ignore[arg-type]
            static_out = torch.empty(out_shape, dtype=self._out_dtype, device=self.torch_device)
            static_in.copy_(x)
            _tensorrt.enqueue(context, self.io, static_in.data_ptr(), static_out.data_ptr(), stream.cuda_stream)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                _tensorrt.enqueue(context, self.io, static_in.data_ptr(), static_out.data_ptr(),
                                  torch.cuda.current_stream().cuda_stream)
            entry = (graph, static_in, static_out, context)
            self._graphs[shape] = entry
        graph, static_in, static_out, _ = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    # ----------------------------------------------------------------- contract

    def __call__(self, x: np.ndarray | Any) -> np.ndarray | Any:
        """(N, 3, H, W) float32 RGB [0, 1] -> (N, 3, sH, sW) float32, same kind as `x`
        (numpy -> numpy; a torch tensor -> a torch tensor on x's device)."""
        import torch

        is_numpy = isinstance(x, np.ndarray)
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if is_numpy else x
        if t.dim() != 4 or t.shape[1] != 3:
            raise InputError(f"expected a batch of shape (N, 3, H, W), got {tuple(t.shape)}")
        n, _, h, w = (int(d) for d in t.shape)
        max_n, max_h, max_w = self.max_shape  # type: ignore[misc]
        min_n, min_h, min_w = self.min_shape
        if h > max_h or w > max_w:
            raise InputError(f"input {h}x{w} is larger than the engine's profile max {max_h}x{max_w}; "
                             "tile it (sr_deploy.tiling) or rebuild the engine with a larger --max")
        src_device = t.device
        t = t.to(self.torch_device, dtype=self._in_dtype, non_blocking=True)
        ph, pw = max(min_h, h), max(min_w, w)
        if (ph, pw) != (h, w):  # below the profile min: edge-pad, crop the output back
            t = torch.nn.functional.pad(t.float(), (0, pw - w, 0, ph - h), mode="replicate").to(self._in_dtype)
        outs = []
        for start in range(0, n, max_n):
            chunk = t[start:start + max_n]
            if chunk.shape[0] < min_n:
                chunk = torch.cat([chunk, chunk[-1:].expand(min_n - chunk.shape[0], -1, -1, -1)])
            y = self._run_chunk(chunk.contiguous())
            outs.append(y[: min(max_n, n - start)])
        y = torch.cat(outs) if len(outs) > 1 else outs[0]
        s = self.scale
        y = y[:, :, : h * s, : w * s].float()
        if is_numpy:
            return y.cpu().numpy()
        return y.to(src_device)

    def close(self) -> None:
        self._graphs.clear()
        self._contexts.clear()
        self._engine = None
        self._runtime = None


def load_tensorrt_from_onnx(onnx_path: str | Path, device: str = "cuda", precision: str = "fp16",
                            **options: Any) -> TensorRTBackend:
    """`sr-deploy upscale --backend tensorrt model.onnx`: build the engine on first use (engine
    cache, see `sr_deploy.engine.ensure_engine`) and return a backend running it."""
    return TensorRTBackend(onnx_path, device=device, precision=precision, **options)
