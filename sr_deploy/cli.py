"""The `sr-deploy` command line: a click group, each command a thin wrapper over the library.

Errors: one line on stderr (`error: ...`), exit code 2 for bad usage or input, 1 for a runtime
failure, 130 for Ctrl-C. `--debug` (before the command) shows the traceback instead.
"""

# long-module: one thin click command per subcommand; their one-decorator-per-option declarations and one-parameter-per-line signatures are most of the lines
from __future__ import annotations

import json
import traceback
from pathlib import Path

import click

from . import __version__
from .backends.table import BACKEND_NAMES, bench_names
from .errors import InputError, SRDeployError, first_line


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
            first = first_line(exc, limit=10_000) if str(exc).strip() else ""
            click.echo(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
@click.version_option(__version__, prog_name="sr-deploy")
def cli(debug: bool) -> None:
    """Super-resolution from training to fast deployment: PyTorch, ONNX Runtime, TensorRT."""


def _realism_options(func):
    """`--realism A` and `--gan-model PATH`: ESRGAN network interpolation at use time
    (`sr_deploy.realism.resolve_realism`)."""
    func = click.option(
        "--gan-model",
        default=None,
        metavar="PATH",
        help="The GAN end for --realism (default: default-gan when the model is default).",
    )(func)
    return click.option(
        "--realism",
        type=float,
        default=None,
        metavar="A",
        help="Blend the model with its GAN partner: 0 = the model (PSNR-oriented), 1 = the GAN "
        "model, between = network interpolation (ESRGAN).",
    )(func)


def _with_realism(model: str, gan_model: str | None, realism: float | None) -> str:
    from .realism import resolve_realism

    return resolve_realism(model, gan_model, realism)


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(model: str, as_json: bool) -> None:
    """Describe MODEL: a checkpoint (.pt/.pth/.ckpt/.safetensors: ours, BasicSR, ESRGAN,
    leftthomas/SRGAN, or any architecture spandrel knows) or `default`."""
    from .backends.cpu_precision import auto_precision
    from .backends.torch_backend import resolve_device
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
        "size_multiple": ckpt.size_multiple,
        "notes": ckpt.notes,
        "metadata": ckpt.metadata,
    }
    choice = auto_precision(ckpt.model, ckpt.sha256, ckpt.scale, resolve_device("auto"))
    desc["auto_precision"] = {"precision": choice.precision, "reason": choice.reason}
    if as_json:
        click.echo(json.dumps(desc, indent=2, default=str))
        return
    click.echo(f"file:        {desc['file']}")
    click.echo(f"format:      {desc['format']}")
    click.echo(f"arch:        {desc['arch']} x{desc['scale']}")
    click.echo(f"config:      {', '.join(f'{k}={v}' for k, v in desc['config'].items())}")
    click.echo(f"parameters:  {desc['parameters']:,}")
    lr_pixels = 1920 * 1080 / max(1, desc["scale"]) ** 2
    click.echo(
        f"FLOPs:       {desc['mflops_per_lr_pixel']:.2f} MFLOP per low-resolution pixel "
        f"({desc['mflops_per_lr_pixel'] * lr_pixels / 1e3:.1f} GFLOP for a 1080p output at x{desc['scale']})"
    )
    click.echo(f"sha256:      {desc['sha256']}")
    click.echo(f"precision:   auto here = {desc['auto_precision']['reason']}")
    if ckpt.size_multiple > 1:
        click.echo(f"input size:  padded inside to a multiple of {ckpt.size_multiple} (any size works)")
    for note in ckpt.notes:
        click.echo(f"note:        {note}")
    for key, value in desc["metadata"].items():
        click.echo(f"{key + ':':<12} {value}")


@cli.command()
@click.argument("output", type=click.Path(dir_okay=False), default="sample.png")
def sample(output: str) -> None:
    """Write a small test picture of sr-deploy's own making (text, lines, fine rings) to OUTPUT."""
    from .sample import write_sample_image

    target = Path(output)
    if not target.parent.is_dir():
        raise InputError(f"{target}: folder {target.parent} does not exist")
    click.echo(f"wrote {write_sample_image(target)}")


