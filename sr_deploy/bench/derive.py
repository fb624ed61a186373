"""Pure derivations from measured figures: throughput, share of peak, speed-up, notes.
Nothing here times, loads or runs anything."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .measure import Timing
from .options import PlannedRow
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


def arithmetic_precision(device: str, precision: str) -> str:
    """The precision a row's arithmetic runs in: its own, except fp16 on the CPU, which is computed
    in float32 (ONNX Runtime's CPU provider has no fp16 kernels for these ops; see `run_notes`)."""
    return "fp32" if precision == "fp16" and not device.startswith("cuda") else precision


def peak_key(device: str, precision: str) -> str:
    """The key of `BenchReport.peaks_gflops` a row is compared with: ``"cpu bf16"``."""
    return f"{device} {arithmetic_precision(device, precision)}"


def ceiling_key(device: str, precision: str, height: int, width: int) -> str:
    """The key of `BenchReport.conv_ceilings_gflops` a row is compared with: ``"cpu bf16 270x480"``."""
    return f"{peak_key(device, precision)} {height}x{width}"


def fill_peak_shares(
    rows: Sequence[BenchRow], peaks: dict[str, float], ceilings: dict[str, float] | None = None
) -> None:
    """peak_share = achieved GFLOP/s / the GEMM peak of the row's device *at the row's precision*
    (`peak_key`); conv_share = the same / the conv ceiling at the row's precision and input size
    (`ceiling_key`). A peak that was not measured leaves the share None: a bf16 row is never divided
    by the fp32 peak (on a CPU with bf16 matrix units that would read 290 % and hide how far bf16 is
    from its own limit)."""
    ceilings = ceilings or {}
    for row in rows:
        if row.gflops is None:
            continue
        peak = peaks.get(peak_key(row.device, row.precision))
        ceiling = ceilings.get(ceiling_key(row.device, row.precision, row.height, row.width))
        row.peak_share = row.gflops / peak if peak else None
        row.conv_share = row.gflops / ceiling if ceiling else None


def peaks_to_measure(rows: Iterable[PlannedRow]) -> tuple[list[str], list[tuple[str, str, int, int]]]:
    """What a run measures its rows against: the (device, precision) GEMM peaks, fp32 on every
    device plus each precision a row computes in, and the (device, precision, height, width) conv
    ceilings of the rows; both in first-seen order."""
    peaks: list[str] = []
    ceilings: list[tuple[str, str, int, int]] = []
    for row in rows:
        for key in (peak_key(row.device, "fp32"), peak_key(row.device, row.precision)):
            if key not in peaks:
                peaks.append(key)
        ceiling = (row.device, arithmetic_precision(row.device, row.precision), row.height, row.width)
        if ceiling not in ceilings:
            ceilings.append(ceiling)
    return peaks, ceilings


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
