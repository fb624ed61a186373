"""A frame the decoder concealed is damage; the input's container and stream tags are kept.

Tiny clips (64x48, at most 20 frames) made with PyAV and the bundled ffmpeg, as a user's files
would be: one H.264 packet with flipped bytes (ffmpeg: `error while decoding MB`, and PyAV's
`frame.is_corrupt`), and a phone-style MOV with `creation_time`, a title and tagged audio and
subtitle streams.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _upscale_support import NearestBackend, ffmpeg, frame_times, save_tiny_srvgg

from sr_deploy.video import VideoDamaged, partial_output_path, segments_dir, upscale_video
from sr_deploy.video.pieces import VideoPieces, piece_name, piece_options, split_video, upscaled_piece_path
from sr_deploy.video.segments import Segment

ROOT = Path(__file__).resolve().parents[2]
CREATED = "2023-07-14T10:20:30"


def _noise_clip(path: Path, frames: int = 20) -> Path:
    """`frames` frames of noise at 10 fps, x264 without B-frames: every packet is large, and
    packet n is frame n + 1 (decode order is presentation order)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        for _ in range(frames):
            picture = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(picture):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _flip_packet(source: Path, target: Path, index: int, count: int = 40) -> Path:
    """`source` with `count` bytes inverted in the middle of video packet `index`'s data."""
    import av

    with av.open(str(source)) as container:
        packet = [p for p in container.demux(container.streams.video[0]) if p.size][index]
        middle = packet.pos + packet.size // 2
    data = bytearray(source.read_bytes())
    data[middle : middle + count] = bytes(b ^ 0xFF for b in data[middle : middle + count])
    target.write_bytes(bytes(data))
    return target


def _corrupt_flags(path: Path) -> list[bool]:
    import av

    with av.open(str(path)) as container:
        return [frame.is_corrupt for frame in container.decode(container.streams.video[0])]


@pytest.fixture(scope="module")
def concealed(tmp_path_factory) -> tuple[Path, Path]:
    """(a clean 20-frame clip, the same with packet 10 damaged)."""
    folder = tmp_path_factory.mktemp("concealed")
    clean = _noise_clip(folder / "clean.mp4")
    return clean, _flip_packet(clean, folder / "cmv.mp4", 10)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name or p.name.endswith(".segments"))


def test_a_frame_the_decoder_concealed_is_damage(concealed, tmp_path):
    """Before: 20 frames, 'done', the damaged picture written under the final name."""
    clean, damaged = concealed
    # the premise: FFmpeg decodes every frame, raises nothing, and flags the damaged one only
    assert _corrupt_flags(clean) == [False] * 20
    assert _corrupt_flags(damaged) == [False] * 10 + [True] + [False] * 9
    target = tmp_path / "out.mp4"
    with pytest.raises(
        VideoDamaged,
        match=r"cmv.mp4: damaged video: the frame at 0:00:01\.000 \(frame 11\) decoded with errors, "
        r"concealed by the decoder$",
    ):
        upscale_video(NearestBackend(2), damaged, target, preset="ultrafast", progress=False)
    assert not target.exists() and _leftovers(tmp_path) == []
    # the clean clip is not refused
    assert not upscale_video(NearestBackend(2), clean, target, preset="ultrafast", progress=False).partial
    target.unlink()


def test_allow_partial_keeps_a_concealed_frame_and_labels_the_output_partial(concealed, tmp_path):
    _clean, damaged = concealed
    target = tmp_path / "out.mp4"
    messages: list[str] = []
    result = upscale_video(
        NearestBackend(2), damaged, target, preset="ultrafast", progress=False, allow_partial=True, log=messages.append
    )
    assert result.partial and result.path == partial_output_path(target) and not target.exists()
    # the concealed frame is kept as decoded (as a player shows it): every frame, every time
    assert result.frames == 20 and frame_times(result.path) == frame_times(damaged)
    assert messages == [
        f"warning: {damaged}: damaged video: the frame at 0:00:01.000 (frame 11) decoded with errors, concealed by "
        "the decoder; --allow-partial: keeping it as the decoder concealed it"
    ]


