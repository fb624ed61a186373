"""Real-ESRGAN's high-order degradation model (Wang et al., ICCVW 2021), on the CPU, per sample.

`degrade_real(hr, scale, config, rng)` turns one HR crop into the LR image a camera, a resize, a
noisy sensor and two rounds of JPEG would have made of it:

    stage 1: blur (random kernel) -> random resize -> Gaussian or Poisson noise -> JPEG
    stage 2: blur (with probability) -> random resize -> noise -> in random order either
             [resize to HR/scale + sinc filter, then JPEG] or [JPEG, then resize + sinc filter]

then the result is rounded to 8 bits. Kernels follow BasicSR's `degradations.py` (isotropic /
anisotropic Gaussian, generalized Gaussian, plateau, and the 2-D sinc of ``circular_lowpass``),
sizes 7-21 (odd), padded to 21. `DEFAULTS` holds the paper's ranges and probabilities (the
`finetune_realesrgan_x4plus` options); the training recipe copies them into its config, so a run's
config.yaml states every number it used.

Differences from Real-ESRGAN's GPU implementation, all deliberate: it runs with NumPy / OpenCV in
the DataLoader workers (no GPU here), so each sample gets its own degradation instead of one per
batch, JPEG is OpenCV's libjpeg on 8-bit levels instead of DiffJPEG, and resizing is
`cv2.resize` (area / bilinear / bicubic) instead of `F.interpolate`.

Arrays: HR in is RGB uint8 HWC; LR out is RGB float32 HWC in [0, 1] on 8-bit levels, of shape
(H/scale, W/scale, 3). Every random draw comes from the `numpy.random.Generator` passed in, so a
sample is a pure function of the seed it was drawn with (see `train.data.RandomPatches`).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch

from sr_deploy.degrade import jpeg_round_trip
from sr_deploy.metrics import bicubic_degrade, to_uint8

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KERNEL_PAD = 21  # every kernel is padded to this size, as in Real-ESRGAN
RESIZE_MODES = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}

# The paper's settings (Real-ESRGAN's options/finetune_realesrgan_x4plus.yml). Noise sigmas are in
# 8-bit levels; Poisson scales multiply the shot noise of an image with 2^k grey levels.
DEFAULTS: dict[str, Any] = {
    "kernel_sizes": [7, 9, 11, 13, 15, 17, 19, 21],
    "kernel_list": list(KERNEL_TYPES),
    "kernel_prob": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "sinc_prob": 0.1,
    "blur_sigma": [0.2, 3.0],
    "betag_range": [0.5, 4.0],
    "betap_range": [1.0, 2.0],
    "resize_prob": [0.2, 0.7, 0.1],  # up, down, keep
    "resize_range": [0.15, 1.5],
    "gaussian_noise_prob": 0.5,
    "noise_range": [1.0, 30.0],
    "poisson_scale_range": [0.05, 3.0],
    "gray_noise_prob": 0.4,
    "jpeg_range": [30, 95],
    "second_blur_prob": 0.8,
    "kernel_list2": list(KERNEL_TYPES),
    "kernel_prob2": [0.45, 0.25, 0.12, 0.03, 0.12, 0.03],
    "sinc_prob2": 0.1,
    "blur_sigma2": [0.2, 1.5],
    "betag_range2": [0.5, 4.0],
    "betap_range2": [1.0, 2.0],
    "resize_prob2": [0.3, 0.4, 0.3],
    "resize_range2": [0.3, 1.2],
    "gaussian_noise_prob2": 0.5,
    "noise_range2": [1.0, 25.0],
    "poisson_scale_range2": [0.05, 2.5],
    "gray_noise_prob2": 0.4,
    "jpeg_range2": [30, 95],
    "final_sinc_prob": 0.8,
    # Not in the paper: the share of samples that take the one-hop path of a web photo or a video
    # frame instead (clean bicubic downscale -> sometimes noise -> one JPEG; `degrade_one_hop`).
    # 0 is Real-ESRGAN's pipeline exactly (and draws nothing extra from the generator).
    "one_hop_prob": 0.0,
    "one_hop_noise_prob": 0.5,
    "one_hop_noise_range": [1.0, 15.0],
}


# ---------------------------------------------------------------- kernels
def _grid(size: int) -> np.ndarray:
    """(size, size, 2) float64 coordinates centred on the middle pixel."""
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """x^T Sigma^-1 x over the kernel grid, Sigma the covariance rotated by `theta` (radians)."""
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    covariance = rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T
    grid = _grid(size)
    return np.sum((grid @ np.linalg.inv(covariance)) * grid, axis=-1)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Anisotropic Gaussian (isotropic when sigma_x == sigma_y), float32 (size, size), sum 1."""
    k = np.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta))
    return (k / k.sum()).astype(np.float32)


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """exp(-0.5 (x^T Sigma^-1 x)^beta): beta < 1 heavier tails, beta > 1 a flat top that
    stops short (beta = 1 is the Gaussian); sum 1."""
    k = np.exp(-0.5 * np.power(_quadratic_form(size, sigma_x, sigma_y, theta), beta))
    return (k / k.sum()).astype(np.float32)


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """1 / (1 + (x^T Sigma^-1 x)^beta): a flat top with heavy tails; sum 1."""
    k = 1.0 / (np.power(_quadratic_form(size, sigma_x, sigma_y, theta), beta) + 1.0)
    return (k / k.sum()).astype(np.float32)


