"""Metrics and MATLAB-style bicubic: hand-computed values, invariants, and the published table."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sr_deploy.metrics import bicubic_degrade, imresize, modcrop, psnr, rgb_to_y, ssim, to_uint8


# ---- imresize -------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [0.25, 0.5, 1 / 3, 2, 4])
def test_imresize_constant_image_stays_constant(scale):
    img = np.full((37, 23, 3), 0.7312)
    out = imresize(img, scale)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, 0.7312, rtol=0, atol=1e-12)


@pytest.mark.parametrize("h, w", [(255, 257), (33, 17), (7, 5)])
def test_imresize_down_then_up_shapes_for_odd_sizes(h, w):
    img = np.random.default_rng(0).random((h, w, 3))
    down = imresize(img, 0.25)
    assert down.shape == (math.ceil(h / 4), math.ceil(w / 4), 3)  # MATLAB: ceil(size * scale)
    up = imresize(down, 4)
    assert up.shape == (4 * down.shape[0], 4 * down.shape[1], 3)
    assert imresize(img[..., 0], output_shape=(h + 2, w - 1)).shape == (h + 2, w - 1)


def test_imresize_hand_computed_upscale_weights():
    # x2 up of [0, 1] along one axis: output centres map to u = x/2 + 0.25 (1-based), i.e. 0.75,
    # 1.25, 1.75, 2.25. For u = 1.25 the taps at 0..3 (1-based, mirrored to [0, 0, 1, 1]) sit at
    # distances 1.25, 0.25, 0.75, 1.75 with cubic weights (a = -0.5) below.
    def cubic(x):
        x = abs(x)
        return (1.5 * x**3 - 2.5 * x**2 + 1) if x <= 1 else (-0.5 * x**3 + 2.5 * x**2 - 4 * x + 2) if x <= 2 else 0

    wts = [cubic(d) for d in (1.25, 0.25, 0.75, 1.75)]  # sum to 1 already
    expected = (wts[2] + wts[3]) * 1.0  # the taps that read the value 1
    out = imresize(np.array([[0.0, 1.0]]), output_shape=(1, 4))
    assert out[0, 1] == pytest.approx(expected, abs=1e-12)
    # mirror symmetry: the output is antisymmetric about 0.5
    np.testing.assert_allclose(out[0] + out[0, ::-1], 1.0, atol=1e-12)


def test_imresize_is_not_clamped_and_antialiases():
    step = np.zeros((16, 16))
    step[:, 8:] = 1.0
    up = imresize(step, 2)
    assert up.min() < 0 and up.max() > 1  # bicubic overshoot is kept, not clamped
    # antialiased x4 down: a one-pixel-period checkerboard averages out to ~0.5 everywhere
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float64)
    down = imresize(checker, 0.25)
    assert np.abs(down[2:-2, 2:-2] - 0.5).max() < 0.01


def test_imresize_speed_budget_is_vectorised():
    # Not a benchmark: a guard against an accidental per-pixel loop (full 2040x1356 takes ~0.2 s).
    img = np.random.default_rng(1).random((340, 510, 3))
    import time

    t = time.perf_counter()
    imresize(img, 0.25)
    assert time.perf_counter() - t < 1.0


# ---- colour / crop / quantise ---------------------------------------------------------------
def test_rgb_to_y_matches_matlab_rgb2ycbcr():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [10, 200, 30]]], dtype=np.uint8)
    y = rgb_to_y(rgb)
    assert y[0, 0] == pytest.approx(16.0)
    assert y[0, 1] == pytest.approx(235.0)
    assert y[0, 2] == pytest.approx(16 + 65.481)
    assert y[0, 3] == pytest.approx(16 + (65.481 * 10 + 128.553 * 200 + 24.966 * 30) / 255)
    assert rgb_to_y(rgb, round_like_uint8=True)[0, 2] == 81.0  # 81.481 -> 81, as uint8 output


def test_modcrop_and_to_uint8():
    img = np.zeros((13, 10, 3), np.uint8)
    assert modcrop(img, 4).shape == (12, 8, 3)
    assert to_uint8(np.array([-0.2, 0.5, 0.50196, 1.3])).tolist() == [0, 128, 128, 255]


def test_bicubic_degrade_shapes_dtypes_and_quantisation():
    hr = np.random.default_rng(2).integers(0, 256, (101, 66, 3), dtype=np.uint8)
    hr_c, lr = bicubic_degrade(hr, 4)
    assert hr_c.shape == (100, 64, 3) and hr_c.dtype == np.uint8
    assert lr.shape == (25, 16, 3) and lr.dtype == np.float32
    assert lr.min() >= 0 and lr.max() <= 1
    np.testing.assert_allclose(lr * 255, np.round(lr * 255), atol=1e-4)  # 8-bit levels
    raw = bicubic_degrade(hr, 4, quantize=False)[1]
    np.testing.assert_allclose(raw, imresize(hr_c, 0.25) / 255, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        bicubic_degrade(hr.astype(np.float32), 4)


# ---- psnr / ssim ----------------------------------------------------------------------------
def test_psnr_identical_is_inf():
    img = np.random.default_rng(3).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    assert psnr(img, img.copy(), crop_border=4) == math.inf
    assert ssim(img, img.copy(), crop_border=0) == pytest.approx(1.0)


def test_psnr_hand_computed():
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[1, 2] = 16  # MSE = 16^2 / 16 = 16
    assert psnr(a, b, crop_border=0) == pytest.approx(10 * math.log10(255**2 / 16))
    # cropping 1 px keeps the differing pixel in a 2x2 window: MSE = 256 / 4 = 64
    assert psnr(a, b, crop_border=1) == pytest.approx(10 * math.log10(255**2 / 64))
    # RGB, all channels: one channel off by 3 everywhere -> MSE = 9 / 3 = 3
    x = np.full((5, 5, 3), 100, np.uint8)
    y = x.copy()
    y[..., 1] += 3
    assert psnr(x, y, crop_border=0, y_channel=False) == pytest.approx(10 * math.log10(255**2 / 3))
    # on Y: G +3 moves Y by 3 * 128.553 / 255 = 1.512..., rounded for uint8 -> 1.0 (MATLAB)
    assert psnr(x, y, crop_border=0) == pytest.approx(10 * math.log10(255**2 / 1.0))
    assert psnr(x.astype(np.float64), y.astype(np.float64), crop_border=0) == pytest.approx(
        10 * math.log10(255**2 / (3 * 128.553 / 255) ** 2)
    )


def test_ssim_hand_computed():
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    # constant 11x11 images: one valid window, no variance -> luminance term only
    a, b = np.full((11, 11), 100.0), np.full((11, 11), 120.0)
    assert ssim(a, b, 0) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))
    # b = a + 20 on a textured 11x11 image: variances equal, covariance = variance -> same value
    tex = np.random.default_rng(4).uniform(0, 200, (11, 11))
    r = np.arange(11) - 5
    window = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    mu = (window * tex).sum() / window.sum()
    assert ssim(tex, tex + 20, 0) == pytest.approx((2 * mu * (mu + 20) + c1) / (mu**2 + (mu + 20) ** 2 + c1))
    # b = 0.5 a: against a direct evaluation of the definition with the 2-D Gaussian window
    assert ssim(tex, 0.5 * tex, 0) == pytest.approx(_ssim_by_definition(tex, 0.5 * tex, c1, c2))
    # 13x13 with 1 px cropped is again a single 11x11 window
    big = np.random.default_rng(5).uniform(0, 255, (13, 13))
    other = np.clip(big + np.random.default_rng(6).normal(0, 20, big.shape), 0, 255)
    assert ssim(big, other, 1) == pytest.approx(_ssim_by_definition(big[1:-1, 1:-1], other[1:-1, 1:-1], c1, c2))


def _ssim_by_definition(x, y, c1, c2):
    """SSIM of one 11x11 window written out from Wang et al. 2004 eq. (13)."""
    r = np.arange(11) - 5
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
    cxy = (w * (x - mx) * (y - my)).sum()
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def test_psnr_ssim_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        psnr(np.zeros((8, 8)), np.zeros((8, 9)), 0)
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((12, 12)), np.zeros((12, 12)), 1)


# ---- the published bicubic x4 table, straight through the metric functions ------------------
def _read_rgb_or_grey(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return img[..., ::-1] if img.ndim == 3 else img


def test_bicubic_x4_reproduces_published_set5(set5_dir):
    scores = []
    for path in sorted(set5_dir.glob("*.png")):
        hr, lr = bicubic_degrade(_read_rgb_or_grey(path), 4)
        sr = to_uint8(imresize(lr, 4))
        scores.append((psnr(hr, sr, 4), ssim(hr, sr, 4)))
    mean_psnr, mean_ssim = np.mean(scores, axis=0)
    assert len(scores) == 5
    assert abs(mean_psnr - 28.42) <= 0.01 and abs(mean_ssim - 0.8104) <= 0.001


@pytest.mark.parametrize("scale, shape", [(0.25, None), (4, None), (1 / 3, None), (3, None), (None, (13, 29))])
def test_imresize_strided_path_equals_the_plain_gather(monkeypatch, scale, shape):
    """Regular factors read strided views of a mirror-padded input; irregular ones gather per tap.
    Both must give the same numbers (the gather is MATLAB's algorithm written out)."""
    import sr_deploy.metrics as metrics

    img = np.random.default_rng(7).random((31, 22, 3))
    fast = imresize(img, scale, output_shape=shape)
    monkeypatch.setattr(metrics, "_period", lambda first, limit=64: None)
    slow = imresize(img, scale, output_shape=shape)
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
