"""build-engine and the TensorRT backend.

TensorRT cannot be installed on the development machines, so this file tests, on the CPU:
- the fp16 ONNX graph that build-engine feeds TensorRT 11 (and 10 with --strongly-typed),
  validated with ONNX Runtime against torch float32 on real Set5 crops;
- profile / shape parsing, the 2^31-element tensor limit, sidecar JSON, engine-cache keys,
  the refusal of an engine built elsewhere, the not-installed / no-CUDA messages and exit codes;
- the orchestration's branching per TensorRT version, with a stand-in `tensorrt` object that
  only records calls (see FakeTRT: it checks OUR control flow, never a TensorRT result).
Tests marked `tensorrt` build and run real engines; they skip here with a reason.
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sr_deploy import _tensorrt
from sr_deploy.backends.trt_build import _build_with_fallback
from sr_deploy.cli import cli
from sr_deploy.engine import (
    DEFAULT_MAX,
    MAX_TENSOR_ELEMENTS,
    BuildOptions,
    EngineSidecar,
    ShapeProfile,
    cached_engine_path,
    check_sidecar_matches,
    check_tensor_limits,
    engine_cache_key,
    largest_tensor,
    parse_shape,
    read_sidecar,
    resolve_profile,
    sidecar_path,
    write_sidecar,
)
from sr_deploy.errors import TENSORRT_NOT_INSTALLED, InputError, NotInstalledError, SRDeployError

# --------------------------------------------------------------------------- fixtures


def _export_tiny(model: torch.nn.Module, path: Path) -> Path:
    """A dynamic-shape float32 ONNX of `model` with sr_deploy metadata (the export helper's
    `export_onnx`, legacy exporter: fast; parity is tested in test_export)."""
    from sr_deploy.export import export_onnx

    export_onnx(model, path, exporter="legacy", verify=False, log=None)
    return path


@pytest.fixture(scope="module")
def tiny_model(tiny_srresnet):
    """The conftest model with BN folded, as the exported graph has it."""
    from sr_deploy.models import fold_batch_norm

    return fold_batch_norm(tiny_srresnet)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model, tmp_path_factory) -> Path:
    return _export_tiny(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail, even on a machine that has it."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1x3x64x64", (1, 3, 64, 64)),
        ("4x3x540x960", (4, 3, 540, 960)),
        ("2x128x96", (2, 3, 128, 96)),  # NxHxW: RGB implied
        (" 1X3X8X8 ", (1, 3, 8, 8)),
    ],
)
def test_parse_shape_good(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("abc", "expected NxCxHxW"),
        ("1x4x64x64", "channel dimension must be 3"),
        ("0x3x64x64", ">= 1"),
        ("1x3x64x64x2", "expected 4 dimensions"),
        ("1x3", "expected 4 dimensions"),
    ],
)
def test_parse_shape_bad(text, fragment):
    with pytest.raises(InputError, match=fragment) as info:
        parse_shape(text, "--max")
    assert "--max" in str(info.value)


def test_resolve_profile_defaults_partial_and_static():
    p = resolve_profile()
    assert (p.min, p.opt, p.max) == ((1, 3, 64, 64), (1, 3, 270, 480), (4, 3, 540, 960))
    assert not p.is_static
    p = resolve_profile(max="2x3x720x1280")
    assert p.max == (2, 3, 720, 1280) and p.opt == (1, 3, 270, 480)
    s = resolve_profile(static="1x256x256")
    assert s.is_static and s.opt == (1, 3, 256, 256)
    assert str(s) == "static 1x3x256x256"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"static": "1x64x64", "min": "1x3x64x64"}, "either --static or"),
        ({"min": "1x3x300x300"}, "--min 1x3x300x300 must not exceed --opt"),
        ({"opt": "1x3x600x600"}, "--opt 1x3x600x600 must not exceed --max"),
        ({"max": "1x3x32x32"}, "must not exceed --max"),
    ],
)
def test_resolve_profile_bad(kwargs, fragment):
    with pytest.raises(InputError, match=fragment):
        resolve_profile(**kwargs)


@pytest.mark.slow
def test_tensor_limit_default_profile_fits(tiny_onnx):
    check_tensor_limits(resolve_profile(), 4, tiny_onnx)  # 4x3x540x960 at x4: output 99.5 M elements


def test_tensor_limit_rejects_output_over_2_31_with_a_fitting_suggestion():
    assert 8 * 3 * 4320 * 7680 < MAX_TENSOR_ELEMENTS  # 8 x 1080p inputs at x4 (796 M elements) still fit
    profile = resolve_profile(max="32x3x1080x1920")  # 32 of them (3.2 G) do not
    with pytest.raises(InputError) as info:
        check_tensor_limits(profile, 4)
    msg = str(info.value)
    assert "'output'" in msg and "2^31" in msg and "--max 32x3x1080x1920" in msg
    suggested = msg.split("such as ")[1].split(" ")[0]
    check_tensor_limits(resolve_profile(max=suggested), 4)  # the suggestion itself fits


def test_tensor_limit_sees_intermediate_tensors(tiny_onnx):
    # Output 1x3x12000x12000 = 432 M elements fits, but the 64-channel tensor before the last
    # pixel shuffle (1x64x6000x6000 = 2.3 G) does not: found by ONNX shape inference.
    shape = (1, 3, 3000, 3000)
    elements, name = largest_tensor(tiny_onnx, shape)
    assert elements == 64 * 6000 * 6000 and name
    with pytest.raises(InputError, match="over TensorRT's limit") as info:
        check_tensor_limits(ShapeProfile((1, 3, 64, 64), (1, 3, 64, 64), shape), 4, tiny_onnx)
    assert "'output'" not in str(info.value)


# --------------------------------------------------------------------------- sidecar and cache


def _sidecar(**over) -> EngineSidecar:
    fields = dict(
        onnx_sha256="ab" * 32,
        tensorrt_version="10.13.0.35",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        profile=resolve_profile().as_dict(),
        precision="fp16",
        route="flag",
        scale=4,
        onnx_path="model.onnx",
    )
    fields.update(over)
    return EngineSidecar(**fields)


def test_sidecar_roundtrip(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not read")
    sc = _sidecar(fp32_block_list=["/conv_last/Conv"], build_seconds=12.5)
    path = write_sidecar(engine, sc)
    assert path == sidecar_path(engine) == tmp_path / "model.engine.json"
    data = json.loads(path.read_text())
    assert data["format"] == "sr-deploy-engine" and data["tensorrt_version"] == "10.13.0.35"
    back = read_sidecar(engine)
    assert back == sc
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_sidecar_missing_and_foreign(tmp_path):
    engine = tmp_path / "m.engine"
    assert read_sidecar(engine) is None
    sidecar_path(engine).write_text('{"hello": 1}')
    with pytest.raises(InputError, match="not an sr-deploy engine sidecar"):
        read_sidecar(engine)
    sidecar_path(engine).write_text("{broken")
    with pytest.raises(InputError, match="unreadable engine sidecar"):
        read_sidecar(engine)


@pytest.mark.parametrize(
    "content, cause",
    [(b"", "empty file, not a TensorRT engine"), (b"# not an engine\n", "a text file, not a TensorRT engine")],
)
def test_info_refuses_an_empty_or_text_engine_file(tmp_path, content, cause):
    """`info fake.engine` on a 0-byte file said `format: TensorRT engine`, exit 0: like an empty
    .onnx, it is one line naming the file, exit 2. A binary file with its sidecar is described."""
    fake = tmp_path / "fake.engine"
    fake.write_bytes(content)
    result = CliRunner().invoke(cli, ["info", str(fake)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"error: {fake}: {cause}"), line
    fake.write_bytes(b"ftrt\xe8\x00\x00\x00engine bytes")
    write_sidecar(fake, _sidecar())
    described = CliRunner().invoke(cli, ["info", str(fake)])
    assert described.exit_code == 0, described.output
    assert "format:      TensorRT engine" in described.output and "tensorrt_version=10.13.0.35" in described.output


def test_sidecar_mismatch_refused():
    sc = _sidecar()
    check_sidecar_matches(sc, "m.engine", "10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")  # same: accepted
    with pytest.raises(InputError) as info:
        check_sidecar_matches(sc, "m.engine", "11.0.0.1", "NVIDIA H100 80GB HBM3", "9.0")
    assert "built with TensorRT 10.13.0.35, this is TensorRT 11.0.0.1" in str(info.value)
    assert "sr-deploy build-engine model.onnx -o m.engine" in str(info.value)
    with pytest.raises(
        InputError,
        match=r"built for NVIDIA H100 80GB HBM3 \(compute capability 9.0\), "
        r"this GPU is NVIDIA L4 \(8.9\)",
    ):
        check_sidecar_matches(sc, "m.engine", "10.13.0.35", "NVIDIA L4", "8.9")


def test_engine_cache_key_covers_every_field(tmp_path, monkeypatch):
    base = dict(
        onnx_sha256="ab" * 32,
        tensorrt_version="10.13.0",
        gpu_name="H100",
        compute_capability="9.0",
        profile=resolve_profile(),
        precision="fp16",
        route="flag",
    )
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**{**base, "profile": resolve_profile().as_dict()})  # stable, dict == profile
    assert len(key) == 20 and int(key, 16) >= 0
    changes = {
        "onnx_sha256": "cd" * 32,
        "tensorrt_version": "11.0.0",
        "gpu_name": "L4",
        "compute_capability": "8.9",
        "profile": resolve_profile(max="1x3x540x960"),
        "precision": "fp32",
        "route": "strongly_typed",
    }
    # Build options change the engine too (issue 15 bug 7): workspace, optimisation level, sr-deploy version.
    changes.update(
        options_workspace=BuildOptions(workspace_bytes=1 << 30),
        options_level=BuildOptions(opt_level=5),
        options_version=BuildOptions(sr_deploy_version="0.0.1"),
    )
    keys = {
        engine_cache_key(**{**base, k.split("_")[0] if k.startswith("options_") else k: v}) for k, v in changes.items()
    }
    assert key not in keys and len(keys) == len(changes)
    assert key == engine_cache_key(**base, options=BuildOptions())  # the defaults are the default options
    assert _sidecar().cache_key() == engine_cache_key(
        "ab" * 32, "10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0", resolve_profile(), "fp16", "flag"
    )
    monkeypatch.setenv("SR_DEPLOY_ENGINE_CACHE", str(tmp_path / "cache"))
    assert cached_engine_path("dir/model.onnx", key, "fp16") == tmp_path / "cache" / f"model-fp16-{key}.engine"


# --------------------------------------------------------------------------- not installed / no CUDA


def test_build_engine_without_tensorrt_exits_2(tiny_onnx, tmp_path, no_tensorrt):
    result = CliRunner().invoke(cli, ["build-engine", str(tiny_onnx), "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {TENSORRT_NOT_INSTALLED}"
    assert not list(tmp_path.iterdir())  # nothing written


def test_tensorrt_backend_without_tensorrt(tiny_onnx, tmp_path, no_tensorrt):
    from sr_deploy.backends import load
    from sr_deploy.backends.trt_backend import TensorRTBackend

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0")
    with pytest.raises(NotInstalledError) as info:
        TensorRTBackend(engine)
    assert str(info.value) == TENSORRT_NOT_INSTALLED and info.value.exit_code == 2
    with pytest.raises(NotInstalledError, match="TensorRT is not installed"):
        load(tiny_onnx, backend="tensorrt")


def test_without_cuda_exits_2(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # importable, never called
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(cli, ["build-engine", str(tiny_onnx), "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: {_tensorrt.CUDA_NOT_AVAILABLE}"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--min", "1x4x64x64"], "--min '1x4x64x64': the channel dimension must be 3"),
        (["--static", "1x64x64", "--max", "1x3x64x64"], "either --static or --min/--opt/--max"),
        (["--opt", "1x3x900x900"], "--opt 1x3x900x900 must not exceed --max"),
        (["--max", "huge"], "--max 'huge': expected NxCxHxW"),
        (["--max", "64x3x4000x4000"], "2^31"),  # said "TensorRT is not installed" instead
    ],
)
def test_cli_bad_shapes_exit_2_before_tensorrt(tiny_onnx, args, fragment, no_tensorrt):
    result = CliRunner().invoke(cli, ["build-engine", str(tiny_onnx), *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and "Traceback" not in result.output


def test_fp32_engine_from_an_fp16_graph_refused(tiny_onnx, tmp_path, no_tensorrt):
    from sr_deploy.export import convert_to_fp16

    fp16 = tmp_path / "tiny.fp16.onnx"
    convert_to_fp16(tiny_onnx, output=fp16)
    result = CliRunner().invoke(cli, ["build-engine", str(fp16), "--fp32"])
    assert result.exit_code == 2 and "cannot give a float32 engine" in result.stderr


def test_cli_missing_and_wrong_file(tmp_path, no_tensorrt):
    result = CliRunner().invoke(cli, ["build-engine", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 2 and f"{tmp_path / 'nope.onnx'}: no such ONNX file" in result.stderr
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"x")
    result = CliRunner().invoke(cli, ["build-engine", str(pt)])
    assert result.exit_code == 2 and "expected an .onnx file" in result.stderr
    result = CliRunner().invoke(cli, ["build-engine", str(pt.with_suffix(".onnx")), "--opt-level", "9"])
    assert result.exit_code == 2 and "--opt-level" in result.stderr


# --------------------------------------------------------------------------- version branching


@pytest.mark.parametrize(
    "version, precision, strongly, route, flags, st_flag, fp16_onnx",
    [
        ((10, 9, 0), "fp16", False, "flag", ("FP16",), False, False),
        ((10, 13, 0), "bf16", False, "flag", ("BF16",), False, False),
        ((10, 13, 0), "fp16", True, "strongly_typed", (), True, True),
        ((11, 0, 0), "fp16", False, "strongly_typed", (), False, True),
        ((11, 1, 0), "fp16", True, "strongly_typed", (), False, True),  # the flag is ignored on 11: never passed
        ((10, 9, 0), "fp32", False, "fp32", (), False, False),
        ((11, 0, 0), "fp32", False, "fp32", (), False, False),
    ],
)
def test_plan_precision(version, precision, strongly, route, flags, st_flag, fp16_onnx):
    plan = _tensorrt.plan_precision(version, precision, strongly)
    assert (plan.route, plan.builder_flags, plan.strongly_typed_flag, plan.needs_fp16_onnx) == (
        route,
        flags,
        st_flag,
        fp16_onnx,
    )
    assert not (plan.builder_flags and plan.strongly_typed_flag)  # never both on one network
    assert plan.clear_flags == (("TF32",) if precision == "fp32" else ())


@pytest.mark.parametrize(
    "version, precision, strongly, fragment",
    [
        ((11, 0, 0), "bf16", False, "BuilderFlag.BF16 was removed"),
        ((10, 11, 0), "fp16", True, "needs TensorRT 10.12 or newer"),
        ((8, 6, 1), "fp16", False, "too old"),
        ((10, 13, 0), "int8", False, "unknown precision"),
    ],
)
def test_plan_precision_refusals(version, precision, strongly, fragment):
    with pytest.raises(InputError, match=fragment):
        _tensorrt.plan_precision(version, precision, strongly)


@pytest.mark.parametrize(
    "text, expected", [("10.13.0.35", (10, 13, 0)), ("11.0", (11, 0, 0)), ("10.9.0.34.post1", (10, 9, 0))]
)
def test_parse_version(text, expected):
    assert _tensorrt.parse_version(text) == expected


class FakeTRT:
    """A stand-in for the `tensorrt` module that RECORDS the calls our build orchestration makes.

    It checks our branching (which flags we set on which version, what we pass to
    create_network, that the timing cache is loaded and saved, that parser errors name the ONNX
    node), not TensorRT: its "engine" is a fixed byte string and nothing it returns is a
    TensorRT result. Only names documented for the given major version exist on it (e.g.
    BuilderFlag.FP16 and NetworkDefinitionCreationFlag.EXPLICIT_BATCH are absent on 11).
    """

    def __init__(
        self, version: str, parse_ok: bool = True, build_results: tuple = (b"ENGINE",), parser_errors: tuple = ()
    ):
        self.__version__ = version
        major = int(version.split(".")[0])
        self.calls: list[tuple] = []
        self.timing_cache_accepted: list[bool] = []  # set_timing_cache's answers (then True)
        self.has_timing_cache = True  # get_timing_cache() returns a cache (else None)
        fake = self

        class Sev:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = "E!", "E", "W", "I", "V"

        class ILogger:
            def __init__(self):
                pass

        self.ILogger, self.Logger = ILogger, Sev
        flags = {"TF32": "TF32", "REFIT": "REFIT"}
        if major == 10:
            flags.update(FP16="FP16", BF16="BF16", INT8="INT8")
        self.BuilderFlag = types.SimpleNamespace(**flags)
        ncf = {"STRONGLY_TYPED": 1 if major == 10 else 0}
        if major == 10:
            ncf["EXPLICIT_BATCH"] = 0
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(**ncf)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        results = list(build_results)

        class Err:
            def __init__(self, node):
                self._node = node

            def node(self):
                return self._node

            def code(self):
                return "UNSUPPORTED_NODE"

            def node_name(self):  # empty: the name then comes from the ONNX graph by node index
                return ""

            def node_operator(self):
                return ""

            def desc(self):
                return "fake description"

        class Parser:
            def __init__(self, network, logger):
                self.num_errors = len(parser_errors)

            def parse_from_file(self, path):
                fake.calls.append(("parse_from_file", path))
                return parse_ok

            def get_error(self, i):
                return Err(parser_errors[i])

        class Cache:
            def serialize(self):
                return b"CACHE-OUT"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))

            def clear_flag(self, flag):
                fake.calls.append(("clear_flag", flag))

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_optimization_profile",))

            def create_timing_cache(self, data):
                fake.calls.append(("create_timing_cache", bytes(data)))
                return Cache()

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("set_timing_cache", ignore_mismatch))
                return fake.timing_cache_accepted.pop(0) if fake.timing_cache_accepted else True

            def get_timing_cache(self):
                return Cache() if fake.has_timing_cache else None

            def __setattr__(self, name, value):
                fake.calls.append(("config." + name, value))

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                fake.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

        class Network:
            def get_input(self, i):
                return types.SimpleNamespace(name="input")

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags=0):
                fake.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network",))
                return results.pop(0)

        self.Builder, self.OnnxParser = Builder, Parser

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def _request(onnx_path: Path, plan, tmp_path: Path, profile: ShapeProfile | None = None) -> _tensorrt.BuildRequest:
    p = profile or resolve_profile()
    return _tensorrt.BuildRequest(
        onnx_path=onnx_path,
        onnx_nodes=[],
        plan=plan,
        min_shape=p.min,
        opt_shape=p.opt,
        max_shape=p.max,
        workspace_bytes=2 << 30,
        opt_level=3,
        timing_cache=tmp_path / "t.cache",
        log_path=tmp_path / "build.log",
    )


@pytest.mark.parametrize(
    "version, strongly, expect_flags, expect_network_flags",
    [
        ("10.9.0.34", False, [("set_flag", "FP16")], 0),  # weakly typed + FP16 flag
        ("10.13.0.35", True, [], 1 << 1),  # STRONGLY_TYPED (bit 1 on 10.x), no FP16 flag
        ("11.0.0.5", False, [], 0),  # no flags at all, no EXPLICIT_BATCH
    ],
)
def test_fp16_branching_per_version(version, strongly, expect_flags, expect_network_flags, tmp_path):
    trt = FakeTRT(version)
    plan = _tensorrt.plan_precision(_tensorrt.parse_version(version), "fp16", strongly)
    (tmp_path / "t.cache").write_bytes(b"CACHE-IN")
    data = _tensorrt.build_serialized_engine(trt, _request(tmp_path / "m.onnx", plan, tmp_path), echo=lambda m: None)
    assert data == b"ENGINE"
    assert [c for c in trt.calls if c[0] in ("set_flag", "clear_flag")] == expect_flags
    assert ("create_network", expect_network_flags) in trt.calls
    assert ("set_memory_pool_limit", "WORKSPACE", 2 << 30) in trt.calls
    assert ("config.builder_optimization_level", 3) in trt.calls
    assert ("set_shape", "input", (1, 3, 64, 64), (1, 3, 270, 480), DEFAULT_MAX) in trt.calls
    assert ("create_timing_cache", b"CACHE-IN") in trt.calls  # loaded
    assert (tmp_path / "t.cache").read_bytes() == b"CACHE-OUT"  # saved
    assert trt.names().index("set_timing_cache") < trt.names().index("build_serialized_network")


def test_fp32_clears_tf32_on_10_and_11(tmp_path):
    for version in ("10.9.0", "11.0.0"):
        trt = FakeTRT(version)
        plan = _tensorrt.plan_precision(_tensorrt.parse_version(version), "fp32")
        _tensorrt.build_serialized_engine(trt, _request(tmp_path / "m.onnx", plan, tmp_path), echo=lambda m: None)
        assert [c for c in trt.calls if c[0] in ("set_flag", "clear_flag")] == [("clear_flag", "TF32")]


def test_wrong_plan_on_11_fails_instead_of_calling_a_removed_flag(tmp_path):
    trt = FakeTRT("11.0.0")
    plan_10 = _tensorrt.plan_precision((10, 9, 0), "fp16")
    with pytest.raises(SRDeployError, match="BuilderFlag.FP16 does not exist in TensorRT 11.0.0"):
        _tensorrt.build_serialized_engine(trt, _request(tmp_path / "m.onnx", plan_10, tmp_path), echo=lambda m: None)


def test_parser_error_names_the_onnx_node(tiny_onnx, tmp_path):
    import onnx

    nodes = [(n.name, n.op_type) for n in onnx.load(str(tiny_onnx)).graph.node]
    index = next(i for i, (_, op) in enumerate(nodes) if op == "DepthToSpace")
    trt = FakeTRT("11.0.0", parse_ok=False, parser_errors=(index,))
    req = _request(tiny_onnx, _tensorrt.plan_precision((11, 0, 0), "fp16"), tmp_path)
    req.onnx_nodes = nodes
    with pytest.raises(SRDeployError) as info:
        _tensorrt.build_serialized_engine(trt, req, echo=lambda m: None)
    msg = str(info.value)
    assert f"node {index} {nodes[index][0]!r} (DepthToSpace): UNSUPPORTED_NODE: fake description" in msg
    assert str(tiny_onnx) in msg and "build_serialized_network" not in trt.names()


def test_dynamic_build_failure_retried_once_static(tiny_onnx, tmp_path):
    trt = FakeTRT("10.13.0", build_results=(None, b"STATIC-ENGINE"))
    plan = _tensorrt.plan_precision((10, 13, 0), "fp16")
    said: list[str] = []
    data, used, fell_back = _build_with_fallback(
        trt,
        tiny_onnx,
        plan,
        resolve_profile(),
        BuildOptions(1 << 30),
        tmp_path / "t.cache",
        tmp_path / "log",
        False,
        True,
        said.append,
    )
    assert data == b"STATIC-ENGINE" and fell_back and used == ShapeProfile.static((1, 3, 270, 480))
    assert any("retrying once with a static shape 1x3x270x480" in m for m in said)
    shapes = [c for c in trt.calls if c[0] == "set_shape"]
    assert shapes[1][2:] == ((1, 3, 270, 480),) * 3
    trt = FakeTRT("10.13.0", build_results=(None, b"x"))
    with pytest.raises(_tensorrt.BuildFailed):  # --no-fallback-static
        _build_with_fallback(
            trt,
            tiny_onnx,
            plan,
            resolve_profile(),
            BuildOptions(1 << 30),
            tmp_path / "t.cache",
            tmp_path / "log",
            False,
            False,
            said.append,
        )


# --------------------------------------------------------------------------- the fp16 ONNX fed to TensorRT


def _psnr(ref: np.ndarray, out: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - out.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.mark.slow
def test_fp16_onnx_for_tensorrt_matches_torch_fp32_on_set5(tiny_model, tiny_onnx, set5_dir, tmp_path, capsys):
    """The graph build-engine parses on TensorRT 11 (and 10 --strongly-typed): fp16 inside,
    float32 I/O, block list calibrated on real images; ONNX Runtime runs it here."""
    import onnx

    from sr_deploy.backends.ort_backend import OnnxRuntimeBackend
    from sr_deploy.backends.trt_build import prepare_fp16_onnx
    from sr_deploy.export import count_fp16_tensors
    from sr_deploy.parity import parity_inputs

    crops = parity_inputs(sizes=((48, 48), (40, 56)), batch=2, data_dir=set5_dir.parent.parent)
    result = prepare_fp16_onnx(tiny_onnx, tmp_path / "tiny.fp16.onnx", crops, echo=lambda m: None)
    assert result.converted and result.path.is_file() and result.fp16_tensors > 0
    model = onnx.load(str(result.path))
    assert count_fp16_tensors(model) == result.fp16_tensors
    f32 = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == f32  # keep_io_types
    assert model.graph.output[0].type.tensor_type.elem_type == f32
    # Real fp16 rounding between nodes, as TensorRT computes it (the CPU provider alone would run
    # the graph in float32 and the check could not fail on fp16 arithmetic).
    refs, outs = [], []
    with OnnxRuntimeBackend(result.path, device="cpu", emulate_fp16=True) as session:
        assert session.fp16_emulated
        for x in crops:
            with torch.no_grad():
                refs.append(tiny_model(torch.from_numpy(x)).numpy())
            outs.append(session(x))
    ref, out = np.concatenate([r.ravel() for r in refs]), np.concatenate([o.ravel() for o in outs])
    psnr = _psnr(ref, out)
    assert np.isfinite(out).all()
    with capsys.disabled():
        print(
            f"\n[fp16 ONNX for TensorRT] tiny SRResNet x4, Set5 crops: PSNR {psnr:.2f} dB vs torch fp32, "
            f"max abs {np.abs(ref - out).max():.2e}, {result.fp16_tensors} fp16 tensors, "
            f"{len(result.block_list)} nodes kept fp32"
        )
    assert 50.0 <= psnr < 120.0  # above the bar, and below float32-exact: fp16 rounding happened


def test_fp16_onnx_refuses_a_graph_without_fp16(tiny_onnx, tmp_path, monkeypatch):
    import sr_deploy.onnx_graph as onnx_graph

    monkeypatch.setattr(
        onnx_graph,
        "convert_to_fp16",
        lambda src, output=None, block_list=None: Path(output).write_bytes(Path(src).read_bytes()),
    )  # a "conversion" that changes nothing
    from sr_deploy.backends.trt_build import prepare_fp16_onnx

    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    with pytest.raises(SRDeployError, match="produced no fp16 tensors; TensorRT 11 would build a float32 engine"):
        prepare_fp16_onnx(tiny_onnx, tmp_path / "out.onnx", [x], echo=lambda m: None)


# --------------------------------------------------------------------------- real TensorRT (GPU machines)


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_engine_and_parity(tiny_onnx, tmp_path, precision, set5_dir):
    from sr_deploy.backends.trt_backend import TensorRTBackend
    from sr_deploy.backends.trt_build import build_engine
    from sr_deploy.parity import parity_inputs

    crops = parity_inputs(sizes=((64, 64), (72, 96)), batch=2, data_dir=set5_dir.parent.parent)
    profile = resolve_profile(min="1x3x32x32", opt="2x3x64x64", max="2x3x128x128")
    res = build_engine(
        tiny_onnx, tmp_path / "tiny.engine", precision=precision, profile=profile, workspace_gib=1, calibration=crops
    )
    assert res.parity.passed, res.parity.table()
    sc = read_sidecar(res.engine_path)
    assert sc.precision == precision and sc.scale == 4 and sc.profile == profile.as_dict()
    assert Path(sc.timing_cache).is_file() and Path(sc.build_log).is_file()
    with TensorRTBackend(res.engine_path) as backend:
        assert backend.max_shape == (2, 128, 128) and backend.scale == 4
        x = crops[0]
        y = backend(x)
        assert isinstance(y, np.ndarray) and y.shape == (2, 3, 256, 256)
        yt = backend(torch.from_numpy(x).cuda())
        assert yt.is_cuda and torch.allclose(yt.cpu(), torch.from_numpy(y), atol=1e-3)
        small = backend(x[:1, :, :20, :24])  # below the profile min: padded and cropped back
        assert small.shape == (1, 3, 80, 96)
    with TensorRTBackend(res.engine_path, cuda_graph=True) as backend:
        assert np.allclose(backend(x), y, atol=1e-3) and np.allclose(backend(x), y, atol=1e-3)


@pytest.mark.tensorrt
def test_engine_cache_builds_once(tiny_onnx, tmp_path, monkeypatch):
    from sr_deploy.backends.trt_build import ensure_engine

    monkeypatch.setenv("SR_DEPLOY_ENGINE_CACHE", str(tmp_path))
    profile = resolve_profile(min="1x3x32x32", opt="1x3x64x64", max="1x3x96x96")
    said: list[str] = []
    first = ensure_engine(tiny_onnx, "fp16", profile=profile, echo=said.append, workspace_gib=1)
    second = ensure_engine(tiny_onnx, "fp16", profile=profile, echo=said.append, workspace_gib=1)
    assert first == second and any("reusing" in m for m in said)


# --------------------------------------------------------------------------- issue 15 section 2: review bugs


@pytest.fixture
def fake_build_env(monkeypatch, tmp_path):
    """build_engine / ensure_engine on a FakeTRT 10.13 (records calls, its engine is fixed bytes) and
    a pretend GPU; `parity` decides the parity check's verdict. Nothing here claims an engine ran."""
    from sr_deploy.backends import trt_build
    from sr_deploy.parity import ParityReport

    state = {"trt": FakeTRT("10.13.3.9", build_results=(b"ENGINE",) * 8), "passed": True, "parity_calls": 0}
    monkeypatch.setattr(_tensorrt, "import_tensorrt", lambda: state["trt"])
    monkeypatch.setattr(_tensorrt, "require_cuda", lambda device="cuda": None)
    monkeypatch.setattr(trt_build, "gpu_identity", lambda device="cuda": ("Pretend GPU", "9.0"))

    def parity(onnx_path, engine_path, precision, inputs=None, device="cuda"):
        state["parity_calls"] += 1
        assert Path(engine_path).read_bytes() == b"ENGINE"  # the check sees the engine just built
        psnr = 60.0 if state["passed"] else 20.0
        return ParityReport(0.01, 0.001, psnr, 0, [(1, 3, 8, 8)], passed=state["passed"], criterion="stand-in")

    monkeypatch.setattr(trt_build, "engine_parity", parity)
    monkeypatch.setenv("SR_DEPLOY_ENGINE_CACHE", str(tmp_path / "cache"))
    return state


