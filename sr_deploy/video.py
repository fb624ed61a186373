"""Video upscaling: decode -> batch -> backend -> encode, overlapped, audio kept.

Three stages run at once, joined by bounded queues (so memory stays at a few batches):

    reader thread   cv2.VideoCapture -> batches of (N, 3, H, W) float32 RGB [0, 1]
    calling thread  backend (tiled when a frame does not fit, `sr_deploy.tiling.upscale_batch`)
    writer thread   clamp + round -> (N, sH, sW, 3) uint8 RGB -> ffmpeg's stdin (rawvideo rgb24)

Frames are counted as they are decoded, never taken from the container header (which can be
wrong: car_traffic_small.mp4 says 922 frames, 917 decode). The output keeps the input's frame
rate (OpenCV's average rate, as an exact fraction) and every decoded frame.

Encoding uses the ffmpeg binary bundled by imageio-ffmpeg: libx264 (libvpx-vp9 for .webm),
`crf` and `preset`, pix_fmt yuv420p. The video is encoded first; then, when the input has audio or
subtitle streams, they are muxed in from the input by stream copy (audio re-encoded to AAC, or
subtitles dropped, only when the container refuses the copy). Doing the mux as a second, cheap
pass keeps the encoder independent of the audio and lets a container mismatch be retried without
re-running the model. Without ffmpeg, OpenCV's VideoWriter (mp4v) writes the video and a warning
says the audio is dropped.

Nothing is written under the final name until the file is complete: the encoder writes hidden
temporary files beside the target (`.NAME.video-partial.EXT`, `.NAME.partial.EXT`) and the last
step is a rename. Ctrl-C (or SIGTERM, see `sr_deploy.upscale`) removes the temporaries; a SIGKILL
can leave one, never a final-named file.
"""

from __future__ import annotations

import math
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from .backends.base import Backend
from .errors import InputError, SRDeployError
from .imaging import partial_path, quantize, resize_float
from .tiling import DEFAULT_TILE_OVERLAP, auto_tile_size, upscale_batch

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm"})
DEFAULT_CODEC = "libx264"
DEFAULT_CRF = 18
DEFAULT_PRESET = "medium"
DEFAULT_VIDEO_BATCH = 4
# Codecs that take -crf / -preset (others are run with ffmpeg's defaults for them).
_CRF_CODECS = frozenset({"libx264", "libx264rgb", "libx265", "libvpx-vp9", "libaom-av1", "libsvtav1"})
_PRESET_CODECS = frozenset({"libx264", "libx264rgb", "libx265", "libsvtav1"})
# Batches waiting between stages; each holds batch_size frames.
_QUEUE_DEPTH = 2

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_video_path(path: str | Path) -> bool:
    """True when `path` has a video extension this module reads and writes (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def find_ffmpeg() -> str | None:
    """Path of the ffmpeg binary bundled by imageio-ffmpeg (or named by IMAGEIO_FFMPEG_EXE), or
    None when there is none."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # ImportError, or RuntimeError: "No ffmpeg exe could be found"
        return None


def default_codec(extension: str) -> str:
    """libvpx-vp9 for .webm (WebM takes only VP8/VP9/AV1), libx264 otherwise."""
    return "libvpx-vp9" if extension.lower() == ".webm" else DEFAULT_CODEC


def probe_streams(path: Path, ffmpeg: str) -> dict[str, list[str]]:
    """Kinds of streams in `path` with their codec names, from `ffmpeg -i`'s header, e.g.
    {"Video": ["h264"], "Audio": ["aac"]}. Empty when ffmpeg cannot read the file."""
    proc = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-i", str(path)],
                          capture_output=True, text=True, errors="replace")
    streams: dict[str, list[str]] = {}
    for kind, codec in re.findall(r"Stream #\d+:\d+\S*: (Video|Audio|Subtitle|Data|Attachment): (\w+)",
                                  proc.stderr):
        streams.setdefault(kind, []).append(codec)
    return streams


def frames_to_model_input(frames: list[np.ndarray]) -> np.ndarray:
    """OpenCV frames, each (H, W, 3) uint8 BGR -> (N, 3, H, W) float32 RGB in [0, 1]."""
    stacked = np.stack(frames)  # (N, H, W, 3) BGR
    batch = np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)[:, ::-1], dtype=np.float32)
    batch *= np.float32(1 / 255)
    return batch


