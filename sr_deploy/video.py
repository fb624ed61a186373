"""Video upscaling that keeps time: decode -> batch -> backend -> encode in segments -> mux.

Decoding, encoding and muxing go through PyAV (FFmpeg's libraries, bundled in its wheel). Why
PyAV and not the ffmpeg binary on a pipe: a raw-video pipe carries pixels only, so the frame
timestamps, decoder errors and stream metadata would have to be scraped from ffmpeg's log; PyAV
hands each frame with its timestamp, raises on decoder errors, and decodes as fast (car_traffic_small
to RGB arrays: 0.74 s PyAV, 0.88 s ffmpeg pipe, on a shared 2-core machine).

What a user can rely on (docs/upscale.md states it for users):

- **Timestamps**: every output frame keeps its input presentation time, in the input stream's
  time base. Variable frame rate stays variable; a wrong frame rate in the header changes
  nothing. Timestamps the container gives out of order (AVI with B-frames) are sorted over a few
  frames; a frame without one gets the previous one plus one nominal frame duration.
- **Metadata carried**: sample aspect ratio (adjusted when `--outscale` rounds the two sides
  differently), colour primaries / transfer / matrix / range (the RGB <-> YUV conversions use the
  input's matrix and range both ways), bit depth (> 8-bit input goes through the model as 16-bit
  RGB and is written as 10-bit when the encoder can, unless `pix_fmt` says otherwise). A display
  rotation is applied to the pixels (as ffmpeg's autorotate does), so the output plays upright.
- **Damage is an error**: a decoder or demuxer error, or a decoded duration short of the
  stream's, raises `VideoDamaged` (an `InputError`: exit 2) naming the time and frame where
  decoding stopped. With `allow_partial` the frames that decode are kept and the result is
  written as `NAME.partial.EXT`, never under the final name.
- **Audio and subtitles**: each stream is copied when the output container accepts its codec,
  else audio is re-encoded (Opus for WebM / MKV, AAC otherwise) and a subtitle stream is dropped
  with a warning. A write error (ENOSPC, EIO, EFBIG) anywhere is a failure, never a fallback.
- **Resume**: the video is encoded in independently decodable segments (each a new encoder
  session, so each starts on a keyframe; MP4 files, which keep the B-frame decode times that NUT
  loses) of about `segment_seconds`, kept in a hidden folder
  beside the target (`.NAME.segments/`) with a manifest. A re-run with the same input, model and
  settings seeks to the last finished segment and goes on from there; the final mux copies the
  segments' packets and the input's audio into one file, so every frame is there once and the
  audio keeps its own timestamps. The folder is removed once the output is complete.
- **Non-finite output** (NaN / Inf) fails the file (`NonFiniteOutput`).

Three stages run at once, joined by bounded queues (so memory stays at a few batches):

    reader thread   PyAV decode -> (N, 3, H, W) float32 RGB [0, 1] batches + their timestamps
    calling thread  backend (tiled when a frame does not fit, `sr_deploy.tiling.upscale_batch`)
    writer thread   clamp + round -> RGB uint8/uint16 -> YUV -> encoder -> segment files

Nothing is written under the final name until the file is complete: the mux writes a hidden
temporary file beside the target (`.NAME.partial.EXT`) and the last step is a rename.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import queue
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

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
DEFAULT_SEGMENT_SECONDS = 2.0
# Codecs that take a constant-quality option (crf; NVENC calls it cq) and a preset.
_CRF_CODECS = frozenset({"libx264", "libx264rgb", "libx265", "libvpx-vp9", "libsvtav1", "libaom-av1"})
_CQ_CODECS = frozenset({"h264_nvenc", "hevc_nvenc", "av1_nvenc"})
_PRESET_CODECS = frozenset({"libx264", "libx264rgb", "libx265", "libsvtav1"}) | _CQ_CODECS
# Batches waiting between stages; each holds batch_size frames.
_QUEUE_DEPTH = 2
# Frames over which out-of-order container timestamps are sorted (more than any B-frame delay).
_REORDER_DEPTH = 16
# Audio encoder for a container that refuses the input's audio codec.
_AUDIO_FALLBACK = {".webm": "libopus", ".mkv": "libopus", ".avi": "libmp3lame"}
# Audio that a container lists as accepted but that a stream copy through PyAV mistimes: AVI
# needs the packets' frame size, which PyAV's stream template does not carry (the audio came
# out 0.75 s long for 4 s). Re-encoded (MP3, AVI's own) instead.
_COPY_MISTIMED = {".avi": frozenset({"aac", "opus", "vorbis"})}
_ANNEX_B_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
_MANIFEST = "manifest.json"
_MANIFEST_VERSION = 1

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class VideoDamaged(InputError):
    """The input video does not decode completely (decoder/demuxer error or short duration)."""


class NonFiniteOutput(SRDeployError):
    """The model produced NaN or Inf (after the fp32 retry, where there is one)."""


def is_video_path(path: str | Path) -> bool:
    """True when `path` has a video extension this module reads and writes (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def find_ffmpeg() -> str | None:
    """Path of the ffmpeg binary bundled by imageio-ffmpeg (or named by IMAGEIO_FFMPEG_EXE), or
    None. The pipeline itself uses PyAV; tests and benchmarks use the binary to make clips."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:  # ImportError, or RuntimeError: "No ffmpeg exe could be found"
        return None


def default_codec(extension: str) -> str:
    """libvpx-vp9 for .webm (WebM takes only VP8/VP9/AV1), libx264 otherwise."""
    return "libvpx-vp9" if extension.lower() == ".webm" else DEFAULT_CODEC


def partial_output_path(target: Path) -> Path:
    """Where a damaged input's decodable part is written with `allow_partial`: NAME.partial.EXT
    (visible, so nobody mistakes it for the finished file; a re-run does not skip the job)."""
    return target.with_name(f"{target.stem}.partial{target.suffix}")


def segments_dir(target: Path) -> Path:
    """The hidden folder where `target`'s finished segments wait for the final mux."""
    return target.with_name(f".{target.name}.segments")


def frames_to_model_input(frames: list[np.ndarray]) -> np.ndarray:
    """Frames, each (H, W, 3) RGB uint8 or uint16 -> (N, 3, H, W) float32 RGB in [0, 1]."""
    stacked = np.stack(frames)
    peak = 255.0 if stacked.dtype == np.uint8 else 65535.0
    batch = np.ascontiguousarray(stacked.transpose(0, 3, 1, 2), dtype=np.float32)
    batch *= np.float32(1 / peak)
    return batch


def model_output_to_frames(batch: np.ndarray, size_hw: tuple[int, int] | None = None,
                           dtype: type = np.uint8) -> np.ndarray:
    """Model output (N, 3, sH, sW) float32 RGB, unclamped -> (N, h, w, 3) RGB of `dtype` (uint8 or
    uint16), C-contiguous. `size_hw` resizes to (h, w) first (INTER_AREA down, LANCZOS4 up)."""
    hwc = batch.transpose(0, 2, 3, 1)
    if size_hw is not None and tuple(hwc.shape[1:3]) != tuple(size_hw):
        hwc = np.stack([resize_float(np.ascontiguousarray(frame), size_hw) for frame in hwc])
        return np.ascontiguousarray(quantize(hwc, dtype))
    if dtype != np.uint8:
        return np.ascontiguousarray(quantize(hwc, dtype))
    # The hot path of every 8-bit video: OpenCV's saturating multiply clamps and rounds (to nearest
    # even, like np.rint) in one SIMD pass, 3x faster than numpy's clip + rint + astype; the
    # transpose is then done on uint8, a quarter of the bytes.
    count, channels, height, width = batch.shape
    flat = np.ascontiguousarray(batch, dtype=np.float32).reshape(-1, width)
    as_bytes = cv2.multiply(flat, 255.0, dtype=cv2.CV_8U).reshape(count, channels, height, width)
    return np.ascontiguousarray(as_bytes.transpose(0, 2, 3, 1))


def even_size(height: int, width: int) -> tuple[int, int]:
    """Round (height, width) to the nearest even numbers >= 2 (4:2:0 chroma needs even sizes)."""
    return max(2, 2 * round(height / 2)), max(2, 2 * round(width / 2))


def _clock(seconds: float) -> str:
    """12.345 -> '0:00:12.345' (how ffmpeg shows times)."""
    minutes, secs = divmod(max(0.0, seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:06.3f}"


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


# --- probing ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about an input's first video stream.

    width, height: coded size (before rotation). time_base: of the stream's timestamps. rate:
    nominal (average) frame rate, for the encoder's rate control only. start / end: seconds of the
    stream per the container (end None when unknown). sar: sample aspect ratio (0 = unknown).
    bit_depth: bits per luma sample. colour fields: FFmpeg's enum values (AVCOL_*). rotation:
    degrees counter-clockwise the player rotates by (a multiple of 90). audio / subtitles:
    codec names of those streams.
    """

    width: int
    height: int
    time_base: Fraction
    rate: Fraction
    start: float
    end: float | None
    frames_estimate: int
    sar: Fraction
    pix_fmt: str
    bit_depth: int
    color_primaries: int
    color_trc: int
    colorspace: int
    color_range: int
    rotation: int
    audio: tuple[str, ...]
    subtitles: tuple[str, ...]


def _open_input(source: Path, hwaccel: str | None = None) -> Any:
    import av

    kwargs: dict[str, Any] = {}
    if hwaccel and hwaccel != "none":
        from av.codec.hwaccel import HWAccel, hwdevices_available

        if hwaccel not in hwdevices_available():
            raise InputError(f"--hwaccel {hwaccel}: not in this FFmpeg build (it has: "
                             f"{', '.join(hwdevices_available()) or 'none'})")
        kwargs["hwaccel"] = HWAccel(device_type=hwaccel, allow_software_fallback=True)
    try:
        return av.open(str(source), "r", **kwargs)
    except (av.FFmpegError, OSError, ValueError) as exc:
        if not kwargs:
            raise _open_error(source, exc) from None
        raise InputError(f"--hwaccel {hwaccel}: {source} does not open with it ({_cause(exc)}); without "
                         "--hwaccel it is decoded in software") from None


def _open_error(source: Path, exc: BaseException) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{source}: no such file")
    return InputError(f"{source}: cannot open as a video ({_cause(exc)})")


def probe_video(source: str | Path) -> VideoInfo:
    """Read `source`'s header and its first frame. Raises InputError when it has no video stream
    or its first frame does not decode."""
    import av

    source = Path(source)
    container = _open_input(source)
    try:
        if not container.streams.video:
            raise InputError(f"{source}: no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(25)
        rate = Fraction(rate)
        if not (0 < rate < 1000):
            rate = Fraction(25)
        start = float(stream.start_time * time_base) if stream.start_time is not None else 0.0
        end = None
        if stream.duration:
            end = start + float(stream.duration * time_base)
        elif container.duration:
            end = container.duration / 1e6
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except (av.FFmpegError, OSError) as exc:
            raise VideoDamaged(f"{source}: the first video frame does not decode ({_cause(exc)})") from None
        if first is None:
            raise VideoDamaged(f"{source}: no decodable video frames")
        pix_fmt = first.format.name
        bit_depth = max((c.bits for c in first.format.components), default=8)
        sar = Fraction(ctx.sample_aspect_ratio) if ctx.sample_aspect_ratio else Fraction(0)
        estimate = stream.frames or (round((end - start) * rate) if end else 0)
        return VideoInfo(
            width=first.width, height=first.height, time_base=time_base, rate=rate, start=start, end=end,
            frames_estimate=estimate, sar=sar, pix_fmt=pix_fmt, bit_depth=bit_depth,
            color_primaries=int(first.color_primaries), color_trc=int(first.color_trc),
            colorspace=int(first.colorspace), color_range=int(first.color_range),
            rotation=round((first.rotation or 0) / 90) * 90 % 360,
            audio=tuple(s.codec_context.name for s in container.streams.audio),
            subtitles=tuple(s.codec_context.name for s in container.streams.subtitles))
    finally:
        container.close()


def _sws_colorspace(colorspace: int) -> str:
    """FFmpeg's AVCOL_SPC_* -> the swscale matrix name PyAV's reformatter takes. Unspecified maps
    to swscale's default (BT.601) on both the decode and the encode side, so they match."""
    return {1: "itu709", 4: "fcc", 5: "itu601", 6: "smpte170m", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}.get(
        colorspace, "default")


def _sws_range(color_range: int) -> str:
    """AVCOL_RANGE_JPEG (2) is full range; anything else is limited ("MPEG") range."""
    return "JPEG" if color_range == 2 else "MPEG"


# --- decoding --------------------------------------------------------------------------------

@dataclass
class _DecodeState:
    """What the reader learned: frames handed on, the end of the last one (s), damage seen."""

    frames: int = 0
    last_end: float | None = None
    damage: list[str] = field(default_factory=list)


def _decoded_frames(container: Any, stream: Any, source: Path, state: _DecodeState, allow_partial: bool,
                    log: Log) -> Iterator[Any]:
    """Every frame the decoder gives, in presentation order. A decoder or demuxer error raises
    VideoDamaged (time and frame of the last good frame), or with `allow_partial` is recorded in
    `state.damage`, warned about, and decoding goes on with the next packet."""
    import av

    codec = stream.codec_context

    def damaged(exc: BaseException) -> None:
        where = (f"after {_clock(state.last_end)} (frame {state.frames})" if state.last_end is not None
                 else "before the first frame")
        message = f"{source}: damaged video: decoding stopped {where}: {_cause(exc)}"
        if not allow_partial:
            raise VideoDamaged(message) from None
        state.damage.append(message)
        if len(state.damage) == 1:  # one line per file; the count is in the final warning
            log(f"warning: {message}; --allow-partial: going on with the next packet")

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.FFmpegError, OSError) as exc:  # the demuxer cannot go on: the file ends here
            damaged(exc)
            return
        try:
            frames = codec.decode(packet)
        except (av.FFmpegError, OSError) as exc:
            damaged(exc)
            continue
        yield from frames


def _timed(frames: Iterator[Any], step: int) -> Iterator[tuple[int, Any]]:
    """(pts, frame) in presentation order with strictly increasing pts. Containers without
    presentation times (AVI) give pts out of order around B-frames: the values of a window of
    `_REORDER_DEPTH` frames are handed out sorted. A frame without pts gets the previous + `step`."""
    pending: deque = deque()
    values: list[int] = []
    last: int | None = None

    def take() -> tuple[int, Any]:
        nonlocal last
        frame = pending.popleft()
        pts = heapq.heappop(values) if values else None
        if pts is None or (last is not None and pts <= last):
            pts = last + step if last is not None else (pts if pts is not None else 0)
        last = pts
        return pts, frame

    for frame in frames:
        pending.append(frame)
        if frame.pts is not None:
            heapq.heappush(values, frame.pts)
        if len(pending) > _REORDER_DEPTH:
            yield take()
    while pending:
        yield take()


# --- segments and their manifest ---------------------------------------------------------------

@dataclass
class _Segment:
    file: str
    frames: int
    first_pts: int
    last_pts: int


def _read_manifest(folder: Path, key: dict) -> tuple[list[_Segment], list[str]]:
    """The finished segments recorded in `folder` for this `key`, and the damage seen while
    decoding them (so a resumed run still knows its input was damaged before the resume point);
    ([], []) and the folder emptied when there is none, it is unreadable, or it was made for
    another input / model / setting."""
    try:
        data = json.loads((folder / _MANIFEST).read_text())
        if data.get("key") != key:
            raise ValueError("made for other settings")
        segments = [_Segment(**s) for s in data["segments"]]
        if not all((folder / s.file).is_file() for s in segments):
            raise ValueError("a segment is missing")
        return segments, [str(m) for m in data.get("damage", [])]
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(folder, ignore_errors=True)
        return [], []


def _write_manifest(folder: Path, key: dict, segments: list[_Segment], damage: list[str]) -> None:
    tmp = folder / (_MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"key": key, "segments": [s.__dict__ for s in segments], "damage": damage}, indent=1))
    os.replace(tmp, folder / _MANIFEST)


