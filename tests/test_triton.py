"""`sr-deploy export --triton-repo`: configs parsed with Triton's own protobuf schema and checked
against the ONNX file; the Python-backend flavour served by the real `tritonserver` that the
nvidia-pytriton wheel bundles, on 127.0.0.1, answering a Set5 image exactly as `sr-deploy upscale`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _upscale_support import save_tiny_srvgg
from click.testing import CliRunner

from sr_deploy.cli import cli

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install 'sr-deploy[triton]')")
model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="tritonclient's model_config_pb2 needs grpcio"
)
from google.protobuf import text_format  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _parse(path: Path):
    """config.pbtxt -> inference.ModelConfig; text_format raises on any field Triton does not know."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _onnx_io(path: Path) -> dict[str, tuple[int, list]]:
    """name -> (elem_type, dims) of the ONNX graph's inputs and outputs; symbolic dims as None."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    out = {}
    for value in list(graph.input) + list(graph.output):
        t = value.type.tensor_type
        out[value.name] = (t.elem_type, [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim])
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_srvgg(tmp_path_factory.mktemp("model") / "tiny.pt")


def _stand_in_engine(folder: Path) -> Path:
    """Bytes standing in for a TensorRT engine (nothing here runs it: the test checks that the file
    is copied as model.plan and that the config takes the sidecar's profile) and its sidecar."""
    from sr_deploy.engine import EngineSidecar, write_sidecar

    engine = folder / "tiny.engine"
    engine.write_bytes(b"stand-in bytes, not a TensorRT engine")
    write_sidecar(
        engine,
        EngineSidecar(
            onnx_sha256="0" * 64,
            tensorrt_version="10.13.0",
            gpu_name="stand-in",
            compute_capability="8.9",
            precision="fp16",
            scale=4,
            profile={"min": [1, 3, 32, 32], "opt": [2, 3, 128, 160], "max": [8, 3, 256, 320]},
        ),
    )
    return engine


@pytest.mark.slow
def test_onnx_repository_configs_parse_with_tritons_schema(tiny_model, tmp_path):
    engine = _stand_in_engine(tmp_path)
    repo = tmp_path / "repo"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            str(tiny_model),
            "--triton-repo",
            str(repo),
            "--name",
            "sr",
            "--engine",
            str(engine),
            "--no-verify",
            "--max-batch",
            "6",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == [
        "README.md",
        "sr/1/model.onnx",
        "sr/config.pbtxt",
        "sr_trt/1/model.plan",
        "sr_trt/config.pbtxt",
    ]

    onnx_io = _onnx_io(repo / "sr" / "1" / "model.onnx")
    for name in ("sr", "sr_trt"):
        config = _parse(repo / name / "config.pbtxt")
        assert config.name == name
        # tensors: the ONNX file's names and types; N left to max_batch_size, H/W dynamic (-1)
        for tensors in (config.input, config.output):
            assert len(tensors) == 1
            tensor = tensors[0]
            elem_type, dims = onnx_io[tensor.name]
            assert elem_type == 1 and tensor.data_type == model_config_pb2.TYPE_FP32  # onnx FLOAT
            assert len(dims) == 4 and dims[0] is None and dims[1] == 3 and dims[2] is None and dims[3] is None
            assert list(tensor.dims) == [3, -1, -1]
        assert set(onnx_io) == {config.input[0].name, config.output[0].name}
        assert config.HasField("dynamic_batching")
        assert (
            len(config.instance_group) == 1
            and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        )
        assert config.parameters["sr_deploy.scale"].string_value == "4"
        (warmup,) = config.model_warmup
        assert warmup.batch_size == 1 and warmup.inputs["input"].random_data

    onnx_config, plan_config = _parse(repo / "sr" / "config.pbtxt"), _parse(repo / "sr_trt" / "config.pbtxt")
    assert onnx_config.platform == "onnxruntime_onnx" and plan_config.platform == "tensorrt_plan"
    assert onnx_config.max_batch_size == 6
    assert plan_config.max_batch_size == 8  # the engine profile's max N
    assert list(plan_config.model_warmup[0].inputs["input"].dims) == [3, 128, 160]  # its opt H, W
    (accelerator,) = onnx_config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {
        "precision_mode": "FP16",
        "trt_profile_min_shapes": "input:1x3x32x32",
        "trt_profile_opt_shapes": "input:2x3x128x160",
        "trt_profile_max_shapes": "input:8x3x256x320",
    }
    assert (repo / "sr_trt" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    readme = (repo / "README.md").read_text()
    assert "tritonserver --model-repository" in readme and "`sr_trt`: tensorrt_plan" in readme
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging folders left


def test_export_needs_an_output_or_a_repository(tiny_model):
    result = CliRunner().invoke(cli, ["export", str(tiny_model)])
    assert result.exit_code == 2
    assert result.output.strip() == "error: give -o MODEL.onnx, --triton-repo DIR, or both"


@pytest.mark.slow
def test_python_flavour_served_by_the_bundled_tritonserver_equals_sr_deploy_upscale(tiny_model, set5_dir, tmp_path):
    from sr_deploy.errors import NotInstalledError
    from sr_deploy.serving import bundled_tritonserver, bundled_tritonserver_dir, image_to_request, infer, upscale_file

    try:
        bundled_tritonserver_dir()
    except NotInstalledError as exc:  # only "not installed" skips: any other error is a failure
        pytest.skip(f"no bundled tritonserver: {exc}")
    repo = tmp_path / "repo"
    result = CliRunner().invoke(
        cli,
        [
            "export",
            str(tiny_model),
            "--triton-repo",
            str(repo),
            "--name",
            "tiny",
            "--triton-flavour",
            "python",
            "--triton-kind",
            "cpu",
            "--backend",
            "torch",
        ],
    )
    assert result.exit_code == 0, result.output
    config = _parse(repo / "tiny" / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 4
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "sr_deploy.model": "tiny.pt",
        "sr_deploy.backend": "torch",
        "sr_deploy.precision": "fp32",
        "sr_deploy.scale": "4",
        "sr_deploy.max_request_pixels": "4194304",
    }
    assert (repo / "tiny" / "1" / "tiny.pt").read_bytes() == tiny_model.read_bytes()
    # a lower bound for this server, so that an oversized request stays small to send
    config_path = repo / "tiny" / "config.pbtxt"
    config_path.write_text(config_path.read_text().replace('"4194304"', '"100000"'))

    image = set5_dir / "bird.png"
    local = tmp_path / "local.png"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "sr_deploy",
            "upscale",
            str(image),
            "-o",
            str(local),
            "--model",
            str(tiny_model),
            "--backend",
            "torch",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--no-progress",
        ],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )

    with bundled_tritonserver(repo, startup_timeout=90) as url:
        assert url.startswith("http://127.0.0.1:")
        served = upscale_file(url, "tiny", image, tmp_path / "served.png")
        # two same-size images in one request come back as two upscaled images, in order
        from sr_deploy.imaging import read_image

        crops = [image_to_request(read_image(path)[:64, :80]).batch for path in sorted(set5_dir.glob("*.png"))[:2]]
        pair = infer(url, "tiny", np.concatenate(crops))
        one = infer(url, "tiny", crops[1])
        # the server refuses a request over its bound (the client's own check stepped aside)
        from sr_deploy.errors import SRDeployError

        with pytest.raises(SRDeployError, match=r"1x3x320x320 is 102400 input pixels, more than the 100000"):
            infer(url, "tiny", np.zeros((1, 3, 320, 320), np.float32), max_pixels=10**9)
    # the same PNG, byte for byte, but for the local run's provenance field (model and precision),
    # which a client of someone else's server cannot know
    from PIL import Image

    from sr_deploy.imaging import add_png_text

    with Image.open(local) as image:
        provenance = image.text
    assert set(provenance) == {"sr-deploy"}
    assert add_png_text(served.read_bytes(), provenance) == local.read_bytes()
    assert pair.shape == (2, 3, 256, 320) and np.array_equal(pair[1], one[0])
    with pytest.raises(urllib.error.URLError):  # the server is gone
        urllib.request.urlopen(f"{url}/v2/health/live", timeout=2)


