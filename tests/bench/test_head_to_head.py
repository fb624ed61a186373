"""The head-to-head benchmark's own logic (benchmarks/head_to_head.py and benchmarks/peers/): the
acceptance line, the report's commands without this machine's paths, the chaiNNer-style loop's tiling,
and the exact-text fixes applied to Real-ESRGAN's copies. The run itself (minutes, a separate
environment) is not a test: its committed results are in benchmarks/results/head_to_head_cpu.*."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.slow
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


def test_without_the_video_script_its_row_is_reported_not_run(h2h, tmp_path):
    peer = h2h.realesrgan_env.PeerEnv(
        python=Path(sys.executable),
        image_script=tmp_path / "inference_realesrgan.py",
        video_script=None,
        video_missing="no clone of the repository",
        fixes=(),
    )
    inputs = h2h.Inputs(model=tmp_path / "m.pth", images=tmp_path / "images", clip=tmp_path / "c.mp4", work=tmp_path)
    tools = h2h.make_tools(peer, inputs, "cpu")
    video_peer = next(t for t in tools if t.task == "video" and t.label == h2h.PEER)
    assert video_peer.argv == [] and video_peer.note == "not run: no clone of the repository"
    image_peer = next(t for t in tools if t.task == "images" and t.label == h2h.PEER)
    assert image_peer.argv[-3:] == ["--fp32", "-o", str(tmp_path / "out-0")]


def test_a_failing_tool_gets_no_median_and_its_error_in_the_table(h2h, tmp_path):
    def tool(label, code):
        return h2h.Tool(label, "images", "fp32", [sys.executable, "-c", code], out=tmp_path / label)

    reference = tool(h2h.PEER, "print('ok')")
    broken = tool("broken", "import sys; print('boom: no model'); sys.exit(3)")
    h2h.run_rounds([reference, broken], 2, dict(os.environ), tmp_path)
    assert [s["rc"] for s in broken.samples] == [3, 3] and [s["rc"] for s in reference.samples] == [0, 0]
    h2h.summarise([reference, broken])
    assert broken.note == "failed: boom: no model"
    row = h2h.row_dict(broken, reference)
    assert row["median_wall_s"] is None and row["speedup_vs_realesrgan"] is None
    assert h2h.row_dict(reference, reference)["speedup_vs_realesrgan"] == 1.0


def test_the_cpu_floor_adds_the_pipeline_cpu_time_spread_over_the_cores():
    from sr_deploy.bench.video import VideoOverhead

    measured = VideoOverhead(50, 176, 320, model_only_s=10.0, end_to_end=None, pipeline_cpu_s=4.0)
    assert measured.cpu_floor_s(2) == 12.0 and measured.cpu_floor_s(4) == 11.0
    assert VideoOverhead(50, 176, 320, 10.0, None).cpu_floor_s(2) is None


def test_the_peer_environment_never_resolves_a_torch_or_cuda_wheel(h2h, tmp_path):
    """Issue 26: basicsr's setup_requires made pip / setuptools resolve torch and its CUDA wheels on a
    fresh machine. Every planned install either takes no dependencies or is pinned by the constraints,
    and none names torch, torchvision, a CUDA wheel or a second OpenCV."""
    env = h2h.realesrgan_env
    commands = env.pip_commands(tmp_path / "python", tmp_path / "constraints.txt", tmp_path / "basicsr-1.4.2")
    assert commands, "no install planned"
    installed = []
    for command in commands:
        assert command[1:4] == ["-m", "pip", "install"]
        packages = [a for a in command[4:] if not a.startswith("-") and a != str(tmp_path / "constraints.txt")]
        packages = [p for p in packages if p != ":all:"]
        installed += packages
        for package in packages:
            name = Path(package).name.lower()
            assert not any(name.startswith(bad) for bad in env.NEVER_RESOLVED), command
        if "--no-deps" not in command:  # this one resolves: only under the constraints
            assert command[command.index("-c") + 1] == str(tmp_path / "constraints.txt"), command
    assert str(tmp_path / "basicsr-1.4.2") in installed and env.REALESRGAN in installed
    basicsr = next(c for c in commands if str(tmp_path / "basicsr-1.4.2") in c)
    assert "--no-deps" in basicsr and "--no-build-isolation" in basicsr
    wheels = next(c for c in commands if env.REALESRGAN in c)
    assert "--no-deps" in wheels and wheels[wheels.index("--only-binary") + 1] == ":all:"


def test_basicsr_loses_its_setup_requires_by_exact_text(h2h, tmp_path):
    env = h2h.realesrgan_env
    setup = tmp_path / "setup.py"
    setup.write_text("    setup(\n        setup_requires=['cython', 'numpy', 'torch'],\n        zip_safe=False)\n")
    env._replace_once(setup, *env.FIX_SETUP_REQUIRES)
    env._replace_once(setup, *env.FIX_SETUP_REQUIRES)  # an unpacked copy already fixed: unchanged
    text = setup.read_text()
    assert "setup_requires=" not in text.replace("# setup_requires=", "") and text.count("# setup_requires") == 1
    assert "setup_requires" in env.FIXES[0] and env.SDISTS[env.BASICSR][1]  # pinned by sha256


def test_without_ffmpeg_on_path_only_real_esrgans_video_row_is_left_out(h2h, tmp_path):
    """A fresh machine has no ffmpeg / ffprobe programs: the run goes on, that one row says why."""
    peer = h2h.realesrgan_env.PeerEnv(Path(sys.executable), tmp_path / "i.py", tmp_path / "v.py", "", ())
    assert h2h.without_programs(peer, lambda program: f"/usr/bin/{program}") == peer
    bare = h2h.without_programs(peer, lambda program: None if program == "ffprobe" else "/usr/bin/ffmpeg")
    assert bare.video_script is None and bare.video_missing.startswith("ffprobe not on PATH (apt install ffmpeg)")
    inputs = h2h.Inputs(model=tmp_path / "m.pth", images=tmp_path / "images", clip=tmp_path / "c.mp4", work=tmp_path)
    tools = h2h.make_tools(bare, inputs, "cpu")
    assert [t.label for t in tools if not t.argv] == [h2h.PEER] and all(t.argv for t in tools if t.task == "images")
