"""The backend template (`Backend.__call__`) and the backend table: what every runtime gets for
free, checked with a runtime whose output is known exactly (nearest-neighbour upscaling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sr_deploy.backends.base import Backend
from sr_deploy.backends.table import BACKEND_NAMES, BACKENDS, bench_names, spec_for_suffix, spec_named
from sr_deploy.errors import InputError


class Nearest(Backend):
    """x2 nearest neighbour; records the shape and kind of every `infer` call."""

    name = "nearest"

    def __init__(self, kinds=("numpy",), max_shape=None, min_shape=None):
        super().__init__(2, "fp32", "cpu", max_shape=max_shape, min_shape=min_shape)
        self.kinds = kinds
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def input_kinds(self, kind):
        return self.kinds

    def infer(self, x):
        self.calls.append((type(x).__module__.split(".")[0], tuple(x.shape)))
        if isinstance(x, torch.Tensor):
            return x.repeat_interleave(2, 2).repeat_interleave(2, 3)
        return x.repeat(2, axis=2).repeat(2, axis=3)


def _expected(x: np.ndarray) -> np.ndarray:
    return x.repeat(2, axis=2).repeat(2, axis=3)


def test_fits_batches_to_the_profile_and_crops_back():
    x = np.random.default_rng(0).random((5, 3, 5, 7), dtype=np.float32)
    backend = Nearest(max_shape=(2, 8, 8), min_shape=(2, 6, 6))
    y = backend(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_array_equal(y, _expected(x))  # padding never leaks into the output
    # batches of max N = 2, the last one padded up to min N; H padded up to min H, W kept
    assert backend.calls == [("numpy", (2, 3, 6, 7))] * 3


def test_pads_with_edge_values_in_both_array_kinds():
    x = np.random.default_rng(1).random((1, 3, 2, 3), dtype=np.float32)
    seen = {}

    class Keeping(Nearest):
        def infer(self, t):
            seen[self.kinds[0]] = t.numpy().copy() if isinstance(t, torch.Tensor) else t.copy()  # as padded
            return super().infer(t)

    for kind, data in (("numpy", x), ("torch", torch.from_numpy(x.copy()))):
        Keeping(kinds=(kind,), max_shape=(1, 4, 4), min_shape=(1, 4, 4))(data)
    np.testing.assert_array_equal(seen["numpy"], np.pad(x, ((0, 0), (0, 0), (0, 2), (0, 1)), mode="edge"))
    np.testing.assert_array_equal(seen["torch"], seen["numpy"])


def test_converts_to_the_runtime_kind_and_back_to_the_callers():
    x = np.random.default_rng(2).random((2, 3, 4, 4), dtype=np.float32)
    torch_runtime = Nearest(kinds=("torch",))
    y = torch_runtime(x)  # numpy in -> numpy out, though the runtime computed on a tensor
    assert isinstance(y, np.ndarray) and torch_runtime.calls[0][0] == "torch"
    np.testing.assert_array_equal(y, _expected(x))
    numpy_runtime = Nearest(kinds=("numpy",))
    yt = numpy_runtime(torch.from_numpy(x))  # a tensor in -> a float32 tensor out
    assert isinstance(yt, torch.Tensor) and yt.dtype == torch.float32 and numpy_runtime.calls[0][0] == "numpy"
    np.testing.assert_array_equal(yt.numpy(), _expected(x))


def test_rejects_bad_input_with_one_line_errors():
    backend = Nearest(max_shape=(4, 8, 8))
    with pytest.raises(InputError, match=r"\(N, 3, H, W\)"):
        backend(np.zeros((1, 4, 8, 8), np.float32))
    with pytest.raises(InputError, match="numpy array or a torch tensor, got list"):
        backend([[0.0]])
    with pytest.raises(InputError, match="input 9x8 is larger than nearest's maximum 8x8; tile it"):
        backend(np.zeros((1, 3, 9, 8), np.float32))
    assert backend.calls == []


def test_the_table_drives_names_suffixes_and_the_cli_choices():
    from sr_deploy.cli import cli
    from sr_deploy.model_file import file_kind

    assert BACKEND_NAMES == ("auto", "torch", "onnxruntime", "tensorrt")
    assert bench_names() == ("torch", "torch-nchw", "onnxruntime", "tensorrt")
    assert spec_named("torch").suffixes == file_kind("checkpoint").suffixes  # every file load_checkpoint reads
    assert spec_named("ORT").name == "onnxruntime" and spec_named("trt").name == "tensorrt"
    assert [spec_for_suffix(Path(f"m{s}")).name for s in (".pth", ".onnx", ".plan")] == [
        "torch",
        "onnxruntime",
        "tensorrt",
    ]
    with pytest.raises(InputError, match=r"m\.h5: unsupported model file type '\.h5'"):
        spec_for_suffix(Path("m.h5"))
    for command in ("eval", "upscale"):
        (option,) = [p for p in cli.commands[command].params if p.name in ("backend", "backend_name")]
        assert tuple(option.type.choices) == BACKEND_NAMES
    (bench_option,) = [p for p in cli.commands["benchmark"].params if p.name == "backends"]
    assert bench_option.default == ",".join(bench_names())
    # every row answers the availability question with None or a one-line reason
    for spec in BACKENDS:
        reason = spec.available("cpu")
        assert reason is None or ("\n" not in reason and reason)
