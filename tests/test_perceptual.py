"""Perceptual half (issue 14): ImageNet feature networks from real weight files, LPIPS as the
reference implementation computes it, GAN training on the real VGG16, realism control.

The real weights are ../shared/data/weights/perceptual (VGG16 and AlexNet with the LPIPS v0.1
heads); tests that need them skip with a reason when the folder is absent.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _data import missing
from click.testing import CliRunner

from sr_deploy.cli import cli
from sr_deploy.errors import InputError
from sr_deploy.models import SRResNet, load_checkpoint, save_checkpoint
from sr_deploy.perceptual import LPIPS, FeatureExtractor, load_weights, lpips_uint8
from sr_deploy.realism import resolve_realism
from sr_deploy.util.files import file_sha256
from train.cli import main as train_main
from train.state import slim_state

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def perceptual_dir(shared_data: Path) -> Path:
    path = shared_data / "weights" / "perceptual"
    if not (path / "lpips_alexnet_imagenet.npz").is_file():
        missing(f"LPIPS / VGG16 ImageNet weights not found at {path}")
    return path


@pytest.fixture(scope="module")
def lpips_alex(perceptual_dir: Path) -> LPIPS:
    return LPIPS("alex", perceptual_dir)


@pytest.mark.slow
def test_lpips_of_identical_images_is_zero_and_grows_with_damage(lpips_alex, set5_dir):
    import cv2

    hr = cv2.cvtColor(cv2.imread(str(set5_dir / "bird.png")), cv2.COLOR_BGR2RGB)
    assert lpips_uint8(lpips_alex, hr, hr) == 0.0
    blurred = [cv2.GaussianBlur(hr, (0, 0), sigma) for sigma in (0.8, 2.0)]
    light, heavy = (lpips_uint8(lpips_alex, b, hr) for b in blurred)
    assert 0.0 < light < heavy < 1.0
    assert lpips_uint8(lpips_alex, blurred[1], hr) == pytest.approx(lpips_uint8(lpips_alex, hr, blurred[1]), abs=1e-6)


@pytest.mark.slow
def test_eval_bicubic_lpips_reproduces_the_published_set5_row(perceptual_dir, set5_dir):
    """LPIPS-Alex of MATLAB-bicubic x4 on Set5: 0.3407 in the published tables."""
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "bicubic",
            "--dataset",
            str(set5_dir),
            "--metrics",
            "psnr,lpips",
            "--perceptual-weights",
            str(perceptual_dir),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("Set5 x4 bicubic: PSNR 28.419 dB, LPIPS ")
    assert float(line.split("LPIPS ")[1].split()[0]) == pytest.approx(0.3407, abs=0.001)


def test_eval_refuses_unknown_metric_and_missing_lpips_weights(set5_dir, tmp_path, monkeypatch):
    runner = CliRunner()
    bad = runner.invoke(cli, ["eval", "bicubic", "--dataset", str(set5_dir), "--metrics", "psnr,fid"])
    assert bad.exit_code == 2 and "--metrics 'psnr,fid': expected a comma list of psnr, ssim, lpips" in bad.output
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SR_DEPLOY_PERCEPTUAL_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    missing = runner.invoke(cli, ["eval", "bicubic", "--dataset", str(set5_dir), "--metrics", "lpips"])
    assert missing.exit_code == 2
    lines = missing.output.strip().splitlines()
    assert (
        len(lines) == 1
        and "alexnet ImageNet weights not found" in lines[0]
        and "SR_DEPLOY_PERCEPTUAL_WEIGHTS" in lines[0]
    )


@pytest.mark.slow
def test_weights_are_identified_by_sha256(perceptual_dir, tmp_path):
    loaded = load_weights("vgg16", perceptual_dir)
    assert loaded.known is not None and loaded.sha256 == file_sha256(perceptual_dir / "lpips_vgg16_imagenet.npz")
    assert loaded.describe()["release"].startswith("lpips_vgg16_imagenet.npz")
    # The same arrays with one weight changed: an unknown file, refused unless allowed.
    data = dict(np.load(perceptual_dir / "lpips_vgg16_imagenet.npz"))
    data["VGG16_0/Conv_0/bias"] = data["VGG16_0/Conv_0/bias"] + 1
    fake = tmp_path / "lpips_vgg16_imagenet.npz"
    np.savez(fake, **data)
    with pytest.raises(InputError, match=f"{fake}: not a known ImageNet vgg16 weights file"):
        load_weights("vgg16", fake)
    assert load_weights("vgg16", fake, allow_unknown=True).known is None
    with pytest.raises(InputError, match="holds alexnet weights, not vgg16"):
        load_weights("vgg16", perceptual_dir / "lpips_alexnet_imagenet.npz")


@pytest.mark.slow
def test_vgg16_features_match_torchvision(perceptual_dir):
    """Our VGG16 `features` loaded from the npz computes what torchvision's vgg16 does with the
    same weights (layer order, padding, pooling, HWIO -> OIHW transpose)."""
    torchvision = pytest.importorskip("torchvision")
    loaded = load_weights("vgg16", perceptual_dir)
    ours = FeatureExtractor("vgg16", ["relu5_3"], imagenet_input=False).load_features(loaded.features, "npz")
    ref = torchvision.models.vgg16().features[:30].eval()
    ref.load_state_dict({k: v for k, v in loaded.features.items() if int(k.split(".")[0]) < 30})
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x)[0], ref(x), atol=1e-5)


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_short_gan_run_on_real_vgg16_completes_and_resumes(perceptual_dir, shared_data, set5_dir, tmp_path):
    """ESRGAN recipe on the real ImageNet VGG16 (tiny generator and crops): the checkpoint names
    the feature network and its sha256; `--resume --iters N` extends the run and re-plans the
    learning-rate schedule for N."""
    init = save_checkpoint(
        tmp_path / "init.pt", SRResNet(num_blocks=1, num_features=8), {"num_blocks": 1, "num_features": 8}
    )
    out = tmp_path / "gan"
    common = [
        "--data",
        str(shared_data / "train" / "Sun_Hays80"),
        "--val",
        str(set5_dir),
        "--out",
        str(out),
        "--perceptual-weights",
        str(perceptual_dir),
        "--max-images",
        "2",
        "--workers",
        "0",
        "--no-progress",
    ]
    sets = [
        "--set",
        f"init={init}",
        "--set",
        "data.crop_size=32",
        "--set",
        "data.batch_size=2",
        "--set",
        "val.max_images=1",
        "--set",
        "val.every=2",
        "--set",
        "log.every=1",
        "--set",
        "train.milestones=[0.75]",
    ]
    assert train_main(["esrgan", *common, *sets, "--iters", "2"]) == 0
    meta = load_checkpoint(out / "model_latest.pt").metadata
    assert meta["feature_network"]["arch"] == "vgg16"
    assert meta["feature_network"]["sha256"] == file_sha256(perceptual_dir / "lpips_vgg16_imagenet.npz")
    assert train_main(["esrgan", *common, "--resume", "--iters", "4"]) == 0
    rows = read_csv(out / "loss.csv")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    # The milestone at 3/4 of the run: planned for 2 iterations the lr halves after step 2 (step 3
    # would run at 5e-5); re-planned for 4 it halves after step 3.
    assert [r["lr"] for r in rows] == pytest.approx([1e-4, 1e-4, 1e-4, 5e-5])
    assert "re-planned from 2 to 4 iterations" in (out / "train.log").read_text()
    val = read_csv(out / "val.csv")
    # A 1-block, 8-channel generator after 4 steps: LPIPS is scored, not good (it may exceed 1).
    assert [r["iteration"] for r in val] == [2, 4] and all(0 < r["lpips"] < 5 for r in val), val
    # The slimmed state (what a committed GAN run keeps) still resumes: the generator exactly.
    generator_before = torch.load(out / "state_latest.pt", weights_only=True)["generator"]
    before, after = slim_state(out / "state_latest.pt")
    assert after < before
    slim = torch.load(out / "state_latest.pt", weights_only=True)
    assert slim["opt_d"] is None and all(
        v.dtype == torch.float16 for v in slim["discriminator"].values() if v.is_floating_point()
    )
    assert all(torch.equal(v, generator_before[k]) for k, v in slim["generator"].items())
    assert train_main(["esrgan", *common, "--resume", "--iters", "5"]) == 0
    assert read_csv(out / "loss.csv")[-1]["iteration"] == 5


@pytest.mark.slow
def test_training_refuses_unknown_vgg_weights_with_one_line(shared_data, tmp_path):
    fake = tmp_path / "vgg16-397923af.pth"  # the right name, the wrong bytes
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, fake)
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "esrgan",
            "--data",
            str(shared_data / "train" / "Sun_Hays80"),
            "--out",
            str(out),
            "--perceptual-weights",
            str(fake),
            "--iters",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {fake}: not a known ImageNet vgg16 weights file")
    assert not out.exists()


@pytest.mark.slow
def test_train_help_without_the_train_extra():
    """`python -m train --help` without PyYAML prints the help, not a ModuleNotFoundError."""
    code = (
        "import sys; sys.modules['yaml'] = None; sys.argv = ['train', '--help']; import runpy; "
        "runpy.run_module('train', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m train" in proc.stdout and "Traceback" not in proc.stderr
    code = code.replace("'--help'", "'srresnet', '--data', '.', '--out', 'x'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "error: PyYAML is not installed: pip install 'sr-deploy[train]' to train"
    )


# ------------------------------------------------------------------------------ realism
@pytest.fixture
def pair(tmp_path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.setenv("SR_DEPLOY_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    cfg = {"num_blocks": 1, "num_features": 8}
    a = save_checkpoint(tmp_path / "psnr.pt", SRResNet(**cfg), cfg)
    b = save_checkpoint(tmp_path / "gan.pt", SRResNet(**cfg), cfg)
    return a, b


def test_realism_endpoints_are_the_models_bit_for_bit_and_between_is_the_blend(pair, monkeypatch):
    a, b = pair
    assert resolve_realism(str(a), str(b), 0.0) == str(a)
    assert resolve_realism(str(a), str(b), 1.0) == str(b)
    assert resolve_realism(str(a), None, None) == str(a)
    mid = Path(resolve_realism(str(a), str(b), 0.3))
    assert mid.parent.name == "realism" and mid.is_file()
    assert mid.name.startswith("psnr+gan@0.3-")  # what outputs name as their model: the ends and A
    sa, sb = load_checkpoint(a).model.state_dict(), load_checkpoint(b).model.state_dict()
    for key, value in load_checkpoint(mid).model.state_dict().items():
        if not value.is_floating_point():
            assert torch.equal(value, sa[key]), key
            continue
        assert torch.allclose(value, (0.7 * sa[key].double() + 0.3 * sb[key].double()).float()), key
    assert resolve_realism(str(a), str(b), 0.3) == str(mid)  # cached, not made again
    # the same two files named otherwise, blended afresh (a cleared cache, another machine): the
    # same bytes, so outputs made with either are one model's to the skip rule
    monkeypatch.setenv("SR_DEPLOY_CACHE", str(a.parent / "other-cache"))
    respelled = Path(resolve_realism(os.path.relpath(a), str(b.parent / ".." / b.parent.name / b.name), 0.3))
    assert respelled != mid and respelled.read_bytes() == mid.read_bytes()
    # ...and named otherwise: a renamed copy of an end blends to the same bytes under another name
    renamed = a.with_name("renamed-psnr.pt")
    renamed.write_bytes(a.read_bytes())
    blend = Path(resolve_realism(str(renamed), str(b), 0.3))
    assert blend.name.startswith("renamed-psnr+gan@0.3-") and blend.read_bytes() == mid.read_bytes()


def test_a_damaged_cached_blend_is_made_again_and_cache_clear_removes_blends(pair, tmp_path):
    """A cached blend whose bytes changed since it was made (flipped bytes scored PSNR 7 dB; a
    truncated one failed every --realism run, naming a file the user never gave) is made again;
    `sr-deploy cache --clear` removes the blends too."""
    a, b = pair
    mid = Path(resolve_realism(str(a), str(b), 0.3))
    made = mid.read_bytes()
    for damage in (made[: len(made) // 2], made[:1000] + bytes(b ^ 0xFF for b in made[1000:1100]) + made[1100:]):
        mid.write_bytes(damage)
        assert resolve_realism(str(a), str(b), 0.3) == str(mid) and mid.read_bytes() == made
    result = CliRunner().invoke(cli, ["cache", "--clear"])
    assert result.exit_code == 0 and f"removed 1 --realism blends from {mid.parent}" in result.output
    assert list(mid.parent.iterdir()) == []


@pytest.mark.slow
def test_realism_cli_outputs_lie_between_the_endpoints(pair, tmp_path, set5_dir):
    import cv2

    a, b = pair
    lr = cv2.resize(cv2.imread(str(set5_dir / "bird.png")), (48, 48), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "lr.png"), lr)
    outputs = {}
    for alpha in (0.0, 0.5, 1.0):
        target = tmp_path / f"out_{alpha}.png"
        result = CliRunner().invoke(
            cli,
            [
                "upscale",
                str(tmp_path / "lr.png"),
                "-o",
                str(target),
                "--model",
                str(a),
                "--gan-model",
                str(b),
                "--realism",
                str(alpha),
                "--no-progress",
                "--device",
                "cpu",
            ],
        )
        assert result.exit_code == 0, result.output
        outputs[alpha] = cv2.imread(str(target)).astype(np.float64)
    for alpha, model in ((0.0, a), (1.0, b)):
        ref = tmp_path / f"ref_{alpha}.png"
        assert (
            CliRunner()
            .invoke(
                cli,
                [
                    "upscale",
                    str(tmp_path / "lr.png"),
                    "-o",
                    str(ref),
                    "--model",
                    str(model),
                    "--no-progress",
                    "--device",
                    "cpu",
                ],
            )
            .exit_code
            == 0
        )
        assert np.array_equal(cv2.imread(str(ref)), outputs[alpha].astype(np.uint8))
    d_ab = np.abs(outputs[0.0] - outputs[1.0]).mean()
    assert d_ab > 0 and np.abs(outputs[0.5] - outputs[0.0]).mean() < d_ab
    assert np.abs(outputs[0.5] - outputs[1.0]).mean() < d_ab


def test_eval_of_a_blend_names_both_ends_and_the_realism(pair, tmp_path, set5_dir):
    """The table line and the JSON say which two models at which A were scored (the loaded file
    is a cache entry whose name says neither), and the numbers are those of that blend."""
    a, b = pair
    args = ["eval", str(a), "--dataset", str(set5_dir), "--device", "cpu", "--quiet"]
    blend = CliRunner().invoke(
        cli, [*args, "--gan-model", str(b), "--realism", "0.25", "--json", str(tmp_path / "e.json")]
    )
    assert blend.exit_code == 0, blend.output
    assert "psnr.pt + gan.pt @ realism 0.25 (torch, cpu, fp32)" in blend.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["realism"] == {"realism": 0.25, "psnr_model": str(a), "gan_model": str(b)}
    direct = CliRunner().invoke(
        cli, [*args[:1], resolve_realism(str(a), str(b), 0.25), *args[2:], "--json", str(tmp_path / "d.json")]
    )
    assert direct.exit_code == 0, direct.output
    assert json.loads((tmp_path / "d.json").read_text())["datasets"] == report["datasets"]
    assert "realism" not in json.loads((tmp_path / "d.json").read_text())
    bicubic = CliRunner().invoke(cli, ["eval", "bicubic", "--dataset", str(set5_dir), "--realism", "0.5"])
    assert (
        bicubic.exit_code == 2
        and bicubic.output.strip() == "error: --realism blends two models' weights; bicubic has none"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--realism", "1.5"], "--realism 1.5: must be between 0 and 1"),
        (["--realism", "nan"], "--realism nan: must be between 0 and 1"),
        (["--gan-model", "x.pt"], "--gan-model x.pt: give --realism A too (0 = default-real-psnr, 1 = x.pt)"),
        (
            ["--model", "MODEL", "--realism", "0.5"],
            "(bundled pairs: default (with default-gan), default-real-psnr (with default-real))",
        ),
        (
            ["--model", "default-real", "--realism", "0.5"],
            "--realism blends from the faithful end: pass --model default-real-psnr",
        ),
        (["--model", "default-reall-psnr", "--realism", "0.5"], "error: default-reall-psnr: no such model file"),
    ],
)
def test_realism_usage_errors_are_one_line_exit_2(pair, tmp_path, args, message):
    a, _ = pair
    args = [str(a) if x == "MODEL" else x for x in args]
    result = CliRunner().invoke(cli, ["upscale", str(tmp_path / "nothing.png"), "-o", str(tmp_path / "o.png"), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "o.png").exists()
