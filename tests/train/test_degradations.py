"""The degradations: Real-ESRGAN's training pipeline (train/degradations.py) and the named eval
specs (sr_deploy/degrade.py). Each setting is measured back from what the code produced."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from sr_deploy.degrade import Degradation, parse_degradation
from sr_deploy.errors import InputError
from sr_deploy.metrics import bicubic_degrade
from train import degradations as dg
from train.data import DegradationSpec, RandomPatches


def _measured_jpeg_quality(img: np.ndarray) -> int:
    """The quality a JPEG-decoded image was saved at, measured back: re-encoding at the original
    quality leaves it (almost) unchanged, any other quality changes it more."""
    errors = {q: float(np.mean((dg.jpeg(img, q) - img) ** 2)) for q in range(20, 100, 5)}
    return min(errors, key=errors.get)


def _second_moments(kernel: np.ndarray) -> np.ndarray:
    """The 2x2 covariance of a kernel seen as a distribution over (x, y) pixel offsets."""
    size = kernel.shape[0]
    ax = np.arange(size) - size // 2
    xx, yy = np.meshgrid(ax, ax)
    k = kernel / kernel.sum()
    return np.array(
        [[np.sum(k * xx * xx), np.sum(k * xx * yy)], [np.sum(k * xx * yy), np.sum(k * yy * yy)]], dtype=np.float64
    )


@pytest.fixture(scope="module")
def photo(shared_data) -> np.ndarray:
    from sr_deploy.imaging import read_image

    return read_image(shared_data / "benchmark" / "Set14" / "lenna.png")


# ---------------------------------------------------------------- kernels
@pytest.mark.parametrize("sigma", [0.8, 1.5, 2.5])
def test_isotropic_gaussian_kernel_has_the_sigma_it_was_given(sigma):
    kernel = dg.gaussian_kernel(21, sigma, sigma, 0.0)
    assert kernel.dtype == np.float32 and abs(float(kernel.sum()) - 1) < 1e-5
    cov = _second_moments(kernel)
    assert np.allclose(np.diag(cov), sigma**2, rtol=0.03), cov
    assert abs(cov[0, 1]) < 1e-6


def test_anisotropic_gaussian_kernel_is_rotated_by_theta():
    kernel = dg.gaussian_kernel(21, 2.5, 1.0, np.pi / 6)
    eigenvalues, eigenvectors = np.linalg.eigh(_second_moments(kernel))
    assert np.allclose(eigenvalues, [1.0, 2.5**2], rtol=0.05), eigenvalues
    major = eigenvectors[:, 1]
    assert abs(abs(np.dot(major, [np.cos(np.pi / 6), np.sin(np.pi / 6)])) - 1) < 1e-3


def test_generalized_and_plateau_kernels_change_shape_with_beta():
    heavy = dg.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 0.5)
    gaussian = dg.gaussian_kernel(21, 2.0, 2.0, 0.0)
    flat = dg.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 4.0)
    far = np.hypot(*np.meshgrid(np.arange(21) - 10, np.arange(21) - 10)) > 5
    # beta < 1: heavier tails than the Gaussian (beta = 1); beta > 1: a flat top that stops short
    assert heavy[far].sum() > gaussian[far].sum() > flat[far].sum()
    assert np.allclose(dg.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, 1.0), gaussian, atol=1e-6)
    plateau = dg.plateau_kernel(21, 2.0, 2.0, 0.0, 2.0)
    assert abs(float(plateau.sum()) - 1) < 1e-5 and plateau[10, 10] == plateau.max()


def test_sinc_kernel_passes_below_its_cutoff_and_stops_above():
    cutoff = np.pi / 3  # radians per pixel
    kernel = dg.sinc_kernel(cutoff, 21)
    response = np.abs(np.fft.fftshift(np.fft.fft2(np.pad(kernel, 53))))
    freqs = np.fft.fftshift(np.fft.fftfreq(response.shape[0])) * 2 * np.pi
    fx, fy = np.meshgrid(freqs, freqs)
    radius = np.hypot(fx, fy)
    assert response[radius < 0.6 * cutoff].min() > 0.85
    assert response[(radius > 1.5 * cutoff) & (radius < np.pi)].max() < 0.15


def test_random_blur_kernels_are_normalised_and_padded_to_21():
    rng = np.random.default_rng(0)
    cfg = dg.DEFAULTS
    for _ in range(40):
        kernel = dg.random_blur_kernel(
            rng,
            cfg["kernel_list"],
            cfg["kernel_prob"],
            0.3,
            cfg["blur_sigma"],
            cfg["betag_range"],
            cfg["betap_range"],
            cfg["kernel_sizes"],
        )
        assert kernel.shape == (21, 21) and abs(float(kernel.sum()) - 1) < 1e-4


# ---------------------------------------------------------------- noise and JPEG
def test_gaussian_noise_has_its_sigma_colour_and_grey():
    flat = np.full((256, 256, 3), 0.5, np.float32)
    colour = dg.add_gaussian_noise(flat, 10.0, False, np.random.default_rng(1)) - flat
    assert abs(colour.std() * 255 - 10.0) < 0.3
    assert abs(np.corrcoef(colour[..., 0].ravel(), colour[..., 1].ravel())[0, 1]) < 0.05
    grey = dg.add_gaussian_noise(flat, 10.0, True, np.random.default_rng(1)) - flat
    assert abs(grey.std() * 255 - 10.0) < 0.3
    assert np.array_equal(grey[..., 0], grey[..., 2])  # luminance noise: the same in every channel


def test_poisson_noise_variance_follows_the_signal():
    ramp = np.repeat(np.linspace(0.1, 0.9, 256, dtype=np.float32)[None, :, None], 512, axis=0)
    img = np.repeat(np.round(ramp * 255) / 255, 3, axis=2).astype(np.float32)
    scale = 2.0
    noise = dg.add_poisson_noise(img, scale, False, np.random.default_rng(2)) - img
    dark, bright = noise[:, 20:40].var(), noise[:, 216:236].var()
    # variance = value / levels * scale^2, with levels = 256 for this 8-bit image (clipping aside)
    expected_dark = img[:, 20:40].mean() / 256 * scale**2
    assert abs(dark / expected_dark - 1) < 0.1, (dark, expected_dark)
    assert bright > 3 * dark


@pytest.mark.parametrize("quality", [30, 40, 60, 85])
def test_jpeg_quality_is_measured_back(photo, quality):
    crop = photo[:128, :128].astype(np.float32) / 255
    assert _measured_jpeg_quality(dg.jpeg(crop, quality)) == quality


# ---------------------------------------------------------------- the pipeline
def test_degrade_real_is_seeded_shaped_and_on_8_bit_levels(photo):
    crop = np.ascontiguousarray(photo[:96, :128])
    a = dg.degrade_real(crop, 4, {}, np.random.default_rng(7))
    b = dg.degrade_real(crop, 4, {}, np.random.default_rng(7))
    c = dg.degrade_real(crop, 4, {}, np.random.default_rng(8))
    assert a.shape == (24, 32, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.allclose(a * 255, np.round(a * 255), atol=1e-4)


def test_degrade_real_settings_are_measured_back(photo):
    """Stage settings pinned to one value (no blur, no resize, Gaussian noise of 8 levels, JPEG
    95 then 95): the LR is the bicubic-sized crop plus noise of about that sigma."""
    pinned = {
        "sinc_prob": 0.0,
        "sinc_prob2": 0.0,
        "blur_sigma": [0.2, 0.2],
        "blur_sigma2": [0.2, 0.2],
        "kernel_prob": [1, 0, 0, 0, 0, 0],
        "kernel_prob2": [1, 0, 0, 0, 0, 0],
        "resize_prob": [0, 0, 1],
        "resize_prob2": [0, 0, 1],
        "gaussian_noise_prob": 1.0,
        "gaussian_noise_prob2": 0.0,
        "poisson_scale_range2": [0.0, 0.0],
        "noise_range": [8.0, 8.0],
        "gray_noise_prob": 0.0,
        "jpeg_range": [95, 95],
        "jpeg_range2": [95, 95],
        "final_sinc_prob": 0.0,
    }
    flat = np.full((256, 256, 3), 128, np.uint8)
    lr = dg.degrade_real(flat, 4, pinned, np.random.default_rng(3))
    # The noise was added at HR size (stage 1 keeps the size), so the 4x downscale at the end
    # averages it: its sigma drops by about 4 (area) to 8 (bicubic/bilinear weights), never to 0.
    sigma = (lr - 128 / 255).std() * 255
    assert 0.5 < sigma < 3.0, sigma


def test_one_hop_share_is_the_eval_degradation_and_keeps_the_paper_stream(photo):
    """one_hop_prob: that share of crops is exactly `eval --degrade jpeg=Q` (noise off), the rest
    take the two-stage pipeline; at 0 (the paper) the draws are the pipeline's own."""
    crop = np.ascontiguousarray(photo[:96, :96])
    pinned = {"one_hop_noise_prob": 0.0, "jpeg_range": [40, 40]}
    web = parse_degradation("jpeg=40").apply(crop, 4, "unused")[1]
    always = dg.degrade_real(crop, 4, {**pinned, "one_hop_prob": 1.0}, np.random.default_rng(1))
    assert np.allclose(always, web, atol=1e-6)
    one_hop = [
        np.allclose(dg.degrade_real(crop, 4, {**pinned, "one_hop_prob": 0.3}, np.random.default_rng(s)), web, atol=1e-6)
        for s in range(200)
    ]
    assert 0.2 < np.mean(one_hop) < 0.4, np.mean(one_hop)  # binomial(200, 0.3): sd 0.032
    # The paper's pipeline never gives the one-hop image.
    paper = dg.degrade_real(crop, 4, {"jpeg_range": [40, 40]}, np.random.default_rng(1))
    assert not np.allclose(paper, web, atol=1e-6)
    # one_hop_prob=0 draws nothing extra: the LR is the one the pipeline gave before the option
    # existed (its 8-bit levels' sha256, taken from the code of commit 4868fb2).
    before = dg.degrade_real(np.ascontiguousarray(photo[:96, :96]), 4, {}, np.random.default_rng(11))
    levels = np.round(before * 255).astype(np.uint8).tobytes()
    assert hashlib.sha256(levels).hexdigest() == "4d9ae61988b4791057638a314a0337a3bfacf2433a5cf2ee2331351f97f90eac"