def test_failed_parity_leaves_no_engine_and_the_cache_rebuilds(tiny_onnx, tmp_path, fake_build_env):
    """Bug 1: an engine whose parity failed was written (with its sidecar) before the check, and
    the engine cache then reused it. Now it is built under a temporary name, promoted only after
    the check passed, and the sidecar records the verdict."""
    from sr_deploy.backends.trt_build import build_engine, ensure_engine

    fake_build_env["passed"] = False
    out = tmp_path / "out" / "m.engine"
    with pytest.raises(SRDeployError, match="parity with ONNX Runtime float32 failed .*no engine written"):
        build_engine(tiny_onnx, out, precision="fp16", profile=resolve_profile(), echo=lambda m: None)
    assert not out.exists() and not sidecar_path(out).exists()
    assert not [p for p in out.parent.iterdir() if p.suffix in (".engine", ".json", ".tmp")]  # no temporaries
    profile = resolve_profile()
    with pytest.raises(SRDeployError):
        ensure_engine(tiny_onnx, "fp16", profile=profile, echo=lambda m: None)
    fake_build_env["passed"] = True
    said: list[str] = []
    path = ensure_engine(tiny_onnx, "fp16", profile=profile, echo=said.append)  # built again, not reused
    assert any("building" in m for m in said) and read_sidecar(path).parity == "passed"
    assert ensure_engine(tiny_onnx, "fp16", profile=profile, echo=said.append) == path
    assert said[-1] == f"engine cache: reusing {path}" and fake_build_env["parity_calls"] == 3


