"""Held and duplicate frames reuse the previous output (issue 26, part 3): the decision per frame, the
batches it forms, and the whole pipeline on a clip of ../shared/data where every frame is shown twice
(lossless FFV1, so the duplicates are exact after decoding), against a run without reuse.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from _upscale_support import NearestBackend, cpu_backend, ffmpeg, frame_times, save_tiny_srvgg

from sr_deploy.errors import InputError
from sr_deploy.video import EXACT, parse_threshold, segments_dir, upscale_video
from sr_deploy.video.held import MAX_HELD_STAMPS, HeldBatcher, HeldFrames, HeldOutputs, psnr_db

FRAMES = 12  # distinct frames of mov_bbb in the clips


def _doubled_clip(source: Path, target: Path, frames: int, twice: bool = True) -> Path:
    """The first `frames` frames of `source` at 96x52, each shown twice (25 fps) when `twice`."""
    chain = f"trim=end_frame={frames},scale=96:52" + (",setpts=2*PTS,fps=25" if twice else "")
    ffmpeg("-i", str(source), "-an", "-vf", chain, "-c:v", "ffv1", str(target))
    return target


def _decoded(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


@pytest.fixture(scope="module")
def clips(video_dir, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("held")
    bbb = video_dir / "mov_bbb.mp4"
    return {
        "doubled": _doubled_clip(bbb, folder / "doubled.mkv", FRAMES),
        "plain": _doubled_clip(bbb, folder / "plain.mkv", FRAMES, twice=False),
    }


@pytest.fixture(scope="module")
def tiny_vgg(tmp_path_factory) -> Path:
    return save_tiny_srvgg(tmp_path_factory.mktemp("m") / "vgg.pt")


class _Counting(NearestBackend):
    """Nearest x2 counting the frames it is given."""

    def __init__(self) -> None:
        super().__init__(2)
        self.frames = 0

    def __call__(self, x):
        self.frames += len(x)
        return super().__call__(x)


class _Interrupt(_Counting):
    """Raises KeyboardInterrupt (as Ctrl-C would) once it has run `frames` frames, after a pause in
    which the writer finishes what it was given (so where the run stops does not depend on timing)."""

    def __init__(self, frames: int) -> None:
        super().__init__()
        self.limit = frames

    def __call__(self, x):
        if self.frames >= self.limit:
            time.sleep(0.5)
            raise KeyboardInterrupt
        return super().__call__(x)


def _frame(value: int, shape=(4, 6, 3)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def test_threshold_words_and_numbers():
    assert parse_threshold("exact") == EXACT and parse_threshold("off") is None and parse_threshold("45") == 45.0
    for bad in ("0", "-3", "nan", "loud"):
        with pytest.raises(InputError, match="--dedup-threshold"):
            parse_threshold(bad)


def test_exact_reuses_only_identical_frames():
    held = HeldFrames(EXACT)
    a, b = _frame(10), _frame(11)
    assert [held.is_held(f) for f in (a, a.copy(), b, b.copy(), b.copy(), a)] == [False, True, False, True, True, False]
    assert held.reused == 3
    off = HeldFrames(None)
    assert not any(off.is_held(f) for f in (a, a.copy()))


def test_a_threshold_compares_with_the_frame_whose_output_is_reused_so_drift_is_caught():
    """Each frame is one level above the last (PSNR 48 dB to it), so consecutive frames always pass
    a 40 dB threshold; against the reference the drift passes 40 dB after 3 steps and is recomputed."""
    held = HeldFrames(40.0)
    frames = [_frame(v) for v in range(10, 20)]
    decisions = [held.is_held(f) for f in frames]
    assert psnr_db(frames[0], frames[1]) == pytest.approx(48.13, abs=0.01)
    assert psnr_db(frames[0], frames[3]) < 40 <= psnr_db(frames[0], frames[2])
    assert decisions == [False, True, True, False, True, True, False, True, True, False]
    assert math.isinf(psnr_db(frames[0], frames[0].copy()))


def test_batches_hold_only_frames_for_the_model_and_slots_point_at_their_outputs():
    batcher = HeldBatcher(2, EXACT)
    a, b, c = _frame(1), _frame(2), _frame(3)
    out = [batcher.add(pts, f) for pts, f in enumerate([a, a, b, b, b, c, c])]
    first = out[3 - 1]  # full once b (the second model frame) came
    assert first is not None and first.stamps == [0, 1, 2] and first.slots == [0, 0, 1] and len(first.frames) == 2
    assert [o for i, o in enumerate(out) if i != 2] == [None] * 6
    rest = batcher.flush()
    assert rest.stamps == [3, 4, 5, 6] and rest.slots == [-1, -1, 0, 0] and len(rest.frames) == 1
    assert batcher.flush() is None and batcher.reused == 4
    outputs = HeldOutputs()
    assert outputs.expand(first.slots, ["A", "B"]) == ["A", "A", "B"]
    assert outputs.expand(rest.slots, ["C"]) == ["B", "B", "C", "C"]


def test_a_long_still_is_handed_on_without_waiting_for_a_new_frame():
    batcher = HeldBatcher(4, EXACT)
    handed = [b for b in (batcher.add(pts, _frame(5)) for pts in range(MAX_HELD_STAMPS + 1)) if b is not None]
    assert len(handed) == 1 and len(handed[0].stamps) == MAX_HELD_STAMPS and len(handed[0].frames) == 1
    last = batcher.flush()
    assert last.frames == [] and last.slots == [-1]


def _upscale(backend, source: Path, target: Path, **options):
    return upscale_video(
        backend, source, target, crf=0, preset="ultrafast", progress=False, log=lambda _m: None, **options
    )


def test_every_frame_shown_twice_runs_the_model_once_per_drawing_and_writes_the_same_video(clips, tiny_vgg, tmp_path):
    """A real x4 model on the doubled clip: half the frames through the model, and the video (x264
    lossless) equal, frame for frame, to a run without reuse; the timestamps are the input's."""
    backend = cpu_backend(tiny_vgg)
    reused = _upscale(backend, clips["doubled"], tmp_path / "reused.mp4")
    assert (reused.frames, reused.frames_inferred, reused.frames_reused) == (2 * FRAMES, FRAMES, FRAMES)
    plain = _upscale(backend, clips["doubled"], tmp_path / "plain.mp4", dedup_threshold=None)
    assert (plain.frames, plain.frames_inferred, plain.frames_reused) == (2 * FRAMES, 2 * FRAMES, 0)
    a, b = _decoded(tmp_path / "reused.mp4"), _decoded(tmp_path / "plain.mp4")
    assert len(a) == len(b) == 2 * FRAMES and a[0].shape == (208, 384, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert frame_times(tmp_path / "reused.mp4") == frame_times(clips["doubled"])


def test_a_clip_without_held_frames_runs_every_frame(clips, tmp_path):
    backend = _Counting()
    result = _upscale(backend, clips["plain"], tmp_path / "p.mp4", batch_size=3)
    assert (result.frames_inferred, result.frames_reused, backend.frames) == (FRAMES, 0, FRAMES)


def test_a_threshold_reuses_near_identical_frames_within_it(clips, tmp_path):
    """Consecutive mov_bbb frames at 96x52: a 20 dB threshold reuses some, and each output frame is
    the (nearest x2) output of an input frame at least 20 dB from the frame it stands for."""
    result = _upscale(_Counting(), clips["plain"], tmp_path / "t.mp4", dedup_threshold=20.0)
    assert 0 < result.frames_reused < FRAMES and result.frames_inferred + result.frames_reused == FRAMES
    inputs, outputs = _decoded(clips["plain"]), _decoded(tmp_path / "t.mp4")
    for source, written in zip(inputs, outputs):
        shrunk = written[::2, ::2]
        assert max(psnr_db(shrunk, candidate) for candidate in inputs) >= 35  # it is one of the inputs' outputs
        best = max(inputs, key=lambda candidate: psnr_db(shrunk, candidate))
        assert psnr_db(best, source) >= 20


def test_resume_recomputes_the_first_frame_after_the_last_finished_segment(clips, tmp_path):
    """Interrupted mid-clip with segments of 5 frames, so the last finished segment ends inside a held
    pair: the re-run starts with no reference frame, computes that held copy again, and the video
    equals an uninterrupted run without reuse, every frame there once."""
    target = tmp_path / "r.mp4"
    with pytest.raises(KeyboardInterrupt):  # 5 drawings = frames 0-9 decoded, 0-8 written: one segment
        _upscale(_Interrupt(5), clips["doubled"], target, segment_seconds=0.2, batch_size=1)
    assert segments_dir(target).is_dir() and not target.exists()
    again = _Counting()
    result = _upscale(again, clips["doubled"], target, segment_seconds=0.2, batch_size=1)
    assert (result.resumed_from, result.frames, again.frames) == (5, 2 * FRAMES, result.frames_inferred)
    assert (result.frames_inferred, result.frames_reused) == (1 + FRAMES - 3, FRAMES - 3)  # frame 5, then 6-23
    _upscale(NearestBackend(2), clips["doubled"], tmp_path / "ref.mp4", dedup_threshold=None)
    a, b = _decoded(target), _decoded(tmp_path / "ref.mp4")
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert frame_times(target) == frame_times(clips["doubled"])


def test_the_cli_says_how_many_frames_were_reused_and_off_turns_it_off(clips, tiny_vgg, tmp_path):
    import subprocess
    import sys

    def run(*extra: str) -> str:
        command = [sys.executable, "-m", "sr_deploy", "upscale", str(clips["doubled"]), "-o", str(tmp_path / "o.mp4")]
        command += ["--model", str(tiny_vgg), "--device", "cpu", "--no-progress", "--overwrite", *extra]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    assert f"{2 * FRAMES} frames ({FRAMES} inferred), {FRAMES} of {2 * FRAMES} frames reused" in run()
    assert f"({2 * FRAMES} inferred), 0 of {2 * FRAMES} frames reused" in run("--dedup-threshold", "off")
    bad = subprocess.run(
        [sys.executable, "-m", "sr_deploy", "upscale", str(clips["doubled"]), "-o", str(tmp_path / "b.mp4")]
        + ["--dedup-threshold", "loud"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "--dedup-threshold must be a number of dB > 0" in bad.stderr
