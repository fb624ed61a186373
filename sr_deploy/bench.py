"""Throughput benchmark with parity: how fast is each backend here, and does it give the same picture.

    from sr_deploy.bench import run_benchmark, format_table, write_json, write_markdown
    report = run_benchmark("model.pt", backends=["torch", "torch-nchw", "onnxruntime"],
                           sizes=[(128, 128), (270, 480)], batch_sizes=[1], seconds=3)
    print(format_table(report))

One row per backend x device x precision x input size x batch. Timing is done so that the numbers
mean something:

- warm-up calls (graph building, cuDNN/oneDNN autotuning, allocator growth) are excluded;
- on CUDA the device is synchronised before and after every timed call, so a row times the work
  and not the launch;
- each call gets the next of several *different* batches cut from real photos (../shared/data;
  a synthetic image when absent), so no cache holds the answer;
- the median and the 10th / 90th percentiles of many calls are reported, not a mean.

Inputs are placed on the backend's device before timing (the backend's own dtype / layout
conversions are timed, host <-> device copies are not; `video_row` measures a whole pipeline).

Each row also carries: frames/s, output Mpixel/s, achieved GFLOP/s (the model's convolution FLOPs,
as `sr-deploy info` counts them, times the pixels) and its share of a measured GEMM peak (the better of a large matmul and a 1x1 convolution)
measured on the same device in the same run, parity against the PyTorch float32 model (PSNR dB,
max abs error, via `sr_deploy.parity.parity`), peak memory, and the speed-up against PyTorch fp32
at the same size and batch in the same run. A backend, device or precision that cannot run here
is a row with status ``skipped`` and the reason; one that raised is ``failed`` with the error.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from . import __version__
from .backends.ort_backend import load_onnx_file
from .errors import TENSORRT_NOT_INSTALLED, InputError, NotInstalledError, SRDeployError, first_line

# Backend names accepted by `run_benchmark`. "torch" is the TorchBackend as shipped (channels_last
# memory format inside); "torch-nchw" the same model in the plain NCHW layout, to show what
# channels_last buys on this machine.
BENCH_BACKENDS = ("torch", "torch-nchw", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# How many different batches each row cycles through.
ROTATING_BATCHES = 8
# Bounds on the number of timed calls when timing by a time budget.
MIN_ITERS, MAX_ITERS = 5, 100_000
STATUS_OK, STATUS_SKIPPED, STATUS_FAILED = "ok", "skipped", "failed"

Progress = Callable[[str], None]


# ----------------------------------------------------------------------------------------------
# Parsing helpers (shared with the CLI)
# ----------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    """``"270x480"`` (height x width, of the low-resolution input) -> (270, 480)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"bad input size {text!r}: expected HEIGHTxWIDTH, e.g. 270x480") from None
    if h < 1 or w < 1:
        raise InputError(f"bad input size {text!r}: height and width must be >= 1")
    return h, w


def parse_list(text: str | Sequence[str], allowed: Sequence[str] | None = None, what: str = "value") -> list[str]:
    """``"a,b"`` -> ["a", "b"] (lower-cased, blanks dropped), each checked against `allowed`."""
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise InputError(f"empty list of {what}s")
    if allowed is not None:
        for item in items:
            base = item.split("@", 1)[0]
            if base not in allowed:
                raise InputError(f"unknown {what} {item!r}: expected one of {', '.join(allowed)}")
    return items


def parse_backend_spec(spec: str, default_device: str) -> tuple[str, str]:
    """``"onnxruntime@cpu"`` -> ("onnxruntime", "cpu"); ``"torch"`` -> ("torch", default_device)."""
    name, _, device = spec.partition("@")
    name = {"ort": "onnxruntime", "trt": "tensorrt"}.get(name, name)
    if name not in BENCH_BACKENDS:
        raise InputError(f"unknown backend {name!r}: expected one of {', '.join(BENCH_BACKENDS)}")
    return name, (device or default_device)


def resolve_devices(device: str) -> list[str]:
    """``auto`` -> ["cuda"] when PyTorch sees a GPU, else ["cpu"]; ``"cpu,cuda"`` -> both
    (an absent GPU gives skipped rows, not an error)."""
    out = []
    for d in parse_list(device, what="device"):
        if d == "auto":
            d = "cuda" if torch.cuda.is_available() else "cpu"
        if not (d == "cpu" or d == "cuda" or d.startswith("cuda:")):
            raise InputError(f"unknown device {d!r}: expected auto, cpu, cuda or cuda:N")
        if d not in out:
            out.append(d)
    return out


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------

@dataclass
class BenchRow:
    """One configuration. Timing figures are None unless `status` is ``ok``."""

    backend: str  # torch, torch-nchw, onnxruntime, tensorrt
    device: str  # cpu, cuda, cuda:N
    precision: str  # fp32, fp16, bf16
    batch: int
    height: int  # low-resolution input height
    width: int
    status: str = STATUS_OK  # ok, skipped, failed
    reason: str = ""  # why skipped / failed, or a note (e.g. the execution provider used)
    iters: int = 0
    median_ms: float | None = None  # per batch
    p10_ms: float | None = None
    p90_ms: float | None = None
    frames_per_s: float | None = None
    output_mpix_per_s: float | None = None
    gflops: float | None = None  # achieved GFLOP/s (model FLOPs / median time)
    peak_share: float | None = None  # gflops / measured GEMM peak of this device, 0..1+
    speedup: float | None = None  # vs PyTorch fp32, same size and batch (see `BenchReport.baseline`)
    parity_psnr_db: float | None = None  # vs the PyTorch float32 reference
    parity_max_abs: float | None = None
    parity_nonfinite: int | None = None
    peak_mem_mb: float | None = None
    mem_kind: str = ""  # what peak_mem_mb measures

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}" + ("" if self.device == "cpu" else f" ({self.device})")


@dataclass
class VideoRow:
    """The end-to-end `sr-deploy upscale` pipeline on a real clip vs the backend alone on the same frames."""

    clip: str
    frames: int
    width: int
    height: int
    backend: str
    device: str
    precision: str
    pipeline_fps: float | None = None  # frames / wall time of the whole upscale command (decode..encode)
    backend_fps: float | None = None  # the backend alone on the same decoded frames, inputs ready
    overhead_share: float | None = None  # 1 - backend_fps^-1 / pipeline_fps^-1: share of time outside the model
    command: str = ""
    status: str = STATUS_OK
    reason: str = ""


