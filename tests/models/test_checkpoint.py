"""Checkpoint format, foreign layouts and the one-line errors of `sr-deploy info`."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sr_deploy.cli import cli
from sr_deploy.errors import InputError
from sr_deploy.models import RRDBNet, SRResNet, load_checkpoint, save_checkpoint
from sr_deploy.models.rrdbnet import convert_esrgan_old as _convert_esrgan_old


def test_roundtrip_our_format(tmp_path) -> None:
    torch.manual_seed(1)
    config = {"scale": 4, "num_blocks": 2, "num_features": 16, "batch_norm": False}
    model = SRResNet(**config)
    path = save_checkpoint(tmp_path / "m.pt", model, config, {"iterations": 123})
    ckpt = load_checkpoint(path)
    assert (ckpt.arch, ckpt.scale, ckpt.config, ckpt.metadata) == ("SRResNet", 4, config, {"iterations": 123})
    x = torch.rand(1, 3, 12, 10)
    with torch.inference_mode():
        assert torch.equal(ckpt.model(x), model.eval()(x))
    assert not (tmp_path / ".m.pt.tmp").exists()


def test_half_storage_loads_as_float32(tmp_path) -> None:
    config = {"scale": 2, "num_blocks": 1, "num_features": 8}
    path = save_checkpoint(tmp_path / "h.pt", SRResNet(**config), config, half=True)
    model = load_checkpoint(path).model
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.slow
def test_esrgan_old_layout_is_converted(tmp_path) -> None:
    torch.manual_seed(0)
    model = RRDBNet(num_blocks=2, num_features=8, growth_channels=4)
    new = model.state_dict()
    # Build the original ESRGAN repository's key layout from BasicSR's names.
    old = {}
    for k, v in new.items():
        if k.startswith("body."):
            _, i, rdb, conv, leaf = k.split(".")
            old[f"model.1.sub.{i}.{rdb.upper()}.{conv}.0.{leaf}"] = v
        else:
            name, leaf = k.split(".")
            idx = {
                "conv_first": "model.0",
                "conv_body": "model.1.sub.2",
                "conv_up1": "model.3",
                "conv_up2": "model.6",
                "conv_hr": "model.8",
                "conv_last": "model.10",
            }[name]
            old[f"{idx}.{leaf}"] = v
    assert _convert_esrgan_old(old).keys() == new.keys()
    torch.save(old, tmp_path / "old.pth")
    ckpt = load_checkpoint(tmp_path / "old.pth")
    assert ckpt.source_format == "ESRGAN old architecture"
    assert ckpt.config == {"scale": 4, "num_blocks": 2, "num_features": 8, "growth_channels": 4}
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(ckpt.model(x), model.eval()(x))


def test_basicsr_params_ema_preferred(tmp_path) -> None:
    a, b = (
        RRDBNet(num_blocks=1, num_features=8, growth_channels=4),
        RRDBNet(num_blocks=1, num_features=8, growth_channels=4),
    )
    torch.save({"params": a.state_dict(), "params_ema": b.state_dict()}, tmp_path / "bsr.pth")
    ckpt = load_checkpoint(tmp_path / "bsr.pth")
    assert ckpt.source_format == "BasicSR/Real-ESRGAN params_ema"
    assert torch.equal(ckpt.model.conv_first.weight, b.conv_first.weight)


def test_real_weights_load_with_no_arguments(weights_dir) -> None:
    srgan = load_checkpoint(weights_dir / "leftthomas_SRGAN_netG_epoch_4_100.pth")
    assert srgan.arch == "SRResNet" and srgan.scale == 4 and srgan.config["num_blocks"] == 5
    assert srgan.config["output_activation"] == "tanh01"
    anime = load_checkpoint(weights_dir / "realesr-animevideov3.pth")
    assert anime.arch == "SRVGGNetCompact" and anime.scale == 4
    assert sum(p.numel() for p in anime.model.parameters()) == 621_424


def _info(path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["info", str(path)])
    return result.exit_code, result.output


@pytest.mark.slow
def test_info_describes_a_real_checkpoint(weights_dir) -> None:
    result = CliRunner().invoke(cli, ["info", "--json", str(weights_dir / "realesr-animevideov3.pth")])
    assert result.exit_code == 0, result.output
    desc = json.loads(result.output)
    assert desc["arch"] == "SRVGGNetCompact" and desc["parameters"] == 621_424
    # 18 convs at LR: 2*9*(3*64 + 16*64*64 + 64*48) MFLOP per LR pixel.
    assert desc["mflops_per_lr_pixel"] == pytest.approx(2 * 9 * (3 * 64 + 16 * 64 * 64 + 64 * 48) / 1e6, rel=1e-3)


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "empty file"),
        (b"hello, I am a text file\n", "not a PyTorch checkpoint"),
        (b"\x80\x02corrupt pickle bytes", "not a readable PyTorch checkpoint"),
    ],
)
def test_bad_files_give_one_line_and_exit_2(tmp_path, content, expected) -> None:
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    code, output = _info(path)
    assert code == 2
    assert expected in output and str(path) in output
    assert "Traceback" not in output


def test_a_folder_a_whole_pickled_model_and_an_empty_onnx_are_named_for_what_they_are(tmp_path) -> None:
    """A folder called x.pt said "no such model file"; `torch.save(model)` gave torch's truncated
    safety text; an empty .onnx said "found 0 inputs"."""
    (tmp_path / "dir.pt").mkdir()
    assert _info(tmp_path / "dir.pt") == (2, f"error: {tmp_path / 'dir.pt'}: a folder, not a model file\n")
    torch.save(SRResNet(num_blocks=1, num_features=8), tmp_path / "whole.pth")
    code, output = _info(tmp_path / "whole.pth")
    assert code == 2 and output.startswith(
        f"error: {tmp_path / 'whole.pth'}: holds a pickled sr_deploy.models.srresnet.SRResNet"
    )
    assert "save its state_dict() instead)" in output and len(output.splitlines()) == 1
    (tmp_path / "empty.onnx").write_bytes(b"")
    from sr_deploy.util.onnx_facts import load_onnx_file

    with pytest.raises(InputError, match=r"empty\.onnx: empty file, not an ONNX model"):
        load_onnx_file(tmp_path / "empty.onnx")


def test_an_error_about_a_file_whose_name_holds_a_newline_stays_on_one_line(tmp_path) -> None:
    """Every command's error line: a newline in a file name is written as \\n (it split the line
    that scripts read)."""
    code, output = _info(tmp_path / "no\nsuch.pt")
    assert code == 2 and output == f"error: {tmp_path}/no\\nsuch.pt: no such model file\n"


def test_truncated_checkpoint(tmp_path) -> None:
    config = {"scale": 4, "num_blocks": 1, "num_features": 8}
    good = save_checkpoint(tmp_path / "good.pt", SRResNet(**config), config)
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    code, output = _info(tmp_path / "cut.pt")
    assert code == 2 and "not a readable PyTorch checkpoint" in output and "cut.pt" in output


def test_wrong_architecture_checkpoint(tmp_path) -> None:
    # An RRDBNet state dict saved under an SRResNet header.
    payload = {
        "format": "sr-deploy/1",
        "arch": "SRResNet",
        "config": {"scale": 4},
        "scale": 4,
        "state_dict": RRDBNet(num_blocks=1, num_features=8, growth_channels=4).state_dict(),
        "metadata": {},
    }
    torch.save(payload, tmp_path / "wrong.pt")
    code, output = _info(tmp_path / "wrong.pt")
    assert code == 2
    assert "weights do not fit SRResNet" in output and "missing keys" in output and "wrong.pt" in output


@pytest.mark.slow
def test_unrecognised_layout_names_first_keys(tmp_path) -> None:
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "foo.pth")
    code, output = _info(tmp_path / "foo.pth")
    assert code == 2 and "unrecognised weights layout" in output and "foo.weight" in output


def test_missing_file_and_missing_default(tmp_path) -> None:
    code, output = _info(tmp_path / "nope.pt")
    assert code == 2 and "no such model file" in output
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.slow
def test_debug_shows_traceback(tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "t.pth").write_text("text")
    run = subprocess.run(
        [sys.executable, "-m", "sr_deploy", "--debug", "info", str(tmp_path / "t.pth")], capture_output=True, text=True
    )
    assert run.returncode == 2 and "Traceback" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "sr_deploy", "info", str(tmp_path / "t.pth")], capture_output=True, text=True
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr and run.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["upscale", "x.png", "--realism", "abc"], "Invalid value for '--realism': 'abc' is not a valid float."),
        (["eval", "default"], "Missing option '--dataset'. (see 'sr-deploy eval --help')"),
        (["upscal", "x.png"], "No such command 'upscal'. Did you mean 'upscale'? (see 'sr-deploy --help')"),
        (["--bogus", "info", "default"], "No such option '--bogus'. (see 'sr-deploy --help')"),
        # click names no command for an option without its value: the subcommand is still named
        (["eval", "default", "--dataset"], "Option '--dataset' requires an argument. (see 'sr-deploy eval --help')"),
    ],
)
def test_click_usage_errors_are_one_line_exit_2(args, message) -> None:
    """Option values of the wrong type, missing options, unknown commands: click's own errors
    follow the house rule too (one `error:` line, exit 2), not click's usage block."""
    result = CliRunner().invoke(cli, args, prog_name="sr-deploy")
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not result.stdout


