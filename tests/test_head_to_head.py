"""The head-to-head benchmark's own logic (benchmarks/head_to_head.py and benchmarks/peers/): the
acceptance line, the report's commands without this machine's paths, the chaiNNer-style loop's tiling,
and the exact-text fixes applied to Real-ESRGAN's copies. The run itself (minutes, a separate
environment) is not a test: its committed results are in benchmarks/results/head_to_head_cpu.*."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def h2h():
    return _module("head_to_head", ROOT / "benchmarks" / "head_to_head.py")


@pytest.fixture(scope="module")
def chainner():
    pytest.importorskip("spandrel")
    return _module("chainner_style", ROOT / "benchmarks" / "peers" / "chainner_style.py")


def _report(bf16_hardware: str, speedup: float) -> dict:
    rows = [
        {"task": "video", "tool": "Real-ESRGAN", "precision": "fp32", "median_wall_s": 23.0, "samples": []},
        {"task": "video", "tool": "sr-deploy (defaults)", "precision": "bf16", "median_wall_s": 23.0 / speedup},
    ]
    for row in rows:
        row.update(median_user_s=1.0, median_sys_s=0.5, speedup_vs_realesrgan=round(23.0 / row["median_wall_s"], 2))
        row.update(parity_vs_realesrgan={}, command="", note="", samples=[])
    machine = {"cpu": "Stand-in CPU", "threads": 2, "bf16_hardware": bf16_hardware, "commit": "abc", "torch": "x"}
    return {
        "machine": machine,
        "rows": rows,
        "date": "today",
        "command": "python benchmarks/head_to_head.py",
        "rounds": 3,
        "load_before": [0, 0, 0],
        "load_after": [0, 0, 0],
        "model": "m.pth",
        "images": "Set14",
        "video": "clip",
        "fixes": ["one fix"],
    }


def test_the_acceptance_line_uses_the_issues_bar_for_the_cpu(h2h):
    no_amx = h2h.format_markdown(_report("bf16 vector instructions (avx512_bf16)", 1.5))
    assert "is 1.50x as fast as Real-ESRGAN's video script on this CPU without AMX (target >= 1.2x): met." in no_amx
    amx = h2h.format_markdown(_report("bf16 matrix units (amx_bf16)", 1.5))
    assert "on this CPU with AMX (target >= 2x): NOT met." in amx
    assert "| video | sr-deploy (defaults) | bf16 | 15.33 | 1.0 | 0.5 | 1.50x |" in amx


def test_commands_in_the_report_carry_no_machine_paths(h2h, tmp_path):
    line = h2h.readable_command([sys.executable, "-m", "sr_deploy", "upscale", str(ROOT / "x.png")])
    assert line == "python -m sr_deploy upscale x.png"
    peer = str(h2h.realesrgan_env.cache_root() / "venv" / "bin" / "python")
    assert h2h.readable_command([peer, "script.py"]) == "$PEERS/venv/bin/python script.py"


class _Shuffle(nn.Module):
    """x2 with a 1-pixel receptive field: tiles must give exactly the whole-image result."""

    scale = 2

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 12, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(torch.sigmoid(self.conv(x)), 2)


def test_the_chainner_style_loop_tiles_without_seams_for_a_local_model(chainner):
    model = _Shuffle().eval()
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    whole = chainner.upscale_rgb(model, 2, rgb, 0, torch.float32)
    tiled = chainner.upscale_rgb(model, 2, rgb, 16, torch.float32)
    assert whole.shape == (74, 106, 3) and whole.dtype == np.uint8
    np.testing.assert_array_equal(tiled, whole)
    with torch.inference_mode():
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
        expected = (model(x)[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(whole, expected)


def test_fixes_apply_by_exact_text_once_and_refuse_other_text(h2h, tmp_path):
    env = h2h.realesrgan_env
    script = tmp_path / "inference_realesrgan_video.py"
    script.write_text("def run(args):\n    num_gpus = torch.cuda.device_count()\n    x = 1\n")
    env._replace_once(script, *env.FIX_NUM_GPUS)
    assert "    num_gpus = max(1, torch.cuda.device_count())\n" in script.read_text()
    env._replace_once(script, *env.FIX_NUM_GPUS)  # a cached environment: already fixed, unchanged
    assert script.read_text().count("max(1, ") == 1
    other = tmp_path / "other.py"
    other.write_text("num_gpus = 2\n")
    with pytest.raises(SystemExit, match="the text to fix was not found once"):
        env._replace_once(other, *env.FIX_NUM_GPUS)