@cli.command(name="eval")
@click.argument("model")
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    required=True,
    type=click.Path(path_type=str),
    help="Folder of HR images (Set5, Set14...); repeat for several.",
)
@click.option(
    "--scale",
    default=None,
    type=int,
    help="Upscaling factor [default: the model's own; 4 for bicubic]; must match the model.",
)
@click.option(
    "--backend", default="auto", show_default=True, type=click.Choice(BACKEND_NAMES), help="Inference runtime."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--precision",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
    help="Inference precision.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=str),
    help="Also write the scores to this JSON file.",
)
@click.option(
    "--save-dir", type=click.Path(file_okay=False, path_type=str), help="Write the scored SR images to DIR/<dataset>/."
)
@click.option(
    "--lr-dir",
    "lr_dirs",
    multiple=True,
    type=click.Path(path_type=str),
    help="Ready-made LR images (one folder per --dataset, same order) instead of bicubic.",
)
@click.option(
    "--metrics", default="psnr,ssim", show_default=True, help="Comma list of psnr, ssim, lpips (LPIPS-Alex), lpips-vgg."
)
@click.option(
    "--perceptual-weights",
    default=None,
    metavar="PATH",
    help="LPIPS weights: lpips_alexnet_imagenet.npz / lpips_vgg16_imagenet.npz or their folder "
    "[default: $SR_DEPLOY_PERCEPTUAL_WEIGHTS, the torch hub cache, ~/.cache/sr_deploy/perceptual].",
)
@_realism_options
@click.option("--quiet", is_flag=True, help="Only the one-line summaries, no per-image table or progress.")
def eval_(
    model: str,
    datasets: tuple[str, ...],
    scale: int | None,
    backend: str,
    device: str,
    precision: str,
    json_path: str | None,
    save_dir: str | None,
    lr_dirs: tuple[str, ...],
    metrics: str,
    perceptual_weights: str | None,
    realism: float | None,
    gan_model: str | None,
    quiet: bool,
) -> None:
    """Score MODEL (a model file, `default`, or `bicubic`) on benchmark sets: PSNR / SSIM on Y,
    `scale` px borders cropped, LR by MATLAB bicubic, as the papers' tables; LPIPS on request."""
    from .evaluation import parse_metrics, run_eval, write_json

    metric_names = parse_metrics(metrics)
    model = _with_realism(model, gan_model, realism)
    upscaler, results = run_eval(
        model,
        datasets,
        scale,
        backend=backend,
        device=device,
        precision=precision,
        lr_dirs=lr_dirs or None,
        save_dir=save_dir,
        progress=not quiet,
        metrics=metric_names,
        perceptual_weights=perceptual_weights,
    )
    if not quiet:
        for result in results:
            click.echo(result.table() + "\n")
    for result in results:
        click.echo(result.summary(upscaler.description))
    if json_path:
        write_json(json_path, model, upscaler.description, results)
        click.echo(f"wrote {json_path}")