def model_output_to_frames(batch: np.ndarray, size_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Model output (N, 3, sH, sW) float32 RGB, unclamped -> (N, h, w, 3) uint8 RGB, C-contiguous
    (rawvideo rgb24). `size_hw` resizes to (h, w) first (INTER_AREA down, LANCZOS4 up)."""
    hwc = batch.transpose(0, 2, 3, 1)
    if size_hw is not None and tuple(hwc.shape[1:3]) != tuple(size_hw):
        hwc = np.stack([resize_float(np.ascontiguousarray(frame), size_hw) for frame in hwc])
        return np.ascontiguousarray(quantize(hwc, np.uint8))
    # The hot path of every video: OpenCV's saturating multiply clamps and rounds (to nearest even,
    # like np.rint) in one SIMD pass, 3x faster than numpy's clip + rint + astype; the transpose is
    # then done on uint8, a quarter of the bytes.
    count, channels, height, width = batch.shape
    flat = np.ascontiguousarray(batch, dtype=np.float32).reshape(-1, width)
    as_bytes = cv2.multiply(flat, 255.0, dtype=cv2.CV_8U).reshape(count, channels, height, width)
    return np.ascontiguousarray(as_bytes.transpose(0, 2, 3, 1))


def even_size(height: int, width: int) -> tuple[int, int]:
    """Round (height, width) to the nearest even numbers >= 2 (yuv420p needs even sizes)."""
    return max(2, 2 * round(height / 2)), max(2, 2 * round(width / 2))


@dataclass
class VideoResult:
    """What `upscale_video` did: frames decoded and written, frame rate, output size (w, h), wall
    seconds, model seconds (time spent inside the backend), and what happened to the audio
    (`copied`, `re-encoded to AAC`, `none in input`, `dropped`)."""

    frames: int
    fps: float
    size: tuple[int, int]
    seconds: float
    model_seconds: float
    audio: str
    warnings: list[str] = field(default_factory=list)


class _Stop(Exception):
    """Raised inside a stage when another stage asked everything to stop."""


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


def _reader(capture: cv2.VideoCapture, batch_size: int, out: queue.Queue, stop: threading.Event) -> None:
    """Decode frames into batches; finish with ("end", count) or ("error", exception)."""
    count = 0
    try:
        while True:
            frames = []
            while len(frames) < batch_size:
                ok, frame = capture.read()
                if not ok or frame is None:
                    break
                frames.append(frame)
            if frames:
                count += len(frames)
                _put(out, ("batch", frames_to_model_input(frames)), stop)
            if len(frames) < batch_size:
                _put(out, ("end", count), stop)
                return
    except _Stop:
        return
    except BaseException as exc:  # handed to the calling thread, which raises it
        try:
            _put(out, ("error", exc), stop)
        except _Stop:
            pass


class _FrameSink:
    """Where upscaled frames go: an ffmpeg process (rgb24 on stdin) or an OpenCV VideoWriter."""

    def __init__(self, path: Path, size_wh: tuple[int, int], fps: float, ffmpeg: str | None,
                 codec: str, crf: int | None, preset: str | None):
        self.path = path
        self.ffmpeg = ffmpeg
        self.process: subprocess.Popen | None = None
        self.writer: cv2.VideoWriter | None = None
        width, height = size_wh
        if ffmpeg is not None:
            rate = Fraction(fps).limit_denominator(1001)
            command = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                       "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
                       "-framerate", str(rate), "-i", "pipe:0", "-an", "-c:v", codec]
            if crf is not None and codec in _CRF_CODECS:
                command += ["-crf", str(crf)] + (["-b:v", "0"] if codec == "libvpx-vp9" else [])
            if preset and codec in _PRESET_CODECS:
                command += ["-preset", preset]
            command += ["-pix_fmt", "yuv420p", str(path)]
            self.log = tempfile.TemporaryFile()
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                            stderr=self.log)
        else:
            self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            if not self.writer.isOpened():
                raise SRDeployError(f"{path}: OpenCV's VideoWriter (mp4v) cannot write this file")

    def error_text(self) -> str:
        if self.process is None:
            return ""
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else f"ffmpeg exited with code {self.process.returncode}"

    def write(self, frames_rgb: np.ndarray) -> None:
        """frames_rgb: (N, h, w, 3) uint8 RGB, C-contiguous."""
        if self.process is not None:
            try:
                self.process.stdin.write(memoryview(frames_rgb).cast("B"))
            except (BrokenPipeError, OSError):
                self.process.wait()
                raise SRDeployError(f"{self.path.name}: ffmpeg stopped encoding: {self.error_text()}") from None
        else:
            for frame in frames_rgb:
                self.writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))

    def finish(self) -> None:
        if self.process is not None:
            try:
                self.process.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            if self.process.wait() != 0:
                raise SRDeployError(f"{self.path.name}: ffmpeg failed: {self.error_text()}")
            self.log.close()
        else:
            self.writer.release()

    def abort(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.log):
                try:
                    stream.close()
                except (BrokenPipeError, OSError):
                    pass
        elif self.writer is not None:
            self.writer.release()


def _writer(sink: _FrameSink, size_hw: tuple[int, int] | None, inbox: queue.Queue, stop: threading.Event,
            progress: Any, errors: list[BaseException]) -> None:
    """Quantize and encode batches until ("end", None); record an exception and stop everyone."""
    try:
        while True:
            kind, batch = _get(inbox, stop)
            if kind == "end":
                return
            frames = model_output_to_frames(batch, size_hw)
            sink.write(frames)
            progress.update(len(frames))
    except _Stop:
        return
    except BaseException as exc:
        errors.append(exc)
        stop.set()


def _mux_streams(ffmpeg: str, video: Path, source: Path, target: Path, streams: dict[str, list[str]],
                 log: Log) -> str:
    """Write `target` = `video`'s video + `source`'s audio and subtitles. Tries stream copy, then
    AAC audio, then AAC without subtitles. Returns what happened to the audio; raises only when
    even the video cannot be copied."""
    fast_start = ["-movflags", "+faststart"] if target.suffix.lower() in (".mp4", ".m4v", ".mov") else []
    base = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(video), "-i", str(source),
            "-map", "0:v:0", "-map", "1:a?", "-map", "1:s?", "-map_metadata", "1"]
    attempts = [
        (["-c", "copy"], "copied"),
        (["-c:v", "copy", "-c:a", "aac", "-b:a", "192k", "-c:s", "copy"], "re-encoded to AAC"),
        (["-c:v", "copy", "-c:a", "aac", "-b:a", "192k", "-sn"], "re-encoded to AAC (subtitles dropped)"),
    ]
    if "Audio" not in streams:
        attempts = [(["-c", "copy"], "none in input"), (["-c", "copy", "-sn"], "none in input (subtitles dropped)")]
    last_error = ""
    for options, outcome in attempts:
        proc = subprocess.run(base + options + fast_start + [str(target)], capture_output=True, text=True,
                              errors="replace")
        if proc.returncode == 0:
            if outcome not in ("copied", "none in input"):
                log(f"warning: {source}: audio/subtitles could not be copied into {target.suffix}; {outcome}")
            return outcome
        last_error = (proc.stderr.strip().splitlines() or ["?"])[-1]
        target.unlink(missing_ok=True)
    log(f"warning: {source}: could not add the audio to the output ({last_error}); the video has no sound")
    os.replace(video, target)
    return "dropped"


def upscale_video(
    backend: Backend,
    source: str | Path,
    target: str | Path,
    *,
    tile: int | None = None,
    overlap: int = DEFAULT_TILE_OVERLAP,
    batch_size: int = DEFAULT_VIDEO_BATCH,
    outscale: float | None = None,
    codec: str | None = None,
    crf: int | None = DEFAULT_CRF,
    preset: str | None = DEFAULT_PRESET,
    progress: bool = True,
    log: Log = _stderr,
) -> VideoResult:
    """Upscale the video file `source` into `target` (container from its extension).

    Args:
        backend: any `sr_deploy.backends.base.Backend`.
        tile, overlap: as in `sr_deploy.tiling.upscale_tiled` (None: automatic; frames that fit are
            not tiled).
        batch_size: frames per backend call.
        outscale: final size factor when it differs from the model's scale (None: the model's).
            Sizes are rounded to even numbers for yuv420p.
        codec, crf, preset: ffmpeg encoder settings (codec None: libx264, libvpx-vp9 for .webm).
        progress: show a tqdm bar (frames, fps, ETA) on stderr.
        log: where warnings go (one line each).
    Returns:
        A `VideoResult`. Raises InputError when `source` cannot be opened or has no frames,
        SRDeployError when encoding fails; `target` is then absent (temporaries removed).
    """
    from tqdm import tqdm

    source, target = Path(source), Path(target)
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise InputError(f"{source}: cannot open as a video (missing, corrupt or unsupported)")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    header_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if width <= 0 or height <= 0:
        capture.release()
        raise InputError(f"{source}: no video stream OpenCV can decode")
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log(message)

    if not (fps > 0 and math.isfinite(fps)):
        warn(f"warning: {source}: the container gives no frame rate; writing 25 fps")
        fps = 25.0
    factor = outscale if outscale is not None else backend.scale
    out_h, out_w = even_size(round(height * factor), round(width * factor))
    model_size = (height * backend.scale, width * backend.scale)
    size_hw = None if (out_h, out_w) == model_size else (out_h, out_w)

    if tile is None:  # decided once, so every frame of the video is processed the same way
        tile = auto_tile_size(backend, height, width, overlap, batch_size)
    ffmpeg = find_ffmpeg()
    codec = codec or default_codec(target.suffix)
    if ffmpeg is None:
        warn(f"warning: ffmpeg not found (imageio-ffmpeg): writing {target.name} with OpenCV (mp4v); "
             "its audio is dropped")
    streams = probe_streams(source, ffmpeg) if ffmpeg else {}
    needs_mux = bool(ffmpeg) and ("Audio" in streams or "Subtitle" in streams)
    target.parent.mkdir(parents=True, exist_ok=True)
    final_tmp = partial_path(target)
    video_tmp = target.with_name(f".{target.stem}.video-partial{target.suffix}") if needs_mux else final_tmp

    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    upscaled: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    writer_errors: list[BaseException] = []
    bar = tqdm(total=header_frames or None, unit="frame", desc=source.name, file=sys.stderr,
               disable=not progress, dynamic_ncols=True, leave=False)
    sink: _FrameSink | None = None
    threads: list[threading.Thread] = []
    started = time.perf_counter()
    model_seconds = 0.0
    count = 0
    completed = False
    try:
        sink = _FrameSink(video_tmp, (out_w, out_h), fps, ffmpeg, codec, crf, preset)
        threads = [
            threading.Thread(target=_reader, args=(capture, batch_size, decoded, stop), daemon=True,
                             name="sr-deploy-decode"),
            threading.Thread(target=_writer, args=(sink, size_hw, upscaled, stop, bar, writer_errors),
                             daemon=True, name="sr-deploy-encode"),
        ]
        for thread in threads:
            thread.start()
        while True:
            try:
                kind, payload = _get(decoded, stop)
            except _Stop:
                break  # the writer failed; its error is raised below
            if kind == "error":
                raise payload
            if kind == "end":
                count = payload
                break
            begin = time.perf_counter()
            result = upscale_batch(backend, payload, tile, overlap)
            model_seconds += time.perf_counter() - begin
            try:
                _put(upscaled, ("batch", result), stop)
            except _Stop:
                break
        if not writer_errors:
            try:
                _put(upscaled, ("end", None), stop)
            except _Stop:
                pass
        threads[1].join()
        if writer_errors:
            raise writer_errors[0]
        if count == 0:
            raise InputError(f"{source}: no decodable frames")
        sink.finish()
        bar.total = count
        bar.refresh()
        audio = "dropped" if ffmpeg is None else "none in input"
        if needs_mux:
            audio = _mux_streams(ffmpeg, video_tmp, source, final_tmp, streams, warn)
            video_tmp.unlink(missing_ok=True)
        os.replace(final_tmp, target)
        completed = True
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        capture.release()
        bar.close()
        if not completed:
            if sink is not None:
                sink.abort()
            for path in {video_tmp, final_tmp}:
                path.unlink(missing_ok=True)
    return VideoResult(count, fps, (out_w, out_h), time.perf_counter() - started, model_seconds, audio, warnings)
