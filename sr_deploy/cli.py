"""The `sr-deploy` command line: a click group, each command a thin wrapper over the library.

Errors: one line on stderr (`error: ...`), exit code 2 for bad usage or input, 1 for a runtime
failure, 130 for Ctrl-C. `--debug` (before the command) shows the traceback instead.
"""

from __future__ import annotations

import json
import traceback

import click

from . import __version__
from .errors import InputError, SRDeployError


class _Group(click.Group):
    """Maps every error raised by a command to one line on stderr and an exit code, so that
    the console script and click's CliRunner behave the same."""

    def invoke(self, ctx: click.Context):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except SRDeployError as exc:
            if debug:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except Exception as exc:  # unexpected: still one line unless --debug
            if debug:
                traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@click.version_option(__version__, prog_name="sr-deploy")
def cli(debug: bool) -> None:
    """Super-resolution from training to fast deployment: PyTorch, ONNX Runtime, TensorRT."""


def _not_implemented(command: str) -> None:
    raise InputError(f"sr-deploy {command}: not implemented yet")


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(model: str, as_json: bool) -> None:
    """Describe MODEL: a checkpoint path (ours, BasicSR, ESRGAN, leftthomas/SRGAN) or `default`."""
    from .models import count_flops_per_lr_pixel, count_parameters, load_checkpoint

    ckpt = load_checkpoint(model)
    desc = {
        "file": str(ckpt.path),
        "format": ckpt.source_format,
        "arch": ckpt.arch,
        "scale": ckpt.scale,
        "config": ckpt.config,
        "parameters": count_parameters(ckpt.model),
        "mflops_per_lr_pixel": round(count_flops_per_lr_pixel(ckpt.model) / 1e6, 3),
        "sha256": ckpt.sha256,
        "metadata": ckpt.metadata,
    }
    if as_json:
        click.echo(json.dumps(desc, indent=2, default=str))
        return
    click.echo(f"file:        {desc['file']}")
    click.echo(f"format:      {desc['format']}")
    click.echo(f"arch:        {desc['arch']} x{desc['scale']}")
    click.echo(f"config:      {', '.join(f'{k}={v}' for k, v in desc['config'].items())}")
    click.echo(f"parameters:  {desc['parameters']:,}")
    click.echo(f"FLOPs:       {desc['mflops_per_lr_pixel']:.2f} MFLOP per low-resolution pixel "
               f"({desc['mflops_per_lr_pixel'] * 1920 * 1080 / 16 / 1e3:.1f} GFLOP for a 1080p output at x4)")
    click.echo(f"sha256:      {desc['sha256']}")
    for key, value in desc["metadata"].items():
        click.echo(f"{key + ':':<12} {value}")


@cli.command(name="eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def eval_() -> None:
    """Score a model (or `bicubic`) on benchmark sets: PSNR / SSIM on Y, as the papers do."""
    _not_implemented("eval")


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write.")
@click.option("--static", "static", metavar="NxHxW", default=None, help="Fix batch, height and width (default: dynamic).")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset.")
@click.option("--exporter", type=click.Choice(["dynamo", "legacy"]), default="dynamo", show_default=True,
              help="torch.export based (falls back to legacy when it fails) or TorchScript based.")
@click.option("--fp16", is_flag=True, help="An fp16 graph with float32 inputs/outputs (for GPU runtimes).")
@click.option("--simplify", is_flag=True, help="Simplify the graph with onnxslim (keeps the dynamic dims).")
@click.option("--no-verify", is_flag=True, help="Skip the parity check against the torch float32 model.")
def export(model: str, output: str, static: str | None, opset: int, exporter: str, fp16: bool, simplify: bool,
           no_verify: bool) -> None:
    """Export MODEL (a .pt/.pth checkpoint or `default`) to one self-contained ONNX file.

    Dynamic batch/height/width, metadata, onnx.checker, then a parity check on Set5 crops
    against the torch float32 model (fp32: max abs <= 1e-4, fp16: PSNR >= 50 dB; exit 1 if not).
    """
    from .errors import SRDeployError as _Failure
    from .export import export_onnx

    def log(message: str) -> None:
        click.echo(message, err=True)

    try:
        result = export_onnx(model, output, opset=opset, static_shape=static, exporter=exporter, fp16=fp16,
                             simplify=simplify, verify=not no_verify, log=log)
    except _Failure as exc:
        report = getattr(exc, "parity", None)
        if report is not None:
            click.echo(report.table())
        raise
    shape = "x".join(map(str, result.static_shape)) if result.static_shape else "dynamic batch/height/width"
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB): {result.arch} x{result.scale}, "
               f"{result.precision}, opset {result.opset}, {shape}, {result.exporter} exporter, "
               f"{result.seconds:.1f} s")
    if result.fp16_block_list:
        click.echo(f"kept in fp32: {', '.join(result.fp16_block_list)}")
    if result.parity is not None:
        click.echo(result.parity.table())


