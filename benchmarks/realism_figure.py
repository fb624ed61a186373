"""The pictures of the photo-realistic half: zoomed crops of Set14 images, side by side.

    python benchmarks/realism_figure.py -o docs/realism.png
    python benchmarks/realism_figure.py --figure real-world -o docs/real-world.png

`--figure realism` (clean LR): bicubic | `default` (PSNR-oriented) | realism 0.5 | `default-gan`
(realism 1.0) | HR. `--figure real-world` (LR saved as JPEG quality 40, as `sr-deploy eval
--degrade jpeg=40` makes it): bicubic | `default-gan` | `default-real` | HR.
Each row is one image, x4 from its LR (as `sr-deploy eval` makes it), cropped to a region with
texture and enlarged with nearest-neighbour so pixels stay visible. The LPIPS-Alex and Y-PSNR of
the whole image are printed under each crop. Needs matplotlib (the `plot` extra).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from sr_deploy.degrade import parse_degradation
from sr_deploy.errors import NotInstalledError
from sr_deploy.evaluation import _read_image
from sr_deploy.metrics import imresize, psnr, to_uint8
from sr_deploy.models import load_checkpoint
from sr_deploy.perceptual import LPIPS, lpips_uint8
from sr_deploy.realism import resolve_realism
from sr_deploy.util.plot import pyplot

# (image, top, left, size) of the HR crop: fur, text and stripes, where GAN texture shows.
CROPS = [("baboon.png", 40, 300, 120), ("comic.png", 60, 40, 120), ("zebra.png", 150, 250, 120)]

# figure -> (LR degradation spec, columns: (title, model or None for bicubic / HR), title line)
FIGURES = {
    "realism": (
        "bicubic",
        [
            ("bicubic", None),
            ("default (realism 0)", "default"),
            ("realism 0.5", 0.5),
            ("default-gan (realism 1)", "default-gan"),
            ("HR", None),
        ],
        "x4 on Set14",
    ),
    "real-world": (
        "jpeg=40",
        [("bicubic", None), ("default-gan", "default-gan"), ("default-real", "default-real"), ("HR", None)],
        "x4 on Set14 from LR saved as JPEG quality 40",
    ),
}


def super_resolve(model: str, lr: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB x4 of `lr` (float32 RGB [0, 1], (h, w, 3)) with the model on the CPU."""
    net = load_checkpoint(model).model.eval()
    with torch.inference_mode():
        out = net(torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None])
    return to_uint8(out[0].numpy().transpose(1, 2, 0))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figure", choices=sorted(FIGURES), default="realism")
    ap.add_argument("--dataset", type=Path, default=Path("../shared/data/benchmark/Set14"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--gan-model", default="default-gan")
    ap.add_argument("--perceptual-weights", default=None)
    ap.add_argument("-o", "--output", type=Path, default=Path("docs/realism.png"))
    args = ap.parse_args(argv)
    try:
        plt = pyplot("the figure")
    except NotInstalledError as exc:  # one line naming the plot extra, before any work
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)

    lpips = LPIPS("alex", args.perceptual_weights)
    spec, columns, title_line = FIGURES[args.figure]
    degradation = parse_degradation(spec)
    # a float is a --realism blend of --model and --gan-model
    models = {
        title: resolve_realism(args.model, args.gan_model, model) if isinstance(model, float) else model
        for title, model in columns
        if model is not None
    }
    fig, axes = plt.subplots(len(CROPS), len(columns), figsize=(3.2 * len(columns), 3.5 * len(CROPS)), dpi=110)
    for row, (name, top, left, size) in enumerate(CROPS):
        hr, lr = degradation.apply(_read_image(args.dataset / name), 4, name)
        images = []
        for title, _ in columns:
            if title == "HR":
                sr = hr
            elif title not in models:
                sr = to_uint8(imresize(lr, 4.0))
            else:
                sr = super_resolve(models[title], lr)
            scores = "" if sr is hr else f"LPIPS {lpips_uint8(lpips, sr, hr):.3f}, {psnr(hr, sr, 4):.2f} dB"
            images.append((title, sr[top : top + size, left : left + size], scores))
        for col, (title, crop, scores) in enumerate(images):
            ax = axes[row][col]
            ax.imshow(crop, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=11)
            ax.set_xlabel(scores, fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=10)
    fig.suptitle(f"{title_line} (whole-image LPIPS-Alex, lower is better, and Y-PSNR under each crop)", fontsize=12)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
