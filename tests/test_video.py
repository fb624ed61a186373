"""Video upscaling: frame count, fps, size, audio kept, fallback without ffmpeg, nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _upscale_support import (
    NearestBackend,
    audio_seconds,
    cpu_backend,
    decoded_video,
    make_clip,
    save_tiny_srvgg,
)
from sr_deploy import video as video_module
from sr_deploy.errors import InputError, SRDeployError
from sr_deploy.video import frames_to_model_input, model_output_to_frames, upscale_video

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clips(video_dir, tmp_path_factory):
    """2 s of mov_bbb (with its AAC audio) and 1 s of car_traffic_small (no audio), shrunk so
    the tests stay fast; both re-encoded by ffmpeg, as a user's files would be."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        "bbb": make_clip(video_dir / "mov_bbb.mp4", folder / "bbb.mp4", 2, size=(160, 88)),
        "car": make_clip(video_dir / "car_traffic_small.mp4", folder / "car.mp4", 1, size=(160, 90), audio=False),
    }


@pytest.fixture(scope="module")
def tiny_vgg(tmp_path_factory):
    return save_tiny_srvgg(tmp_path_factory.mktemp("m") / "vgg.pt")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name)


def test_frame_conversions_are_rgb_and_exact():
    bgr = np.zeros((2, 4, 6, 3), dtype=np.uint8)
    bgr[..., 0], bgr[..., 2] = 10, 200  # blue 10, red 200
    batch = frames_to_model_input(list(bgr))
    assert batch.shape == (2, 3, 4, 6) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert np.allclose(batch[:, 0], 200 / 255) and np.allclose(batch[:, 2], 10 / 255)
    frames = model_output_to_frames(batch)
    assert frames.shape == (2, 4, 6, 3) and frames.dtype == np.uint8 and frames.flags.c_contiguous
    np.testing.assert_array_equal(frames, bgr[..., ::-1])


def test_video_keeps_frames_fps_and_audio(clips, tiny_vgg, tmp_path):
    source = clips["bbb"]
    frames_in, fps_in, (w, h) = decoded_video(source)
    target = tmp_path / "bbb_x4.mp4"
    result = upscale_video(cpu_backend(tiny_vgg), source, target, batch_size=4, preset="ultrafast", progress=False)
    frames_out, fps_out, size_out = decoded_video(target)
    assert frames_in == 50 and result.frames == frames_out == frames_in
    assert fps_out == pytest.approx(fps_in, abs=1e-3) and result.fps == pytest.approx(25.0)
    assert size_out == (4 * w, 4 * h) == result.size
    assert result.audio == "copied"
    audio_in, audio_out = audio_seconds(source), audio_seconds(target)
    assert audio_in is not None and audio_out is not None
    assert abs(audio_out - audio_in) <= 0.1
    assert _leftovers(tmp_path) == []


def test_video_without_audio_and_with_outscale(clips, tiny_vgg, tmp_path):
    source = clips["car"]
    frames_in, fps_in, (w, h) = decoded_video(source)
    target = tmp_path / "car.mp4"
    result = upscale_video(cpu_backend(tiny_vgg), source, target, outscale=2, preset="ultrafast", progress=False)
    assert decoded_video(target) == (frames_in, pytest.approx(fps_in, abs=1e-3), (2 * w, 2 * h))
    assert result.audio == "none in input" and audio_seconds(target) is None


@pytest.mark.slow
def test_frame_count_is_decoded_not_taken_from_header(video_dir, tmp_path):
    """car_traffic_small.mp4's header says 922 frames; 917 decode. Identity 'model' for speed."""
    target = tmp_path / "car_full.mp4"
    result = upscale_video(NearestBackend(1), video_dir / "car_traffic_small.mp4", target, batch_size=16,
                           preset="ultrafast", progress=False)
    assert result.frames == 917
    assert decoded_video(target)[0] == 917


def test_without_ffmpeg_falls_back_to_opencv_and_says_audio_is_dropped(clips, tmp_path, monkeypatch):
    monkeypatch.setattr(video_module, "find_ffmpeg", lambda: None)
    messages: list[str] = []
    target = tmp_path / "fallback.mp4"
    result = upscale_video(NearestBackend(2), clips["bbb"], target, progress=False, log=messages.append)
    assert any("ffmpeg not found" in m and "audio is dropped" in m for m in messages)
    assert result.audio == "dropped"
    frames, _, size = decoded_video(target)
    assert frames == 50 and size == (320, 176)
    assert audio_seconds(target) is None


def test_encoder_failure_leaves_nothing(clips, tmp_path):
    target = tmp_path / "bad.mp4"
    with pytest.raises(SRDeployError, match="ffmpeg"):
        upscale_video(NearestBackend(2), clips["car"], target, codec="no-such-encoder", progress=False)
    assert not target.exists() and _leftovers(tmp_path) == []


def test_unreadable_video_is_an_input_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(InputError, match="broken.mp4"):
        upscale_video(NearestBackend(2), bad, tmp_path / "out.mp4", progress=False)
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_video_job_leaves_no_final_output(video_dir, tiny_vgg, tmp_path, sig):
    """Kill `sr-deploy upscale` mid-video: never a final-named file (SIGTERM also cleans up)."""
    target = tmp_path / "killed.mp4"
    process = subprocess.Popen(
        [sys.executable, "-m", "sr_deploy", "upscale", str(video_dir / "mov_bbb.mp4"), "-o", str(target),
         "--model", str(tiny_vgg), "--device", "cpu", "--preset", "ultrafast", "--no-progress"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not _leftovers(tmp_path):  # the encoder has started writing
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the job never started writing"
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(process.pid, sig)
    process.wait(timeout=60)
    assert process.returncode != 0
    time.sleep(0.5)  # an orphaned ffmpeg may still be finishing its temporary file
    assert not target.exists()
    if sig == signal.SIGTERM:
        assert _leftovers(tmp_path) == []