@dataclass
class BenchReport:
    """Everything one benchmark run measured, plus enough about the machine to compare runs."""

    model: str
    arch: str
    scale: int
    flops_per_lr_pixel: float | None  # convolution FLOPs per input pixel (None: unknown)
    flops_source: str
    reference: str  # what parity is measured against
    baseline: str  # what the speed-up is a ratio to
    rows: list[BenchRow]
    peaks_gflops: dict[str, float]  # "cpu fp32" / "cuda fp32" / "cuda fp16" -> GFLOP/s, `measure_peak_gflops`
    machine: dict[str, Any]
    settings: dict[str, Any]
    command: str = ""
    date: str = ""
    notes: list[str] = field(default_factory=list)
    video: list[VideoRow] = field(default_factory=list)

    def ok_rows(self) -> list[BenchRow]:
        return [r for r in self.rows if r.status == STATUS_OK]

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    """inf / nan -> "inf" / "-inf" / "nan" strings (JSON has no such numbers); tuples -> lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# Inputs: crops of real photos
# ----------------------------------------------------------------------------------------------

def _photo_paths(data_dir: Path | None) -> list[Path]:
    from .parity import find_shared_data

    root = Path(data_dir) if data_dir is not None else find_shared_data()
    if root is None:
        return []
    paths: list[Path] = []
    for sub in ("train/Sun_Hays80", "benchmark/Set14", "benchmark/Set5"):
        folder = root / sub
        if folder.is_dir():
            paths += sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return paths


def benchmark_frames(height: int, width: int, count: int = ROTATING_BATCHES,
                     data_dir: str | Path | None = None, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """`count` different frames, each float32 RGB [0, 1] of shape (3, height, width), and where they
    came from.

    Frames are random crops (fixed seed) of different photos from ../shared/data (Sun_Hays80, then
    Set14, Set5); a photo smaller than the crop is first enlarged (bicubic) to cover it. Without
    the data folder: crops of `sr_deploy.parity.synthetic_image` at different offsets.
    """
    import cv2

    rng = np.random.default_rng(seed)
    frames: list[np.ndarray] = []
    used_paths: list[Path] = []
    paths = _photo_paths(Path(data_dir) if data_dir is not None else None)
    for path in paths:
        if len(frames) == count:
            break
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        ih, iw = bgr.shape[:2]
        grow = max(height / ih, width / iw, 1.0)
        if grow > 1.0:
            bgr = cv2.resize(bgr, (math.ceil(iw * grow), math.ceil(ih * grow)), interpolation=cv2.INTER_CUBIC)
            ih, iw = bgr.shape[:2]
        top = int(rng.integers(0, ih - height + 1))
        left = int(rng.integers(0, iw - width + 1))
        crop = bgr[top:top + height, left:left + width, ::-1]  # BGR -> RGB
        frames.append(np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0))
        used_paths.append(path)
    if len(frames) == count:
        used = sorted({f"{p.parent.parent.name}/{p.parent.name}" for p in used_paths})
        return frames, f"crops of {count} photos from ../shared/data ({', '.join(used)})"
    from .parity import synthetic_image

    base = synthetic_image(max(256, 2 * height), max(256, 2 * width))
    while len(frames) < count:
        i = len(frames)
        shifted = np.roll(base, (37 * i, 53 * i), axis=(0, 1))[:height, :width]
        frames.append(np.ascontiguousarray(shifted.transpose(2, 0, 1), dtype=np.float32))
    return frames, "synthetic frames (../shared/data not found)"


def rotating_batches(frames: Sequence[np.ndarray], batch: int, count: int = ROTATING_BATCHES) -> list[np.ndarray]:
    """`count` batches (batch, 3, H, W), batch k holding frames k*batch, k*batch+1, ... (cyclic), so
    consecutive calls never see the same batch."""
    n = len(frames)
    return [np.stack([frames[(k * batch + j) % n] for j in range(batch)]) for k in range(count)]


# ----------------------------------------------------------------------------------------------
# Timing, peak, memory
# ----------------------------------------------------------------------------------------------

@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    iters: int
    samples_ms: list[float]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[Any], Any], inputs: Sequence[Any], device: str = "cpu", *, warmup: int = 3,
               iters: int | None = None, seconds: float | None = 2.0) -> Timing:
    """Time `fn` on `inputs`, cycling through them.

    `warmup` untimed calls first. Then either exactly `iters` timed calls, or as many as fit in
    `seconds` (at least MIN_ITERS). On CUDA the device is synchronised before and after each
    call, so each sample is the full execution of one call.
    """
    if not inputs:
        raise ValueError("time_calls needs at least one input")
    for i in range(max(0, warmup)):
        fn(inputs[i % len(inputs)])
    _sync(device)
    samples: list[float] = []
    limit = iters if iters is not None else MAX_ITERS
    budget = math.inf if iters is not None else float(seconds if seconds is not None else 2.0)
    started = time.perf_counter()
    i = 0
    while len(samples) < limit:
        x = inputs[i % len(inputs)]
        i += 1
        _sync(device)
        t0 = time.perf_counter()
        fn(x)
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
        if iters is None and len(samples) >= MIN_ITERS and time.perf_counter() - started >= budget:
            break
    p10, p50, p90 = np.percentile(samples, [10, 50, 90])
    return Timing(float(p50), float(p10), float(p90), len(samples), samples)


def measure_peak_gflops(device: str = "cpu", precision: str = "fp32", n: int | None = None,
                        seconds: float = 1.0) -> float:
    """The practical peak that `BenchRow.peak_share` is a fraction of, in GFLOP/s: the better of

    - an (n x n) @ (n x n) `torch.matmul` (BLAS: MKL on the CPU, cuBLAS on CUDA), and
    - a GEMM written as a 1x1 convolution, channels_last (oneDNN on the CPU, cuDNN on CUDA).

    Both, because the libraries differ by 2x on some CPUs: MKL's sgemm runs its AVX2 code on AMD
    processors while oneDNN uses AVX-512 there, so a matmul-only peak sat below what the models'
    own convolutions reached (RRDBNet showed 200 % of it). fp32 on CUDA is true fp32 (TF32 off)."""
    if n is None:
        n = 8192 if device.startswith("cuda") else 1536
    dtype = TORCH_DTYPES[precision]
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.rand(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.rand(n, n, generator=gen).to(device=device, dtype=dtype)
    # A 1x1 conv of C channels over P pixels is a (P x C) @ (C x C) GEMM: 2 P C^2 FLOPs. Shaped
    # like a wide SR layer (many pixels, a few hundred channels), where the conv libraries shine.
    channels, side = (2048, 128) if device.startswith("cuda") else (512, 64)
    x = torch.rand(1, channels, side, side, generator=gen).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(channels, channels, 1, 1, generator=gen).to(device=device, dtype=dtype)
    w = w.contiguous(memory_format=torch.channels_last)
    gemms = [(lambda: torch.matmul(a, b), 2.0 * n**3),
             (lambda: torch.nn.functional.conv2d(x, w), 2.0 * side * side * channels**2)]
    best_gflops = 0.0
    with _tf32(False), torch.inference_mode():
        for gemm, flops in gemms:
            gemm()  # warm-up: library load, kernel choice
            _sync(device)
            best = math.inf
            started = time.perf_counter()
            reps = 0
            while reps < 3 or (time.perf_counter() - started < seconds and reps < 200):
                t0 = time.perf_counter()
                gemm()
                _sync(device)
                best = min(best, time.perf_counter() - t0)
                reps += 1
            best_gflops = max(best_gflops, flops / best / 1e9)
    return best_gflops


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """Set TF32 for CUDA matmuls and cuDNN convs, restoring the previous flags after."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class PeakMemory:
    """Peak memory of one row. CUDA: `torch.cuda.max_memory_allocated` (PyTorch's allocator only;
    ONNX Runtime / TensorRT allocations outside it are not seen). CPU: the process's peak resident
    set (VmHWM), reset before the row through /proc/self/clear_refs where Linux allows it;
    elsewhere the peak since the process started."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.kind = ""

    def reset(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "torch.cuda.max_memory_allocated"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.kind = "process peak RSS during the row"
        except OSError:
            self.kind = "process peak RSS since start"

    def peak_mb(self) -> float | None:
        if self.device.startswith("cuda"):
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak / (2**20 if sys.platform == "darwin" else 1024.0)
        except Exception:
            return None


# ----------------------------------------------------------------------------------------------
# FLOPs of an ONNX graph (when no PyTorch model is at hand)
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# The model under test
# ----------------------------------------------------------------------------------------------

@dataclass
class _Subject:
    """The model in the forms the backends need."""

    name: str
    module: nn.Module | None  # None for an ONNX / engine input
    arch: str
    scale: int
    onnx_path: Path | None = None  # a given .onnx input
    onnx_precision: str | None = None
    engine_path: Path | None = None


def _given_onnx(paths: Sequence[str | Path]) -> dict[str, Path]:
    """{precision: path} for ONNX files given with --onnx; InputError for a missing / unreadable
    file or two files of the same precision."""
    from onnx import TensorProto

    out: dict[str, Path] = {}
    for p in paths:
        path = Path(p)
        proto = load_onnx_file(path, load_weights=False)
        prec = "fp16" if any(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer) else "fp32"
        if prec in out:
            raise InputError(f"{path}: two {prec} ONNX files given ({out[prec].name} and {path.name}); give one")
        out[prec] = path
    return out


def _load_subject(model: str | Path | nn.Module) -> _Subject:
    if isinstance(model, nn.Module):
        scale = getattr(model, "scale", None)
        if scale is None:
            raise InputError(f"{type(model).__name__}: no `scale` attribute")
        return _Subject(type(model).__name__, model.eval(), type(model).__name__, int(scale))
    from .models import load_checkpoint, resolve_model_path

    path = resolve_model_path(model)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        proto = load_onnx_file(path, load_weights=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        from onnx import TensorProto

        prec = "fp16" if any(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer) else "fp32"
        return _Subject(str(model), None, meta.get("sr_deploy.arch", "onnx"), int(meta.get("sr_deploy.scale", 0)),
                        onnx_path=path, onnx_precision=prec)
    if suffix in (".engine", ".plan"):
        if not path.is_file():
            raise InputError(f"{path}: no such model file")
        return _Subject(str(model), None, "TensorRT engine", 0, engine_path=path)
    ckpt = load_checkpoint(path)
    return _Subject(str(model), ckpt.model, ckpt.arch, ckpt.scale)




# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------

class _OnnxFiles:
    """ONNX exports of the subject, made once per precision on first use, in a temporary folder."""

    def __init__(self, subject: _Subject, folder: Path, say: Progress,
                 given: dict[str, Path] | None = None) -> None:
        self.subject, self.folder, self.say = subject, folder, say
        self.files: dict[str, Path] = dict(given or {})
        self.errors: dict[str, str] = {}

    def get(self, precision: str) -> Path:
        if self.subject.onnx_path is not None:
            if precision != self.subject.onnx_precision:
                raise NotInstalledError(f"{self.subject.onnx_path.name} is an {self.subject.onnx_precision} graph; "
                                        f"benchmark an {precision} export of it for {precision} rows")
            return self.subject.onnx_path
        if precision == "bf16":
            raise NotInstalledError("no bf16 ONNX export (sr-deploy export writes fp32 or fp16 graphs)")
        if precision in self.errors:
            raise SRDeployError(self.errors[precision])
        if precision not in self.files:
            try:
                from .export import export_onnx
            except ImportError as exc:
                raise NotInstalledError(f"ONNX export is not available in this build ({first_line(exc)})") from exc
            out = self.folder / f"model-{precision}.onnx"
            self.say(f"exporting the model to ONNX ({precision}) for the ONNX Runtime / TensorRT rows")
            try:
                export_onnx(self.subject.module, out, fp16=(precision == "fp16"), verify=False, log=None)
            except Exception as exc:
                self.errors[precision] = f"ONNX export ({precision}) failed: {first_line(exc)}"
                raise SRDeployError(self.errors[precision]) from exc
            self.files[precision] = out
        return self.files[precision]


def _make_backend(name: str, device: str, precision: str, subject: _Subject, onnx_files: _OnnxFiles) -> Any:
    """A ready backend, or NotInstalledError / InputError with the reason it cannot run here."""
    from .backends import load

    if device.startswith("cuda") and not torch.cuda.is_available() and name != "onnxruntime":
        raise NotInstalledError(f"no CUDA device: PyTorch {torch.__version__} sees no GPU here")
    if name in ("torch", "torch-nchw"):
        if subject.module is None:
            raise NotInstalledError("the torch backend needs a PyTorch checkpoint; MODEL is "
                                    + ("an ONNX file" if subject.onnx_path else "a TensorRT engine"))
        return load(subject.module, device=device, precision=precision, backend="torch",
                    channels_last=(name == "torch"))
    if name == "onnxruntime":
        if subject.engine_path is not None:
            raise NotInstalledError("ONNX Runtime cannot run a TensorRT engine file")
        if precision == "bf16":
            raise NotInstalledError("no bf16 ONNX export (sr-deploy export writes fp32 or fp16 graphs)")
        if device.startswith("cuda"):
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise NotInstalledError("onnxruntime-gpu (CUDA execution provider) is not installed; "
                                        "add an onnxruntime@cpu row for ONNX Runtime on the CPU")
        return load(onnx_files.get(precision), device=device, precision=precision, backend="onnxruntime")
    if name == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            raise NotInstalledError(TENSORRT_NOT_INSTALLED)
        if not device.startswith("cuda"):
            raise NotInstalledError("TensorRT runs on a CUDA device only (this row asked for the CPU)")
        if subject.engine_path is not None:
            return load(subject.engine_path, device=device, precision=precision, backend="tensorrt")
        # fp16 lives in the ONNX graph (TensorRT 11 is strongly typed); fp32 I/O either way.
        return load(onnx_files.get("fp16" if precision == "fp16" else "fp32"), device=device,
                    precision=precision, backend="tensorrt")
    raise InputError(f"unknown backend {name!r}")


def _backend_inputs(name: str, backend: Any, device: str, batches: list[np.ndarray]) -> list[Any]:
    """The batches in the form the backend takes without a host copy: torch tensors already on
    the GPU for torch / TensorRT / ONNX Runtime-CUDA, numpy for ONNX Runtime on the CPU."""
    if device.startswith("cuda"):
        return [torch.from_numpy(b).to(device) for b in batches]
    if name in ("torch", "torch-nchw"):
        return [torch.from_numpy(b) for b in batches]
    return batches


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def machine_info(devices: Sequence[str]) -> dict[str, Any]:
    """Host, CPU, library versions and load: what a reader needs to trust or discount the numbers."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "sr_deploy": __version__,
    }
    with contextlib.suppress(Exception):
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    if importlib.util.find_spec("tensorrt") is not None:
        with contextlib.suppress(Exception):
            import tensorrt

            info["tensorrt"] = tensorrt.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    with contextlib.suppress(OSError):
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _default_precisions(device: str) -> list[str]:
    return ["fp32", "fp16"] if device.startswith("cuda") else ["fp32"]


