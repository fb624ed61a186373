"""Bootstrap run for the bundled default model (issue 8), started before the full `train/`
recipes existed: the same recipe the `srresnet` config describes (L1, Adam, batch 16, HR crops
of 96, flips/rotations, LR by antialiased bicubic), in one small file. Its checkpoint is the
initialisation of the continued run with `python -m train srresnet --set init=...`.

LR here is torch's antialiased bicubic (a = -0.5, the same kernel and support as MATLAB's
imresize; they differ only at the image border), quantised to 8 bit as saved LR images are.

    python train/bootstrap_srresnet.py --data ../shared/data/train/Sun_Hays80 \
        --val ../shared/data/benchmark/Set5 --out runs/default-bootstrap
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import random
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from sr_deploy.models import SRResNet, save_checkpoint

CONFIG = {"scale": 4, "num_blocks": 8, "num_features": 64, "batch_norm": False, "image_residual": "bicubic"}


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """(N,3,H,W) float [0,1] -> LR (N,3,H/s,W/s), antialiased bicubic, quantised to 8 bit."""
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    return (lr.clamp(0, 1) * 255).round() / 255


def y_psnr(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    def y(img):
        img = img.astype(np.float64)
        return np.round(16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255)
    d = (y(sr) - y(hr))[border:-border, border:-border]
    return 10 * math.log10(255**2 / np.mean(d**2))


def validate(model, val_dir: Path, scale: int) -> float:
    scores = []
    model.eval()
    with torch.inference_mode():
        for p in sorted(val_dir.glob("*.png")):
            hr = read_rgb(p)
            hr = hr[: hr.shape[0] // scale * scale, : hr.shape[1] // scale * scale]
            x = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255
            sr = model(degrade(x, scale)).clamp(0, 1)
            sr = (sr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            scores.append(y_psnr(sr, hr, scale))
    model.train()
    return float(np.mean(scores))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--val", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=200_000)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--val-every", type=int, default=500)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "2")))
    args.out.mkdir(parents=True, exist_ok=True)
    images = [torch.from_numpy(read_rgb(p)).permute(2, 0, 1).contiguous() for p in sorted(args.data.glob("*.jpg"))]
    model = SRResNet(**CONFIG)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    state_path, it, wall = args.out / "state_latest.pt", 0, 0.0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        it, wall = state["iteration"], state["wall"]
        random.setstate(state["py_rng"])
        torch.set_rng_state(state["torch_rng"])
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def save(tag: str) -> None:
        meta = {"recipe": "bootstrap_srresnet (L1, Adam, batch 16, crop 96)", "iterations": it,
                "train_data": str(args.data.name), "degradation": "bicubic (torch antialias) x4, 8-bit LR",
                "wall_time_s": round(wall), "hardware": f"{platform.processor() or platform.machine()} CPU, "
                f"{torch.get_num_threads()} threads"}
        save_checkpoint(args.out / f"model_{tag}.pt", model, CONFIG, meta)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "iteration": it, "wall": wall,
                    "py_rng": random.getstate(), "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(state_path)

    log = open(args.out / "train.csv", "a", newline="")
    writer = csv.writer(log)
    model.train()
    t0, losses = time.time(), []
    while it < args.iters and not stop:
        # cosine decay over the nominal run, floor at 1e-6
        for g in opt.param_groups:
            g["lr"] = max(1e-6, args.lr * 0.5 * (1 + math.cos(math.pi * min(it / args.iters, 1.0))))
        crops = []
        for _ in range(args.batch):
            img = random.choice(images)
            y = random.randrange(img.shape[1] - args.crop + 1)
            x = random.randrange(img.shape[2] - args.crop + 1)
            c = img[:, y:y + args.crop, x:x + args.crop]
            if random.random() < 0.5:
                c = c.flip(2)
            c = torch.rot90(c, random.randrange(4), (1, 2))
            crops.append(c)
        hr = torch.stack(crops).float() / 255
        loss = F.l1_loss(model(degrade(hr, CONFIG["scale"])), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        losses.append(loss.item())
        if it % 50 == 0:
            dt = time.time() - t0
            wall += dt
            t0 = time.time()
            writer.writerow([it, "loss", f"{np.mean(losses):.5f}", f"{50 / dt:.3f}"])
            log.flush()
            losses = []
        if it % args.val_every == 0:
            writer.writerow([it, "val_psnr", f"{validate(model, args.val, CONFIG['scale']):.3f}", ""])
            log.flush()
        if it % args.save_every == 0:
            save("latest")
    save("latest")


if __name__ == "__main__":
    main()