def test_unchecked_engine_is_not_reused_by_a_checking_cache(tiny_onnx, fake_build_env):
    from sr_deploy.backends.trt_build import ensure_engine

    said: list[str] = []
    path = ensure_engine(tiny_onnx, "fp16", check_parity=False, echo=said.append)
    assert read_sidecar(path).parity == "skipped" and fake_build_env["parity_calls"] == 0
    ensure_engine(tiny_onnx, "fp16", echo=said.append)
    assert fake_build_env["parity_calls"] == 1 and not any("reusing" in m for m in said)


def test_foreign_timing_cache_is_replaced_not_silently_ignored(tmp_path):
    """Bug 2: set_timing_cache(..., ignore_mismatch=False) returning False was ignored."""
    trt = FakeTRT("10.13.3.9")
    trt.timing_cache_accepted = [False]
    (tmp_path / "t.cache").write_bytes(b"FROM-ANOTHER-GPU")
    said: list[str] = []
    plan = _tensorrt.plan_precision((10, 13, 3), "fp32")
    assert (
        _tensorrt.build_serialized_engine(trt, _request(tmp_path / "m.onnx", plan, tmp_path), said.append) == b"ENGINE"
    )
    assert [c for c in trt.calls if c[0] == "create_timing_cache"] == [
        ("create_timing_cache", b"FROM-ANOTHER-GPU"),
        ("create_timing_cache", b""),
    ]
    assert any("does not match this TensorRT version or GPU" in m for m in said)
    assert (tmp_path / "t.cache").read_bytes() == b"CACHE-OUT"  # replaced by this build's cache


