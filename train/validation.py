"""Validation during training and what records the run: the scores of the model (and of bicubic,
the reference line) on the validation set, the val.png curve, and the run's CSV files (val.csv,
loss.csv).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import nn

from sr_deploy.errors import NotInstalledError
from sr_deploy.metrics import imresize, psnr, ssim, to_uint8
from sr_deploy.perceptual import LPIPS, lpips_uint8
from sr_deploy.util.files import atomic_write
from sr_deploy.util.plot import pyplot

from .data import ValidationSet


def _mean_scores(scores_p: list[float], scores_s: list[float], scores_l: list[float] | None) -> dict[str, float]:
    scores = {"psnr": float(np.mean(scores_p)), "ssim": float(np.mean(scores_s))}
    if scores_l is not None:
        scores["lpips"] = float(np.mean(scores_l))
    return scores


def validate(
    model: nn.Module, valset: ValidationSet, scale: int, device: torch.device, lpips: LPIPS | None = None
) -> dict[str, float]:
    """Mean Y-channel PSNR / SSIM (``scale`` px border cropped) of `model` on `valset`, and the
    mean LPIPS (RGB, full image) when `lpips` is given: the output is clamped to [0, 1] and
    rounded to 8 bits first, as a saved image would be."""
    was_training = model.training
    model.eval()
    scores_p, scores_s, scores_l = [], [], []
    try:
        with torch.inference_mode():
            for lr, hr in zip(valset.lr, valset.hr):
                x = torch.from_numpy(lr.transpose(2, 0, 1).copy())[None].to(device)
                sr = model(x).float().clamp_(0, 1).mul_(255).round_().to(torch.uint8)
                sr_img = sr[0].permute(1, 2, 0).cpu().numpy()
                scores_p.append(float(psnr(sr_img, hr, crop_border=scale, y_channel=True)))
                scores_s.append(float(ssim(sr_img, hr, crop_border=scale, y_channel=True)))
                if lpips is not None:
                    scores_l.append(lpips_uint8(lpips, sr_img, hr))
    finally:
        model.train(was_training)
    return _mean_scores(scores_p, scores_s, scores_l if lpips is not None else None)


def bicubic_baseline(valset: ValidationSet, scale: int, lpips: LPIPS | None = None) -> dict[str, float]:
    """The same scores for MATLAB bicubic upscaling of the LR inputs (the curve's reference line)."""
    scores_p, scores_s, scores_l = [], [], []
    for lr, hr in zip(valset.lr, valset.hr):
        up = to_uint8(imresize(lr, scale=scale))
        scores_p.append(float(psnr(up, hr, crop_border=scale, y_channel=True)))
        scores_s.append(float(ssim(up, hr, crop_border=scale, y_channel=True)))
        if lpips is not None:
            scores_l.append(lpips_uint8(lpips, up, hr))
    return _mean_scores(scores_p, scores_s, scores_l if lpips is not None else None)


VAL_PLOT = "the validation curve val.png"


def plot_missing_note() -> str | None:
    """The note a run with a validation set logs once when val.png cannot be drawn (matplotlib,
    the plot extra, is absent: "... needs matplotlib: pip install 'sr-deploy[plot]'"), else None."""
    try:
        pyplot(VAL_PLOT)
    except NotInstalledError as exc:
        return f"note: {exc}; this run goes on without it"
    return None


def plot_curve(
    run_dir: Path, history: list[dict[str, float]], bicubic: dict[str, float] | None, title: str
) -> Path | None:
    """val.png: validation PSNR against iterations, with bicubic as a dashed line (and LPIPS in a
    second panel when the history has it). Skipped (None) when matplotlib is not installed (an
    optional dependency: the run says so once, `plot_missing_note`)."""
    try:
        plt = pyplot(VAL_PLOT)
    except NotInstalledError:
        return None
    with_lpips = any("lpips" in h for h in history)
    fig, axes = plt.subplots(1, 2 if with_lpips else 1, figsize=(11 if with_lpips else 6, 4), dpi=100, squeeze=False)
    its = [h["iteration"] for h in history]
    ax = axes[0][0]
    ax.plot(its, [h["psnr"] for h in history], "o-", label="model (Y-PSNR)")
    if bicubic:
        ax.axhline(bicubic["psnr"], color="gray", linestyle="--", label=f"bicubic {bicubic['psnr']:.2f} dB")
    ax.set_xlabel("iteration")
    ax.set_ylabel("PSNR (dB), Y channel")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    if with_lpips:
        ax = axes[0][1]
        rows = [h for h in history if "lpips" in h]
        ax.plot([h["iteration"] for h in rows], [h["lpips"] for h in rows], "o-", color="C1", label="model")
        if bicubic and "lpips" in bicubic:
            ax.axhline(bicubic["lpips"], color="gray", linestyle="--", label=f"bicubic {bicubic['lpips']:.3f}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("LPIPS-Alex (lower is better)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = run_dir / "val.png"
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def read_val_history(path: Path, up_to: int) -> list[dict[str, float]]:
    """The rows of val.csv up to iteration `up_to` (later ones belong to a run killed after them)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: int(float(v)) if k == "iteration" else float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return [r for r in rows if r["iteration"] <= up_to]


def write_csv(path: Path, rows: list[dict[str, float]], columns: list[str]) -> None:
    """`rows` as a CSV file with a header of `columns` (other keys ignored), written atomically."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


def format_eta(seconds: float) -> str:
    """``1h05m`` / ``4m07s``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class LossLog:
    """Sums the loss parts over a logging window and writes their means to loss.csv (one row a
    window) and the log, with the speed and ETA of the window."""

    def __init__(self, path: Path, start: int) -> None:
        self.new_file = not path.is_file() or start == 0
        if not self.new_file:  # drop rows logged after the saved state (a run killed with -9)
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                kept, columns = [r for r in reader if float(r["iteration"]) <= start], reader.fieldnames or []
            write_csv(path, kept, list(columns))
        self.file: IO[str] = open(path, "w" if self.new_file else "a", newline="")
        self.writer: csv.DictWriter | None = None
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0  # iterations in the window (the loss means)
        self.timed = 0  # iterations since `t_window` (the speed): fewer when the timer was restarted
        self.t_window = time.perf_counter()

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.count += 1
        self.timed += 1

    def restart_timer(self) -> None:
        """Time the window's speed from now on (after a validation: its time is not training
        time); the iterations before now leave the speed's count too, not the loss means."""
        self.t_window, self.timed = time.perf_counter(), 0

    def flush(self, it: int, iterations: int, lr_now: float, log: Callable[[str], None]) -> None:
        """One loss.csv row and one log line for the window ending at iteration `it`; a new window starts."""
        elapsed = time.perf_counter() - self.t_window
        means = {k: float(v) / self.count for k, v in self.sums.items()}
        speed = self.timed / elapsed if elapsed > 0 and self.timed else float("nan")
        row = {"iteration": it, **{k: round(v, 6) for k, v in means.items()}, "lr": lr_now, "it_per_s": round(speed, 3)}
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, fieldnames=list(row))
            if self.new_file:
                self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()
        eta = (iterations - it) / speed if speed > 0 else float("nan")
        log(
            f"it {it}/{iterations}  "
            + "  ".join(f"{k} {v:.5g}" for k, v in means.items())
            + f"  lr {lr_now:.2e}  {speed:.2f} it/s  eta {format_eta(eta)}"
        )
        self.sums, self.count = {}, 0
        self.restart_timer()

    def close(self) -> None:
        self.file.close()
