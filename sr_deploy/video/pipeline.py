"""The video pipeline: decode -> batch -> backend -> encode in segments -> mux."""

from __future__ import annotations

import dataclasses
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backends.base import Backend
from ..errors import InputError, SRDeployError
from ..tiling import auto_tile_size, upscale_batch
from ..util.log import to_stderr
from ..util.memory import available_memory
from ..util.text import pixels_text, provenance
from .common import (
    Log,
    NonFiniteOutput,
    VideoDamaged,
    VideoOptions,
    cause,
    clock,
    partial_output_path,
    segments_dir,
)
from .decode import DecodeState, check_concealed, decoded_frames, timed
from .frames import frames_to_model_input, model_output_to_frames
from .held import EXACT, HeldBatch, HeldBatcher, HeldOutputs, check_threshold
from .mux import write_output
from .output import OutputPlan, lost_on_output, plan_output
from .probe import VideoInfo, open_input, probe_video, sws_colorspace, sws_range, upright
from .segments import SegmentWriter, read_manifest, resume_key

# Batches waiting between stages; each holds batch_size frames.
_QUEUE_DEPTH = 2


@dataclass
class VideoResult:
    """What `upscale_video` did: frames in the output, nominal frame rate, output size (w, h),
    wall seconds, model seconds (time spent inside the backend), what happened to the audio
    (`copied`, `re-encoded to aac`, `re-encoded to opus`, `none in input`, `dropped`), frames
    run through the model by this call (fewer than `frames` after a resume), the frame it resumed
    after (0 = from the start), where the file was written, whether it is partial, and the frames of
    this call written with the output of an earlier, identical or near-identical frame instead of
    running the model (`sr_deploy.video.held`)."""

    frames: int
    fps: float
    size: tuple[int, int]
    seconds: float
    model_seconds: float
    audio: str
    warnings: list[str] = field(default_factory=list)
    frames_inferred: int = 0
    resumed_from: int = 0
    path: Path | None = None
    partial: bool = False
    frames_reused: int = 0


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


def _check_finite(batch: np.ndarray, source: Path, frame_numbers: list[int]) -> None:
    if not np.isfinite(float(batch.sum())):  # one reduction: any NaN/Inf makes the sum non-finite
        bad = [i for i in range(len(batch)) if not np.isfinite(batch[i]).all()]
        raise NonFiniteOutput(
            f"{source}: the model's output has NaN/Inf values at frame {frame_numbers[bad[0]]} "
            "(a checkpoint with non-finite weights, or fp16 overflow that fp32 did not cure)"
        )


# What one input pixel of a frame costs while a video runs, besides the runtime (1 GiB), estimated:
# the batch being run as uint8 and float32 input (16 bytes) and float32 output (12 bytes per output
# pixel); the batches in the decoded and upscaled queues as uint8 frames (3 bytes in, 3 per output
# pixel); the encoder's own frames at the output size (x264's lookahead and frame threads hold
# about 48, 1.5 bytes a pixel in 4:2:0).
_ENCODER_FRAMES = 48


def check_frame_size(source: Path, info: VideoInfo, scale: int, options: VideoOptions) -> None:
    """InputError (exit 2) before any frame is decoded when the frames of `source` have more pixels
    than `options.max_pixels`, or (None) than fit in the memory available now at `scale`: a 200 KB
    8192x8192 clip was ended by the kernel's OOM killer at 24 GB, with no error line."""
    pixels = info.width * info.height
    if options.max_pixels is not None:
        bound, where = options.max_pixels, "--max-pixels"
    else:
        batch, queued = options.batch_size, 2 * _QUEUE_DEPTH * options.batch_size
        in_flight = batch + queued
        per_pixel = (
            batch * (16 + 12 * scale * scale)
            + queued * (3 + 3 * scale * scale)
            + _ENCODER_FRAMES * 3 * scale * scale // 2
        )
        bound = max(0, available_memory() - (1 << 30)) // per_pixel
        where = (
            f"the memory available now at x{scale} ({in_flight} frames in flight, --batch-size {options.batch_size})"
        )
    if pixels > bound:
        raise InputError(
            f"{source}: its frames are {info.width}x{info.height} ({pixels_text(pixels)}), more than the "
            f"{pixels_text(bound)} of {where}; pass --max-pixels N to change the bound"
        )