# long: the Triton-repository branch and the realism blend come before the hand-over to export_onnx; its options are one decorator each
@cli.command()
@click.argument("model")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="The .onnx file to write (required unless --triton-repo)."
)
@click.option(
    "--static", "static", metavar="NxHxW", default=None, help="Fix batch, height and width (default: dynamic)."
)
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset.")
@click.option(
    "--exporter",
    type=click.Choice(["dynamo", "legacy"]),
    default="dynamo",
    show_default=True,
    help="torch.export based (falls back to legacy when it fails) or TorchScript based.",
)
@click.option("--fp16", is_flag=True, help="An fp16 graph with float32 inputs/outputs (for GPU runtimes).")
@click.option("--simplify", is_flag=True, help="Simplify the graph with onnxslim (keeps the dynamic dims).")
@click.option("--no-verify", is_flag=True, help="Skip the parity check against the torch float32 model.")
@click.option(
    "--triton-repo",
    type=click.Path(file_okay=False),
    default=None,
    help="Write a Triton Inference Server model repository here (config.pbtxt, model, README).",
)
@click.option("--name", "triton_name", default="sr_deploy", show_default=True, help="Triton model name.")
@click.option(
    "--triton-flavour",
    type=click.Choice(["onnx", "python"]),
    default="onnx",
    show_default=True,
    help="onnx: onnxruntime_onnx (+ tensorrt_plan with --engine); python: a Python-backend model "
    "running MODEL (.pt, .onnx or .engine) through sr-deploy.",
)
@click.option(
    "--engine",
    type=click.Path(dir_okay=False),
    default=None,
    help="A TensorRT engine of MODEL (with its sidecar JSON) to add as NAME_trt.",
)
@click.option(
    "--triton-kind",
    type=click.Choice(["gpu", "cpu", "auto"]),
    default="gpu",
    show_default=True,
    help="Instance group kind.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Triton max_batch_size (a plan's comes from its profile).",
)
@_realism_options
@click.option(
    "--backend",
    "triton_backend",
    type=click.Choice(["auto", "torch", "onnxruntime", "tensorrt"]),
    default="auto",
    show_default=True,
    help="Python flavour: the sr-deploy backend the server runs.",
)
def export(
    model: str,
    output: str | None,
    static: str | None,
    opset: int,
    exporter: str,
    fp16: bool,
    simplify: bool,
    no_verify: bool,
    triton_repo: str | None,
    triton_name: str,
    triton_flavour: str,
    engine: str | None,
    triton_kind: str,
    max_batch: int,
    realism: float | None,
    gan_model: str | None,
    triton_backend: str,
) -> None:
    """Export MODEL (a .pt/.pth/.ckpt/.safetensors checkpoint or `default`) to one self-contained ONNX file.

    Dynamic batch/height/width where the architecture allows (else a static graph, said why),
    metadata, onnx.checker, then a parity check on Set5 crops
    against the torch float32 model (fp32: max abs <= 1e-4, fp16: PSNR >= 50 dB; exit 1 if not).
    With --triton-repo DIR, also (or only) a Triton model repository in DIR.
    """
    from .errors import SRDeployError as _Failure
    from .export import export_onnx

    def log(message: str) -> None:
        click.echo(message, err=True)

    model = _with_realism(model, gan_model, realism)
    if output is None and triton_repo is None:
        raise InputError("give -o MODEL.onnx, --triton-repo DIR, or both")
    if triton_repo is not None and (output is None or triton_flavour == "python"):
        from .triton import write_triton_repository

        if static or fp16 or simplify or exporter != "dynamo":
            raise InputError(
                "--static/--fp16/--simplify/--exporter apply to -o: export with -o first, then "
                "pass that .onnx as MODEL with --triton-repo"
            )
        repo = write_triton_repository(
            model,
            triton_repo,
            name=triton_name,
            flavour=triton_flavour,
            engine=engine,
            kind=triton_kind,
            max_batch=max_batch,
            backend=triton_backend,
            opset=opset,
            verify=not no_verify,
            log=log,
        )
        click.echo(
            f"wrote Triton repository {repo.path} ({', '.join(m.name for m in repo.models)}; {repo.readme.name})"
        )
        if output is None:
            return

    try:
        result = export_onnx(
            model,
            output,
            opset=opset,
            static_shape=static,
            exporter=exporter,
            fp16=fp16,
            simplify=simplify,
            verify=not no_verify,
            log=log,
        )
    except _Failure as exc:
        report = getattr(exc, "parity", None)
        if report is not None:
            click.echo(report.table())
        raise
    shape = "x".join(map(str, result.static_shape)) if result.static_shape else "dynamic batch/height/width"
    click.echo(
        f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB): {result.arch} x{result.scale}, "
        f"{result.precision}, opset {result.opset}, {shape}, {result.exporter} exporter, "
        f"{result.seconds:.1f} s"
    )
    if result.fp16_block_list:
        click.echo(f"kept in fp32: {', '.join(result.fp16_block_list)}")
    if result.parity is not None:
        click.echo(result.parity.table())
    if triton_repo is not None and triton_flavour == "onnx":
        from .triton import write_triton_repository

        repo = write_triton_repository(
            model,
            triton_repo,
            name=triton_name,
            engine=engine,
            onnx_file=result.path,
            kind=triton_kind,
            max_batch=max_batch,
            log=log,
        )
        click.echo(
            f"wrote Triton repository {repo.path} ({', '.join(m.name for m in repo.models)}; {repo.readme.name})"
        )


