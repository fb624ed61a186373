"""Planning: the options of a run, checked, and the rows they ask for, in table order."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.table import BACKENDS, bench_names
from ..errors import InputError
from ..models.spec import DEFAULT_LIVE_VALUES_PER_HR_PIXEL
from ..util import Progress, parse_dims
from ..util.memory import check_call_fits

# Backend names accepted by `run_benchmark`, from the backend table: "torch" is the TorchBackend as
# shipped (channels_last memory format inside); "torch-nchw" the same model in the plain NCHW
# layout, to show what channels_last buys on this machine.
BENCH_BACKENDS = bench_names()
PRECISIONS = ("fp32", "fp16", "bf16")
# `ort`, `trt`...: the backend table's aliases
BENCH_ALIASES = {alias: spec.name for spec in BACKENDS for alias in spec.aliases}


@dataclass
class BenchOptions:
    """What `run_benchmark` was asked for.

    Attributes:
        backends: names from BENCH_BACKENDS, each optionally ``@device`` (``onnxruntime@cpu``).
        precisions: fp32 / fp16 / bf16; None = fp32 on the CPU, fp32 + fp16 on CUDA.
        sizes: low-resolution input (height, width) pairs.
        batch_sizes: frames per call.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a comma list; the default for
            backends given without ``@device``.
        warmup: untimed calls per row.
        iters: timed calls per row; None = as many as fit in `seconds` (at least 5).
        seconds: the time budget per row when `iters` is None.
        measure_peak: time a large GEMM per device for the peak-share column.
        data_dir: the shared data folder (default: $SR_DEPLOY_SHARED_DATA or ../shared/data).
        command: the command line to record in the report.
        progress: True = a tqdm bar on stderr, False = silent, or a callable for messages.
        onnx_models: existing ONNX exports of the model to run on ONNX Runtime / TensorRT instead
            of exporting afresh (one per precision, read from each graph): parity then shows
            whether that file still matches the checkpoint.
        video, video_frames, video_width: a real clip for the end-to-end row (`video_row`): the
            `sr-deploy upscale` pipeline on its first `video_frames` frames (scaled to
            `video_width` when given) vs PyTorch fp32 alone on the same frames.
    """

    backends: str | Sequence[str] = ("torch", "torch-nchw", "onnxruntime", "tensorrt")
    precisions: str | Sequence[str] | None = None
    sizes: Sequence[tuple[int, int]] = ((128, 128), (270, 480))
    batch_sizes: Sequence[int] = (1,)
    device: str = "auto"
    warmup: int = 3
    iters: int | None = None
    seconds: float | None = 2.0
    measure_peak: bool = True
    data_dir: str | Path | None = None
    command: str = ""
    progress: bool | Progress = True
    onnx_models: Sequence[str | Path] = ()
    video: str | Path | None = None
    video_frames: int = 8
    video_width: int | None = None

    def check(self) -> None:
        """InputError for a value out of range, before anything is measured."""
        if self.iters is not None and self.iters < 1:
            raise InputError(f"--iters must be >= 1, got {self.iters}")
        if self.seconds is not None and self.seconds <= 0:
            raise InputError(f"--seconds must be > 0, got {self.seconds}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be >= 0, got {self.warmup}")
        for b in self.batch_sizes:
            if int(b) < 1:
                raise InputError(f"batch size must be >= 1, got {b}")
        if not self.sizes:
            raise InputError("no input sizes given")
        if self.video is not None and not Path(self.video).is_file():
            raise InputError(f"{self.video}: no such video file")
        if self.video_frames < 1:
            raise InputError(f"--video-frames must be >= 1, got {self.video_frames}")

    def check_memory(self, scale: int) -> None:
        """InputError for a size and batch whose one call at `scale` would need more than this
        machine's RAM (`util.memory.check_call_fits`, the default memory model): refused before
        anything is allocated, not by the OOM killer."""
        for (height, width), batch in ((size, b) for size in self.sizes for b in self.batch_sizes):
            what = f"--sizes {height}x{width} --batch-sizes {batch}"
            check_call_fits(what, int(batch) * height * width, scale, DEFAULT_LIVE_VALUES_PER_HR_PIXEL)


@dataclass(frozen=True)
class PlannedRow:
    """One configuration to measure."""

    height: int
    width: int
    batch: int
    backend: str
    device: str
    precision: str


# ------------------------------------------------------------------------------- parsing (shared with the CLI)


def parse_size(text: str) -> tuple[int, int]:
    """``"270x480"`` (height x width, of the low-resolution input) -> (270, 480)."""
    h, w = parse_dims(text, what="bad input size", expected="HEIGHTxWIDTH, e.g. 270x480", counts=(2,))
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
    name = BENCH_ALIASES.get(name, name)
    if name not in BENCH_BACKENDS:
        raise InputError(f"unknown backend {name!r}: expected one of {', '.join(BENCH_BACKENDS)}")
    return name, (device or default_device)


def resolve_devices(device: str) -> list[str]:
    """``auto`` -> ["cuda"] when PyTorch sees a GPU, else ["cpu"]; ``"cpu,cuda"`` -> both
    (an absent GPU gives skipped rows, not an error)."""
    import torch

    out = []
    for d in parse_list(device, what="device"):
        if d == "auto":
            d = "cuda" if torch.cuda.is_available() else "cpu"
        if not (d == "cpu" or d == "cuda" or d.startswith("cuda:")):
            raise InputError(f"unknown device {d!r}: expected auto, cpu, cuda or cuda:N")
        if d not in out:
            out.append(d)
    return out


def default_precisions(device: str) -> list[str]:
    """fp32 on the CPU; fp32 and fp16 on CUDA."""
    return ["fp32", "fp16"] if device.startswith("cuda") else ["fp32"]


# ------------------------------------------------------------------------------- the plan


def backend_device_pairs(backends: str | Sequence[str], devices: list[str]) -> list[tuple[str, str]]:
    """(backend, device) pairs in the order asked: a backend without ``@device`` runs on every device."""
    specs = parse_list(backends, what="backend")
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        name, dev = parse_backend_spec(spec, devices[0])
        for d in [dev] if "@" in spec else devices:
            d = resolve_devices(d)[0]
            if (name, d) not in pairs:
                pairs.append((name, d))
    return pairs


def plan_rows(
    sizes: Sequence[tuple[int, int]],
    batch_sizes: Sequence[int],
    pairs: list[tuple[str, str]],
    precisions: Sequence[str] | None,
) -> list[PlannedRow]:
    """Every size x batch x (backend, device) x precision, in table order."""
    return [
        PlannedRow(int(h), int(w), int(batch), name, d, prec)
        for h, w in sizes
        for batch in batch_sizes
        for name, d in pairs
        for prec in (precisions or default_precisions(d))
    ]


def settings_of(
    options: BenchOptions, pairs: list[tuple[str, str]], precisions: Sequence[str] | None, rotating: int, inputs: str
) -> dict[str, Any]:
    """The settings a report records, so that a reader can reproduce the run."""
    return {
        "backends": [f"{n}@{d}" for n, d in pairs],
        "precisions": list(precisions) if precisions else "auto",
        "sizes": [f"{h}x{w}" for h, w in options.sizes],
        "batch_sizes": [int(b) for b in options.batch_sizes],
        "warmup": options.warmup,
        "iters": options.iters,
        "seconds": None if options.iters is not None else options.seconds,
        "rotating_batches": rotating,
        "inputs": inputs,
    }


def command_line(model: str, params: dict[str, Any]) -> str:
    """The `sr-deploy benchmark` command that reproduces a run, every option spelled out
    (`params` as click parsed them; None / False options left out)."""
    parts = ["sr-deploy", "benchmark", shlex.quote(str(model))]
    for key, value in params.items():
        if key == "model" or value is None or value is False or value == ():
            continue
        flag = {
            "json_path": "--json",
            "markdown_path": "--markdown",
            "plot_path": "--plot",
            "onnx_models": "--onnx",
        }.get(key, "--" + key.replace("_", "-"))
        for item in value if isinstance(value, tuple) else (value,):
            parts.append(flag if item is True else f"{flag} {shlex.quote(str(item))}")
    return " ".join(parts)


def current_command() -> str:
    """This process's command line, for a report made through the Python API."""
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv)
