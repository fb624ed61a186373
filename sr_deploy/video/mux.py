"""The final mux: the segments' video and the input's audio / subtitles, per container."""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from ..errors import SRDeployError
from ..imaging import partial_path
from .common import Log, cause
from .common import container as container_rules
from .probe import VideoInfo
from .segments import Segment

_ANNEX_B_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
# Input container tags the output does not take over: those that describe the input file itself
# (the muxer writes the output's own: its encoder, which AVI calls `software`, the MP4 / MOV
# brands) and ``comment``, which sr-deploy writes with how the output was made (read back by the
# skip rule).
# `timecode` too: MP4 / MOV keep theirs in a track that is not carried, so Matroska's tag is not either
# (the MP4 muxer would make a timecode track of it): one rule for every container.
_NOT_CARRIED = frozenset(
    {"encoder", "software", "comment", "major_brand", "minor_version", "compatible_brands", "timecode"}
)


def carried_tags(src: Any) -> dict[str, str]:
    """The input container's tags that its output keeps (creation_time, title, ...): all but those
    in `_NOT_CARRIED`, whatever their case (Matroska writes ``ENCODER``, ``COMMENT``)."""
    return {key: value for key, value in src.metadata.items() if key.lower() not in _NOT_CARRIED}


def _keep_stream_facts(stream: Any, out_stream: Any, video: bool = False) -> None:
    """`out_stream` (a copy or re-encoding of the input's `stream`, or with `video` the upscaled
    video) keeps its language and title and its disposition (default, forced, ...; the video only
    its default flag: the others, a cover picture, a still image, describe the input's coding).
    Other stream tags describe the input file (handler, encoder, the track's creation time) and
    are the muxer's to write."""
    from av.stream import Disposition

    tags = {key.lower(): value for key, value in stream.metadata.items()}
    # MOV stores a track's title in its `name` box, and FFmpeg's MOV demuxer names it so; every
    # muxer reads the title from `title`
    title = tags.get("title") or tags.get("name")
    kept = {"language": tags.get("language"), "title": title}
    out_stream.metadata.update({key: value for key, value in kept.items() if value})
    out_stream.disposition = stream.disposition & Disposition.default if video else stream.disposition


def _packets_in_time(packet_sources: list[Iterator[Any]]) -> Iterator[Any]:
    """Merge packet iterators by decode time (dts, else pts, in seconds), so the muxer gets them
    interleaved without buffering whole streams."""

    def keyed(index: int, packets: Iterator[Any]) -> Iterator[tuple[float, int, Any]]:
        for packet in packets:
            stamp = packet.dts if packet.dts is not None else packet.pts
            yield (float(stamp * packet.time_base) if stamp is not None else -math.inf, index, packet)

    for _t, _i, packet in heapq.merge(
        *(keyed(i, p) for i, p in enumerate(packet_sources)), key=lambda item: (item[0], item[1])
    ):
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


def container_format(suffix: str) -> str:
    return container_rules(suffix).format


# FFmpeg's default layout per channel count (av_channel_layout_default).
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def _name_channel_layout(copied: Any) -> None:
    """Give a copied audio stream whose layout is only a channel count (``2 channels``: PCM from
    Matroska) the default layout of that count (stereo), as ffmpeg guesses it: the MP4 muxer
    refuses an unspecified layout ("Invalid argument"), which failed the whole video."""
    layout = copied.codec_context.layout
    if layout.name == f"{layout.nb_channels} channels" and layout.nb_channels in _DEFAULT_LAYOUTS:
        copied.codec_context.layout = _DEFAULT_LAYOUTS[layout.nb_channels]


def _not_carried(src: Any) -> list[str]:
    """What the output leaves out of `src`: every stream but the first video (the one upscaled),
    the audio and the subtitles (said where they are dropped): other video streams and cover art,
    attachments (a Matroska file's subtitle fonts), data tracks (a QuickTime timecode)."""
    first = src.streams.video[0].index
    left = []
    for stream in src.streams:
        if stream.type in ("audio", "subtitle") or stream.index == first:
            continue
        codec = getattr(getattr(stream, "codec_context", None), "name", None)
        if stream.type == "attachment":
            left.append(f"attachment {stream.metadata.get('filename') or codec or ''}".strip())
        elif stream.type == "video":
            # AV_DISPOSITION_ATTACHED_PIC (MP4), or one JPEG / PNG picture (Matroska's cover art)
            picture = stream.disposition & 1024 or (codec in ("mjpeg", "png") and stream.frames <= 1)
            left.append(f"{'cover picture' if picture else 'video'} ({codec})")
        else:
            what = "timecode" if "timecode" in stream.metadata else codec or stream.codec_tag or "?"
            left.append(f"{stream.type} ({what})")
    return left