def _resume_key(source: Path, settings: dict) -> dict:
    """What must not change between an interrupted run and its resumption."""
    stat = source.stat()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"version": _MANIFEST_VERSION, "source": str(source.resolve()), "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "settings": digest}


@dataclass(frozen=True)
class _EncodeSettings:
    codec: str
    width: int
    height: int
    pix_fmt: str
    time_base: Fraction
    rate: Fraction
    sar: Fraction
    color_primaries: int
    color_trc: int
    colorspace: int
    color_range: int
    crf: int | None
    preset: str | None


class _SegmentWriter:
    """Encodes frames into segment files of about `seconds` each, every one a fresh encoder
    session (so it starts with a keyframe and decodes on its own). A segment is renamed into
    place and recorded in the manifest only once it is complete."""

    def __init__(self, folder: Path, key: dict, done: list[_Segment], settings: _EncodeSettings, seconds: float,
                 damage: list[str]):
        self.folder, self.key, self.segments, self.settings = folder, key, done, settings
        self.damage = damage  # shared with the reader: recorded with every finished segment
        self.span = max(1, int(seconds / settings.time_base)) if seconds > 0 else None
        self.container: Any = None
        self.stream: Any = None
        self.current: _Segment | None = None

    def _open(self, pts: int) -> None:
        import av

        s = self.settings
        name = f"seg_{len(self.segments):05d}.mp4"
        self.current = _Segment(name, 0, pts, pts)
        self.container = av.open(str(self.folder / (name + ".partial")), "w", format="mp4")
        stream = self.container.add_stream(s.codec, rate=s.rate)
        stream.width, stream.height, stream.pix_fmt = s.width, s.height, s.pix_fmt
        stream.time_base = s.time_base
        ctx = stream.codec_context
        ctx.time_base = s.time_base
        if s.sar:
            ctx.sample_aspect_ratio = s.sar
        ctx.color_primaries, ctx.color_trc = s.color_primaries, s.color_trc
        ctx.colorspace, ctx.color_range = s.colorspace, s.color_range
        options: dict[str, str] = {}
        if s.crf is not None and s.codec in _CRF_CODECS:
            options["crf"] = str(s.crf)
            if s.codec == "libvpx-vp9":
                options["b"] = "0"
        elif s.crf is not None and s.codec in _CQ_CODECS:
            options["cq"] = str(s.crf)
        if s.preset and s.codec in _PRESET_CODECS and (s.codec != "libsvtav1" or s.preset.isdigit()):
            options["preset"] = s.preset  # SVT-AV1 takes only numbers (0-13): x264 names are left out
        stream.options = options
        self.stream = stream

    def write(self, pts: int, frame: Any) -> None:
        """`frame`: an av.VideoFrame in the encoder's pixel format."""
        if self.current is not None and self.span is not None and pts - self.current.first_pts >= self.span:
            self.close_segment()
        if self.current is None:
            self._open(pts)
        frame.pts = pts
        frame.time_base = self.settings.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.current.frames += 1
        self.current.last_pts = pts

    def close_segment(self) -> None:
        if self.current is None:
            return
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        self.container = None
        os.replace(self.folder / (self.current.file + ".partial"), self.folder / self.current.file)
        self.segments.append(self.current)
        _write_manifest(self.folder, self.key, self.segments, self.damage)
        self.current = None

    def abort(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except Exception:  # already failing: the partial segment is removed below
                pass
            self.container = None
        if self.current is not None:
            (self.folder / (self.current.file + ".partial")).unlink(missing_ok=True)
            self.current = None


# --- the final mux -----------------------------------------------------------------------------

def _audio_encoder_for(extension: str) -> str:
    return _AUDIO_FALLBACK.get(extension.lower(), "aac")


def _packets_in_time(packet_sources: list[Iterator[Any]]) -> Iterator[Any]:
    """Merge packet iterators by decode time (dts, else pts, in seconds), so the muxer gets them
    interleaved without buffering whole streams."""
    def keyed(index: int, packets: Iterator[Any]) -> Iterator[tuple[float, int, Any]]:
        for packet in packets:
            stamp = packet.dts if packet.dts is not None else packet.pts
            yield (float(stamp * packet.time_base) if stamp is not None else -math.inf, index, packet)

    for _t, _i, packet in heapq.merge(*(keyed(i, p) for i, p in enumerate(packet_sources)),
                                      key=lambda item: (item[0], item[1])):
        yield packet


def _monotonic_dts(packets: Iterator[Any]) -> Iterator[Any]:
    """Segments are separate encoder sessions: each starts with decode times a little before its
    first presentation time (B-frame delay). Where one would not come after the previous
    segment's last decode time, it is moved just after it (never past its presentation time), as
    muxers need strictly increasing decode times."""
    last: Fraction | None = None
    for packet in packets:
        if packet.dts is not None:
            dts = packet.dts * packet.time_base
            if last is not None and dts <= last:
                fixed = int(last / packet.time_base) + 1
                if packet.pts is not None:
                    fixed = min(fixed, packet.pts)
                packet.dts = fixed
                dts = fixed * packet.time_base
            last = dts
        yield packet


def _annex_b(packets: Iterator[Any], name: str, template: Any, out_stream: Any) -> Iterator[Any]:
    """H.264 / HEVC packets from the MP4 segments are length-prefixed; AVI stores start codes."""
    from av.bitstream import BitStreamFilterContext

    bsf = BitStreamFilterContext(name, template, out_stream)
    for packet in packets:
        for filtered in bsf.filter(packet):
            filtered.stream = out_stream
            yield filtered
    for filtered in bsf.filter(None):
        filtered.stream = out_stream
        yield filtered


def _copy_packets(container: Any, stream: Any, out_stream: Any) -> Iterator[Any]:
    for packet in container.demux(stream):
        if packet.size == 0 or packet.dts is None and packet.pts is None:
            continue
        packet.stream = out_stream
        yield packet


class _AudioTranscoder:
    """Decode one input audio stream, resample to what the encoder takes, encode."""

    def __init__(self, stream: Any, out_stream: Any):
        import av

        ctx = out_stream.codec_context
        self.stream, self.out_stream = stream, out_stream
        self.resampler = av.AudioResampler(format=ctx.format.name, layout=ctx.layout.name, rate=ctx.sample_rate)

    def feed(self, packet: Any) -> list[Any]:
        import av

        try:
            frames = self.stream.codec_context.decode(packet)
        except av.FFmpegError:
            return []  # a damaged audio packet: a gap, as a player would play it
        return [p for frame in frames for r in self.resampler.resample(frame) for p in self.out_stream.encode(r)]

    def flush(self) -> list[Any]:
        packets = [p for r in self.resampler.resample(None) for p in self.out_stream.encode(r)]
        return packets + list(self.out_stream.encode(None))


def _source_packets(src: Any, copies: dict[int, Any], transcoders: dict[int, _AudioTranscoder]) -> Iterator[Any]:
    """One pass over `src`'s audio / subtitle streams: copied packets re-targeted to their output
    stream, transcoded ones encoded."""
    streams = [s for s in src.streams if s.index in copies or s.index in transcoders]
    if not streams:
        return
    for packet in src.demux(streams):
        index = packet.stream.index
        if index in transcoders:
            yield from transcoders[index].feed(packet)
        elif packet.size and not (packet.dts is None and packet.pts is None):
            packet.stream = copies[index]
            yield packet
    for transcoder in transcoders.values():
        yield from transcoder.flush()


def _container_format(suffix: str) -> str:
    return {".mkv": "matroska", ".m4v": "mp4", ".mov": "mov"}.get(suffix.lower(), suffix.lower().lstrip("."))


def _mux(source: Path, folder: Path, segments: list[_Segment], tmp: Path, target_suffix: str, info: VideoInfo,
         warn: Log) -> str:
    """Write `tmp` (container from `target_suffix`) = the segments' video + `source`'s audio and
    subtitles. Returns what happened to the audio. Any error raises (the caller reports it as a
    failure): a full disk is never taken for a container that refuses a codec, because what the
    container takes is asked up front (`supported_codecs`), not learnt from a failed write."""
    import av

    options = {"movflags": "+faststart"} if target_suffix.lower() in (".mp4", ".m4v", ".mov") else {}
    out = av.open(str(tmp), "w", format=_container_format(target_suffix), options=options)
    inputs: list[Any] = []
    src = None
    outcomes: list[str] = []
    try:
        inputs = [av.open(str(folder / s.file)) for s in segments]
        src = av.open(str(source))
        accepted = out.supported_codecs
        video_out = out.add_stream_from_template(inputs[0].streams.video[0])
        copies: dict[int, Any] = {}
        transcoders: dict[int, _AudioTranscoder] = {}
        for stream in src.streams.audio:
            name = stream.codec_context.name
            if name in accepted and name not in _COPY_MISTIMED.get(target_suffix.lower(), ()):
                copies[stream.index] = out.add_stream_from_template(stream)
                outcomes.append("copied")
                continue
            encoder = av.codec.Codec(_audio_encoder_for(target_suffix), "w")
            if encoder.canonical_name not in accepted:
                warn(f"warning: {source}: {target_suffix} takes neither {name} nor {encoder.canonical_name} "
                     "audio; that audio stream is dropped")
                outcomes.append("dropped")
                continue
            rates = encoder.audio_rates
            rate = stream.codec_context.sample_rate
            if rates and rate not in rates:
                rate = 48000 if 48000 in rates else max(rates)
            audio_out = out.add_stream(encoder.name, rate=rate)
            audio_out.layout = "stereo" if stream.codec_context.layout.nb_channels >= 2 else "mono"
            audio_out.format = encoder.audio_formats[0].name if encoder.audio_formats else "fltp"
            audio_out.bit_rate = 192000
            audio_out.time_base = Fraction(1, rate)
            transcoders[stream.index] = _AudioTranscoder(stream, audio_out)
            outcomes.append(f"re-encoded to {encoder.canonical_name}")
            warn(f"warning: {source}: {name} audio cannot be copied into {target_suffix}; re-encoded to "
                 f"{encoder.canonical_name}")
        for stream in src.streams.subtitles:
            name = stream.codec_context.name
            if name in accepted:
                copies[stream.index] = out.add_stream_from_template(stream)
            else:
                warn(f"warning: {source}: {target_suffix} does not take {name} subtitles; that stream is dropped")
        video = _monotonic_dts(packet for container in inputs
                               for packet in _copy_packets(container, container.streams.video[0], video_out))
        video_codec = inputs[0].streams.video[0].codec_context.codec.canonical_name
        if target_suffix.lower() == ".avi" and video_codec in _ANNEX_B_FILTERS:
            video = _annex_b(video, _ANNEX_B_FILTERS[video_codec], inputs[0].streams.video[0], video_out)
        for packet in _packets_in_time([video, _source_packets(src, copies, transcoders)]):
            out.mux(packet)
        out.close()
    except BaseException:
        try:
            out.close()
        except Exception:  # the write error that brought us here is the one reported
            pass
        raise
    finally:
        for container in inputs:
            container.close()
        if src is not None:
            src.close()
    if not info.audio:
        return "none in input"
    return ", ".join(sorted(set(outcomes)))


# --- the pipeline ------------------------------------------------------------------------------

@dataclass
class VideoResult:
    """What `upscale_video` did: frames in the output, nominal frame rate, output size (w, h),
    wall seconds, model seconds (time spent inside the backend), what happened to the audio
    (`copied`, `re-encoded to aac`, `re-encoded to opus`, `none in input`, `dropped`), frames
    run through the model by this call (fewer than `frames` after a resume), the frame it resumed
    after (0 = from the start), where the file was written, and whether it is partial."""

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


def _check_finite(batch: np.ndarray, source: Path, first_frame: int) -> None:
    if not np.isfinite(float(batch.sum())):  # one reduction: any NaN/Inf makes the sum non-finite
        bad = [i for i in range(len(batch)) if not np.isfinite(batch[i]).all()]
        raise NonFiniteOutput(f"{source}: the model's output has NaN/Inf values at frame {first_frame + bad[0]} "
                              "(a checkpoint with non-finite weights, or fp16 overflow that fp32 did not cure)")


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
    pix_fmt: str | None = None,
    hwaccel: str | None = None,
    allow_partial: bool = False,
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
    resume: bool = True,
    model_id: str = "",
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
            Sizes are rounded to even numbers for 4:2:0 chroma.
        codec, crf, preset: encoder (codec None: libx264, libvpx-vp9 for .webm; NVENC encoders
            take crf as -cq), constant quality, preset.
        pix_fmt: encoder pixel format (None: yuv420p, or yuv420p10le for a > 8-bit input when the
            encoder takes it).
        hwaccel: FFmpeg hardware decoder device type (`cuda` for NVDEC), None / "none": software.
        allow_partial: keep what decodes of a damaged input, as `NAME.partial.EXT`.
        segment_seconds: length of the resumable segments (0: one segment).
        resume: continue from finished segments of an interrupted run (False: start over).
        model_id: names the model in the resume key (a changed model never resumes old segments).
        progress: show a tqdm bar (frames, fps, ETA) on stderr.
        log: where warnings go (one line each).
    Returns:
        A `VideoResult`. Raises InputError (VideoDamaged) for an input that does not open or
        decode completely, NonFiniteOutput for NaN/Inf output, SRDeployError when encoding or
        writing fails; the final name is then absent.
    """
    import av
    from tqdm import tqdm

    source, target = Path(source), Path(target)
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    info = probe_video(source)
    if hwaccel and hwaccel != "none":
        _open_input(source, hwaccel).close()  # a device that does not open is said before any work
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log(message)

    codec = codec or default_codec(target.suffix)
    try:
        encoder = av.codec.Codec(codec, "w")
    except Exception:
        raise InputError(f"--codec {codec}: no such encoder in this FFmpeg build") from None
    if encoder.type != "video":
        raise InputError(f"--codec {codec}: not a video encoder")
    if encoder.canonical_name == "av1":  # PyAV reopens an AV1 segment with the libdav1d decoder's name,
        # which its stream template then looks up as an encoder: the segments could not be muxed.
        raise InputError(f"--codec {codec}: AV1 output is not supported yet (use libx264, libx265 or libvpx-vp9)")
    with av.open(os.devnull, "w", format=_container_format(target.suffix)) as probe_out:
        if encoder.canonical_name not in probe_out.supported_codecs:
            raise InputError(f"{target}: the {target.suffix} container does not take {encoder.canonical_name} "
                             f"video (--codec {codec})")
    formats = [f.name for f in encoder.video_formats or []]
    if pix_fmt is None:
        pix_fmt = "yuv420p10le" if info.bit_depth > 8 and "yuv420p10le" in formats else "yuv420p"
        if formats and pix_fmt not in formats:
            pix_fmt = formats[0]
    elif formats and pix_fmt not in formats:
        raise InputError(f"--pix-fmt {pix_fmt}: {codec} takes {', '.join(formats)}")
    deep = av.VideoFormat(pix_fmt).components[0].bits > 8 or info.bit_depth > 8
    decode_format = "rgb48le" if info.bit_depth > 8 else "rgb24"
    out_dtype = np.uint16 if av.VideoFormat(pix_fmt).components[0].bits > 8 else np.uint8
    rgb_out_format = "rgb48le" if out_dtype == np.uint16 else "rgb24"

    quarter = info.rotation in (90, 270)
    height, width = (info.width, info.height) if quarter else (info.height, info.width)
    factor = outscale if outscale is not None else backend.scale
    subsampled = "420" in pix_fmt or "422" in pix_fmt or "nv12" in pix_fmt
    out_h, out_w = (even_size if subsampled else (lambda h, w: (max(1, h), max(1, w))))(
        round(height * factor), round(width * factor))
    model_size = (height * backend.scale, width * backend.scale)
    size_hw = None if (out_h, out_w) == model_size else (out_h, out_w)
    sar = info.sar
    if sar and quarter:
        sar = 1 / sar
    if sar:  # keep the display aspect when the two sides were rounded differently
        sar = (sar * Fraction(width * out_h, height * out_w)).limit_denominator(65535)
    if tile is None:  # decided once, so every frame of the video is processed the same way
        tile = auto_tile_size(backend, height, width, overlap, batch_size)

    settings = _EncodeSettings(codec, out_w, out_h, pix_fmt, info.time_base, info.rate, sar, info.color_primaries,
                               info.color_trc, info.colorspace, info.color_range, crf, preset)
    key = _resume_key(source, {"encode": settings.__dict__, "model": model_id, "backend": backend.name,
                               "scale": backend.scale, "precision": backend.precision, "tile": tile,
                               "overlap": overlap, "segment_seconds": segment_seconds, "deep": deep})
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = segments_dir(target)
    done, damage = _read_manifest(folder, key) if resume and folder.is_dir() else ([], [])
    if not resume:
        shutil.rmtree(folder, ignore_errors=True)
    if damage and not allow_partial:  # seen by an earlier --allow-partial run, before the resume point
        shutil.rmtree(folder, ignore_errors=True)
        raise VideoDamaged(damage[0])
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.partial"):  # a segment cut short by a kill
        stale.unlink()
    resumed_from = sum(s.frames for s in done)
    resume_pts = done[-1].last_pts if done else None
    if done:
        log(f"{source}: resuming after frame {resumed_from} ({len(done)} finished segments in {folder.name})")

    step = max(1, round(1 / (info.rate * info.time_base)))
    state = _DecodeState(frames=resumed_from, damage=damage)
    writer = _SegmentWriter(folder, key, done, settings, segment_seconds, state.damage)
    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    upscaled: queue.Queue = queue.Queue(maxsize=_QUEUE_DEPTH)
    errors: list[BaseException] = []
    bar = tqdm(total=info.frames_estimate or None, initial=resumed_from, unit="frame", desc=source.name,
               file=sys.stderr, disable=not progress, dynamic_ncols=True, leave=False)
    colorspace, color_range = _sws_colorspace(info.colorspace), _sws_range(info.color_range)
    rotations = info.rotation // 90

    def reader() -> None:
        container = None
        try:
            container = _open_input(source, hwaccel)
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if resume_pts is not None:
                try:
                    container.seek(resume_pts, stream=stream, backward=True)
                except av.FFmpegError:
                    container.seek(0)
            batch, stamps = [], []
            for pts, frame in _timed(_decoded_frames(container, stream, source, state, allow_partial, warn), step):
                if resume_pts is not None and pts <= resume_pts:
                    continue
                rgb = frame.to_ndarray(format=decode_format, width=info.width, height=info.height,
                                       src_colorspace=colorspace, src_color_range=color_range)
                if rotations:
                    rgb = np.rot90(rgb, rotations)
                batch.append(rgb)
                stamps.append(pts)
                state.frames += 1
                duration = frame.duration if frame.duration else step
                state.last_end = float((pts + duration) * info.time_base)
                if len(batch) == batch_size:
                    _put(decoded, ("batch", (stamps, frames_to_model_input(batch))), stop)
                    batch, stamps = [], []
            if batch:
                _put(decoded, ("batch", (stamps, frames_to_model_input(batch))), stop)
            _put(decoded, ("end", None), stop)
        except _Stop:
            return
        except BaseException as exc:  # handed to the calling thread, which raises it
            errors.append(exc)
            stop.set()
        finally:
            if container is not None:
                container.close()

    def encoder_stage() -> None:
        try:
            while True:
                kind, payload = _get(upscaled, stop)
                if kind == "end":
                    writer.close_segment()
                    return
                stamps, batch = payload
                frames = model_output_to_frames(batch, size_hw, out_dtype)
                for pts, rgb in zip(stamps, frames):
                    frame = av.VideoFrame.from_ndarray(rgb, format=rgb_out_format)
                    frame = frame.reformat(format=pix_fmt, dst_colorspace=colorspace, dst_color_range=color_range)
                    frame.color_range, frame.colorspace = info.color_range, info.colorspace
                    frame.color_primaries, frame.color_trc = info.color_primaries, info.color_trc
                    writer.write(pts, frame)
                bar.update(len(frames))
        except _Stop:
            return
        except (av.FFmpegError, OSError) as exc:  # encoder or disk: a run-time failure, never bad input
            errors.append(SRDeployError(f"{target}: encoding or writing a segment in {folder} failed: {_cause(exc)}"))
            stop.set()
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    started = time.perf_counter()
    model_seconds = 0.0
    inferred = 0
    threads = [threading.Thread(target=reader, daemon=True, name="sr-deploy-decode"),
               threading.Thread(target=encoder_stage, daemon=True, name="sr-deploy-encode")]
    final_tmp: Path | None = None
    keep_segments = True
    try:
        for thread in threads:
            thread.start()
        try:
            while True:
                kind, payload = _get(decoded, stop)
                if kind == "end":
                    _put(upscaled, ("end", None), stop)
                    break
                stamps, batch = payload
                begin = time.perf_counter()
                result = upscale_batch(backend, batch, tile, overlap)
                model_seconds += time.perf_counter() - begin
                _check_finite(result, source, resumed_from + inferred)
                inferred += len(stamps)
                _put(upscaled, ("batch", (stamps, result)), stop)
        except _Stop:
            pass  # another stage failed: its error is raised below
        threads[1].join()
        threads[0].join()
        if errors:
            raise errors[0]
        if state.last_end is not None and info.end is not None:
            nominal = float(1 / info.rate)
            if info.end - state.last_end > 2 * nominal + 0.05:
                message = (f"{source}: damaged video: decoding stopped after {_clock(state.last_end)} "
                           f"(frame {state.frames}) of {_clock(info.end)}")
                if not allow_partial:
                    raise VideoDamaged(message)
                state.damage.append(message)
                warn(f"warning: {message}")
        segments = writer.segments
        if not segments:
            raise VideoDamaged(f"{source}: no decodable video frames")
        partial = bool(state.damage)
        if len(state.damage) > 1:
            warn(f"warning: {source}: {len(state.damage)} places did not decode; the partial output skips them")
        final = partial_output_path(target) if partial else target
        final_tmp = partial_path(final)
        try:
            audio = _mux(source, folder, segments, final_tmp, target.suffix, info, warn)
        except (av.FFmpegError, OSError) as exc:
            raise SRDeployError(f"{final}: writing the output failed: {_cause(exc)}") from None
        os.replace(final_tmp, final)
        final_tmp = None
        keep_segments = False
    except InputError:
        keep_segments = False  # the input will not get better: nothing to resume
        raise
    except NonFiniteOutput:
        keep_segments = False  # another model or precision is needed: a different resume key
        raise
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
        writer.abort()
        bar.close()
        if final_tmp is not None:
            final_tmp.unlink(missing_ok=True)
        if not keep_segments:
            shutil.rmtree(folder, ignore_errors=True)
    frames = sum(s.frames for s in segments)
    return VideoResult(frames, float(info.rate), (out_w, out_h), time.perf_counter() - started, model_seconds,
                       audio, warnings, frames_inferred=inferred, resumed_from=resumed_from, path=final,
                       partial=partial)

