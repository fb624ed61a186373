"""`sr-deploy benchmark`: PyTorch, ONNX Runtime and TensorRT timed side by side, with parity."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..backends.table import bench_names
from ..errors import InputError, SRDeployError
from .options import realism_options, with_realism

if TYPE_CHECKING:
    from ..bench import BenchReport

# What --plot writes (matplotlib picks the format from the suffix).
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


@click.command()
@click.argument("model")
@click.option(
    "--backends",
    default=",".join(bench_names()),
    show_default=True,
    help="Comma list of torch (channels_last), torch-nchw, onnxruntime, tensorrt; "
    "NAME@DEVICE pins one to a device (onnxruntime@cpu).",
)
@click.option(
    "--precisions", default=None, help="Comma list of fp32, fp16, bf16 [default: fp32 on the CPU, fp32,fp16 on CUDA]."
)
@click.option(
    "--sizes",
    default="128x128,270x480",
    show_default=True,
    help="Low-resolution input sizes, HEIGHTxWIDTH, comma separated.",
)
@click.option("--batch-sizes", default="1", show_default=True, help="Frames per call, comma separated.")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto, cpu, cuda, cuda:N, or a comma list (an absent GPU gives skipped rows).",
)
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed calls per row.")
@click.option("--iters", type=int, default=None, help="Timed calls per row (instead of --seconds).")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Time budget per row; at least 5 calls.")
@click.option(
    "--no-peak",
    is_flag=True,
    help="Skip the GEMM peak and conv ceiling measurements (no % peak / % conv columns).",
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
@click.option(
    "--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None, help="Write the report as markdown."
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write a bar chart of frames/s (needs matplotlib).",
)
@click.option(
    "--onnx",
    "onnx_models",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="An existing ONNX export of MODEL to time instead of exporting afresh (repeatable: "
    "one fp32, one fp16); parity shows whether it still matches MODEL.",
)
@click.option(
    "--video",
    type=click.Path(dir_okay=False),
    default=None,
    help="A real clip for the end-to-end row: the upscale pipeline vs the backend alone.",
)
@click.option("--video-frames", type=int, default=8, show_default=True, help="Frames of --video to use.")
@click.option("--video-width", type=int, default=None, help="Scale the --video clip to this width first.")
@realism_options
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def benchmark(
    model: str,
    backends: str,
    precisions: str | None,
    sizes: str,
    batch_sizes: str,
    device: str,
    warmup: int,
    iters: int | None,
    seconds: float,
    no_peak: bool,
    json_path: str | None,
    markdown_path: str | None,
    plot_path: str | None,
    onnx_models: tuple[str, ...],
    video: str | None,
    video_frames: int,
    video_width: int | None,
    realism: float | None,
    gan_model: str | None,
    quiet: bool,
) -> None:
    """Time PyTorch, ONNX Runtime and TensorRT side by side and check that they agree.

    MODEL is a checkpoint, `default`, an .onnx file or an .engine. Prints a table: median ms per
    batch (p10-p90), frames/s, output Mpixel/s, achieved GFLOP/s and share of a measured GEMM
    peak, speed-up vs PyTorch fp32, parity vs PyTorch fp32 (PSNR dB, max abs), peak memory.
    Backends that cannot run here are listed as skipped with the reason.
    """
    from ..bench import (
        check_output_path,
        command_line,
        format_table,
        parse_list,
        parse_size,
        run_benchmark,
        write_json,
        write_markdown,
        write_plot,
    )

    requested = model  # the command that reproduces a blend names its ends, not the cached blend file
    model = with_realism(model, gan_model, realism)
    size_list = [parse_size(s) for s in parse_list(sizes, what="size")]
    try:
        batch_list = [int(b) for b in parse_list(batch_sizes, what="batch size")]
    except ValueError:
        raise InputError(f"bad --batch-sizes {batch_sizes!r}: expected integers, e.g. 1,4") from None
    for path, suffixes in ((json_path, (".json",)), (markdown_path, (".md", ".markdown")), (plot_path, PLOT_SUFFIXES)):
        if path:
            check_output_path(path, suffixes)  # before the run, not after minutes of timing
    if plot_path:
        from ..util.plot import pyplot

        pyplot()  # matplotlib (the plot extra) is there, or one line now, before any timing
    report = run_benchmark(
        model,
        backends=backends,
        precisions=precisions,
        sizes=size_list,
        batch_sizes=batch_list,
        device=device,
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        measure_peak=not no_peak,
        command=command_line(requested, click.get_current_context().params),
        progress=not quiet,
        onnx_models=onnx_models,
        video=video,
        video_frames=video_frames,
        video_width=video_width,
    )
    click.echo(format_table(report))
    for path, writer in ((json_path, write_json), (markdown_path, write_markdown), (plot_path, write_plot)):
        if path:
            click.echo(f"wrote {writer(report, path)}", err=True)
    _fail_on_problems(report)


def _fail_on_problems(report: BenchReport) -> None:
    """A benchmark checks that the backends agree: the rows that failed or disagree with the
    reference (`BenchReport.problems`) are named on stderr and the command exits 1; a run in which
    no row could run here (`--device cuda` without a GPU) exits 2."""
    if report.rows and all(row.status == "skipped" for row in report.rows):
        raise InputError("no row could run on this machine (each one's reason is listed above)")
    problems = report.problems()
    for problem in problems:
        click.echo(f"  {problem}", err=True)
    if problems:
        raise SRDeployError(
            f"{len(problems)} row(s) failed or disagree with {report.reference} beyond the acceptance "
            "thresholds (listed above)"
        )