def run_benchmark(
    model: str | Path | nn.Module,
    *,
    backends: Sequence[str] = ("torch", "torch-nchw", "onnxruntime", "tensorrt"),
    precisions: Sequence[str] | None = None,
    sizes: Sequence[tuple[int, int]] = ((128, 128), (270, 480)),
    batch_sizes: Sequence[int] = (1,),
    device: str = "auto",
    warmup: int = 3,
    iters: int | None = None,
    seconds: float | None = 2.0,
    measure_peak: bool = True,
    data_dir: str | Path | None = None,
    command: str = "",
    progress: bool | Progress = True,
    onnx_models: Sequence[str | Path] = (),
    video: str | Path | None = None,
    video_frames: int = 8,
    video_width: int | None = None,
) -> BenchReport:
    """Benchmark `model` on every backend x device x precision x size x batch asked for.

    Args:
        model: checkpoint path / bundled name / `nn.Module` (all backends), or an .onnx file
            (ONNX Runtime and TensorRT only; parity then against ONNX Runtime fp32 on the CPU
            running that file when it is an fp32 graph) or an .engine (TensorRT only, no parity).
        backends: names from BENCH_BACKENDS, each optionally ``@device`` (``onnxruntime@cpu``).
        precisions: fp32 / fp16 / bf16; None = fp32 on the CPU, fp32 + fp16 on CUDA.
        sizes: low-resolution input (height, width) pairs.
        batch_sizes: frames per call.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a comma list; the default for
            backends given without ``@device``.
        warmup: untimed calls per row.
        iters: timed calls per row; None = as many as fit in `seconds` (at least 5).
        measure_peak: time a large GEMM per device for the peak-share column.
        data_dir: the shared data folder (default: $SR_DEPLOY_SHARED_DATA or ../shared/data).
        command: the command line to record in the report.
        progress: True = a tqdm bar on stderr, False = silent, or a callable for messages.
        onnx_models: existing ONNX exports of `model` to run on ONNX Runtime / TensorRT instead of
            exporting afresh (one per precision, read from each graph): parity then shows whether
            that file still matches the checkpoint.
        video, video_frames, video_width: a real clip for the end-to-end row (`video_row`): the
            `sr-deploy upscale` pipeline on its first `video_frames` frames (scaled to
            `video_width` when given) vs PyTorch fp32 alone on the same frames.

    Returns a `BenchReport`. Never raises for a backend that cannot run: that is a skipped or
    failed row. Raises InputError for bad arguments or an unreadable model.
    """
    if iters is not None and iters < 1:
        raise InputError(f"--iters must be >= 1, got {iters}")
    if seconds is not None and seconds <= 0:
        raise InputError(f"--seconds must be > 0, got {seconds}")
    if warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {warmup}")
    for b in batch_sizes:
        if int(b) < 1:
            raise InputError(f"batch size must be >= 1, got {b}")
    if not sizes:
        raise InputError("no input sizes given")
    if video is not None and not Path(video).is_file():
        raise InputError(f"{video}: no such video file")
    if video_frames < 1:
        raise InputError(f"--video-frames must be >= 1, got {video_frames}")
    say: Progress
    if callable(progress):
        say = progress
    elif progress:
        say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    else:
        say = lambda m: None  # noqa: E731

    devices = resolve_devices(device)
    specs = [parse_backend_spec(s, devices[0]) for s in parse_list(backends, what="backend")]
    # Without @device, a backend runs on every requested device.
    pairs: list[tuple[str, str]] = []
    for spec, (name, dev) in zip(parse_list(backends, what="backend"), specs):
        for d in ([dev] if "@" in spec else devices):
            d = resolve_devices(d)[0]
            if (name, d) not in pairs:
                pairs.append((name, d))
    if precisions is not None:
        precisions = parse_list(precisions, PRECISIONS, what="precision")

    subject = _load_subject(model)
    given_onnx = _given_onnx(onnx_models)
    machine = machine_info([d for _, d in pairs])
    notes: list[str] = []

    # FLOPs per input pixel.
    flops: float | None
    if subject.module is not None:
        from .models import count_flops_per_lr_pixel

        flops, flops_source = count_flops_per_lr_pixel(subject.module), "PyTorch model (sr_deploy.models.count_flops_per_lr_pixel)"
    elif subject.onnx_path is not None:
        try:
            flops, flops_source = onnx_conv_flops_per_lr_pixel(subject.onnx_path), "ONNX graph Conv nodes"
        except Exception as exc:
            flops, flops_source = None, f"unknown ({first_line(exc)})"
    else:
        flops, flops_source = None, "unknown (TensorRT engine)"

    # The parity reference: PyTorch fp32 on the CPU, NCHW, TF32 irrelevant there.
    reference_fn: Callable[[np.ndarray], Any] | None
    if subject.module is not None:
        from .backends.torch_backend import TorchBackend

        ref_backend = TorchBackend(subject.module, subject.scale, "cpu", "fp32", channels_last=False)
        reference_fn, reference = ref_backend, "PyTorch fp32 on the CPU (NCHW)"
    elif subject.onnx_path is not None and subject.onnx_precision == "fp32":
        from .backends.ort_backend import OnnxRuntimeBackend

        reference_fn = OnnxRuntimeBackend(subject.onnx_path, device="cpu", precision="fp32")
        reference = f"ONNX Runtime fp32 on the CPU running {subject.onnx_path.name} (no PyTorch model given)"
        notes.append("MODEL is an ONNX file: parity is against ONNX Runtime fp32 on the CPU, not PyTorch.")
    else:
        reference_fn, reference = None, "none (no float32 model to compare with)"
    ref_cache: dict[tuple[int, ...], np.ndarray] = {}

    def reference_output(x: np.ndarray) -> np.ndarray:
        key = (id(x),) + tuple(x.shape)
        if key not in ref_cache:
            ref_cache[key] = np.asarray(reference_fn(x))  # type: ignore[misc]
        return ref_cache[key]

    # GEMM peak per device (and fp16 on CUDA), measured before and after the rows
    # and the better kept: a single measurement can land on a moment when the machine is busy.
    peaks: dict[str, float] = {}

    def measure_peaks() -> None:
        for d in sorted({d for _, d in pairs}):
            if d.startswith("cuda") and not torch.cuda.is_available():
                continue
            for prec in (["fp32", "fp16"] if d.startswith("cuda") else ["fp32"]):
                say(f"measuring the {prec} GEMM peak on {d}")
                key = f"{d} {prec}"
                peaks[key] = max(peaks.get(key, 0.0), measure_peak_gflops(d, prec))

    if measure_peak:
        measure_peaks()

    # Configurations, in table order.
    plan: list[tuple[tuple[int, int], int, str, str, str]] = []
    for size in sizes:
        for batch in batch_sizes:
            for name, d in pairs:
                for prec in (precisions or _default_precisions(d)):
                    plan.append((tuple(size), int(batch), name, d, prec))  # type: ignore[arg-type]

    rows: list[BenchRow] = []
    frames_cache: dict[tuple[int, int, int], list[np.ndarray]] = {}
    frames_source = ""
    bar = _progress_bar(len(plan), enabled=(progress is True))
    with tempfile.TemporaryDirectory(prefix="sr-deploy-bench-") as tmp:
        onnx_files = _OnnxFiles(subject, Path(tmp), say if progress is not True else bar.write, given_onnx)
        for (h, w), batch, name, dev, prec in plan:
            bar.set_description(f"{name} {prec} {dev} {h}x{w} b{batch}")
            row = BenchRow(name, dev, prec, batch, h, w)
            rows.append(row)
            key = (h, w, batch)
            if key not in frames_cache:
                frames, frames_source = benchmark_frames(h, w, max(ROTATING_BATCHES, batch), data_dir)
                frames_cache[key] = rotating_batches(frames, batch)
            batches = frames_cache[key]
            _run_row(row, name, dev, prec, subject, onnx_files, batches, warmup, iters, seconds,
                     reference_output if reference_fn is not None else None, flops)
            bar.update(1)
        bar.close()
    if subject.module is not None:
        ref_backend.close()

    if measure_peak:
        measure_peaks()
    for row in rows:
        peak = peaks.get(f"{row.device} {row.precision}") or peaks.get(f"{row.device} fp32")
        if row.gflops is not None and peak:
            row.peak_share = row.gflops / peak
    baseline = _fill_speedups(rows)
    video_rows = []
    if video is not None:
        say(f"end-to-end video row on {Path(video).name} ({video_frames} frames)")
        video_rows.append(video_row(subject.module if subject.module is not None else model, video,
                                    frames=video_frames, width=video_width, device=devices[0], precision="fp32"))
    with contextlib.suppress(OSError):
        machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    load = max(machine.get("load_average_start", [0])[0], machine.get("load_average_end", [0])[0])
    if machine.get("cpu_count") and load > 0.5 * machine["cpu_count"]:
        notes.append(f"the machine was busy (load average up to {load:.1f} on {machine['cpu_count']} CPUs): "
                     "CPU timings are pessimistic and noisy")
    if any(r.backend == "onnxruntime" and r.device == "cpu" and r.precision == "fp16" and r.status == STATUS_OK
           for r in rows):
        # See sr_deploy.backends.ort_backend.fp16_rounding_graph: no fp16 Conv kernels on x86 CPUs.
        notes.append("onnxruntime fp16 on the CPU: the CPU provider computes an fp16 graph in float32 (it has "
                     "no fp16 kernels for these ops), so that row's speed and parity are float32's, not fp16's")
    if any(r.device.startswith("cuda") and r.precision == "fp32" and r.status == STATUS_OK for r in rows):
        notes.append("fp32 on CUDA is true float32: TF32 is disabled for fp32 rows and for the fp32 peak")
    settings = {
        "backends": [f"{n}@{d}" for n, d in pairs],
        "precisions": list(precisions) if precisions else "auto",
        "sizes": [f"{h}x{w}" for h, w in sizes],
        "batch_sizes": [int(b) for b in batch_sizes],
        "warmup": warmup, "iters": iters, "seconds": None if iters is not None else seconds,
        "rotating_batches": ROTATING_BATCHES, "inputs": frames_source,
    }
    return BenchReport(
        model=subject.name, arch=subject.arch, scale=subject.scale, flops_per_lr_pixel=flops,
        flops_source=flops_source, reference=reference, baseline=baseline, rows=rows, peaks_gflops=peaks,
        machine=machine, settings=settings, command=command or _current_command(),
        date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"), notes=notes, video=video_rows,
    )