def test_repositories_carry_a_request_bound_and_bind_to_loopback(tiny_model, tmp_path):
    """Issue 24 D: a 3000x3000 request returned 1.7 GB after 23 s, and the README published both
    ports on every interface with no word on authentication."""
    from sr_deploy.serving import MAX_REQUEST_PIXELS

    for flavour in ("onnx", "python"):
        repo = tmp_path / flavour
        args = ["export", str(tiny_model), "--triton-repo", str(repo), "--name", "sr", "--no-verify"]
        result = CliRunner().invoke(cli, [*args, "--triton-flavour", flavour])
        assert result.exit_code == 0, result.output
        config = text_format.Parse((repo / "sr" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert config.parameters["sr_deploy.max_request_pixels"].string_value == str(MAX_REQUEST_PIXELS)
        readme = (repo / "README.md").read_text()
        assert "-p 127.0.0.1:8000:8000 -p 127.0.0.1:8001:8001" in readme
        assert "-p 8000:8000" not in readme and "reverse proxy" in readme and "--http-restricted-api" in readme


def test_the_readme_lists_every_model_of_the_repository(tiny_model, tmp_path):
    """Exporting `sr` and then `sr_py` into one repository: the README's list named only `sr_py`
    (its "Models here" line named both)."""
    repo = tmp_path / "repo"
    for name, flavour in (("sr", "onnx"), ("sr_py", "python")):
        args = ["export", str(tiny_model), "--triton-repo", str(repo), "--name", name, "--no-verify"]
        assert CliRunner().invoke(cli, [*args, "--triton-flavour", flavour]).exit_code == 0
    readme = (repo / "README.md").read_text()
    assert "- `sr`: onnxruntime_onnx (exported earlier)" in readme and "- `sr_py`: python" in readme


def test_the_client_refuses_an_oversized_request_before_sending():
    from sr_deploy.errors import InputError
    from sr_deploy.serving import MAX_REQUEST_PIXELS, infer

    side = int(np.sqrt(MAX_REQUEST_PIXELS)) + 1
    batch = np.zeros((1, 3, side, side), np.float32)
    # a port nothing listens on: the size is refused before any connection is tried
    with pytest.raises(InputError, match=rf"a request of 1x3x{side}x{side} is {side * side} input pixels, more than"):
        infer("http://127.0.0.1:1", "sr", batch)


def test_an_onnx_file_with_external_data_keeps_its_weights_in_the_repository(tiny_model, tmp_path):
    """Issue 24 E: `export X.onnx --triton-repo` dropped X.onnx's external data and exited 0."""
    import onnx
    import onnxruntime as ort

    plain = tmp_path / "plain.onnx"
    assert CliRunner().invoke(cli, ["export", str(tiny_model), "-o", str(plain), "--no-verify"]).exit_code == 0
    split = tmp_path / "split" / "model.onnx"
    split.parent.mkdir()
    onnx.save_model(
        onnx.load(str(plain)), str(split), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    assert (split.parent / "weights.bin").stat().st_size > 0
    repo = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["export", str(split), "--triton-repo", str(repo), "--name", "sr", "--no-verify"])
    assert result.exit_code == 0, result.output
    served = repo / "sr" / "1" / "model.onnx"
    x = np.random.default_rng(0).random((1, 3, 16, 20), dtype=np.float32)
    expected = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.array_equal(got, expected)
    # a self-contained file is copied byte for byte
    repo2 = tmp_path / "repo2"
    CliRunner().invoke(cli, ["export", str(plain), "--triton-repo", str(repo2), "--name", "sr", "--no-verify"])
    assert (repo2 / "sr" / "1" / "model.onnx").read_bytes() == plain.read_bytes()
