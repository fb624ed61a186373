"""`sr-deploy upscale`: images, folders and videos, here or on a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import InputError
from ..formats import OUTPUT_IMAGE_FORMATS, image_format, video_container
from .options import BACKEND_CHOICE, PRECISION_CHOICE, device_option, realism_options, with_realism


@click.command()
# Not required=True: `--ray IN.png -o X` takes IN.png as the address, and says so (`_check_ray_usage`).
@click.argument("inputs", nargs=-1, metavar="INPUTS...", type=click.Path(path_type=str))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=str),
    help="Output folder (created), or the output file for a single input (by its extension).",
)
@click.option(
    "--model",
    default=None,
    help="Model file: .pt checkpoint, .onnx or .engine, or a bundled model name.  [default: "
    "default-real, made for compressed and noisy photos and video; with --realism: default-real-psnr]",
)
@click.option(
    "--backend",
    "backend_name",
    type=BACKEND_CHOICE,
    default="auto",
    show_default=True,
    help="Runtime; auto: TensorRT for an engine, else the fastest.",
)
@device_option
@click.option(
    "--precision",
    type=PRECISION_CHOICE,
    default="auto",
    show_default=True,
    help="Compute precision; auto: fp16 on CUDA; on the CPU bf16 where the CPU has bf16 instructions "
    "and the model's bf16 parity is >= 50 dB, else fp32 (decided once per job, never from a timing).",
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
    type=click.Choice(list(OUTPUT_IMAGE_FORMATS)),
    default="png",
    show_default=True,
    help="Output image format (ignored when OUT is a file name).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help=(
        "Redo outputs that already exist (default: skip the ones this run would make again; "
        "ones another model, other settings or another input made fail)."
    ),
)
@click.option(
    "--quality", type=click.IntRange(1, 101), default=None, help="JPEG/WebP quality (default 95; WebP 101 = lossless)."
)
@click.option(
    "--codec",
    default=None,
    help="FFmpeg video encoder (default libx264, libx265 for a 10-bit input; libvpx-vp9 for .webm; "
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
@click.option(
    "--dedup-threshold",
    default="exact",
    show_default=True,
    metavar="DB|exact|off",
    help="Videos: a frame identical to the last one the model ran on reuses its output (exact); a "
    "number of dB also reuses it for frames at least that close (PSNR, e.g. 50); off runs the model "
    "on every frame.",
)
@click.option(
    "--max-pixels",
    type=int,
    default=None,
    help="Refuse images, and videos whose frames have, more pixels than this (read before decoding) "
    "[default: what fits in the memory available now].",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="CPU threads of the inference; every worker of the job (Ray actors too, each reserving "
    "that many CPUs) runs with it, for the same bytes everywhere [default: one per core here; "
    "with --ray at most the largest node's CPUs].",
)
@realism_options
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
    model: str | None,
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
    dedup_threshold: str,
    max_pixels: int | None,
    threads: int | None,
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
    from ..upscale import DEFAULT_UPSCALE_MODEL, DEFAULT_UPSCALE_PSNR_MODEL, UpscaleOptions
    from ..video import parse_threshold

    _check_ray_usage(inputs, ray_address, ray_actors)
    if model is None:  # --realism alone blends the real-world pair: 0 = its L1 twin, 1 = default-real
        blending = realism is not None or gan_model is not None
        model = DEFAULT_UPSCALE_PSNR_MODEL if blending else DEFAULT_UPSCALE_MODEL
    model = with_realism(model, gan_model, realism)
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
        dedup_threshold=parse_threshold(dedup_threshold),
        max_pixels=max_pixels,
        threads=threads,
    )

    _run(inputs, output, options, ray_address, ray_actors)


def _check_ray_usage(inputs: tuple[str, ...], ray_address: str | None, ray_actors: int | None) -> None:
    """Usage errors (exit 2) of --ray: an input taken as its address (``--ray IN.png -o X``: click
    gives --ray the next word), and --ray-actors without --ray (it would be ignored)."""
    if ray_address and (
        Path(ray_address).exists()
        or ("://" in ray_address and not ray_address.startswith("ray://"))
        or (not inputs and (image_format(ray_address) or video_container(ray_address)))  # --ray typo.png -o X
    ):
        raise InputError(
            f"--ray took {ray_address!r} (an input) as the cluster address: write --ray=ADDRESS "
            "or put --ray after the inputs"
        )
    if not inputs:
        raise click.UsageError("Missing argument 'INPUTS...'.")
    if ray_actors is not None and ray_address is None:
        raise click.UsageError("--ray-actors is for --ray runs: add --ray, or leave --ray-actors out")


def _run(inputs: tuple[str, ...], output: str, options: Any, ray_address: str | None, ray_actors: int | None) -> None:
    """Run here or on Ray (SIGTERM cleans up like Ctrl-C), then say where the results are."""
    import signal

    from ..upscale import upscale as run_upscale
    from ..upscale.stored import upscale_stored, uses_store
    from ..util.text import shown

    def terminate(signum: int, frame: object) -> None:  # `kill`: clean up like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        if ray_address is not None:
            from ..cluster import RayOptions, upscale_on_ray

            summary = upscale_on_ray(
                inputs, output, options, RayOptions(address=ray_address or None, actors=ray_actors)
            )
        elif uses_store(inputs, output):
            summary = upscale_stored(inputs, output, options)
        else:
            summary = run_upscale(inputs, output, options)
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(summary.line(), err=True)
    # Say where the results are (stdout, so scripts can read it).
    if len(summary.done) == 1:
        click.echo(f"result: {shown(summary.done[0])}")
    elif summary.done:
        click.echo(f"results: {len(summary.done)} files under {shown(output)}")
    if summary.partial:
        click.echo(f"partial: {', '.join(shown(p) for p in summary.partial)}")
    if summary.failed:
        raise click.exceptions.Exit(summary.exit_code())
