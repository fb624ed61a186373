"""Options and option values that several commands share: the realism blend, the backend and
precision choices, the device option."""

from __future__ import annotations

import click

from ..backends.table import BACKEND_NAMES

BACKEND_CHOICE = click.Choice(BACKEND_NAMES)
PRECISION_CHOICE = click.Choice(["auto", "fp32", "fp16", "bf16"])

device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


def realism_options(func):
    """`--realism A` and `--gan-model PATH`: ESRGAN network interpolation at use time
    (`sr_deploy.realism.resolve_realism`)."""
    func = click.option(
        "--gan-model",
        default=None,
        metavar="PATH",
        help="The GAN end for --realism (default: the bundled partner: default-gan for default, "
        "default-real for default-real-psnr).",
    )(func)
    return click.option(
        "--realism",
        type=float,
        default=None,
        metavar="A",
        help="Blend the model with its GAN partner: 0 = the model (PSNR-oriented), 1 = the GAN "
        "model, between = network interpolation (ESRGAN).",
    )(func)


def with_realism(model: str, gan_model: str | None, realism: float | None) -> str:
    from ..realism import resolve_realism

    return resolve_realism(model, gan_model, realism)