def test_one_hop_noise_sigma_is_measured_back():
    """Grey noise of 12 levels on a flat grey LR, JPEG 95 after it (which keeps luminance detail;
    colour noise would lose some to 4:2:0 chroma): measured back as about 12."""
    flat = np.full((256, 256, 3), 128, np.uint8)
    cfg = {"one_hop_prob": 1.0, "one_hop_noise_prob": 1.0, "one_hop_noise_range": [12.0, 12.0], "gray_noise_prob": 1.0}
    lr = dg.degrade_real(flat, 4, {**cfg, "jpeg_range": [95, 95]}, np.random.default_rng(4))
    sigma = (lr - 128 / 255).std() * 255
    assert 10.0 < sigma < 12.5, sigma


def test_training_patches_use_the_real_degradation(shared_data):
    from train.data import load_image_cache

    _, images = load_image_cache(shared_data / "train" / "Sun_Hays80", max_images=2, progress=False)
    spec = DegradationSpec(scale=4, kind="realesrgan", real={})
    patches = RandomPatches(images, 96, spec, augment=True, seed=5)
    lr, hr = patches[3]
    again, _ = RandomPatches(images, 96, spec, augment=True, seed=5)[3]
    assert lr.shape == (3, 24, 24) and hr.shape == (3, 96, 96)
    assert torch_equal(lr, again)  # a sample is a pure function of (seed, n)
    bicubic_lr, _ = RandomPatches(images, 96, DegradationSpec(scale=4), augment=True, seed=5)[3]
    assert not torch_equal(lr, bicubic_lr)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


