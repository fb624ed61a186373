"""Helpers shared by the upscale tests: tiny x4 checkpoints, backends for them, ffmpeg probes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import torch

from sr_deploy.backends import load
from sr_deploy.backends.base import Backend
from sr_deploy.models import SRResNet, SRVGGNetCompact, save_checkpoint
from sr_deploy.video import find_ffmpeg

TINY_SRRESNET = {"scale": 4, "num_blocks": 1, "num_features": 8}
# Convs at low resolution only: the cheapest real x4 generator, for video and CLI tests.
TINY_SRVGG = {"scale": 4, "num_feat": 8, "num_conv": 2}


def save_tiny_srresnet(path: Path, seed: int = 0) -> Path:
    """A 1-block, 8-feature SRResNet x4 (9x9 convs, BN, HR convs) with random weights."""
    torch.manual_seed(seed)
    return save_checkpoint(path, SRResNet(**TINY_SRRESNET).eval(), TINY_SRRESNET)


def save_tiny_srvgg(path: Path, seed: int = 0, output_gain: float = 1.0, nan_weight: bool = False) -> Path:
    """A 2-conv, 8-feature SRVGGNetCompact x4. `output_gain` scales the last conv: 1e6 makes
    fp16 overflow to Inf/NaN while fp32 stays finite. `nan_weight` puts one NaN in the first conv
    (a checkpoint damaged in training), so every output is NaN."""
    torch.manual_seed(seed)
    model = SRVGGNetCompact(**TINY_SRVGG).eval()
    with torch.no_grad():
        model.body[-1].weight.mul_(output_gain)
        model.body[-1].bias.mul_(output_gain)
        if nan_weight:
            model.body[0].weight.view(-1)[0] = float("nan")
    return save_checkpoint(path, model, TINY_SRVGG)


def save_overflowing_srvgg(path: Path) -> Path:
    """A tiny SRVGGNetCompact with finite weights whose output overflows to Inf even in fp32 (the
    first and last convs scaled by 1e30 each): a model that makes NaN/Inf itself."""
    torch.manual_seed(0)
    model = SRVGGNetCompact(**TINY_SRVGG).eval()
    with torch.no_grad():
        for conv in (model.body[0], model.body[-1]):
            conv.weight.mul_(1e30)
            conv.bias.mul_(1e30)
    return save_checkpoint(path, model, TINY_SRVGG)


def cpu_backend(path: Path) -> Backend:
    return load(path, device="cpu", precision="fp32")


class Recording(Backend):
    """Wraps a backend, recording every input shape; `fail_above` makes windows with an edge
    above it raise a CUDA-style out-of-memory error."""

    def __init__(self, inner: Backend, max_shape=None, fail_above: int | None = None):
        super().__init__(inner.scale, inner.precision, inner.device, max_shape)
        self.inner = inner
        self.fail_above = fail_above
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x):
        self.calls.append(tuple(x.shape))
        if self.fail_above is not None and max(x.shape[2:]) > self.fail_above:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


class NearestBackend(Backend):
    """Nearest-neighbour upscaling by `scale` (1 = identity): a free 'model' for pipeline tests."""

    name = "nearest"

    def __init__(self, scale: int = 1):
        super().__init__(scale, "fp32", "cpu", None)

    def __call__(self, x):
        return np.ascontiguousarray(x.repeat(self.scale, axis=2).repeat(self.scale, axis=3))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two float images in [0, 1] (clamped, as they would be written)."""
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ffmpeg_exe() -> str:
    exe = find_ffmpeg()
    assert exe, "imageio-ffmpeg's ffmpeg binary is a dependency and must be present"
    return exe


def make_clip(
    source: Path, target: Path, seconds: float, size: tuple[int, int] | None = None, audio: bool = True
) -> Path:
    """Cut the first `seconds` of `source` (re-encoded: exact cut), optionally resized (w, h)."""
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(source), "-t", str(seconds)]
    if size:
        command += ["-vf", f"scale={size[0]}:{size[1]}"]
    command += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    command += ["-c:a", "aac"] if audio else ["-an"]
    subprocess.run(command + [str(target)], check=True)
    return target


def decoded_video(path: Path) -> tuple[int, float, tuple[int, int]]:
    """(frames counted by decoding with OpenCV, fps, (width, height))."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), path
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count, fps, size


def audio_seconds(path: Path) -> float | None:
    """Duration of the first audio stream, by decoding it with ffmpeg; None without audio."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:a:0", "-f", "null", "-"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return None
    times = re.findall(r"time=(\d+):(\d+):(\d+(?:\.\d+)?)", proc.stderr)
    if not times:
        return None
    h, m, s = times[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


def ffmpeg(*args: str) -> None:
    """Run the bundled ffmpeg (quiet, overwrite): for making test clips."""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True)


def frame_times(path: Path) -> list[float]:
    """Presentation time (s) of every decoded frame of the first video stream, read with PyAV."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [float(frame.pts * stream.time_base) for frame in container.decode(stream)]


def video_stream_facts(path: Path) -> dict:
    """Size, SAR, pixel format, colour tags and rotation of the first video stream (PyAV)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        ctx = stream.codec_context
        return {
            "size": (frame.width, frame.height),
            "sar": ctx.sample_aspect_ratio,
            "pix_fmt": frame.format.name,
            "colorspace": int(frame.colorspace),
            "color_primaries": int(frame.color_primaries),
            "color_trc": int(frame.color_trc),
            "color_range": int(frame.color_range),
            "rotation": frame.rotation,
            "audio": [s.codec_context.name for s in container.streams.audio],
        }
