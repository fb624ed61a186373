"""What an input video is: its first video stream's geometry, timing, colour, rotation, streams."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import InputError
from .common import VideoDamaged, cause


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about an input's first video stream.

    width, height: coded size (before rotation). time_base: of the stream's timestamps. rate:
    nominal (average) frame rate, for the encoder's rate control only. start / end: seconds of the
    stream per the container (end None when unknown). sar: sample aspect ratio (0 = unknown).
    bit_depth: bits per luma sample. colour fields: FFmpeg's enum values (AVCOL_*). rotation:
    degrees counter-clockwise the player rotates by (a multiple of 90). mirrored: the display
    matrix also flips the picture (`upright` applies both). audio / subtitles: codec names of
    those streams. interlaced: the first frame is flagged interlaced. alpha: the stream has an
    alpha channel (a yuva pixel format, or VP9's alpha_mode).
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
    mirrored: bool = False
    interlaced: bool = False
    alpha: bool = False


def hardware_decoder(hwaccel: str) -> Any:
    """PyAV's `HWAccel` for the FFmpeg device type `hwaccel` (``cuda``: NVDEC); InputError when this
    FFmpeg build lacks it."""
    from av.codec.hwaccel import HWAccel, hwdevices_available

    if hwaccel not in hwdevices_available():
        raise InputError(
            f"--hwaccel {hwaccel}: not in this FFmpeg build (it has: {', '.join(hwdevices_available()) or 'none'})"
        )
    return HWAccel(device_type=hwaccel, allow_software_fallback=True)


def check_hwaccel(hwaccel: str | None) -> None:
    """InputError unless the decoding device `hwaccel` opens on this machine (`cuda` without an
    NVIDIA GPU and driver does not): said once, before any model is loaded, not per video."""
    import av

    if not hwaccel or hwaccel == "none":
        return
    try:
        hardware_decoder(hwaccel).create(av.codec.Codec("h264", "r"))
    except NotImplementedError:  # h264 has no config for this device (qsv, drm...): each video's open says
        return
    except (OSError, av.FFmpegError) as exc:
        raise InputError(
            f"--hwaccel {hwaccel}: the decoding device does not open on this machine ({cause(exc)}); "
            "without --hwaccel videos are decoded in software"
        ) from None


def open_input(source: Path, hwaccel: str | None = None) -> Any:
    import av

    kwargs: dict[str, Any] = {}
    if hwaccel and hwaccel != "none":
        kwargs["hwaccel"] = hardware_decoder(hwaccel)
    try:
        return av.open(str(source), "r", **kwargs)
    except (av.FFmpegError, OSError, ValueError) as exc:
        if not kwargs:
            raise _open_error(source, exc) from None
        raise InputError(
            f"--hwaccel {hwaccel}: {source} does not open with it ({cause(exc)}); without "
            "--hwaccel it is decoded in software"
        ) from None


def _open_error(source: Path, exc: BaseException) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError(f"{source}: no such file")
    return InputError(f"{source}: cannot open as a video ({cause(exc)})")


def probe_video(source: str | Path) -> VideoInfo:
    """Read `source`'s header and its first frame. Raises InputError when it has no video stream
    or its first frame does not decode."""
    import av

    source = Path(source)
    container = open_input(source)
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
            raise VideoDamaged(f"{source}: the first video frame does not decode ({cause(exc)})") from None
        if first is None:
            raise VideoDamaged(f"{source}: no decodable video frames")
        pix_fmt = first.format.name
        bit_depth = max((c.bits for c in first.format.components), default=8)
        sar = Fraction(ctx.sample_aspect_ratio) if ctx.sample_aspect_ratio else Fraction(0)
        estimate = stream.frames or (round((end - start) * rate) if end else 0)
        return VideoInfo(
            width=first.width,
            height=first.height,
            time_base=time_base,
            rate=rate,
            start=start,
            end=end,
            frames_estimate=estimate,
            sar=sar,
            pix_fmt=pix_fmt,
            bit_depth=bit_depth,
            color_primaries=int(first.color_primaries),
            color_trc=int(first.color_trc),
            colorspace=int(first.colorspace),
            color_range=int(first.color_range),
            rotation=round((first.rotation or 0) / 90) * 90 % 360,
            audio=tuple(s.codec_context.name for s in container.streams.audio),
            subtitles=tuple(s.codec_context.name for s in container.streams.subtitles),
            mirrored=_flips(_display_matrix(first)),
            interlaced=bool(first.interlaced_frame),
            alpha=any(c.is_alpha for c in first.format.components) or stream.metadata.get("alpha_mode") == "1",
        )
    finally:
        container.close()


def _display_matrix(frame: Any) -> tuple[int, ...] | None:
    """The frame's display matrix (9 int32: 16.16 fixed point, the last column 2.30), or None."""
    import numpy as np

    for side in frame.side_data:
        if getattr(side.type, "name", "") == "DISPLAYMATRIX" and len(bytes(side)) == 36:
            return tuple(int(v) for v in np.frombuffer(bytes(side), dtype="<i4"))
    return None


def _flips(matrix: tuple[int, ...] | None) -> bool:
    """Whether the display matrix (None: there is none) mirrors the picture (a negative determinant)."""
    return matrix is not None and matrix[0] * matrix[4] - matrix[1] * matrix[3] < 0


def upright(rgb: Any, info: VideoInfo) -> Any:
    """The frame `rgb` (HWC) as a player shows it, as ffmpeg's autorotate does: turned by
    `info.rotation` (counter-clockwise), and for a mirroring display matrix flipped as well (a
    mirror's matrix reads as a rotation of the flipped axis: hflip alone is "-180 degrees")."""
    import numpy as np

    if not info.mirrored:
        return np.rot90(rgb, info.rotation // 90) if info.rotation else rgb
    # ffmpeg (fftools, autorotate): 0 -> vflip, 180 -> hflip, 90 -> transpose, 270 -> anti-transpose,
    # in its clockwise angle, here counter-clockwise: 0 -> vflip, 180 -> hflip, 270 / 90 swapped.
    return {
        0: lambda a: a[::-1],
        180: lambda a: a[:, ::-1],
        270: lambda a: a.swapaxes(0, 1),
        90: lambda a: np.rot90(a, -1)[::-1],
    }[info.rotation](rgb)


def container_tag(source: str | Path | BinaryIO, tag: str) -> str | None:
    """The container-level tag `tag` of a video file or a seekable binary file object (``comment``:
    how an output was made), read from its header, whatever its case (Matroska and WebM store
    ``COMMENT``); None when it has none or does not open."""
    import av

    try:
        # probe no stream data: the tags are in the header (an object in a store is read in ranges)
        where = source if hasattr(source, "read") else str(source)
        with av.open(where, "r", options={"probesize": "32", "analyzeduration": "0"}) as container:
            tags = container.metadata
    except (av.FFmpegError, OSError, ValueError):
        return None
    return next((value for key, value in tags.items() if key.lower() == tag.lower()), None)


def sws_colorspace(colorspace: int) -> str:
    """FFmpeg's AVCOL_SPC_* -> the swscale matrix name PyAV's reformatter takes. Unspecified maps
    to swscale's default (BT.601) on both the decode and the encode side, so they match."""
    return {1: "itu709", 4: "fcc", 5: "itu601", 6: "smpte170m", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}.get(
        colorspace, "default"
    )


def sws_range(color_range: int) -> str:
    """AVCOL_RANGE_JPEG (2) is full range; anything else is limited ("MPEG") range."""
    return "JPEG" if color_range == 2 else "MPEG"
