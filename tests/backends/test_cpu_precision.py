"""`--precision auto` on the CPU: bf16 only on CPUs with bf16 instructions and only when bf16 passes
the 50 dB parity threshold; never decided by a timing, so the same on every run and thread count.

The CPU-capability probe is replaced by stand-in cpuinfo files (every way); the parity figures
are measured for real (Set5 crops when ../shared/data is there)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sr_deploy.backends import cpu_precision as cp
from sr_deploy.backends import load
from sr_deploy.models import save_checkpoint
from sr_deploy.parity import REDUCED_MIN_PSNR_DB

ROOT = Path(__file__).resolve().parents[2]


def _cpuinfo(tmp_path: Path, name: str, flags: str) -> Path:
    path = tmp_path / f"cpuinfo-{name.replace(' ', '_')}"
    path.write_text(f"processor\t: 0\nmodel name\t: {name}\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    return path


@pytest.fixture()
def amx_cpu(tmp_path, monkeypatch) -> Path:
    """A stand-in Xeon with AMX, and an empty precision cache of its own."""
    monkeypatch.setenv("SR_DEPLOY_CPUINFO", str(_cpuinfo(tmp_path, "Stand-in Xeon", "fpu avx512f amx_tile amx_bf16")))
    monkeypatch.setenv("SR_DEPLOY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / cp.CACHE_FILE


@pytest.fixture()
def epyc_cpu(tmp_path, monkeypatch) -> Path:
    """A stand-in EPYC: bf16 vector instructions (avx512_bf16), no matrix units."""
    monkeypatch.setenv("SR_DEPLOY_CPUINFO", str(_cpuinfo(tmp_path, "Stand-in EPYC", "fpu avx512f avx512_bf16")))
    monkeypatch.setenv("SR_DEPLOY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / cp.CACHE_FILE


@pytest.fixture()
def old_cpu(tmp_path, monkeypatch) -> Path:
    """A stand-in CPU without any bf16 instructions."""
    monkeypatch.setenv("SR_DEPLOY_CPUINFO", str(_cpuinfo(tmp_path, "Stand-in Opteron", "fpu sse2 avx2 avx512f")))
    monkeypatch.setenv("SR_DEPLOY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / cp.CACHE_FILE


class Cancelling(nn.Module):
    """x4 nearest upscaling through (x + 300) - 300: exact in fp32, but bf16 (8 significant bits)
    rounds x + 300 to a multiple of 2, so the bf16 output is all 0 or 2: parity far below 50 dB."""

    scale = 4

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(300.0), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate((x + self.offset) - self.offset, scale_factor=4, mode="nearest")


def _no_measuring(model, scale):
    raise AssertionError("bf16 was measured where it should not have been")


def _key(cpu: str, sha: str, hardware: str = "bf16 matrix units (amx_bf16)") -> str:
    return f"{cpu}|{hardware}|{sha}|torch {torch.__version__}"


def test_probe_reads_the_bf16_flags_from_cpuinfo(amx_cpu, tmp_path, monkeypatch):
    assert cp.cpu_bf16_instructions() == "bf16 matrix units (amx_bf16)"
    assert cp.cpu_model_name() == "Stand-in Xeon"
    monkeypatch.setenv("SR_DEPLOY_CPUINFO", str(_cpuinfo(tmp_path, "Stand-in EPYC", "avx512_bf16 amx_tilex")))
    assert cp.cpu_bf16_instructions() == "bf16 vector instructions (avx512_bf16)"
    monkeypatch.setenv("SR_DEPLOY_CPUINFO", str(_cpuinfo(tmp_path, "Old", "avx512f avx512_bf16x")))
    assert cp.cpu_bf16_instructions() is None  # whole flags only
    monkeypatch.setenv("SR_DEPLOY_CPUINFO", str(tmp_path / "absent"))
    assert cp.cpu_bf16_instructions() is None  # no /proc/cpuinfo (macOS, Windows): fp32


def test_without_bf16_instructions_auto_is_fp32_without_measuring(tiny_srresnet, old_cpu):
    choice = cp.choose_cpu_precision(tiny_srresnet, "abc", measure=_no_measuring)
    assert choice.precision == "fp32"
    assert "Stand-in Opteron has no bf16 instructions (amx_bf16 / avx512_bf16)" in choice.reason
    assert not old_cpu.exists()  # nothing measured, nothing cached


@pytest.mark.slow
def test_with_amx_a_model_that_passes_parity_runs_bf16_and_the_verdict_is_cached(tiny_srresnet, amx_cpu, set5_dir):
    choice = cp.choose_cpu_precision(tiny_srresnet, "sha-tiny")
    assert choice.precision == "bf16", choice.reason
    entry = json.loads(amx_cpu.read_text())[_key("Stand-in Xeon", "sha-tiny")]
    assert entry["psnr_db"] >= REDUCED_MIN_PSNR_DB and entry["images"] == "Set5 crops"
    assert choice.reason == (
        f"bf16: Stand-in Xeon has bf16 matrix units (amx_bf16); bf16 vs fp32 parity {entry['psnr_db']:.1f} dB "
        ">= 50 dB on Set5 crops"
    )

    again = cp.choose_cpu_precision(tiny_srresnet, "sha-tiny", measure=_no_measuring)
    assert (again.precision, again.reason) == ("bf16", choice.reason + " (cached)")
    # Another model (hash) is measured afresh.
    with pytest.raises(AssertionError, match="measured"):
        cp.choose_cpu_precision(tiny_srresnet, "sha-other", measure=_no_measuring)


def test_another_cpu_or_the_same_name_with_other_bf16_hardware_is_measured_afresh(
    tiny_srresnet, amx_cpu, tmp_path, monkeypatch
):
    cp.choose_cpu_precision(tiny_srresnet, "sha", measure=lambda m, s: (60.0, "crops"))
    for name, flags in (("Stand-in Sapphire Rapids", "amx_bf16"), ("Stand-in Xeon", "avx512_bf16")):
        # A VM may call Zen 4 and Zen 5 both "AMD EPYC": the bf16 hardware is part of the key.
        monkeypatch.setenv("SR_DEPLOY_CPUINFO", str(_cpuinfo(tmp_path, name, flags)))
        with pytest.raises(AssertionError, match="measured"):
            cp.choose_cpu_precision(tiny_srresnet, "sha", measure=_no_measuring)


def test_an_old_cache_entry_with_a_speed_figure_is_still_read_by_its_parity(tiny_srresnet, amx_cpu):
    """Entries written when a timing took part: only their parity decides now."""
    amx_cpu.parent.mkdir(parents=True)
    old = {"psnr_db": 55.0, "images": "old crops", "speedup": 0.93}
    amx_cpu.write_text(json.dumps({_key("Stand-in Xeon", "sha"): old}))
    choice = cp.choose_cpu_precision(tiny_srresnet, "sha", measure=_no_measuring)
    assert choice.precision == "bf16" and "55.0 dB >= 50 dB on old crops (cached)" in choice.reason


@pytest.mark.slow
def test_with_avx512_bf16_auto_follows_parity(tiny_srresnet, epyc_cpu):
    choice = cp.choose_cpu_precision(tiny_srresnet, "sha-fast")
    assert choice.precision == "bf16", choice.reason
    assert choice.reason.startswith("bf16: Stand-in EPYC has bf16 vector instructions (avx512_bf16); ")


@pytest.mark.slow
def test_thread_count_and_load_do_not_change_the_verdict(tiny_srresnet, amx_cpu):
    """What issue 24 saw: a timing under load said fp32, an idle one bf16, and a one-thread Ray
    actor measured afresh. Parity is the only measurement now, and the key has no thread count."""
    threads = torch.get_num_threads()
    first = cp.choose_cpu_precision(tiny_srresnet, "sha-threads")
    try:
        torch.set_num_threads(1)
        one_thread = cp.choose_cpu_precision(tiny_srresnet, "sha-threads", measure=_no_measuring)
    finally:
        torch.set_num_threads(threads)
    assert one_thread.precision == first.precision and one_thread.reason == first.reason + " (cached)"
    assert not hasattr(cp, "measure_bf16_speedup")  # nothing times bf16 against fp32 any more
    # Measured twice from scratch (another process, a busy machine), parity gives the same figure.
    assert cp.measure_bf16_psnr(tiny_srresnet, 4) == cp.measure_bf16_psnr(tiny_srresnet, 4)


def test_cache_command_lists_and_clears_the_verdicts(tiny_srresnet, amx_cpu):
    from click.testing import CliRunner

    from sr_deploy.cli import cli

    cp.choose_cpu_precision(tiny_srresnet, "0123456789abcdef", measure=lambda m, s: (61.25, "Set5 crops"))
    cp.choose_cpu_precision(tiny_srresnet, "fedcba9876543210", measure=lambda m, s: (41.0, "Set5 crops"))
    listed = CliRunner().invoke(cli, ["cache"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0] == f"{amx_cpu}: 2 CPU precision verdicts"
    assert lines[1].startswith("  bf16  model 0123456789ab  Stand-in Xeon (bf16 matrix units (amx_bf16)), torch ")
    assert "parity 61.2 dB on Set5 crops" in lines[1] or "parity 61.3 dB on Set5 crops" in lines[1]
    assert lines[2].startswith("  fp32  model fedcba987654") and "parity 41.0 dB" in lines[2]
    cleared = CliRunner().invoke(cli, ["cache", "--clear"])
    blends = amx_cpu.parent / "realism"  # $SR_DEPLOY_CACHE/realism: none made here
    assert cleared.exit_code == 0
    assert cleared.output == f"removed 2 verdicts from {amx_cpu}\nremoved 0 --realism blends from {blends}\n"
    assert not amx_cpu.exists()
    assert CliRunner().invoke(cli, ["cache"]).output == f"{amx_cpu}: 0 CPU precision verdicts\n"


def test_with_amx_a_model_that_fails_bf16_parity_stays_fp32(amx_cpu):
    model = Cancelling()
    psnr, _images = cp.measure_bf16_psnr(model, 4)
    assert psnr < REDUCED_MIN_PSNR_DB
    choice = cp.choose_cpu_precision(model, "sha-cancelling")
    assert choice.precision == "fp32"
    assert f"but bf16 vs fp32 parity {psnr:.1f} dB < 50 dB" in choice.reason
    # The failing verdict is cached too, and still says fp32.
    again = cp.choose_cpu_precision(model, "sha-cancelling", measure=_no_measuring)
    assert again.precision == "fp32"


def test_a_damaged_cache_is_measured_again(tiny_srresnet, amx_cpu):
    amx_cpu.parent.mkdir(parents=True)
    amx_cpu.write_text("{not json")
    choice = cp.choose_cpu_precision(tiny_srresnet, "sha", measure=lambda m, s: (40.0, "stand-in crops"))
    assert choice.precision == "fp32" and "40.0 dB < 50 dB on stand-in crops" in choice.reason
    assert json.loads(amx_cpu.read_text())[_key("Stand-in Xeon", "sha")]["psnr_db"] == 40.0


@pytest.mark.slow
def test_load_with_auto_precision_follows_the_cpu(tiny_srresnet, tmp_path, amx_cpu, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "tiny.pt", tiny_srresnet, {"scale": 4, "num_blocks": 2, "num_features": 16})
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    with load(ckpt, device="cpu") as backend:
        assert backend.precision == "bf16" and next(backend.model.parameters()).dtype == torch.bfloat16
        assert backend.precision_reason.startswith("bf16: Stand-in Xeon has bf16 matrix units")
        y_auto = backend(x)
    with load(ckpt, device="cpu", precision="fp32") as backend:
        assert backend.precision_reason == "fp32: asked for with --precision"
        assert 0 < np.abs(backend(x) - y_auto).max() < 0.05
    # An in-memory module is measured (no file hash to cache under) and fails here: fp32.
    with load(copy.deepcopy(Cancelling()), device="cpu") as backend:
        assert backend.precision == "fp32" and "< 50 dB" in backend.precision_reason
    monkeypatch.setenv("SR_DEPLOY_CPUINFO", str(_cpuinfo(tmp_path, "Stand-in Opteron", "avx2")))
    with load(ckpt, device="cpu") as backend:
        assert backend.precision == "fp32" and "no bf16 instructions" in backend.precision_reason


def _cli(*args: str, cpuinfo: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SR_DEPLOY_CPUINFO": str(cpuinfo), "SR_DEPLOY_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "sr_deploy", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_info_and_upscale_say_which_precision_and_why(tmp_path, tiny_srresnet):
    ckpt = save_checkpoint(tmp_path / "tiny.pt", tiny_srresnet, {"scale": 4, "num_blocks": 2, "num_features": 16})
    opteron = _cpuinfo(tmp_path, "Stand-in Opteron", "avx2")
    info = _cli("info", str(ckpt), cpuinfo=opteron, cache=tmp_path / "cache")
    assert info.returncode == 0, info.stderr
    assert (
        "precision:   auto here = fp32: Stand-in Opteron has no bf16 instructions (amx_bf16 / avx512_bf16), "
        "bf16 would be slower"
    ) in info.stdout.splitlines()

    import cv2

    cv2.imwrite(str(tmp_path / "in.png"), np.full((12, 16, 3), 128, np.uint8))
    xeon = _cpuinfo(tmp_path, "Stand-in Xeon", "amx_bf16")
    reasons = []
    for run in range(2):
        up = _cli(
            "upscale",
            str(tmp_path / "in.png"),
            "-o",
            str(tmp_path / f"out{run}.png"),
            "--model",
            str(ckpt),
            "--device",
            "cpu",
            cpuinfo=xeon,
            cache=tmp_path / "cache",
        )
        assert up.returncode == 0, up.stderr
        lines = [line for line in up.stderr.splitlines() if line.startswith("precision: ")]
        assert len(lines) == 1, up.stderr
        reasons.append(lines[0])
        assert cv2.imread(str(tmp_path / f"out{run}.png")).shape == (48, 64, 3)
    # The line names the hardware and the parity figure, and the second process reads the first
    # one's verdict from the cache.
    assert re.fullmatch(
        r"precision: bf16: Stand-in Xeon has bf16 matrix units \(amx_bf16\); bf16 vs fp32 parity "
        r"[\d.]+ dB >= 50 dB on Set5 crops",
        reasons[0],
    ), reasons[0]
    assert reasons[1] == reasons[0] + " (cached)"
