"""Network interpolation (ESRGAN, Wang et al. 2018, Sec. 3.4): theta = (1 - alpha) * theta_PSNR
+ alpha * theta_GAN, parameter by parameter, between two generators of the same architecture.

    python -m train.interpolate psnr.pt gan.pt --alpha 0.8 -o out.pt

alpha 0 gives the first model exactly, alpha 1 the second; inputs may be any layout that
`sr_deploy.models.load_checkpoint` reads; the output is an sr-deploy checkpoint. The blending
itself lives in `sr_deploy.realism`, which also serves ``sr-deploy ... --realism A`` at use time.
"""

from __future__ import annotations

import argparse
import sys

from sr_deploy.errors import SRDeployError
from sr_deploy.realism import interpolate_checkpoints, interpolate_state_dicts

__all__ = ["interpolate_checkpoints", "interpolate_state_dicts", "main"]


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
