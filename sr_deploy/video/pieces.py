"""A video cut into pieces that upscale independently (on other machines), then joined in order.

`split_video` copies the packets of the input's video stream into keyframe-aligned pieces (no
re-encode, timestamps kept); each piece goes through `upscale_video` as a file of its own
(`piece_options`: one encoder session, no resume); `VideoPieces` keeps the finished pieces in the
target's hidden segments folder with `segments.py`'s manifest, so that a re-run with the same
input, model and settings sends only the missing ones; `VideoPieces.join` muxes them in order with
the input's audio by the local run's own final step (`mux.write_output`).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, SRDeployError
from ..util.files import atomic_write_bytes
from ..util.text import first_line, provenance
from .common import Log, VideoOptions, default_codec, segments_dir
from .mux import write_output
from .probe import VideoInfo, probe_video
from .segments import Segment, read_manifest, resume_key, write_manifest

# Pieces are MP4, like a local run's segments: MP4 keeps the stream's time base and B-frame decode
# times (NUT re-times both, and the final mux needs them).
PIECE_SUFFIX = ".mp4"
# Bumped when the pieces' layout changes: a manifest from another layout is not resumed.
_LAYOUT = 3


def piece_name(part: int) -> str:
    return f"piece-{part:05d}{PIECE_SUFFIX}"


def split_video(source: Path, folder: Path, seconds: float) -> list[tuple[Path, int]]:
    """Cut `source`'s first video stream into independently decodable pieces, copying packets.

    A piece starts at a keyframe: the first one at least `seconds` after the previous piece's
    start (`seconds` 0: one piece). Packets keep their timestamps and time base, so the frames of
    the pieces, in order, are the source's frames with their own presentation times. No audio.
    Returns [(piece file, packets in it)] in order. InputError when `source` does not demux.
    """
    import av

    folder.mkdir(parents=True, exist_ok=True)
    try:
        src = av.open(str(source))
    except (av.FFmpegError, OSError) as exc:
        raise InputError(f"{source}: cannot open as a video ({first_line(exc)})") from None
    pieces: list[tuple[Path, int]] = []
    out = out_stream = None
    start = 0
    try:
        if not src.streams.video:
            raise InputError(f"{source}: no video stream")
        stream = src.streams.video[0]
        span = max(1, int(seconds / stream.time_base)) if seconds > 0 else None
        for packet in src.demux(stream):
            if packet.size == 0 or (packet.pts is None and packet.dts is None):
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            if packet.is_keyframe and (out is None or (span is not None and stamp - start >= span)):
                if out is not None:
                    out.close()
                path = folder / piece_name(len(pieces))
                # keep every timestamp as it is: by default a muxer shifts a piece whose first dts is
                # negative (B-frames at the very start), which would move that piece against the others
                out = av.open(str(path), "w", format="mp4", options={"avoid_negative_ts": "disabled"})
                out_stream = out.add_stream_from_template(stream)
                out_stream.time_base = stream.time_base
                pieces.append((path, 0))
                start = stamp
            if out is None:
                continue  # packets before the first keyframe do not decode on their own
            packet.stream = out_stream
            out.mux(packet)
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + 1)
        if out is not None:
            out.close()
            out = None
    except av.FFmpegError as exc:
        raise InputError(f"{source}: cannot be cut into pieces ({first_line(exc)})") from None
    finally:
        if out is not None:
            out.close()
        src.close()
    if not pieces:
        raise InputError(f"{source}: no keyframe in the video stream")
    return pieces


def piece_options(options: VideoOptions, target_suffix: str, bit_depth: int) -> VideoOptions:
    """How one piece (of an input of `bit_depth` bits) is upscaled: encoded as the whole video
    would be for `target_suffix`, in one encoder session (one segment), never resumed (the pieces
    are the unit of resumption)."""
    codec = options.codec or default_codec(target_suffix, bit_depth)
    return dataclasses.replace(
        options, codec=codec, allow_partial=False, segment_seconds=0, resume=False, progress=False
    )


def with_input_codec(settings: dict, target_suffix: str, bit_depth: int) -> dict:
    """`settings` (`upscale.remote.piece_settings`, made before the input was probed) with the
    record's encoder the one the input's `bit_depth` gives when --codec was not given, as a local
    run records it."""
    if settings["options"].get("codec"):
        return settings
    return dict(settings, record=dict(settings["record"], codec=default_codec(target_suffix, bit_depth)))


def provenance_tags(settings: dict, source: Path) -> dict[str, str]:
    """The joined video's container tags from its pieces' `settings` (`upscale.remote.piece_settings`)
    and its input `source`: ``comment`` = the model and the precision the driver decided, the
    settings that decide the output (``settings["record"]``, `VideoOptions.recorded`) and the
    input's size, as a local run writes them."""
    precision = settings["options"]["precision"]
    return {"comment": provenance(settings["model"], precision, settings["record"], source.stat().st_size)}


