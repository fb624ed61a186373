"""The tables of file knowledge that several layers read: image formats and video containers.

One row per kind of file; everything else derives from the rows (the suffix sets, the CLI's
choices, the encoder parameters, the container rules). A new image format is one row in
`IMAGE_FORMATS`; a new video container one row in `VIDEO_CONTAINERS`. (Model files have their own
table, `sr_deploy.model_file.MODEL_FILE_KINDS`, next to the readers it needs.)

Pure data: importing this module imports nothing else, so the CLI reads its choices from here
before any command runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageFormat:
    """One row of the image-format table: everything sr-deploy knows about a kind of image file.

    name: what `sr-deploy upscale --ext` calls it (when `ext_choice`).
    suffixes: its file suffixes, lower case, the first the one written.
    writes: sr-deploy writes it (`upscale` takes as inputs only what it can write, for `--ext same`);
        False: read only (datasets for `eval` and training).
    sixteen_bit, float32, alpha: the samples it stores besides 8-bit RGB / grey.
    quality: (OpenCV's write flag, by name; default) for a lossy format's quality (1..100); None:
        lossless (PNG, TIFF, BMP ignore `--quality`).
    orientation: OpenCV applies its EXIF orientation on reading (and it has no alpha to keep).
    ext_choice: offered by `sr-deploy upscale --ext`.
    text: where the file keeps text fields (how an output was made, `upscale`'s skip rule reads it
        back): ``"tEXt"`` PNG text chunks, ``"COM"`` JPEG comment segments; None: nowhere that
        sr-deploy writes (BMP, TIFF and WebP outputs do not record their model).
    max_side: the longest side its encoder writes (WebP 16383, JPEG 65500 in libjpeg); None: no
        bound below the memory's. `upscale` checks an output against it before the model runs.
    """

    name: str
    suffixes: tuple[str, ...]
    writes: bool = True
    sixteen_bit: bool = False
    float32: bool = False
    alpha: bool = False
    quality: tuple[str, int] | None = None
    orientation: bool = False
    ext_choice: bool = False
    text: str | None = None
    max_side: int | None = None


IMAGE_FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("png", (".png",), sixteen_bit=True, alpha=True, ext_choice=True, text="tEXt"),
    ImageFormat(
        "jpg",
        (".jpg", ".jpeg"),
        quality=("IMWRITE_JPEG_QUALITY", 95),
        orientation=True,
        ext_choice=True,
        text="COM",
        max_side=65500,
    ),
    ImageFormat("bmp", (".bmp",), alpha=True),
    ImageFormat("tiff", (".tif", ".tiff"), sixteen_bit=True, float32=True, alpha=True),
    # OpenCV: a WebP quality above 100 means lossless
    ImageFormat("webp", (".webp",), alpha=True, quality=("IMWRITE_WEBP_QUALITY", 95), ext_choice=True, max_side=16383),
    ImageFormat("pnm", (".ppm", ".pgm"), writes=False),
)

# Suffixes of the images `upscale` reads and writes; of every image sr-deploy reads (datasets).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(s for f in IMAGE_FORMATS if f.writes for s in f.suffixes)
DATASET_IMAGE_SUFFIXES: tuple[str, ...] = tuple(s for f in IMAGE_FORMATS for s in f.suffixes)
# What `sr-deploy upscale --ext` writes (`same`: the input's own format).
OUTPUT_IMAGE_FORMATS: tuple[str, ...] = tuple(f.name for f in IMAGE_FORMATS if f.ext_choice) + ("same",)
# Image files people have that sr-deploy neither reads nor writes: `-o x.gif` names a file it
# cannot write (not a folder to make), and a folder run says it left such inputs out.
FOREIGN_IMAGE_SUFFIXES: frozenset[str] = frozenset({".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico", ".svg"})


def image_format(path_or_suffix: str | Path) -> ImageFormat | None:
    """The table's row for a file name or suffix (case-insensitive), or None."""
    path = Path(path_or_suffix)
    suffix = (path.suffix or path.name).lower()  # Path(".png").suffix is "": a bare suffix
    return next((f for f in IMAGE_FORMATS if suffix in f.suffixes), None)


@dataclass(frozen=True)
class VideoContainer:
    """One row of the video-container table.

    suffixes: its file suffixes, lower case.
    format: FFmpeg's muxer name.
    codec: the video encoder used when `--codec` is not given.
    deep_codec: the one for input deeper than 8 bits (a phone's HDR or log video), where it is
        another: HEVC Main 10, which phones, TVs, browsers and Apple devices decode in hardware,
        where H.264 High 10 plays almost nowhere.
    audio_fallback: the audio encoder for input audio the container does not take as it is.
    mistimed_audio_copies: audio codecs the container lists as accepted but that a stream copy
        through PyAV mistimes (AVI needs the packets' frame size, which PyAV's stream template
        does not carry: the audio came out 0.75 s long for 4 s); re-encoded instead.
    faststart: the index is moved to the front (ISO media: plays while downloading).
    annex_b: H.264 / HEVC packets are converted from MP4's length prefixes to start codes.
    hevc_tag: the sample entry HEVC video is tagged with: Apple's players (QuickTime, iOS, Safari)
        play HEVC in MP4 / MOV only as ``hvc1``, where FFmpeg writes ``hev1`` by default.
    bitexact: the muxer is told ``fflags=+bitexact``: Matroska's writes random segment and track
        UIDs and the date otherwise, so one job gave other bytes on every run.
    """

    suffixes: tuple[str, ...]
    format: str
    codec: str = "libx264"
    deep_codec: str | None = "libx265"
    audio_fallback: str = "aac"
    mistimed_audio_copies: frozenset[str] = frozenset()
    faststart: bool = False
    annex_b: bool = False
    hevc_tag: str | None = None
    bitexact: bool = False


VIDEO_CONTAINERS: tuple[VideoContainer, ...] = (
    VideoContainer((".mp4", ".m4v"), "mp4", faststart=True, hevc_tag="hvc1"),
    VideoContainer((".mov",), "mov", faststart=True, hevc_tag="hvc1"),
    VideoContainer((".mkv",), "matroska", audio_fallback="libopus", bitexact=True),
    # WebM takes only VP8 / VP9 / AV1 video and Opus / Vorbis audio.
    VideoContainer((".webm",), "webm", codec="libvpx-vp9", deep_codec=None, audio_fallback="libopus", bitexact=True),
    VideoContainer(
        (".avi",),
        "avi",
        deep_codec=None,
        audio_fallback="libmp3lame",
        mistimed_audio_copies=frozenset({"aac", "opus", "vorbis"}),
        annex_b=True,
    ),
)

VIDEO_EXTENSIONS: frozenset[str] = frozenset(s for c in VIDEO_CONTAINERS for s in c.suffixes)


def video_container(path_or_suffix: str | Path) -> VideoContainer | None:
    """The table's row for a file name or suffix (case-insensitive), or None."""
    path = Path(path_or_suffix)
    suffix = (path.suffix or path.name).lower()
    return next((c for c in VIDEO_CONTAINERS if suffix in c.suffixes), None)