@cli.command(name="build-engine")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Engine file [default: MODEL with .engine].")
@click.option(
    "--fp16",
    "precision",
    flag_value="fp16",
    default=True,
    help="fp16 engine [default]: BuilderFlag.FP16 on TensorRT 10, an fp16 ONNX on TensorRT 11.",
)
@click.option("--bf16", "precision", flag_value="bf16", help="bf16 engine (TensorRT 10 only).")
@click.option("--fp32", "precision", flag_value="fp32", help="float32 reference engine (TF32 off).")
@click.option("--min", "min_shape", metavar="NxCxHxW", help="Smallest input [default: 1x3x64x64].")
@click.option("--opt", "opt_shape", metavar="NxCxHxW", help="Input shape tuned for [default: 1x3x270x480].")
@click.option(
    "--max", "max_shape", metavar="NxCxHxW", help="Largest input; larger ones are tiled [default: 4x3x540x960]."
)
@click.option("--static", "static_shape", metavar="NxHxW", help="One fixed input shape instead of min/opt/max.")
@click.option("--workspace", type=float, default=4.0, show_default=True, help="Builder workspace limit, GiB.")
@click.option(
    "--opt-level",
    type=click.IntRange(0, 5),
    default=None,
    help="Builder optimization level 0-5 [default: TensorRT's, 3].",
)
@click.option(
    "--timing-cache", type=click.Path(dir_okay=False), help="Timing cache file [default: ENGINE.timing-cache]."
)
@click.option(
    "--fallback-static/--no-fallback-static",
    default=True,
    show_default=True,
    help="Retry a failed dynamic build once with the opt shape static.",
)
@click.option(
    "--strongly-typed",
    is_flag=True,
    help="TensorRT 10.12+: build from an fp16 ONNX on a strongly "
    "typed network instead of BuilderFlag.FP16 (always so on TensorRT 11).",
)
@click.option("--no-parity", is_flag=True, help="Skip the parity check against ONNX Runtime after the build.")
@click.option("--verbose", is_flag=True, help="Show TensorRT's build log (always written to ENGINE.build.log).")
def build_engine(
    model: str,
    output: str | None,
    precision: str,
    min_shape: str | None,
    opt_shape: str | None,
    max_shape: str | None,
    static_shape: str | None,
    workspace: float,
    opt_level: int | None,
    timing_cache: str | None,
    fallback_static: bool,
    strongly_typed: bool,
    no_parity: bool,
    verbose: bool,
) -> None:
    """Build a TensorRT engine from MODEL.onnx (fp16, profiles, timing cache), checked for parity."""
    from .backends.trt_build import build_engine as build
    from .engine import resolve_profile

    profile = resolve_profile(min_shape, opt_shape, max_shape, static_shape)
    result = build(
        model,
        output,
        precision=precision,
        profile=profile,
        workspace_gib=workspace,
        opt_level=opt_level,
        timing_cache=timing_cache,
        fallback_static=fallback_static,
        strongly_typed=strongly_typed,
        verbose=verbose,
        check_parity=not no_parity,
    )
    click.echo(f"{result.engine_path}  (sidecar {result.engine_path}.json)")