def _current_command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv)


class _NullBar:
    def set_description(self, _text: str) -> None: ...
    def update(self, _n: int) -> None: ...
    def close(self) -> None: ...
    def write(self, text: str) -> None: ...


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="row", file=sys.stderr, dynamic_ncols=True)


def _run_row(row: BenchRow, name: str, device: str, precision: str, subject: _Subject, onnx_files: _OnnxFiles,
             batches: list[np.ndarray], warmup: int, iters: int | None, seconds: float | None,
             reference_output: Callable[[np.ndarray], np.ndarray] | None, flops: float | None) -> None:
    """Fill `row` in place: timing, throughput, parity, memory; or status skipped / failed."""
    from .parity import parity

    backend = None
    try:
        # fp32 means float32: no TF32 in cuDNN convs (PyTorch enables it by default for convs).
        with _tf32(precision != "fp32"):
            backend = _make_backend(name, device, precision, subject, onnx_files)
            if name == "onnxruntime":
                row.reason = "providers: " + ", ".join(getattr(backend, "providers", []) or ["?"])
            inputs = _backend_inputs(name, backend, device, batches)
            memory = PeakMemory(device)
            memory.reset()
            timing = time_calls(backend, inputs, device, warmup=warmup, iters=iters, seconds=seconds)
            row.peak_mem_mb, row.mem_kind = memory.peak_mb(), memory.kind
            if reference_output is not None:
                # Two different batches: parity is over real content, not one lucky crop.
                report = parity(reference_output, lambda x: _to_numpy(backend(_like(x, inputs[0], device))),
                                batches[:2])
                row.parity_psnr_db, row.parity_max_abs = report.psnr_db, report.max_abs
                row.parity_nonfinite = report.nonfinite
    except NotInstalledError as exc:
        row.status, row.reason = STATUS_SKIPPED, first_line(exc)
        return
    except InputError as exc:
        row.status, row.reason = STATUS_SKIPPED, first_line(exc)
        return
    except Exception as exc:  # a backend that breaks is a result, not a crash of the whole table
        row.status, row.reason = STATUS_FAILED, f"{type(exc).__name__}: {first_line(exc)}"
        return
    finally:
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()
    row.iters = timing.iters
    row.median_ms, row.p10_ms, row.p90_ms = timing.median_ms, timing.p10_ms, timing.p90_ms
    seconds_per_batch = timing.median_ms / 1e3
    scale = subject.scale or int(getattr(backend, "scale", 0) or 0)
    row.frames_per_s = row.batch / seconds_per_batch
    if scale:
        row.output_mpix_per_s = row.batch * row.height * row.width * scale * scale / seconds_per_batch / 1e6
    if flops:
        row.gflops = flops * row.batch * row.height * row.width / seconds_per_batch / 1e9


