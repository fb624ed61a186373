"""Network interpolation (ESRGAN, Wang et al. 2018, Sec. 3.4): theta = (1 - alpha) * theta_PSNR
+ alpha * theta_GAN, parameter by parameter, between two generators of the same architecture.

    python -m train.interpolate psnr.pt gan.pt --alpha 0.8 -o out.pt

alpha 0 gives the first model exactly, alpha 1 the second; inputs may be any layout that
`sr_deploy.models.load_checkpoint` reads; the output is an sr-deploy checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sr_deploy.errors import InputError, SRDeployError
from sr_deploy.models import load_checkpoint, save_checkpoint


def interpolate_state_dicts(
    first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 - alpha) * first + alpha * second for floating tensors; integer buffers (BN's
    num_batches_tracked) come from `first`. alpha 0 and 1 return exact copies of an endpoint
    (no arithmetic, so no rounding); other values are computed in float64 and cast back."""
    if first.keys() != second.keys():
        only = sorted(set(first) ^ set(second))[:3]
        raise ValueError(f"the state dicts differ in keys, e.g. {only}")
    out = {}
    for key, a in first.items():
        b = second[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        if not a.is_floating_point() or alpha == 0.0:
            out[key] = a.clone()
        elif alpha == 1.0:
            out[key] = b.clone()
        else:
            mixed = (1.0 - alpha) * a.double() + alpha * b.double()
            out[key] = mixed.to(a.dtype)
    return out


def interpolate_checkpoints(psnr_path: str | Path, gan_path: str | Path, alpha: float, output: str | Path) -> Path:
    """Blend two generator files and write `output` (sr-deploy format, written atomically)."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha {alpha}: must be between 0 and 1")
    output = Path(output)
    for src in (Path(psnr_path), Path(gan_path)):
        if src.exists() and output.exists() and output.resolve() == src.resolve():
            raise InputError(f"{output}: refusing to overwrite an input model; choose another -o")
    a, b = load_checkpoint(psnr_path), load_checkpoint(gan_path)
    if a.arch != b.arch or a.config != b.config:
        raise InputError(
            f"{gan_path}: a different architecture ({b.arch} {b.config}) from {psnr_path} ({a.arch} {a.config}); "
            "interpolation needs two models of the same architecture"
        )
    try:
        state = interpolate_state_dicts(a.model.state_dict(), b.model.state_dict(), float(alpha))
    except ValueError as exc:
        raise InputError(f"{gan_path}: cannot interpolate with {psnr_path}: {exc}") from exc
    model = a.model
    model.load_state_dict(state)
    meta = {
        "interpolated": {"alpha": float(alpha), "psnr_model": str(psnr_path), "gan_model": str(gan_path),
                         "psnr_sha256": a.sha256, "gan_sha256": b.sha256},
        "recipe": "network interpolation",
    }
    return save_checkpoint(output, model, a.config, meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.interpolate", description=__doc__.split("\n\n")[0])
    p.add_argument("psnr_model", help="the PSNR-oriented generator (alpha 0)")
    p.add_argument("gan_model", help="the GAN-trained generator (alpha 1)")
    p.add_argument("--alpha", type=float, default=0.8, help="weight of the GAN model (ESRGAN: 0.8)")
    p.add_argument("-o", "--output", required=True, help="the interpolated checkpoint to write")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        path = interpolate_checkpoints(args.psnr_model, args.gan_model, args.alpha, args.output)
    except SRDeployError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {path} (alpha {args.alpha})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
