"""Tests of the reference training code in `train/` (issue 7), on real data: Sun_Hays80 crops for
training and Set5 for validation. Every run uses a tiny generator, tiny crops and a handful of
iterations, in-process (no subprocess start-up) and without DataLoader workers, to stay fast on
two CPU cores.

Most GAN-recipe tests here use a RANDOMLY INITIALISED VGG16 saved in torchvision's state-dict
layout (accepted only with --allow-unknown-weights): they check that the file loads, the shapes and
that gradients flow, NOT that the perceptual loss means anything. tests/test_perceptual.py runs a
short GAN training on the real ImageNet VGG16 from ../shared/data.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _data import missing

from sr_deploy.models import SRResNet, load_checkpoint, load_model, save_checkpoint
from sr_deploy.perceptual import FeatureExtractor, _build_features
from train.cli import main as train_main
from train.data import DegradationSpec, RandomPatches, augment, degrade
from train.discriminators import SRGANDiscriminator, UNetDiscriminatorSN, VGGStyleDiscriminator
from train.interpolate import main as interpolate_main
from train.losses import PerceptualLoss, discriminator_loss, generator_adversarial_loss

TINY = ["--max-images", "3", "--workers", "0", "--no-progress", "--set", "data.batch_size=4", "--set", "log.every=1"]
TINY_SRRESNET = TINY + ["--set", "model.num_blocks=2", "--set", "model.num_features=16", "--set", "data.crop_size=24"]


@pytest.fixture(scope="session")
def sun_hays(shared_data: Path) -> Path:
    path = shared_data / "train" / "Sun_Hays80"
    if not path.is_dir():
        missing(f"training images not found at {path}")
    return path


@pytest.fixture(scope="session")
def random_vgg_file(tmp_path_factory) -> Path:
    """A RANDOMLY INITIALISED VGG16 (Kaiming init, so activations keep their scale through 13
    convs) in torchvision's `features.N.weight` layout: for shape / gradient-flow checks only."""
    torch.manual_seed(0)
    features, _ = _build_features("vgg16")
    for m in features.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    path = tmp_path_factory.mktemp("vgg") / "random_vgg16.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


@pytest.fixture
def lpips_weights(shared_data: Path, monkeypatch) -> Path:
    """The real LPIPS weights folder, made the default through $SR_DEPLOY_PERCEPTUAL_WEIGHTS (GAN
    runs with a validation set score LPIPS-Alex)."""
    path = shared_data / "weights" / "perceptual"
    if not (path / "lpips_alexnet_imagenet.npz").is_file():
        missing(f"LPIPS weights not found at {path}")
    monkeypatch.setenv("SR_DEPLOY_PERCEPTUAL_WEIGHTS", str(path))
    return path


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def tiny_init(folder: Path) -> Path:
    """A 1-block, 8-feature SRResNet checkpoint (seeded) for the GAN recipes to start from."""
    torch.manual_seed(1)
    return save_checkpoint(
        folder / "init.pt", SRResNet(num_blocks=1, num_features=8), {"num_blocks": 1, "num_features": 8}
    )


def tiny_realesrgan(sun_hays: Path, init: Path, vgg: Path) -> list:
    """The realesrgan recipe on the tiny generator: 32-pixel crops, an 8-feature U-Net."""
    return [
        *TINY,
        *("--data", sun_hays, "--perceptual-weights", vgg, "--allow-unknown-weights", "--set", f"init={init}"),
        *("--set", "data.crop_size=32", "--set", "discriminator.num_features=8"),
    ]


def run(*args: str) -> int:
    return train_main([str(a) for a in args])