@cli.command(name="build-engine", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def build_engine() -> None:
    """Build a TensorRT engine from an ONNX file (fp16, profiles, timing cache)."""
    _not_implemented("build-engine")


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="Output folder (created), or the output file for a single input (by its extension).")
@click.option("--model", default="default", show_default=True,
              help="Model file: .pt checkpoint, .onnx or .engine (or a bundled model name).")
@click.option("--backend", "backend_name", type=click.Choice(["auto", "torch", "onnxruntime", "tensorrt"]),
              default="auto", show_default=True, help="Runtime; auto: TensorRT for an engine, else the fastest.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto",
              show_default=True, help="Compute precision; auto: fp16 on CUDA, fp32 on the CPU.")
@click.option("--tile", type=int, default=None,
              help="Tile edge in input pixels; 0 turns tiling off; default: automatic from memory.")
@click.option("--tile-overlap", type=int, default=16, show_default=True,
              help="Input pixels of context on each side of a tile.")
@click.option("--batch-size", type=int, default=None,
              help="Tiles (images) or frames (videos) per backend call; default 4 (1 for images on CPU).")
@click.option("--outscale", type=float, default=None,
              help="Final size factor if not the model's scale (e.g. 3.5 with a x4 model).")
@click.option("--ext", type=click.Choice(["png", "jpg", "webp", "same"]), default="png", show_default=True,
              help="Output image format (ignored when OUT is a file name).")
@click.option("--overwrite", is_flag=True, help="Redo outputs that already exist (default: skip them).")
@click.option("--quality", type=click.IntRange(1, 101), default=None,
              help="JPEG/WebP quality (default 95; WebP 101 = lossless).")
@click.option("--codec", default=None, help="ffmpeg video encoder (default libx264; libvpx-vp9 for .webm).")
@click.option("--crf", type=int, default=18, show_default=True, help="Video quality (lower is better).")
@click.option("--preset", default="medium", show_default=True, help="x264/x265 speed preset.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def upscale(inputs: tuple[str, ...], output: str, model: str, backend_name: str, device: str, precision: str,
            tile: int | None, tile_overlap: int, batch_size: int | None, outscale: float | None, ext: str,
            overwrite: bool, quality: int | None, codec: str | None, crf: int, preset: str,
            no_progress: bool) -> None:
    """Upscale images, folders and videos with any backend, tiled, nothing lost.

    INPUT may be image files (png, jpg, webp, bmp, tiff), video files (mp4, mkv, mov, avi, webm)
    and folders (recursive; the tree is kept under OUT), mixed. Outputs are written under a
    temporary name and renamed when complete; existing outputs are skipped (re-run to resume).
    """
    import signal

    from .upscale import UpscaleOptions
    from .upscale import upscale as run_upscale

    options = UpscaleOptions(model=model, backend=backend_name, device=device, precision=precision, tile=tile,
                             tile_overlap=tile_overlap, batch_size=batch_size, outscale=outscale, ext=ext,
                             overwrite=overwrite, quality=quality, codec=codec, crf=crf, preset=preset,
                             progress=not no_progress)

    def terminate(signum: int, frame: object) -> None:  # `kill`: clean up like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        summary = run_upscale(inputs, output, options)
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(summary.line(), err=True)
    if summary.failed:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("model")
