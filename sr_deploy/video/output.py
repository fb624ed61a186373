"""The output side of a video job: which encoder, pixel format, size and sample formats
(`plan_output`), checked against the FFmpeg build before any frame is decoded."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..backends.base import Backend
from ..errors import InputError
from .common import default_codec
from .frames import even_size
from .mux import container_format
from .probe import VideoInfo
from .segments import EncodeSettings


@dataclass(frozen=True)
class OutputPlan:
    """How the output is encoded: the encoder settings, the size the model's output is resized to
    (None: the model's own), and the sample formats on either side of the model."""

    settings: EncodeSettings
    size_hw: tuple[int, int] | None
    decode_format: str  # rgb24 or rgb48le: what the decoder hands to the model
    out_dtype: type  # np.uint8 or np.uint16: what the model's output is rounded to
    rgb_out_format: str  # rgb24 or rgb48le, matching out_dtype


def _choose_encoder(target: Path, codec: str | None, pix_fmt: str | None, bit_depth: int) -> tuple[str, str]:
    """(encoder name, pixel format), checked against FFmpeg: InputError for an unknown encoder, one
    the container refuses, AV1, or a pixel format the encoder does not take."""
    import av

    codec = codec or default_codec(target.suffix, bit_depth)
    try:
        encoder = av.codec.Codec(codec, "w")
    except Exception:  # UnknownCodecError, or a decoder-only name
        raise InputError(f"--codec {codec}: no such encoder in this FFmpeg build") from None
    if encoder.type != "video":
        raise InputError(f"--codec {codec}: not a video encoder")
    if encoder.canonical_name == "av1":  # PyAV reopens an AV1 segment with the libdav1d decoder's name,
        # which its stream template then looks up as an encoder: the segments could not be muxed.
        raise InputError(f"--codec {codec}: AV1 output is not supported yet (use libx264, libx265 or libvpx-vp9)")
    with av.open(os.devnull, "w", format=container_format(target.suffix)) as probe_out:
        if encoder.canonical_name not in probe_out.supported_codecs:
            raise InputError(
                f"{target}: the {target.suffix} container does not take {encoder.canonical_name} "
                f"video (--codec {codec})"
            )
    formats = [f.name for f in encoder.video_formats or []]
    if pix_fmt is None:
        pix_fmt = "yuv420p10le" if bit_depth > 8 and "yuv420p10le" in formats else "yuv420p"
        if formats and pix_fmt not in formats:
            pix_fmt = formats[0]
    elif formats and pix_fmt not in formats:
        raise InputError(f"--pix-fmt {pix_fmt}: {codec} takes {', '.join(formats)}")
    return codec, pix_fmt


# FFmpeg's AVCOL_SPC_* values used here
_SPC_RGB, _SPC_BT709, _SPC_SMPTE170M = 0, 1, 6


def output_matrix(input_colorspace: int, pix_fmt: str, height: int) -> int:
    """The colour matrix (AVCOL_SPC_*) to convert to and tag on the output: the input's, except
    that RGB-coded input (gbrp, matrix 0) encoded as YUV needs a real matrix, BT.709 from 720
    lines up and BT.601 (SMPTE 170M) below, as players assume for untagged video; tagging YUV
    as "RGB" mis-colours .mp4 and makes libvpx refuse .webm (issue 24)."""
    import av

    if input_colorspace == _SPC_RGB and not av.VideoFormat(pix_fmt).is_rgb:
        return _SPC_BT709 if height >= 720 else _SPC_SMPTE170M
    return input_colorspace


def plan_output(
    info: VideoInfo,
    backend: Backend,
    target: Path,
    *,
    codec: str | None,
    crf: int | None,
    preset: str | None,
    pix_fmt: str | None,
    outscale: float | None,
) -> OutputPlan:
    """The output's encoder, pixel format, size (even for subsampled chroma), sample aspect ratio
    (turned with a 90-degree rotation, adjusted so the display aspect survives rounding) and colour
    tags (the input's)."""
    import av

    codec, pix_fmt = _choose_encoder(target, codec, pix_fmt, info.bit_depth)
    deep_out = av.VideoFormat(pix_fmt).components[0].bits > 8
    quarter = info.rotation in (90, 270)
    height, width = (info.width, info.height) if quarter else (info.height, info.width)
    factor = outscale if outscale is not None else backend.scale
    if any(key in pix_fmt for key in ("420", "422", "nv12")):
        out_h, out_w = even_size(round(height * factor), round(width * factor))
    else:
        out_h, out_w = max(1, round(height * factor)), max(1, round(width * factor))
    model_size = (height * backend.scale, width * backend.scale)
    sar = info.sar
    if sar and quarter:
        sar = 1 / sar
    if sar:  # keep the display aspect when the two sides were rounded differently
        sar = (sar * Fraction(width * out_h, height * out_w)).limit_denominator(65535)
    settings = EncodeSettings(
        codec,
        out_w,
        out_h,
        pix_fmt,
        info.time_base,
        info.rate,
        sar,
        info.color_primaries,
        info.color_trc,
        output_matrix(info.colorspace, pix_fmt, out_h),
        info.color_range,
        crf,
        preset,
    )
    return OutputPlan(
        settings,
        None if (out_h, out_w) == model_size else (out_h, out_w),
        "rgb48le" if info.bit_depth > 8 else "rgb24",
        np.uint16 if deep_out else np.uint8,
        "rgb48le" if deep_out else "rgb24",
    )


def lost_on_output(source: Path, info: VideoInfo, plan: OutputPlan) -> list[str]:
    """Warnings for what of the input the output cannot keep: interlacing (the fields go through
    the model as one picture), an alpha channel, a bit depth above the output's."""
    import av

    notes = []
    if info.interlaced:
        notes.append(
            f"warning: {source}: interlaced; upscaled as progressive, so combing is upscaled too "
            "(deinterlace it first, e.g. ffmpeg -vf bwdif)"
        )
    if info.alpha:
        notes.append(f"warning: {source}: its alpha channel is not kept (video outputs are opaque)")
    out_bits = max((c.bits for c in av.VideoFormat(plan.settings.pix_fmt).components), default=8)
    if info.bit_depth > out_bits:
        notes.append(
            f"warning: {source}: {info.bit_depth}-bit input written as {out_bits}-bit {plan.settings.pix_fmt} "
            "(--pix-fmt chooses, e.g. yuv420p12le with libx265)"
        )
    return notes