def test_a_concealed_frame_before_the_resume_point_is_counted_once(concealed, tmp_path):
    """The damage is in the manifest of the segments that hold it; the resumed run (which decodes
    from the only keyframe, frame 1, again) neither forgets the damage nor counts it twice."""
    _clean, damaged = concealed
    target = tmp_path / "out.mp4"

    class Stop(NearestBackend):
        calls = 0

        def __call__(self, x):
            Stop.calls += 1
            # frame 20: by then frame 16 is written (the queues hold two frames), which closed the
            # segment of frames 11-15
            if Stop.calls == 20:
                raise KeyboardInterrupt
            return super().__call__(x)

    run = {"preset": "ultrafast", "progress": False, "allow_partial": True, "segment_seconds": 0.5, "batch_size": 1}
    with pytest.raises(KeyboardInterrupt):
        upscale_video(Stop(2), damaged, target, log=lambda _m: None, **run)
    assert segments_dir(target).is_dir()
    messages: list[str] = []
    result = upscale_video(NearestBackend(2), damaged, target, log=messages.append, **run)
    assert result.resumed_from >= 11 and result.partial and result.frames == 20
    assert not any("damaged places" in m for m in messages)  # one place, not the same one twice


@pytest.mark.slow
def test_the_cli_fails_a_concealed_frame_in_one_line(concealed, tmp_path):
    _clean, damaged = concealed
    model = save_tiny_srvgg(tmp_path / "m.pt")
    out = tmp_path / "out.mp4"
    command = [sys.executable, "-m", "sr_deploy", "upscale", str(damaged), "-o", str(out), "--model", str(model)]
    command += ["--device", "cpu", "--no-progress", "--preset", "ultrafast"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {damaged}: damaged video: the frame at 0:00:01.000 (frame 11) decoded with errors, "
        "concealed by the decoder"
    ]
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def phone(video_dir, tmp_path_factory) -> dict[str, Path]:
    """A MOV as the issue makes it: `-c copy -metadata creation_time=... -metadata title=Holiday`,
    with a French audio track titled Commentary and an English subtitle stream (its encoder,
    brands and comment describe the input file); the same as MKV with a forced subtitle stream
    and an audio stream that is not the default (MOV stores neither flag)."""
    folder = tmp_path_factory.mktemp("phone")
    base = folder / "base.mp4"
    ffmpeg(
        *("-i", str(video_dir / "mov_bbb.mp4"), "-t", "0.4", "-vf", "scale=64:48", "-c:v", "libx264"),
        *("-preset", "ultrafast", "-g", "5", "-c:a", "aac", str(base)),  # a keyframe every 0.2 s: two pieces
    )
    (folder / "s.srt").write_text("1\n00:00:00,000 --> 00:00:00,300\nhello\n")
    ffmpeg(
        *("-i", str(base), "-i", str(folder / "s.srt"), "-map", "0", "-map", "1", "-c", "copy", "-c:s", "mov_text"),
        *("-metadata", f"creation_time={CREATED}Z", "-metadata", "title=Holiday", "-metadata", "comment=by a phone"),
        *("-metadata:s:a:0", "language=fra", "-metadata:s:a:0", "title=Commentary", "-metadata:s:s:0", "language=eng"),
        str(folder / "phone.mov"),
    )
    # ffmpeg's own copy drops creation_time (and keeps the MOV's brands as MAJOR_BRAND ... tags)
    flags = ("-disposition:a:0", "0", "-disposition:s:0", "forced", "-metadata", f"creation_time={CREATED}Z")
    ffmpeg("-i", str(folder / "phone.mov"), "-map", "0", "-c", "copy", "-c:s", "srt", *flags, str(folder / "phone.mkv"))
    return {"mov": folder / "phone.mov", "mkv": folder / "phone.mkv"}


