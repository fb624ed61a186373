"""The benchmark harness: sane timings, skipped rows with reasons, parity that catches a wrong
model, and reports that read back. Tiny models and small crops of the real photos only."""

from __future__ import annotations

import importlib.util
import json
import math
import shlex
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sr_deploy.bench import (
    BenchRow,
    benchmark_frames,
    format_markdown,
    format_table,
    load_report,
    onnx_conv_flops_per_lr_pixel,
    rotating_batches,
    run_benchmark,
    time_calls,
    write_json,
    write_markdown,
    write_plot,
)
from sr_deploy.cli import cli
from sr_deploy.errors import TENSORRT_NOT_INSTALLED
from sr_deploy.models import SRResNet, count_flops_per_lr_pixel, save_checkpoint

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
TINY_CONFIG = {"scale": 4, "num_blocks": 1, "num_features": 8, "batch_norm": False}
# The CLI tests' timing options: one tiny size, a few calls, no peak-memory pass, quiet.
QUICK_CPU_RUN = ["--sizes", "16x16", "--iters", "3", "--warmup", "1", "--no-peak", "--device", "cpu", "--quiet"]


def _tiny(seed: int = 0) -> SRResNet:
    torch.manual_seed(seed)
    return SRResNet(**TINY_CONFIG).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.pt"
    save_checkpoint(path, _tiny(), TINY_CONFIG)
    return path


@pytest.fixture(scope="module")
def perturbed_onnx(tmp_path_factory):
    """An fp32 ONNX export of the tiny model with every weight nudged by noise: a stale / wrong
    export that the parity columns must flag."""
    from sr_deploy.export import export_onnx

    model = _tiny()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    path = tmp_path_factory.mktemp("bench-onnx") / "perturbed.onnx"
    export_onnx(model, path, exporter="legacy", verify=False, log=None)
    return path


@pytest.fixture(scope="module")
def tiny_report(shared_data):
    """One run shared by the checks below: two torch layouts, two batch sizes, plus rows that
    cannot run here (TensorRT, CUDA when absent)."""
    return run_benchmark(
        _tiny(),
        backends=["torch", "torch-nchw", "tensorrt"],
        precisions=["fp32", "bf16"],
        sizes=[(16, 24)],
        batch_sizes=[1, 2],
        device="cpu,cuda",
        warmup=1,
        iters=6,
        measure_peak=True,
        data_dir=shared_data,
        progress=False,
    )


def _row(report, backend, precision, batch=1, device="cpu") -> BenchRow:
    (row,) = [
        r for r in report.rows if (r.backend, r.precision, r.batch, r.device) == (backend, precision, batch, device)
    ]
    return row


@pytest.mark.slow
def test_harness_numbers_are_sane(tiny_report):
    report = tiny_report
    assert report.flops_per_lr_pixel == pytest.approx(count_flops_per_lr_pixel(_tiny()))
    assert report.peaks_gflops["cpu fp32"] > 0.5  # any CPU does a GEMM faster than that
    assert "photos" in report.settings["inputs"]  # timed on crops of the real images
    for backend in ("torch", "torch-nchw"):
        for batch in (1, 2):
            r = _row(report, backend, "fp32", batch)
            assert r.status == "ok", r.reason
            assert r.iters == 6
            assert 0 < r.p10_ms <= r.median_ms <= r.p90_ms
            assert r.frames_per_s == pytest.approx(1e3 * batch / r.median_ms)
            assert r.output_mpix_per_s == pytest.approx(r.frames_per_s * 16 * 24 * 16 / 1e6)
            assert r.gflops == pytest.approx(report.flops_per_lr_pixel * 16 * 24 * r.frames_per_s / 1e9)
            assert r.peak_share == pytest.approx(r.gflops / report.peaks_gflops["cpu fp32"])
            assert r.peak_mem_mb > 10 and r.mem_kind
            # fp32 against the fp32 reference: DESIGN.md's 1e-4 bound, far above 50 dB.
            assert r.parity_max_abs <= 1e-4 and r.parity_psnr_db > 80 and r.parity_nonfinite == 0
        assert _row(report, "torch", "fp32", 1).speedup == pytest.approx(1.0)
    nchw = _row(report, "torch-nchw", "fp32", 2)
    assert nchw.speedup == pytest.approx(_row(report, "torch", "fp32", 2).median_ms / nchw.median_ms)
    # bf16 on the CPU runs (slowly) and is flagged as lower precision by parity.
    bf16 = _row(report, "torch", "bf16", 1)
    assert bf16.status == "ok", bf16.reason
    assert 20 < bf16.parity_psnr_db < 80 and bf16.parity_max_abs > 1e-4
    # Each precision against its own peak and its conv ceiling at the row's size (issue 26).
    assert bf16.peak_share == pytest.approx(bf16.gflops / report.peaks_gflops["cpu bf16"])
    assert bf16.conv_share == pytest.approx(bf16.gflops / report.conv_ceilings_gflops["cpu bf16 16x24"])
    assert _row(report, "torch", "fp32").conv_share == pytest.approx(
        _row(report, "torch", "fp32").gflops / report.conv_ceilings_gflops["cpu fp32 16x24"]
    )


