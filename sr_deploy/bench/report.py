"""Reporting: the plain-text table, markdown, JSON (and reading it back), a bar chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..util import atomic_write, atomic_write_text, check_output_path, first_line
from ..util.plot import pyplot
from .measure import MIN_ITERS
from .results import STATUS_OK, BenchReport, VideoRow

TABLE_COLUMNS = (
    "backend",
    "device",
    "prec",
    "batch",
    "input",
    "median ms",
    "p10-p90 ms",
    "frames/s",
    "out MP/s",
    "GFLOP/s",
    "% peak",
    "% conv",
    "speed-up",
    "PSNR dB",
    "max abs",
    "peak MB",
)


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
        out.append(
            (
                r.backend,
                r.device,
                r.precision,
                str(r.batch),
                f"{r.height}x{r.width}",
                _fmt(r.median_ms, ".2f"),
                f"{_fmt(r.p10_ms, '.2f')}-{_fmt(r.p90_ms, '.2f')}",
                _fmt(r.frames_per_s, ".2f"),
                _fmt(r.output_mpix_per_s, ".2f"),
                _fmt(r.gflops, ".1f"),
                _fmt(None if r.peak_share is None else 100 * r.peak_share, ".0f"),
                _fmt(None if r.conv_share is None else 100 * r.conv_share, ".0f"),
                _fmt(r.speedup, ".2f") + ("x" if r.speedup is not None else ""),
                _fmt(r.parity_psnr_db, ".1f"),
                _fmt(r.parity_max_abs, ".1e"),
                _fmt(r.peak_mem_mb, ".0f"),
            )
        )
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
    lines = [
        f"{report.model} ({report.arch} x{report.scale or '?'}): "
        + (
            f"{report.flops_per_lr_pixel / 1e6:.2f} MFLOP per input pixel"
            if report.flops_per_lr_pixel
            else "FLOPs unknown"
        )
        + "; peak "
        + (", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in report.peaks_gflops.items()) or "not measured")
        + (
            "; 3x3 conv ceiling " + ", ".join(f"{k} {v:.0f}" for k, v in report.conv_ceilings_gflops.items())
            if report.conv_ceilings_gflops
            else ""
        )
    ]
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
    share = v.overhead_share or 0.0
    outside = (
        f"{100 * share:.0f}% of the pipeline's time outside the model"
        if share >= 0
        # a negative share means nothing: the backend alone timed slower than the whole pipeline
        else "the time outside the model is within timing noise (the backend alone measured slower)"
    )
    return (
        f"video {v.clip} ({v.frames} frames {v.width}x{v.height}, {v.backend} {v.precision} {v.device}): "
        f"upscale pipeline {v.pipeline_fps:.2f} frames/s, backend alone {v.backend_fps:.2f} frames/s, {outside}"
    )


def format_markdown(report: BenchReport) -> str:
    """The report as a markdown document: how it was made, the table, what did not run."""
    m = report.machine
    out = [f"# sr-deploy benchmark: {report.model}", ""]
    out.append(f"- date: {report.date}")
    out.append(f"- command: `{report.command}`")
    out.append(
        f"- host: {m.get('host')} ({m.get('cpu')}, {m.get('cpu_count')} CPUs"
        + (f", GPU {m['gpu']}" if m.get("gpu") else "")
        + f"); {m.get('os')}"
    )
    out.append(
        f"- software: sr-deploy {m.get('sr_deploy')}, torch {m.get('torch')} "
        f"({m.get('torch_threads')} threads), onnxruntime {m.get('onnxruntime', 'absent')}"
        + (f", TensorRT {m['tensorrt']}" if m.get("tensorrt") else ", TensorRT absent")
    )
    out.append(f"- load average at start / end: {m.get('load_average_start')} / {m.get('load_average_end')}")
    out.append(
        f"- model: {report.arch} x{report.scale or '?'}, "
        + (
            f"{report.flops_per_lr_pixel / 1e6:.3f} MFLOP per input pixel"
            if report.flops_per_lr_pixel
            else "FLOPs unknown"
        )
        + f" ({report.flops_source})"
    )
    out.append(
        "- measured peak per precision (fastest large GEMM, matmul or 1x1 convolution, before and after "
        "the rows): " + (", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in report.peaks_gflops.items()) or "not measured")
    )
    if report.conv_ceilings_gflops:
        out.append(
            "- measured conv ceiling (one 3x3 64->64 convolution, channels_last, at the row's input size "
            "and precision): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in report.conv_ceilings_gflops.items())
        )
    s = report.settings
    timing = (
        f"{s['iters']} timed calls" if s.get("iters") else f"{s.get('seconds')} s of timed calls (at least {MIN_ITERS})"
    )
    out.append(
        f"- timing: {s.get('warmup')} warm-up calls excluded, then {timing} per row, cycling through "
        f"{s.get('rotating_batches')} different batches ({s.get('inputs')}); median and p10-p90 per batch"
    )
    out.append(f"- parity vs {report.reference}; speed-up vs {report.baseline}")
    out += ["", "| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"]
    for r in table_rows(report):
        out.append("| " + " | ".join(r) + " |")
    skipped = not_run(report)
    if skipped:
        out += ["", "Not run:", ""]
        out += [
            f"- {status}: {backend} {precision} on {device}: {reason}"
            for status, backend, device, precision, reason in skipped
        ]
    if report.video:
        out += ["", "End-to-end video (`sr-deploy upscale` vs the backend alone on the same frames):", ""]
        for v in report.video:
            out.append(f"- {_video_line(v)}" + (f"; command: `{v.command}`" if v.command else ""))
    if report.notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in report.notes]
    out += [
        "",
        "Columns: median ms per batch (p10-p90); frames/s = batch / median; out MP/s = output "
        "megapixels per second; GFLOP/s = convolution FLOPs / median time; % peak = of the GEMM peak "
        "above at the row's own precision (same device; fp16 on the CPU is computed in fp32 and "
        "compared with the fp32 peak); % conv = of the 3x3 conv ceiling at the row's precision and "
        "input size; PSNR dB and max abs vs the "
        "reference on two real batches (raw, unclamped outputs); peak MB = "
        + ", ".join(sorted({f"{r.mem_kind} ({r.device})" for r in report.ok_rows() if r.mem_kind}))
        + ".",
        "",
    ]
    return "\n".join(out)


def _write_text(path: str | Path, text: str) -> Path:
    """Check `path` can be written, then write `text` atomically (never a half-written report)."""
    return atomic_write_text(check_output_path(path), text)


def write_json(report: BenchReport, path: str | Path) -> Path:
    """The whole report as JSON (inf written as the string "inf")."""
    return _write_text(path, json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n")


def write_markdown(report: BenchReport, path: str | Path) -> Path:
    return _write_text(path, format_markdown(report))


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
    path = check_output_path(path)
    plt = pyplot()
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
    ax.set_title(
        f"{report.arch} x{report.scale or '?'} on {report.machine.get('gpu') or report.machine.get('cpu')}", fontsize=9
    )
    if series:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path
