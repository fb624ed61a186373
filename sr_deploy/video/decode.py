"""Decoding with damage reported and presentation times made strictly increasing."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import Log, VideoDamaged, cause, clock

# Frames over which out-of-order container timestamps are sorted (more than any B-frame delay).
_REORDER_DEPTH = 16


@dataclass
class DecodeState:
    """What the reader learned: frames handed on, the end of the last one (s), damage seen."""

    frames: int = 0
    last_end: float | None = None
    damage: list[str] = field(default_factory=list)

    def record(self, message: str, allow_partial: bool, log: Log, going_on: str) -> None:
        """Damage `message`: raises VideoDamaged, or with `allow_partial` keeps it in `damage` and
        warns, saying how the run goes on (`going_on`), for the first place only."""
        if not allow_partial:
            raise VideoDamaged(message) from None
        if message in self.damage:  # read from the manifest: a resumed run decodes that place again
            return
        self.damage.append(message)
        if len(self.damage) == 1:  # one line per file; the count is in the final warning
            log(f"warning: {message}; --allow-partial: {going_on}")


def decoded_frames(
    container: Any, stream: Any, source: Path, state: DecodeState, allow_partial: bool, log: Log
) -> Iterator[Any]:
    """Every frame the decoder gives, in presentation order. A decoder or demuxer error raises
    VideoDamaged (time and frame of the last good frame), or with `allow_partial` is recorded in
    `state.damage`, warned about, and decoding goes on with the next packet."""
    import av

    codec = stream.codec_context
    # Where decoding stopped is counted here, at the decoder: the frames handed on (`state`) lag
    # behind by the reordering window and the queues, so they named frame 15 for damage at 31.
    decoded = 0
    decoded_end: float | None = None

    def damaged(exc: BaseException) -> None:
        where = f"after {clock(decoded_end)} (frame {decoded})" if decoded_end is not None else "before the first frame"
        message = f"{source}: damaged video: decoding stopped {where}: {cause(exc)}"
        state.record(message, allow_partial, log, "going on with the next packet")

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
        for frame in frames:
            decoded += 1
            if frame.time is not None:
                duration = frame.duration * frame.time_base if frame.duration and frame.time_base else 0
                decoded_end = max(decoded_end or 0.0, float(frame.time + duration))
            yield frame


def check_concealed(
    frame: Any, number: int, seconds: float, source: Path, state: DecodeState, allow_partial: bool, log: Log
) -> None:
    """Damage when `frame` (frame `number` of the video, shown at `seconds`) is one the decoder
    made from a damaged packet by concealing the errors (FFmpeg's AV_FRAME_FLAG_CORRUPT, PyAV's
    `is_corrupt`; ffmpeg logs `error while decoding MB`): raises VideoDamaged naming the frame and
    its time, or with `allow_partial` records it and the frame is kept as decoded."""
    # The decoder raises nothing for such a packet: the flag is the only sign, and without this
    # check a damaged picture was written and the run said "done". Frames before a stream's first
    # keyframe (a cut file, an open GOP) are dropped by FFmpeg, not flagged, so they never get here.
    if not frame.is_corrupt:
        return
    message = (
        f"{source}: damaged video: the frame at {clock(seconds)} (frame {number}) decoded with errors, "
        "concealed by the decoder"
    )
    # Kept, as a player shows it: a frame dropped here would leave a gap while the frames that
    # refer to it carry the same damage anyway; the output is labelled partial either way.
    state.record(message, allow_partial, log, "keeping it as the decoder concealed it")


def timed(frames: Iterator[Any], step: int) -> Iterator[tuple[int, Any]]:
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