# long: its 27 options take a line each after `ruff format`; the body itself is 64 lines
@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=str),
    help="Output folder (created), or the output file for a single input (by its extension).",
)
@click.option(
    "--model",
    default="default",
    show_default=True,
    help="Model file: .pt checkpoint, .onnx or .engine (or a bundled model name).",
)
@click.option(
    "--backend",
    "backend_name",
    type=click.Choice(BACKEND_NAMES),
    default="auto",
    show_default=True,
    help="Runtime; auto: TensorRT for an engine, else the fastest.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
    default="auto",
    show_default=True,
    help="Compute precision; auto: fp16 on CUDA; on the CPU bf16 where the CPU has bf16 instructions, "
    "bf16 measures faster and the model's bf16 parity is >= 50 dB, else fp32.",
)
@click.option(
    "--tile",
    type=int,
    default=None,
    help="Tile edge in input pixels; 0 turns tiling off; default: automatic from memory.",
)
@click.option(
    "--tile-overlap", type=int, default=16, show_default=True, help="Input pixels of context on each side of a tile."
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Tiles (images) or frames (videos) per backend call; default 4 (1 for images on CPU).",
)
@click.option(
    "--outscale",
    type=float,
    default=None,
    help="Final size factor if not the model's scale (e.g. 3.5 with a x4 model).",
)
@click.option(
    "--ext",
    type=click.Choice(["png", "jpg", "webp", "same"]),
    default="png",
    show_default=True,
    help="Output image format (ignored when OUT is a file name).",
)
@click.option("--overwrite", is_flag=True, help="Redo outputs that already exist (default: skip them).")
@click.option(
    "--quality", type=click.IntRange(1, 101), default=None, help="JPEG/WebP quality (default 95; WebP 101 = lossless)."
)
@click.option(
    "--codec",
    default=None,
    help="FFmpeg video encoder (default libx264; libvpx-vp9 for .webm; "
    "h264_nvenc / hevc_nvenc where the build and GPU have them).",
)
@click.option("--crf", type=int, default=18, show_default=True, help="Video quality, lower is better (NVENC: -cq).")
@click.option("--preset", default="medium", show_default=True, help="Encoder speed preset (x264/x265/SVT-AV1/NVENC).")
@click.option(
    "--pix-fmt",
    default=None,
    help="Encoder pixel format, e.g. yuv420p10le [default: yuv420p, 10-bit for a > 8-bit input].",
)
@click.option("--hwaccel", default=None, help="Hardware video decoding: an FFmpeg device type, e.g. cuda (NVDEC).")
@click.option(
    "--allow-partial",
    is_flag=True,
    help="Keep what decodes of a damaged video, as NAME.partial.EXT (default: a damaged video is an error).",
)
@click.option(
    "--segment-seconds",
    type=float,
    default=2.0,
    show_default=True,
    help="Videos are encoded in resumable segments of about this length (0: one segment).",
)
@_realism_options
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ADDRESS]",
    help="Run on a Ray cluster (needs sr-deploy[ray]): the one at ADDRESS (auto, HOST:6379, "
    "ray://HOST:10001) or RAY_ADDRESS, else a new local one for this run; each video segment is "
    "a task. Write --ray=ADDRESS or put --ray after the inputs.",
)
@click.option(
    "--ray-actors",
    type=click.IntRange(min=1),
    default=None,
    help="With --ray: actors (backend copies) [default: one per GPU of the cluster, else one per CPU].",
)
def upscale(
    inputs: tuple[str, ...],
    output: str,
    model: str,
    backend_name: str,
    device: str,
    precision: str,
    tile: int | None,
    tile_overlap: int,
    batch_size: int | None,
    outscale: float | None,
    ext: str,
    overwrite: bool,
    quality: int | None,
    codec: str | None,
    crf: int,
    preset: str,
    pix_fmt: str | None,
    hwaccel: str | None,
    allow_partial: bool,
    segment_seconds: float,
    realism: float | None,
    gan_model: str | None,
    no_progress: bool,
    ray_address: str | None,
    ray_actors: int | None,
) -> None:
    """Upscale images, folders and videos with any backend, tiled, nothing lost.

    INPUT may be image files (png, jpg, webp, bmp, tiff), video files (mp4, mkv, mov, avi, webm)
    and folders (recursive; the tree is kept under OUT), mixed. Outputs are written under a
    temporary name and renamed when complete; existing outputs are skipped (re-run to resume).
    """
    import signal

    from .upscale import UpscaleOptions
    from .upscale import upscale as run_upscale

    model = _with_realism(model, gan_model, realism)
    options = UpscaleOptions(
        model=model,
        backend=backend_name,
        device=device,
        precision=precision,
        tile=tile,
        tile_overlap=tile_overlap,
        batch_size=batch_size,
        outscale=outscale,
        ext=ext,
        overwrite=overwrite,
        quality=quality,
        codec=codec,
        crf=crf,
        preset=preset,
        pix_fmt=pix_fmt,
        hwaccel=hwaccel,
        allow_partial=allow_partial,
        segment_seconds=segment_seconds,
        progress=not no_progress,
    )

    def terminate(signum: int, frame: object) -> None:  # `kill`: clean up like Ctrl-C
        raise KeyboardInterrupt

    if ray_address and Path(ray_address).exists():
        raise InputError(
            f"--ray took {ray_address!r} (an input) as the cluster address: write --ray=ADDRESS "
            "or put --ray after the inputs"
        )
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        if ray_address is not None:
            from .cluster import RayOptions, upscale_on_ray

            summary = upscale_on_ray(
                inputs, output, options, RayOptions(address=ray_address or None, actors=ray_actors)
            )
        else:
            summary = run_upscale(inputs, output, options)
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(summary.line(), err=True)
    # Say where the results are (stdout, so scripts can read it).
    if len(summary.done) == 1:
        click.echo(f"result: {summary.done[0]}")
    elif summary.done:
        click.echo(f"results: {len(summary.done)} files under {output}")
    if summary.partial:
        click.echo(f"partial: {', '.join(str(p) for p in summary.partial)}")
    if summary.failed:
        raise click.exceptions.Exit(summary.exit_code())


@cli.command()
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
@click.option("--no-peak", is_flag=True, help="Skip the GEMM peak measurement (no % peak column).")
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
@_realism_options
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
    from .bench import (
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

    model = _with_realism(model, gan_model, realism)
    size_list = [parse_size(s) for s in parse_list(sizes, what="size")]
    try:
        batch_list = [int(b) for b in parse_list(batch_sizes, what="batch size")]
    except ValueError:
        raise InputError(f"bad --batch-sizes {batch_sizes!r}: expected integers, e.g. 1,4") from None
    for path in (json_path, markdown_path, plot_path):
        if path:
            check_output_path(path)  # before the run, not after minutes of timing
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
        command=command_line(model, click.get_current_context().params),
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


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`sr-deploy`)."""
    cli.main(args=argv, prog_name="sr-deploy")


if __name__ == "__main__":
    main()