@pytest.mark.slow
def test_unavailable_backends_are_skipped_with_a_reason(tiny_report):
    report = tiny_report
    if not HAS_TRT:
        trt = _row(report, "tensorrt", "fp32")
        assert trt.status == "skipped" and "TensorRT is not installed" in trt.reason
    if not torch.cuda.is_available():
        cuda = _row(report, "torch", "fp32", device="cuda")
        assert cuda.status == "skipped" and "CUDA" in cuda.reason
    table = format_table(report)
    if not HAS_TRT:
        assert "skipped: tensorrt fp32 on cpu: TensorRT is not installed" in table


def test_onnxruntime_on_cuda_without_onnxruntime_gpu_names_the_install(tiny_checkpoint, monkeypatch):
    """The skipped row says how to get the CUDA provider, in the words upscale and eval use (one text,
    `errors.ORT_GPU_NOT_INSTALLED`), not only that it is missing."""
    import onnxruntime

    from sr_deploy.errors import ORT_GPU_NOT_INSTALLED

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    args = ["benchmark", str(tiny_checkpoint), "--backends", "torch@cpu,onnxruntime@cuda", *QUICK_CPU_RUN]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped: onnxruntime")]
    assert skipped and all(
        f"on cuda: {ORT_GPU_NOT_INSTALLED}; or add an onnxruntime@cpu row" in line for line in skipped
    ), skipped
    assert "pip uninstall onnxruntime && pip install 'sr-deploy[gpu]'" in ORT_GPU_NOT_INSTALLED


@pytest.mark.slow
def test_parity_flags_a_perturbed_model(tiny_checkpoint, perturbed_onnx, shared_data):
    report = run_benchmark(
        tiny_checkpoint,
        backends=["torch", "onnxruntime"],
        precisions=["fp32", "bf16"],
        sizes=[(20, 28)],
        device="cpu",
        warmup=1,
        iters=3,
        measure_peak=False,
        data_dir=shared_data,
        progress=False,
        onnx_models=[perturbed_onnx],
    )
    good, bad = _row(report, "torch", "fp32"), _row(report, "onnxruntime", "fp32")
    assert good.status == bad.status == "ok", (good.reason, bad.reason)
    assert good.parity_max_abs <= 1e-4 and good.parity_psnr_db > 80
    assert bad.parity_max_abs > 1e-2 and bad.parity_psnr_db < 45
    assert report.peaks_gflops == {} and bad.peak_share is None and bad.gflops > 0
    bf16_onnx = _row(report, "onnxruntime", "bf16")  # no bf16 ONNX export exists: skipped, said why
    assert bf16_onnx.status == "skipped" and "no bf16 ONNX export" in bf16_onnx.reason
    assert bf16_onnx.median_ms is None
    assert "skipped: onnxruntime bf16 on cpu: no bf16 ONNX export" in format_table(report)
    assert report.problems() == [
        f"onnxruntime fp32 1x20x28: parity fails (fp32: max abs {bad.parity_max_abs:.3g} <= 0.0001 does not hold)"
    ]


