"""Pure derivations from measured figures: throughput, share of peak, speed-up, notes.
Nothing here times, loads or runs anything."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .measure import Timing
from .results import STATUS_OK, BenchRow


def fill_throughput(row: BenchRow, timing: Timing, scale: int, flops: float | None) -> None:
    """Copy `timing` into `row` and derive frames/s, output Mpixel/s (when `scale` is known) and
    achieved GFLOP/s (when the FLOPs per input pixel are known), all from the median."""
    row.iters = timing.iters
    row.median_ms, row.p10_ms, row.p90_ms = timing.median_ms, timing.p10_ms, timing.p90_ms
    seconds_per_batch = timing.median_ms / 1e3
    row.frames_per_s = row.batch / seconds_per_batch
    if scale:
        row.output_mpix_per_s = row.batch * row.height * row.width * scale * scale / seconds_per_batch / 1e6
    if flops:
        row.gflops = flops * row.batch * row.height * row.width / seconds_per_batch / 1e9


def fill_peak_shares(rows: Sequence[BenchRow], peaks: dict[str, float]) -> None:
    """share = achieved GFLOP/s / the GEMM peak of the row's device at its precision (the fp32
    peak where that precision was not measured)."""
    for row in rows:
        peak = peaks.get(f"{row.device} {row.precision}") or peaks.get(f"{row.device} fp32")
        if row.gflops is not None and peak:
            row.peak_share = row.gflops / peak


def fill_speedups(rows: Sequence[BenchRow]) -> str:
    """speed-up = baseline median / row median, baseline = PyTorch fp32 at the same size and batch:
    the `torch` (channels_last) row on the same device, else `torch-nchw`, else either on another
    device. Returns a description of the baseline."""
    ok = [r for r in rows if r.status == STATUS_OK]
    used: set[str] = set()
    for r in ok:
        same = [
            b
            for b in ok
            if b.precision == "fp32"
            and b.backend in ("torch", "torch-nchw")
            and (b.height, b.width, b.batch) == (r.height, r.width, r.batch)
        ]
        same.sort(key=lambda b: (b.device != r.device, b.backend != "torch"))
        if same:
            base = same[0]
            r.speedup = base.median_ms / r.median_ms  # type: ignore[operator]
            used.add(f"{base.backend} fp32 on {base.device}")
    if not used:
        return "none (no PyTorch fp32 row ran)"
    return (
        "PyTorch fp32 at the same size and batch: "
        + ", ".join(sorted(used))
        + " (channels_last `torch` preferred, same device preferred)"
    )


def run_notes(rows: Sequence[BenchRow], machine: dict[str, Any]) -> list[str]:
    """What a reader must know to read the table right: a busy machine, fp16 computed as float32
    on the CPU, TF32 off for fp32 on CUDA."""
    notes = []
    load = max(machine.get("load_average_start", [0])[0], machine.get("load_average_end", [0])[0])
    if machine.get("cpu_count") and load > 0.5 * machine["cpu_count"]:
        notes.append(
            f"the machine was busy (load average up to {load:.1f} on {machine['cpu_count']} CPUs): "
            "CPU timings are pessimistic and noisy"
        )
    if any(
        r.backend == "onnxruntime" and r.device == "cpu" and r.precision == "fp16" and r.status == STATUS_OK
        for r in rows
    ):
        # See sr_deploy.backends.ort_backend.fp16_rounding_graph: no fp16 Conv kernels on x86 CPUs.
        notes.append(
            "onnxruntime fp16 on the CPU: the CPU provider computes an fp16 graph in float32 (it has "
            "no fp16 kernels for these ops), so that row's speed and parity are float32's, not fp16's"
        )
    if any(r.device.startswith("cuda") and r.precision == "fp32" and r.status == STATUS_OK for r in rows):
        notes.append("fp32 on CUDA is true float32: TF32 is disabled for fp32 rows and for the fp32 peak")
    return notes
