"""The models people share: .safetensors files, spandrel's architectures, pixel-unshuffle RRDBNet,
scale-1 restoration models, and the exports of each (dynamic where the graph allows, static with a
note where it does not)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from benchmarks.spandrel_zoo import RESTORATION_ENTRIES, SR_ENTRIES, state_dict_of
from sr_deploy import export_shapes
from sr_deploy.backends.ort_backend import OnnxRuntimeBackend
from sr_deploy.cli import cli
from sr_deploy.export import export_onnx, read_onnx_metadata
from sr_deploy.imaging import read_image, write_image
from sr_deploy.models import RRDBNet, load_checkpoint, spandrel_source
from sr_deploy.tiling import upscale_tiled

ENTRIES = {e.name: e for e in SR_ENTRIES + RESTORATION_ENTRIES}


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def _save_entry(tmp_path, name: str, suffix: str = ".safetensors"):
    path = tmp_path / f"{name.split(' ')[0].lower()}{suffix}"
    state = state_dict_of(ENTRIES[name])
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    return path


def _input_dims(path) -> list:
    model = onnx.load(str(path), load_external_data=False)
    return [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def anime_pair(weights_dir, tmp_path_factory):
    """realesr-animevideov3.pth and a .safetensors copy of its weights (made here, never committed)."""
    pth = weights_dir / "realesr-animevideov3.pth"
    folder = tmp_path_factory.mktemp("anime")
    state = torch.load(pth, map_location="cpu", weights_only=True)["params"]
    copy = folder / "realesr-animevideov3.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(copy), metadata={"copied_from": pth.name})
    return pth, copy


@pytest.mark.slow
def test_safetensors_copy_info_matches_pth(anime_pair) -> None:
    pth, copy = anime_pair
    a = json.loads(_invoke("info", "--json", str(pth)).output)
    result = _invoke("info", "--json", str(copy))
    assert result.exit_code == 0, result.output
    b = json.loads(result.output)
    for key in ("arch", "scale", "config", "parameters", "mflops_per_lr_pixel"):
        assert a[key] == b[key], key
    assert b["format"].startswith("safetensors") and b["metadata"] == {"copied_from": pth.name}
    ma, mb = load_checkpoint(pth).model.state_dict(), load_checkpoint(copy).model.state_dict()
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.slow
def test_safetensors_copy_upscales_exports_and_evaluates_like_pth(anime_pair, set5_dir, tmp_path) -> None:
    pth, copy = anime_pair
    source, dataset = tmp_path / "in", tmp_path / "Set5-two"
    source.mkdir()
    dataset.mkdir()
    write_image(source / "bird.png", read_image(set5_dir / "bird.png")[:60, :80])
    for name in ("bird.png", "butterfly.png"):
        (dataset / name).write_bytes((set5_dir / name).read_bytes())
    outputs = {}
    for model in (pth, copy):
        out = tmp_path / f"out-{model.suffix[1:]}"
        result = _invoke(
            "upscale",
            str(source),
            "-o",
            str(out),
            "--model",
            str(model),
            "--device",
            "cpu",
            "--no-progress",
            "--tile",
            "32",
        )
        assert result.exit_code == 0, result.output
        outputs[model.suffix] = read_image(next(out.rglob("bird*.png")))
    assert outputs[".pth"].shape == outputs[".safetensors"].shape
    assert np.array_equal(outputs[".pth"], outputs[".safetensors"])

    onnx_files = {}
    for model in (pth, copy):
        target = tmp_path / f"anime-{model.suffix[1:]}.onnx"
        result = _invoke("export", str(model), "-o", str(target), "--no-verify")
        assert result.exit_code == 0, result.output
        onnx_files[model.suffix] = target
    x = np.random.default_rng(0).random((1, 3, 20, 28), dtype=np.float32)
    with OnnxRuntimeBackend(onnx_files[".pth"]) as a, OnnxRuntimeBackend(onnx_files[".safetensors"]) as b:
        assert np.array_equal(a(x), b(x))
    assert read_onnx_metadata(onnx_files[".safetensors"])["sr_deploy.source"] == copy.name

    scores = {}
    for model in (pth, copy):
        target = tmp_path / f"eval-{model.suffix[1:]}.json"
        result = _invoke(
            "eval", str(model), "--dataset", str(dataset), "--device", "cpu", "--quiet", "--json", str(target)
        )
        assert result.exit_code == 0, result.output
        scores[model.suffix] = json.loads(target.read_text())
    a, b = scores[".pth"], scores[".safetensors"]
    assert json.dumps(a.get("datasets", a), sort_keys=True, default=str).count("psnr") > 0
    assert _psnr_values(a) == _psnr_values(b) and _psnr_values(a)


def _psnr_values(obj) -> list[float]:
    """Every PSNR number in an eval JSON, in order."""
    found: list[float] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if "psnr" in key.lower() and isinstance(value, (int, float)):
                found.append(float(value))
            else:
                found += _psnr_values(value)
    elif isinstance(obj, list):
        for value in obj:
            found += _psnr_values(value)
    return found


@pytest.mark.slow
def test_realesrgan_x2plus_layout_exports_dynamic_and_passes_parity(tmp_path) -> None:
    """RRDBNet with a x2 pixel unshuffle (the RealESRGAN_x2plus layout), random weights, in the
    original ESRGAN key layout that spandrel writes: loaded natively, exported with dynamic N/H/W
    (odd sizes padded inside the graph), parity on Set5 crops including 50x70."""
    path = _save_entry(tmp_path, "ESRGAN x2 pixel-unshuffle (RealESRGAN_x2plus)", ".pth")
    ckpt = load_checkpoint(path)
    assert (ckpt.arch, ckpt.scale, ckpt.config["pixel_unshuffle"]) == ("RRDBNet", 2, 2)
    assert ckpt.model.conv_first.in_channels == 12
    result = export_onnx(path, tmp_path / "x2plus.onnx", log=None)
    assert result.static_shape is None and result.parity.passed
    assert result.parity.max_abs <= 1e-4 and (2, 3, 50, 70) in result.parity.shapes
    assert _input_dims(result.path)[2:] == ["height", "width"] or all(
        isinstance(d, str) for d in _input_dims(result.path)[2:]
    )
    assert result.metadata["sr_deploy.size_multiple"] == "2"


def test_native_x2plus_state_dict_under_params_ema(tmp_path) -> None:
    torch.manual_seed(5)
    model = RRDBNet(scale=2, num_blocks=1, num_features=8, growth_channels=4, pixel_unshuffle=2)
    torch.save({"params_ema": model.state_dict()}, tmp_path / "RealESRGAN_x2plus.pth")
    result = _invoke("info", str(tmp_path / "RealESRGAN_x2plus.pth"))
    assert result.exit_code == 0, result.output
    assert "RRDBNet x2" in result.output and "pixel_unshuffle=2" in result.output
    assert "multiple of 2" in result.output


@pytest.mark.slow
def test_spandrel_architecture_exports_dynamic(tmp_path) -> None:
    """SPAN (spandrel): detected, exported with dynamic N/H/W, parity fp32 on Set5 crops."""
    path = _save_entry(tmp_path, "SPAN")
    ckpt = load_checkpoint(path)
    assert (ckpt.arch, ckpt.scale) == ("SPAN", 4) and ckpt.source_format.startswith("safetensors / spandrel")
    result = export_onnx(path, tmp_path / "span.onnx", log=None)
    assert result.static_shape is None and result.parity.passed, result.fallback_reason
    assert all(isinstance(d, str) for d in (_input_dims(result.path)[0], *_input_dims(result.path)[2:]))


@pytest.mark.slow
def test_window_attention_falls_back_to_static_with_a_note(tmp_path, monkeypatch) -> None:
    """SwinIR bakes its window reshapes into any traced graph: the export says so and writes a static
    graph (metadata records why), which ONNX Runtime pads / the tiler tiles to, with parity."""
    monkeypatch.setattr(export_shapes, "STATIC_FALLBACK_SIZE", 48)  # 128 by default; small for the test
    path = _save_entry(tmp_path, "SwinIR")
    notes: list[str] = []
    result = export_onnx(path, tmp_path / "swinir.onnx", log=notes.append)
    assert result.static_shape == (1, 48, 48) and result.parity.passed
    assert any("no dynamic graph" in n and "static 1x48x48" in n for n in notes)
    meta = read_onnx_metadata(result.path)
    assert "no dynamic export" in meta["sr_deploy.static_reason"]
    with OnnxRuntimeBackend(result.path) as backend:
        assert backend.max_shape == (1, 48, 48)
        x = np.random.default_rng(1).random((1, 3, 40, 30), dtype=np.float32)
        assert backend(x).shape == (1, 3, 80, 60)
        image = np.random.default_rng(2).random((3, 70, 52), dtype=np.float32)
        assert upscale_tiled(backend, image, None, 8).shape == (3, 140, 104)  # over the static shape: tiled


def test_size_multiple_model_pads_inside(tmp_path) -> None:
    """SAFMN needs sides that are multiples of 8: any size goes through, the multiple is reported."""
    ckpt = load_checkpoint(_save_entry(tmp_path, "SAFMN"))
    assert ckpt.size_multiple == 8
    with torch.inference_mode():
        assert ckpt.model(torch.rand(1, 3, 13, 21)).shape == (1, 3, 52, 84)


@pytest.mark.slow
def test_denoiser_is_accepted_as_scale_1(tmp_path, set5_dir) -> None:
    path = _save_entry(tmp_path, "DnCNN (colour)")
    result = _invoke("info", str(path))
    assert result.exit_code == 0, result.output
    assert "DnCNN x1" in result.output and "x1 restoration model" in result.output
    out = tmp_path / "out"
    source = set5_dir / "baby.png"
    result = _invoke("upscale", str(source), "-o", str(out), "--model", str(path), "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    assert read_image(next(out.rglob("baby*.png"))).shape == read_image(source).shape


def test_greyscale_denoiser_is_refused_in_one_line(tmp_path) -> None:
    path = _save_entry(tmp_path, "DnCNN (greyscale)")
    result = _invoke("info", str(path))
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and str(path) in line and "1 input and 1 output channels" in line
    assert "Traceback" not in result.output


def test_missing_spandrel_names_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(
        spandrel_source.SpandrelSource,
        "available",
        lambda self: (
            "spandrel is not installed (No module named 'spandrel'); "
            f"{spandrel_source.INSTALL_HINT} reads ~40 more architectures"
        ),
    )
    path = _save_entry(tmp_path, "SPAN")
    result = _invoke("info", str(path))
    assert result.exit_code == 2
    assert "unrecognised weights layout" in result.output and "sr-deploy[spandrel]" in result.output


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": broken}', "not a readable safetensors file"),
        (b"12345678", "not a readable safetensors file"),
    ],
)
def test_bad_safetensors_give_one_line(tmp_path, content, expected) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    result = _invoke("info", str(path))
    assert result.exit_code == 2 and expected in result.output and str(path) in result.output
    assert "Traceback" not in result.output
