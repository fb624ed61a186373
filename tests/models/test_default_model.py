"""The bundled default model: shipped in the package, described by `info`, used by `upscale`
without --model, and clearly better than bicubic on real data (scored now, not a stored number)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from _data import missing
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_default_real_is_what_upscale_runs_and_beats_default_gan_on_compressed_input(set14_dir, weights_dir) -> None:
    """default-real (issue 23): the upscale default, default's architecture, trained on the
    real-world degradations (recipe and data in its metadata); on Set14 with its LR saved as
    JPEG quality 40 it scores better than default-gan on both PSNR and LPIPS (the figures of its
    model card: 24.59 dB / 0.3946 against 23.94 dB / 0.4435), and its L1 twin default-real-psnr
    is the faithful end (25.15 dB, above bicubic's 24.58 and default's 24.60)."""
    from sr_deploy.evaluation import run_eval
    from sr_deploy.upscale import DEFAULT_UPSCALE_MODEL, UpscaleOptions

    assert DEFAULT_UPSCALE_MODEL == UpscaleOptions().model == "default-real"
    real = json.loads(CliRunner().invoke(cli, ["info", "--json", "default-real"]).output)
    psnr = json.loads(CliRunner().invoke(cli, ["info", "--json", "default"]).output)
    assert real["arch"] == psnr["arch"] == "SRResNet" and real["config"] == psnr["config"]
    assert real["metadata"]["recipe"] == "realesrnet" and real["metadata"]["degradation"] == "realesrgan"
    assert real["metadata"]["losses"]["lpips"] == {"network": "vgg", "weight": 1.0}  # L1 + LPIPS-VGG
    assert "Sun_Hays80" in real["metadata"]["data"] and set(real["metadata"]["eval_x4_y"]) == {"Set5", "Set14"}
    scores = {}
    for model in ("default-real", "default-gan", "default-real-psnr"):
        _, (result,) = run_eval(
            model,
            [set14_dir],
            device="cpu",
            precision="fp32",
            progress=False,
            metrics=("psnr", "lpips"),
            perceptual_weights=weights_dir / "perceptual",
            degrade="jpeg=40",
        )
        scores[model] = (result.mean_psnr, next(iter(result.mean_lpips.values())))
    assert scores["default-real"][0] == pytest.approx(24.587, abs=0.01)
    assert scores["default-real"][1] == pytest.approx(0.3946, abs=0.001)
    assert scores["default-real-psnr"][0] == pytest.approx(25.154, abs=0.01)
    assert scores["default-real-psnr"][1] > scores["default-real"][1]  # faithful, less texture
    assert scores["default-real"][0] > scores["default-gan"][0] and scores["default-real"][1] < scores["default-gan"][1]


def test_info_says_what_a_bundled_model_is_for_and_prints_metadata_as_text() -> None:
    """`info default-real`: its purpose, its --realism pair, and the losses / feature network /
    scores as readable text rather than Python reprs."""
    lines = CliRunner().invoke(cli, ["info", "default-real"]).output.splitlines()
    field = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in lines}
    assert field["bundled"].startswith("default-real: what `upscale` runs by default")
    assert (
        field["realism"] == "--model default-real-psnr --realism A blends default-real-psnr (0) with default-real (1)"
    )
    assert field["losses"] == "pixel: type=l1, weight=1.0; lpips: network=vgg, weight=1.0"
    assert field["feature_network"].startswith("lpips_vgg16_imagenet.npz (torchvision vgg16-397923af")
    assert field["eval_x4_y"].startswith("Set5: psnr=28.275, ssim=0.7962, lpips=0.1831; Set14: psnr=26.119")
    assert not any("{" in line for line in lines), lines


@pytest.mark.slow
def test_default_gan_ships_with_its_provenance() -> None:
    """default-gan: same architecture as default (so it deploys and interpolates like it), its
    perceptual feature network named with its sha256, and scores recorded at packaging."""
    gan = json.loads(CliRunner().invoke(cli, ["info", "--json", "default-gan"]).output)
    psnr = json.loads(CliRunner().invoke(cli, ["info", "--json", "default"]).output)
    assert gan["arch"] == psnr["arch"] == "SRResNet" and gan["config"] == psnr["config"]
    assert gan["sha256"] != psnr["sha256"]
    feature = gan["metadata"]["feature_network"]
    assert feature["arch"] == "vgg16" and feature["sha256"].startswith("bdaa2d38b2a2")
    assert gan["metadata"]["recipe"] == "esrgan" and "Sun_Hays80" in gan["metadata"]["data"]
    assert set(gan["metadata"]["eval_x4_y"]) == {"Set5", "Set14"}


@pytest.mark.slow
def test_default_gan_is_perceptually_better_and_realism_lies_between(
    set5_dir, shared_data, tmp_path, monkeypatch
) -> None:
    """Scored now on Set5: LPIPS-Alex default-gan < realism 0.5 < default, PSNR the other way
    round, and default-gan above the 28.5 dB floor of its model card."""
    from sr_deploy.evaluation import lpips_metrics
    from sr_deploy.realism import resolve_realism

    weights = shared_data / "weights" / "perceptual"
    if not (weights / "lpips_alexnet_imagenet.npz").is_file():
        missing(f"LPIPS weights not found at {weights}")
    monkeypatch.setenv("SR_DEPLOY_CACHE", str(tmp_path))
    lpips = lpips_metrics(["lpips"], weights)
    scores = {}
    for alpha in (0.0, 0.5, 1.0):
        model = resolve_realism("default", None, alpha)
        result = evaluate_dataset(
            upscaler_for(model, device="cpu", precision="fp32"),
            set5_dir,
            4,
            progress=False,
            lpips=lpips,
            metrics=("psnr", "lpips"),
        )
        scores[alpha] = (result.mean_psnr, result.mean_lpips["lpips"])
    assert scores[1.0][1] < scores[0.5][1] < scores[0.0][1], scores
    assert scores[1.0][0] < scores[0.5][0] < scores[0.0][0], scores
    assert scores[1.0][0] >= 28.5 and scores[1.0][1] < 0.1358, scores  # better than the public SRGAN generator


@pytest.mark.slow
def test_upscale_realism_without_model_blends_the_real_world_pair(tmp_path, monkeypatch) -> None:
    """`upscale --realism A` without --model: A = 0 is default-real-psnr (default-real's L1 twin,
    same degradations), A = 1 is default-real itself, as the PNG provenance names them; between
    lies between them pixel for pixel on average."""
    from PIL import Image

    from sr_deploy.realism import BUNDLED_PAIR, resolve_realism

    assert BUNDLED_PAIR["default-real-psnr"] == "default-real"
    monkeypatch.setenv("SR_DEPLOY_CACHE", str(tmp_path / "cache"))
    src = write_sample_image(tmp_path / "sample.png", 32, 48)
    outputs = {}
    for alpha in ("0", "0.5", "1"):
        out = tmp_path / f"x4_{alpha}.png"
        result = CliRunner().invoke(cli, ["upscale", str(src), "-o", str(out), "--realism", alpha, "--no-progress"])
        assert result.exit_code == 0, result.output
        with Image.open(out) as im:
            outputs[alpha] = (im.text["sr-deploy"], read_image(out).astype(float))
    assert outputs["0"][0].startswith("model=default-real-psnr.pt:")
    assert outputs["1"][0].startswith("model=default-real.pt:")
    blend = Path(resolve_realism("default-real-psnr", None, 0.5))  # the cached blend of this pair
    assert outputs["0.5"][0].startswith(f"model={blend.name}:")
    assert blend.name.startswith("default-real-psnr+default-real@0.5-")  # both ends and A, readable
    ends = abs(outputs["0"][1] - outputs["1"][1]).mean()
    assert ends > 0.5 and abs(outputs["0.5"][1] - outputs["0"][1]).mean() < ends
    assert abs(outputs["0.5"][1] - outputs["1"][1]).mean() < ends
