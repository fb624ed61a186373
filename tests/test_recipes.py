"""docs/architecture.md's recipes ("Where things go"), followed in code.

Each test copies `sr_deploy` into a temporary folder (the "house"), makes exactly the change the
recipe names there, and runs the copy in a subprocess: if anything else had to change, the
subprocess fails.

- a new architecture: one module in models/ and its line in registry.py; the tests parametrised
  over the registry pick it up by themselves;
- a new backend for an existing file kind: one module in backends/ and one row in the table;
- a new image format: one row in formats.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a copy of the package and a fresh interpreter per recipe


def _house(tmp_path: Path) -> Path:
    """A copy of the package (no caches) under tmp_path/house; returns that folder."""
    house = tmp_path / "house"
    shutil.copytree(ROOT / "sr_deploy", house / "sr_deploy", ignore=shutil.ignore_patterns("__pycache__"))
    return house


def _edit(path: Path, after: str, line: str) -> None:
    """Insert `line` after the first line that equals `after` (stripped): the one edit a recipe makes."""
    lines = path.read_text().splitlines(keepends=True)
    index = next(i for i, text in enumerate(lines) if text.strip() == after)
    lines.insert(index + 1, line + "\n")
    path.write_text("".join(lines))


def _run(house: Path, args: list[str], cwd: Path | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=str(house))
    done = subprocess.run(
        [sys.executable, *args], cwd=cwd or house, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


TINYNET = '''
"""TinyNet: a conv and a pixel shuffle (the architecture of the recipe test)."""

from __future__ import annotations

import torch
from torch import nn

from .spec import ArchSpec


class TinyNet(nn.Module):
    def __init__(self, scale: int = 4, num_feat: int = 8):
        super().__init__()
        self.scale = scale
        self.body = nn.Conv2d(3, num_feat, 3, padding=1)
        self.up = nn.Conv2d(num_feat, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.up(torch.relu(self.body(x))))


TINYNET_SPEC = ArchSpec(
    name="TinyNet", module=TinyNet, live_values_per_hr_pixel=24, example_config={"scale": 4, "num_feat": 8}
)
'''


def test_a_new_architecture_is_one_module_and_its_registry_line(tmp_path):
    house = _house(tmp_path)
    (house / "sr_deploy" / "models" / "tinynet.py").write_text(TINYNET.lstrip())
    registry = house / "sr_deploy" / "models" / "registry.py"
    _edit(registry, "from . import rrdbnet, srresnet, srvgg", "from .tinynet import TINYNET_SPEC")
    _edit(registry, "srvgg.SRVGG_SPEC,", "        TINYNET_SPEC,")
    script = textwrap.dedent(
        f"""
        from pathlib import Path

        import numpy as np
        import torch

        from sr_deploy.backends import load
        from sr_deploy.export import export_onnx
        from sr_deploy.models import load_checkpoint, native_specs, save_checkpoint
        from sr_deploy.tiling import auto_tile_size

        work = Path({str(tmp_path)!r})
        spec = next(s for s in native_specs() if s.name == "TinyNet")
        torch.manual_seed(0)
        save_checkpoint(work / "tiny.pt", spec.module(**spec.example_config).eval(), dict(spec.example_config))
        ckpt = load_checkpoint(work / "tiny.pt")
        assert (ckpt.arch, ckpt.scale, ckpt.live_values_per_hr_pixel) == ("TinyNet", 4, 24)
        x = np.random.default_rng(0).random((1, 3, 20, 24), dtype=np.float32)
        with load(work / "tiny.pt", "cpu", "fp32") as torch_backend:
            assert torch_backend.live_values_per_hr_pixel == 24
            assert auto_tile_size(torch_backend, 20, 24) == 0
            reference = torch_backend(x)
        export_onnx(work / "tiny.pt", work / "tiny.onnx", log=None)
        with load(work / "tiny.onnx", "cpu") as onnx_backend:
            assert onnx_backend.live_values_per_hr_pixel == 24  # from the ONNX metadata
            assert np.abs(onnx_backend(x) - reference).max() < 1e-4
        print("recipe ok")
        """
    )
    assert "recipe ok" in _run(house, ["-c", script])
    # The tests parametrised over the registry pick it up without an edit.
    tests = house / "tests"
    tests.mkdir()
    for name in ("conftest.py", "_data.py", "models/test_models.py"):
        shutil.copyfile(ROOT / "tests" / name, tests / Path(name).name)
    out = _run(house, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_models.py", "-k", "TinyNet"])
    assert "3 passed" in out, out


NEAREST = '''
"""A nearest-neighbour "runtime" for sr-deploy's ONNX exports (the backend of the recipe test)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..model_file import file_kind
from .base import Backend


