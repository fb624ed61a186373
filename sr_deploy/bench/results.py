"""What a benchmark run produces: one `BenchRow` per configuration, `VideoRow`s for the end-to-end
video pipeline, and the `BenchReport` that holds them with the machine and settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..parity import meets_thresholds

STATUS_OK, STATUS_SKIPPED, STATUS_FAILED = "ok", "skipped", "failed"


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
    peak_share: float | None = None  # gflops / measured GEMM peak of this device at this precision, 0..1+
    conv_share: float | None = None  # gflops / the 3x3 64->64 conv ceiling at this precision and size
    speedup: float | None = None  # vs PyTorch fp32, same size and batch (see `BenchReport.baseline`)
    parity_psnr_db: float | None = None  # vs the PyTorch float32 reference
    parity_max_abs: float | None = None
    parity_nonfinite: int | None = None
    peak_mem_mb: float | None = None
    mem_kind: str = ""  # what peak_mem_mb measures

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}" + ("" if self.device == "cpu" else f" ({self.device})")

    def problem(self) -> str | None:
        """Why this row does not count as a pass: it raised, or its output disagrees with the
        reference beyond the acceptance thresholds (`parity.meets_thresholds`); None otherwise
        (skipped rows and rows without parity figures included)."""
        where = f"{self.label} {self.batch}x{self.height}x{self.width}"
        if self.status == STATUS_FAILED:
            return f"{where}: failed: {self.reason}"
        if self.status != STATUS_OK or self.parity_max_abs is None or self.parity_psnr_db is None:
            return None
        ok, criterion = meets_thresholds(
            self.precision, self.parity_max_abs, self.parity_psnr_db, self.parity_nonfinite or 0
        )
        return None if ok else f"{where}: parity fails ({criterion} does not hold)"


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
    peaks_gflops: dict[str, float]  # "cpu fp32" / "cpu bf16" / "cuda fp16" -> GFLOP/s, `measure_peak_gflops`
    machine: dict[str, Any]
    settings: dict[str, Any]
    command: str = ""
    date: str = ""
    notes: list[str] = field(default_factory=list)
    video: list[VideoRow] = field(default_factory=list)
    # "cpu bf16 270x480" -> GFLOP/s of one 3x3 64->64 conv there, `measure_conv_ceiling_gflops`
    conv_ceilings_gflops: dict[str, float] = field(default_factory=dict)

    def ok_rows(self) -> list[BenchRow]:
        return [r for r in self.rows if r.status == STATUS_OK]

    def problems(self) -> list[str]:
        """The rows that failed or disagree with the reference (`BenchRow.problem`), in words."""
        return [problem for row in self.rows if (problem := row.problem()) is not None]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def json_safe(value: Any) -> Any:
    """inf / nan -> "inf" / "-inf" / "nan" strings (JSON has no such numbers); tuples -> lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
