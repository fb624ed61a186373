"""`sr-deploy eval`: PSNR / SSIM (and LPIPS) of a model on benchmark sets."""

from __future__ import annotations

import click

from ..errors import InputError
from ..model_file import kind_of_file
from ..util.files import check_output_folder, check_output_path
from .options import BACKEND_CHOICE, PRECISION_CHOICE, device_option, realism_options, with_realism


@click.command(name="eval")
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
@click.option("--backend", default="auto", show_default=True, type=BACKEND_CHOICE, help="Inference runtime.")
@device_option
@click.option(
    "--precision",
    default="fp32",
    show_default=True,
    type=PRECISION_CHOICE,
    help="Inference precision: fp32 scores the same on every machine (auto: bf16 / fp16 where the device has it; "
    "an .onnx / .engine file: its own).",
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
    "--degrade",
    default=None,
    metavar="SPEC",
    help="Degrade the LR for a real-world table: comma list of blur=SIGMA (0-10, on HR, before the "
    "bicubic downscale), noise=SIGMA (0-100 8-bit levels, seeded per image), jpeg=QUALITY (integer "
    "1-100, OpenCV), e.g. noise=10,jpeg=60.",
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
@realism_options
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
    degrade: str | None,
    metrics: str,
    perceptual_weights: str | None,
    realism: float | None,
    gan_model: str | None,
    quiet: bool,
) -> None:
    """Score MODEL (a model file, `default`, or `bicubic`) on benchmark sets: PSNR / SSIM on Y,
    `scale` px borders cropped, LR by MATLAB bicubic, as the papers' tables; LPIPS on request."""
    from ..evaluation import parse_metrics, run_eval, write_json
    from ..realism import realism_blend

    metric_names = parse_metrics(metrics)
    source = click.get_current_context().get_parameter_source("precision")
    kind = kind_of_file(model)
    if source is click.core.ParameterSource.DEFAULT and kind is not None and kind.name != "checkpoint":
        precision = "auto"  # an exported file computes in its own precision: say that one, not fp32
    if json_path:
        check_output_path(json_path, (".json",))  # before the evaluation, not after it
    if save_dir:
        check_output_folder(save_dir)
    if model == "bicubic" and (realism is not None or gan_model is not None):
        raise InputError("--realism blends two models' weights; bicubic has none")
    blend = realism_blend(model, gan_model, realism)
    model = with_realism(model, gan_model, realism)
    description, results = run_eval(
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
        degrade=degrade,
        blend=blend,
    )
    if not quiet:
        for result in results:
            click.echo(result.table() + "\n")
    for result in results:
        click.echo(result.summary(description))
    if json_path:
        write_json(json_path, model, description, results, blend)
        click.echo(f"wrote {json_path}")
