"""Peak per precision (issue 26, part 1): each row's `% peak` is of the GEMM peak at its own precision
and its `% conv` of the 3x3 conv ceiling at its precision and input size. The derivations are pure
(sr_deploy.bench.derive); the measurements are checked for shape and sanity only."""

from __future__ import annotations

import pytest

from sr_deploy.bench import BenchReport, BenchRow, format_markdown, format_table, measure_conv_ceiling_gflops
from sr_deploy.bench.derive import ceiling_key, fill_peak_shares, peak_key, peaks_to_measure
from sr_deploy.bench.measure import conv_ceiling_flops
from sr_deploy.bench.options import plan_rows

# The AMX machine: fp32 / bf16 GEMM 354 / 2435 GFLOP/s, the conv 345 / 2507 at 270x480.
PEAKS = {"cpu fp32": 354.0, "cpu bf16": 2435.0, "cuda fp32": 50_000.0, "cuda fp16": 400_000.0}
CEILINGS = {"cpu fp32 270x480": 345.0, "cpu bf16 270x480": 2507.0}


def _row(precision: str, gflops: float | None, device: str = "cpu", size=(270, 480)) -> BenchRow:
    row = BenchRow("torch", device, precision, 1, *size)
    row.gflops = gflops
    return row


def test_a_bf16_row_is_a_share_of_the_bf16_peak_never_the_fp32_one():
    fp32, bf16 = _row("fp32", 262.0), _row("bf16", 1013.0)
    fill_peak_shares([fp32, bf16], PEAKS, CEILINGS)
    assert fp32.peak_share == pytest.approx(262 / 354) and fp32.conv_share == pytest.approx(262 / 345)
    assert bf16.peak_share == pytest.approx(1013 / 2435)  # 42 %, not the 286 % of the fp32 peak
    assert bf16.conv_share == pytest.approx(1013 / 2507)  # the "40 % of the bf16 conv ceiling"


def test_an_unmeasured_precision_or_size_leaves_the_share_empty():
    bf16, other_size = _row("bf16", 500.0), _row("fp32", 100.0, size=(128, 128))
    fill_peak_shares([bf16, other_size], {"cpu fp32": 354.0}, CEILINGS)
    assert bf16.peak_share is None and bf16.conv_share == pytest.approx(500 / 2507)
    assert other_size.peak_share == pytest.approx(100 / 354) and other_size.conv_share is None
    unmeasured = _row("fp32", None)
    fill_peak_shares([unmeasured], PEAKS, CEILINGS)
    assert unmeasured.peak_share is None and unmeasured.conv_share is None


def test_fp16_is_compared_with_fp16_on_cuda_and_with_fp32_on_the_cpu_where_it_is_computed_in_fp32():
    assert peak_key("cuda", "fp16") == "cuda fp16" and peak_key("cpu", "fp16") == "cpu fp32"
    assert ceiling_key("cpu", "bf16", 270, 480) == "cpu bf16 270x480"
    gpu, cpu = _row("fp16", 80_000.0, device="cuda"), _row("fp16", 177.0)
    fill_peak_shares([gpu, cpu], PEAKS)
    assert gpu.peak_share == pytest.approx(0.2) and cpu.peak_share == pytest.approx(0.5)


def test_a_run_measures_each_precision_its_rows_compute_in_and_each_size():
    plan = plan_rows([(128, 128), (270, 480)], [1, 2], [("torch", "cpu"), ("onnxruntime", "cpu")], ["fp32", "bf16"])
    gemms, ceilings = peaks_to_measure(plan)
    assert gemms == ["cpu fp32", "cpu bf16"]
    assert ceilings == [("cpu", "fp32", 128, 128), ("cpu", "bf16", 128, 128), ("cpu", "fp32", 270, 480)] + [
        ("cpu", "bf16", 270, 480)
    ]
    gemms, _ = peaks_to_measure(plan_rows([(64, 64)], [1], [("tensorrt", "cuda"), ("onnxruntime", "cpu")], ["fp16"]))
    assert gemms == ["cuda fp32", "cuda fp16", "cpu fp32"]


def test_the_table_and_markdown_show_both_columns_and_every_peak():
    rows = [_row("fp32", 262.0), _row("bf16", 1013.0)]
    for r in rows:
        r.median_ms, r.p10_ms, r.p90_ms = 1.0, 1.0, 1.0
    fill_peak_shares(rows, PEAKS, CEILINGS)
    report = BenchReport("m", "SRResNet", 4, 3.2e6, "", "ref", "base", rows, PEAKS, {}, {})
    report.conv_ceilings_gflops = CEILINGS
    table = format_table(report)
    assert "% peak  % conv" in table and "cpu bf16 2435 GFLOP/s" in table and "cpu bf16 270x480 2507" in table
    bf16_line = [line for line in table.splitlines() if line.startswith("torch") and " bf16 " in line][0]
    assert " 42 " in bf16_line and " 40 " in bf16_line
    markdown = format_markdown(report)
    assert "| GFLOP/s | % peak | % conv |" in markdown and "cpu bf16 270x480 2507.0 GFLOP/s" in markdown


def test_the_conv_ceiling_is_measured_at_the_size_and_precision_asked():
    assert conv_ceiling_flops(270, 480) == 2 * 9 * 64 * 64 * 270 * 480
    assert 0.5 < measure_conv_ceiling_gflops("cpu", "fp32", 24, 32, seconds=0.05) < 1e5
    assert 0.01 < measure_conv_ceiling_gflops("cpu", "bf16", 24, 32, seconds=0.05) < 1e5