def _like(x: np.ndarray, example: Any, device: str) -> Any:
    """`x` in the same kind / device as the timed inputs."""
    if isinstance(example, torch.Tensor):
        return torch.from_numpy(x).to(example.device)
    return x


def _to_numpy(y: Any) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        return y.detach().float().cpu().numpy()
    return np.asarray(y)


def _fill_speedups(rows: list[BenchRow]) -> str:
    """speed-up = baseline median / row median, baseline = PyTorch fp32 at the same size and batch:
    the `torch` (channels_last) row on the same device, else `torch-nchw`, else either on another
    device. Returns a description of the baseline."""
    ok = [r for r in rows if r.status == STATUS_OK]
    used: set[str] = set()
    for r in ok:
        same = [b for b in ok if b.precision == "fp32" and b.backend in ("torch", "torch-nchw")
                and (b.height, b.width, b.batch) == (r.height, r.width, r.batch)]
        same.sort(key=lambda b: (b.device != r.device, b.backend != "torch"))
        if same:
            base = same[0]
            r.speedup = base.median_ms / r.median_ms  # type: ignore[operator]
            used.add(f"{base.backend} fp32 on {base.device}")
    if not used:
        return "none (no PyTorch fp32 row ran)"
    return "PyTorch fp32 at the same size and batch: " + ", ".join(sorted(used)) + \
        " (channels_last `torch` preferred, same device preferred)"


