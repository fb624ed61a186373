"""Two runs on one output, and resume keys that know the model's bytes (issue 24 B and C).

Before: both runs used the same `.NAME.partial.EXT` and segments folder; in 4 of 5 tries the mp4
had no decodable stream while one run said "done". Now the output is locked for the duration of
its job: the second run fails at once in one line (exit 1) and the first one's file is whole."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _upscale_support import decoded_video, make_clip, save_tiny_srvgg

from sr_deploy.imaging import read_image
from sr_deploy.upscale.run import model_identity
from sr_deploy.util.files import OutputBusy, exclusive_output, lock_path

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_tiny_srvgg(tmp_path_factory.mktemp("m") / "vgg.pt")


def _upscale(source: Path, target: Path, model: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "sr_deploy", "upscale", str(source), "-o", str(target), "--model", str(model)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [*command, "--device", "cpu", "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_lock_refuses_a_second_holder_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out" / "a.png"
    with exclusive_output(target) as held:
        assert held == lock_path(target) and held.is_file()
        with pytest.raises(OutputBusy, match=r"a.png: another run is writing this output"):
            with exclusive_output(target):
                pass
    assert not lock_path(target).exists()
    with exclusive_output(target):  # free again
        pass


def test_a_run_on_an_output_another_run_holds_fails_in_one_line(set5_dir, model, tmp_path):
    target = tmp_path / "bird_x4.png"
    with exclusive_output(target):
        proc = _upscale(set5_dir / "bird.png", target, model)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {set5_dir / 'bird.png'}: {target}: another run is writing this output; try again when it has finished"
    ]
    assert "result:" not in out and not target.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["video", "image"])
def test_two_concurrent_runs_on_one_output_both_orders(set5_dir, video_dir, model, tmp_path, kind):
    """Each run either writes a whole, correct file, fails in one line, or (when the other run had
    already finished by the time it looked: a loaded machine starts Python slowly) skips the
    finished output as any rerun does; whichever starts first, one of them writes it."""
    if kind == "video":
        source = make_clip(video_dir / "mov_bbb.mp4", tmp_path / "clip.mp4", 1.0, audio=False)
        frames = decoded_video(source)[0]
        target = tmp_path / "clip_x4.mp4"
    else:
        source = set5_dir / "baby.png"
        target = tmp_path / "baby_x4.png"
    for order in range(2):
        target.unlink(missing_ok=True)
        first = _upscale(source, target, model)
        time.sleep(0.5 if order == 0 else 0.05)
        second = _upscale(source, target, model)
        results = [proc.communicate(timeout=600) + (proc.returncode,) for proc in (first, second)]
        for out, err, code in results:
            assert code in (0, 1), err
            if code == 1:
                errors = [line for line in err.splitlines() if line.startswith("error:")]
                assert len(errors) == 1 and "another run is writing this output" in errors[0], err
                assert "result:" not in out
            elif not out.strip():
                assert "0 done, 1 skipped (already there), 0 failed" in err, err
            else:
                assert out.strip() == f"result: {target}"
        assert sum(out.strip() == f"result: {target}" for out, _, _ in results) == 1, results
        if kind == "video":
            count, _fps, size = decoded_video(target)
            assert count == frames and size == (1280, 704)
        else:
            assert read_image(target).shape == (2048, 2048, 3)
        assert not lock_path(target).exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{target.stem}")]


def test_resume_key_changes_when_weights_change_in_place(tmp_path):
    """Same size and modification time, other bytes: another model for the resume key."""
    path = save_tiny_srvgg(tmp_path / "m.pt", seed=1)
    before = model_identity(str(path))
    stat = path.stat()
    data = bytearray(path.read_bytes())
    other = save_tiny_srvgg(tmp_path / "n.pt", seed=2).read_bytes()
    assert len(other) == len(data) and other != bytes(data)
    path.write_bytes(other)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    after = model_identity(str(path))
    assert before != after and before.startswith("m.pt:") and after.startswith("m.pt:")
    assert np.all([c in "0123456789abcdef" for c in after.split(":")[1]])


def test_a_ray_driver_takes_the_same_locks(video_dir, tmp_path):
    """The `--ray` driver (`upscale.remote.RemoteRun`, no cluster needed to test it): a video whose
    output another run holds fails at once (no piece cut or sent); an image that another run wrote
    while this run's row was away is left as it is and reported, not replaced with both runs
    saying done; the locks are released when the run ends."""
    from sr_deploy.upscale import UpscaleOptions, UpscaleSummary
    from sr_deploy.upscale.plan import Job
    from sr_deploy.upscale.remote import RemoteRun

    clip = make_clip(video_dir / "car_traffic_small.mp4", tmp_path / "clip.mp4", 0.5, size=(80, 46), audio=False)
    image = tmp_path / "in.png"
    image.write_bytes(b"not read: the row never leaves this test")
    video_out, image_out = tmp_path / "out" / "clip.mp4", tmp_path / "out" / "in.png"
    todo = [Job(clip, video_out, "video"), Job(image, image_out, "image")]
    summary, lines = UpscaleSummary(), []
    driver = RemoteRun(todo, summary, lines.append)
    with exclusive_output(video_out):  # a local run is writing the video
        driver.plan(
            UpscaleOptions(model="unused", model_id="unused:0", progress=False), "unused:0", tmp_path / "scratch"
        )
    assert [row["kind"] for row in driver.rows] == ["image"]  # nothing of the busy video is sent
    assert summary.failed[0][0] == clip and "another run is writing" in summary.failed[0][1]
    assert summary.failed[0][2] == 1 and not (tmp_path / "out" / ".clip.mp4.segments").exists()

    image_out.parent.mkdir(parents=True, exist_ok=True)
    image_out.write_bytes(b"the other run's picture")  # written while our row was away
    driver.answer(1, 0, True, "", 0, b"our picture", 0)
    assert image_out.read_bytes() == b"the other run's picture"
    assert "already there, and it does not say sr-deploy made it" in summary.failed[1][1]
    assert summary.failed[1][2] == 2 and not summary.done

    driver.close()
    assert not lock_path(video_out).exists() and not lock_path(image_out).exists()
    # a driver that does cut the video holds its output until the run ends
    second = RemoteRun(todo[:1], UpscaleSummary(), lines.append)
    second.plan(UpscaleOptions(model="unused", progress=False), "unused:0", tmp_path / "scratch2")
    assert second.rows and all(row["kind"] == "piece" for row in second.rows)
    with pytest.raises(OutputBusy, match="another run is writing"):
        with exclusive_output(video_out):
            pass
    second.close()
    with exclusive_output(video_out):  # free again
        pass


def test_an_output_another_run_finished_meanwhile_is_neither_redone_nor_replaced(set5_dir, model, tmp_path):
    """Two runs started together both pass their skip pass before either writes. Under the
    output's lock each job looks again (`plan.made_meanwhile`): the output of another model is
    refused (exit 2) and kept, not replaced with both runs saying done; the same model's is
    skipped, not made twice. The same in the `--ray` driver."""
    from _upscale_support import cpu_backend

    from sr_deploy.imaging import write_image
    from sr_deploy.upscale import UpscaleOptions, UpscaleSummary, settled
    from sr_deploy.upscale.plan import Job
    from sr_deploy.upscale.remote import RemoteRun
    from sr_deploy.upscale.run import run_one

    source, target = tmp_path / "a.png", tmp_path / "out" / "a.png"
    write_image(source, read_image(set5_dir / "bird.png")[:24, :32])
    first = settled(UpscaleOptions(model=str(model), device="cpu", progress=False, threads=1))
    assert run_one(Job(source, target, "image"), cpu_backend(model), first).state == "done"  # run A
    made, when = target.read_bytes(), target.stat().st_mtime_ns

    other = save_tiny_srvgg(tmp_path / "other.pt", seed=1)
    second = settled(UpscaleOptions(model=str(other), device="cpu", progress=False, threads=1))
    outcome = run_one(Job(source, target, "image"), cpu_backend(other), second)  # run B, past its skip pass
    assert outcome.state == "failed" and outcome.code == 2, outcome
    assert "already there, made with another model (vgg.pt:" in outcome.message
    again = run_one(Job(source, target, "image"), cpu_backend(model), first)  # run A's twin
    assert again.state == "skipped", again
    assert target.read_bytes() == made and target.stat().st_mtime_ns == when

    summary = UpscaleSummary()
    driver = RemoteRun([Job(source, target, "image")], summary, lambda line: None)
    driver.plan(first, first.model_id, tmp_path / "scratch")
    driver.answer(0, 0, True, "", 0, b"a picture made meanwhile by this run's row", 0)
    assert summary.skipped and not summary.failed and not summary.done
    assert target.read_bytes() == made


def test_the_ray_drivers_second_look_works_for_videos_and_for_targets_given_as_text(video_dir, set5_dir, tmp_path):
    """A video another run finished between the `--ray` driver's skip pass and its lock is not cut
    and sent again (refused here: it is not sr-deploy's); a stored run's image going to a local
    OUT (a target given as text) is written, and one that appeared meanwhile is left alone
    (it raised AttributeError and ended the whole run)."""
    from sr_deploy.upscale import UpscaleOptions, UpscaleSummary
    from sr_deploy.upscale.plan import Job
    from sr_deploy.upscale.remote import RemoteRun
    from sr_deploy.upscale.remote_stored import StoredRemoteRun

    options = UpscaleOptions(model="unused", model_id="unused:0", progress=False)
    clip = make_clip(video_dir / "car_traffic_small.mp4", tmp_path / "clip.mp4", 0.3, size=(48, 28), audio=False)
    video_out = tmp_path / "out" / "clip.mp4"
    video_out.parent.mkdir()
    video_out.write_bytes(clip.read_bytes())  # finished meanwhile, by something else
    summary = UpscaleSummary()
    driver = RemoteRun([Job(clip, video_out, "video")], summary, lambda line: None)
    driver.plan(options, "unused:0", tmp_path / "scratch")
    assert driver.rows == [] and summary.failed[0][2] == 2 and "does not say sr-deploy made it" in summary.failed[0][1]
    driver.close()
    assert video_out.read_bytes() == clip.read_bytes()

    target = tmp_path / "local" / "a.png"
    summary = UpscaleSummary()
    stored = StoredRemoteRun([Job("s3://bucket/in/a.png", str(target), "image")], summary, lambda line: None)
    stored.options = options
    stored.answer(0, 0, True, "", 0, b"our picture", 0)
    assert summary.done and target.read_bytes() == b"our picture"
    target.write_bytes(b"another run's picture")
    stored.answer(0, 0, True, "", 0, b"our picture", 0)
    assert summary.failed and target.read_bytes() == b"another run's picture"