def test_missing_timing_cache_after_build_keeps_the_engine(tmp_path):
    """Bug 2: get_timing_cache() may return None; `.serialize()` then raised and lost the engine."""
    trt = FakeTRT("11.4.0.106")
    trt.has_timing_cache = False
    said: list[str] = []
    plan = _tensorrt.plan_precision((11, 4, 0), "fp32")
    assert (
        _tensorrt.build_serialized_engine(trt, _request(tmp_path / "m.onnx", plan, tmp_path), said.append) == b"ENGINE"
    )
    assert any("returned no timing cache" in m for m in said) and not (tmp_path / "t.cache").exists()


def test_default_timing_cache_is_keyed_by_tensorrt_version_and_gpu(tiny_onnx, tmp_path, fake_build_env):
    """Bug 2: the default timing-cache path was one file for every TensorRT version and GPU."""
    from sr_deploy.backends.trt_build import build_engine
    from sr_deploy.engine import timing_cache_path

    res = build_engine(tiny_onnx, tmp_path / "m.engine", precision="fp32", echo=lambda m: None)
    expected = tmp_path / "timing-10.13.3.9-pretend-gpu-sm90.cache"
    assert Path(res.sidecar.timing_cache) == expected and expected.read_bytes() == b"CACHE-OUT"
    names = {
        timing_cache_path(tmp_path, v, g, c).name
        for v, g, c in [
            ("10.13.3.9", "NVIDIA H100", "9.0"),
            ("11.4.0.106", "NVIDIA H100", "9.0"),
            ("10.13.3.9", "NVIDIA L4", "8.9"),
        ]
    }
    assert len(names) == 3


