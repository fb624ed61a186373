"""Measuring: timing of calls, the GEMM peak and the conv ceiling of a device per precision, peak
memory of a row, the machine."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import platform
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..backends.cpu_precision import cpu_bf16_instructions

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Bounds on the number of timed calls when timing by a time budget.
MIN_ITERS, MAX_ITERS = 5, 100_000


@dataclass
class Timing:
    """Milliseconds per batch: the median and 10th / 90th percentiles of `iters` timed calls."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    iters: int
    samples_ms: list[float]


def sync(device: str) -> None:
    """Wait for the device (CUDA) so that a timing covers the work, not the launch."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[Any], Any],
    inputs: Sequence[Any],
    device: str = "cpu",
    *,
    warmup: int = 3,
    iters: int | None = None,
    seconds: float | None = 2.0,
) -> Timing:
    """Time `fn` on `inputs`, cycling through them.

    `warmup` untimed calls first. Then either exactly `iters` timed calls, or as many as fit in
    `seconds` (at least MIN_ITERS). On CUDA the device is synchronised before and after each
    call, so each sample is the full execution of one call.
    """
    if not inputs:
        raise ValueError("time_calls needs at least one input")
    for i in range(max(0, warmup)):
        fn(inputs[i % len(inputs)])
    sync(device)
    samples: list[float] = []
    limit = iters if iters is not None else MAX_ITERS
    budget = math.inf if iters is not None else float(seconds if seconds is not None else 2.0)
    started = time.perf_counter()
    i = 0
    while len(samples) < limit:
        x = inputs[i % len(inputs)]
        i += 1
        sync(device)
        t0 = time.perf_counter()
        fn(x)
        sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
        if iters is None and len(samples) >= MIN_ITERS and time.perf_counter() - started >= budget:
            break
    p10, p50, p90 = np.percentile(samples, [10, 50, 90])
    return Timing(float(p50), float(p10), float(p90), len(samples), samples)


def measure_peak_gflops(
    device: str = "cpu", precision: str = "fp32", n: int | None = None, seconds: float = 1.0
) -> float:
    """The practical peak that `BenchRow.peak_share` is a fraction of, in GFLOP/s: the better of

    - an (n x n) @ (n x n) `torch.matmul` (BLAS: MKL on the CPU, cuBLAS on CUDA), and
    - a GEMM written as a 1x1 convolution, channels_last (oneDNN on the CPU, cuDNN on CUDA).

    Both, because the libraries differ by 2x on some CPUs: MKL's sgemm runs its AVX2 code on AMD
    processors while oneDNN uses AVX-512 there, so a matmul-only peak sat below what the models'
    own convolutions reached (RRDBNet showed 200 % of it). fp32 on CUDA is true fp32 (TF32 off).

    bf16 on a CPU without bf16 instructions (`cpu_bf16_instructions`) is emulated, ~100x slower than
    fp32 (a 1536^3 bf16 matmul took 40 s there): both GEMMs are then a ninth of the size (512^3,
    256 channels), which that emulation runs as fast, so the figure is still the emulation's peak."""
    emulated = precision == "bf16" and not device.startswith("cuda") and cpu_bf16_instructions() is None
    if n is None:
        n = 8192 if device.startswith("cuda") else (512 if emulated else 1536)
    dtype = TORCH_DTYPES[precision]
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.rand(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.rand(n, n, generator=gen).to(device=device, dtype=dtype)
    # A 1x1 conv of C channels over P pixels is a (P x C) @ (C x C) GEMM: 2 P C^2 FLOPs. Shaped
    # like a wide SR layer (many pixels, a few hundred channels), where the conv libraries shine.
    channels, side = (2048, 128) if device.startswith("cuda") else ((256, 32) if emulated else (512, 64))
    x = torch.rand(1, channels, side, side, generator=gen).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(channels, channels, 1, 1, generator=gen).to(device=device, dtype=dtype)
    w = w.contiguous(memory_format=torch.channels_last)
    gemms = [
        (lambda: torch.matmul(a, b), 2.0 * n**3),
        (lambda: torch.nn.functional.conv2d(x, w), 2.0 * side * side * channels**2),
    ]
    return max(_best_gflops(fn, flops, device, seconds) for fn, flops in gemms)


# The convolution that SR bodies are made of (SRResNet, RRDBNet, SRVGGNetCompact: 64 features).
CEILING_CHANNELS = 64


def measure_conv_ceiling_gflops(
    device: str = "cpu", precision: str = "fp32", height: int = 270, width: int = 480, seconds: float = 1.0
) -> float:
    """The conv ceiling that `BenchRow.conv_share` is a fraction of, in GFLOP/s: one 3x3 convolution
    of CEILING_CHANNELS -> CEILING_CHANNELS channels (padding 1, bias), channels_last, batch 1, at the
    row's input size, at `precision` (TF32 off for fp32), the fastest of repeated calls.

    A model cannot beat this by much: it is its own most common layer alone, with nothing around it
    (activations, pixel shuffles, the memory traffic between layers). How close a model comes says
    what is left to gain outside the convolution library; the GEMM peak says what the library leaves."""
    dtype = TORCH_DTYPES[precision]
    gen = torch.Generator(device="cpu").manual_seed(0)
    c = CEILING_CHANNELS
    x = torch.rand(1, c, height, width, generator=gen).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(c, c, 3, padding=1).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    return _best_gflops(lambda: conv(x), conv_ceiling_flops(height, width), device, seconds)


def conv_ceiling_flops(height: int, width: int) -> float:
    """FLOPs of the ceiling's convolution at (height, width): 2 x 9 x C x C per pixel (bias left out,
    as `sr-deploy info` counts a model's convolutions)."""
    return 2.0 * 9 * CEILING_CHANNELS * CEILING_CHANNELS * height * width


def _best_gflops(fn: Callable[[], Any], flops: float, device: str, seconds: float) -> float:
    """`flops` / the fastest of at least 3 calls of `fn` (within `seconds`, at most 200), after one
    warm-up call (library load, kernel choice); TF32 off, no autograd."""
    with tf32(False), torch.inference_mode():
        fn()
        sync(device)
        best = math.inf
        started = time.perf_counter()
        reps = 0
        while reps < 3 or (time.perf_counter() - started < seconds and reps < 200):
            t0 = time.perf_counter()
            fn()
            sync(device)
            best = min(best, time.perf_counter() - t0)
            reps += 1
    return flops / best / 1e9


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
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
            from .. import _tensorrt  # the one module that imports tensorrt

            info["tensorrt"] = _tensorrt.tensorrt_version(_tensorrt.import_tensorrt())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    with contextlib.suppress(OSError):
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    return info
