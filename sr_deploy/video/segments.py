"""Resumable work: independently decodable segment files and the manifest that records them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..errors import InputError
from .common import CQ_CODECS, ENCODER_THREADS, cause, encoder_options

_MANIFEST = "manifest.json"
_MANIFEST_VERSION = 1


# x264's and x265's own checks only log (straight to stderr) and clamp: their limits, checked here.
_X26X = frozenset({"libx264", "libx264rgb", "libx265"})
_X26X_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
_X26X_MAX_CRF = 51


def check_encoder_options(codec: str, crf: int | None, preset: str | None, open_nvenc: bool = False) -> None:
    """Check --crf and --preset against the encoder `codec` before any model is loaded or frame
    decoded (InputError, exit 2), not at the first segment: x264 / x265 by their limits, other
    encoders by opening them once on a small picture with the options a segment would get. An
    encoder that is missing or not a video one is left to `output.plan_output`, which says so.
    NVENC opens only on a machine with an NVIDIA GPU and driver: it is opened only when asked
    (`open_nvenc`: by the process that will encode, once it knows it has videos to do)."""
    import av

    if codec in _X26X:
        if preset is not None and preset not in _X26X_PRESETS:
            raise InputError(f"--preset {preset}: {codec} takes {', '.join(_X26X_PRESETS)}")
        if crf is not None and not 0 <= crf <= _X26X_MAX_CRF:
            raise InputError(f"--crf {crf}: {codec} takes 0 to {_X26X_MAX_CRF}")
        return
    options = encoder_options(codec, crf, preset)
    try:
        encoder = av.codec.Codec(codec, "w")
        if encoder.type != "video" or "av1" in codec:  # AV1 output is refused by output.plan_output
            return
        if codec in CQ_CODECS and not open_nvenc:
            return
        if not options and codec not in CQ_CODECS:
            return
        context = av.CodecContext.create(encoder)
        # 256x256: NVENC's smallest picture is larger than 64x64 on some GPUs
        context.width, context.height, context.time_base = 256, 256, Fraction(1, 25)
        context.pix_fmt = encoder.video_formats[0].name if encoder.video_formats else "yuv420p"
        context.options = options
    except Exception:  # an unknown name (PyAV raises its own error): output.plan_output says so
        return
    try:
        context.open()
    except av.FFmpegError as exc:
        device_error = _open_error(encoder, context, {}) if codec in CQ_CODECS else None
        if device_error is not None:  # it does not open even without the options: the device
            raise InputError(
                f"--codec {codec}: the encoder does not open on this machine ({cause(device_error)}): NVENC "
                "needs an NVIDIA GPU with video encoders and its driver; leave --codec out for libx264 / libx265"
            ) from None
        alone = {  # each option as the encoder gets it (--crf is NVENC's cq, VP9's crf with b=0)
            f"--crf {crf}": encoder_options(codec, crf, None),
            f"--preset {preset}": encoder_options(codec, None, preset),
        }
        given = {text: subset for text, subset in alone.items() if subset}
        refused = [text for text, subset in given.items() if _open_error(encoder, context, subset)]
        raise InputError(f"{' '.join(refused or given)}: the {codec} encoder refuses it ({cause(exc)})") from None


def _open_error(encoder: Any, like: Any, options: dict[str, str]) -> Exception | None:
    """The error of opening `encoder` with `options` on a picture the size and format of `like`'s;
    None when it opens."""
    import av

    context = av.CodecContext.create(encoder)
    context.width, context.height, context.time_base = like.width, like.height, like.time_base
    context.pix_fmt, context.options = like.pix_fmt, options
    try:
        context.open()
    except av.FFmpegError as exc:
        return exc
    return None


@dataclass
class Segment:
    file: str
    frames: int
    first_pts: int
    last_pts: int


def read_manifest(folder: Path, key: dict) -> tuple[list[Segment], list[str]]:
    """The finished segments recorded in `folder` for this `key`, and the damage seen while
    decoding them (so a resumed run still knows its input was damaged before the resume point);
    ([], []) and the folder emptied when there is none, it is unreadable, or it was made for
    another input / model / setting."""
    try:
        data = json.loads((folder / _MANIFEST).read_text())
        if data.get("key") != key:
            raise ValueError("made for other settings")
        segments = [Segment(**s) for s in data["segments"]]
        if not all((folder / s.file).is_file() for s in segments):
            raise ValueError("a segment is missing")
        return segments, [str(m) for m in data.get("damage", [])]
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(folder, ignore_errors=True)
        return [], []


def write_manifest(folder: Path, key: dict, segments: list[Segment], damage: list[str]) -> None:
    tmp = folder / (_MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"key": key, "segments": [s.__dict__ for s in segments], "damage": damage}, indent=1))
    os.replace(tmp, folder / _MANIFEST)


def resume_key(source: Path, settings: dict) -> dict:
    """What must not change between an interrupted run and its resumption."""
    stat = source.stat()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {
        "version": _MANIFEST_VERSION,
        "source": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "settings": digest,
    }


@dataclass(frozen=True)
class EncodeSettings:
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


class SegmentWriter:
    """Encodes frames into segment files of about `seconds` each, every one a fresh encoder
    session (so it starts with a keyframe and decodes on its own). A segment is renamed into
    place and recorded in the manifest only once it is complete."""

    def __init__(
        self, folder: Path, key: dict, done: list[Segment], settings: EncodeSettings, seconds: float, damage: list[str]
    ):
        self.folder, self.key, self.segments, self.settings = folder, key, done, settings
        self.damage = damage  # shared with the reader: recorded with every finished segment
        self.span = max(1, int(seconds / settings.time_base)) if seconds > 0 else None
        self.container: Any = None
        self.stream: Any = None
        self.current: Segment | None = None

    def _open(self, pts: int) -> None:
        import av

        s = self.settings
        name = f"seg_{len(self.segments):05d}.mp4"
        self.current = Segment(name, 0, pts, pts)
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
        stream.options = encoder_options(s.codec, s.crf, s.preset)
        ctx.thread_count = ENCODER_THREADS  # the same bytes on every machine
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
        write_manifest(self.folder, self.key, self.segments, self.damage)
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