# ------------------------------------------------------------------------------ SRResNet
@pytest.mark.slow  # a training run
def test_srresnet_trains_validates_and_resumes_identically(sun_hays, set5_dir, tmp_path):
    """A 10-iteration run vs the same run stopped at 5 and resumed: the same weights, EMA,
    optimiser moments and RNG states, bit for bit. Also: loss falls, val.csv/png written, the
    checkpoints load with load_model and carry the training metadata."""
    common = TINY_SRRESNET + [
        "--data",
        sun_hays,
        "--val",
        set5_dir,
        "--set",
        "val.max_images=2",
        "--set",
        "val.every=5",
        "--set",
        "train.ema_decay=0.9",
        "--set",
        "train.lr=1e-3",
    ]
    full, split = tmp_path / "full", tmp_path / "split"
    assert run("srresnet", *common, "--out", full, "--iters", 10) == 0
    assert run("srresnet", *common, "--out", split, "--iters", 5) == 0
    assert torch.load(split / "state_latest.pt", weights_only=True)["iteration"] == 5
    assert (
        run(
            "srresnet",
            "--data",
            sun_hays,
            "--val",
            set5_dir,
            "--out",
            split,
            "--resume",
            "--iters",
            10,
            "--workers",
            "0",
            "--no-progress",
        )
        == 0
    )

    a = torch.load(full / "state_latest.pt", weights_only=True)
    b = torch.load(split / "state_latest.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 10
    for part in ("generator", "ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"
    for name, tensor in a["opt_g"]["state"][0].items():
        assert torch.equal(tensor, b["opt_g"]["state"][0][name])
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["rng"]["python"] == b["rng"]["python"]
    assert torch.equal(a["rng"]["numpy"][1], b["rng"]["numpy"][1])

    losses = [row["pixel"] for row in read_csv(full / "loss.csv")]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])

    val = read_csv(full / "val.csv")
    assert [row["iteration"] for row in val] == [5, 10]

    def scores(rows):
        return [(r["iteration"], r["psnr"], r["ssim"]) for r in rows]

    assert scores(read_csv(split / "val.csv")) == scores(val)  # the same scores, no duplicated rows
    assert (full / "val.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "it 10/10" in (full / "train.log").read_text()

    ckpt = load_checkpoint(full / "model_latest.pt")
    assert ckpt.arch == "SRResNet" and ckpt.config["num_blocks"] == 2 and ckpt.scale == 4
    meta = ckpt.metadata
    assert meta["recipe"] == "srresnet" and meta["iterations"] == 10 and meta["degradation"] == "bicubic"
    assert meta["val"]["psnr"] == pytest.approx(val[-1]["psnr"]) and "CPU" in meta["hardware"]
    # The checkpoint holds the EMA weights, which is what validation scored.
    for name, tensor in ckpt.model.state_dict().items():
        assert torch.equal(tensor, a["ema"][name])
    best = load_model(full / "model_best.pt")
    assert isinstance(best, SRResNet)
    best_iteration = max(val, key=lambda r: r["psnr"])["iteration"]
    assert load_checkpoint(full / "model_best.pt").metadata["iterations"] == best_iteration


@pytest.mark.slow  # a training run
def test_a_run_without_matplotlib_says_once_that_val_png_needs_the_plot_extra(
    sun_hays, set5_dir, tmp_path, capsys, without_matplotlib
):
    """Without matplotlib val.png was skipped without a word, though docs/train.md lists it in the
    run folder: one note (stdout and train.log) names the extra, and the run goes on."""
    out = tmp_path / "r"
    val = ["--val", set5_dir, "--set", "val.max_images=1", "--set", "val.every=1"]
    assert run("srresnet", *TINY_SRRESNET, "--data", sun_hays, *val, "--out", out, "--iters", 2) == 0
    note = "note: the validation curve val.png needs matplotlib: pip install 'sr-deploy[plot]'"
    assert [line for line in capsys.readouterr().out.splitlines() if "val.png" in line] == [
        f"{note}; this run goes on without it"
    ]
    assert sum(note in line for line in (out / "train.log").read_text().splitlines()) == 1
    assert len(read_csv(out / "val.csv")) == 2 and not (out / "val.png").exists()


@pytest.mark.slow  # a training run
def test_overrides_build_the_requested_model_and_gaussian_degradation(sun_hays, tmp_path):
    out = tmp_path / "run"
    assert (
        run(
            "srresnet",
            *TINY_SRRESNET,
            "--data",
            sun_hays,
            "--out",
            out,
            "--iters",
            2,
            "--set",
            "model.batch_norm=false",
            "--set",
            "model.image_residual=bicubic",
            "--degradation",
            "gaussian",
            "--set",
            "train.schedule=cosine",
        )
        == 0
    )
    ckpt = load_checkpoint(out / "model_latest.pt")
    assert ckpt.config == {
        "scale": 4,
        "num_blocks": 2,
        "num_features": 16,
        "batch_norm": False,
        "image_residual": "bicubic",
    }
    assert not any("running_mean" in k for k in ckpt.model.state_dict())
    assert ckpt.metadata["degradation"] == "gaussian"


@pytest.mark.slow  # a training run
def test_stopping_by_signal_saves_a_resumable_state(sun_hays, tmp_path):
    """SIGINT mid-run: the loop finishes the current iteration, saves state and exits 130."""
    out = tmp_path / "run"
    assert run_interrupted("srresnet", *TINY_SRRESNET, "--data", sun_hays, "--out", out, "--iters", 1000, at=3) == 130
    assert torch.load(out / "state_latest.pt", weights_only=True)["iteration"] == 3
    assert "stopped by signal 2 at iteration 3" in (out / "train.log").read_text()
    assert load_checkpoint(out / "model_latest.pt").metadata["iterations"] == 3


# ------------------------------------------------------------------------------ GAN recipes
@pytest.mark.slow  # a training run
def test_srgan_from_srresnet_init(sun_hays, set5_dir, tmp_path, random_vgg_file, lpips_weights):
    """SRGAN (RANDOM VGG16, see the module docstring): starts from an SRResNet checkpoint,
    trains generator and discriminator, the discriminator loss falls, the result loads; the
    validation scores LPIPS and the best checkpoint is the lowest LPIPS."""
    init = tiny_init(tmp_path)
    out = tmp_path / "srgan"
    assert (
        run(
            "srgan",
            *TINY,
            "--data",
            sun_hays,
            "--val",
            set5_dir,
            "--set",
            "val.max_images=1",
            "--out",
            out,
            "--iters",
            6,
            "--set",
            f"init={init}",
            "--set",
            "data.crop_size=32",
            "--set",
            "val.every=3",
            "--perceptual-weights",
            random_vgg_file,
            "--allow-unknown-weights",
        )
        == 0
    )
    rows = read_csv(out / "loss.csv")
    assert all(np.isfinite(r["percep"]) and r["percep"] > 0 and np.isfinite(r["adv"]) for r in rows)
    assert np.mean([r["d_loss"] for r in rows[-2:]]) < np.mean([r["d_loss"] for r in rows[:2]])
    assert rows[2]["lr"] == pytest.approx(1e-4) and rows[-1]["lr"] == pytest.approx(1e-5)  # 1e-4 then 1e-5
    trained, start = load_checkpoint(out / "model_latest.pt"), load_checkpoint(init)
    assert trained.config == start.config
    assert not torch.equal(trained.model.tail.weight, start.model.tail.weight)
    state = torch.load(out / "state_latest.pt", weights_only=True)
    assert "classifier.3.weight" in state["discriminator"] and state["opt_d"]["state"]
    val = read_csv(out / "val.csv")
    assert [r["iteration"] for r in val] == [3, 6] and all(0 < r["lpips"] < 1 for r in val)
    best = min(val, key=lambda r: r["lpips"])
    assert load_checkpoint(out / "model_best.pt").metadata["best_val"]["iteration"] == best["iteration"]
    assert trained.metadata["feature_network"]["release"] == "unknown"
    assert trained.metadata["lpips_loss_network"] is None


@pytest.mark.slow  # a training run
def test_lpips_loss_term_lowers_lpips(sun_hays, tmp_path, lpips_weights):
    """`losses.lpips` (the real LPIPS-VGG): the only loss of a short run, logged as `lpips`, named
    in the checkpoint, and it moves the generator towards HR in LPIPS on crops it never saw."""
    from sr_deploy.perceptual import LPIPS
    from train.data import load_image_cache

    init = tiny_init(tmp_path)
    out = tmp_path / "lp"
    args = [*TINY, "--data", sun_hays, "--out", out, "--iters", 30, "--set", f"init={init}"]
    args += ["--set", "data.crop_size=32", "--set", "train.lr=1e-3", "--set", "train.schedule=none"]
    args += ["--set", "train.ema_decay=null"]  # the raw generator: 30 steps of an EMA barely move
    args += ["--set", "losses.pixel=null", "--set", "losses.lpips={network: vgg, weight: 1.0}"]
    assert run("realesrnet", *args) == 0
    rows = read_csv(out / "loss.csv")
    assert "pixel" not in rows[0] and all(0 < r["lpips"] < 1.5 for r in rows)
    trained = load_checkpoint(out / "model_latest.pt")
    assert trained.metadata["feature_network"]["file"].endswith("lpips_vgg16_imagenet.npz")
    assert trained.metadata["lpips_loss_network"] == trained.metadata["feature_network"]

    metric = LPIPS("vgg", lpips_weights)
    _, images = load_image_cache(sun_hays, min_size=32, max_images=8, progress=False)  # training saw the first 3
    patches = RandomPatches(images[4:], 32, DegradationSpec(scale=4), augment=False, seed=7)
    lr, hr = (torch.stack(t) for t in zip(*(patches[i] for i in range(8))))
    with torch.no_grad():
        before = metric(load_checkpoint(init).model(lr), hr).mean()
        after = metric(trained.model(lr), hr).mean()
    assert after < 0.9 * before, (before, after)


@pytest.mark.slow  # two short training runs
def test_realesrgan_unet_discriminator_trains_and_resumes_identically(sun_hays, tmp_path, random_vgg_file):
    """The realesrgan recipe's U-Net discriminator (spectral norm, per-pixel logits): a 4-iteration
    run vs the same run stopped at 2 and resumed give the same generator and discriminator bit for
    bit, spectral norm's power-iteration vectors included (they are state, not weights: a resume
    that lost them would differ)."""
    init = tiny_init(tmp_path)
    common = tiny_realesrgan(sun_hays, init, random_vgg_file)
    full, split = tmp_path / "full", tmp_path / "split"
    assert run("realesrgan", *common, "--out", full, "--iters", 4) == 0
    assert run("realesrgan", *common, "--out", split, "--iters", 2) == 0
    resume = ["--data", sun_hays, "--perceptual-weights", random_vgg_file, "--allow-unknown-weights"]
    assert run("realesrgan", *resume, "--out", split, "--resume", "--iters", 4, "--workers", "0", "--no-progress") == 0
    a = torch.load(full / "state_latest.pt", weights_only=True)
    b = torch.load(split / "state_latest.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 4
    assert "down.0.parametrizations.weight.0._u" in a["discriminator"]
    for part in ("generator", "discriminator"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name} differs after resume"
    rows = read_csv(full / "loss.csv")
    assert all(np.isfinite(r["adv"]) and r["adv"] > 0 and np.isfinite(r["d_loss"]) for r in rows)


@pytest.mark.slow  # a training run
def test_esrgan_psnr_then_gan_then_interpolation(sun_hays, tmp_path, random_vgg_file):
    """ESRGAN pipeline with a 1-block RRDBNet: L1 pre-training (loss falls), then perceptual
    (RANDOM VGG19) + RaGAN + L1 from it, then network interpolation of the two."""
    rrdb = [
        "--set",
        "model.num_blocks=1",
        "--set",
        "model.num_features=8",
        "--set",
        "model.growth_channels=4",
        "--set",
        "data.crop_size=32",
        "--set",
        "train.lr=1e-3",
    ]
    psnr_dir, gan_dir = tmp_path / "psnr", tmp_path / "gan"
    assert run("esrgan_psnr", *TINY, *rrdb, "--data", sun_hays, "--out", psnr_dir, "--iters", 8) == 0
    losses = [r["pixel"] for r in read_csv(psnr_dir / "loss.csv")]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    psnr_model = psnr_dir / "model_latest.pt"
    assert (
        run(
            "esrgan",
            *TINY,
            "--data",
            sun_hays,
            "--out",
            gan_dir,
            "--iters",
            3,
            "--set",
            "data.batch_size=2",
            "--set",
            "data.crop_size=32",
            "--set",
            f"init={psnr_model}",
            "--perceptual-weights",
            random_vgg_file,
            "--allow-unknown-weights",
        )
        == 0
    )
    rows = read_csv(gan_dir / "loss.csv")
    assert {"pixel", "percep", "adv", "d_loss", "d_real", "d_fake"} <= set(rows[0])
    assert all(np.isfinite(list(r.values())).all() for r in rows)
    gan_model = gan_dir / "model_latest.pt"
    assert load_checkpoint(gan_model).arch == "RRDBNet"

    a, b = load_model(psnr_model).state_dict(), load_model(gan_model).state_dict()
    for alpha, expected in ((0.0, a), (1.0, b), (0.5, {k: (a[k] + b[k]) / 2 for k in a})):
        out = tmp_path / f"interp_{alpha}.pt"
        assert interpolate_main([str(psnr_model), str(gan_model), "--alpha", str(alpha), "-o", str(out)]) == 0
        mixed = load_checkpoint(out)
        assert mixed.metadata["interpolated"]["alpha"] == alpha
        assert mixed.metadata["interpolated"]["psnr_model"] == str(psnr_model)  # a made file names its ends
        for k, v in mixed.model.state_dict().items():
            assert torch.equal(v, expected[k]), f"alpha {alpha}: {k}"


def test_interpolation_refuses_different_architectures(tmp_path, capsys):
    one = save_checkpoint(
        tmp_path / "a.pt", SRResNet(num_blocks=1, num_features=8), {"num_blocks": 1, "num_features": 8}
    )
    two = save_checkpoint(
        tmp_path / "b.pt", SRResNet(num_blocks=2, num_features=8), {"num_blocks": 2, "num_features": 8}
    )
    assert interpolate_main([str(one), str(two), "--alpha", "0.5", "-o", str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "different architecture" in err and "b.pt" in err
    assert interpolate_main([str(one), str(one), "--alpha", "1.5", "-o", str(tmp_path / "c.pt")]) == 2
    assert not (tmp_path / "c.pt").exists()


def test_onto_adds_the_gan_weight_change_to_a_third_model(tmp_path, capsys):
    """``--onto BASE``: BASE + alpha * (GAN - PSNR), read back parameter by parameter; with BASE
    = PSNR it is the interpolation; a model of another architecture is refused in one line."""
    config = {"num_blocks": 1, "num_features": 8}
    paths = []
    for seed, name in ((0, "psnr"), (1, "gan"), (2, "base")):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(tmp_path / f"{name}.pt", SRResNet(**config), config))
    psnr, gan, base = (load_model(p).state_dict() for p in paths)
    out = tmp_path / "out.pt"
    argv = [str(paths[0]), str(paths[1]), "--onto", str(paths[2]), "--alpha", "0.5", "-o", str(out)]
    assert interpolate_main(argv) == 0
    moved = load_checkpoint(out)
    assert moved.metadata["transferred"]["alpha"] == 0.5
    assert moved.metadata["transferred"]["base_sha256"] == load_checkpoint(paths[2]).sha256
    for key, value in moved.model.state_dict().items():
        if not value.is_floating_point():  # integer buffers come from BASE
            assert torch.equal(value, base[key])
            continue
        expected = base[key].double() + 0.5 * (gan[key].double() - psnr[key].double())
        assert torch.allclose(value.double(), expected, atol=1e-6), key
    # onto the PSNR model itself it is ESRGAN's interpolation
    argv = [str(paths[0]), str(paths[1]), "--onto", str(paths[0]), "--alpha", "0.5", "-o", str(tmp_path / "i.pt")]
    assert interpolate_main(argv) == 0
    for key, value in load_model(tmp_path / "i.pt").state_dict().items():
        assert not value.is_floating_point() or torch.allclose(value, (psnr[key] + gan[key]) / 2, atol=1e-6), key
    other = save_checkpoint(
        tmp_path / "other.pt", SRResNet(num_blocks=2, num_features=8), {"num_blocks": 2, "num_features": 8}
    )
    capsys.readouterr()
    argv = [str(paths[0]), str(paths[1]), "--onto", str(other), "-o", str(tmp_path / "x.pt")]
    assert interpolate_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "one architecture" in err and not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("case", ["missing", "empty", "too_small", "no_vgg", "gan_without_init", "lpips_not_a_mapping"])
def test_input_errors_are_one_line_exit_2_before_training(case, sun_hays, tmp_path, capsys, monkeypatch):
    data, recipe, extra = sun_hays, "srresnet", []
    if case == "missing":
        data, expected = tmp_path / "nowhere", "no such data folder"
    elif case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
        (data / "notes.txt").write_text("not an image")
        expected = "no images in the data folder"
    elif case == "too_small":
        extra, expected = ["--set", "data.crop_size=2000"], "is smaller than the 2000x2000 crop"
    elif case == "no_vgg":
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.delenv("SR_DEPLOY_PERCEPTUAL_WEIGHTS", raising=False)
        monkeypatch.chdir(tmp_path)  # no ../shared/data beside it
        recipe, expected = "srgan", "vgg16 ImageNet weights not found"
    elif case == "lpips_not_a_mapping":
        extra, expected = ["--set", "losses.lpips=vgg"], "losses.lpips 'vgg': expected {network: vgg, weight: 1.0}"
    else:
        recipe, extra, expected = "srgan", ["--set", "init=null"], "a GAN recipe starts from a trained PSNR-oriented"
    out = tmp_path / "run"
    code = run(recipe, *TINY_SRRESNET, "--data", data, "--out", out, "--iters", 2, *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not out.exists()  # nothing was started
    if case == "no_vgg":
        assert (
            str(tmp_path / "torch_home" / "hub" / "checkpoints") in err[0] and "SR_DEPLOY_PERCEPTUAL_WEIGHTS" in err[0]
        )
    if case == "gan_without_init":
        assert "--from-scratch" in err[0]
    if case == "too_small":
        assert "Sun_Hays80" in err[0]


def test_overrides_are_typed_as_on_a_command_line():
    """`--set train.lr=1e-4` is a float (YAML 1.1 reads it as a string); other values keep YAML's types."""
    from train.config import apply_overrides

    base = {"train": {"lr": 1.0e-3, "milestones": [], "amp": True}, "val": {"degrade": None}}
    out = apply_overrides(
        base, ["train.lr=1e-4", "train.milestones=[0.7, 0.75]", "train.amp=bf16", "val.degrade=noise=10,jpeg=60"]
    )
    assert out["train"] == {"lr": 1e-4, "milestones": [0.7, 0.75], "amp": "bf16"} and isinstance(
        out["train"]["lr"], float
    )
    assert out["val"]["degrade"] == "noise=10,jpeg=60" and base["train"]["lr"] == 1.0e-3
    assert apply_overrides(base, ["train.lr=2.5E-5"])["train"]["lr"] == 2.5e-5
    nested = apply_overrides(base, ["train.milestones=[1e3, 2E3]", "val.degrade={weight: 1e-2}"])
    assert nested["train"]["milestones"] == [1000.0, 2000.0] and nested["val"]["degrade"] == {"weight": 0.01}
    assert apply_overrides(base, ["train.amp=8"])["train"]["amp"] == 8  # still an int


def test_a_resume_logs_the_settings_it_changes(sun_hays, tmp_path):
    out = tmp_path / "r"
    assert run("srresnet", *TINY_SRRESNET, "--data", sun_hays, "--out", out, "--iters", 2) == 0
    resume = ["--data", sun_hays, "--out", out, "--resume", "--workers", "0", "--no-progress"]
    assert run("srresnet", *resume, "--iters", 3, "--set", "train.lr=5e-4") == 0
    assert run("srresnet", *resume, "--iters", 4) == 0
    # another kind of schedule: the saved constant schedule's state is not loaded into the new one
    changed = ["--set", "train.schedule=multistep", "--set", "train.milestones=[3]", "--set", "train.lr=4e-4"]
    assert run("srresnet", *resume, "--iters", 5, *changed) == 0
    lines = [line for line in (out / "train.log").read_text().splitlines() if " resume srresnet: " in line]
    assert len(lines) == 3
    assert lines[0].endswith("; settings changed: train.iterations 2 -> 3, train.lr 0.0001 -> 0.0005"), lines[0]
    assert lines[1].endswith("; settings changed: train.iterations 3 -> 4"), lines[1]
    assert "train.lr" not in lines[1]  # the resumed run goes on with what config.yaml recorded
    assert "train.lr 0.0005 -> 0.0004, train.schedule 'none' -> 'multistep', train.milestones [] -> [3]" in lines[2]
    # and the new rate is the one the optimiser used
    lrs = [row["lr"] for row in read_csv(out / "loss.csv")]
    assert lrs[0] == pytest.approx(1e-4) and lrs[2] > 1e-4 and lrs[3] > 1e-4, lrs
    assert lrs[4] == pytest.approx(4e-5)  # 4e-4, times the recipe's gamma 0.1 from iteration 3


def run_interrupted(recipe: str, *args, at: int) -> int:
    """`run`, with SIGINT raised at generator step `at` (the trainer saves its state and stops)."""
    import os
    import signal

    from train import trainer

    original, calls = trainer.Trainer._generator_step, {"n": 0}

    def step_then_interrupt(self, lr, hr):
        calls["n"] += 1
        if calls["n"] == at:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, lr, hr)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer.Trainer, "_generator_step", step_then_interrupt)
        return run(recipe, *args)


def test_a_resume_with_only_a_new_rate_uses_it(sun_hays, tmp_path):
    """The same plan, a new learning rate and Adam betas: the optimiser's saved ones must not win.
    And a resume that changes nothing re-plans nothing and logs no change."""
    out = tmp_path / "r"
    args = [*TINY_SRRESNET, "--data", sun_hays, "--out", out, "--iters", 6, "--set", "train.schedule=none"]
    assert run_interrupted("srresnet", *args, at=2) == 130
    resume = ["--data", sun_hays, "--out", out, "--resume", "--workers", "0", "--no-progress"]
    assert (
        run_interrupted("srresnet", *resume, "--set", "train.lr=5e-4", "--set", "train.betas=[0.5, 0.99]", at=2) == 130
    )
    state = torch.load(out / "state_latest.pt", weights_only=True)
    assert state["opt_g"]["param_groups"][0]["betas"] == (0.5, 0.99)
    assert run("srresnet", *resume) == 0
    assert [row["lr"] for row in read_csv(out / "loss.csv")] == pytest.approx([1e-4] * 2 + [5e-4] * 4)
    log = (out / "train.log").read_text().splitlines()
    assert any("re-planned for the new settings (lr now 0.0005)" in line for line in log)
    last_resume = [line for line in log if " resume srresnet: " in line][-1]
    assert "re-planned" not in last_resume and "settings changed" not in last_resume, last_resume


@pytest.mark.slow  # two short training runs
def test_a_resume_from_a_slimmed_gan_state_keeps_the_scheduled_discriminator_rate(sun_hays, tmp_path, random_vgg_file):
    """A slimmed state has no discriminator optimiser: the fresh one must take the schedule's rate
    (here halved at iteration 2), not the base rate."""
    from train.state import slim_state

    init = tiny_init(tmp_path)
    out = tmp_path / "gan"
    args = tiny_realesrgan(sun_hays, init, random_vgg_file)
    args += ["--set", "train.schedule=multistep", "--set", "train.milestones=[2]", "--out", out, "--iters", 6]
    assert run_interrupted("realesrgan", *args, at=3) == 130
    slim_state(out / "state_latest.pt")
    assert torch.load(out / "state_latest.pt", weights_only=True)["opt_d"] is None
    resume = ["--data", sun_hays, "--out", out, "--resume", "--workers", "0", "--no-progress"]
    assert run("realesrgan", *resume, "--perceptual-weights", random_vgg_file, "--allow-unknown-weights") == 0
    state = torch.load(out / "state_latest.pt", weights_only=True)
    assert state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(5e-5)


def test_bad_override_and_resume_without_state(sun_hays, tmp_path, capsys):
    assert run("srresnet", "--data", sun_hays, "--out", tmp_path / "r", "--set", "modle.num_blocks=8") == 2
    assert "no config section 'modle'" in capsys.readouterr().err
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "config.yaml").write_text("recipe: srresnet\n")
    assert run("srresnet", "--data", sun_hays, "--out", tmp_path / "r2", "--resume") == 2
    assert "state_latest.pt: no training state to resume from" in capsys.readouterr().err


# ------------------------------------------------------------------------------ parts
def test_samples_depend_only_on_seed_and_index(sun_hays):
    """Sample n is a pure function of (seed, n): what makes --resume see the same batches."""
    from train.data import load_image_cache

    _, images = load_image_cache(sun_hays, min_size=32, max_images=2)
    ds = RandomPatches(images, 32, DegradationSpec(scale=4), augment=True, seed=7)
    lr, hr = ds[5]
    assert lr.shape == (3, 8, 8) and hr.shape == (3, 32, 32) and lr.dtype == torch.float32
    assert torch.equal(ds[5][0], lr) and torch.equal(ds[5][1], hr)
    assert not torch.equal(ds[6][1], hr)
    assert 0 <= float(hr.min()) and float(hr.max()) <= 1
    # LR is 8-bit quantised MATLAB bicubic of the HR crop.
    hr_u8 = np.round(hr.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    np.testing.assert_array_equal(lr.numpy().transpose(1, 2, 0), degrade(hr_u8, 4))
    assert np.allclose(lr.numpy() * 255, np.round(lr.numpy() * 255), atol=1e-4)


def test_augment_covers_the_eight_dihedral_transforms():
    img = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    variants = {augment(img, code).tobytes() + bytes(augment(img, code).shape) for code in range(8)}
    assert len(variants) == 8


@pytest.mark.slow
def test_discriminators_shapes_and_crop_parameter():
    for size in (32, 96):
        assert SRGANDiscriminator(size, num_features=8)(torch.rand(2, 3, size, size)).shape == (2, 1)
    d = SRGANDiscriminator(96)
    convs = [m for m in d.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and convs[-1].out_channels == 512
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.features) == 7
    assert d.classifier[1].in_features == 512 * 6 * 6 and d.classifier[1].out_features == 1024
    assert VGGStyleDiscriminator(128, num_features=8)(torch.rand(1, 3, 128, 128)).shape == (1, 1)
    assert VGGStyleDiscriminator(128).classifier[1].in_features == 512 * 4 * 4
    with pytest.raises(Exception, match="multiple of 16"):
        SRGANDiscriminator(40)
    # Real-ESRGAN's U-Net: one logit per pixel; BasicSR's UNetDiscriminatorSN has 4,376,897 parameters
    unet = UNetDiscriminatorSN(96)
    assert sum(p.numel() for p in unet.parameters()) == 4_376_897
    assert UNetDiscriminatorSN(40, num_features=8)(torch.rand(2, 3, 40, 40)).shape == (2, 1, 40, 40)
    with pytest.raises(Exception, match="multiple of 8"):
        UNetDiscriminatorSN(36)
    # spectral norm: after the power iterations of a few training forwards, every normalised conv's
    # largest singular value is 1 (the unnormalised weight's is not)
    small = UNetDiscriminatorSN(32, num_features=8).train()
    for _ in range(100):
        small(torch.rand(1, 3, 32, 32))
    normalised = [*small.down, *small.up, *small.extra]
    for conv in normalised:
        assert torch.linalg.matrix_norm(conv.weight.detach().flatten(1), 2) == pytest.approx(1.0, abs=0.005)
    original = small.down[0].parametrizations.weight.original.detach().flatten(1)
    assert abs(float(torch.linalg.matrix_norm(original, 2)) - 1.0) > 0.1


def test_adversarial_losses_match_their_formulas():
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-0.5, 1.0, -2.0])
    log_sig = torch.nn.functional.logsigmoid
    assert generator_adversarial_loss("gan", None, fake) == pytest.approx(float(-log_sig(fake).mean()))
    assert discriminator_loss("gan", real, fake) == pytest.approx(float(-log_sig(real).mean() - log_sig(-fake).mean()))
    d_rf, d_fr = real - fake.mean(), fake - real.mean()  # D_Ra logits
    assert discriminator_loss("ragan", real, fake) == pytest.approx(
        float(-log_sig(d_rf).mean() - log_sig(-d_fr).mean())
    )
    assert generator_adversarial_loss("ragan", real, fake) == pytest.approx(
        float(-log_sig(-d_rf).mean() - log_sig(d_fr).mean())
    )