class NearestBackend(Backend):
    name = "nearest"

    def __init__(self, path: Any, device: str = "cpu", precision: str = "fp32", **options: Any):
        super().__init__(file_kind("onnx").read_scale(path), "fp32", "cpu")

    def infer(self, x: np.ndarray) -> np.ndarray:
        return x.repeat(self.scale, axis=2).repeat(self.scale, axis=3)
'''

NEAREST_ROW = """    BackendSpec(
        name="nearest",
        kinds=(),
        also_opens_kinds=("onnx",),
        refusal="",
        available=lambda device: None,
        open=opener("nearest_backend", "NearestBackend"),
    ),"""


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    from _upscale_support import save_tiny_srvgg

    from sr_deploy.export import export_onnx

    folder = tmp_path_factory.mktemp("onnx")
    export_onnx(save_tiny_srvgg(folder / "tiny.pt"), folder / "tiny.onnx", verify=False, log=None)
    return folder / "tiny.onnx"


def test_a_new_backend_for_an_existing_file_kind_is_one_module_and_one_row(tmp_path, tiny_onnx, set5_dir):
    import cv2

    house = _house(tmp_path)
    (house / "sr_deploy" / "backends" / "nearest_backend.py").write_text(NEAREST.lstrip())
    _edit(house / "sr_deploy" / "backends" / "table.py", "BACKENDS: tuple[BackendSpec, ...] = (", NEAREST_ROW)
    out = tmp_path / "bird-x4.png"
    args = [str(set5_dir / "bird.png"), "-o", str(out), "--model", str(tiny_onnx), "--no-progress"]
    _run(house, ["-m", "sr_deploy", "upscale", *args, "--backend", "nearest", "--device", "cpu"])
    bird = cv2.imread(str(set5_dir / "bird.png"), cv2.IMREAD_UNCHANGED)
    assert (cv2.imread(str(out), cv2.IMREAD_UNCHANGED) == bird.repeat(4, axis=0).repeat(4, axis=1)).all()
    names = "from sr_deploy.bench.options import BENCH_BACKENDS; print(' '.join(BENCH_BACKENDS))"
    assert "nearest" in _run(house, ["-c", names]).split()  # the benchmark reads the same table


def test_a_new_image_format_is_one_row(tmp_path, set5_dir):
    house = _house(tmp_path)
    row = '    ImageFormat("sunraster", (".ras", ".sr")),'
    _edit(house / "sr_deploy" / "formats.py", "IMAGE_FORMATS: tuple[ImageFormat, ...] = (", row)
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copyfile(set5_dir / "bird.png", inputs / "bird.png")
    script = textwrap.dedent(
        f"""
        from pathlib import Path

        from sr_deploy.backends.base import Backend
        from sr_deploy.imaging import read_image
        from sr_deploy.upscale import UpscaleOptions, upscale


        class Nearest(Backend):
            name = "nearest"

            def infer(self, x):
                return x.repeat(2, axis=2).repeat(2, axis=3)


        work = Path({str(tmp_path)!r})
        options = UpscaleOptions(progress=False)
        # written as the new format (the output's suffix), then read back as an input of its own
        assert upscale([work / "in" / "bird.png"], work / "bird.ras", options, backend=Nearest(2, "fp32", "cpu")).done
        (work / "in2").mkdir()
        (work / "bird.ras").rename(work / "in2" / "bird.ras")
        summary = upscale([work / "in2"], work / "out", UpscaleOptions(progress=False, ext="same"), backend=Nearest(2, "fp32", "cpu"))
        assert summary.done == [work / "out" / "bird.ras"], summary
        print(read_image(work / "out" / "bird.ras").shape)
        """
    )
    assert _run(house, ["-c", script]).strip() == "(1152, 1152, 3)"
