"""The backend contract (numpy/torch in and out, shapes, precisions) and `load` by file type."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from sr_deploy.backends import load
from sr_deploy.backends.ort_backend import OnnxRuntimeBackend
from sr_deploy.backends.torch_backend import TorchBackend
from sr_deploy.errors import TENSORRT_NOT_INSTALLED, InputError, NotInstalledError
from sr_deploy.export import export_onnx
from sr_deploy.models import save_checkpoint
from sr_deploy.parity import check_thresholds, parity, parity_inputs


@pytest.fixture(scope="module")
def tiny_onnx(tiny_srresnet, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_srresnet, path, exporter="legacy", verify=False, log=None)
    return path


def _reference(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.slow
def test_torch_backend_numpy_in_numpy_out(tiny_srresnet, set5_dir):
    x = parity_inputs(sizes=((17, 23),), batch=2)[0]  # odd sizes, real image crops
    backend = TorchBackend(tiny_srresnet, 4)
    y = backend(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (2, 3, 68, 92)
    np.testing.assert_allclose(y, _reference(tiny_srresnet, x), atol=1e-5)  # BN folded, same result
    assert (backend.name, backend.scale, backend.precision, backend.device, backend.max_shape) == (
        "torch",
        4,
        "fp32",
        "cpu",
        None,
    )


@pytest.mark.slow
def test_torch_backend_tensor_in_tensor_out(tiny_srresnet):
    x = torch.rand(1, 3, 9, 13, generator=torch.Generator().manual_seed(1))
    y = TorchBackend(tiny_srresnet, 4, precision="bf16")(x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.device == x.device
    assert y.shape == (1, 3, 36, 52)


@pytest.mark.slow
def test_channels_last_equals_nchw(tiny_srresnet):
    x = np.random.default_rng(0).random((2, 3, 21, 15), dtype=np.float32)
    a = TorchBackend(tiny_srresnet, 4, channels_last=True)(x)
    b = TorchBackend(tiny_srresnet, 4, channels_last=False)(x)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_on_cpu_and_meets_psnr(tiny_srresnet, precision, set5_dir):
    backend = TorchBackend(tiny_srresnet, 4, precision=precision)
    assert backend.precision == precision and next(backend.model.parameters()).dtype != torch.float32
    report = parity(TorchBackend(tiny_srresnet, 4), backend, parity_inputs())
    assert report.max_abs > 0  # it really computed in reduced precision
    assert check_thresholds(report, precision), report.summary()


def test_bad_arguments_and_inputs(tiny_srresnet):
    with pytest.raises(InputError, match="precision"):
        TorchBackend(tiny_srresnet, 4, precision="int8")
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        TorchBackend(tiny_srresnet, 4)(np.zeros((3, 8, 8), np.float32))
    if not torch.cuda.is_available():
        with pytest.raises(NotInstalledError, match="CUDA"):
            TorchBackend(tiny_srresnet, 4, device="cuda")


@pytest.mark.slow
def test_onnxruntime_backend_matches_torch_on_odd_shapes(tiny_srresnet, tiny_onnx, set5_dir):
    backend = OnnxRuntimeBackend(tiny_onnx, "cpu", threads=1)
    assert (backend.name, backend.scale, backend.precision, backend.max_shape) == ("onnxruntime", 4, "fp32", None)
    for n, h, w in [(1, 7, 13), (2, 31, 17)]:
        x = parity_inputs(sizes=((h, w),), batch=n)[0]
        y = backend(x)
        assert y.shape == (n, 3, 4 * h, 4 * w) and y.dtype == np.float32
        np.testing.assert_allclose(y, _reference(tiny_srresnet, x), atol=1e-4)
    yt = backend(torch.from_numpy(x))
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32 and yt.shape == (2, 3, 124, 68)


@pytest.mark.slow
def test_onnxruntime_static_shape_pads_smaller_inputs_and_splits_batches(tiny_srresnet, tmp_path):
    path = tmp_path / "static.onnx"
    export_onnx(tiny_srresnet, path, static_shape="2x24x32", exporter="legacy", verify=False, log=None)
    backend = OnnxRuntimeBackend(path)
    assert backend.max_shape == (2, 24, 32)
    x = np.random.default_rng(0).random((3, 3, 20, 32), dtype=np.float32)  # batch over, height under
    y = backend(x)
    assert y.shape == (3, 3, 80, 128)
    padded = np.pad(x, ((0, 0), (0, 0), (0, 4), (0, 0)), mode="edge")  # what the backend runs
    np.testing.assert_allclose(y, _reference(tiny_srresnet, padded)[:, :, :80], atol=1e-4)
    with pytest.raises(InputError, match="exceeds this file's static shape 24x32"):
        backend(np.zeros((1, 3, 25, 32), np.float32))


@pytest.mark.slow
def test_onnxruntime_refuses_fp16_of_an_fp32_graph_on_cpu(tiny_onnx):
    with pytest.raises(InputError, match="fp16"):
        OnnxRuntimeBackend(tiny_onnx, "cpu", precision="fp16")


@pytest.mark.slow
def test_onnxruntime_reads_scale_without_metadata_by_probing(tiny_onnx, tmp_path):
    model = onnx.load(str(tiny_onnx))
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(model, str(bare))
    assert OnnxRuntimeBackend(bare).scale == 4


def test_load_picks_the_backend_by_file_type(tiny_srresnet, tiny_onnx, tmp_path):
    ckpt = save_checkpoint(tmp_path / "tiny.pt", tiny_srresnet, {"scale": 4, "num_blocks": 2, "num_features": 16})
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    with load(ckpt) as from_pt, load(tiny_onnx) as from_onnx, load(tiny_srresnet) as from_module:
        assert isinstance(from_pt, TorchBackend) and isinstance(from_module, TorchBackend)
        assert isinstance(from_onnx, OnnxRuntimeBackend)
        if not torch.cuda.is_available():  # auto = cpu and fp32 here
            assert (from_pt.device, from_pt.precision, from_onnx.precision) == ("cpu", "fp32", "fp32")
        np.testing.assert_allclose(from_pt(x), from_onnx(x), atol=1e-4)
        np.testing.assert_allclose(from_pt(x), from_module(x), atol=1e-6)


def test_an_onnx_graph_that_does_not_take_rgb_is_refused_in_one_line(tmp_path):
    """A 1-channel (greyscale) ONNX model failed inside ONNX Runtime with a page of text, exit 1."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "grey", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "grey.onnx")
    with pytest.raises(InputError, match=r"grey\.onnx: its input is \?x1x\?x\?; sr-deploy feeds RGB images as Nx3xHxW"):
        load(tmp_path / "grey.onnx")