def test_a_benchmark_whose_backends_disagree_exits_1_after_its_table(tiny_checkpoint, perturbed_onnx, tmp_path):
    """The table and the report are still written, then each failing row is named and the
    command exits 1: a script (CI, gpu_check.sh) must not take disagreeing backends for a pass."""
    out = tmp_path / "b.json"
    args = ["benchmark", str(tiny_checkpoint), "--backends", "torch,onnxruntime", "--onnx", str(perturbed_onnx)]
    result = CliRunner().invoke(cli, [*args, *QUICK_CPU_RUN, "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert "  onnxruntime fp32 1x16x16: parity fails (fp32: max abs " in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: 1 row(s) failed or disagree with")
    assert json.loads(out.read_text())["rows"]
    good = CliRunner().invoke(cli, ["benchmark", str(tiny_checkpoint), "--backends", "torch", *QUICK_CPU_RUN])
    assert good.exit_code == 0, good.output
    if not HAS_TRT:  # nothing that was asked for can run here: exit 2, not an empty table and 0
        none = CliRunner().invoke(cli, ["benchmark", str(tiny_checkpoint), "--backends", "tensorrt", *QUICK_CPU_RUN])
        assert none.exit_code == 2 and "error: no row could run on this machine" in none.stderr, none.output
    # nothing asked for can run MODEL itself: said of MODEL, not of "this machine"
    refused = CliRunner().invoke(cli, ["benchmark", str(perturbed_onnx), "--backends", "torch", *QUICK_CPU_RUN])
    assert refused.exit_code == 2, refused.output
    assert refused.stderr.splitlines() == [
        "error: no row asked for can run MODEL: the torch backend needs a PyTorch checkpoint; MODEL is an ONNX file"
    ]


def _stand_in_engine(path, scale: int | None = 4):
    """Binary bytes standing in for a TensorRT engine (nothing here runs it), and its sidecar."""
    from sr_deploy.engine import EngineSidecar, write_sidecar

    path.write_bytes(b"ftrt\xe8\x00\x00\x00stand-in engine bytes")
    if scale is not None:
        profile = {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [1, 3, 64, 64]}
        write_sidecar(path, EngineSidecar("0" * 64, "10.13.0", "stand-in", "8.9", profile, "fp16", scale=scale))
    return path


def test_a_benchmark_none_of_whose_rows_can_run_fails_before_any_work(tiny_checkpoint, tmp_path, monkeypatch):
    """Every row asked for needs TensorRT, absent: one line naming the extra, exit 2, before the GEMM
    peak is measured and with no report written (it measured, wrote both, then said "no row could
    run"). The same for an engine as MODEL, whose only possible row is TensorRT's."""
    import sr_deploy.bench.runner as runner

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # as without the tensorrt extra
    monkeypatch.setattr(runner, "measure_peak_gflops", lambda *a: pytest.fail("the GEMM peak was measured"))
    engine = _stand_in_engine(tmp_path / "f.engine")
    reports = ["--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")]
    quick = ["--sizes", "16x16", "--iters", "1", "--warmup", "0", "--device", "cpu", "--quiet"]
    for model, backends in ((tiny_checkpoint, ["--backends", "tensorrt"]), (engine, [])):
        result = CliRunner().invoke(cli, ["benchmark", str(model), *backends, *quick, *reports])
        assert result.exit_code == 2, result.output
        assert result.output.splitlines() == [f"error: no row could run on this machine: {TENSORRT_NOT_INSTALLED}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.engine", "f.engine.json"]


def test_rows_that_cannot_run_beside_one_that_can_are_skipped_rows(tiny_checkpoint, monkeypatch):
    """The early refusal is for a run with nothing to run: beside a row that runs, the others stay
    skipped rows with their reasons, exit 0."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    args = ["benchmark", str(tiny_checkpoint), "--backends", "torch,tensorrt", *QUICK_CPU_RUN]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"skipped: tensorrt fp32 on cpu: {TENSORRT_NOT_INSTALLED}" in result.output


def test_an_engine_subject_takes_its_scale_from_its_sidecar(tmp_path):
    """`benchmark f.engine` said `(TensorRT engine x0)`: the scale it was built at is in its sidecar;
    an empty or text file is refused as not an engine."""
    from sr_deploy.bench.subject import load_subject
    from sr_deploy.errors import InputError

    assert load_subject(str(_stand_in_engine(tmp_path / "a.engine"))).scale == 4
    assert load_subject(str(_stand_in_engine(tmp_path / "b.engine", scale=None))).scale == 0
    (tmp_path / "empty.engine").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.engine: empty file, not a TensorRT engine"):
        load_subject(str(tmp_path / "empty.engine"))


@pytest.mark.slow
def test_onnxruntime_fp16_on_the_cpu_is_labelled_as_float32_arithmetic(tiny_checkpoint, shared_data):
    """ORT's CPU provider computes an fp16 graph in float32: the report must not pass that off as fp16."""
    report = run_benchmark(
        tiny_checkpoint,
        backends=["onnxruntime"],
        precisions=["fp16"],
        sizes=[(20, 28)],
        device="cpu",
        warmup=1,
        iters=3,
        measure_peak=False,
        data_dir=shared_data,
        progress=False,
    )
    row = _row(report, "onnxruntime", "fp16")
    assert row.status == "ok", row.reason
    assert any("computes an fp16 graph in float32" in note for note in report.notes), report.notes
    assert "computes an fp16 graph in float32" in format_markdown(report)


@pytest.mark.slow
def test_reports_read_back(tiny_report, tmp_path):
    report = tiny_report
    report.command = "sr-deploy benchmark tiny.pt --iters 6"
    data = load_report(write_json(report, tmp_path / "r.json"))
    assert data["command"] == report.command and data["arch"] == "SRResNet" and data["scale"] == 4
    assert len(data["rows"]) == len(report.rows)
    for saved, row in zip(data["rows"], report.rows):
        assert saved["backend"] == row.backend and saved["status"] == row.status
        if row.status == "ok":
            assert saved["median_ms"] == pytest.approx(row.median_ms)
            # inf PSNR (identical outputs) is stored as a string, valid JSON either way
            assert (
                saved["parity_psnr_db"] == "inf"
                if math.isinf(row.parity_psnr_db)
                else saved["parity_psnr_db"] == pytest.approx(row.parity_psnr_db)
            )
    md = (write_markdown(report, tmp_path / "r.md")).read_text()
    assert md == format_markdown(report)
    assert "`sr-deploy benchmark tiny.pt --iters 6`" in md
    table_lines = [line for line in md.splitlines() if line.startswith("| torch")]  # the ok rows
    assert len(table_lines) == len(report.ok_rows())
    assert "TensorRT" in md or HAS_TRT
    png = write_plot(report, tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md", "r.png"]  # no temporaries left


def test_onnx_flop_count_matches_the_model(perturbed_onnx):
    assert onnx_conv_flops_per_lr_pixel(perturbed_onnx) == pytest.approx(count_flops_per_lr_pixel(_tiny()))


def test_time_calls_excludes_warmup_and_orders_percentiles():
    calls = []

    def fn(x):
        calls.append(x)
        time.sleep(0.002 if x == "warm" else 0.001)

    t = time_calls(fn, ["a", "b", "c"], warmup=2, iters=7)
    assert len(calls) == 9 and t.iters == 7 and len(t.samples_ms) == 7
    assert calls[2:5] == ["a", "b", "c"]  # timed calls cycle through the inputs
    assert 1.0 <= t.p10_ms <= t.median_ms <= t.p90_ms
    budget = time_calls(lambda x: time.sleep(0.001), [0], warmup=0, iters=None, seconds=0.05)
    assert budget.iters >= 5 and budget.iters < 200


def test_frames_are_different_real_crops(shared_data):
    frames, source = benchmark_frames(30, 50, 4, data_dir=shared_data)
    assert "photos" in source and len(frames) == 4
    for f in frames:
        assert f.shape == (3, 30, 50) and f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1
    assert all(not np.array_equal(frames[i], frames[j]) for i in range(4) for j in range(i + 1, 4))
    batches = rotating_batches(frames, 3, count=4)
    assert [b.shape for b in batches] == [(3, 3, 30, 50)] * 4
    assert np.array_equal(batches[1][0], frames[3]) and np.array_equal(batches[1][1], frames[0])
    big, _ = benchmark_frames(1100, 1200, 2, data_dir=shared_data)  # larger than every photo: enlarged
    assert big[0].shape == (3, 1100, 1200)


@pytest.mark.slow
def test_cli_prints_table_and_writes_json(tiny_checkpoint, tmp_path):
    out = tmp_path / "b.json"
    result = CliRunner().invoke(
        cli,
        [
            "benchmark",
            str(tiny_checkpoint),
            "--backends",
            "torch-nchw,tensorrt",
            *QUICK_CPU_RUN,
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "torch-nchw  cpu     fp32" in result.output and "16x16" in result.output
    if not HAS_TRT:
        assert "skipped: tensorrt fp32 on cpu: TensorRT is not installed" in result.output
    data = json.loads(out.read_text())
    assert data["command"].startswith(f"sr-deploy benchmark {tiny_checkpoint} ")
    assert "--sizes 16x16" in data["command"] and "--iters 3" in data["command"]
    assert data["rows"][0]["status"] == "ok" and data["rows"][0]["iters"] == 3


def test_the_recorded_command_of_a_blend_names_its_ends_and_runs_again(tiny_checkpoint, tmp_path, monkeypatch):
    """`benchmark M --gan-model G --realism A`: the report's command repeats that (the blend is a
    cached file whose path alone, with --realism, would be refused), and running it works."""
    monkeypatch.setenv("SR_DEPLOY_CACHE", str(tmp_path / "cache"))
    gan = save_checkpoint(tmp_path / "gan.pt", _tiny(seed=1), TINY_CONFIG)
    base = ["--backends", "torch", *QUICK_CPU_RUN]
    first = CliRunner().invoke(
        cli,
        [
            "benchmark",
            str(tiny_checkpoint),
            "--gan-model",
            str(gan),
            "--realism",
            "0.5",
            *base,
            "--json",
            str(tmp_path / "a.json"),
        ],
    )
    assert first.exit_code == 0, first.output
    command = json.loads((tmp_path / "a.json").read_text())["command"]
    assert command.startswith(f"sr-deploy benchmark {tiny_checkpoint} ") and f"--gan-model {gan}" in command
    again = CliRunner().invoke(cli, shlex.split(command)[1:])
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sizes", "16by16"], "bad input size '16by16'"),
        (["--backends", "torch,tflite"], "unknown backend 'tflite'"),
        (["--precisions", "int8"], "unknown precision 'int8'"),
        (["--json", "/nonexistent-dir/x.json"], "/nonexistent-dir/x.json: the folder /nonexistent-dir does not exist"),
        (["--iters", "0"], "--iters must be >= 1"),
        # the OOM killer ended this at 23.8 GB (and other processes with it)
        (["--sizes", "16x16", "--batch-sizes", "100000"], "--sizes 16x16 --batch-sizes 100000: one call needs about"),
        (["--sizes", "100000x100000"], "--sizes 100000x100000 --batch-sizes 1: one call needs about"),
    ],
)
def test_cli_bad_arguments_are_one_line_errors(tiny_checkpoint, args, message):
    result = CliRunner().invoke(cli, ["benchmark", str(tiny_checkpoint), "--quiet", "--no-peak", *args])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {result.output.strip()[7:]}"]
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("option", ["--json", "--markdown", "--plot"])
def test_a_report_is_never_written_over_the_model_or_an_image(tiny_checkpoint, tmp_path, option):
    """`--json model.pt` (a slip of the keyboard) replaced the model being timed with the report:
    each report must have its own suffix, checked before any timing; the file is left as it was."""
    before = tiny_checkpoint.read_bytes()
    image = tmp_path / "baby.png"
    image.write_bytes(b"an image")
    for target in (tiny_checkpoint, image) if option != "--plot" else (tiny_checkpoint,):  # a plot is a .png
        result = CliRunner().invoke(
            cli, ["benchmark", str(tiny_checkpoint), "--quiet", "--no-peak", option, str(target)]
        )
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {target}: expected a .") and len(result.output.splitlines()) == 1
    assert tiny_checkpoint.read_bytes() == before and image.read_bytes() == b"an image"


def test_plot_without_matplotlib_is_refused_before_any_work(tiny_checkpoint, tmp_path, monkeypatch, without_matplotlib):
    """--plot without matplotlib: one line naming the extra, exit 2, before the run (it ran the whole
    benchmark, wrote the JSON and markdown, then failed at the plot)."""
    import sr_deploy.bench

    monkeypatch.setattr(sr_deploy.bench, "run_benchmark", lambda *a, **k: pytest.fail("the benchmark ran"))
    reports = [tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"]
    args = ["--json", str(reports[0]), "--markdown", str(reports[1]), "--plot", str(reports[2])]
    result = CliRunner().invoke(cli, ["benchmark", str(tiny_checkpoint), "--backends", "torch", *QUICK_CPU_RUN, *args])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == ["error: the plot needs matplotlib: pip install 'sr-deploy[plot]'"]
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_model(tmp_path):
    result = CliRunner().invoke(cli, ["benchmark", str(tmp_path / "nope.pt"), "--quiet"])
    assert result.exit_code == 2 and "nope.pt: no such model file" in result.output


@pytest.mark.gpu
def test_gpu_rows_run_with_fp16(shared_data):
    report = run_benchmark(
        _tiny(),
        backends=["torch"],
        precisions=["fp32", "fp16"],
        sizes=[(64, 64)],
        device="cuda",
        warmup=2,
        iters=10,
        data_dir=shared_data,
        progress=False,
    )
    fp32, fp16 = _row(report, "torch", "fp32", device="cuda"), _row(report, "torch", "fp16", device="cuda")
    assert fp32.status == fp16.status == "ok"
    assert fp32.parity_max_abs <= 1e-4  # TF32 off for fp32 rows
    assert fp16.parity_psnr_db >= 50 and fp32.mem_kind.startswith("torch.cuda")


@pytest.mark.parametrize("pipeline_fps, said", [(3.0, "25% of the pipeline's time outside the model"), (10.0, None)])
def test_the_video_line_never_prints_a_negative_share(pipeline_fps, said):
    """A pipeline that timed faster than the backend alone (noise on a short clip) printed `-112% of
    the pipeline's time outside the model`: it now says that the difference is within noise."""
    from sr_deploy.bench.results import BenchReport, VideoRow

    row = VideoRow("tiny.mp4", 3, 64, 36, "torch", "cpu", "fp32", pipeline_fps=pipeline_fps, backend_fps=4.0)
    row.overhead_share = 1 - row.pipeline_fps / row.backend_fps
    report = BenchReport("m", "SRResNet", 4, None, "", "ref", "base", [], {}, {}, {}, video=[row])
    for text in (format_table(report), format_markdown(report)):
        (line,) = [line for line in text.splitlines() if "video tiny.mp4" in line]
        assert line.endswith(
            said or "the time outside the model is within timing noise (the backend alone measured slower)"
        )
        assert "-" not in line.split("frames/s, ")[-1], line


@pytest.mark.slow
def test_video_row_on_a_real_clip(video_dir):
    """The end-to-end row: the upscale pipeline vs the backend alone on the same 2 frames of a real
    clip. Before the video pipeline is in the build, the row says so instead."""
    from sr_deploy.bench import video_row

    row = video_row(_tiny(), video_dir / "mov_bbb.mp4", frames=2, width=80, device="cpu")
    if importlib.util.find_spec("sr_deploy.video") is None:
        assert row.status == "skipped" and "sr_deploy.video" in row.reason
        return
    assert row.status == "ok", row.reason
    assert (row.frames, row.width, row.height) == (2, 80, 44)
    assert row.pipeline_fps > 0 and row.backend_fps > 0
    assert row.overhead_share == pytest.approx(1 - row.pipeline_fps / row.backend_fps)