@pytest.mark.slow
def test_vgg_features_layers_and_gradient_flow(random_vgg_file):
    """RANDOM VGG16 weights: checks the layer cut, the file loading and gradient flow only."""
    state = {k[len("features.") :]: v for k, v in torch.load(random_vgg_file, weights_only=True).items()}
    net = FeatureExtractor("vgg16", ["conv5_3", "relu5_3"]).load_features(state, str(random_vgg_file))
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    f_before, f_after = net(x)
    assert f_before.shape == f_after.shape == (1, 512, 2, 2)
    assert float(f_before.detach().min()) < 0 and torch.equal(f_after, f_before.clamp(min=0))  # relu5_3 = ReLU(conv5_3)
    assert len(net.features) == 30 and not any(p.requires_grad for p in net.parameters())
    one = FeatureExtractor("vgg16", ["relu5_3"]).load_features(state, "random")
    loss_fn = PerceptualLoss({"relu5_3": 1.0}, network="vgg16", criterion="mse", rescale=1 / 12.75, extractor=one)
    loss = loss_fn(x, torch.rand(1, 3, 32, 32))
    loss.backward()
    assert loss > 0 and x.grad is not None and float(x.grad.abs().sum()) > 0


def test_vgg_weights_of_the_wrong_network_are_refused(tmp_path):
    bad = {"0.weight": torch.zeros(8, 3, 3, 3)}
    with pytest.raises(Exception, match="not vgg16 weights"):
        FeatureExtractor("vgg16", ["relu1_1"]).load_features(bad, "not_vgg.pth")