def test_load_errors_name_the_file(tiny_onnx, tmp_path):
    with pytest.raises(InputError, match=r"missing\.onnx: no such model file"):
        load(tmp_path / "missing.onnx")
    odd = tmp_path / "model.h5"
    odd.write_bytes(b"x")
    with pytest.raises(InputError, match=r"model\.h5: unsupported model file type '\.h5'"):
        load(odd)
    with pytest.raises(InputError, match="export it first"):
        pt = tmp_path / "m.pt"
        pt.write_bytes(b"x")
        load(pt, backend="onnxruntime")
    with pytest.raises(InputError, match="unknown backend"):
        load(tiny_onnx, backend="openvino")


def test_engine_files_need_tensorrt(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    with pytest.raises(NotInstalledError) as info:
        load(engine)
    assert TENSORRT_NOT_INSTALLED in str(info.value) and info.value.exit_code == 2


@pytest.mark.slow
def test_fp16_emulation_rounds_where_the_cpu_provider_alone_computes_in_float32(tmp_path, set5_dir):
    """The bundled model stores fp16 weights, so its fp16 ONNX graph differs from fp32 only by
    the fp16 rounding of activations. ONNX Runtime's CPU provider alone computes the graph in
    float32 (parity ~150 dB, fp32's); `emulate_fp16` rounds every fp16 tensor, as a GPU runtime
    does, and lands where torch's own fp16 does (~90 dB), still far above the 50 dB bar."""
    half = tmp_path / "default-fp16.onnx"
    export_onnx("default", half, fp16=True, verify=False, log=None)
    reference = load("default", device="cpu", precision="fp32")
    inputs = parity_inputs(sizes=((48, 40),), batch=1)
    with OnnxRuntimeBackend(half) as native, OnnxRuntimeBackend(half, emulate_fp16=True) as emulated:
        assert not native.fp16_emulated and emulated.fp16_emulated
        native_db = parity(reference, native, inputs).psnr_db
        emulated_db = parity(reference, emulated, inputs).psnr_db
    torch_fp16_db = parity(reference, load("default", device="cpu", precision="fp16"), inputs).psnr_db
    assert native_db > 130, native_db  # float32 arithmetic: the check could not see fp16 errors
    assert 60 < emulated_db < 110, emulated_db
    assert abs(emulated_db - torch_fp16_db) < 8, (emulated_db, torch_fp16_db)