def sinc_kernel(cutoff: float, size: int) -> np.ndarray:
    """The 2-D sinc (ideal circular low-pass, cut-off `cutoff` in radians per pixel) truncated to
    `size` x `size`: the ringing and overshoot that sharpening and resampling leave; sum 1."""
    radius = np.hypot(*np.moveaxis(_grid(size), -1, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        j1 = torch.special.bessel_j1(torch.from_numpy(cutoff * radius)).numpy()
        k = cutoff * j1 / (2 * np.pi * radius)
    k[size // 2, size // 2] = cutoff**2 / (4 * np.pi)
    return (k / k.sum()).astype(np.float32)


def pad_kernel(kernel: np.ndarray, size: int = KERNEL_PAD) -> np.ndarray:
    """Zero-pad a square odd kernel to `size` x `size` (centred)."""
    pad = (size - kernel.shape[0]) // 2
    return np.pad(kernel, pad) if pad > 0 else kernel


def _beta(rng: np.random.Generator, beta_range: list[float]) -> float:
    """BasicSR's draw: half the time below 1 (down to the range's start), half above (up to its end)."""
    low, high = beta_range
    return float(rng.uniform(low, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, high))


def random_blur_kernel(
    rng: np.random.Generator,
    kernel_list: list[str],
    kernel_prob: list[float],
    sinc_prob: float,
    sigma_range: list[float],
    betag_range: list[float],
    betap_range: list[float],
    kernel_sizes: list[int],
) -> np.ndarray:
    """One stage's blur kernel as Real-ESRGAN's dataset draws it, padded to 21 x 21 float32."""
    size = int(rng.choice(kernel_sizes))
    if rng.uniform() < sinc_prob:
        cutoff = rng.uniform(np.pi / 3, np.pi) if size < 13 else rng.uniform(np.pi / 5, np.pi)
        return pad_kernel(sinc_kernel(cutoff, size))
    kind = str(rng.choice(kernel_list, p=np.asarray(kernel_prob) / np.sum(kernel_prob)))
    sigma_x = float(rng.uniform(*sigma_range))
    if kind.endswith("_iso") or kind == "iso":
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y, theta = float(rng.uniform(*sigma_range)), float(rng.uniform(-np.pi, np.pi))
    if kind.startswith("generalized"):
        kernel = generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, _beta(rng, betag_range))
    elif kind.startswith("plateau"):
        kernel = plateau_kernel(size, sigma_x, sigma_y, theta, _beta(rng, betap_range))
    else:
        kernel = gaussian_kernel(size, sigma_x, sigma_y, theta)
    return pad_kernel(kernel)


# ---------------------------------------------------------------- operations
def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve float32 HWC with a 2-D kernel (reflected borders, as BasicSR's filter2D)."""
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def resize(img: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    """float32 HWC to (height, width) with `mode` in `RESIZE_MODES`."""
    return cv2.resize(img, (max(1, width), max(1, height)), interpolation=RESIZE_MODES[mode])


def add_gaussian_noise(img: np.ndarray, sigma: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise of `sigma` 8-bit levels; `gray` adds the same noise to all
    three channels (luminance noise), else each channel draws its own (colour noise). Clipped."""
    shape = img.shape[:2] + ((1,) if gray else (img.shape[2],))
    noise = rng.standard_normal(shape).astype(np.float32) * np.float32(sigma / 255.0)
    return np.clip(img + noise, 0.0, 1.0)


def add_poisson_noise(img: np.ndarray, scale: float, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """Shot noise as BasicSR draws it: the image on 8-bit levels, counts ~ Poisson(img * 2^k)
    where 2^k covers its number of distinct levels, the difference times `scale`. `gray` draws it
    on the luminance and adds it to all channels. Clipped to [0, 1]."""
    base = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None] if gray else img
    base = np.clip(np.round(base * 255.0), 0, 255) / 255.0
    levels = 2 ** math.ceil(math.log2(max(2, len(np.unique(base)))))
    noise = (rng.poisson(base * levels) / float(levels) - base).astype(np.float32)
    return np.clip(img + noise * np.float32(scale), 0.0, 1.0)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """float32 RGB HWC in [0, 1] as a baseline JPEG of `quality` (`sr_deploy.degrade.jpeg_round_trip`:
    OpenCV's libjpeg, 4:2:0 chroma), decoded again: float32 RGB HWC on 8-bit levels."""
    levels = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return jpeg_round_trip(levels, quality).astype(np.float32) * np.float32(1.0 / 255.0)


def usm_sharpen(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: int = 10) -> np.ndarray:
    """Unsharp masking as Real-ESRGAN sharpens its ground truth: img + weight * (img - blur), applied
    through a soft mask of where |img - blur| exceeds `threshold` 8-bit levels. float32 HWC [0, 1]."""
    if radius % 2 == 0:
        radius += 1
    blurred = cv2.GaussianBlur(img, (radius, radius), 0)
    residual = img - blurred
    mask = (np.abs(residual) * 255 > threshold).astype(np.float32)
    soft = cv2.GaussianBlur(mask, (radius, radius), 0)
    sharp = np.clip(img + weight * residual, 0.0, 1.0)
    return (soft * sharp + (1 - soft) * img).astype(np.float32)


# ---------------------------------------------------------------- the pipeline
def _stage_noise(img: np.ndarray, cfg: dict[str, Any], suffix: str, rng: np.random.Generator) -> np.ndarray:
    gray = rng.uniform() < cfg[f"gray_noise_prob{suffix}"]
    if rng.uniform() < cfg[f"gaussian_noise_prob{suffix}"]:
        return add_gaussian_noise(img, float(rng.uniform(*cfg[f"noise_range{suffix}"])), gray, rng)
    return add_poisson_noise(img, float(rng.uniform(*cfg[f"poisson_scale_range{suffix}"])), gray, rng)


def _resize_factor(rng: np.random.Generator, probs: list[float], factor_range: list[float]) -> float:
    direction = rng.choice(3, p=np.asarray(probs) / np.sum(probs))
    if direction == 0:
        return float(rng.uniform(1.0, factor_range[1]))
    if direction == 1:
        return float(rng.uniform(factor_range[0], 1.0))
    return 1.0


def _random_mode(rng: np.random.Generator) -> str:
    return str(rng.choice(list(RESIZE_MODES)))


def _stage_kernel(rng: np.random.Generator, cfg: dict[str, Any], suffix: str) -> np.ndarray:
    return random_blur_kernel(
        rng,
        cfg[f"kernel_list{suffix}"],
        cfg[f"kernel_prob{suffix}"],
        cfg[f"sinc_prob{suffix}"],
        cfg[f"blur_sigma{suffix}"],
        cfg[f"betag_range{suffix}"],
        cfg[f"betap_range{suffix}"],
        cfg["kernel_sizes"],
    )


def degrade_one_hop(hr: np.ndarray, scale: int, cfg: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """The LR of a photo that was downscaled once and saved once (a web image, a streamed frame):
    MATLAB bicubic ``imresize(hr, 1/scale)`` on 8-bit levels (what `sr-deploy eval` and the paper
    tables use), then with probability ``one_hop_noise_prob`` Gaussian noise of a sigma drawn from
    ``one_hop_noise_range`` 8-bit levels (grey with ``gray_noise_prob``), then one JPEG of a quality
    drawn from ``jpeg_range``. HR: RGB uint8 HWC (height and width multiples of `scale`); LR: float32
    RGB HWC in [0, 1] on 8-bit levels, (H/scale, W/scale, 3)."""
    img = bicubic_degrade(hr, scale, quantize=True)[1]
    if rng.uniform() < cfg["one_hop_noise_prob"]:
        gray = rng.uniform() < cfg["gray_noise_prob"]
        img = add_gaussian_noise(img, float(rng.uniform(*cfg["one_hop_noise_range"])), gray, rng)
    img = jpeg(img, int(rng.integers(cfg["jpeg_range"][0], cfg["jpeg_range"][1] + 1)))
    return img.astype(np.float32)


def degrade_real(hr: np.ndarray, scale: int, config: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """The high-order degradation of one HR crop (RGB uint8 or float32 HWC; height and width
    multiples of `scale`): float32 RGB HWC in [0, 1] on 8-bit levels, (H/scale, W/scale, 3).
    `config` holds the keys of `DEFAULTS` (missing keys take the paper's value). With probability
    ``one_hop_prob`` the crop takes `degrade_one_hop` instead."""
    cfg = {**DEFAULTS, **(config or {})}
    if cfg["one_hop_prob"] > 0 and rng.uniform() < cfg["one_hop_prob"]:
        return degrade_one_hop(hr if hr.dtype == np.uint8 else to_uint8(hr), scale, cfg, rng)
    img = hr.astype(np.float32) * np.float32(1.0 / 255.0) if hr.dtype == np.uint8 else hr.astype(np.float32)
    height, width = img.shape[:2]
    out_h, out_w = height // scale, width // scale
    # Draw every kernel first, as Real-ESRGAN's dataset does, so that the order of draws is fixed.
    kernel1 = _stage_kernel(rng, cfg, "")
    kernel2 = _stage_kernel(rng, cfg, "2")
    final_sinc = None
    if rng.uniform() < cfg["final_sinc_prob"]:
        final_sinc = pad_kernel(sinc_kernel(float(rng.uniform(np.pi / 3, np.pi)), int(rng.choice(cfg["kernel_sizes"]))))

    # Stage 1.
    img = blur(img, kernel1)
    factor = _resize_factor(rng, cfg["resize_prob"], cfg["resize_range"])
    img = resize(img, round(height * factor), round(width * factor), _random_mode(rng))
    img = _stage_noise(img, cfg, "", rng)
    img = jpeg(img, int(rng.integers(cfg["jpeg_range"][0], cfg["jpeg_range"][1] + 1)))

    # Stage 2.
    if rng.uniform() < cfg["second_blur_prob"]:
        img = blur(img, kernel2)
    factor = _resize_factor(rng, cfg["resize_prob2"], cfg["resize_range2"])
    img = resize(img, int(out_h * factor), int(out_w * factor), _random_mode(rng))
    img = _stage_noise(img, cfg, "2", rng)
    quality = int(rng.integers(cfg["jpeg_range2"][0], cfg["jpeg_range2"][1] + 1))
    mode = _random_mode(rng)
    if rng.uniform() < 0.5:
        img = resize(img, out_h, out_w, mode)
        if final_sinc is not None:
            img = blur(img, final_sinc)
        img = jpeg(np.clip(img, 0.0, 1.0), quality)
    else:
        img = jpeg(np.clip(img, 0.0, 1.0), quality)
        img = resize(img, out_h, out_w, mode)
        if final_sinc is not None:
            img = blur(img, final_sinc)
    return (np.clip(np.round(img * 255.0), 0, 255) * (1.0 / 255.0)).astype(np.float32)
