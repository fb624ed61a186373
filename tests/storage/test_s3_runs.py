"""`sr-deploy upscale` with s3:// inputs and outputs, without Ray, against a real S3 endpoint
(moto's server on 127.0.0.1, started by the `s3_endpoint` fixture): objects byte-identical to a
local run, atomic puts (no temporary key left), skip-if-done and resume, and the one-line
exit-2 refusals (bad URI, missing credentials, missing bucket) that write nothing."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from _compare import assert_same_files
from _s3_server import s3_fs, s3_objects
from _upscale_support import save_tiny_srvgg

from sr_deploy.upscale import UpscaleOptions, upscale
from sr_deploy.upscale.stored import upscale_stored

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # a model run per test, CLI subprocesses


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_srvgg(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture
def bucket(s3_endpoint) -> str:
    """A new, empty bucket for one test."""
    import fsspec

    name = f"b-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    return name


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _options(model: Path, **kw) -> UpscaleOptions:
    return UpscaleOptions(model=str(model), device="cpu", precision="fp32", progress=False, **kw)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sr_deploy", "upscale", *args],
        env=dict(env if env is not None else os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_folder_from_s3_to_s3_equals_a_local_run_and_resumes(tiny_model, set5_dir, bucket, tmp_path):
    fs = s3_fs()
    local_in = tmp_path / "in"
    for i, path in enumerate(sorted(set5_dir.glob("*.png"))[:3]):
        sub = local_in / ("sub" if i == 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / path.name).write_bytes(path.read_bytes())
    fs.put(str(local_in), f"{bucket}/in", recursive=True)
    fs.pipe_file(f"{bucket}/in/.hidden.png", b"not ours")  # hidden objects are skipped, like hidden files
    local = upscale([local_in], tmp_path / "local", _options(tiny_model), log=lambda m: None)
    assert len(local.done) == 3

    logs: list[str] = []
    result = upscale_stored([f"s3://{bucket}/in/"], f"s3://{bucket}/out/", _options(tiny_model), logs.append)
    assert len(result.done) == 3 and not result.failed
    assert_same_files(s3_objects(f"s3://{bucket}/out"), _files(tmp_path / "local"))  # byte for byte, no temporary keys

    # skip-if-done: nothing is redone; a deleted output is redone alone; the temporary object a
    # writer killed between upload and move left beside a finished output is removed
    stems = [path.stem for path in sorted(set5_dir.glob("*.png"))[:3]]
    fs.rm_file(f"{bucket}/out/sub/{stems[2]}.png")
    fs.pipe_file(f"{bucket}/out/.{stems[0]}.partial-0123abcd.png", b"half an upload")
    fs.pipe_file(f"{bucket}/out/.not-an-output.partial-0123abcd.png", b"someone else's")
    again = upscale_stored([f"s3://{bucket}/in"], f"s3://{bucket}/out", _options(tiny_model), logs.append)
    assert len(again.done) == 1 and len(again.skipped) == 2
    assert "skipping 2 output(s) that already exist (--overwrite redoes them)" in logs
    assert "removed 1 temporary object(s) left beside finished outputs by an interrupted writer" in logs
    fs.rm_file(f"{bucket}/out/.not-an-output.partial-0123abcd.png")  # kept: not beside one of ours
    assert_same_files(s3_objects(f"s3://{bucket}/out"), _files(tmp_path / "local"))


def test_local_to_s3_and_s3_to_local_single_files(tiny_model, set5_dir, bucket, tmp_path):
    bird = set5_dir / "bird.png"
    local = upscale([bird], tmp_path / "local.png", _options(tiny_model), log=lambda m: None)
    assert local.done
    proc = _cli(
        str(bird),
        "-o",
        f"s3://{bucket}/x4/bird.png",
        "--model",
        str(tiny_model),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"result: s3://{bucket}/x4/bird.png"
    assert_same_files(s3_objects(f"s3://{bucket}/x4"), {"bird.png": (tmp_path / "local.png").read_bytes()})
    back = upscale_stored([f"s3://{bucket}/x4/bird.png"], tmp_path / "small", _options(tiny_model, outscale=1.0))
    assert back.done == [str(tmp_path / "small" / "bird.png")] and (tmp_path / "small" / "bird.png").stat().st_size


def test_stored_outputs_made_with_another_model_fail_and_are_kept(tiny_model, set5_dir, bucket, tmp_path):
    """The skip rule reads an image object's record with ranged reads (a PNG's last bytes, a
    JPEG's first): another model's outputs fail their jobs (exit 2), untouched."""
    fs = s3_fs()
    for name in ("bird.png", "head.png"):
        fs.put_file(str(set5_dir / name), f"{bucket}/in/{name}")
    out = f"s3://{bucket}/out/"
    for ext in ("png", "jpg"):
        assert upscale_stored([f"s3://{bucket}/in/"], out, _options(tiny_model, ext=ext), lambda m: None).done
    made = s3_objects(f"s3://{bucket}/out")
    assert sorted(made) == ["bird.jpg", "bird.png", "head.jpg", "head.png"]
    other = save_tiny_srvgg(tmp_path / "other.pt", seed=1)
    logs: list[str] = []
    for ext in ("png", "jpg"):
        result = upscale_stored([f"s3://{bucket}/in/"], out, _options(other, ext=ext), logs.append)
        assert result.exit_code() == 2 and len(result.failed) == 2 and not result.done
    errors = [line for line in logs if line.startswith("error:")]
    assert [line.split(": ")[1] for line in errors] == [
        f"{out}{n}" for n in ("bird.png", "head.png", "bird.jpg", "head.jpg")
    ]
    assert all("already there, made with another model (tiny.pt:" in line for line in errors)
    assert s3_objects(f"s3://{bucket}/out") == made
    again = upscale_stored([f"s3://{bucket}/in/"], out, _options(tiny_model), lambda m: None)
    assert len(again.skipped) == 2 and not again.failed
    # another object under the same name (the input's size, read with a stat, is in the record)
    fs.put_file(str(set5_dir / "baby.png"), f"{bucket}/in/bird.png")
    logs.clear()
    replaced = upscale_stored([f"s3://{bucket}/in/"], out, _options(tiny_model), logs.append)
    assert replaced.exit_code() == 2 and len(replaced.skipped) == 1, logs
    size = (set5_dir / "bird.png").stat().st_size
    assert f"{out}bird.png: already there, made from another input ({size} bytes;" in replaced.failed[0][1]
    assert s3_objects(f"s3://{bucket}/out") == made


def test_a_prefix_holding_files_in_no_format_it_reads_names_them_in_a_note(set5_dir, bucket):
    """As for a local folder: the objects left out (HEIC, text) are named, hidden ones are not."""
    from sr_deploy.upscale.stored import plan_stored

    fs = s3_fs()
    fs.put_file(str(set5_dir / "bird.png"), f"{bucket}/mixed/bird.png")
    for name in ("IMG_1.heic", "notes.txt", ".hidden.txt"):
        fs.pipe_file(f"{bucket}/mixed/{name}", b"not read")
    logs: list[str] = []
    jobs = plan_stored([f"s3://{bucket}/mixed/"], f"s3://{bucket}/out/", "png", logs.append)
    assert [str(job.source) for job in jobs] == [f"s3://{bucket}/mixed/bird.png"]
    assert logs == [
        f"note: s3://{bucket}/mixed/: 2 file(s) left out, in no image or video format this reads: IMG_1.heic, notes.txt"
    ]


def test_an_input_prefix_inside_the_output_prefix_is_read(tiny_model, set5_dir, bucket):
    """`s3://b/in/ -o s3://b/`: the input lies inside OUT (not the reverse): its objects are inputs
    (it said "no image or video files found")."""
    s3_fs().put_file(str(set5_dir / "bird.png"), f"{bucket}/in/bird.png")
    result = upscale_stored([f"s3://{bucket}/in/"], f"s3://{bucket}/", _options(tiny_model), lambda m: None)
    assert result.done == [f"s3://{bucket}/bird.png"], result.failed


def test_an_upper_case_scheme_reads_the_same_store(tiny_model, set5_dir, bucket, tmp_path):
    """A URI scheme is case-insensitive (RFC 3986): `S3://b/in/` said "Protocol not known: S3"."""
    s3_fs().put_file(str(set5_dir / "bird.png"), f"{bucket}/in/bird.png")
    result = upscale_stored([f"S3://{bucket}/in/"], tmp_path / "out", _options(tiny_model), lambda m: None)
    assert result.done == [str(tmp_path / "out" / "bird.png")], result.failed
    assert (tmp_path / "out" / "bird.png").stat().st_size > 0


def test_a_second_run_over_a_prefix_leaves_the_first_runs_outputs_out(tiny_model, set5_dir, bucket):
    """As for a local folder: `s3://b/photos/ -o s3://b/photos/x4/`, then `-o s3://b/photos/x4_b/`:
    the first run's outputs (they record that sr-deploy made them) are not upscaled again (x16),
    and a note names them; given as an object, one still is."""
    fs = s3_fs()
    fs.put_file(str(set5_dir / "bird.png"), f"{bucket}/photos/bird.png")
    photos = f"s3://{bucket}/photos/"
    first = upscale_stored([photos], f"{photos}x4/", _options(tiny_model), lambda m: None)
    assert first.done == [f"{photos}x4/bird.png"], first.failed
    logs: list[str] = []
    second = upscale_stored([photos], f"{photos}x4_b/", _options(tiny_model), logs.append)
    assert second.done == [f"{photos}x4_b/bird.png"], second.failed
    assert (
        f"note: {photos}: 1 file(s) left out, made by sr-deploy (give them as files to redo them): x4/bird.png" in logs
    )
    given = upscale_stored([f"{photos}x4/bird.png"], f"s3://{bucket}/x16/", _options(tiny_model), lambda m: None)
    assert given.done == [f"s3://{bucket}/x16/bird.png"], given.failed


def test_two_runs_on_one_stored_output_neither_share_its_stage_nor_both_write_it(tiny_model, set5_dir, bucket):
    """The stage folder of a stored output is locked for its whole job: a run that finds it held
    fails at once (it used to fetch into it and lose the files the other run deleted); one that
    finds the object finished meanwhile skips it (same model) or refuses it (another), unchanged."""
    from sr_deploy.upscale import settled
    from sr_deploy.upscale.plan import Job
    from sr_deploy.upscale.stored import run_staged, stage_dir
    from sr_deploy.util.files import exclusive_output

    fs = s3_fs()
    fs.put_file(str(set5_dir / "bird.png"), f"{bucket}/in/bird.png")
    source, target = f"s3://{bucket}/in/bird.png", f"s3://{bucket}/out/bird.png"
    options = settled(_options(tiny_model))
    from _upscale_support import cpu_backend

    backend = cpu_backend(tiny_model)
    with exclusive_output(stage_dir(target)):  # another run is staging this output
        busy = run_staged(Job(source, target, "image"), backend, options)
    assert busy.state == "failed" and busy.code == 1
    assert busy.message == f"{target}: another run is writing this output; try again when it has finished"
    assert run_staged(Job(source, target, "image"), backend, options).state == "done"
    made = s3_objects(f"s3://{bucket}/out")["bird.png"]
    assert run_staged(Job(source, target, "image"), backend, options).state == "skipped"  # finished meanwhile
    other = save_tiny_srvgg(tiny_model.parent / "other.pt", seed=1)
    refused = run_staged(Job(source, target, "image"), cpu_backend(other), settled(_options(other)))
    assert refused.state == "failed" and refused.code == 2 and "made with another model" in refused.message
    assert s3_objects(f"s3://{bucket}/out")["bird.png"] == made


def test_an_output_whose_put_failed_is_put_by_the_next_run(tiny_model, set5_dir, bucket, monkeypatch):
    """The put of a finished output fails (the store went away): the output stays in its stage
    folder. The next run finds it there, made with the same record, and must put it, not report
    it "skipped (already there)" while the store still lacks it."""
    from _upscale_support import cpu_backend

    from sr_deploy.errors import SRDeployError
    from sr_deploy.upscale import settled
    from sr_deploy.upscale.plan import Job
    from sr_deploy.upscale.stored import run_staged
    from sr_deploy.util import storage

    s3_fs().put_file(str(set5_dir / "bird.png"), f"{bucket}/in/bird.png")
    job = Job(f"s3://{bucket}/in/bird.png", f"s3://{bucket}/out/bird.png", "image")
    options, backend = settled(_options(tiny_model)), cpu_backend(tiny_model)
    put = storage.put_atomic

    def unreachable(*args, **kwargs):
        raise SRDeployError("cannot upload (the store went away)")

    monkeypatch.setattr(storage, "put_atomic", unreachable)
    assert run_staged(job, backend, options).state == "failed"
    monkeypatch.setattr(storage, "put_atomic", put)
    again = run_staged(job, backend, options)
    assert again.state == "done", again
    assert list(s3_objects(f"s3://{bucket}/out")) == ["bird.png"]
    # a stage copy of another model's output whose put failed is made again, not refused
    # ("already there") while the store does not have it
    s3_fs().rm(f"{bucket}/out/bird.png")
    other = save_tiny_srvgg(tiny_model.parent / "other-put.pt", seed=2)
    monkeypatch.setattr(storage, "put_atomic", unreachable)
    assert run_staged(job, cpu_backend(other), settled(_options(other))).state == "failed"
    monkeypatch.setattr(storage, "put_atomic", put)
    redone = run_staged(job, backend, options)
    assert redone.state == "done", redone
    put_back = tiny_model.parent / "put-back.png"
    put_back.write_bytes(s3_objects(f"s3://{bucket}/out")["bird.png"])
    from sr_deploy.upscale.plan import output_record

    assert output_record(put_back)["model"].startswith("tiny.pt:")  # this run's model, not the stale copy's


def test_a_failed_image_leaves_no_stage_folder_behind(tiny_model, bucket):
    """A damaged image object fails in one line; its fetched copy does not stay in $TMPDIR for
    ever (a video's stays: its segments resume the next run)."""
    from _upscale_support import cpu_backend

    from sr_deploy.upscale import settled
    from sr_deploy.upscale.plan import Job
    from sr_deploy.upscale.stored import run_staged, stage_dir

    s3_fs().pipe_file(f"{bucket}/in/broken.png", b"\x89PNG\r\n\x1a\n not really")
    target = f"s3://{bucket}/out/broken.png"
    outcome = run_staged(
        Job(f"s3://{bucket}/in/broken.png", target, "image"), cpu_backend(tiny_model), settled(_options(tiny_model))
    )
    assert outcome.state == "failed" and outcome.code == 2, outcome
    assert not stage_dir(target).exists()


def test_a_video_from_s3_to_s3_equals_a_local_run(tiny_model, video_dir, bucket, tmp_path):
    from test_cluster import _frame_md5s, _small_clip

    clip = _small_clip(video_dir, tmp_path / "clip.mp4")
    options = _options(tiny_model, codec="libx264", crf=0, preset="ultrafast", segment_seconds=0.5)
    assert upscale([clip], tmp_path / "local.mp4", options, log=lambda m: None).done
    s3_fs().put_file(str(clip), f"{bucket}/videos/clip.mp4")
    result = upscale_stored([f"s3://{bucket}/videos/clip.mp4"], f"s3://{bucket}/out/", options, lambda m: None)
    assert result.done == [f"s3://{bucket}/out/clip.mp4"], result.failed
    assert list(s3_objects(f"s3://{bucket}/out")) == ["clip.mp4"]
    (tmp_path / "s3.mp4").write_bytes(s3_objects(f"s3://{bucket}/out")["clip.mp4"])
    assert _frame_md5s(tmp_path / "s3.mp4") == _frame_md5s(tmp_path / "local.mp4")
    # a re-run reads the stored video's comment tag from its header: its own model skips it,
    # another model fails it (exit 2) and leaves the object as it is
    again = upscale_stored([f"s3://{bucket}/videos/clip.mp4"], f"s3://{bucket}/out/", options, lambda m: None)
    assert again.skipped == [f"s3://{bucket}/out/clip.mp4"] and not again.failed
    other = dataclasses.replace(options, model=str(save_tiny_srvgg(tmp_path / "other.pt", seed=1)))
    refused = upscale_stored([f"s3://{bucket}/videos/clip.mp4"], f"s3://{bucket}/out/", other, lambda m: None)
    assert refused.exit_code() == 2 and "already there, made with another model (tiny.pt:" in refused.failed[0][1]
    assert s3_objects(f"s3://{bucket}/out")["clip.mp4"] == (tmp_path / "s3.mp4").read_bytes()


BAD_LOCATIONS = [
    ("foo://x/in/", "error: foo://x/in/: not a storage URI this installation can read (Protocol not known: foo)"),
    # a scheme fsspec knows, whose package is missing: fsspec's own text names it (it said "install fsspec")
    ("oss://x/in/", "error: oss://x/in/: oss:// is not installed: Install ossfs to access Alibaba Object Storage"),
    ("s3://", "error: s3://: no bucket in the URI (expected s3://BUCKET/path)"),
    ("s3:///x/", "error: s3:///x/: no bucket in the URI (expected s3://BUCKET/path)"),
    (
        "s3://sr-deploy-no-such-bucket/in/",
        "error: s3://sr-deploy-no-such-bucket/in/: the bucket 'sr-deploy-no-such-bucket' does not exist",
    ),
    ("s3://{bucket}/nothing-here/", "error: s3://{bucket}/nothing-here/: no such object or prefix"),
]


@pytest.mark.parametrize(
    ("side", "where", "message"),
    # a prefix with nothing under it is no input, but a fine output (a new folder)
    [("input", w, m) for w, m in BAD_LOCATIONS] + [("output", w, m) for w, m in BAD_LOCATIONS if "nothing" not in w],
)
def test_bad_uris_and_missing_buckets_fail_in_one_line_exit_2(
    tiny_model, set5_dir, bucket, tmp_path, where, message, side
):
    where, message = where.format(bucket=bucket), message.format(bucket=bucket)
    args = [where, "-o", str(tmp_path / "out")] if side == "input" else [str(set5_dir), "-o", where]
    proc = _cli(*args, "--model", str(tiny_model), "--device", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not proc.stdout
    assert not (tmp_path / "out").exists() and s3_objects(f"s3://{bucket}") == {}


def test_missing_credentials_fail_in_one_line_exit_2(tiny_model, set5_dir, bucket, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_ENDPOINT_URL"}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"))
    proc = _cli(str(set5_dir), "-o", f"s3://{bucket}/out/", "--model", str(tiny_model), env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: s3://{bucket}/out/: no usable credentials for s3:// (Unable to locate credentials): "
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
    )
    assert s3_objects(f"s3://{bucket}") == {}


def test_a_failed_put_leaves_no_object_under_any_name(bucket, tmp_path):
    from sr_deploy.errors import SRDeployError
    from sr_deploy.util import storage

    with pytest.raises(SRDeployError, match=f"s3://{bucket}/o/x.png: cannot upload"):
        storage.put_atomic(tmp_path / "missing.png", f"s3://{bucket}/o/x.png")
    assert s3_objects(f"s3://{bucket}") == {}
    (tmp_path / "x.png").write_bytes(b"x" * 100)
    assert storage.put_atomic(tmp_path / "x.png", f"s3://{bucket}/o/x.png") == f"s3://{bucket}/o/x.png"
    assert s3_objects(f"s3://{bucket}") == {"o/x.png": b"x" * 100}
    assert storage.partial_key(f"s3://{bucket}/o/x.png").startswith(f"s3://{bucket}/o/.x.partial-")
    big = os.urandom(17 << 20)  # over two upload chunks: a multipart upload, completed under the temporary key
    (tmp_path / "big.mp4").write_bytes(big)
    storage.put_atomic(tmp_path / "big.mp4", f"s3://{bucket}/o/big.mp4")
    assert s3_objects(f"s3://{bucket}/o") == {"big.mp4": big, "x.png": b"x" * 100}


def test_a_stored_videos_pieces_for_a_local_output_resume_and_a_replaced_object_starts_again(
    tiny_model, video_dir, bucket, tmp_path
):
    """`--ray` with a video from a store to a local OUT: the driver's copy of the object lives in
    the output's stage folder, so a re-run (another scratch folder) finds the pieces of the
    interrupted one; an object replaced under the same key (same size) is fetched again and its
    old pieces are not resumed. (Before, the copy sat in each run's own scratch folder and no
    run ever resumed.)"""
    from test_cluster import _small_clip

    from sr_deploy.upscale.plan import Job
    from sr_deploy.upscale.remote import piece_settings
    from sr_deploy.upscale.remote_stored import StoredRemoteRun

    clip = _small_clip(video_dir, tmp_path / "clip.mp4")
    uri = f"s3://{bucket}/v/clip.mp4"
    s3_fs().put_file(str(clip), uri)
    job = Job(uri, str(tmp_path / "out" / "clip.mp4"), "video")  # type: ignore[arg-type]
    settings = piece_settings(_options(tiny_model, segment_seconds=0.5), "tiny.pt:0", ".mp4")

    first = StoredRemoteRun._cut(job, tmp_path / "scratch-1", 0.5, settings)
    assert first.parts >= 3 and not first.done
    first.add(0, b"an upscaled piece", 12)  # the run "died" after its first piece came back
    again = StoredRemoteRun._cut(job, tmp_path / "scratch-2", 0.5, settings)
    assert sorted(again.done) == [0] and [part for part, _, _ in again.pending] == list(range(1, first.parts))

    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size, another object (a byte of the media data)
    s3_fs().pipe_file(uri, bytes(data))
    replaced = StoredRemoteRun._cut(job, tmp_path / "scratch-3", 0.5, settings)
    assert not replaced.done and len(replaced.pending) == replaced.parts


def test_without_fsspec_a_uri_names_what_to_install(monkeypatch):
    """A base install has no fsspec (each store's extra brings it): a scheme with an extra of ours
    names the extra, another one fsspec (it said "No module named 'fsspec'")."""
    from sr_deploy.errors import InputError
    from sr_deploy.util import storage

    monkeypatch.setitem(sys.modules, "fsspec", None)
    for uri, how in [
        ("s3://b/in/", "pip install 'sr-deploy[s3]'"),
        ("http://h/in/", "pip install fsspec and its implementation for it"),
    ]:
        with pytest.raises(InputError) as caught:
            storage.check_readable(uri)
        assert str(caught.value) == f"{uri}: {uri.split(':')[0]}:// is not installed: {how}"