def upscale_video(
    backend: Backend,
    source: str | Path,
    target: str | Path,
    options: VideoOptions | None = None,
    *,
    log: Log = to_stderr,
    **changes: Any,
) -> VideoResult:
    """Upscale the video file `source` into `target` (container from its extension) with any
    `Backend`, as `options` say (a `VideoOptions`; None: the defaults); `changes` replace some of
    its fields (``upscale_video(b, src, dst, segment_seconds=1)``); warnings go to `log`.

    Returns a `VideoResult`. Raises InputError (VideoDamaged) for an input that does not open or
    decode completely, NonFiniteOutput for NaN/Inf output, SRDeployError when encoding or writing
    fails; the final name is then absent.
    """
    o = dataclasses.replace(options or VideoOptions(), **changes)
    source, target = Path(source), Path(target)
    if o.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {o.batch_size}")
    check_threshold(o.dedup_threshold)
    info = probe_video(source)
    check_frame_size(source, info, backend.scale, o)
    if o.hwaccel and o.hwaccel != "none":
        open_input(source, o.hwaccel).close()  # a device that does not open is said before any work
    plan = plan_output(
        info, backend, target, codec=o.codec, crf=o.crf, preset=o.preset, pix_fmt=o.pix_fmt, outscale=o.outscale
    )
    tile = o.tile
    if tile is None:  # decided once, so every frame of the video is processed the same way
        tile = auto_tile_size(backend, info.height, info.width, o.overlap, o.batch_size, o.memory_budget)
    key = resume_key(
        source,
        {
            "encode": plan.settings.__dict__,
            "model": o.model_id,
            "backend": backend.name,
            "scale": backend.scale,
            "precision": backend.precision,
            "tile": tile,
            "overlap": o.overlap,
            "segment_seconds": o.segment_seconds,
            # Exact reuse writes what the model would: only a PSNR threshold changes the output.
            **({"dedup_threshold": o.dedup_threshold} if o.dedup_threshold not in (None, EXACT) else {}),
        },
    )
    job = _VideoJob(
        backend,
        source,
        target,
        info,
        plan,
        key,
        tile=tile,
        overlap=o.overlap,
        batch_size=o.batch_size,
        hwaccel=o.hwaccel,
        allow_partial=o.allow_partial,
        segment_seconds=o.segment_seconds,
        resume=o.resume,
        progress=o.progress,
        log=log,
        dedup_threshold=o.dedup_threshold,
        tags={
            "comment": provenance(
                o.model_id or "unnamed",
                backend.precision,
                o.recorded(target.suffix, info.bit_depth),
                source.stat().st_size,
            )
        },
    )
    return job.run()


