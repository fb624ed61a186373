"""ONNX Runtime backend: runs an exported `.onnx` file (see `sr_deploy.export`).

Execution providers follow `device`: the CPU provider for ``cpu``; for ``cuda`` the TensorRT
and CUDA providers of onnxruntime-gpu (`pip install 'sr-deploy[gpu]'`), each falling back to
the next. The graph's own precision decides the arithmetic (an fp16 ONNX computes in fp16
with float32 inputs and outputs); the TensorRT provider can additionally run an fp32 graph
in fp16 (`trt_fp16_enable`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ORT_GPU_NOT_INSTALLED, InputError, NotInstalledError
from ..models.registry import live_values_per_hr_pixel
from ..util.onnx_facts import LIVE_VALUES_KEY, metadata
from ..util.onnx_facts import graph_precision as _graph_precision
from ..util.onnx_facts import load_onnx_file as load_onnx_file  # re-exported for older callers
from ..util.onnx_facts import static_input_dims as _static_dims
from ..util.text import first_line
from .base import NUMPY, TORCH, Backend


def fp16_rounding_graph(model: Any) -> Any:
    """A copy of an fp16 ONNX graph on which ONNX Runtime's CPU provider really rounds to fp16.

    Why: on x86 the CPU provider has no fp16 kernels for Conv, PRelu, Add, Resize...; it wraps each
    such node in Casts to float32 and then removes the Cast pairs it put between neighbouring nodes,
    so an fp16 graph runs in float32 from end to end. Its parity then only reflects the rounding of
    the weights (the bundled model, stored in fp16, scored 148 dB "fp16" parity: fp32's).

    How: an Identity (which has an fp16 kernel) after every node output typed float16 forces a
    real float32 -> float16 rounding there. That is what a GPU runtime does with an fp16 graph: fp16
    tensors between layers, float32 accumulation inside a layer (cuDNN / TensorRT fp16 kernels).
    The session must run with graph optimisations off (`ORT_DISABLE_ALL`), or the Identities are
    eliminated again. Types come from `value_info` (shape inference fills it in when absent).

    Args:
        model: an `onnx.ModelProto` with its weights loaded; not modified.
    Returns:
        a new ModelProto, same inputs, outputs and weights.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    if not any(v.type.tensor_type.elem_type == TensorProto.FLOAT16 for v in model.graph.value_info):
        model = onnx.shape_inference.infer_shapes(model)
    fp16 = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    graph_outputs = {o.name for o in model.graph.output}
    nodes = []
    for node in model.graph.node:
        nodes.append(node)
        for i, name in enumerate(list(node.output)):
            if name in fp16 and name not in graph_outputs:
                node.output[i] = f"{name}__before_fp16_rounding"
                nodes.append(helper.make_node("Identity", [node.output[i]], [name], name=f"{name}__fp16_rounding"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


# min / opt / max (N, C, H, W) of the TensorRT execution provider's profile for a dynamic graph:
# without explicit profile shapes the provider rebuilds its engine whenever a new input shape
# arrives, inside timing loops. The max matches `sr-deploy build-engine`'s default profile.
TRT_EP_PROFILE = ((1, 3, 16, 16), (1, 3, 270, 480), (4, 3, 540, 960))


def trt_ep_profile_options(input_name: str, dims: list[int | None]) -> dict[str, str]:
    """`trt_profile_min_shapes/opt_shapes/max_shapes` for a graph whose input has dynamic dims
    ("input:1x3x16x16" strings, as the TensorRT provider reads them); {} for a static graph."""
    if len(dims) == 4 and None not in dims:
        return {}
    keys = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
    return {k: f"{input_name}:{'x'.join(str(d) for d in shape)}" for k, shape in zip(keys, TRT_EP_PROFILE)}


def check_session_providers(
    path: Path, device: str, precision: str, graph_precision: str, asked: list[Any], got: list[str]
) -> None:
    """Refuse a session whose providers silently fell back (ONNX Runtime drops a provider that fails
    to load and goes on): fp16 asked of an fp32 graph without the TensorRT provider would run fp32
    while reporting fp16, and a cuda session without any GPU provider would run on the CPU."""
    names = [p[0] if isinstance(p, tuple) else p for p in asked]
    dropped = [n for n in names if n not in got]
    if device == "cpu" or not dropped:
        return
    if precision == "fp16" and graph_precision == "fp32" and "TensorrtExecutionProvider" not in got:
        raise NotInstalledError(
            f"{path}: ONNX Runtime did not load the TensorRT execution provider (session providers: "
            f"{', '.join(got)}), so this fp32 graph would run in fp32, not fp16; install TensorRT for "
            "onnxruntime-gpu, export an fp16 file with `sr-deploy export --fp16`, or use precision fp32"
        )
    if not {"TensorrtExecutionProvider", "CUDAExecutionProvider"} & set(got):
        raise NotInstalledError(
            f"{path}: ONNX Runtime loaded no GPU provider for {device} (session providers: "
            f"{', '.join(got)}); {ORT_GPU_NOT_INSTALLED}"
        )


def _check_image_graph(path: Path, model: Any) -> None:
    """InputError unless the graph takes one Nx3xHxW image (ONNX Runtime's own error for a
    greyscale model is a page of text)."""
    if len(model.graph.input) != 1 or len(model.graph.output) < 1:
        raise InputError(f"{path}: expected a graph with one image input, found {len(model.graph.input)} inputs")
    if len(shape := _static_dims(model)) != 4 or shape[1] not in (None, 3):
        shown = "x".join("?" if d is None else str(d) for d in shape)
        raise InputError(f"{path}: its input is {shown}; sr-deploy feeds RGB images as Nx3xHxW")


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX super-resolution graph with ONNX Runtime.

    Args:
        onnx_path: a `.onnx` file taking one (N, 3, H, W) float32 input.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto``/None = the graph's own (fp16 graph -> fp16). ``fp16`` with an fp32
            graph needs the TensorRT provider (`trt_fp16_enable`); otherwise InputError.
        threads: intra-op threads (None: ONNX Runtime's default, one per core).
        trt_ep_options: extra TensorRT execution-provider options, merged over ours
            (engine cache next to the ONNX file, fp16 as asked).
        emulate_fp16: on the CPU, run an fp16 graph with real fp16 rounding between nodes
            (`fp16_rounding_graph`; slower). Without it ONNX Runtime's CPU provider computes an
            fp16 graph in float32 (faster and more exact, but parity then says nothing about
            fp16). For checks that stand in for a GPU runtime: export --fp16, build-engine.

    `scale` comes from the file's `sr_deploy.scale` metadata (or a probe run when absent).
    `max_shape` is the static (N, H, W) of the input when the file has one: smaller inputs
    are edge-padded to it and cropped back, larger batches split; a larger H or W is an error
    (the caller tiles).
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        device: str = "cpu",
        precision: str | None = "auto",
        threads: int | None = None,
        trt_ep_options: dict[str, Any] | None = None,
        emulate_fp16: bool = False,
    ) -> None:
        import onnxruntime as ort

        path = Path(onnx_path)
        # Weights kept on disk unless the fp16 emulation rebuilds the graph from this same load.
        model = load_onnx_file(path, load_weights=emulate_fp16)
        _check_image_graph(path, model)
        graph_precision = _graph_precision(model)
        device = (device or "cpu").lower()
        if device == "auto":
            device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        precision = (precision or "auto").lower()
        precision = {"float32": "fp32", "float16": "fp16", "half": "fp16"}.get(precision, precision)
        if precision == "auto":
            precision = graph_precision
        if precision not in ("fp32", "fp16"):
            raise InputError(f"{path}: precision {precision!r} is not available with ONNX Runtime (fp32 or fp16)")

        self.path = path
        self.input_name = model.graph.input[0].name
        self.output_name = model.graph.output[0].name
        dims = _static_dims(model)
        self.device_id, providers = _providers(
            path, device, precision, trt_ep_options, trt_ep_profile_options(self.input_name, dims)
        )
        if (
            precision == "fp16"
            and graph_precision == "fp32"
            and not any(isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider" for p in providers)
        ):
            raise InputError(
                f"{path}: an fp32 graph runs in fp16 only on the TensorRT provider; export an fp16 file "
                "with `sr-deploy export --fp16` or use precision fp32"
            )

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source: str | bytes = str(path)
        self.fp16_emulated = emulate_fp16 and device == "cpu" and graph_precision == "fp16"
        if self.fp16_emulated:
            source = fp16_rounding_graph(model).SerializeToString()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings from the providers are noise on stderr here
        try:
            self.session = ort.InferenceSession(source, sess_options=opts, providers=providers)
        except Exception as exc:
            raise InputError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)})") from exc
        self.providers = self.session.get_providers()
        check_session_providers(path, device, precision, graph_precision, providers, self.providers)
        self.on_cuda = device != "cpu" and "CUDAExecutionProvider" in self.providers

        static = (dims[0], dims[2], dims[3]) if len(dims) == 4 and None not in (dims[0], dims[2], dims[3]) else None
        self.static_shape = static
        min_shape, max_shape = static, static
        if static is None and "TensorrtExecutionProvider" in self.providers:
            # Inputs beyond the provider's profile would make it rebuild its engine mid-run: the caller
            # tiles larger ones, smaller ones are padded up to the profile's min.
            (pmin_n, _, pmin_h, pmin_w), _, (pmax_n, _, pmax_h, pmax_w) = TRT_EP_PROFILE
            min_shape, max_shape = (pmin_n, pmin_h, pmin_w), (pmax_n, pmax_h, pmax_w)
        meta = metadata(model)
        scale = int(meta["sr_deploy.scale"]) if "sr_deploy.scale" in meta else None
        self.metadata = meta
        super().__init__(scale or 1, precision, device, max_shape=max_shape, min_shape=min_shape)
        # the memory figure the export recorded (older exports: the registry's, for their arch)
        live = meta.get(LIVE_VALUES_KEY)
        self.live_values_per_hr_pixel = int(live) if live else live_values_per_hr_pixel(meta.get("sr_deploy.arch"))
        if scale is None:
            self.scale = self._probe_scale()

    def _probe_scale(self) -> int:
        n, h, w = self.static_shape or (1, 16, 16)
        y = self._run_numpy(np.zeros((n, 3, h, w), np.float32))
        if y.shape[2] % h or y.shape[2] // h != y.shape[3] // w:
            raise InputError(f"{self.path}: output {y.shape} is not an integer upscaling of input {(n, 3, h, w)}")
        return y.shape[2] // h

    def _run_numpy(self, x: np.ndarray) -> np.ndarray:
        if self.on_cuda:
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, x)
            binding.bind_output(self.output_name, "cuda", self.device_id)
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def _run_cuda_tensor(self, x: Any) -> Any:
        """IO binding straight on torch CUDA memory: no host round trip."""
        import torch

        x = x.to(device=f"cuda:{self.device_id}", dtype=torch.float32).contiguous()
        n, c, h, w = x.shape
        y = torch.empty((n, c, h * self.scale, w * self.scale), device=x.device, dtype=torch.float32)
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", self.device_id, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", self.device_id, np.float32, tuple(y.shape), y.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()  # x was written on torch's stream
        self.session.run_with_iobinding(binding)
        return y

    def input_kinds(self, kind: str) -> tuple[str, ...]:
        # torch tensors go straight from GPU memory through IO binding when the graph's shape is
        # free; everything else runs from host memory.
        if kind == TORCH and self.on_cuda and self.static_shape is None:
            return (TORCH,)
        return (NUMPY,)

    def infer(self, x: Any) -> Any:
        return self._run_numpy(x) if isinstance(x, np.ndarray) else self._run_cuda_tensor(x)

    def too_large_message(self, h: int, w: int) -> str:
        _, max_h, max_w = self.max_shape  # type: ignore[misc]
        if self.static_shape is None:
            return (
                f"{self.path}: input {h}x{w} exceeds the TensorRT execution provider's profile max "
                f"{max_h}x{max_w}; tile it (sr_deploy.tiling)"
            )
        return (
            f"{self.path}: input {h}x{w} exceeds this file's static shape {max_h}x{max_w}; tile it (sr_deploy.tiling)"
        )

    def close(self) -> None:
        self.session = None


