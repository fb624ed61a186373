"""The end-to-end video measurement: what `sr-deploy upscale` costs on a real clip on top of the
model alone. One implementation for the benchmark's video row (`video_row`) and for
`benchmarks/upscale_video_overhead.py`."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..backends.base import Backend
from ..errors import InputError, SRDeployError
from ..util import first_line, silent
from .measure import tf32, time_calls
from .results import STATUS_SKIPPED, VideoRow
from .subject import backend_inputs, load_subject


class NearestBackend(Backend):
    """A free x`scale` 'model' (nearest neighbour), to time the pipeline without a network."""

    name = "nearest"

    def __init__(self, scale: int) -> None:
        super().__init__(scale, "fp32", "cpu")

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.repeat(self.scale, axis=2).repeat(self.scale, axis=3))


def trim_clip(
    clip: str | Path,
    output: str | Path,
    frames: int | None = None,
    width: int | None = None,
    *,
    seconds: float | None = None,
    preset: str = "veryfast",
    crf: int | None = 12,
) -> Path:
    """The first `frames` frames (or `seconds`) of `clip` (audio kept, cut to match) re-encoded to
    `output` (H.264, `preset`, `crf`) with the ffmpeg that imageio-ffmpeg bundles; `width` scales it
    down (height kept even, aspect kept)."""
    import imageio_ffmpeg

    clip, output = Path(clip), Path(output)
    if not clip.is_file():
        raise InputError(f"{clip}: no such video file")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(clip)]
    cmd += ["-frames:v", str(frames)] if frames is not None else ["-t", str(seconds)]
    if width:
        cmd += ["-vf", f"scale={int(width)}:-2"]
    cmd += ["-c:v", "libx264", "-preset", preset] + (["-crf", str(crf)] if crf is not None else [])
    cmd += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(output)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not output.is_file():
        raise InputError(f"{clip}: ffmpeg could not trim it ({done.stderr.strip().splitlines()[-1:] or '?'})")
    return output


def decode_batches(clip: Path, batch_size: int) -> tuple[list[np.ndarray], int, int, int]:
    """(batches of (n, 3, H, W) float32 RGB [0, 1], frame count, H, W) of every frame of `clip`."""
    import cv2

    from ..video import frames_to_model_input

    capture = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(bgr)
    capture.release()
    if not frames:
        raise InputError(f"{clip}: no frames decoded")
    batches = [frames_to_model_input(frames[i : i + batch_size]) for i in range(0, len(frames), batch_size)]
    return batches, len(frames), frames[0].shape[0], frames[0].shape[1]


@dataclass
class VideoOverhead:
    """Seconds for the same frames: the model alone (inputs ready on its device), the whole
    `upscale_video` pipeline with it, and the pipeline with a free model (decode + encode only)."""

    frames: int
    height: int
    width: int
    model_only_s: float
    end_to_end: Any  # sr_deploy.video.VideoResult of the fastest run
    pipeline_only: Any | None = None  # VideoResult with NearestBackend, when asked for
    pipeline_cpu_s: float | None = None  # CPU seconds (all threads) of the pipeline_only run

    @property
    def overhead_share(self) -> float:
        """Share of the pipeline's time spent outside the model: 1 - model / end to end."""
        return 1.0 - self.model_only_s / self.end_to_end.seconds

    def cpu_floor_s(self, cores: int) -> float | None:
        """The least end-to-end time possible when the model runs on the CPU and keeps all `cores`
        busy: the model alone plus the decode / convert / encode CPU work spread over the same cores
        (it can overlap with the model in time, not in CPU). None without a pipeline-only run."""
        if self.pipeline_cpu_s is None:
            return None
        return self.model_only_s + self.pipeline_cpu_s / max(1, cores)


