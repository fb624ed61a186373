"""sr_deploy.parity: the figures, the thresholds, and the real images they are computed on."""

from __future__ import annotations

import copy
import math

import cv2
import numpy as np
import pytest
import torch

from sr_deploy.backends.torch_backend import TorchBackend
from sr_deploy.parity import check_thresholds, parity, parity_inputs, synthetic_image, uses_real_images


def test_parity_inputs_are_real_set5_crops(set5_dir):
    batches = parity_inputs(sizes=((64, 64), (50, 70)), batch=2)
    assert [b.shape for b in batches] == [(2, 3, 64, 64), (2, 3, 50, 70)]
    assert all(b.dtype == np.float32 and b.min() >= 0.0 and b.max() <= 1.0 for b in batches)
    # The first crop is the centre of baby.png, in RGB order.
    bgr = cv2.imread(str(set5_dir / "baby.png"))
    top, left = (bgr.shape[0] - 64) // 2, (bgr.shape[1] - 64) // 2
    expected = bgr[top : top + 64, left : left + 64, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0
    np.testing.assert_array_equal(batches[0][0], expected)
    assert not np.array_equal(batches[0][0], batches[0][1])  # different images in one batch
    np.testing.assert_array_equal(parity_inputs()[1], batches[1])  # deterministic
    assert uses_real_images()


def test_parity_inputs_fall_back_to_a_deterministic_synthetic_image(tmp_path, monkeypatch):
    monkeypatch.setenv("SR_DEPLOY_SHARED_DATA", str(tmp_path))  # an empty data folder
    assert not uses_real_images(tmp_path)
    a = parity_inputs(sizes=((40, 30),), batch=3, data_dir=tmp_path)
    b = parity_inputs(sizes=((40, 30),), batch=3, data_dir=tmp_path)
    assert a[0].shape == (3, 3, 40, 30)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].std() > 0.1 and not np.array_equal(a[0][0], a[0][1])
    np.testing.assert_array_equal(synthetic_image(32, 32), synthetic_image(32, 32))


@pytest.mark.slow
def test_identical_backends_have_zero_error_and_pass(tiny_srresnet, set5_dir):
    backend = TorchBackend(tiny_srresnet, 4)
    report = parity(backend, backend, parity_inputs())
    assert report.max_abs == 0.0 and report.mean_abs == 0.0 and math.isinf(report.psnr_db)
    assert report.shapes == [(2, 3, 64, 64), (2, 3, 50, 70)]
    assert check_thresholds(report, "fp32") and report.passed


@pytest.mark.slow
def test_one_perturbed_weight_fails_the_check(tiny_srresnet, set5_dir):
    broken = copy.deepcopy(tiny_srresnet)
    with torch.no_grad():
        broken.tail.weight[0, 0, 4, 4] += 0.01  # one weight of the last conv, red channel
    report = parity(TorchBackend(tiny_srresnet, 4), TorchBackend(broken, 4), parity_inputs())
    assert not check_thresholds(report, "fp32")
    assert report.passed is False and report.max_abs > 1e-4
    assert "FAIL" in report.table() and "fp32" in report.criterion


def test_psnr_threshold_for_reduced_precision():
    rng = np.random.default_rng(0)
    x = [rng.random((1, 3, 16, 16), dtype=np.float32)]

    def noisy(sigma: float):
        return lambda a: a + rng.normal(0.0, sigma, a.shape).astype(np.float32)

    ident = lambda a: a  # noqa: E731
    good = parity(ident, noisy(10 ** (-55 / 20)), x)  # ~55 dB
    bad = parity(ident, noisy(10 ** (-45 / 20)), x)  # ~45 dB
    assert 53 < good.psnr_db < 57 and 43 < bad.psnr_db < 47
    assert check_thresholds(good, "fp16") and check_thresholds(good, "bf16")
    assert not check_thresholds(bad, "fp16")
    assert not check_thresholds(good, "fp32")  # 55 dB is far from fp32 agreement


def test_nan_and_inf_are_counted_and_fail():
    x = [np.full((1, 3, 4, 4), 0.5, np.float32)]

    def poisoned(a):
        out = a.copy()
        out[0, 0, 0, 0], out[0, 1, 0, 0] = np.nan, np.inf
        return out

    report = parity(lambda a: a, poisoned, x)
    assert report.nonfinite == 2 and report.max_abs == 0.0  # the finite values agree
    assert not check_thresholds(report, "fp16") and "NaN/Inf" in report.criterion


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        parity(lambda a: a, lambda a: a[:, :, :2], [np.zeros((1, 3, 4, 4), np.float32)])
