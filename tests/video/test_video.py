"""Video upscaling keeps time and metadata, reports damage, copes with full disks, resumes mid-file.

Every row of issue 16's table is a test here, on tiny clips (96x52 and thereabouts) cut from
../shared/data/video with the bundled ffmpeg, as a user's files would be made.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from _upscale_support import (
    NearestBackend,
    audio_seconds,
    cpu_backend,
    decoded_video,
    ffmpeg,
    ffmpeg_exe,
    frame_times,
    make_clip,
    save_overflowing_srvgg,
    save_tiny_srvgg,
    video_stream_facts,
)

from sr_deploy.errors import InputError
from sr_deploy.video import (
    VideoDamaged,
    frames_to_model_input,
    model_output_to_frames,
    partial_output_path,
    segments_dir,
    upscale_video,
)

ROOT = Path(__file__).resolve().parents[2]
SMALL = "scale=96:52"


@pytest.fixture(scope="module")
def clips(video_dir, tmp_path_factory):
    """Tiny clips, each made the way the issue's reproduction makes it."""
    folder = tmp_path_factory.mktemp("clips")
    bbb = video_dir / "mov_bbb.mp4"
    made = {
        "bbb": make_clip(bbb, folder / "bbb.mp4", 2, size=(96, 52)),
        "car": make_clip(video_dir / "car_traffic_small.mp4", folder / "car.mp4", 1, size=(96, 54), audio=False),
    }
    # The whole of mov_bbb (250 frames, 10 s of AAC audio), for the damage rows.
    ffmpeg(
        "-i",
        str(bbb),
        "-vf",
        SMALL,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "copy",
        str(folder / "full.mp4"),
    )
    made["full"] = folder / "full.mp4"
    # Timestamps say 25 fps, the AVI header says 50.
    ffmpeg(
        "-i",
        str(bbb),
        "-t",
        "4",
        "-vf",
        SMALL,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-fps_mode",
        "passthrough",
        "-enc_time_base",
        "1/50",
        "-c:a",
        "copy",
        str(folder / "q.avi"),
    )
    made["avi"] = folder / "q.avi"
    # Variable frame rate: every frame in the first second, then every fifth.
    ffmpeg(
        "-i",
        str(bbb),
        "-t",
        "4",
        "-vf",
        f"{SMALL},select='lt(t\\,1)+not(mod(n\\,5))',setpts=PTS",
        "-fps_mode",
        "vfr",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        str(folder / "vfr.mp4"),
    )
    made["vfr"] = folder / "vfr.mp4"
    # Anamorphic (SAR 4:3), tagged BT.709 limited range.
    ffmpeg(
        "-i",
        str(bbb),
        "-t",
        "1",
        "-vf",
        "scale=72:54,setsar=4/3,setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        str(folder / "sar.mp4"),
    )
    made["sar"] = folder / "sar.mp4"
    # Shown rotated by 90 degrees (phone video).
    ffmpeg("-display_rotation", "90", "-i", str(made["sar"]), "-c", "copy", str(folder / "rot.mp4"))
    made["rot"] = folder / "rot.mp4"
    # 10-bit.
    ffmpeg(
        "-i",
        str(bbb),
        "-t",
        "1",
        "-vf",
        SMALL,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p10le",
        "-an",
        str(folder / "deep.mp4"),
    )
    made["deep"] = folder / "deep.mp4"
    # 3,000 random bytes at a third of the file.
    data = bytearray(made["full"].read_bytes())
    rng = random.Random(1)
    at = len(data) // 3
    data[at : at + 3000] = bytes(rng.randrange(256) for _ in range(3000))
    (folder / "corrupt.mp4").write_bytes(bytes(data))
    made["corrupt"] = folder / "corrupt.mp4"
    # A faststart 2 s clip cut to half its bytes.
    ffmpeg(
        "-i",
        str(bbb),
        "-t",
        "2",
        "-vf",
        SMALL,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        "-movflags",
        "+faststart",
        str(folder / "fs.mp4"),
    )
    whole = (folder / "fs.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    made["truncated"] = folder / "truncated.mp4"
    return made


@pytest.fixture(scope="module")
def tiny_vgg(tmp_path_factory):
    return save_tiny_srvgg(tmp_path_factory.mktemp("m") / "vgg.pt")


def _as_ffmpeg_shows(path: Path) -> bytes:
    """The first frame of `path` as rgb24 bytes, decoded by ffmpeg (which applies the display
    matrix: autorotate)."""
    command = [
        ffmpeg_exe(),
        "-v",
        "error",
        "-i",
        str(path),
        "-frames:v",
        "1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    return subprocess.run(command, capture_output=True, check=True).stdout


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name or p.name.endswith(".segments"))


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sr_deploy",
            "upscale",
            *args,
            "--device",
            "cpu",
            "--no-progress",
            "--preset",
            "ultrafast",
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        **kwargs,
    )


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _assert_same_times(source: Path, target: Path) -> None:
    """Same number of frames, each within one (nominal) frame duration of the input's time."""
    before, after = frame_times(source), frame_times(target)
    assert len(after) == len(before)
    frame = 1 / 25
    assert max(abs(a - b) for a, b in zip(sorted(before), after)) < frame