@pytest.mark.slow  # a training run
def test_sigterm_to_the_process_group_with_workers_saves_state(sun_hays, tmp_path):
    """`timeout`, Ctrl-C and job schedulers signal the whole process group, DataLoader workers
    included: the run must still save its state and exit 143, not crash on a dead worker."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "train",
            "srresnet",
            *map(str, TINY_SRRESNET),
            "--workers",
            "1",
            "--data",
            str(sun_hays),
            "--out",
            str(out),
            "--iters",
            "100000",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    log = out / "train.log"
    deadline = time.monotonic() + 60
    while not (log.is_file() and "it 3/" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    iteration = torch.load(out / "state_latest.pt", weights_only=True)["iteration"]
    assert iteration >= 3 and f"stopped by signal 15 at iteration {iteration}" in log.read_text()


def test_slimming_a_file_that_is_not_a_state_is_one_line_and_leaves_it(tmp_path, capsys):
    from train.state import main as state_main

    damaged = tmp_path / "state_latest.pt"
    damaged.write_bytes(b"not a torch file")
    assert state_main([str(damaged)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "state_latest.pt" in err and "not a training state" in err
    assert damaged.read_bytes() == b"not a torch file"
    assert state_main([str(tmp_path / "absent.pt")]) == 2
    assert "absent.pt: no such file" in capsys.readouterr().err
    # A model file loads as a dict too, but is not a state: refused, not rewritten.
    model = save_checkpoint(tmp_path / "model_latest.pt", SRResNet(num_blocks=1, num_features=8), {"num_blocks": 1})
    before = model.read_bytes()
    assert state_main([str(model)]) == 2
    assert "model_latest.pt: not a training state" in capsys.readouterr().err
    assert model.read_bytes() == before
