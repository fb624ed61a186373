"""Network interpolation (ESRGAN, Wang et al. 2018, Sec. 3.4): theta = (1 - alpha) * theta_PSNR
+ alpha * theta_GAN, parameter by parameter, between two generators of the same architecture;
and its transfer onto a third generator (``--onto``): theta = theta_BASE + alpha * (theta_GAN -
theta_PSNR), the GAN fine-tuning's weight change ("task vector", Ilharco et al. 2023) added to
another fine-tuning of the same PSNR model.

    python -m train.interpolate psnr.pt gan.pt --alpha 0.8 -o out.pt
    python -m train.interpolate default default-gan --onto realesrnet.pt --alpha 1 -o real-gan-init.pt

alpha 0 gives the first model (or BASE) exactly, alpha 1 the second (without ``--onto``); inputs
may be any layout that `sr_deploy.models.load_checkpoint` reads; the output is an sr-deploy
checkpoint. The blending itself lives in `sr_deploy.realism`, which also serves ``sr-deploy ...
--realism A`` at use time. `default-real` started from such a transfer (its model card).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sr_deploy.errors import InputError, SRDeployError
from sr_deploy.models import load_checkpoint, save_checkpoint
from sr_deploy.realism import interpolate_checkpoints, interpolate_state_dicts
from sr_deploy.util.files import check_output_path

__all__ = ["add_difference", "interpolate_checkpoints", "interpolate_state_dicts", "main", "transfer_checkpoints"]


def add_difference(
    base: dict[str, torch.Tensor], first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """base + alpha * (second - first) for floating tensors (computed in float64, cast to base's
    dtype); integer buffers come from `base`. ValueError when keys or shapes differ."""
    if not base.keys() == first.keys() == second.keys():
        raise ValueError(f"the state dicts differ in keys, e.g. {sorted(set(base) ^ set(first) ^ set(second))[:3]}")
    out = {}
    for key, b in base.items():
        if not b.shape == first[key].shape == second[key].shape:
            raise ValueError(f"{key}: shapes differ")
        if not b.is_floating_point():
            out[key] = b.clone()
        else:
            out[key] = (b.double() + alpha * (second[key].double() - first[key].double())).to(b.dtype)
    return out


def transfer_checkpoints(psnr_model: str, gan_model: str, base_model: str, alpha: float, output: str | Path) -> Path:
    """`add_difference` on three generator files of one architecture; writes `output` (sr-deploy
    format, atomically) with the three sources and their sha256 in its metadata."""
    loaded = [load_checkpoint(m) for m in (base_model, psnr_model, gan_model)]
    if any((c.arch, c.config) != (loaded[0].arch, loaded[0].config) for c in loaded):
        raise InputError(f"{base_model}, {psnr_model}, {gan_model}: --onto needs three models of one architecture")
    if any(Path(output).exists() and Path(output).resolve() == Path(c.path).resolve() for c in loaded):
        raise InputError(f"{output}: refusing to overwrite an input model; choose another output")
    base, first, second = (c.model.state_dict() for c in loaded)
    model = loaded[0].model
    model.load_state_dict(add_difference(base, first, second, alpha))
    meta = {
        "recipe": "task-vector transfer",
        "transferred": {
            "alpha": alpha,
            **{f"{role}_model": str(m) for role, m in (("base", base_model), ("psnr", psnr_model), ("gan", gan_model))},
            **{f"{role}_sha256": c.sha256 for role, c in zip(("base", "psnr", "gan"), loaded)},
        },
    }
    return save_checkpoint(output, model, loaded[0].config, meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.interpolate", description=__doc__.split("\n\n")[0])
    p.add_argument("psnr_model", help="the PSNR-oriented generator (alpha 0)")
    p.add_argument("gan_model", help="the GAN-trained generator (alpha 1)")
    p.add_argument("--alpha", type=float, default=0.8, help="weight of the GAN model (ESRGAN: 0.8)")
    p.add_argument("--onto", metavar="BASE", help="add alpha * (GAN - PSNR) to this generator instead")
    p.add_argument("-o", "--output", required=True, help="the interpolated checkpoint to write")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        check_output_path(args.output, (".pt", ".pth"))  # a missing or read-only folder: one line, before any work
        if args.onto:
            path = transfer_checkpoints(args.psnr_model, args.gan_model, args.onto, args.alpha, args.output)
        else:
            path = interpolate_checkpoints(args.psnr_model, args.gan_model, args.alpha, args.output)
    except SRDeployError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {path} (alpha {args.alpha}{f', onto {args.onto}' if args.onto else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