def _tags(path: Path) -> tuple[dict[str, str], list[tuple[str, dict[str, str], int]]]:
    """(container tags, [(stream type, language and title, disposition)]) read back, keys lowercase."""
    import av

    with av.open(str(path)) as container:
        tags = {key.lower(): value for key, value in container.metadata.items()}
        streams = []
        for stream in container.streams:
            own = {key.lower(): value for key, value in stream.metadata.items()}
            title = own.get("title") or own.get("name")  # MOV reads a track's title back as `name`
            facts = {"language": own.get("language"), "title": title}
            streams.append((stream.type, {k: v for k, v in facts.items() if v and v != "und"}, int(stream.disposition)))
    return tags, streams


@pytest.mark.parametrize("given, suffix", [("mov", ".mov"), ("mov", ".mkv"), ("mkv", ".mkv"), ("mkv", ".mp4")])
def test_container_and_stream_tags_are_kept_and_the_comment_is_ours(phone, tmp_path, given, suffix):
    """Before: the output had none of creation_time, title, the streams' language or title."""
    target = tmp_path / f"out{suffix}"
    upscale_video(NearestBackend(2), phone[given], target, preset="ultrafast", progress=False, log=lambda _m: None)
    tags, streams = _tags(target)
    assert tags["creation_time"].startswith(CREATED) and tags["title"] == "Holiday"
    assert tags["comment"].startswith("model=unnamed precision=fp32")  # ours, not the input's
    assert tags["encoder"] != _tags(phone[given])[0]["encoder"]  # the bundled ffmpeg's, not PyAV's
    audio = [facts for kind, facts, _flags in streams if kind == "audio"]
    assert audio == [{"language": "fra", "title": "Commentary"}]
    # the streams' flags as the input has them (MP4 / MOV store none: each type's first track is
    # its default), subtitles where the container takes their codec
    copied = [row for row in _tags(phone[given])[1] if row[0] != "video"]
    if suffix == ".mp4":
        copied = [(kind, facts, 1) for kind, facts, _flags in copied if kind != "subtitle"]  # SubRip: dropped
    if given == "mov" and suffix == ".mkv":
        copied = [row for row in copied if row[0] != "subtitle"]  # mov_text: dropped
    assert [row for row in streams if row[0] != "video"] == copied
    if given == "mkv" and suffix == ".mkv":
        assert [flags for _kind, _facts, flags in copied] == [0, 64]  # not default; forced


@pytest.mark.parametrize("given", ["mov", "mkv"])
def test_the_joined_pieces_carry_the_same_tags_as_a_local_run(phone, tmp_path, given):
    """The --ray path (pieces upscaled on their own, then joined by `VideoPieces.join`) writes the
    input's tags as a local run does."""
    source, suffix = phone[given], f".{given}"
    local = tmp_path / f"local{suffix}"
    options = {"preset": "ultrafast", "progress": False, "log": lambda _m: None}
    upscale_video(NearestBackend(2), source, local, **options)
    target = tmp_path / "out" / f"joined{suffix}"
    target.parent.mkdir()
    pieces = split_video(source, tmp_path / "cut", 0.2)
    assert len(pieces) == 2
    folder = segments_dir(target) / "pieces"
    folder.mkdir(parents=True)
    # the comment is the driver's (`provenance_tags`); the rest comes from the input in the join
    joined = VideoPieces(source, target, folder, {}, len(pieces), tags={"comment": _tags(local)[0]["comment"]})
    for part, (piece, _packets) in enumerate(pieces):
        output = upscaled_piece_path(piece)
        result = upscale_video(NearestBackend(2), piece, output, piece_options(_defaults(), suffix, 8), **options)
        (folder / piece_name(part)).write_bytes(output.read_bytes())
        joined.done[part] = Segment(piece_name(part), result.frames, 0, 0)
    joined.join(lambda _m: None)
    assert _tags(target) == _tags(local)
    assert _tags(target)[0]["title"] == "Holiday"


def _defaults():
    from sr_deploy.video import VideoOptions

    return VideoOptions(preset="ultrafast", progress=False)
