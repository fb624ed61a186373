"""``python -m train RECIPE --data DIR --val DIR --out RUN_DIR [options]``.

Errors in the inputs (missing data or validation folder, a folder without images, a damaged
image, images smaller than the crop, missing VGG19 weights, a bad --set or config value, an --out
inside the data or in use by another run) are one line on stderr and exit code 2, before any
training starts. SIGINT / SIGTERM save the training state and exit 130 / 143.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sr_deploy.errors import InputError, SRDeployError

from . import config as cfg
from .data import DEGRADATIONS
from .schema import check_recipe, validate_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train",
        description="Train an SR generator (SRResNet, SRGAN, ESRGAN) with a recipe from train/configs/.",
    )
    p.add_argument("recipe", choices=cfg.RECIPES, help="the recipe (its YAML in train/configs/ gives every setting)")
    p.add_argument("--data", required=True, help="folder of HR training images")
    p.add_argument(
        "--val", default=None, help="folder of HR validation images (e.g. Set5); LR is made by MATLAB bicubic"
    )
    p.add_argument("--out", required=True, help="run directory: checkpoints, logs, val.csv, val.png")
    p.add_argument("--config", default=None, help="a YAML config file instead of the recipe's own")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set model.num_blocks=8 --set train.ema_decay=0.999 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its state_latest.pt")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--iters", type=int, default=None, help="total iterations (train.iterations)")
    p.add_argument("--degradation", choices=DEGRADATIONS, default=None, help="data.degradation")
    p.add_argument("--max-images", type=int, default=None, help="cache only the first N training images")
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (data.workers)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: cores - 1, leaving one to the data worker)",
    )
    p.add_argument(
        "--perceptual-weights",
        "--vgg-weights",
        dest="perceptual_weights",
        default=None,
        help="ImageNet weights of the perceptual loss's network and of LPIPS: a file (lpips_vgg16_imagenet.npz, "
        "torchvision's vgg16-397923af.pth / vgg19-dcbb9e9d.pth) or a folder holding them (default: "
        "$SR_DEPLOY_PERCEPTUAL_WEIGHTS, then $TORCH_HOME/hub/checkpoints/)",
    )
    p.add_argument(
        "--allow-unknown-weights",
        action="store_true",
        help="accept perceptual weights that are not a known ImageNet file (tests with random weights only)",
    )
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="let a GAN recipe start from a random generator instead of a trained PSNR checkpoint (init)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def resolve_config(args: argparse.Namespace) -> dict:
    """The run's config: RUN_DIR/config.yaml when resuming, else --config or the recipe's YAML;
    then --set overrides and the shortcut options. Checked (`schema.validate_config`) before
    anything is built or written: a bad value names the --set (or file) that gave it."""
    from .trainer import CONFIG_FILE, STATE_FILE

    if args.resume:
        state_path = Path(args.out) / STATE_FILE
        if not state_path.is_file():
            raise InputError(f"{state_path}: no training state to resume from")
        source = Path(args.out) / CONFIG_FILE
    else:
        source = Path(args.config) if args.config else cfg.recipe_path(args.recipe)
    config = cfg.load_config(source)
    check_recipe(config, args.recipe, str(source), args.resume)
    config.setdefault("recipe", args.recipe)
    labelled = [(f"--set {item}", item) for item in args.overrides]
    for option, key, value in (
        ("--iters", "train.iterations", args.iters),
        ("--degradation", "data.degradation", args.degradation),
        ("--max-images", "data.max_images", args.max_images),
        ("--workers", "data.workers", args.workers),
    ):
        if value is not None:
            labelled.append((f"{option} {value}", f"{key}={value}"))
    config = cfg.apply_overrides(config, [item for _, item in labelled])
    origins = {item.partition("=")[0]: label for label, item in labelled}
    validate_config(config, str(source), origins)
    return config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    previous_threads = torch.get_num_threads()
    try:
        # One core is left to the DataLoader worker: on a small, shared CPU, OpenMP threads that
        # compete for cores spin-wait at every op (measured 3-7x slower for SRResNet on 2 cores).
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) - 1))
        config = resolve_config(args)
        from .trainer import train

        result = train(
            config,
            args.data,
            args.val,
            args.out,
            device=args.device,
            resume=args.resume,
            perceptual_weights=args.perceptual_weights,
            allow_unknown_weights=args.allow_unknown_weights,
            from_scratch=args.from_scratch,
            progress=not args.no_progress,
        )
    except SRDeployError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        torch.set_num_threads(previous_threads)  # main() may run inside another program (tests)
    if result.interrupted_by is not None:
        return 128 + int(result.interrupted_by)
    return 0