def _audio_streams(
    src: Any, out: Any, rules: Any, source: Path, target_suffix: str, warn: Log
) -> tuple[dict[int, Any], dict[int, _AudioTranscoder], list[str]]:
    """The output's audio streams for `src`'s: copied where the container takes the codec (and
    its timing), else re-encoded to the container's fallback codec, else dropped with a warning.
    Returns (copied streams, transcoders, what happened to each) by input stream index."""
    import av

    accepted = out.supported_codecs
    outcomes: list[str] = []
    copies: dict[int, Any] = {}
    transcoders: dict[int, _AudioTranscoder] = {}
    for stream in src.streams.audio:
        name = stream.codec_context.name
        if name in accepted and name not in rules.mistimed_audio_copies:
            copies[stream.index] = out.add_stream_from_template(stream)
            _keep_stream_facts(stream, copies[stream.index])
            _name_channel_layout(copies[stream.index])
            outcomes.append("copied")
            continue
        encoder = av.codec.Codec(rules.audio_fallback, "w")
        if encoder.canonical_name not in accepted:
            warn(
                f"warning: {source}: {target_suffix} takes neither {name} nor {encoder.canonical_name} "
                "audio; that audio stream is dropped"
            )
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
        _keep_stream_facts(stream, audio_out)
        transcoders[stream.index] = _AudioTranscoder(stream, audio_out)
        outcomes.append(f"re-encoded to {encoder.canonical_name}")
        warn(
            f"warning: {source}: {name} audio cannot be copied into {target_suffix}; re-encoded to "
            f"{encoder.canonical_name}"
        )
    return copies, transcoders, outcomes


def mux(
    source: Path,
    folder: Path,
    segments: list[Segment],
    tmp: Path,
    target_suffix: str,
    info: VideoInfo,
    warn: Log,
    tags: dict[str, str] | None = None,
) -> str:
    """Write `tmp` (container from `target_suffix`) = the segments' video + `source`'s audio and
    subtitles, with `source`'s container tags (`carried_tags`) and the streams' language, title and
    disposition, and the container tags `tags` over them (``comment``: how it was made). Returns what
    happened to the audio. Any error raises (the caller reports it as a failure): a full disk is
    never taken for a container that refuses a codec, because what the container takes is asked up
    front (`supported_codecs`), not learnt from a failed write."""
    import av

    rules = container_rules(target_suffix)  # the container table's row: its muxer and audio rules
    options = {"movflags": "+faststart"} if rules.faststart else {}
    if rules.bitexact:  # no random IDs or date: the same job, the same bytes
        options["fflags"] = "+bitexact"
    out = av.open(str(tmp), "w", format=container_format(target_suffix), options=options)
    inputs: list[Any] = []
    src = None
    try:
        inputs = [av.open(str(folder / s.file)) for s in segments]
        src = av.open(str(source))
        # from the input itself, so every path that writes a video (the local run, the join of
        # --ray pieces, stored pieces) gives the same tags; ours (`tags`) over the input's
        out.metadata.update(carried_tags(src))
        out.metadata.update(tags or {})
        accepted = out.supported_codecs
        video_out = out.add_stream_from_template(inputs[0].streams.video[0])
        if rules.hevc_tag and video_out.codec_context.codec.canonical_name == "hevc":
            video_out.codec_tag = rules.hevc_tag
        _keep_stream_facts(src.streams.video[0], video_out, video=True)
        copies, transcoders, outcomes = _audio_streams(src, out, rules, source, target_suffix, warn)
        for stream in src.streams.subtitles:
            name = stream.codec_context.name
            if name in accepted:
                copies[stream.index] = out.add_stream_from_template(stream)
                _keep_stream_facts(stream, copies[stream.index])
            else:
                warn(f"warning: {source}: {target_suffix} does not take {name} subtitles; that stream is dropped")
        left = _not_carried(src)
        if left:
            warn(f"warning: {source}: not carried over to the output: {', '.join(left)}")
        video = _monotonic_dts(
            packet for container in inputs for packet in _copy_packets(container, container.streams.video[0], video_out)
        )
        video_codec = inputs[0].streams.video[0].codec_context.codec.canonical_name
        if rules.annex_b and video_codec in _ANNEX_B_FILTERS:
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


def write_output(
    final: Path,
    source: Path,
    folder: Path,
    segments: list[Segment],
    target_suffix: str,
    info: VideoInfo,
    warn: Log,
    tags: dict[str, str] | None = None,
) -> str:
    """`mux` into a hidden temporary beside `final`, then rename it to `final`: the only way a
    finished video gets its name. A write error is a run-time failure naming `final`. Returns
    what happened to the audio."""
    import av

    tmp = partial_path(final)
    try:
        audio = mux(source, folder, segments, tmp, target_suffix, info, warn, tags)
        os.replace(tmp, final)
    except (av.FFmpegError, OSError) as exc:
        raise SRDeployError(f"{final}: writing the output failed: {cause(exc)}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return audio