# ---------------------------------------------------------------- eval --degrade specs
def test_parse_degradation_names_and_bounds():
    assert parse_degradation(None) == Degradation() and parse_degradation("bicubic").name == "bicubic"
    spec = parse_degradation("jpeg=50, noise=5,blur=1.2")
    assert spec == Degradation(blur=1.2, noise=5.0, jpeg=50)
    assert spec.name == "blur=1.2,noise=5,jpeg=50"  # the order they apply in, whatever was typed
    assert parse_degradation("noise=10.0000001,jpeg=60").name == "noise=10.0000001,jpeg=60"  # not "noise=10"
    assert parse_degradation("blur=0,noise=0,jpeg=40").name == "jpeg=40"  # a zero sigma is no step
    assert parse_degradation("noise=0.0") == Degradation()
    for bad, message in [
        ("jpg=40", "'jpg=40' is not a step"),
        ("jpeg=40,jpeg=50", "jpeg is given twice"),
        ("noise=ten", "noise=ten is not a number"),
        ("jpeg=1_0", "jpeg=1_0 is not a number"),  # float() takes these three
        ("noise=\u0661\u0660", "is not a number"),
        ("noise=nan", "noise=nan is not a number"),
        ("jpeg=0", "must be an integer quality in [1, 100]"),
        ("jpeg=40.5", "must be an integer quality"),
        ("blur=-1", "must be a sigma in [0.0, 10.0]"),
    ]:
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
            parse_degradation(bad)


def test_degrade_spec_applies_blur_noise_and_jpeg_as_documented(photo):
    hr_crop, bicubic = bicubic_degrade(photo, 4)
    plain_hr, plain = Degradation().apply(photo, 4, "lenna.png")
    assert np.array_equal(plain, bicubic) and np.array_equal(plain_hr, hr_crop)

    _, noisy = parse_degradation("noise=10").apply(photo, 4, "lenna.png")
    _, again = parse_degradation("noise=10").apply(photo, 4, "lenna.png")
    _, other = parse_degradation("noise=10").apply(photo, 4, "baboon.png")
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, other)  # seeded by the file name
    residual = (noisy - bicubic) * 255
    inner = (bicubic > 0.1) & (bicubic < 0.9)  # away from clipping
    assert abs(residual[inner].std() - 10.0) < 0.4

    _, compressed = parse_degradation("jpeg=40").apply(photo, 4, "lenna.png")
    assert _measured_jpeg_quality(compressed[:96, :96]) == 40

    import cv2

    _, blurred = parse_degradation("blur=1.2").apply(photo, 4, "lenna.png")
    expected = bicubic_degrade(cv2.GaussianBlur(hr_crop, (0, 0), 1.2, borderType=cv2.BORDER_REFLECT_101), 4)[1]
    assert np.array_equal(blurred, expected)


def test_degrade_spec_handles_a_grey_image(shared_data):
    from sr_deploy.imaging import read_image

    grey = read_image(shared_data / "benchmark" / "Set14" / "bridge.png")
    if grey.ndim == 3:
        grey = grey[..., 0]
    hr, lr = parse_degradation("noise=5,jpeg=60").apply(grey, 4, "bridge.png")
    assert lr.ndim == 2 and lr.shape == (hr.shape[0] // 4, hr.shape[1] // 4)
