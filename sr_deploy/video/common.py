"""Constants, errors and small helpers shared by the video modules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..errors import NonFiniteOutput as NonFiniteOutput  # re-exported: the video modules raise it
from ..formats import VIDEO_EXTENSIONS as VIDEO_EXTENSIONS  # re-exported: the package exports it
from ..formats import VideoContainer, video_container
from ..util.log import Progress
from ..util.text import first_line
from .held import EXACT

DEFAULT_CODEC = "libx264"
DEFAULT_CRF = 18
DEFAULT_PRESET = "medium"
DEFAULT_VIDEO_BATCH = 4
DEFAULT_SEGMENT_SECONDS = 2.0

Log = Progress  # the video modules' name for the package's progress callback type
# Input pixels of context on each side of a tile (= sr_deploy.tiling.DEFAULT_TILE_OVERLAP).
DEFAULT_OVERLAP = 16


# Threads of every video encoder, whatever the machine: x264, x265 and libvpx write other bytes
# with another thread count (measured: one job on 1 and on 2 CPUs gave two x264 files and two VP9
# files), and FFmpeg's default is the machine's cores, so two workers gave two files for one job.
# 8 keeps a GPU's 4K frames fed; on fewer cores the threads share them (no slower on 2 cores).
ENCODER_THREADS = 8
# x265 takes its threads from its own pool, sized by the machine unless named, and its frame threads.
X265_THREADS = f"pools={ENCODER_THREADS}:frame-threads=3"

# Codecs that take a constant-quality option (crf; NVENC calls it cq) and a preset.
CRF_CODECS = frozenset({"libx264", "libx264rgb", "libx265", "libvpx-vp9", "libsvtav1", "libaom-av1"})
CQ_CODECS = frozenset({"h264_nvenc", "hevc_nvenc", "av1_nvenc"})
PRESET_CODECS = frozenset({"libx264", "libx264rgb", "libx265", "libsvtav1"}) | CQ_CODECS


def encoder_options(codec: str, crf: int | None, preset: str | None) -> dict[str, str]:
    """The FFmpeg options a segment's encoder `codec` gets for --crf and --preset (each only where
    the encoder takes it); x265's fixed threads (`X265_THREADS`)."""
    options: dict[str, str] = {}
    if crf is not None and codec in CRF_CODECS:
        options["crf"] = str(crf)
        if codec == "libvpx-vp9":
            options["b"] = "0"
    elif crf is not None and codec in CQ_CODECS:
        options["cq"] = str(crf)
    if preset and codec in PRESET_CODECS and (codec != "libsvtav1" or preset.isdigit()):
        options["preset"] = preset  # SVT-AV1 takes only numbers (0-13): x264 names are left out
    if codec == "libx265":  # x265 prints its settings banner for every segment
        options["x265-params"] = f"log-level=error:{X265_THREADS}"
    return options


@dataclass(frozen=True)
class VideoOptions:
    """How `upscale_video` runs; the defaults are the CLI's.

    tile, overlap: as in `sr_deploy.tiling.upscale_tiled` (None: automatic; frames that fit are
        not tiled).
    memory_budget: bytes the automatic tile size may plan for (the job's, settled once by the
        driver); None: measured when the video starts.
    batch_size: frames per backend call.
    outscale: final size factor when it differs from the model's scale (None: the model's).
        Sizes are rounded to even numbers for 4:2:0 chroma.
    codec, crf, preset: encoder (codec None: libx264, libvpx-vp9 for .webm; NVENC encoders take
        crf as -cq), constant quality, preset.
    pix_fmt: encoder pixel format (None: yuv420p, or yuv420p10le for a > 8-bit input when the
        encoder takes it).
    hwaccel: FFmpeg hardware decoder device type (`cuda` for NVDEC), None / "none": software.
    allow_partial: keep what decodes of a damaged input, as `NAME.partial.EXT`.
    segment_seconds: length of the resumable segments (0: one segment).
    resume: continue from finished segments of an interrupted run (False: start over).
    model_id: names the model in the resume key (a changed model never resumes old segments).
    progress: show a tqdm bar (frames, fps, ETA) on stderr.
    dedup_threshold: held frames (`sr_deploy.video.held`): EXACT (default) reuses the output for a
        frame identical to the last one the model ran on, a number of dB also for frames at least
        that close (PSNR), None runs the model on every frame.
    max_pixels: a video whose frames have more pixels is refused before any frame is decoded;
        None: what fits in the memory available now (`pipeline.check_frame_size`).
    """

    tile: int | None = None
    memory_budget: int | None = None
    overlap: int = DEFAULT_OVERLAP
    batch_size: int = DEFAULT_VIDEO_BATCH
    outscale: float | None = None
    codec: str | None = None
    crf: int | None = DEFAULT_CRF
    preset: str | None = DEFAULT_PRESET
    pix_fmt: str | None = None
    hwaccel: str | None = None
    allow_partial: bool = False
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS
    resume: bool = True
    model_id: str = ""
    progress: bool = True
    dedup_threshold: float | None = EXACT
    max_pixels: int | None = None

    def recorded(self, extension: str, bit_depth: int = 8) -> dict[str, str]:
        """The settings that decide what a video output of `extension` is, as its record
        (`util.text.provenance`) names them, compared by the skip rule on a re-run: as given
        (``outscale=model``: the model's own scale), the encoder resolved for the container and an
        input of `bit_depth` bits, its crf and preset only where it takes them (``none``
        elsewhere)."""
        codec = self.codec or default_codec(extension, bit_depth)
        encoder = encoder_options(codec, self.crf, self.preset)  # what reaches the encoder; it ignores the rest
        return {
            "outscale": "model" if self.outscale is None else f"{self.outscale:.15g}",
            "codec": codec,
            "crf": encoder.get("crf", encoder.get("cq", "none")),
            "preset": encoder.get("preset", "none"),
            "pix_fmt": self.pix_fmt or "auto",
            "dedup": _threshold_name(self.dedup_threshold),
        }


class VideoDamaged(InputError):
    """The input video does not decode completely (decoder/demuxer error or short duration)."""


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


def container(extension: str) -> VideoContainer:
    """The container table's row for a suffix (`sr_deploy.formats.VIDEO_CONTAINERS`); a suffix
    that is not there is muxed by FFmpeg's muxer of that name, with the defaults."""
    return video_container(extension) or VideoContainer((extension.lower(),), extension.lower().lstrip("."))


def default_codec(extension: str, bit_depth: int = 8) -> str:
    """The container's own default encoder for an input of `bit_depth` bits: libvpx-vp9 for .webm
    (WebM takes only VP8/VP9/AV1), libx265 (HEVC Main 10) for a deeper input in MP4 / MOV / MKV,
    libx264 otherwise (`VideoContainer.codec`, `deep_codec`)."""
    row = container(extension)
    return row.deep_codec if bit_depth > 8 and row.deep_codec else row.codec


def _threshold_name(threshold: float | None) -> str:
    """A held-frame threshold as a record names it: ``off``, ``exact`` or the dB figure."""
    return "off" if threshold is None else "exact" if threshold == EXACT else f"{threshold:.15g}"


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
    """The first line of `exc` (or its type's name), uncut: what a video error says of its cause.
    An FFmpeg error (PyAV's `av.error.*`) is its text alone, without PyAV's errno and C function
    (``[Errno 1094995529] Invalid data found when processing input: 'avcodec_send_packet()'``)."""
    if type(exc).__module__ == "av.error" and getattr(exc, "strerror", None):
        return str(exc.strerror)
    return first_line(exc, limit=10_000)