@pytest.mark.parametrize(
    "args, code, first",
    [([], 2, "Usage: sr-deploy"), (["--help"], 0, "Usage: sr-deploy"), (["--version"], 0, "sr-deploy, version")],
)
def test_help_and_version_are_untouched_by_the_usage_error_handling(args, code, first) -> None:
    """`sr-deploy` alone and `--help` print the whole help, `--version` the version."""
    result = CliRunner().invoke(cli, args, prog_name="sr-deploy")
    assert result.exit_code == code and result.output.startswith(first), result.output
    assert args == ["--version"] or "Commands:" in result.output
    assert "error:" not in result.output


def test_info_prints_nested_metadata_with_its_nesting_and_unknown_weights_by_file() -> None:
    from sr_deploy.cli.models import plain

    assert (
        plain({"model": {"arch": "SRResNet", "num_blocks": 16}, "scale": 4})
        == "model=(arch=SRResNet, num_blocks=16), scale=4"
    )
    assert plain({"pixel": {"type": "l1"}, "lpips": {"network": "vgg"}}) == "pixel: type=l1; lpips: network=vgg"
    assert plain([{"a": 1}, {"a": 2}]) == "[(a=1), (a=2)]" and plain(None) == "none"
    weights = {"arch": "vgg16", "file": "mine.npz", "sha256": "0123456789abcdef", "release": "unknown"}
    assert plain(weights) == "mine.npz (sha256 0123456789ab)"
