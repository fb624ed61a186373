"""sr-deploy's TensorRT calls against the REAL Python API of TensorRT 10.13 and 11.4 (issue 15).

For each release, a subprocess (`_trt_api_run.py`) imports the real bindings without a GPU
(`_trt_bindings.py`), replaces `tensorrt` with a strict stand-in derived from them
(`_strict_trt.py`: every attribute must exist in that release, every call must match its
pybind11 signature; it returns objects, never results) and drives sr-deploy's build path
(`build-engine` fp16 / fp32 / bf16 / --strongly-typed, static and dynamic profiles, timing
cache) and runtime path (deserialize, name-based I/O, shapes, execute_async_v3, CUDA-graph
bookkeeping). These tests assert what TensorRT was asked. No engine is built or run here.

Marked `trt_api`; skipped with the reason when the bindings cannot be fetched (no network to
the package index, no gcc). `.ci/run` fetches them first (`python3 tests/_trt_bindings.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]  # tests/, where the TensorRT helpers are
sys.path.insert(0, str(HERE))

import _trt_bindings  # noqa: E402

pytestmark = [pytest.mark.trt_api, pytest.mark.slow]  # the real bindings, prepared per release
PROFILE = ("(1, 3, 16, 16)", "(1, 3, 32, 32)", "(2, 3, 64, 64)")


@pytest.fixture(scope="module")
def tiny_onnx_file(tiny_srresnet, tmp_path_factory) -> Path:
    from sr_deploy.export import export_onnx
    from sr_deploy.models import fold_batch_norm

    path = tmp_path_factory.mktemp("trt_api") / "tiny.onnx"
    export_onnx(fold_batch_norm(tiny_srresnet), path, exporter="legacy", verify=False, log=None)
    return path


@pytest.fixture(scope="module", params=_trt_bindings.RELEASES, ids=lambda v: f"trt{v.split('.')[0]}")
def release(request, tiny_onnx_file, tmp_path_factory) -> dict:
    """The recorded scenarios of one release (one subprocess per release)."""
    folder = _trt_bindings.prepare(request.param)
    if isinstance(folder, str):
        pytest.skip(f"TensorRT {request.param} Python bindings unavailable: {folder}")
    work = tmp_path_factory.mktemp(f"trt{request.param}")
    out = work / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, str(HERE / "_trt_api_run.py"), str(folder), str(tiny_onnx_file), str(work), str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=HERE.parent,
    )
    assert run.returncode == 0 and out.is_file(), f"the {request.param} subprocess failed:\n{run.stderr[-4000:]}"
    data = json.loads(out.read_text())
    assert data["version"] == request.param  # the real module of that release was imported
    return data


def _calls(scenario: dict, method: str) -> list[str]:
    return [args for _cls, name, args in scenario["calls"] if name == method]


def _check_clean(scenario: dict, name: str) -> None:
    """No call outside the release's API, and no crash."""
    assert not scenario["violations"], f"{name}: " + "\n".join(scenario["violations"])
    assert "error" not in scenario, f"{name}: {scenario.get('traceback', scenario.get('error'))}"
    assert not scenario.get("exception"), f"{name}: {scenario['exception']}\n{scenario.get('output', '')}"


@pytest.mark.parametrize(
    "name",
    [
        "fp16",
        "fp16_strongly_typed",
        "fp32",
        "fp16_static",
        "timing_cache_first",
        "timing_cache_second",
        "timing_cache_foreign",
    ],
)
@pytest.mark.slow
def test_build_path_conforms(release, name):
    scenario = release["scenarios"][name]
    _check_clean(scenario, name)
    assert scenario["exit_code"] == 0, scenario["output"]
    # The whole call sequence ran against the stand-in, whose "engine" is its fixed bytes.
    assert scenario["engine_is_stand_in_bytes"]
    for method in (
        "create_network",
        "parse_from_file",
        "set_memory_pool_limit",
        "set_shape",
        "add_optimization_profile",
        "create_timing_cache",
        "set_timing_cache",
        "build_serialized_network",
    ):
        assert _calls(scenario, method), f"{name}: {method} was never called"
    assert all(a.endswith("ignore_mismatch=False") for a in _calls(scenario, "set_timing_cache"))


@pytest.mark.slow
def test_fp16_route_per_release(release):
    major = int(release["version"].split(".")[0])
    default, strongly = release["scenarios"]["fp16"], release["scenarios"]["fp16_strongly_typed"]
    assert _calls(default, "set_shape") == [f"input, {', '.join(PROFILE)}"]
    if major >= 11:
        for scenario in (default, strongly):
            assert _calls(scenario, "set_flag") == []  # no BuilderFlag.FP16 / BF16 on 11: removed
            assert _calls(scenario, "create_network") == ["0"]  # no EXPLICIT_BATCH, no flags at all
            assert _calls(scenario, "parse_from_file")[0].endswith(".fp16.onnx")  # strongly typed from fp16 ONNX
            assert "fp16 tensors" in scenario["output"]
    else:
        assert _calls(default, "set_flag") == ["BuilderFlag.FP16"]  # weakly typed + the flag
        assert _calls(default, "create_network") == ["0"]
        assert not _calls(default, "parse_from_file")[0].endswith(".fp16.onnx")
        # 10.12+ with --strongly-typed: STRONGLY_TYPED from an fp16 ONNX, never the FP16 flag with it
        assert _calls(strongly, "set_flag") == []
        assert _calls(strongly, "create_network") == [str(release["strongly_typed_bit"])]
        assert _calls(strongly, "parse_from_file")[0].endswith(".fp16.onnx")


