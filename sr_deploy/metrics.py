"""Image-quality metrics and the bicubic degradation, exactly as the super-resolution literature
computes them (the MATLAB scripts behind every SR paper's table).

- `imresize`: MATLAB's `imresize(..., 'bicubic')`: cubic kernel with a = -0.5, antialiasing
  when downscaling (the kernel is stretched by 1/scale), MATLAB's index arithmetic and
  symmetric (mirror) padding at the borders. Float in, float64 out, never clamped or rounded.
- `rgb_to_y`: the Y of MATLAB's `rgb2ycbcr` (ITU-R BT.601, "studio swing": Y in [16, 235]).
- `psnr` / `ssim`: on the Y channel (or RGB / grey when asked) with `crop_border` pixels
  removed on each side; SSIM is Wang et al. 2004 (`ssim_index.m`).
- `bicubic_degrade`: HR -> (HR cropped to a multiple of the scale, LR), the standard "BI"
  degradation used for both evaluation and training pairs.

Everything is plain numpy (float64 arithmetic, as MATLAB's), vectorised per axis.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["bicubic_degrade", "imresize", "modcrop", "psnr", "rgb_to_y", "ssim", "to_uint8"]


# --------------------------------------------------------------------------------------------
# MATLAB-compatible bicubic resize
# --------------------------------------------------------------------------------------------
def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`), support [-2, 2]."""
    absx = np.abs(x)
    absx2 = absx * absx
    absx3 = absx2 * absx
    return (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1) + (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * (
        (absx > 1) & (absx <= 2)
    )


def _contributions(
    in_length: int, out_length: int, scale: float, antialias: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Weights and source indices for one axis, as MATLAB's `contributions()`.

    Returns `weights` float64 (out_length, taps) whose rows sum to 1, and `indices` int64
    (out_length, taps): 0-based positions in the input, NOT yet folded into [0, in_length)
    (they may run past either border; `_fold` applies MATLAB's symmetric padding). Row i
    reads indices[i, 0] + t for tap t.
    """
    kernel_width = 4.0
    if scale < 1 and antialias:
        # Antialiasing: stretch the kernel by 1/scale so it low-passes before decimating.
        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * x)

        kernel_width = kernel_width / scale
    else:
        kernel = _cubic
    # Output pixel x (1-based) maps to input coordinate u (1-based) so that pixel centres line up.
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Drop tap columns whose weight is zero for every output (MATLAB's `kill`): saves work only.
    keep = np.flatnonzero(np.any(weights != 0, axis=0))
    keep = np.arange(keep[0], keep[-1] + 1)  # stay contiguous: row i reads indices[i, 0] + t
    return weights[:, keep], indices[:, keep].astype(np.int64) - 1


def _fold(indices: np.ndarray, in_length: int) -> np.ndarray:
    """MATLAB's symmetric padding: aux = [1..n, n..1], index i -> aux[i mod 2n] (0-based),
    so x[-1] = x[0], x[-2] = x[1], x[n] = x[n-1], ..."""
    aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    return aux[np.mod(indices, 2 * in_length)]


def _period(first: np.ndarray, limit: int = 64) -> tuple[int, int] | None:
    """(P, D) such that first[i + P] - first[i] == D for every i, smallest P <= limit; None
    when there is none. x4 down: (1, 4); x4 up: (4, 1); 1/3: (1, 3)."""
    n = first.size
    for p in range(1, min(limit, n) + 1):
        if p == n:
            return p, 0
        d = first[p:] - first[:-p]
        if np.all(d == d[0]):
            return p, int(d[0])
    return None


def _resize_axis(img: np.ndarray, axis: int, out_length: int, scale: float, antialias: bool) -> np.ndarray:
    weights, indices = _contributions(img.shape[axis], out_length, scale, antialias)
    n_taps = weights.shape[1]
    out = np.zeros(img.shape[:axis] + (out_length,) + img.shape[axis + 1 :], dtype=np.float64)
    src = np.moveaxis(img, axis, 0)
    dst = np.moveaxis(out, axis, 0)  # a view: writing to it fills `out`
    bshape = (-1,) + (1,) * (img.ndim - 1)
    first = indices[:, 0]
    period = _period(first)
    if period is None:  # irregular factor: one gather per tap
        for t in range(n_taps):
            dst += weights[:, t].reshape(bshape) * np.take(src, _fold(first + t, src.shape[0]), axis=0)
        return out
    # Regular factor (every integer or 1/integer scale): mirror-pad once, then each (phase, tap)
    # reads a strided VIEW of the padded input, with no gather copies.
    p, d = period
    lo = int(min(0, first.min()))
    hi = int(max(src.shape[0] - 1, first.max() + n_taps - 1))
    padded = np.take(src, _fold(np.arange(lo, hi + 1), src.shape[0]), axis=0) if (lo < 0 or hi >= src.shape[0]) else src
    for r in range(p):
        rows = slice(r, out_length, p)
        count = len(range(r, out_length, p))
        start = int(first[r]) - lo
        for t in range(n_taps):
            view = padded[start + t : start + t + (count - 1) * d + 1 : d] if d else padded[start + t : start + t + 1]
            dst[rows] += weights[rows, t].reshape(bshape) * view
    return out


def imresize(
    img: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
    antialias: bool = True,
) -> np.ndarray:
    """Resize like MATLAB's `imresize(img, scale, 'bicubic')` (or `imresize(img, [h w])`).

    img: (H, W) or (H, W, C), any real dtype, any value range (e.g. [0, 1] or [0, 255]).
    scale: the factor (0.25 = 4x down); the output size is ceil(H * scale), ceil(W * scale)
        and the weights use `scale` itself, as MATLAB does.
    output_shape: (h, w) instead of `scale`; each axis then uses its own factor out / in.
    Returns float64 of shape (h, w) or (h, w, C), NOT clamped and NOT rounded: callers that
    want an 8-bit image quantise once (`to_uint8`). Rows are resized first, then columns (the
    order MATLAB uses for equal factors; unequal factors differ from MATLAB only by float
    rounding).
    """
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects (H, W) or (H, W, C), got shape {img.shape}")
    h, w = img.shape[:2]
    if (scale is None) == (output_shape is None):
        raise ValueError("imresize: give exactly one of scale and output_shape")
    if scale is not None:
        if scale <= 0:
            raise ValueError(f"imresize: scale must be > 0, got {scale}")
        out_h, out_w = int(math.ceil(h * scale)), int(math.ceil(w * scale))
        scale_h = scale_w = float(scale)
    else:
        out_h, out_w = int(output_shape[0]), int(output_shape[1])
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"imresize: output_shape must be positive, got {output_shape}")
        scale_h, scale_w = out_h / h, out_w / w
    out = np.asarray(img, dtype=np.float64)
    out = _resize_axis(out, 0, out_h, scale_h, antialias)
    out = _resize_axis(out, 1, out_w, scale_w, antialias)
    return out


# --------------------------------------------------------------------------------------------
# Colour, cropping, quantisation
# --------------------------------------------------------------------------------------------
def rgb_to_y(img: np.ndarray, round_like_uint8: bool = False) -> np.ndarray:
    """Y of MATLAB's `rgb2ycbcr` (ITU-R BT.601, studio swing).

    img: (H, W, 3) RGB (not BGR), values in [0, 255] (uint8 or float).
    Returns float64 (H, W) in [16, 235]: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255.
    round_like_uint8: round Y to integers, as `rgb2ycbcr` does when given a uint8 image (its
    output is then uint8). The published tables were computed that way; scoring unrounded Y
    moves Set5 / Set14 bicubic x4 by a few hundredths of a dB.
    """
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects (H, W, 3) RGB, got shape {img.shape}")
    rgb = np.asarray(img, dtype=np.float64)
    y = 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0
    return np.round(y) if round_like_uint8 else y


def to_uint8(img: np.ndarray, value_range: float = 1.0) -> np.ndarray:
    """Clamp and round a float image to uint8, as saving it to an 8-bit file would.

    img: any shape, float, nominal range [0, value_range]. Returns uint8, same shape.
    """
    scaled = np.asarray(img, dtype=np.float64) * (255.0 / value_range)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """The top-left (H - H mod scale, W - W mod scale) part of `img` ((H, W) or (H, W, C)),
    as the literature's `modcrop.m` does, so HR is exactly `scale` x LR."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale, ...]


def bicubic_degrade(hr: np.ndarray, scale: int, quantize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The standard "BI" degradation: crop HR to a multiple of `scale`, MATLAB bicubic down.

    hr: (H, W, C) or (H, W), uint8 (RGB if 3 channels; colour order is kept as given).
    Returns (hr_cropped, lr):
      hr_cropped: uint8 (H', W'[, C]) with H' = H - H mod scale (a view of `hr`).
      lr: float32 (H' / scale, W' / scale[, C]) in [0, 1]. With `quantize` (the default) it is
          clamped and rounded to 8-bit levels first, i.e. exactly what MATLAB's imresize of a
          uint8 image returns (and what an LR PNG on disk holds), divided by 255.
    """
    if hr.dtype != np.uint8:
        raise ValueError(f"bicubic_degrade expects a uint8 image, got {hr.dtype}")
    if scale < 1 or int(scale) != scale:
        raise ValueError(f"bicubic_degrade: scale must be a positive integer, got {scale}")
    scale = int(scale)
    hr_cropped = modcrop(hr, scale)
    if hr_cropped.shape[0] == 0 or hr_cropped.shape[1] == 0:
        raise ValueError(f"the image ({hr.shape[1]}x{hr.shape[0]}) is smaller than the scale {scale}")
    lr = imresize(hr_cropped, scale=1.0 / scale)
    if quantize:
        lr = np.clip(np.round(lr), 0, 255)
    return hr_cropped, (lr / 255.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# PSNR / SSIM
# --------------------------------------------------------------------------------------------
def _prepare(a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Shared by psnr / ssim: check shapes, take Y (rounded for uint8, as MATLAB), crop borders.
    Returns float64 arrays (H, W) or (H, W, C)."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (H, W, C) images, got shape {a.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")

    def convert(img: np.ndarray) -> np.ndarray:
        if y_channel and img.ndim == 3 and img.shape[2] == 3:
            return rgb_to_y(img, round_like_uint8=img.dtype == np.uint8)
        # Grey (H, W) or (H, W, 1) images are scored on their own channel: see evaluation.py.
        return np.asarray(img, dtype=np.float64)

    a64, b64 = convert(a), convert(b)
    if crop_border:
        a64 = a64[crop_border:-crop_border, crop_border:-crop_border, ...]
        b64 = b64[crop_border:-crop_border, crop_border:-crop_border, ...]
    if a64.shape[0] == 0 or a64.shape[1] == 0:
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {a.shape[:2]} image")
    return a64, b64


def psnr(a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB, peak 255.

    a, b: same shape, (H, W, 3) RGB or (H, W) grey, values in [0, 255] (uint8, or float on that
        scale). With `y_channel` an RGB pair is compared on `rgb_to_y` (rounded to integers for
        uint8 input, as MATLAB's rgb2ycbcr); otherwise on all channels. Grey is compared as is.
    crop_border: pixels removed on each side first (the literature uses `scale`).
    Returns float; `math.inf` for identical images (MSE 0).
    """
    a64, b64 = _prepare(a, b, crop_border, y_channel)
    mse = float(np.mean((a64 - b64) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """MATLAB `fspecial('gaussian', size, sigma)` is the outer product of this with itself."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """2-D 'valid' correlation of (H, W) `img` with the separable window outer(g, g)
    (MATLAB `filter2(window, img, 'valid')`): output (H - k + 1, W - k + 1)."""
    k = g.size
    h, w = img.shape
    rows = np.zeros((h - k + 1, w), dtype=np.float64)
    for i in range(k):
        rows += g[i] * img[i : i + h - k + 1, :]
    out = np.zeros((h - k + 1, w - k + 1), dtype=np.float64)
    for j in range(k):
        out += g[j] * rows[:, j : j + w - k + 1]
    return out


def _ssim_single(x: np.ndarray, y: np.ndarray) -> float:
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    g = _gaussian_1d()
    if x.shape[0] < g.size or x.shape[1] < g.size:
        raise ValueError(f"ssim needs at least {g.size}x{g.size} pixels after cropping, got {x.shape}")
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    sigma_xx = _filter_valid(x * x, g) - mu_x * mu_x
    sigma_yy = _filter_valid(y * y, g) - mu_y * mu_y
    sigma_xy = _filter_valid(x * y, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (sigma_xx + sigma_yy + c2)
    )
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool = True) -> float:
    """Structural similarity (Wang et al. 2004, MATLAB `ssim_index.m`).

    11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, statistics over the
    'valid' part only (no padding), mean of the SSIM map.
    a, b: as for `psnr` ((H, W, 3) RGB or (H, W) grey, values in [0, 255]); with `y_channel`
        an RGB pair is compared on Y (rounded for uint8), otherwise per channel and averaged.
    crop_border: pixels removed on each side first. Returns float in [-1, 1]; 1 when identical.
    """
    a64, b64 = _prepare(a, b, crop_border, y_channel)
    if a64.ndim == 2:
        return _ssim_single(a64, b64)
    return float(np.mean([_ssim_single(a64[..., c], b64[..., c]) for c in range(a64.shape[2])]))
