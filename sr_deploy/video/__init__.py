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
  rotation and a mirror are applied to the pixels (as ffmpeg's autorotate does, `probe.upright`),
  so the output plays upright.
- **Damage is an error**: a decoder or demuxer error, or a decoded duration short of the
  stream's, raises `VideoDamaged` (an `InputError`: exit 2) naming the time and frame where
  decoding stopped; so does a frame the decoder concealed errors in (`frame.is_corrupt`), naming
  that frame. With `allow_partial` the frames that decode are kept (concealed ones as decoded) and
  the result is written as `NAME.partial.EXT`, never under the final name.
- **Audio and subtitles**: each stream is copied when the output container accepts its codec,
  else audio is re-encoded (Opus for WebM / MKV, AAC otherwise) and a subtitle stream is dropped
  with a warning. A write error (ENOSPC, EIO, EFBIG) anywhere is a failure, never a fallback.
- **Tags**: the input container's tags but those describing the input file (`encoder`, brands)
  and `comment` (ours: how the output was made), and each kept stream's language, title and
  disposition, are written by the final mux (`mux.carried_tags`), so every path has the same.
- **Resume**: the video is encoded in independently decodable segments (each a new encoder
  session, so each starts on a keyframe; MP4 files, which keep the B-frame decode times that NUT
  loses) of about `segment_seconds`, kept in a hidden folder
  beside the target (`.NAME.segments/`) with a manifest. A re-run with the same input, model and
  settings seeks to the last finished segment and goes on from there; the final mux copies the
  segments' packets and the input's audio into one file, so every frame is there once and the
  audio keeps its own timestamps. The folder is removed once the output is complete.
- **Non-finite output** (NaN / Inf) fails the file (`NonFiniteOutput`).

Modules: `probe` (what the input is), `decode` (damage and timestamps), `frames` (arrays <->
model batches), `segments` (resumable segment files and their manifest), `mux` (the final file,
audio and subtitles per container, from `sr_deploy.formats.VIDEO_CONTAINERS`), `held` (held and
duplicate frames reuse an earlier output), `pipeline` (`upscale_video(backend, source, target,
VideoOptions(...))`: the stages and the checks), `pieces` (a video cut into independently
upscaled pieces and joined again, for `--ray`).

Three stages run at once, joined by bounded queues (so memory stays at a few batches):

    reader thread   PyAV decode -> (N, 3, H, W) float32 RGB [0, 1] batches + their timestamps
    calling thread  backend (tiled when a frame does not fit, `sr_deploy.tiling.upscale_batch`)
    writer thread   clamp + round -> RGB uint8/uint16 -> YUV -> encoder -> segment files

Nothing is written under the final name until the file is complete: the mux writes a hidden
temporary file beside the target (`.NAME.partial.EXT`) and the last step is a rename.
"""

from .common import (
    CQ_CODECS,
    DEFAULT_CODEC,
    DEFAULT_CRF,
    DEFAULT_PRESET,
    DEFAULT_SEGMENT_SECONDS,
    DEFAULT_VIDEO_BATCH,
    VIDEO_EXTENSIONS,
    NonFiniteOutput,
    VideoDamaged,
    VideoOptions,
    default_codec,
    find_ffmpeg,
    is_video_path,
    partial_output_path,
    segments_dir,
)
from .frames import even_size, frames_to_model_input, model_output_to_frames
from .held import EXACT, HeldFrames, check_threshold, parse_threshold
from .pipeline import VideoResult, upscale_video
from .probe import VideoInfo, check_hwaccel, container_tag, probe_video
from .segments import check_encoder_options

__all__ = [
    "CQ_CODECS",
    "DEFAULT_CODEC",
    "DEFAULT_CRF",
    "DEFAULT_PRESET",
    "DEFAULT_SEGMENT_SECONDS",
    "DEFAULT_VIDEO_BATCH",
    "EXACT",
    "VIDEO_EXTENSIONS",
    "NonFiniteOutput",
    "VideoDamaged",
    "VideoInfo",
    "HeldFrames",
    "VideoOptions",
    "VideoResult",
    "check_encoder_options",
    "check_hwaccel",
    "check_threshold",
    "container_tag",
    "default_codec",
    "even_size",
    "find_ffmpeg",
    "frames_to_model_input",
    "is_video_path",
    "model_output_to_frames",
    "parse_threshold",
    "partial_output_path",
    "probe_video",
    "segments_dir",
    "upscale_video",
]