def measure_video_overhead(
    backend: Backend,
    clip: Path,
    work: Path,
    *,
    batch_size: int = 1,
    repeat: int = 1,
    preset: str | None = None,
    free_model: bool = False,
) -> VideoOverhead:
    """Time `backend` alone on the decoded frames of `clip` and `sr_deploy.video.upscale_video`
    (what `sr-deploy upscale` runs: decode, batch, backend, clamp, encode, audio mux) on the same
    clip, after one warm-up call; `repeat` runs of each, the fastest kept (on a shared machine the
    minimum is the figure least disturbed by other jobs). Outputs go to `work`.

    Raises SRDeployError when the pipeline wrote another number of frames than were decoded."""
    from ..video import upscale_video

    batches, frames, height, width = decode_batches(clip, batch_size)
    inputs = backend_inputs(backend.name, backend.device, batches)
    backend(inputs[0])  # warm-up: allocations, kernel choice
    # Every run from scratch into its own file: a resumed run would time nothing.
    options: dict[str, Any] = {"resume": False, "progress": False, "log": silent, "batch_size": batch_size}
    if preset:
        options["preset"] = preset
    model_s, best = float("inf"), None
    for run in range(max(1, repeat)):
        timing = time_calls(backend, inputs, backend.device, warmup=0, iters=len(inputs))
        model_s = min(model_s, sum(timing.samples_ms) / 1e3)
        result = upscale_video(backend, clip, work / f"out-{run}{clip.suffix}", **options)
        if result.frames != frames:
            raise SRDeployError(f"{clip}: the pipeline wrote {result.frames} frames, {frames} were decoded")
        if best is None or result.seconds < best.seconds:
            best = result
    free, free_cpu = None, None
    if free_model:
        before = _process_cpu_seconds()
        free = upscale_video(NearestBackend(backend.scale), clip, work / f"free{clip.suffix}", **options)
        free_cpu = _process_cpu_seconds() - before
    return VideoOverhead(frames, height, width, model_s, best, free, free_cpu)


def _process_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far, all threads (the encoder's included)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def video_row(
    model: str | Path | nn.Module,
    clip: str | Path,
    *,
    frames: int = 8,
    width: int | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 1,
) -> VideoRow:
    """frames/s of the whole `sr-deploy upscale` video pipeline on the first `frames` frames of a
    real clip (scaled to `width` when given), against the same PyTorch backend alone on the same
    decoded frames with inputs ready (`measure_video_overhead`).

    A missing pipeline (`sr_deploy.video` not in this build) gives a row with status skipped.
    """
    from ..backends import load
    from ..backends.torch_backend import resolve_device

    clip = Path(clip)
    dev = resolve_device(device)
    row = VideoRow(clip=clip.name, frames=0, width=0, height=0, backend="torch", device=dev, precision=precision)
    try:
        from ..video import upscale_video  # noqa: F401 - only: is the pipeline in this build?
    except ImportError as exc:
        row.status = STATUS_SKIPPED
        row.reason = f"the video pipeline (sr_deploy.video) is not in this build ({first_line(exc)})"
        return row
    subject = load_subject(model)
    if subject.module is None:
        raise InputError(f"{model}: the video row needs a PyTorch checkpoint")
    with tempfile.TemporaryDirectory(prefix="sr-deploy-video-") as tmp:
        trimmed = trim_clip(clip, Path(tmp) / f"trimmed{clip.suffix or '.mp4'}", frames, width)
        with (
            tf32(precision != "fp32"),
            load(subject.module, device=dev, precision=precision, backend="torch") as backend,
        ):
            measured = measure_video_overhead(backend, trimmed, Path(tmp), batch_size=batch_size)
    row.frames, row.height, row.width = measured.frames, measured.height, measured.width
    row.pipeline_fps = row.frames / measured.end_to_end.seconds
    row.backend_fps = row.frames / measured.model_only_s
    row.overhead_share = 1.0 - row.pipeline_fps / row.backend_fps
    row.command = (
        f"sr_deploy.video.upscale_video (what `sr-deploy upscale` runs) on {clip.name} trimmed to "
        f"{row.frames} frames"
        + (f" at {row.width}x{row.height}" if width else "")
        + f", batch {batch_size}, {precision} on {dev}"
    )
    return row
