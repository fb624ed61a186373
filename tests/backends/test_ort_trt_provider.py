"""ONNX Runtime's TensorRT execution provider (issue 15, bug 4): a provider that fails to load is
dropped by ONNX Runtime without an error, so the backend must read `session.get_providers()`
back; and a dynamic graph needs explicit profile shapes or the provider rebuilds its engine for
every new input shape (inside timing loops).

onnxruntime-gpu cannot be installed here, so `get_available_providers` and `InferenceSession`
are replaced by stand-ins that report what a GPU install would report; the graph is real.
"""

from __future__ import annotations

import onnxruntime as ort
import pytest

from sr_deploy.backends.ort_backend import OnnxRuntimeBackend
from sr_deploy.errors import NotInstalledError
from sr_deploy.export import export_onnx

GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def tiny_onnx(tiny_srresnet, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_srresnet, path, exporter="legacy", verify=False, log=None)
    return path


def _gpu_install(monkeypatch, loaded: list[str]) -> list:
    """Pretend onnxruntime-gpu is installed; sessions end up with the providers in `loaded`.
    Returns the list that receives the `providers` argument of each session."""
    asked: list = []

    class Session:
        def __init__(self, source, sess_options=None, providers=None):
            asked.append(providers)

        def get_providers(self):
            return list(loaded)

    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_PROVIDERS))
    monkeypatch.setattr(ort, "InferenceSession", Session)
    return asked


@pytest.mark.slow
def test_fp16_refused_when_the_tensorrt_provider_silently_fell_back(tiny_onnx, monkeypatch):
    _gpu_install(monkeypatch, ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(NotInstalledError) as info:
        OnnxRuntimeBackend(tiny_onnx, device="cuda", precision="fp16")
    msg = str(info.value)
    assert str(tiny_onnx) in msg and "did not load the TensorRT execution provider" in msg
    assert "would run in fp32, not fp16" in msg and info.value.exit_code == 2


def test_cuda_refused_when_every_gpu_provider_fell_back(tiny_onnx, monkeypatch):
    _gpu_install(monkeypatch, ["CPUExecutionProvider"])
    with pytest.raises(NotInstalledError, match="loaded no GPU provider for cuda"):
        OnnxRuntimeBackend(tiny_onnx, device="cuda", precision="fp32")


def test_tensorrt_provider_gets_profile_shapes_and_bounds_the_input(tiny_onnx, monkeypatch):
    asked = _gpu_install(monkeypatch, GPU_PROVIDERS)
    backend = OnnxRuntimeBackend(tiny_onnx, device="cuda", precision="fp16")
    name, options = asked[0][0]
    assert name == "TensorrtExecutionProvider" and options["trt_fp16_enable"] is True
    assert options["trt_profile_min_shapes"] == "input:1x3x16x16"
    assert options["trt_profile_opt_shapes"] == "input:1x3x270x480"
    assert options["trt_profile_max_shapes"] == "input:4x3x540x960"
    # Larger inputs would make the provider rebuild: the caller tiles them to the profile max.
    assert backend.max_shape == (4, 540, 960) and backend.precision == "fp16"