def test_fp32_clears_tf32_and_sets_no_precision_flag(release):
    scenario = release["scenarios"]["fp32"]
    assert _calls(scenario, "clear_flag") == ["BuilderFlag.TF32"] and _calls(scenario, "set_flag") == []
    assert not _calls(scenario, "parse_from_file")[0].endswith(".fp16.onnx")


def test_bf16_per_release(release):
    scenario = release["scenarios"]["bf16"]
    assert not scenario["violations"]
    if release["version"].startswith("11."):
        assert scenario["exit_code"] == 2 and "BuilderFlag.BF16 was removed" in scenario["output"]
        assert not _calls(scenario, "build_serialized_network")
    else:
        assert scenario["exit_code"] == 0 and _calls(scenario, "set_flag") == ["BuilderFlag.BF16"]


def test_static_profile(release):
    scenario = release["scenarios"]["fp16_static"]
    assert _calls(scenario, "set_shape") == [f"input, {', '.join(['(1, 3, 32, 32)'] * 3)}"]


def test_timing_cache_saved_loaded_and_a_foreign_one_replaced(release):
    first, second = release["scenarios"]["timing_cache_first"], release["scenarios"]["timing_cache_second"]
    assert _calls(first, "create_timing_cache") == ["<0 bytes>"] and _calls(first, "serialize")
    loaded = _calls(second, "create_timing_cache")
    assert loaded != ["<0 bytes>"] and len(loaded) == 1  # the first build's cache, read back
    foreign = release["scenarios"]["timing_cache_foreign"]  # set_timing_cache answered False
    assert _calls(foreign, "create_timing_cache") == [loaded[0], "<0 bytes>"]
    assert "does not match this TensorRT version or GPU" in foreign["output"]


def test_runtime_path_conforms(release):
    scenario = release["scenarios"]["runtime"]
    _check_clean(scenario, "runtime")
    assert scenario["io"] == ["input", "output", [1, 3, 16, 16], [1, 3, 32, 32], [2, 3, 64, 64]]
    assert len(_calls(scenario, "deserialize_cuda_engine")) == 1  # the engine file's bytes (a buffer)
    strategies = _calls(scenario, "create_execution_context")
    # one plain context (STATIC) per runner that ran plain, one USER_MANAGED per captured shape
    assert strategies.count("ExecutionContextAllocationStrategy.STATIC") == 2
    # 16, 32, 48 (capture failed), 64 (drops 32: 16 was used more recently), 32 again
    assert strategies.count("ExecutionContextAllocationStrategy.USER_MANAGED") == 5
    assert all(scenario["contexts_created_in_device_scope"])  # inside torch.cuda.device(N) (bug 5)
    # user-managed memory sized for each shape (the stand-in answers 1000 + H), attached to its context
    assert _calls(scenario, "set_device_memory")[0].endswith(", 1016")
    assert len(_calls(scenario, "set_device_memory")) == 5
    assert scenario["out_shapes"] == [
        [2, 3, 80, 96],
        [1, 3, 64, 64],
        [1, 3, 128, 128],
        [1, 3, 64, 64],
        [1, 3, 192, 192],
        [1, 3, 256, 256],
        [1, 3, 128, 128],
    ]
    # bounded: capacity 2, least recently used dropped
    assert scenario["graphs_cached"] == [[1, 3, 64, 64], [1, 3, 32, 32]]
    assert scenario["graph_memory"] == [1064, 1032]
    assert scenario["no_graph"] == [[1, 3, 48, 48]] and scenario["captures"] == 4
    assert _calls(scenario, "execute_async_v3") and _calls(scenario, "set_input_shape")
    assert all(a.startswith(("input, ", "output, ")) for a in _calls(scenario, "set_tensor_address"))


def test_the_stand_in_refuses_what_the_release_lacks(release):
    """A stand-in that accepted anything would make every test above unable to fail."""
    refused = release["scenarios"]["self_test"]["refused"]
    assert refused == release["scenarios"]["self_test"]["violations"]
    assert len(refused) == 7, refused
    assert "has no attribute 'set_memory_pool'" in refused[0]
    assert "missing argument 'pool_size'" in refused[1]
    assert "no parameter named 'size'" in refused[2]
    assert "is not a tensorrt.tensorrt.MemoryPoolType" in refused[3]
    assert "read-only" in refused[4] and "has no attribute 'NoSuchClass'" in refused[5]
    assert "BuilderFlag has no member 'NO_SUCH_FLAG'" in refused[6]


def test_tensorrt_backend_on_the_stand_in(release):
    """TensorRTBackend itself (sidecar check, deserialize, batch split, padding under the profile
    min, the runner) on the engine file of the fp32 build, with a CPU stand-in device."""
    scenario = release["scenarios"]["backend"]
    _check_clean(scenario, "backend")
    for graphs, contexts in (("False", 1), ("True", 2)):
        run = scenario[f"graphs={graphs}"]
        assert run["facts"] == [4, "fp32", "cuda:1", [2, 64, 64]]  # from the sidecar and the profile
        assert run["output"] == ["ndarray", [3, 3, 40, 48], "float32"]  # padded to 16x16, cropped back
        assert run["ordered_calls"] == 2 and run["ops_device"] == "cuda:1"  # batch 3 > max 2: two chunks
        assert run["contexts"] == contexts  # plain: one; graphs: one per chunk shape (2x16x16, 1x16x16)
    assert _calls(scenario, "deserialize_cuda_engine") and _calls(scenario, "execute_async_v3")
