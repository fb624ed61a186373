"""The bundled default model: shipped in the package, described by `info`, used by `upscale`
without --model, and clearly better than bicubic on real data (scored now, not a stored number)."""

from __future__ import annotations

import json

import cv2
import pytest
from click.testing import CliRunner

from sr_deploy.cli import cli
from sr_deploy.evaluation import evaluate_dataset, upscaler_for
from sr_deploy.imaging import read_image
from sr_deploy.models.checkpoint import BUNDLED_MODELS, WEIGHTS_DIR
from sr_deploy.sample import make_sample_image, write_sample_image


def test_default_weights_are_inside_the_package() -> None:
    path = WEIGHTS_DIR / BUNDLED_MODELS["default"]
    assert path.is_file(), f"{path} missing: the package must ship its default model"
    assert path.stat().st_size < 10e6  # a few MB, fp16 storage
    assert (WEIGHTS_DIR / "README.md").is_file(), "the default model needs its model card"


def test_info_default() -> None:
    result = CliRunner().invoke(cli, ["info", "--json", "default"])
    assert result.exit_code == 0, result.output
    desc = json.loads(result.output)
    assert desc["arch"] == "SRResNet" and desc["scale"] == 4
    assert desc["metadata"]["iterations"] > 0 and "Sun_Hays80" in desc["metadata"]["data"]


@pytest.mark.slow
def test_default_beats_bicubic_by_1_5_db_on_set5(set5_dir) -> None:
    model = evaluate_dataset(upscaler_for("default", device="cpu", precision="fp32"), set5_dir, 4, progress=False)
    bicubic = evaluate_dataset(upscaler_for("bicubic", scale=4), set5_dir, 4, progress=False)
    assert bicubic.mean_psnr == pytest.approx(28.42, abs=0.01)
    assert model.mean_psnr >= bicubic.mean_psnr + 1.5, (model.mean_psnr, bicubic.mean_psnr)
    assert model.mean_ssim > bicubic.mean_ssim


def test_upscale_without_model_uses_the_default(tmp_path) -> None:
    src = write_sample_image(tmp_path / "sample.png", 40, 60)
    out = tmp_path / "sample_x4.png"
    result = CliRunner().invoke(cli, ["upscale", str(src), "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    img = read_image(out)
    assert img.shape == (160, 240, 3) and img.dtype.name == "uint8"
    # The picture itself came through (colours in the same places), only 4x larger.
    small = cv2.resize(img, (60, 40), interpolation=cv2.INTER_AREA).astype(float)
    assert abs(small - make_sample_image(40, 60)).mean() < 12


def test_default_gan_is_refused_with_the_reason() -> None:
    result = CliRunner().invoke(cli, ["info", "default-gan"])
    assert result.exit_code == 2
    assert "default-gan" in result.output and "VGG19" in result.output
    assert "Traceback" not in result.output