# ----------------------------------------------------------------------------------------------
# Output: table, markdown, JSON, plot
# ----------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("backend", "device", "prec", "batch", "input", "median ms", "p10-p90 ms", "frames/s",
                 "out MP/s", "GFLOP/s", "% peak", "speed-up", "PSNR dB", "max abs", "peak MB")


def _fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return format(value, spec)


def table_rows(report: BenchReport) -> list[tuple[str, ...]]:
    """The OK rows as strings, in TABLE_COLUMNS order."""
    out = []
    for r in report.ok_rows():
        out.append((
            r.backend, r.device, r.precision, str(r.batch), f"{r.height}x{r.width}",
            _fmt(r.median_ms, ".2f"), f"{_fmt(r.p10_ms, '.2f')}-{_fmt(r.p90_ms, '.2f')}",
            _fmt(r.frames_per_s, ".2f"), _fmt(r.output_mpix_per_s, ".2f"), _fmt(r.gflops, ".1f"),
            _fmt(None if r.peak_share is None else 100 * r.peak_share, ".0f"),
            _fmt(r.speedup, ".2f") + ("x" if r.speedup is not None else ""),
            _fmt(r.parity_psnr_db, ".1f"), _fmt(r.parity_max_abs, ".1e"), _fmt(r.peak_mem_mb, ".0f"),
        ))
    return out