def test_stale_fixed_temporaries_do_not_break_writes(tmp_path):
    """Bug 8: fixed `.tmp` names raced between two processes writing the same entry (and a stale
    one broke the write); temporaries are now unique per writer."""
    engine = tmp_path / "m.engine"
    for stale in (
        tmp_path / "m.engine.json.tmp",
        tmp_path / "t.cache.tmp",
        tmp_path / ".m.engine.partial.json",
        tmp_path / ".t.partial.cache",
    ):
        stale.mkdir()  # what a fixed temporary name (before: `.tmp`; util's shared `.partial`) would collide with
    write_sidecar(engine, _sidecar())
    from sr_deploy.util.files import atomic_write_bytes

    atomic_write_bytes(tmp_path / "t.cache", b"data")  # what _tensorrt saves the timing cache with
    assert read_sidecar(engine) == _sidecar() and (tmp_path / "t.cache").read_bytes() == b"data"


def test_concurrent_cache_requests_build_once(tiny_onnx, fake_build_env, monkeypatch):
    """Bug 8: two processes asking for the same cache entry both built it. The entry's lock
    (fcntl.flock: two open() calls conflict even within one process) serialises them and the
    second finds the engine built."""
    import threading
    import time as _time

    from sr_deploy.backends import trt_build

    real_build = trt_build._build_with_fallback
    builds: list[int] = []

    def slow_build(*args, **kwargs):
        builds.append(1)
        _time.sleep(0.5)  # long enough for the other thread to arrive while this one builds
        return real_build(*args, **kwargs)

    monkeypatch.setattr(trt_build, "_build_with_fallback", slow_build)
    said: list[str] = []
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(trt_build.ensure_engine(tiny_onnx, "fp16", echo=said.append)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(paths) == 2 and paths[0] == paths[1]
    assert any("built by another process meanwhile" in m for m in said)


def test_bf16_parity_failure_does_not_suggest_strongly_typed(tiny_onnx, tmp_path, fake_build_env):
    """Bug 9: a bf16 parity failure suggested --strongly-typed, which is refused for bf16."""
    from sr_deploy.backends.trt_build import build_engine, parity_failure_message

    fake_build_env["passed"] = False
    with pytest.raises(SRDeployError) as info:
        build_engine(tiny_onnx, tmp_path / "m.engine", precision="bf16", echo=lambda m: None)
    assert "--strongly-typed" not in str(info.value) and "Try: --fp16 or --fp32" in str(info.value)
    fp16 = parity_failure_message(Path("m.engine"), "fp16", "flag", "PSNR 20 dB")
    assert "--strongly-typed" in fp16  # still offered where it exists


class _RecordingEngine:
    """Stands in for an ICudaEngine in the runner's bookkeeping test: it records which context
    kind was asked for and whether the backend's device was current then. Nothing runs."""

    def __init__(self, ops):
        self.ops, self.created = ops, []

    def create_execution_context(self, strategy):
        self.created.append((str(strategy), self.ops.depth > 0))
        engine = self

        class Context:
            shape = None

            def set_input_shape(self, name, shape):
                self.shape = tuple(shape)
                return True

            def get_tensor_shape(self, name):
                n, c, h, w = self.shape
                return (n, c, 4 * h, 4 * w)

            def update_device_memory_size_for_shapes(self):
                return 100 * self.shape[2]

            def set_device_memory(self, memory, size):
                engine.created.append(("memory", size))

            def set_tensor_address(self, name, ptr):
                return True

            def execute_async_v3(self, stream):
                return True

        return Context()


def test_graph_runner_bounds_memory_scopes_the_device_and_falls_back(tmp_path):
    """Bugs 5 and 6: contexts and graphs are created inside the backend's device scope
    (torch.cuda.device(N) on a GPU); each captured shape gets a USER_MANAGED context with memory
    sized for that shape, the graph cache is bounded, and a failed capture runs without a graph."""
    import contextlib

    from sr_deploy.backends.trt_backend import EngineRunner

    class Ops:
        depth = 0
        captured = 0

        @contextlib.contextmanager
        def scope(self):
            self.depth += 1
            yield
            self.depth -= 1

        def empty(self, shape, dtype):
            return torch.zeros(shape, dtype=dtype)

        def scratch(self, nbytes):
            return torch.zeros(nbytes, dtype=torch.uint8)

        def stream_handle(self):
            return 7

        def synchronize(self):
            pass

        def capture(self, enqueue):
            if self.fail_next:
                self.fail_next = False
                raise RuntimeError("capture failed")
            enqueue(8)
            self.captured += 1
            return types.SimpleNamespace(replay=lambda: None)

    ops = Ops()
    ops.fail_next = False
    trt = types.SimpleNamespace(
        ExecutionContextAllocationStrategy=types.SimpleNamespace(STATIC="STATIC", USER_MANAGED="USER_MANAGED")
    )
    engine = _RecordingEngine(ops)
    io = _tensorrt.EngineIO("input", "output", None, None, (1, 3, 8, 8), (1, 3, 16, 16), (1, 3, 64, 64))
    runner = EngineRunner(trt, engine, io, ops, torch.float32, torch.float32, cuda_graph=True, graph_cache_size=2)
    for h in (8, 16, 32):
        assert runner.run(torch.zeros(1, 3, h, h)).shape == (1, 3, 4 * h, 4 * h)
    assert list(runner.graphs) == [(1, 3, 16, 16), (1, 3, 32, 32)]  # bounded: the oldest dropped
    assert [e.memory_bytes for e in runner.graphs.values()] == [1600, 3200]  # sized per shape
    ops.fail_next = True
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        assert runner.run(torch.zeros(1, 3, 40, 40)).shape == (1, 3, 160, 160)  # plain run instead
    assert runner.no_graph == {(1, 3, 40, 40)}
    kinds = [c for c in engine.created if c[0] != "memory"]
    assert kinds == [("USER_MANAGED", True)] * 4 + [("STATIC", True)]  # every context inside the device scope
    assert [c[1] for c in engine.created if c[0] == "memory"] == [800, 1600, 3200, 4000]


def _doc_commands(path: Path) -> list[list[str]]:
    """Every `sr-deploy ...` command in the fenced blocks of a markdown file (comments, prompts
    and line continuations handled), split like a shell would."""
    import shlex

    text = path.read_text(encoding="utf-8")
    commands = []
    for block in text.split("```")[1::2]:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip().removeprefix("$ ")
            for part in line.split("&&"):
                part = part.split(" #")[0].strip()
                if part.startswith("sr-deploy "):
                    commands.append(shlex.split(part)[1:])
    return commands


def test_tensorrt_doc_commands_parse():
    """Bug 3: docs/tensorrt.md showed commands that fail (the model as a positional input of
    upscale, a missing -o). Each command must parse with the real CLI, and upscale's inputs must
    be images or videos, never the model."""
    import click

    commands = _doc_commands(Path(__file__).resolve().parents[2] / "docs" / "tensorrt.md")
    assert len(commands) >= 5
    for args in commands:
        name, rest = args[0], args[1:]
        command = cli.get_command(click.Context(cli), name)
        assert command is not None, f"unknown command in docs: {args}"
        try:
            ctx = command.make_context(name, list(rest))
        except click.UsageError as exc:
            raise AssertionError(f"sr-deploy {' '.join(args)}: {exc}") from None
        if name == "upscale":
            assert not [i for i in ctx.params["inputs"] if Path(i).suffix in (".engine", ".onnx", ".pt", ".plan")], args
