"""The runner: ties planning, measuring, derivations and the report together."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, NotInstalledError
from ..util import Progress, first_line, progress_to
from .derive import fill_peak_shares, fill_speedups, fill_throughput, peaks_to_measure, run_notes
from .inputs import ROTATING_BATCHES, benchmark_frames, rotating_batches
from .measure import (
    PeakMemory,
    machine_info,
    measure_conv_ceiling_gflops,
    measure_peak_gflops,
    tf32,
    time_calls,
)
from .options import (
    PRECISIONS,
    BenchOptions,
    PlannedRow,
    backend_device_pairs,
    current_command,
    parse_list,
    plan_rows,
    resolve_devices,
    settings_of,
)
from .results import STATUS_FAILED, STATUS_SKIPPED, BenchReport, BenchRow
from .subject import (
    OnnxFiles,
    Reference,
    Subject,
    backend_inputs,
    check_some_row_runs,
    flops_of,
    given_onnx,
    load_subject,
    make_backend,
)
from .video import video_row


def run_benchmark(model: str | Path | nn.Module, **options: Any) -> BenchReport:
    """Benchmark `model` on every backend x device x precision x size x batch asked for.

    Args:
        model: checkpoint path / bundled name / `nn.Module` (all backends), or an .onnx file
            (ONNX Runtime and TensorRT only; parity then against ONNX Runtime fp32 on the CPU
            running that file when it is an fp32 graph) or an .engine (TensorRT only, no parity).
        options: the fields of `BenchOptions` (backends, precisions, sizes, batch_sizes, device,
            warmup, iters, seconds, measure_peak, data_dir, command, progress, onnx_models, video,
            video_frames, video_width), keyword-only; see there.

    Returns a `BenchReport`. A backend that cannot run beside one that can is a skipped or failed
    row. Raises InputError for bad arguments, an unreadable model, or when no row asked for can
    run (NotInstalledError when an install or device is what is missing), before any timing.
    """
    opts = BenchOptions(**options)
    opts.check()
    say = progress_to(opts.progress)
    devices = resolve_devices(opts.device)
    pairs = backend_device_pairs(opts.backends, devices)
    precisions = parse_list(opts.precisions, PRECISIONS, what="precision") if opts.precisions is not None else None
    subject = load_subject(model)
    opts.check_memory(subject.scale)
    given = given_onnx(opts.onnx_models)
    machine = machine_info([d for _, d in pairs])
    flops, flops_source = flops_of(subject)
    reference = Reference(subject)
    peaks: dict[str, float] = {}
    ceilings: dict[str, float] = {}
    plan = plan_rows(opts.sizes, opts.batch_sizes, pairs, precisions)
    # none can run (TensorRT or a GPU missing): one line now, not a GEMM peak and an empty table
    check_some_row_runs([(p.backend, p.device, p.precision) for p in plan], subject)
    if opts.measure_peak:  # before and after the rows, the better kept: one may land on a busy moment
        _measure_peaks(plan, peaks, ceilings, say)
    rows, frames_source = _run_rows(plan, subject, given, reference, flops, opts, say)
    reference.close()
    if opts.measure_peak:
        _measure_peaks(plan, peaks, ceilings, say)
    fill_peak_shares(rows, peaks, ceilings)
    baseline = fill_speedups(rows)
    videos = []
    if opts.video is not None:
        say(f"end-to-end video row on {Path(opts.video).name} ({opts.video_frames} frames)")
        videos.append(
            video_row(
                subject.module if subject.module is not None else model,
                opts.video,
                frames=opts.video_frames,
                width=opts.video_width,
                device=devices[0],
                precision="fp32",
            )
        )
    with contextlib.suppress(OSError):
        machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    notes = ([reference.note] if reference.note else []) + run_notes(rows, machine)
    return BenchReport(
        model=subject.name,
        arch=subject.arch,
        scale=subject.scale,
        flops_per_lr_pixel=flops,
        flops_source=flops_source,
        reference=reference.description,
        baseline=baseline,
        rows=rows,
        peaks_gflops=peaks,
        conv_ceilings_gflops=ceilings,
        machine=machine,
        settings=settings_of(opts, pairs, precisions, ROTATING_BATCHES, frames_source),
        command=opts.command or current_command(),
        date=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        notes=notes,
        video=videos,
    )


def _measure_peaks(
    plan: Sequence[PlannedRow], peaks: dict[str, float], ceilings: dict[str, float], say: Progress
) -> None:
    """The GEMM peak of each device at each precision its rows compute in (fp32 always), and the
    conv ceiling at each (device, precision, input size) of the rows, into `peaks` / `ceilings`
    (keys of `derive.peak_key` / `derive.ceiling_key`), keeping the better of this and any earlier
    measurement. A device or precision that cannot run here is left out (its rows are skipped)."""
    gemm_keys, ceiling_specs = peaks_to_measure(plan)

    def runs(device: str) -> bool:
        return not device.startswith("cuda") or torch.cuda.is_available()

    for key in gemm_keys:
        device, prec = key.split(" ")
        if runs(device):
            say(f"measuring the {prec} GEMM peak on {device}")
            with contextlib.suppress(RuntimeError, TypeError):  # a precision the device has no kernels for
                peaks[key] = max(peaks.get(key, 0.0), measure_peak_gflops(device, prec))
    for device, prec, height, width in ceiling_specs:
        if runs(device):
            say(f"measuring the {prec} 3x3 conv ceiling at {height}x{width} on {device}")
            key = f"{device} {prec} {height}x{width}"
            with contextlib.suppress(RuntimeError, TypeError):
                ceilings[key] = max(ceilings.get(key, 0.0), measure_conv_ceiling_gflops(device, prec, height, width))


def _run_rows(
    plan: Sequence[PlannedRow],
    subject: Subject,
    given: dict[str, Path],
    reference: Reference,
    flops: float | None,
    opts: BenchOptions,
    say: Progress,
) -> tuple[list[BenchRow], str]:
    """Measure every planned row (a tqdm bar when `opts.progress` is True); (rows, inputs' source)."""
    rows: list[BenchRow] = []
    frames_cache: dict[tuple[int, int, int], list[np.ndarray]] = {}
    frames_source = ""
    bar = _progress_bar(len(plan), enabled=(opts.progress is True))
    with tempfile.TemporaryDirectory(prefix="sr-deploy-bench-") as tmp:
        onnx_files = OnnxFiles(subject, Path(tmp), say if opts.progress is not True else bar.write, given)
        for p in plan:
            bar.set_description(f"{p.backend} {p.precision} {p.device} {p.height}x{p.width} b{p.batch}")
            row = BenchRow(p.backend, p.device, p.precision, p.batch, p.height, p.width)
            rows.append(row)
            key = (p.height, p.width, p.batch)
            if key not in frames_cache:
                frames, frames_source = benchmark_frames(
                    p.height, p.width, max(ROTATING_BATCHES, p.batch), opts.data_dir
                )
                frames_cache[key] = rotating_batches(frames, p.batch)
            _run_row(
                row,
                subject,
                onnx_files,
                frames_cache[key],
                opts,
                reference if reference.fn is not None else None,
                flops,
            )
            bar.update(1)
        bar.close()
    return rows, frames_source


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


def _run_row(
    row: BenchRow,
    subject: Subject,
    onnx_files: OnnxFiles,
    batches: list[np.ndarray],
    opts: BenchOptions,
    reference: Callable[[np.ndarray], np.ndarray] | None,
    flops: float | None,
) -> None:
    """Fill `row` in place: timing, throughput, parity, memory; or status skipped / failed."""
    from ..parity import parity

    backend = None
    try:
        # fp32 means float32: no TF32 in cuDNN convs (PyTorch enables it by default for convs).
        with tf32(row.precision != "fp32"):
            backend = make_backend(row.backend, row.device, row.precision, subject, onnx_files)
            if row.backend == "onnxruntime":
                row.reason = "providers: " + ", ".join(getattr(backend, "providers", []) or ["?"])
            inputs = backend_inputs(row.backend, row.device, batches)
            memory = PeakMemory(row.device)
            memory.reset()
            timing = time_calls(backend, inputs, row.device, warmup=opts.warmup, iters=opts.iters, seconds=opts.seconds)
            row.peak_mem_mb, row.mem_kind = memory.peak_mb(), memory.kind
            if reference is not None:
                # Two different batches: parity is over real content, not one lucky crop.
                report = parity(reference, lambda x: _to_numpy(backend(_like(x, inputs[0]))), batches[:2])
                row.parity_psnr_db, row.parity_max_abs = report.psnr_db, report.max_abs
                row.parity_nonfinite = report.nonfinite
    except (NotInstalledError, InputError) as exc:
        row.status, row.reason = STATUS_SKIPPED, first_line(exc)
        return
    except Exception as exc:  # a backend that breaks is a result, not a crash of the whole table
        row.status, row.reason = STATUS_FAILED, f"{type(exc).__name__}: {first_line(exc)}"
        return
    finally:
        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()
    fill_throughput(row, timing, subject.scale or int(getattr(backend, "scale", 0) or 0), flops)


def _like(x: np.ndarray, example: Any) -> Any:
    """`x` in the same kind / device as the timed inputs."""
    if isinstance(example, torch.Tensor):
        return torch.from_numpy(x).to(example.device)
    return x


def _to_numpy(y: Any) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        return y.detach().float().cpu().numpy()
    return np.asarray(y)
