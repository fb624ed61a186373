"""Shared fixtures: where the real data lives, and small models for fast tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _data import need

# Before any test module imports Ray (Ray reads it at import): the clusters the tests start in
# this process listen on 127.0.0.1 only (sr_deploy.cluster.LOOPBACK_ONLY_ENV). In a module it
# came too late whenever an earlier module (tests/storage) had imported Ray first.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parent.parent
# ../shared/data beside the project root (CI clones the repo with ../shared beside it).
SHARED_DATA = Path(os.environ.get("SR_DEPLOY_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    return need(path)  # skips, or fails under SR_DEPLOY_REQUIRE_DATA=1 (see _data.py)


@pytest.fixture(scope="session", autouse=True)
def _cpu_without_amx(tmp_path_factory) -> None:
    """`--precision auto` picks bf16 on CPUs with bf16 instructions where it measures faster
    (sr_deploy.backends.cpu_precision): the suite runs as on a CPU without them (fp32, as its
    references expect, nothing measured), on any CI machine, and keeps its precision cache out of
    ~/.cache. Subprocesses inherit both. test_cpu_precision.py tests the bf16 CPUs."""
    folder = tmp_path_factory.mktemp("cpu")
    cpuinfo = folder / "cpuinfo"
    cpuinfo.write_text("model name\t: Stand-in CPU without bf16\nflags\t\t: fpu sse2 avx2 avx512f\n")
    os.environ.setdefault("SR_DEPLOY_CPUINFO", str(cpuinfo))
    os.environ.setdefault("SR_DEPLOY_CACHE", str(folder / "cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def set5_dir() -> Path:
    return _need(SHARED_DATA / "benchmark" / "Set5")


@pytest.fixture(scope="session")
def set14_dir() -> Path:
    return _need(SHARED_DATA / "benchmark" / "Set14")


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return _need(SHARED_DATA / "weights")


@pytest.fixture(scope="session")
def video_dir() -> Path:
    return _need(SHARED_DATA / "video")


@pytest.fixture(scope="module")
def tiny_srresnet():
    """A 2-block, 16-feature SRResNet x4 with non-trivial BN statistics, in eval mode.
    Shared by the tests of one module: treat it as read-only (deepcopy before changing it)."""
    from sr_deploy.models import SRResNet

    torch.manual_seed(0)
    model = SRResNet(scale=4, num_blocks=2, num_features=16)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def pytest_collection_modifyitems(config, items):
    """`gpu` and `tensorrt` tests skip with a reason when CUDA or TensorRT is absent."""
    has_cuda = torch.cuda.is_available()
    try:
        import tensorrt  # noqa: F401

        has_trt = has_cuda
    except Exception:
        has_trt = False
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU; none is present"))
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and a CUDA GPU; not installed here"))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint on 127.0.0.1 for this test session (moto's server, a subprocess), and the
    standard AWS environment variables pointing at it (restored afterwards)."""
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'sr-deploy[s3]')")
    from _s3_server import moto_s3_server, s3_env

    with moto_s3_server() as endpoint:
        saved = {key: os.environ.get(key) for key in s3_env(endpoint)}
        os.environ.update(s3_env(endpoint))
        try:
            yield endpoint
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def without_matplotlib(monkeypatch) -> None:
    """As in an install without the plot extra: `import matplotlib` fails."""
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)