class _VideoJob:
    """One `upscale_video` call: the three stages, the segment writer, the checks, the mux."""

    def __init__(
        self,
        backend: Backend,
        source: Path,
        target: Path,
        info: VideoInfo,
        plan: OutputPlan,
        key: dict,
        *,
        tile: int,
        overlap: int,
        batch_size: int,
        hwaccel: str | None,
        allow_partial: bool,
        segment_seconds: float,
        resume: bool,
        progress: bool,
        log: Log,
        dedup_threshold: float | None = EXACT,
        tags: dict[str, str] | None = None,
    ):
        from tqdm import tqdm

        self.backend, self.source, self.target, self.info, self.plan = backend, source, target, info, plan
        self.tile, self.overlap, self.batch_size, self.hwaccel = tile, overlap, batch_size, hwaccel
        self.allow_partial, self.log, self.tags = allow_partial, log, tags
        self.warnings: list[str] = []
        for note in lost_on_output(source, info, plan):
            self.warn(note)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.folder = segments_dir(target)
        if not resume:
            shutil.rmtree(self.folder, ignore_errors=True)
        done, damage = read_manifest(self.folder, key) if self.folder.is_dir() else ([], [])
        if damage and not allow_partial:  # seen by an earlier --allow-partial run, before the resume point
            shutil.rmtree(self.folder, ignore_errors=True)
            raise VideoDamaged(damage[0])
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("*.partial"):  # a segment cut short by a kill
            stale.unlink()
        self.resumed_from = sum(s.frames for s in done)
        self.resume_pts = done[-1].last_pts if done else None
        if done:
            log(
                f"{source}: resuming after frame {self.resumed_from} ({len(done)} finished segments in "
                f"{self.folder.name})"
            )
        self.step = max(1, round(1 / (info.rate * info.time_base)))  # one nominal frame, in time-base units
        self.state = DecodeState(frames=self.resumed_from, damage=damage)
        self.writer = SegmentWriter(self.folder, key, done, plan.settings, segment_seconds, self.state.damage)
        self.stop = threading.Event()
        self.decoded: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
        self.upscaled: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
        self.errors: list[BaseException] = []
        self.colorspace, self.color_range = sws_colorspace(info.colorspace), sws_range(info.color_range)
        # the encode side's matrix: the input's, or a real one for RGB-coded input (`output_matrix`)
        self.out_colorspace = sws_colorspace(plan.settings.colorspace)
        self.model_seconds = 0.0
        self.inferred = 0
        self.handled = 0  # frames through the model or reused, by the calling thread
        self.batcher = HeldBatcher(batch_size, dedup_threshold)
        self.bar = tqdm(
            total=info.frames_estimate or None,
            initial=self.resumed_from,
            unit="frame",
            desc=source.name,
            file=sys.stderr,
            disable=not progress,
            dynamic_ncols=True,
            leave=False,
        )

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log(message)

    def _decode(self) -> None:
        """Reader thread: frames after the resume point -> batches of (timestamps, model input)."""
        info, state = self.info, self.state
        container = open_input(self.source, self.hwaccel)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if self.resume_pts is not None:
                try:  # to the keyframe at or before the last finished frame
                    container.seek(self.resume_pts, stream=stream, backward=True)
                except Exception:  # av.FFmpegError: decode from the start, skipping by timestamp
                    container.seek(0)
            frames = decoded_frames(container, stream, self.source, state, self.allow_partial, self.warn)
            for pts, frame in timed(frames, self.step):
                if self.resume_pts is not None and pts <= self.resume_pts:
                    continue
                if (frame.width, frame.height) != (info.width, info.height):
                    # scaling it to the first size would squash the picture; one size per output
                    raise InputError(
                        f"{self.source}: the picture size changes from {info.width}x{info.height} to "
                        f"{frame.width}x{frame.height} at frame {state.frames + 1} ({clock(float(pts * info.time_base))}); "
                        "cut the video where it changes and upscale the parts"
                    )
                # after the resume skip: a frame before the resume point was checked by the run that
                # encoded it (its damage is in the manifest), so it is not counted twice
                seconds = float(pts * info.time_base)
                check_concealed(frame, state.frames + 1, seconds, self.source, state, self.allow_partial, self.warn)
                rgb = frame.to_ndarray(
                    format=self.plan.decode_format,
                    width=info.width,
                    height=info.height,
                    src_colorspace=self.colorspace,
                    src_color_range=self.color_range,
                )
                state.frames += 1
                state.last_end = float((pts + (frame.duration or self.step)) * info.time_base)
                full = self.batcher.add(pts, upright(rgb, info))
                if full is not None:
                    self._hand_on(full)
            last = self.batcher.flush()
            if last is not None:
                self._hand_on(last)
            _put(self.decoded, ("end", None), self.stop)
        finally:
            container.close()

    def _hand_on(self, held: HeldBatch) -> None:
        """To the model: (timestamps, output slot per timestamp, model input or None when every
        frame of the batch is held)."""
        batch = frames_to_model_input(held.frames) if held.frames else None
        _put(self.decoded, ("batch", (held.stamps, held.slots, batch)), self.stop)

    def _encode(self) -> None:
        """Encoder thread: model output -> rounded RGB -> the input's YUV -> segment files."""
        import av

        info, plan = self.info, self.plan
        outputs = HeldOutputs()
        while True:
            kind, payload = _get(self.upscaled, self.stop)
            if kind == "end":
                self.writer.close_segment()
                return
            stamps, slots, batch = payload
            encoded = []
            for rgb in model_output_to_frames(batch, plan.size_hw, plan.out_dtype) if batch is not None else []:
                frame = av.VideoFrame.from_ndarray(rgb, format=plan.rgb_out_format)
                frame = frame.reformat(
                    format=plan.settings.pix_fmt, dst_colorspace=self.out_colorspace, dst_color_range=self.color_range
                )
                frame.color_range, frame.colorspace = info.color_range, plan.settings.colorspace
                frame.color_primaries, frame.color_trc = info.color_primaries, info.color_trc
                encoded.append(frame)
            # A held frame is the same VideoFrame again: the encoder takes its own reference of the
            # picture at each `encode`, and `write` sets the timestamp just before.
            for pts, frame in zip(stamps, outputs.expand(slots, encoded)):
                self.writer.write(pts, frame)
            self.bar.update(len(stamps))

    def _stage(self, work: Callable[[], None]) -> None:
        """Run a thread's work; its exception goes to the calling thread, which raises it."""
        import av

        try:
            work()
        except _Stop:
            return
        except (av.FFmpegError, OSError) as exc:
            if work == self._encode:  # encoder or disk: a run-time failure, never bad input
                exc = SRDeployError(
                    f"{self.target}: encoding or writing a segment in {self.folder} failed: {cause(exc)}"
                )
            self.errors.append(exc)
            self.stop.set()
        except BaseException as exc:  # handed over, not swallowed
            self.errors.append(exc)
            self.stop.set()

    def _infer(self) -> None:
        """Calling thread: batches through the backend, checked for NaN/Inf."""
        try:
            while True:
                kind, payload = _get(self.decoded, self.stop)
                if kind == "end":
                    _put(self.upscaled, ("end", None), self.stop)
                    return
                stamps, slots, batch = payload
                result = None
                if batch is not None:
                    begin = time.perf_counter()
                    result = upscale_batch(self.backend, batch, self.tile, self.overlap)
                    self.model_seconds += time.perf_counter() - begin
                    first = self.resumed_from + self.handled
                    numbers = [first + i for i, s in enumerate(slots) if s != (slots[i - 1] if i else -1)]
                    _check_finite(result, self.source, numbers)
                    self.inferred += len(batch)
                self.handled += len(stamps)
                _put(self.upscaled, ("batch", (stamps, slots, result)), self.stop)
        except _Stop:
            return  # another stage failed: its error is raised by `run`

    def _check_duration(self) -> None:
        """A decoded duration short of the stream's (by more than two frames) is damage."""
        state, info = self.state, self.info
        if state.last_end is None or info.end is None or info.end - state.last_end <= 2 / info.rate + 0.05:
            return
        message = (
            f"{self.source}: damaged video: decoding stopped after {clock(state.last_end)} "
            f"(frame {state.frames}) of {clock(info.end)}"
        )
        if not self.allow_partial:
            raise VideoDamaged(message)
        state.damage.append(message)
        self.warn(f"warning: {message}")

    def _finish(self) -> tuple[Path, str]:
        """Mux the segments and the input's other streams into the final file: (its path, audio)."""
        if not self.writer.segments:
            raise VideoDamaged(f"{self.source}: no decodable video frames")
        damage = self.state.damage
        if len(damage) > 1:
            self.warn(
                f"warning: {self.source}: {len(damage)} damaged places; the partial output skips what did not "
                "decode and keeps the frames the decoder concealed"
            )
        final = partial_output_path(self.target) if damage else self.target
        segments = self.writer.segments
        return final, write_output(
            final, self.source, self.folder, segments, self.target.suffix, self.info, self.warn, self.tags
        )

    def run(self) -> VideoResult:
        """The stages, then the checks and the mux. The segments are kept for a re-run after an
        interruption or a run-time failure, and removed after success, bad input or NaN output."""
        started = time.perf_counter()
        threads = [
            threading.Thread(target=self._stage, args=(self._decode,), daemon=True, name="sr-deploy-decode"),
            threading.Thread(target=self._stage, args=(self._encode,), daemon=True, name="sr-deploy-encode"),
        ]
        keep_segments = True
        try:
            for thread in threads:
                thread.start()
            self._infer()
            for thread in reversed(threads):
                thread.join()
            if self.errors:
                raise self.errors[0]
            self._check_duration()
            final, audio = self._finish()
            keep_segments = False
        except (InputError, NonFiniteOutput):
            keep_segments = False  # the input will not get better / another model is needed: nothing to resume
            raise
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=10)
            self.writer.abort()
            self.bar.close()
            if not keep_segments:
                shutil.rmtree(self.folder, ignore_errors=True)
        size = (self.plan.settings.width, self.plan.settings.height)
        return VideoResult(
            sum(s.frames for s in self.writer.segments),
            float(self.info.rate),
            size,
            time.perf_counter() - started,
            self.model_seconds,
            audio,
            self.warnings,
            frames_inferred=self.inferred,
            resumed_from=self.resumed_from,
            path=final,
            partial=bool(self.state.damage),
            frames_reused=self.batcher.reused,
        )