def not_run(report: BenchReport) -> list[tuple[str, str, str, str, str]]:
    """Skipped / failed configurations, one line per (status, backend, device, precision, reason)."""
    seen: list[tuple[str, str, str, str, str]] = []
    for r in report.rows:
        if r.status != STATUS_OK:
            item = (r.status, r.backend, r.device, r.precision, r.reason)
            if item not in seen:
                seen.append(item)
    return seen


def format_table(report: BenchReport) -> str:
    """The plain-text table printed to stdout, with skipped / failed rows listed below it."""
    rows = [TABLE_COLUMNS] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_COLUMNS))]
    lines = [f"{report.model} ({report.arch} x{report.scale}): "
             + (f"{report.flops_per_lr_pixel / 1e6:.2f} MFLOP per input pixel" if report.flops_per_lr_pixel else
                "FLOPs unknown")
             + "; peak " + (", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in report.peaks_gflops.items()) or "not measured")]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for status, backend, device, precision, reason in not_run(report):
        lines.append(f"{status}: {backend} {precision} on {device}: {reason}")
    for v in report.video:
        lines.append(_video_line(v))
    lines.append(f"parity vs {report.reference}; speed-up vs {report.baseline}")
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _video_line(v: VideoRow) -> str:
    if v.status != STATUS_OK:
        return f"video {v.clip}: {v.status}: {v.reason}"
    return (f"video {v.clip} ({v.frames} frames {v.width}x{v.height}, {v.backend} {v.precision} {v.device}): "
            f"upscale pipeline {v.pipeline_fps:.2f} frames/s, backend alone {v.backend_fps:.2f} frames/s, "
            f"{100 * (v.overhead_share or 0):.0f}% of the pipeline's time outside the model")


def format_markdown(report: BenchReport) -> str:
    """The report as a markdown document: how it was made, the table, what did not run."""
    m = report.machine
    out = [f"# sr-deploy benchmark: {report.model}", ""]
    out.append(f"- date: {report.date}")
    out.append(f"- command: `{report.command}`")
    out.append(f"- host: {m.get('host')} ({m.get('cpu')}, {m.get('cpu_count')} CPUs"
               + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"); {m.get('os')}")
    out.append(f"- software: sr-deploy {m.get('sr_deploy')}, torch {m.get('torch')} "
               f"({m.get('torch_threads')} threads), onnxruntime {m.get('onnxruntime', 'absent')}"
               + (f", TensorRT {m['tensorrt']}" if m.get("tensorrt") else ", TensorRT absent"))
    out.append(f"- load average at start / end: {m.get('load_average_start')} / {m.get('load_average_end')}")
    out.append(f"- model: {report.arch} x{report.scale}, "
               + (f"{report.flops_per_lr_pixel / 1e6:.3f} MFLOP per input pixel" if report.flops_per_lr_pixel
                  else "FLOPs unknown") + f" ({report.flops_source})")
    out.append("- measured peak (fastest large GEMM, matmul or 1x1 convolution, before and after the rows): "
               + (", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in report.peaks_gflops.items()) or "not measured"))
    s = report.settings
    timing = f"{s['iters']} timed calls" if s.get("iters") else f"{s.get('seconds')} s of timed calls (at least {MIN_ITERS})"
    out.append(f"- timing: {s.get('warmup')} warm-up calls excluded, then {timing} per row, cycling through "
               f"{s.get('rotating_batches')} different batches ({s.get('inputs')}); median and p10-p90 per batch")
    out.append(f"- parity vs {report.reference}; speed-up vs {report.baseline}")
    out += ["", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    for r in table_rows(report):
        out.append("| " + " | ".join(r) + " |")
    skipped = not_run(report)
    if skipped:
        out += ["", "Not run:", ""]
        out += [f"- {status}: {backend} {precision} on {device}: {reason}"
                for status, backend, device, precision, reason in skipped]
    if report.video:
        out += ["", "End-to-end video (`sr-deploy upscale` vs the backend alone on the same frames):", ""]
        for v in report.video:
            out.append(f"- {_video_line(v)}" + (f"; command: `{v.command}`" if v.command else ""))
    if report.notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in report.notes]
    out += ["", "Columns: median ms per batch (p10-p90); frames/s = batch / median; out MP/s = output "
            "megapixels per second; GFLOP/s = convolution FLOPs / median time, % peak of the GEMM peak "
            "above (same device; fp16 rows vs the fp16 peak where measured); PSNR dB and max abs vs the "
            "reference on two real batches (raw, unclamped outputs); peak MB = " +
            ", ".join(sorted({f'{r.mem_kind} ({r.device})' for r in report.ok_rows() if r.mem_kind})) + ".", ""]
    return "\n".join(out)


def check_output_path(path: str | Path) -> None:
    """InputError unless `path` can be written: its folder exists and it is not a folder."""
    path = Path(path)
    if not path.parent.exists():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file name")


def _atomic_write_text(path: str | Path, text: str) -> Path:
    """Write to a temporary name beside `path`, then rename: never a half-written file."""
    path = Path(path)
    check_output_path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def write_json(report: BenchReport, path: str | Path) -> Path:
    """The whole report as JSON (inf written as the string "inf")."""
    return _atomic_write_text(path, json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")


def write_markdown(report: BenchReport, path: str | Path) -> Path:
    return _atomic_write_text(path, format_markdown(report))


def load_report(path: str | Path) -> dict[str, Any]:
    """A JSON report written by `write_json`, as a dict (rows as dicts)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable benchmark report ({first_line(exc)})") from exc


def write_plot(report: BenchReport, path: str | Path) -> Path:
    """A grouped bar chart of frames/s: one group per input size and batch, one bar per backend /
    precision / device. Needs matplotlib (`pip install 'sr-deploy[plot]'`)."""
    path = Path(path)
    check_output_path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise NotInstalledError("the plot needs matplotlib: pip install 'sr-deploy[plot]'") from exc
    rows = report.ok_rows()
    groups = list(dict.fromkeys((r.height, r.width, r.batch) for r in rows))
    series = list(dict.fromkeys(r.label for r in rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) * max(1, len(series)) ** 0.5 + 2), 4.5))
    width = 0.8 / max(1, len(series))
    for k, label in enumerate(series):
        xs, ys = [], []
        for g, (h, w, b) in enumerate(groups):
            match = [r for r in rows if r.label == label and (r.height, r.width, r.batch) == (h, w, b)]
            if match:
                xs.append(g + (k - (len(series) - 1) / 2) * width)
                ys.append(match[0].frames_per_s)
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(groups)), [f"{h}x{w}\nbatch {b}" for h, w, b in groups])
    ax.set_ylabel("frames / s (higher is better)")
    ax.set_title(f"{report.arch} x{report.scale} on {report.machine.get('gpu') or report.machine.get('cpu')}",
                 fontsize=9)
    if series:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def command_line(model: str, params: dict[str, Any]) -> str:
    """The `sr-deploy benchmark` command that reproduces a run, every option spelled out
    (`params` as click parsed them; None / False options left out)."""
    parts = ["sr-deploy", "benchmark", shlex.quote(str(model))]
    for key, value in params.items():
        if key == "model" or value is None or value is False or value == ():
            continue
        flag = {"json_path": "--json", "markdown_path": "--markdown", "plot_path": "--plot",
                "onnx_models": "--onnx"}.get(key, "--" + key.replace("_", "-"))
        for item in (value if isinstance(value, tuple) else (value,)):
            parts.append(flag if item is True else f"{flag} {shlex.quote(str(item))}")
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------
# End-to-end video: the upscale pipeline vs the backend alone
# ----------------------------------------------------------------------------------------------

def trim_clip(clip: str | Path, output: str | Path, frames: int, width: int | None = None) -> Path:
    """The first `frames` frames of `clip` (audio kept, cut to match) re-encoded to `output` with
    the ffmpeg that imageio-ffmpeg bundles; `width` scales it down (height kept even, aspect kept)."""
    import subprocess

    import imageio_ffmpeg

    clip, output = Path(clip), Path(output)
    if not clip.is_file():
        raise InputError(f"{clip}: no such video file")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(clip), "-frames:v", str(frames)]
    if width:
        cmd += ["-vf", f"scale={int(width)}:-2"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "12", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", str(output)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not output.is_file():
        raise InputError(f"{clip}: ffmpeg could not trim it ({done.stderr.strip().splitlines()[-1:] or '?'})")
    return output


def _decode_rgb(clip: Path) -> list[np.ndarray]:
    """Every frame of `clip` as float32 RGB [0, 1] (3, H, W)."""
    import cv2

    cap = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32) / np.float32(255))
    cap.release()
    return frames


def video_row(
    model: str | Path | nn.Module,
    clip: str | Path,
    *,
    frames: int = 8,
    width: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 1,
) -> VideoRow:
    """frames/s of the whole `sr-deploy upscale` video pipeline (decode, batch, backend, clamp,
    encode, audio mux: `sr_deploy.video.upscale_video`, which the command wraps) on the first
    `frames` frames of a real clip, against the same PyTorch backend alone on the same decoded
    frames with inputs ready. Both are measured after one warm-up call, in this process.

    A missing pipeline (`sr_deploy.video` not in this build) gives a row with status skipped.
    """
    from .backends import load
    from .backends.torch_backend import resolve_device

    clip = Path(clip)
    dev = resolve_device(device)
    row = VideoRow(clip=clip.name, frames=0, width=0, height=0, backend="torch", device=dev, precision=precision)
    try:
        from .video import upscale_video
    except ImportError as exc:
        row.status, row.reason = STATUS_SKIPPED, f"the video pipeline (sr_deploy.video) is not in this build ({first_line(exc)})"
        return row
    subject = _load_subject(model)
    if subject.module is None:
        raise InputError(f"{model}: the video row needs a PyTorch checkpoint")
    with tempfile.TemporaryDirectory(prefix="sr-deploy-video-") as tmp:
        trimmed = trim_clip(clip, Path(tmp) / f"trimmed{clip.suffix or '.mp4'}", frames, width)
        decoded = _decode_rgb(trimmed)
        if not decoded:
            raise InputError(f"{clip}: no frames decoded")
        row.frames, (row.height, row.width) = len(decoded), decoded[0].shape[1:]
        with _tf32(precision != "fp32"), load(subject.module, device=dev, precision=precision, backend="torch") as backend:
            batches = [np.stack(decoded[i:i + batch_size]) for i in range(0, len(decoded), batch_size)]
            inputs = [torch.from_numpy(b).to(dev) for b in batches]
            backend(inputs[0][:1])  # warm-up for both measurements
            _sync(dev)
            started = time.perf_counter()
            result = upscale_video(backend, trimmed, Path(tmp) / f"out{trimmed.suffix}", batch_size=batch_size,
                                   progress=False, log=lambda _m: None)
            pipeline_s = time.perf_counter() - started
            if result.frames != len(decoded):
                raise SRDeployError(f"{clip}: the pipeline wrote {result.frames} frames, {len(decoded)} were decoded")
            timing = time_calls(backend, inputs, dev, warmup=0, iters=len(inputs))
    backend_s = sum(timing.samples_ms) / 1e3
    row.pipeline_fps = row.frames / pipeline_s
    row.backend_fps = row.frames / backend_s
    row.overhead_share = 1.0 - row.pipeline_fps / row.backend_fps
    row.command = (f"sr_deploy.video.upscale_video (what `sr-deploy upscale` runs) on {clip.name} trimmed to "
                   f"{row.frames} frames" + (f" at {row.width}x{row.height}" if width else "")
                   + f", batch {batch_size}, {precision} on {dev}")
    return row