def upscaled_piece_path(piece: Path) -> Path:
    return piece.with_name(piece.stem + "-x" + PIECE_SUFFIX)


def check_cuttable(source: str | Path, info: VideoInfo) -> None:
    """InputError for a video `--ray` cannot cut into pieces yet: one with a display rotation or
    mirror (the pieces would have to carry it), named as `source` is given (a URI stays one)."""
    if info.rotation or info.mirrored:
        turned = f"a {'mirrored' if info.mirrored else 'rotated'} video ({info.rotation} degrees)"
        raise InputError(f"{source}: {turned} is not cut into pieces yet: run it without --ray")


@dataclass
class VideoPieces:
    """A video's pieces: those to send (`pending`: (part, file, packets)), the finished ones kept
    in `folder` (`.NAME.segments/pieces/`) with a manifest, the first failure, and the join."""

    source: Path
    target: Path
    folder: Path
    key: dict
    parts: int = 0
    done: dict[int, Segment] = field(default_factory=dict)
    pending: list[tuple[int, Path, int]] = field(default_factory=list)
    answered: int = 0
    error: tuple[str, int] | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def cut(cls, source: Path, target: Path, scratch: Path, seconds: float, settings: dict) -> VideoPieces:
        """Cut `source` into pieces under `scratch` and open the finished pieces of an earlier run
        made with the same `settings` (anything else is removed). InputError for a video that
        cannot be cut."""
        info = probe_video(source)
        check_cuttable(source, info)
        settings = with_input_codec(settings, target.suffix, info.bit_depth)
        pieces = split_video(source, scratch, seconds)
        folder = segments_dir(target) / "pieces"
        key = resume_key(source, dict(settings, pieces_layout=_LAYOUT))
        segments, _ = read_manifest(folder, key) if folder.is_dir() else ([], [])
        self = cls(source, target, folder, key, len(pieces), {int(s.file[6:11]): s for s in segments})
        folder.mkdir(parents=True, exist_ok=True)
        self.answered = len(self.done)
        self.tags = provenance_tags(settings, source)
        self.pending = [(part, path, packets) for part, (path, packets) in enumerate(pieces) if part not in self.done]
        return self

    @property
    def complete(self) -> bool:
        return self.answered == self.parts

    def add(self, part: int, data: bytes, frames: int) -> None:
        """A piece came back upscaled: kept (atomically) and recorded in the manifest."""
        self.answered += 1
        atomic_write_bytes(self.folder / piece_name(part), data)
        self.done[part] = Segment(piece_name(part), frames, 0, 0)
        write_manifest(self.folder, self.key, [self.done[p] for p in sorted(self.done)], [])

    def fail(self, message: str, code: int) -> None:
        """A piece failed: the video fails with the first such message (the others are kept)."""
        self.answered += 1
        self.error = self.error or (message, code)

    def join(self, log: Log) -> tuple[int, str]:
        """Mux every piece, in order, with the input's audio and subtitles into the target
        (atomically); the pieces are removed. Returns (frames, what happened to the audio)."""
        segments = [self.done[part] for part in range(self.parts)]
        audio = write_output(
            self.target,
            self.source,
            self.folder,
            segments,
            self.target.suffix,
            probe_video(self.source),
            log,
            self.tags,
        )
        shutil.rmtree(segments_dir(self.target), ignore_errors=True)
        return sum(s.frames for s in segments), audio


def check_piece_frames(frames: int, packets: int) -> None:
    """A piece must decode every one of its packets into a frame: else it was not independent."""
    if frames != packets:
        raise SRDeployError(
            f"{frames} of its {packets} frames decoded on their own (an open-GOP stream?): run this video without --ray"
        )
