"""Package a trained generator as a bundled model (`sr_deploy/weights/*.pt`: `default.pt`, `default-gan.pt`...).

    python -m train.package_default RUN_DIR/model_latest.pt -o sr_deploy/weights/default.pt \
        --eval ../shared/data/benchmark/Set5 --eval ../shared/data/benchmark/Set14

Stores the weights as float16 (half the size; loaded back as float32), keeps the training
metadata that a model card needs (recipe, losses, iterations, data, degradation, wall time, hardware)
and adds the x4 scores of the PACKAGED file as `sr-deploy eval` computes them, so the card, the
metadata and what a user's eval prints are the same numbers. For PSNR-oriented runs take
`model_latest.pt`, not `model_best.pt`: the best one is chosen on Set5, which is for evaluation
only. The perceptual `default-real` runs ship `model_best.pt` (the lowest Set5 LPIPS, since their
curves turn after a few hundred iterations), and their model card says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sr_deploy.evaluation import parse_metrics, run_eval
from sr_deploy.models import load_checkpoint, save_checkpoint

KEEP = (
    "recipe",
    "iterations",
    "data",
    "num_train_images",
    "crop_size",
    "batch_size",
    "degradation",
    "ema_decay",
    "wall_time_s",
    "hardware",
    "init",
    "feature_network",
    "lpips_loss_network",
)


def package(
    source: Path,
    output: Path,
    eval_dirs: list[Path],
    extra: dict[str, object],
    metrics: tuple[str, ...] = ("psnr", "ssim"),
) -> dict:
    ckpt = load_checkpoint(source)
    meta = {k: ckpt.metadata[k] for k in KEEP if k in ckpt.metadata}
    # The losses that made it (the recipe's name alone does not say, once --set changed them).
    losses = (ckpt.metadata.get("train_config") or {}).get("losses") or {}
    if any(losses.values()):
        meta["losses"] = {name: spec for name, spec in losses.items() if spec}
    meta.update(extra)
    meta["source_checkpoint_sha256"] = ckpt.sha256
    save_checkpoint(output, ckpt.model, ckpt.config, meta, half=True)
    if eval_dirs:
        _, results = run_eval(
            str(output), eval_dirs, ckpt.scale, backend="torch", device="cpu", precision="fp32", metrics=metrics
        )
        meta["eval_x4_y"] = {
            r.name: {
                "psnr": round(r.mean_psnr, 3),
                "ssim": round(r.mean_ssim, 4),
                **{m: round(v, 4) for m, v in r.mean_lpips.items()},
            }
            for r in results
        }
        save_checkpoint(output, load_checkpoint(output).model, ckpt.config, meta, half=True)
    return meta


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--eval", dest="eval_dirs", type=Path, action="append", default=[])
    ap.add_argument("--metrics", default="psnr,ssim", help="scores stored in the metadata, e.g. psnr,ssim,lpips")
    ap.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra metadata, e.g. training_history='650 it bootstrap, then ...'",
    )
    args = ap.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.note)
    meta = package(args.checkpoint, args.output, args.eval_dirs, extra, parse_metrics(args.metrics))
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB)")
    for key, value in meta.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
