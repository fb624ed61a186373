"""`export_onnx` / `sr-deploy export`: one self-contained file, dynamic shapes, metadata, fp16, parity, errors."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import sr_deploy.export as export_module
from sr_deploy import __version__
from sr_deploy.backends.ort_backend import OnnxRuntimeBackend
from sr_deploy.backends.torch_backend import TorchBackend
from sr_deploy.cli import cli
from sr_deploy.errors import InputError, SRDeployError
from sr_deploy.export import (
    ParityError,
    calibrate_fp16_block_list,
    convert_to_fp16,
    count_fp16_tensors,
    export_onnx,
    read_onnx_metadata,
    verify_onnx,
)
from sr_deploy.models import RRDBNet, load_checkpoint, save_checkpoint
from sr_deploy.parity import check_thresholds, parity, parity_inputs

ACCEPTANCE_SHAPES = [(1, 64, 64), (2, 50, 70), (1, 128, 96)]


def _dims(model: onnx.ModelProto, output: bool = False) -> list:
    value = (model.graph.output if output else model.graph.input)[0]
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _three_shapes(reference: nn.Module, path: Path, precision: str):
    """Parity of the file on ORT CPU vs torch fp32 at the acceptance shapes, from one file."""
    inputs = [parity_inputs([(h, w)], n)[0] for n, h, w in ACCEPTANCE_SHAPES]
    with OnnxRuntimeBackend(path) as backend:
        report = parity(TorchBackend(reference, None, channels_last=False), backend, inputs)
    check_thresholds(report, precision)
    return report


@pytest.mark.slow
def test_dynamo_export_is_one_file_with_dynamic_dims_metadata_and_parity(tiny_srresnet, tmp_path, set5_dir):
    out = tmp_path / "model.onnx"
    result = export_onnx(tiny_srresnet, out, log=None)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no side weights, no temp files
    assert result.exporter == "dynamo" and result.fallback_reason is None and result.opset == 18
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert _dims(model) == ["batch", 3, "height", "width"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)  # folded
    meta = read_onnx_metadata(out)
    assert meta["sr_deploy.scale"] == "4" and meta["sr_deploy.arch"] == "SRResNet"
    assert meta["sr_deploy.input"] == "rgb_float01_nchw" and meta["sr_deploy.version"] == __version__
    assert re.fullmatch(r"[0-9a-f]{64}", meta["sr_deploy.source_sha256"]) and meta["sr_deploy.precision"] == "fp32"
    assert result.parity.passed and result.parity.shapes == [(2, 3, 64, 64), (2, 3, 50, 70)]
    report = _three_shapes(tiny_srresnet, out, "fp32")
    assert report.passed and report.max_abs <= 1e-4, report.table()


def test_info_describes_an_onnx_export(tiny_srresnet, tmp_path):
    """`sr-deploy info model.onnx` said "not a PyTorch checkpoint" though MODEL may be an .onnx
    file: it prints what the export says of itself (read back from the file)."""
    import json

    out = tmp_path / "model.onnx"
    export_onnx(tiny_srresnet, out, exporter="legacy", log=None, verify=False)
    result = CliRunner().invoke(cli, ["info", str(out), "--json"])
    assert result.exit_code == 0, result.output
    desc = json.loads(result.output)
    assert desc["format"].startswith("ONNX (opset ") and desc["precision"] == "fp32"
    assert desc["metadata"] == read_onnx_metadata(out) and desc["metadata"]["sr_deploy.scale"] == "4"
    assert desc["input"].startswith("Nx3x") and desc["mflops_per_lr_pixel"] > 0
    text = CliRunner().invoke(cli, ["info", str(out)])
    assert text.exit_code == 0 and "precision:   fp32" in text.output


@pytest.mark.slow
def test_real_animevideov3_checkpoint_via_cli(weights_dir, tmp_path, set5_dir):
    ckpt = weights_dir / "realesr-animevideov3.pth"
    out = tmp_path / "anime.onnx"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "PASS: fp32: max abs" in result.output and "SRVGGNetCompact x4" in result.output
    assert re.search(r"all\s+\S+\s+\S+\s+\d+\.\d\d", result.output)  # the PSNR column
    meta = read_onnx_metadata(out)
    assert meta["sr_deploy.source_sha256"] == load_checkpoint(ckpt).sha256
    assert meta["sr_deploy.source"] == "realesr-animevideov3.pth"
    report = _three_shapes(load_checkpoint(ckpt).model, out, "fp32")
    assert report.passed, report.table()


@pytest.mark.slow
def test_fp16_export_keeps_float32_io_and_meets_psnr_on_ort_cpu(tmp_path, set5_dir):
    torch.manual_seed(0)
    model = RRDBNet(scale=4, num_blocks=2, num_features=16, growth_channels=8).eval()
    out = tmp_path / "rrdb-fp16.onnx"
    result = export_onnx(model, out, fp16=True, exporter="legacy", log=None)
    graph = onnx.load(str(out))
    assert count_fp16_tensors(graph) > 10 and read_onnx_metadata(out)["sr_deploy.precision"] == "fp16"
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert result.parity.passed and result.parity.psnr_db >= 50
    report = _three_shapes(model, out, "fp16")
    assert report.passed and report.max_abs > 0, report.table()  # reduced precision, still >= 50 dB
    assert OnnxRuntimeBackend(out).precision == "fp16"


@pytest.mark.slow
def test_fp16_block_list_keeps_named_nodes_in_fp32(tiny_srresnet, tmp_path):
    out = tmp_path / "m.onnx"
    export_onnx(tiny_srresnet, out, exporter="legacy", verify=False, log=None)
    fp32 = onnx.load(str(out))
    first_conv = next(n for n in fp32.graph.node if n.op_type == "Conv")
    converted = convert_to_fp16(out, block_list=[first_conv.name])
    inits = {t.name: t for t in converted.graph.initializer}
    assert inits[first_conv.input[1]].data_type == onnx.TensorProto.FLOAT  # its weight stayed fp32
    other = [n for n in converted.graph.node if n.op_type == "Conv" and n.name != first_conv.name]
    assert all(inits[n.input[1]].data_type == onnx.TensorProto.FLOAT16 for n in other)
    assert count_fp16_tensors(fp32) == 0 and count_fp16_tensors(converted) > 0


class _LoudMiddle(nn.Module):
    """Activations of ~1e5 between two convs: fine in fp32, overflows fp16 (max 65504)."""

    scale = 1

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Conv2d(3, 4, 1)
        self.down = nn.Conv2d(4, 3, 1)
        with torch.no_grad():
            self.up.weight.fill_(1e5)
            self.down.weight.fill_(1e-5 / 4)

    def forward(self, x):
        return self.down(self.up(x))


def test_calibration_blocks_the_node_that_overflows_fp16(tmp_path, set5_dir):
    out = tmp_path / "loud.onnx"
    model = _LoudMiddle()
    export_onnx(model, out, exporter="legacy", verify=False, log=None)
    inputs = parity_inputs(sizes=((16, 16),), batch=1)
    blocked = calibrate_fp16_block_list(out, inputs)
    convs = [n.name for n in onnx.load(str(out)).graph.node if n.op_type == "Conv"]
    # `up` makes the 1e5 activations, `down` reads them and has weights below fp16's normal range.
    assert blocked == convs and len(convs) == 2
    # Without the block list the fp16 graph overflows; with it, it passes.
    ref = TorchBackend(model, 1, channels_last=False)
    for block, ok in (([], False), (blocked, True)):
        convert_to_fp16(out, tmp_path / "half.onnx", block_list=block)
        with OnnxRuntimeBackend(tmp_path / "half.onnx") as half:
            assert check_thresholds(parity(ref, half, inputs), "fp16") is ok


@pytest.mark.slow
def test_legacy_exporter_and_automatic_fallback(tiny_srresnet, tmp_path):
    class DataDependent(nn.Module):  # torch.export cannot guard on a value; TorchScript tracing can
        scale = 4

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            y = self.inner(x)
            return y * 2 if x.mean() > 2.0 else y

    messages: list[str] = []
    result = export_onnx(DataDependent(tiny_srresnet), tmp_path / "dd.onnx", verify=False, log=messages.append)
    assert result.exporter == "legacy" and "GuardOnDataDependent" in result.fallback_reason
    assert any("falling back to the legacy exporter" in m for m in messages)
    legacy = export_onnx(tiny_srresnet, tmp_path / "legacy.onnx", exporter="legacy", log=None)
    assert legacy.exporter == "legacy" and legacy.parity.passed
    assert _dims(onnx.load(str(tmp_path / "legacy.onnx"))) == ["batch", 3, "height", "width"]


@pytest.mark.slow
def test_static_shape_and_simplify(tiny_srresnet, tmp_path):
    static = export_onnx(tiny_srresnet, tmp_path / "s.onnx", static_shape="1x3x32x40", exporter="legacy", log=None)
    assert _dims(onnx.load(str(static.path))) == [1, 3, 32, 40] and static.parity.shapes == [(1, 3, 32, 40)]
    slim = export_onnx(tiny_srresnet, tmp_path / "slim.onnx", simplify=True, log=None)
    assert slim.simplified and slim.parity.passed
    assert _dims(onnx.load(str(slim.path))) == ["batch", 3, "height", "width"]


@pytest.mark.slow
def test_a_perturbed_onnx_fails_verification_and_the_cli_exits_1(tiny_srresnet, tmp_path, monkeypatch):
    original = export_module._set_metadata

    def perturb_one_weight(model, meta):  # one weight of the exported graph off by 0.01
        original(model, meta)
        weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
        array = onnx.numpy_helper.to_array(weight).copy()
        array.flat[0] += 0.01
        weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))

    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, tiny_srresnet, {"scale": 4, "num_blocks": 2, "num_features": 16})
    monkeypatch.setattr(export_module, "_set_metadata", perturb_one_weight)
    out = tmp_path / "broken.onnx"
    result = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(out), "--exporter", "legacy"])
    assert result.exit_code == 1
    assert f"error: {out}: parity check failed (fp32: max abs" in result.output
    assert "FAIL" in result.output and out.is_file()  # kept for inspection
    with pytest.raises(ParityError):
        export_onnx(ckpt, tmp_path / "again.onnx", exporter="legacy", log=None)
    monkeypatch.setattr(export_module, "_set_metadata", original)
    assert not verify_onnx(tiny_srresnet, out, "fp32").passed


@pytest.mark.parametrize(
    "case", ["missing model", "suffix", "no folder", "unwritable", "uri", "opset", "static", "huge"]
)
def test_bad_input_is_one_line_exit_2_and_no_file(case, weights_dir, tmp_path):
    ckpt = str(weights_dir / "realesr-animevideov3.pth")
    out = tmp_path / "out.onnx"
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    args, expected = {
        "missing model": ([str(tmp_path / "nope.pth"), "-o", str(out)], r"nope\.pth: no such model file"),
        "suffix": ([str(text), "-o", str(out)], r"notes\.txt: unsupported model file type '\.txt'"),
        "no folder": ([ckpt, "-o", str(tmp_path / "missing" / "out.onnx")], r"output folder .*missing does not exist"),
        "unwritable": ([ckpt, "-o", "/proc/out.onnx"], r"/proc/out\.onnx: the output folder /proc is not writable"),
        # it said "s3:/b/m.onnx: the output folder s3:/b does not exist"
        "uri": ([ckpt, "-o", "s3://b/m.onnx"], r"^error: s3://b/m\.onnx: expected a local path"),
        "opset": ([ckpt, "-o", str(out), "--opset", "99"], r"opset 99 is not available: the installed onnx"),
        "static": ([ckpt, "-o", str(out), "--static", "0x8"], r"--static '0x8': expected NxHxW"),
        "huge": ([ckpt, "-o", str(out), "--static", "1x100000x100000"], r"--static 1x100000x100000: one call needs"),
    }[case]
    if case == "unwritable" and not Path("/proc").is_dir():
        pytest.skip("no /proc on this system")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(cli, ["export", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(expected, lines[0]), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp file


def _no_export(monkeypatch) -> None:
    monkeypatch.setattr(export_module, "export_onnx", lambda *a, **k: pytest.fail("the model was exported"))


@pytest.mark.parametrize("sidecar", [False, True], ids=["no engine file", "no sidecar"])
def test_a_bad_engine_for_the_triton_repository_is_refused_before_the_export(tmp_path, monkeypatch, sidecar):
    """`export MODEL -o m.onnx --triton-repo R --engine m.engine` exported and checked parity first
    (~6 s), then refused the engine and left m.onnx behind: the engine is checked first."""
    _no_export(monkeypatch)
    engine = tmp_path / "m.engine"
    if sidecar:
        engine.write_bytes(b"\0engine bytes without a sidecar")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["default", "-o", str(tmp_path / "m.onnx"), "--triton-repo", str(tmp_path / "repo"), "--engine", str(engine)]
    result = CliRunner().invoke(cli, ["export", *args])
    assert result.exit_code == 2, result.output
    cause = "no sidecar JSON with the engine's profile" if sidecar else "no such engine file"
    (line,) = result.output.splitlines()
    assert line.startswith(f"error: {engine}: {cause}"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_failed_export_into_a_new_triton_repository_leaves_no_folder(tmp_path, monkeypatch):
    """A repository folder this export began is removed when the export into it fails; one that
    was there before is kept as it was."""

    def failing_export(*args, **kwargs):
        raise SRDeployError("parity check failed (stand-in)")

    monkeypatch.setattr(export_module, "export_onnx", failing_export)
    repo = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["export", "default", "--triton-repo", str(repo)])
    assert result.exit_code == 1 and "parity check failed (stand-in)" in result.output, result.output
    assert not repo.exists()
    (repo / "older").mkdir(parents=True)
    assert CliRunner().invoke(cli, ["export", "default", "--triton-repo", str(repo)]).exit_code == 1
    assert [p.name for p in repo.iterdir()] == ["older"]


@pytest.fixture(scope="module")
def tiny_onnx_file(tiny_srresnet, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export_onnx(tiny_srresnet, path, exporter="legacy", verify=False, log=None)
    return path


@pytest.mark.parametrize("case", ["checkpoint on tensorrt", "checkpoint on onnxruntime", "onnx on torch", "engine"])
def test_a_python_flavour_model_its_backend_cannot_run_is_refused_and_nothing_written(case, tiny_onnx_file, tmp_path):
    """The Triton python flavour wrote, exit 0, a model whose backend cannot open its file (Triton
    then fails to load it): refused with the rule upscale applies, exit 2, and no repository folder
    (an engine without its sidecar left an empty one)."""
    engine = tmp_path / "f.engine"
    engine.write_bytes(b"\0engine bytes without a sidecar")
    default = str(load_checkpoint("default").path)
    model, backend, cause = {
        "checkpoint on tensorrt": (
            default,
            "tensorrt",
            "a PyTorch checkpoint runs on the torch backend only (asked for tensorrt)",
        ),
        "checkpoint on onnxruntime": (
            default,
            "onnxruntime",
            "a PyTorch checkpoint runs on the torch backend only (asked for onnxruntime)",
        ),
        "onnx on torch": (str(tiny_onnx_file), "torch", "an ONNX file cannot run on the torch backend"),
        "engine": (str(engine), "auto", "no sidecar JSON with the engine's scale"),
    }[case]
    repo = tmp_path / "repo"
    args = [model, "--triton-repo", str(repo), "--triton-flavour", "python", "--name", "sr_trt", "--backend", backend]
    result = CliRunner().invoke(cli, ["export", *args])
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"error: {model}: {cause}"), line
    assert not repo.exists()
    ok = CliRunner().invoke(cli, ["export", default, "--triton-repo", str(repo), "--triton-flavour", "python"])
    assert ok.exit_code == 0 and (repo / "sr_deploy" / "1" / "default.pt").is_file(), ok.output


@pytest.mark.slow
def test_a_failed_write_leaves_no_partial_file(tiny_srresnet, tmp_path, monkeypatch):
    def half_write(model, path, **kwargs):
        Path(path).write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", half_write)
    with pytest.raises(SRDeployError, match=r"m\.onnx: could not write it \(.*No space left"):
        export_onnx(tiny_srresnet, tmp_path / "m.onnx", exporter="legacy", log=None)
    assert list(tmp_path.iterdir()) == []


def test_an_export_interrupted_during_its_parity_check_leaves_no_file(tiny_srresnet, tmp_path, monkeypatch):
    """Ctrl-C while parity is checked left the unchecked file under its final name (exit 130): the
    file takes its name only once checked, so nothing is left, temporary files included."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "verify_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(tiny_srresnet, tmp_path / "m.onnx", exporter="legacy", log=None)
    assert list(tmp_path.iterdir()) == []


def test_read_onnx_metadata_errors(tmp_path):
    with pytest.raises(InputError, match="no such ONNX file"):
        read_onnx_metadata(tmp_path / "x.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(SRDeployError, match="not a readable ONNX file"):
        read_onnx_metadata(bad)


@pytest.mark.parametrize(
    "args",
    [
        ["export", "s3://b/m.pt", "-o", "m.onnx"],
        ["info", "s3://b/m.onnx"],
        ["info", "s3://b/m.engine"],
        ["benchmark", "s3://b/m.pt", "--sizes", "16x16"],
        ["build-engine", "s3://b/m.onnx"],
    ],
    ids=["export", "info onnx", "info engine", "benchmark", "build-engine"],
)
def test_a_model_given_as_a_storage_uri_is_named_as_given(args, tmp_path, monkeypatch):
    """Path() folded `s3://b/m.pt` into `s3:/b/m.pt: no such model file` in every command that
    takes MODEL: a URI where a local file is meant is said as such, one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines == [f"error: {args[1]}: expected a local path (object storage is for upscale's inputs and outputs)"]
    assert list(tmp_path.iterdir()) == []