def test_frame_conversions_are_rgb_and_exact():
    rgb = np.zeros((2, 4, 6, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 10  # red 200, blue 10
    batch = frames_to_model_input(list(rgb))
    assert batch.shape == (2, 3, 4, 6) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert np.allclose(batch[:, 0], 200 / 255) and np.allclose(batch[:, 2], 10 / 255)
    frames = model_output_to_frames(batch)
    assert frames.shape == (2, 4, 6, 3) and frames.dtype == np.uint8 and frames.flags.c_contiguous
    np.testing.assert_array_equal(frames, rgb)
    deep = model_output_to_frames(frames_to_model_input(list(rgb.astype(np.uint16) * 257)), dtype=np.uint16)
    np.testing.assert_array_equal(deep, rgb.astype(np.uint16) * 257)


@pytest.mark.slow
def test_video_keeps_frames_times_and_audio(clips, tiny_vgg, tmp_path):
    source = clips["bbb"]
    frames_in, _, (w, h) = decoded_video(source)
    target = tmp_path / "bbb_x4.mp4"
    # The default preset (B-frames: decode times before presentation times) and four segments,
    # whose packets the final mux joins with strictly increasing decode times.
    result = upscale_video(cpu_backend(tiny_vgg), source, target, batch_size=4, segment_seconds=0.5, progress=False)
    assert frames_in == 50 and result.frames == result.frames_inferred == 50
    assert decoded_video(target)[2] == (4 * w, 4 * h) == result.size
    _assert_same_times(source, target)
    assert result.audio == "copied"
    assert abs(audio_seconds(target) - audio_seconds(source)) <= 0.1
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
def test_video_without_audio_and_with_outscale(clips, tiny_vgg, tmp_path):
    source = clips["car"]
    frames_in, fps_in, (w, h) = decoded_video(source)
    target = tmp_path / "car.mp4"
    result = upscale_video(cpu_backend(tiny_vgg), source, target, outscale=2, preset="ultrafast", progress=False)
    assert decoded_video(target) == (frames_in, pytest.approx(fps_in, abs=1e-3), (2 * w, 2 * h))
    assert result.audio == "none in input" and audio_seconds(target) is None


@pytest.mark.slow
def test_wrong_header_rate_cannot_change_the_duration(clips, tmp_path):
    """q.avi: timestamps at 25 fps, header 50 fps. Before: 4.11 s in, 2.00 s out."""
    for suffix in (".avi", ".mp4"):
        target = tmp_path / f"q{suffix}"
        result = upscale_video(NearestBackend(2), clips["avi"], target, segment_seconds=1, progress=False)
        times = frame_times(target)
        assert result.frames == len(times) == 100
        assert times[-1] == pytest.approx(frame_times(clips["avi"])[-1], abs=1 / 25)
        assert abs(audio_seconds(target) - (times[-1] + 1 / 25)) <= 0.15
    _assert_same_times(clips["avi"], tmp_path / "q.mp4")


def test_a_b_frame_avi_whose_decoder_gives_timestamps_out_of_order(tmp_path):
    """Issue 24: an H.264 AVI with B-frames (as OpenCV's vtest.avi): AVI stores no presentation
    times, so the decoder's frames carry 1, 4, 3, 5, 2, ... Every frame comes out once, in the
    input's order, into AVI and MP4, with the input's duration (within a frame)."""
    import av

    source = tmp_path / "bframes.avi"
    frames_differ = "noise=alls=40:allf=t"  # no two frames alike: none is held, each is recognisable
    clip = ["-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-t", "2", "-vf", frames_differ]
    ffmpeg(*clip, "-c:v", "libx264", "-bf", "3", str(source))
    with av.open(str(source)) as container:
        stamps = [frame.pts for frame in container.decode(video=0)]
        assert stamps != sorted(stamps)  # the case: out of order as decoded
    with av.open(str(source)) as container:
        expected = [frame.to_ndarray(format="rgb24").astype(float) for frame in container.decode(video=0)]
    for suffix in (".avi", ".mp4"):
        target = tmp_path / f"out{suffix}"
        result = upscale_video(NearestBackend(2), source, target, crf=0, preset="ultrafast", progress=False)
        assert result.frames == len(expected) == 50
        with av.open(str(target)) as container:
            frames = [f.to_ndarray(format="rgb24")[::2, ::2].astype(float) for f in container.decode(video=0)]
        assert len(frames) == 50
        # each output frame is its own input frame (the noise differs in every frame)
        errors = [[np.abs(out - ref).mean() for ref in expected] for out in frames]
        assert [int(np.argmin(row)) for row in errors] == list(range(50))
        assert frame_times(target)[-1] == pytest.approx(frame_times(source)[-1], abs=1 / 25)


def test_variable_frame_rate_stays_variable(clips, tmp_path):
    """Before: forced to constant rate, frames drifted up to 0.77 s from the audio."""
    source, target = clips["vfr"], tmp_path / "vfr.mp4"
    upscale_video(NearestBackend(2), source, target, segment_seconds=0.5, progress=False)
    before, after = frame_times(source), frame_times(target)
    assert len(after) == len(before) == 40
    assert after == pytest.approx(before, abs=1e-3)  # exactly the input's times, gaps included
    assert max(np.diff(after)) == pytest.approx(0.2, abs=1e-3) and min(np.diff(after)) == pytest.approx(0.04)
    assert abs(audio_seconds(target) - audio_seconds(source)) <= 0.1


def test_sample_aspect_ratio_colour_and_rotation_are_carried(clips, tmp_path):
    """Before: anamorphic SAR 4:3 came out with square pixels."""
    target = tmp_path / "sar.mp4"
    upscale_video(NearestBackend(2), clips["sar"], target, preset="ultrafast", progress=False)
    facts = video_stream_facts(target)
    assert facts["size"] == (144, 108) and facts["sar"] == Fraction(4, 3)
    colour = ("colorspace", "color_primaries", "color_trc", "color_range")
    assert [video_stream_facts(clips["sar"])[k] for k in colour] == [1, 1, 1, 1]  # BT.709, limited range
    assert [facts[k] for k in colour] == [1, 1, 1, 1]
    # --outscale rounds the sides differently: the display aspect is kept through the SAR
    upscale_video(
        NearestBackend(4), clips["sar"], tmp_path / "odd.mp4", outscale=1.3, preset="ultrafast", progress=False
    )
    odd = video_stream_facts(tmp_path / "odd.mp4")
    width, height = odd["size"]
    assert float(width * odd["sar"] / height) == pytest.approx(72 * 4 / 3 / 54, rel=1e-3)
    # A rotated phone clip is written upright (as a player shows it), pixel aspect turned with it.
    rotated = tmp_path / "rot.mp4"
    upscale_video(NearestBackend(2), clips["rot"], rotated, preset="ultrafast", progress=False)
    facts = video_stream_facts(rotated)
    assert facts["size"] == (108, 144) and facts["sar"] == Fraction(3, 4) and not facts["rotation"]
    upright = _as_ffmpeg_shows(clips["rot"])
    upright = np.frombuffer(upright, np.uint8).reshape(72, 54, 3).astype(int)  # ffmpeg autorotates
    import av

    with av.open(str(rotated)) as container:
        ours = next(container.decode(video=0)).to_ndarray(format="rgb24")[::2, ::2].astype(int)
    assert np.abs(ours - upright).mean() < 6  # same picture the same way up (lossy codec twice)


def test_hevc_in_mp4_and_mov_is_tagged_for_apples_players_and_x265_stays_quiet(clips, tmp_path, capfd):
    """QuickTime, iOS and Safari play HEVC in MP4 / MOV only as `hvc1` (FFmpeg writes `hev1`);
    x265's settings banner is not printed for every segment."""
    import av

    for name in ("h.mp4", "h.mov", "h.mkv"):
        upscale_video(
            NearestBackend(2), clips["deep"], tmp_path / name, codec="libx265", preset="ultrafast", progress=False
        )
        with av.open(str(tmp_path / name)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "hevc" and stream.codec_context.pix_fmt == "yuv420p10le"
            assert stream.codec_tag == ("hvc1" if name != "h.mkv" else "\0\0\0\0"), name
    assert "x265 [info]" not in capfd.readouterr().err


def test_ten_bit_input_gives_ten_bit_output_and_pix_fmt_is_honoured(clips, tmp_path):
    """A 10-bit input (a phone's HDR or log video) comes out as HEVC Main 10 by default, which
    phones, TVs and Apple devices play (H.264 High 10 plays almost nowhere), and its record names
    that encoder; WebM stays VP9 (8-bit in this FFmpeg); --codec still chooses."""
    import av

    from sr_deploy.util.text import provenance_fields

    def video(path: Path) -> tuple[str, str, str, str | None]:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            tags = {key.lower(): value for key, value in container.metadata.items()}
            codec = (provenance_fields(tags["comment"]) or {}).get("codec")
            return stream.codec_context.name, stream.codec_context.pix_fmt, stream.codec_tag, codec

    upscale_video(NearestBackend(2), clips["deep"], tmp_path / "deep.mp4", preset="ultrafast", progress=False)
    assert video(tmp_path / "deep.mp4") == ("hevc", "yuv420p10le", "hvc1", "libx265")
    upscale_video(NearestBackend(2), clips["deep"], tmp_path / "deep.webm", progress=False)
    assert video(tmp_path / "deep.webm")[0] == "vp9"
    upscale_video(
        NearestBackend(2), clips["deep"], tmp_path / "h.mp4", codec="libx264", preset="ultrafast", progress=False
    )
    assert video(tmp_path / "h.mp4") == ("h264", "yuv420p10le", "avc1", "libx264")
    upscale_video(NearestBackend(2), clips["bbb"], tmp_path / "eight.mp4", preset="ultrafast", progress=False)
    assert video(tmp_path / "eight.mp4")[:3] == ("h264", "yuv420p", "avc1")  # 8-bit input: H.264 as before
    upscale_video(
        NearestBackend(2), clips["bbb"], tmp_path / "b444.mkv", pix_fmt="yuv444p", preset="ultrafast", progress=False
    )
    assert video_stream_facts(tmp_path / "b444.mkv")["pix_fmt"] == "yuv444p"
    with pytest.raises(InputError, match="--pix-fmt rgb565"):
        upscale_video(NearestBackend(2), clips["bbb"], tmp_path / "x.mp4", pix_fmt="rgb565", progress=False)


@pytest.mark.slow
def test_corrupt_bytes_are_an_error_naming_time_and_frame(clips, tiny_vgg, tmp_path):
    """Before: 76 of 250 frames with 10 s of audio, exit 0, no warning."""
    out = tmp_path / "out"
    result = _cli(str(clips["corrupt"]), "-o", str(out), "--model", str(tiny_vgg))
    assert result.returncode == 2, result.stderr
    errors = _errors(result.stderr)
    assert len(errors) == 1 and "corrupt.mp4: damaged video: decoding stopped after 0:00:" in errors[0]
    assert "(frame " in errors[0] and "Traceback" not in result.stderr
    # FFmpeg's text, without PyAV's "[Errno 1094995529]" and "'avcodec_send_packet()'"
    assert "Errno" not in errors[0] and "()" not in errors[0], errors[0]
    assert not (out / "corrupt.mp4").exists() and _leftovers(out) == []
    # --allow-partial keeps what decodes, labelled partial; a re-run does not skip it as done
    result = _cli(str(clips["corrupt"]), "-o", str(out), "--model", str(tiny_vgg), "--allow-partial")
    assert result.returncode == 0, result.stderr
    kept = partial_output_path(out / "corrupt.mp4")
    assert f"partial: {kept}" in result.stdout and "1 partial" in result.stderr
    assert not (out / "corrupt.mp4").exists()
    frames = len(frame_times(kept))
    assert 240 <= frames < 250  # ffmpeg itself decodes 246
    assert abs(audio_seconds(kept) - 10.0) <= 0.1


def test_truncated_file_is_an_error_and_partial_on_request(clips, tmp_path):
    """Before: 21 of 50 frames, exit 0, no warning."""
    target = tmp_path / "t.mp4"
    with pytest.raises(
        VideoDamaged,
        match=r"truncated.mp4: damaged video: decoding stopped after 0:00:00\.\d+ "
        r"\(frame \d+\) of 0:00:02.000",
    ):
        upscale_video(NearestBackend(2), clips["truncated"], target, progress=False)
    assert not target.exists() and _leftovers(tmp_path) == []
    messages: list[str] = []
    result = upscale_video(
        NearestBackend(2), clips["truncated"], target, progress=False, allow_partial=True, log=messages.append
    )
    assert result.partial and result.path == partial_output_path(target) and not target.exists()
    assert result.frames == len(frame_times(result.path)) < 50
    assert any("damaged video" in m for m in messages)


class _Interrupt(NearestBackend):
    """Nearest x2 that raises KeyboardInterrupt (as Ctrl-C would) on call number `calls` + 1."""

    def __init__(self, calls: int):
        super().__init__(2)
        self.left = calls

    def __call__(self, x):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return super().__call__(x)


@pytest.mark.slow
def test_damage_before_the_resume_point_still_labels_the_result_partial(clips, tmp_path):
    target = tmp_path / "c.mp4"
    with pytest.raises(KeyboardInterrupt):  # damage at ~2.2 s, interrupted at ~6 s
        upscale_video(
            _Interrupt(38),
            clips["corrupt"],
            target,
            allow_partial=True,
            segment_seconds=1,
            preset="ultrafast",
            progress=False,
            log=lambda _m: None,
        )
    assert segments_dir(target).is_dir() and not target.exists()
    with pytest.raises(VideoDamaged, match="damaged video: decoding stopped after 0:00:02"):
        upscale_video(
            NearestBackend(2), clips["corrupt"], target, segment_seconds=1, preset="ultrafast", progress=False
        )  # without --allow-partial, the recorded damage is an error
    with pytest.raises(KeyboardInterrupt):
        upscale_video(
            _Interrupt(38),
            clips["corrupt"],
            target,
            allow_partial=True,
            segment_seconds=1,
            preset="ultrafast",
            progress=False,
            log=lambda _m: None,
        )
    result = upscale_video(
        NearestBackend(2),
        clips["corrupt"],
        target,
        allow_partial=True,
        segment_seconds=1,
        preset="ultrafast",
        progress=False,
        log=lambda _m: None,
    )
    assert result.resumed_from > 100 and result.partial and result.path == partial_output_path(target)
    assert not target.exists() and len(frame_times(result.path)) == result.frames >= 240


@pytest.mark.slow
def test_webm_output_reencodes_aac_to_opus(clips, tmp_path):
    """Before: mp4 -> .webm dropped the AAC audio (WebM refuses AAC, the only fallback tried)."""
    target = tmp_path / "b.webm"
    messages: list[str] = []
    result = upscale_video(NearestBackend(2), clips["bbb"], target, progress=False, log=messages.append)
    assert result.audio == "re-encoded to opus"
    assert video_stream_facts(target)["audio"] == ["opus"]
    assert abs(audio_seconds(target) - audio_seconds(clips["bbb"])) <= 0.1
    assert any("re-encoded to opus" in m for m in messages)
    _assert_same_times(clips["bbb"], target)


def test_subtitles_are_copied_where_the_container_takes_them_else_dropped_with_a_warning(clips, tmp_path):
    (tmp_path / "subs.srt").write_text(
        "1\n00:00:00,000 --> 00:00:01,000\nHello\n\n2\n00:00:01,000 --> 00:00:02,000\nWorld\n"
    )
    source = tmp_path / "subbed.mkv"
    ffmpeg(
        "-i",
        str(clips["bbb"]),
        "-i",
        str(tmp_path / "subs.srt"),
        "-map",
        "0",
        "-map",
        "1",
        "-c",
        "copy",
        "-c:s",
        "srt",
        str(source),
    )
    import av

    upscale_video(NearestBackend(2), source, tmp_path / "out.mkv", progress=False)
    with av.open(str(tmp_path / "out.mkv")) as container:
        assert [s.codec_context.codec.canonical_name for s in container.streams.subtitles] in (["subrip"], ["srt"])
        texts = [bytes(p).decode() for p in container.demux(container.streams.subtitles[0]) if p.size]
        assert texts == ["Hello", "World"]
    messages: list[str] = []
    result = upscale_video(NearestBackend(2), source, tmp_path / "out.mp4", progress=False, log=messages.append)
    with av.open(str(tmp_path / "out.mp4")) as container:
        assert not container.streams.subtitles and result.audio == "copied"
    assert any("mp4 does not take" in m and "subtitles; that stream is dropped" in m for m in messages)


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: writes past `limit` fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_write_error_in_the_mux_is_a_failure_and_the_rerun_resumes(clips, tiny_vgg, tmp_path):
    """Before: disk full during the audio mux was taken for 'container refuses audio': a silent
    file under the final name, exit 0, and the re-run skipped it. Here every file written may
    be at most 60 % of the finished output's size: the segments fit, the final mux does not."""
    reference = tmp_path / "ref" / "full.mp4"
    assert (
        _cli(str(clips["full"]), "-o", str(reference), "--model", str(tiny_vgg), "--segment-seconds", "1").returncode
        == 0
    )
    target = tmp_path / "out" / "full.mp4"
    result = _cli(
        str(clips["full"]),
        "-o",
        str(target),
        "--model",
        str(tiny_vgg),
        "--segment-seconds",
        "1",
        preexec_fn=_limit_file_size(int(reference.stat().st_size * 0.6)),
    )
    assert result.returncode == 1, result.stderr
    errors = _errors(result.stderr)
    assert len(errors) == 1 and "full.mp4: writing the output failed" in errors[0] and "File too large" in errors[0]
    assert not target.exists() and not any("partial" in p.name for p in target.parent.iterdir())
    again = _cli(str(clips["full"]), "-o", str(target), "--model", str(tiny_vgg), "--segment-seconds", "1")
    assert again.returncode == 0, again.stderr
    assert "(0 inferred, resumed after frame 250)" in again.stderr  # only the mux was redone
    assert len(frame_times(target)) == 250 and abs(audio_seconds(target) - 10.0) <= 0.1


@pytest.mark.slow
def test_nan_model_fails_the_video(clips, tmp_path):
    """Before: a checkpoint with NaN weights wrote an all-black video, exit 0. Now such a file is
    refused as it loads; a model whose output is NaN fails the video (exit 1)."""
    nan_model = save_tiny_srvgg(tmp_path / "nan.pt", nan_weight=True)
    result = _cli(str(clips["bbb"]), "-o", str(tmp_path / "out.mp4"), "--model", str(nan_model))
    assert result.returncode == 2, result.stderr
    why = "non-finite weights (NaN/Inf) in body.0.weight: the file is damaged, or its training diverged"
    assert _errors(result.stderr) == [f"error: {nan_model}: {why}"]
    assert not (tmp_path / "out.mp4").exists() and _leftovers(tmp_path) == []
    result = _cli(
        str(clips["bbb"]),
        "-o",
        str(tmp_path / "out.mp4"),
        "--model",
        str(save_overflowing_srvgg(tmp_path / "big.pt")),
    )
    assert result.returncode == 1, result.stderr
    errors = _errors(result.stderr)
    assert len(errors) == 1 and "bbb.mp4: the model's output has NaN/Inf values" in errors[0]
    assert not (tmp_path / "out.mp4").exists() and _leftovers(tmp_path) == []


@pytest.mark.slow
def test_unknown_codec_hwaccel_or_container_mismatch_is_refused_in_one_line(clips, tmp_path):
    for args, message in [
        (["--codec", "no-such-encoder"], "--codec no-such-encoder: no such encoder"),
        (["--hwaccel", "no-such-device"], "--hwaccel no-such-device: not in this FFmpeg build"),
        (["--codec", "libx264", "-o", str(tmp_path / "x.webm")], "does not take h264 video"),
    ]:
        output = ["-o", str(tmp_path / "x.mp4")] if "-o" not in args else []
        result = _cli(str(clips["bbb"]), *output, *args, "--model", "default")
        assert result.returncode == 2, result.stderr
        assert len(_errors(result.stderr)) == 1 and message in result.stderr
    assert _leftovers(tmp_path) == [] and not (tmp_path / "x.mp4").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="NVENC and NVDEC open on a machine with an NVIDIA GPU")
def test_gpu_encoder_or_decoder_on_a_machine_without_one_is_refused_before_any_work(clips, tmp_path):
    """Before: `--codec h264_nvenc` failed at the first segment, exit 1 with FFmpeg's raw
    `avcodec_open2(...)` text, leaving `.x.mp4.segments/` and the folder of `-o sub/x.mp4`; and
    `--hwaccel cuda` failed per video after the model had loaded, leaving an empty `-o` folder."""
    for args, message in [
        (["--codec", "h264_nvenc"], "--codec h264_nvenc: the encoder does not open on this machine"),
        (["--codec", "hevc_nvenc"], "NVENC needs an NVIDIA GPU with video encoders and its driver"),
        (["--hwaccel", "cuda"], "--hwaccel cuda: the decoding device does not open on this machine"),
    ]:
        for output in (tmp_path / "sub" / "x.mp4", tmp_path / "folder"):
            result = _cli(str(clips["bbb"]), "-o", str(output), *args, "--model", "default")
            assert result.returncode == 2, result.stderr
            errors = _errors(result.stderr)
            assert len(errors) == 1 and message in errors[0], result.stderr
            assert "Traceback" not in result.stderr and "precision:" not in result.stderr  # before the model
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="NVDEC opens on a machine with an NVIDIA GPU")
def test_videos_already_done_need_no_decoding_device(clips, tiny_vgg, tmp_path):
    """The device is opened for videos left to do: a re-run over finished outputs with
    `--hwaccel cuda` on a machine without it skips them (it refused the run, exit 2)."""
    out = tmp_path / "out"
    assert _cli(str(clips["bbb"]), "-o", str(out), "--model", str(tiny_vgg)).returncode == 0
    again = _cli(str(clips["bbb"]), "-o", str(out), "--model", str(tiny_vgg), "--hwaccel", "cuda")
    assert again.returncode == 0 and "1 skipped" in again.stderr and not _errors(again.stderr), again.stderr


def test_an_nvenc_that_opens_names_the_option_it_refuses(monkeypatch):
    """As on a GPU machine (the encoder opens without options): `--crf 60` is NVENC's `cq`, out of
    its 0-51 range. It was reported as `--preset medium` (the default, never typed), and with no
    --preset as `: the h264_nvenc encoder refuses it`."""
    from sr_deploy.errors import InputError
    from sr_deploy.video import segments

    def opens_unless_refused(encoder, like, options):
        return OSError("refused") if options.get("cq") == "60" or options.get("preset") == "bogus" else None

    monkeypatch.setattr(segments, "_open_error", opens_unless_refused)
    for crf, preset, named in [(60, "medium", "--crf 60"), (60, None, "--crf 60"), (20, "bogus", "--preset bogus")]:
        with pytest.raises(InputError) as caught:
            segments.check_encoder_options("h264_nvenc", crf, preset, open_nvenc=True)
        assert str(caught.value).startswith(f"{named}: the h264_nvenc encoder refuses it ("), str(caught.value)


def test_a_decoding_device_the_h264_probe_cannot_use_is_left_to_each_video():
    """`--hwaccel qsv` (in this FFmpeg build) was refused with a raw NotImplementedError (exit 1):
    h264 has no hardware config for it. The per-video open decides (software fallback)."""
    from av.codec.hwaccel import hwdevices_available

    from sr_deploy.video import check_hwaccel

    others = [d for d in hwdevices_available() if d != "cuda"]
    if not others:
        pytest.skip("this FFmpeg build has no decoding device but cuda")
    for device in others:
        check_hwaccel(device)  # no InputError, no NotImplementedError
    check_hwaccel(None)
    check_hwaccel("none")


def test_frames_larger_than_the_bound_are_refused_before_any_frame(clips, tmp_path, monkeypatch):
    """--max-pixels bounded images only: a 200 KB 8192x8192 clip was ended by the OOM killer at
    24 GB with no error line. Now a video's frames are bounded like an image: by --max-pixels, else
    by the memory available now; one line, nothing written."""
    from sr_deploy.video import pipeline

    target = tmp_path / "out.mp4"
    with pytest.raises(
        InputError, match=r"bbb.mp4: its frames are 96x52 \(4992 pixels\), more than the 1000 pixels of --max-pixels"
    ):
        upscale_video(NearestBackend(2), clips["bbb"], target, max_pixels=1000, progress=False)
    monkeypatch.setattr(pipeline, "available_memory", lambda: (1 << 30) + 1_000_000)  # 1 MB free
    with pytest.raises(InputError, match=r"more than the \d+ pixels of the memory available now at x2 \(20 frames"):
        upscale_video(NearestBackend(2), clips["bbb"], target, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(pipeline, "available_memory", lambda: 1 << 34)
    assert upscale_video(NearestBackend(2), clips["bbb"], target, max_pixels=96 * 52, progress=False).frames > 0


@pytest.mark.parametrize(
    "flags",
    [
        ["-display_hflip"],
        ["-display_vflip"],
        ["-display_rotation", "90", "-display_hflip"],
        ["-display_rotation", "270", "-display_hflip"],
        ["-display_rotation", "90"],
    ],
    ids=["hflip", "vflip", "rot90+hflip", "rot270+hflip", "rot90"],
)
def test_frames_are_turned_upright_as_ffmpeg_shows_them(clips, tmp_path, flags):
    """A mirroring display matrix (a selfie camera's) reads as a rotation of the flipped axis, so
    an hflip came out turned 180 degrees and rot90+hflip lost its flip. Each first frame, made
    upright, is ffmpeg's own autorotated picture, and differs from the rotation alone."""
    import av

    from sr_deploy.video.probe import probe_video, upright

    clip = tmp_path / "flipped.mp4"
    ffmpeg(*flags, "-i", str(clips["car"]), "-c", "copy", str(clip))
    info = probe_video(clip)
    with av.open(str(clip)) as container:
        rgb = next(container.decode(video=0)).to_ndarray(format="rgb24")
    shown = _as_ffmpeg_shows(clip)
    ours = np.ascontiguousarray(upright(rgb, info)).astype(int)
    assert len(shown) == ours.size
    assert np.abs(np.frombuffer(shown, np.uint8).reshape(ours.shape) - ours).mean() < 1
    if info.mirrored:
        turned_only = np.rot90(rgb, info.rotation // 90).astype(int)
        assert turned_only.shape != ours.shape or np.abs(turned_only - ours).mean() > 10


def test_pcm_audio_from_matroska_is_copied_into_mp4(clips, tmp_path):
    """PCM in Matroska has no named channel layout ("2 channels"): the MP4 muxer refused it and the
    whole video failed as a write error (exit 1); ffmpeg names it stereo, and so do we now."""
    import av

    source = tmp_path / "pcm.mkv"
    ffmpeg("-i", str(clips["bbb"]), "-c:v", "copy", "-c:a", "pcm_s16le", str(source))
    target = tmp_path / "out.mp4"
    upscale_video(NearestBackend(2), source, target, progress=False)
    with av.open(str(target)) as container:
        audio = container.streams.audio[0].codec_context
        assert (audio.name, audio.layout.name) == ("pcm_s16le", "stereo")
    assert abs(audio_seconds(target) - audio_seconds(source)) < 0.05


def test_streams_left_out_of_the_output_are_named(clips, tmp_path):
    """A second video stream and a QuickTime timecode track vanished without a word (audio and
    subtitles that cannot be carried were already named)."""
    source = tmp_path / "extras.mov"
    ffmpeg(
        "-i",
        str(clips["bbb"]),
        "-i",
        str(clips["car"]),
        "-map",
        "0",
        "-map",
        "1:v",
        "-c",
        "copy",
        "-timecode",
        "01:00:00:00",
        str(source),
    )
    said: list[str] = []
    upscale_video(NearestBackend(2), source, tmp_path / "out.mp4", progress=False, log=said.append)
    left = [line for line in said if "not carried over" in line]
    # ffmpeg writes a timecode track per video stream
    expected = "video (h264), data (timecode), data (timecode)"
    assert left == [f"warning: {source}: not carried over to the output: {expected}"], said
    plain: list[str] = []
    upscale_video(NearestBackend(2), clips["bbb"], tmp_path / "plain.mp4", progress=False, log=plain.append)
    assert not [line for line in plain if "not carried over" in line]


def test_what_the_output_cannot_keep_is_said(clips, tmp_path):
    """Interlaced input went through as progressive, ProRes 4444's alpha and its 12 bits were lost,
    each without a word."""
    interlaced, alpha = tmp_path / "interlaced.mp4", tmp_path / "alpha.mov"
    ffmpeg(
        "-i",
        str(clips["bbb"]),
        "-an",
        "-c:v",
        "libx264",
        "-flags",
        "+ildct+ilme",
        "-field_order",
        "tt",
        str(interlaced),
    )
    ffmpeg(
        "-i",
        str(clips["bbb"]),
        "-an",
        "-c:v",
        "prores_ks",
        "-profile:v",
        "4444",
        "-pix_fmt",
        "yuva444p12le",
        str(alpha),
    )
    result = upscale_video(NearestBackend(2), interlaced, tmp_path / "i.mp4", progress=False, log=lambda m: None)
    assert [w for w in result.warnings if "interlaced; upscaled as progressive" in w], result.warnings
    result = upscale_video(NearestBackend(2), alpha, tmp_path / "a.mp4", progress=False, log=lambda m: None)
    assert [w for w in result.warnings if "its alpha channel is not kept" in w], result.warnings
    assert [w for w in result.warnings if "12-bit input written as 10-bit yuv420p10le" in w], result.warnings
    plain = upscale_video(NearestBackend(2), clips["bbb"], tmp_path / "p.mp4", progress=False, log=lambda m: None)
    assert plain.warnings == []


def test_ray_refuses_to_cut_a_turned_or_mirrored_video(clips, tmp_path):
    """`--ray` pieces would lose the display matrix: a rotated or mirrored video is refused by the
    one check both the local and the stored pieces use (the stored one let a mirror through)."""
    from sr_deploy.video.pieces import check_cuttable
    from sr_deploy.video.probe import probe_video

    check_cuttable(clips["car"], probe_video(clips["car"]))  # upright: cut as usual
    for flags, turned in [
        (["-display_vflip"], "a mirrored video (0 degrees)"),
        (["-display_rotation", "90"], "a rotated"),
    ]:
        clip = tmp_path / "turned.mp4"
        ffmpeg(*flags, "-i", str(clips["car"]), "-c", "copy", str(clip))
        with pytest.raises(InputError, match="^" + re.escape(f"s3://b/turned.mp4: {turned}")):
            check_cuttable("s3://b/turned.mp4", probe_video(clip))


def test_unreadable_video_is_an_input_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(InputError, match="broken.mp4"):
        upscale_video(NearestBackend(2), bad, tmp_path / "out.mp4", progress=False)
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.slow
def test_frame_count_is_decoded_not_taken_from_header(video_dir, tmp_path):
    """car_traffic_small.mp4's header says 922 frames; 917 decode. Identity 'model' for speed."""
    target = tmp_path / "car_full.mp4"
    result = upscale_video(
        NearestBackend(1),
        video_dir / "car_traffic_small.mp4",
        target,
        batch_size=16,
        preset="ultrafast",
        progress=False,
    )
    assert result.frames == 917
    assert decoded_video(target)[0] == 917
    _assert_same_times(video_dir / "car_traffic_small.mp4", target)


@pytest.mark.slow
def test_killed_mid_file_the_rerun_resumes_and_every_frame_is_there_once(video_dir, tiny_vgg, tmp_path):
    """A 300-frame clip with audio, killed (SIGKILL) once 150 frames are committed: the re-run
    infers only the rest, and the result has every input frame once, at its time, and the audio."""
    clip = tmp_path / "long.mp4"
    ffmpeg(
        "-stream_loop",
        "1",
        "-i",
        str(video_dir / "mov_bbb.mp4"),
        "-t",
        "12",
        "-vf",
        SMALL,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "aac",
        str(clip),
    )
    assert len(frame_times(clip)) == 300
    args = ["--model", str(tiny_vgg), "--segment-seconds", "1", "--batch-size", "1"]

    target = tmp_path / "resumed.mp4"
    manifest = segments_dir(target) / "manifest.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sr_deploy",
            "upscale",
            str(clip),
            "-o",
            str(target),
            *args,
            "--device",
            "cpu",
            "--no-progress",
            "--preset",
            "ultrafast",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    committed = 0
    while committed < 150:
        assert process.poll() is None, "finished before it could be killed: " + process.stderr.read().decode()
        assert time.monotonic() < deadline
        try:
            committed = sum(s["frames"] for s in json.loads(manifest.read_text())["segments"])
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert not target.exists()

    again = _cli(str(clip), "-o", str(target), *args)
    assert again.returncode == 0, again.stderr
    line = next(line for line in again.stderr.splitlines() if "frames (" in line)
    inferred = int(line.split("frames (")[1].split(" inferred")[0])
    assert inferred < 0.6 * 300 and f"resumed after frame {300 - inferred}" in line
    # An uninterrupted run keeps every input frame at its input time (the tests above): so must this.
    assert frame_times(target) == pytest.approx(frame_times(clip), abs=1e-6)  # every frame once, same times
    assert abs(audio_seconds(target) - audio_seconds(clip)) <= 0.01
    assert _leftovers(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_video_job_leaves_no_final_output(video_dir, tiny_vgg, tmp_path, sig):
    """Kill `sr-deploy upscale` mid-video: never a final-named file; SIGTERM removes the temporary
    segment being written and keeps the finished ones for the re-run."""
    target = tmp_path / "killed.mp4"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sr_deploy",
            "upscale",
            str(video_dir / "mov_bbb.mp4"),
            "-o",
            str(target),
            "--model",
            str(tiny_vgg),
            "--device",
            "cpu",
            "--preset",
            "ultrafast",
            "--no-progress",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not list(segments_dir(target).glob("*.partial")):  # the encoder has started writing
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the job never started writing"
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(process.pid, sig)
    process.wait(timeout=60)
    assert process.returncode != 0
    assert not target.exists() and not partial_output_path(target).exists()
    if sig == signal.SIGTERM:
        assert not list(segments_dir(target).glob("*.partial"))


def test_the_damage_message_names_the_frame_where_decoding_stopped(clips, tmp_path):
    """Issue 24 E: the message named the frames handed on (frame 15) while the decoder had stopped
    at frame 31; it now counts at the decoder, as PyAV decoding the same file does."""
    import re

    import av

    counted = 0
    with av.open(str(clips["corrupt"])) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                counted += len(stream.codec_context.decode(packet))
        except av.FFmpegError:
            pass
    with pytest.raises(VideoDamaged) as caught:
        upscale_video(NearestBackend(2), clips["corrupt"], tmp_path / "c.mp4", preset="ultrafast", progress=False)
    named = int(re.search(r"\(frame (\d+)\)", str(caught.value)).group(1))
    assert named == counted, str(caught.value)


def test_a_stream_whose_size_changes_is_refused_in_one_line(video_dir, tmp_path):
    """Issue 24 E: frames after a resolution change were squashed to the first frame's size, exit 0."""
    from _upscale_support import ffmpeg

    parts = []
    for name, start, size in (("a", "0", "160:88"), ("b", "1", "128:72")):
        part = tmp_path / f"{name}.ts"
        encode = ["-c:v", "libx264", "-preset", "ultrafast", "-an", "-f", "mpegts", str(part)]
        ffmpeg("-ss", start, "-i", str(video_dir / "mov_bbb.mp4"), "-t", "0.6", "-vf", f"scale={size}", *encode)
        parts.append(part.read_bytes())
    (tmp_path / "ab.ts").write_bytes(b"".join(parts))  # MPEG-TS parts concatenate as they are
    source = tmp_path / "changing.mkv"
    ffmpeg("-i", str(tmp_path / "ab.ts"), "-c", "copy", str(source))
    target = tmp_path / "out.mp4"
    with pytest.raises(InputError, match=r"changing.mkv: the picture size changes from 160x88 to 128x72 at frame 16 "):
        upscale_video(NearestBackend(2), source, target, preset="ultrafast", progress=False)
    assert not target.exists()


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_rgb_coded_input_gets_a_real_output_matrix(video_dir, tmp_path, suffix):
    """Issue 24 E: gbrp input (colour matrix 0) had its matrix copied onto a yuv420p output: .mp4
    mis-tagged, .webm refused by libvpx with a cryptic error and an empty segments folder."""
    import av
    from _upscale_support import ffmpeg, video_stream_facts

    source = tmp_path / "rgb.mkv"
    ffmpeg(
        "-i",
        str(video_dir / "mov_bbb.mp4"),
        "-t",
        "0.4",
        "-vf",
        "scale=160:88",
        "-c:v",
        "ffv1",
        "-pix_fmt",
        "gbrp",
        "-an",
        str(source),
    )
    assert video_stream_facts(source)["colorspace"] == 0
    target = tmp_path / f"out{suffix}"
    upscale_video(NearestBackend(2), source, target, preset="ultrafast", progress=False)
    facts = video_stream_facts(target)
    # BT.601 (SMPTE 170M) below 720 lines; RGB is full range, so is the YUV made of it (yuvj420p)
    assert facts["pix_fmt"] in ("yuv420p", "yuvj420p") and facts["colorspace"] == 6
    # decoded as tagged, the colours are the input's (up to chroma subsampling and the codec)
    with av.open(str(source)) as a, av.open(str(target)) as b:
        first_in = next(a.decode(video=0)).to_ndarray(format="rgb24").astype(float)
        first_out = next(b.decode(video=0)).to_ndarray(format="rgb24").astype(float)[::2, ::2]
    assert np.abs(first_out.mean(axis=(0, 1)) - first_in.mean(axis=(0, 1))).max() < 3.0
