"""Do two backends compute the same thing? Max / mean abs error, PSNR and NaN/Inf counts on real images.

Parity is stated against the torch float32 model (DESIGN.md): a float32 backend passes at
max abs error <= 1e-4, an fp16 / bf16 backend at PSNR >= 50 dB (peak 1.0, on the raw,
unclamped outputs), and any NaN or Inf fails.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

FP32_MAX_ABS = 1e-4
REDUCED_MIN_PSNR_DB = 50.0
SET5_NAMES = ("baby", "bird", "butterfly", "head", "woman")


@dataclass
class ShapeParity:
    """Figures for one input batch."""

    shape: tuple[int, ...]  # input shape (N, 3, H, W)
    max_abs: float
    mean_abs: float
    psnr_db: float
    nonfinite: int


@dataclass
class ParityReport:
    """Agreement of a candidate backend with a reference, over all inputs.

    `psnr_db` is over every output element (peak 1.0; inf when identical). `nonfinite` counts
    NaN/Inf values in the candidate's outputs; those elements are left out of the other
    figures. `passed` is None until `check_thresholds` sets it.
    """

    max_abs: float
    mean_abs: float
    psnr_db: float
    nonfinite: int
    shapes: list[tuple[int, ...]]
    per_shape: list[ShapeParity] = field(default_factory=list)
    passed: bool | None = None
    criterion: str = ""

    def summary(self) -> str:
        verdict = "" if self.passed is None else (" PASS" if self.passed else " FAIL") + f" ({self.criterion})"
        return (
            f"max abs {self.max_abs:.3g}, mean abs {self.mean_abs:.3g}, PSNR {format_psnr(self.psnr_db)}, "
            f"NaN/Inf {self.nonfinite}{verdict}"
        )

    def table(self) -> str:
        """One row per input shape, then the total."""
        rows = [("input", "max abs", "mean abs", "PSNR dB", "NaN/Inf")]
        for s in self.per_shape:
            rows.append(
                (
                    "x".join(map(str, s.shape)),
                    f"{s.max_abs:.3g}",
                    f"{s.mean_abs:.3g}",
                    format_psnr(s.psnr_db, unit=False),
                    str(s.nonfinite),
                )
            )
        rows.append(
            (
                "all",
                f"{self.max_abs:.3g}",
                f"{self.mean_abs:.3g}",
                format_psnr(self.psnr_db, unit=False),
                str(self.nonfinite),
            )
        )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows
        ]
        if self.passed is not None:
            lines.append(("PASS" if self.passed else "FAIL") + f": {self.criterion}")
        return "\n".join(lines)


def format_psnr(psnr_db: float, unit: bool = True) -> str:
    text = "inf" if math.isinf(psnr_db) and psnr_db > 0 else f"{psnr_db:.2f}"
    return f"{text} dB" if unit else text


def _to_numpy(y: Any) -> np.ndarray:
    if isinstance(y, np.ndarray):
        return y.astype(np.float64, copy=False)
    detach = getattr(y, "detach", None)
    if detach is not None:  # a torch tensor
        return detach().float().cpu().numpy().astype(np.float64)
    return np.asarray(y, dtype=np.float64)


def _compare(ref: np.ndarray, cand: np.ndarray) -> tuple[float, float, float, int, int]:
    """(max abs, sum abs, sum sq, count, nonfinite) over the elements finite in both."""
    if ref.shape != cand.shape:
        raise ValueError(f"output shapes differ: reference {ref.shape}, candidate {cand.shape}")
    finite = np.isfinite(cand) & np.isfinite(ref)
    nonfinite = int(cand.size - np.count_nonzero(np.isfinite(cand)))
    diff = np.abs(ref[finite] - cand[finite])
    if diff.size == 0:
        return math.inf, 0.0, 0.0, 0, nonfinite
    return float(diff.max()), float(diff.sum()), float(np.square(diff).sum()), int(diff.size), nonfinite


def _psnr(sum_sq: float, count: int) -> float:
    if count == 0:
        return -math.inf
    mse = sum_sq / count
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def parity(
    reference: Callable[[np.ndarray], Any],
    candidate: Callable[[np.ndarray], Any],
    inputs: Iterable[np.ndarray],
) -> ParityReport:
    """Run every input batch through both and compare the outputs.

    Args:
        reference, candidate: backends (or any callables) mapping a float32 (N, 3, H, W) numpy
            batch to an array / tensor of outputs.
        inputs: float32 RGB [0, 1] batches, e.g. from `parity_inputs()`.
    """
    max_abs, sum_abs, sum_sq, count, nonfinite = 0.0, 0.0, 0.0, 0, 0
    per_shape: list[ShapeParity] = []
    for x in inputs:
        ref = _to_numpy(reference(x))
        cand = _to_numpy(candidate(x))
        m, s, q, c, nf = _compare(ref, cand)
        per_shape.append(ShapeParity(tuple(int(d) for d in x.shape), m, s / c if c else math.inf, _psnr(q, c), nf))
        max_abs, sum_abs, sum_sq, count, nonfinite = max(max_abs, m), sum_abs + s, sum_sq + q, count + c, nonfinite + nf
    if not per_shape:
        raise ValueError("parity needs at least one input batch")
    return ParityReport(
        max_abs=max_abs,
        mean_abs=sum_abs / count if count else math.inf,
        psnr_db=_psnr(sum_sq, count),
        nonfinite=nonfinite,
        shapes=[s.shape for s in per_shape],
        per_shape=per_shape,
    )


def check_thresholds(report: ParityReport, precision: str) -> bool:
    """Set and return `report.passed`: fp32 needs max abs <= 1e-4, fp16 / bf16 PSNR >= 50 dB;
    any NaN/Inf fails."""
    report.passed, report.criterion = meets_thresholds(precision, report.max_abs, report.psnr_db, report.nonfinite)
    return report.passed


def meets_thresholds(precision: str, max_abs: float, psnr_db: float, nonfinite: int) -> tuple[bool, str]:
    """(passed, the criterion in words) of parity figures at `precision`: fp32 needs max abs <=
    1e-4, fp16 / bf16 PSNR >= 50 dB; any NaN/Inf fails. The one rule of export, build-engine and
    benchmark."""
    precision = precision.lower()
    if precision == "fp32":
        criterion = f"fp32: max abs {max_abs:.3g} <= {FP32_MAX_ABS:g}"
        ok = max_abs <= FP32_MAX_ABS
    elif precision in ("fp16", "bf16"):
        criterion = f"{precision}: PSNR {format_psnr(psnr_db)} >= {REDUCED_MIN_PSNR_DB:g} dB"
        ok = psnr_db >= REDUCED_MIN_PSNR_DB
    else:
        raise ValueError(f"unknown precision {precision!r}: expected fp32, fp16 or bf16")
    if nonfinite:
        criterion += f"; {nonfinite} NaN/Inf values"
        ok = False
    return bool(ok), criterion


def find_shared_data() -> Path | None:
    """The shared data folder: $SR_DEPLOY_SHARED_DATA, else ../shared/data beside the repository
    root (or beside the current directory). None when absent."""
    env = os.environ.get("SR_DEPLOY_SHARED_DATA")
    candidates = [Path(env)] if env else []
    repo_root = Path(__file__).resolve().parent.parent
    candidates += [repo_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), None)


def _set5_images(data_dir: Path | None) -> list[np.ndarray]:
    """Set5 as float32 RGB HWC in [0, 1], in a fixed order; [] when not found."""
    import cv2

    root = Path(data_dir) if data_dir is not None else find_shared_data()
    if root is None:
        return []
    for folder in (root / "benchmark" / "Set5", root / "Set5", root):
        if all((folder / f"{n}.png").is_file() for n in SET5_NAMES):
            images = []
            for n in SET5_NAMES:
                bgr = cv2.imread(str(folder / f"{n}.png"), cv2.IMREAD_COLOR)
                if bgr is not None:
                    images.append(bgr[:, :, ::-1].astype(np.float32) / 255.0)
            return images
    return []


def synthetic_image(height: int = 256, width: int = 256) -> np.ndarray:
    """A deterministic float32 RGB HWC [0, 1] test image: smooth colour gradients, edges,
    a fine grating and mild noise, so it exercises both flat and textured responses."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    g = (xx + yy) / float(height + width)
    b = ((xx // 32 + yy // 32) % 2).astype(np.float32) * 0.6 + 0.2 * np.sin(xx * 1.3) ** 2
    noise = np.random.default_rng(0).normal(0.0, 0.03, (height, width, 3)).astype(np.float32)
    return np.clip(np.stack([r, g, b], axis=-1) + noise, 0.0, 1.0).astype(np.float32)


def _crop(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """A centred h x w crop as (3, h, w); the image is edge-padded first if smaller."""
    ih, iw = image.shape[:2]
    if ih < h or iw < w:
        image = np.pad(image, ((0, max(0, h - ih)), (0, max(0, w - iw)), (0, 0)), mode="edge")
        ih, iw = image.shape[:2]
    top, left = (ih - h) // 2, (iw - w) // 2
    return np.ascontiguousarray(image[top : top + h, left : left + w].transpose(2, 0, 1))


def parity_inputs(
    sizes: Sequence[tuple[int, int]] = ((64, 64), (50, 70)),
    batch: int = 2,
    data_dir: str | Path | None = None,
) -> list[np.ndarray]:
    """One float32 RGB [0, 1] batch of shape (batch, 3, h, w) per (h, w) in `sizes`.

    Each batch holds centred crops of different Set5 images (found through `data_dir`,
    $SR_DEPLOY_SHARED_DATA or ../shared/data); without Set5, crops of `synthetic_image()`
    at different offsets. Deterministic.
    """
    images = _set5_images(Path(data_dir) if data_dir is not None else None)
    if not images:
        base = synthetic_image(max(256, max(h for h, _ in sizes) * 2), max(256, max(w for _, w in sizes) * 2))
        images = [np.roll(base, (37 * i, 53 * i), axis=(0, 1)) for i in range(len(SET5_NAMES))]
    out = []
    for k, (h, w) in enumerate(sizes):
        crops = [_crop(images[(k + i) % len(images)], int(h), int(w)) for i in range(batch)]
        out.append(np.stack(crops).astype(np.float32))
    return out


def uses_real_images(data_dir: str | Path | None = None) -> bool:
    """Whether `parity_inputs` will cut from Set5 (else the synthetic image)."""
    return bool(_set5_images(Path(data_dir) if data_dir is not None else None))
