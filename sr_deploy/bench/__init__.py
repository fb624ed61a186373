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
as `sr-deploy info` counts them, times the pixels) and its share of a measured GEMM peak (the
better of a large matmul and a 1x1 convolution) measured on the same device *at the row's own
precision* in the same run, and of a conv ceiling (one 3x3 64->64 convolution at the row's input
size and precision),
parity against the PyTorch float32 model (PSNR dB, max abs error, via `sr_deploy.parity.parity`),
peak memory, and the speed-up against PyTorch fp32 at the same size and batch in the same run.
A backend, device or precision that cannot run here is a row with status ``skipped`` and the
reason; one that raised is ``failed`` with the error.

The package, in the order a run goes through it:

- `options`: the options, checked, and the rows they plan (``BenchOptions``, ``plan_rows``);
- `subject`: the model under test, its ONNX exports, the backends made from it (the backend table
  says which can run here), FLOPs, the parity reference;
- `inputs`: crops of real photos, rotating batches;
- `measure`: timing, GEMM peak and conv ceiling per precision, peak memory, machine facts;
- `derive`: pure figures from measurements (throughput, % peak and % conv, speed-up, notes);
- `report`: table, markdown, JSON, plot;
- `video`: the end-to-end video row (shared with benchmarks/upscale_video_overhead.py);
- `runner`: `run_benchmark`, which ties them together.
"""

from __future__ import annotations

from ..util.files import check_output_path
from .inputs import ROTATING_BATCHES, benchmark_frames, rotating_batches
from .measure import (
    MAX_ITERS,
    MIN_ITERS,
    PeakMemory,
    Timing,
    machine_info,
    measure_conv_ceiling_gflops,
    measure_peak_gflops,
    time_calls,
)
from .options import (
    BENCH_BACKENDS,
    PRECISIONS,
    BenchOptions,
    command_line,
    parse_backend_spec,
    parse_list,
    parse_size,
    resolve_devices,
)
from .report import (
    TABLE_COLUMNS,
    format_markdown,
    format_table,
    load_report,
    not_run,
    table_rows,
    write_json,
    write_markdown,
    write_plot,
)
from .results import STATUS_FAILED, STATUS_OK, STATUS_SKIPPED, BenchReport, BenchRow, VideoRow
from .runner import run_benchmark
from .subject import onnx_conv_flops_per_lr_pixel
from .video import NearestBackend, VideoOverhead, measure_video_overhead, trim_clip, video_row

__all__ = [
    "BENCH_BACKENDS",
    "MAX_ITERS",
    "MIN_ITERS",
    "PRECISIONS",
    "ROTATING_BATCHES",
    "STATUS_FAILED",
    "STATUS_OK",
    "STATUS_SKIPPED",
    "TABLE_COLUMNS",
    "BenchOptions",
    "BenchReport",
    "BenchRow",
    "NearestBackend",
    "PeakMemory",
    "Timing",
    "VideoOverhead",
    "VideoRow",
    "benchmark_frames",
    "check_output_path",
    "command_line",
    "format_markdown",
    "format_table",
    "load_report",
    "machine_info",
    "measure_conv_ceiling_gflops",
    "measure_peak_gflops",
    "measure_video_overhead",
    "not_run",
    "onnx_conv_flops_per_lr_pixel",
    "parse_backend_spec",
    "parse_list",
    "parse_size",
    "resolve_devices",
    "rotating_batches",
    "run_benchmark",
    "table_rows",
    "time_calls",
    "trim_clip",
    "video_row",
    "write_json",
    "write_markdown",
    "write_plot",
]
