"""The same job gives the same bytes on every machine: a video's encoder runs with a fixed thread
count (x264 and libvpx wrote other bytes on 1 and on 2 CPUs, FFmpeg's default being the machine's
cores; x265 sizes its pool by the machine unless told), and Matroska / WebM are muxed bit-exact
(the muxer's random segment and track UIDs and the date made every run's file differ)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _upscale_support import make_clip, save_tiny_srvgg

from sr_deploy.video.common import encoder_options

ROOT = Path(__file__).resolve().parents[2]
CPUS = sorted(os.sched_getaffinity(0))


def _upscale(clip: Path, out: Path, model: Path, codec: str, cpus: set[int]) -> None:
    command = [sys.executable, "-m", "sr_deploy", "upscale", str(clip), "-o", str(out), "--model", str(model)]
    command += ["--codec", codec, "--threads", "1", "--device", "cpu", "--no-progress"]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=False, preexec_fn=lambda: os.sched_setaffinity(0, cpus)
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPUs to run one job on one CPU and on two")
@pytest.mark.parametrize(
    "name,codec", [("x.mp4", "libx264"), ("x.webm", "libvpx-vp9"), ("x.mkv", "libx264"), ("x.mov", "libx265")]
)
def test_one_video_job_gives_the_same_bytes_on_one_cpu_and_on_two(video_dir, tmp_path, name, codec):
    clip = make_clip(video_dir / "car_traffic_small.mp4", tmp_path / "clip.mp4", 0.6, size=(96, 54), audio=False)
    model = save_tiny_srvgg(tmp_path / "m.pt")
    _upscale(clip, tmp_path / "one" / name, model, codec, {CPUS[0]})
    _upscale(clip, tmp_path / "two" / name, model, codec, set(CPUS[:2]))
    assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_x265_is_told_its_pool_and_frame_threads():
    """x265 sizes its thread pool by the machine's cores, which this machine cannot vary: the pool
    (8 threads) and the frame threads are named in what the encoder gets."""
    params = dict(item.split("=") for item in encoder_options("libx265", 18, "medium")["x265-params"].split(":"))
    assert params == {"log-level": "error", "pools": "8", "frame-threads": "3"}
