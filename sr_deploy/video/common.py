"""Constants, errors and small helpers shared by the video modules."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, SRDeployError
from ..util.log import Progress

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm"})
DEFAULT_CODEC = "libx264"
DEFAULT_CRF = 18
DEFAULT_PRESET = "medium"
DEFAULT_VIDEO_BATCH = 4
DEFAULT_SEGMENT_SECONDS = 2.0

Log = Progress  # the video modules' name for the package's progress callback type


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


def clock(seconds: float) -> str:
    """12.345 -> '0:00:12.345' (how ffmpeg shows times)."""
    minutes, secs = divmod(max(0.0, seconds), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:06.3f}"


def cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text