def _providers(
    path: Path, device: str, precision: str, trt_ep_options: dict[str, Any] | None, profile_options: dict[str, str]
) -> tuple[int, list[Any]]:
    """(CUDA device id, execution providers in order of preference) for `device`.

    cpu: the CPU provider. cuda / cuda:N: TensorRT (when onnxruntime-gpu has it; engine and
    timing caches beside the ONNX file, fp16 as asked, `profile_options` for a dynamic graph,
    `trt_ep_options` merged over), then CUDA, then CPU. NotInstalledError without the CUDA
    provider; InputError for an unknown device."""
    import onnxruntime as ort

    if device == "cpu":
        return 0, ["CPUExecutionProvider"]
    if not (device == "cuda" or re.fullmatch(r"cuda:\d+", device)):
        raise InputError(f"unknown device {device!r}: expected cpu, cuda or cuda:N")
    device_id = int(device.split(":")[1]) if ":" in device else 0
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise NotInstalledError(f"{path}: {ORT_GPU_NOT_INSTALLED}")
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        cache = path.parent / f"{path.stem}.ort-trt-cache"
        options = {
            "device_id": device_id,
            "trt_fp16_enable": precision == "fp16",
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            **profile_options,
        }
        options.update(trt_ep_options or {})
        providers.append(("TensorrtExecutionProvider", options))
    return device_id, providers + [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