@click.option("--backends", default="torch,torch-nchw,onnxruntime,tensorrt", show_default=True,
              help="Comma list of torch (channels_last), torch-nchw, onnxruntime, tensorrt; "
                   "NAME@DEVICE pins one to a device (onnxruntime@cpu).")
@click.option("--precisions", default=None,
              help="Comma list of fp32, fp16, bf16 [default: fp32 on the CPU, fp32,fp16 on CUDA].")
@click.option("--sizes", default="128x128,270x480", show_default=True,
              help="Low-resolution input sizes, HEIGHTxWIDTH, comma separated.")
@click.option("--batch-sizes", default="1", show_default=True, help="Frames per call, comma separated.")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda, cuda:N, or a comma list (an absent GPU gives skipped rows).")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed calls per row.")
@click.option("--iters", type=int, default=None, help="Timed calls per row (instead of --seconds).")
@click.option("--seconds", type=float, default=2.0, show_default=True,
              help="Time budget per row; at least 5 calls.")
@click.option("--no-peak", is_flag=True, help="Skip the matmul peak measurement (no % peak column).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the report as JSON.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Write the report as markdown.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a bar chart of frames/s (needs matplotlib).")
@click.option("--onnx", "onnx_models", multiple=True, type=click.Path(dir_okay=False),
              help="An existing ONNX export of MODEL to time instead of exporting afresh (repeatable: "
                   "one fp32, one fp16); parity shows whether it still matches MODEL.")
@click.option("--video", type=click.Path(dir_okay=False), default=None,
              help="A real clip for the end-to-end row: the upscale pipeline vs the backend alone.")
@click.option("--video-frames", type=int, default=8, show_default=True, help="Frames of --video to use.")
@click.option("--video-width", type=int, default=None, help="Scale the --video clip to this width first.")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
def benchmark(model: str, backends: str, precisions: str | None, sizes: str, batch_sizes: str, device: str,
              warmup: int, iters: int | None, seconds: float, no_peak: bool, json_path: str | None,
              markdown_path: str | None, plot_path: str | None, onnx_models: tuple[str, ...], video: str | None,
              video_frames: int, video_width: int | None, quiet: bool) -> None:
    """Time PyTorch, ONNX Runtime and TensorRT side by side and check that they agree.

    MODEL is a checkpoint, `default`, an .onnx file or an .engine. Prints a table: median ms per
    batch (p10-p90), frames/s, output Mpixel/s, achieved GFLOP/s and share of a measured matmul
    peak, speed-up vs PyTorch fp32, parity vs PyTorch fp32 (PSNR dB, max abs), peak memory.
    Backends that cannot run here are listed as skipped with the reason.
    """
    from .bench import (check_output_path, command_line, format_table, parse_list, parse_size, run_benchmark,
                        write_json, write_markdown, write_plot)

    size_list = [parse_size(s) for s in parse_list(sizes, what="size")]
    try:
        batch_list = [int(b) for b in parse_list(batch_sizes, what="batch size")]
    except ValueError:
        raise InputError(f"bad --batch-sizes {batch_sizes!r}: expected integers, e.g. 1,4") from None
    for path in (json_path, markdown_path, plot_path):
        if path:
            check_output_path(path)  # before the run, not after minutes of timing
    report = run_benchmark(
        model, backends=backends, precisions=precisions, sizes=size_list, batch_sizes=batch_list,
        device=device, warmup=warmup, iters=iters, seconds=seconds, measure_peak=not no_peak,
        command=command_line(model, click.get_current_context().params),
        progress=not quiet, onnx_models=onnx_models, video=video, video_frames=video_frames,
        video_width=video_width,
    )
    click.echo(format_table(report))
    for path, writer in ((json_path, write_json), (markdown_path, write_markdown), (plot_path, write_plot)):
        if path:
            click.echo(f"wrote {writer(report, path)}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`sr-deploy`)."""
    cli.main(args=argv, prog_name="sr-deploy")


if __name__ == "__main__":
    main()
