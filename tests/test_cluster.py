"""`sr-deploy upscale --ray` on a real local Ray cluster (2 CPUs, two actors, a tiny x4 model).

Checked against a local run of the same jobs: images byte for byte, a video frame by frame
(lossless x264, so decoded frames must be identical) with the same timestamps and the audio; a
bad input fails only itself; existing outputs are skipped; killing one actor mid-job still ends
with every output complete. The cluster listens on 127.0.0.1 only and is shut down at the end.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _compare import assert_same_files
from _upscale_support import save_tiny_srvgg

from sr_deploy.upscale import UpscaleOptions, upscale
from sr_deploy.video import find_ffmpeg

# Before Ray is imported: the test cluster listens on 127.0.0.1 only (see sr_deploy.cluster.LOOPBACK_ONLY_ENV).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'sr-deploy[ray]')")
pytestmark = pytest.mark.slow  # a Ray cluster per module, actors started and killed

ROOT = Path(__file__).resolve().parent.parent
ACTOR_TITLE = b"ray::MapWorker(MapBatches(_Upscaler))"


@pytest.fixture(scope="module")
def ray_cluster():
    """A local cluster with 2 CPUs on the loopback interface; its GCS address."""
    from sr_deploy.cluster import import_ray

    import_ray()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024, logging_level="warning")
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address  # nothing listens beyond this machine
        yield address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_srvgg(tmp_path_factory.mktemp("model") / "tiny.pt")


def _options(model: Path, **kw) -> UpscaleOptions:
    """The job's options; one CPU thread, so that two actors fit the 2-CPU test cluster."""
    return UpscaleOptions(model=str(model), device="cpu", precision="fp32", progress=False, **{"threads": 1} | kw)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_images_on_ray_are_byte_identical_to_a_local_run(ray_cluster, tiny_model, set5_dir, tmp_path):
    from sr_deploy.cluster import RayOptions, upscale_on_ray

    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted(set5_dir.glob("*.png"))[:4]:
        (inputs / path.name).write_bytes(path.read_bytes())
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    logs: list[str] = []

    local = upscale([inputs], tmp_path / "local", _options(tiny_model), log=logs.append)
    on_ray = upscale_on_ray([inputs], tmp_path / "ray", _options(tiny_model), RayOptions(actors=2), logs.append)

    assert len(on_ray.done) == 4 and len(local.done) == 4
    # the bad input fails only itself, with one line naming it
    assert [(source.name, code) for source, _, code in on_ray.failed] == [("broken.png", 2)]
    assert on_ray.failed[0][1] == local.failed[0][1]  # the same one line as a local run
    assert "broken.png" in on_ray.failed[0][1] and "\n" not in on_ray.failed[0][1]
    assert_same_files(_files(tmp_path / "ray"), _files(tmp_path / "local"))  # byte for byte, no partial files left

    # resume: outputs that exist are skipped; a missing one is redone
    (tmp_path / "ray" / "bird.png").unlink()
    again = upscale_on_ray([inputs], tmp_path / "ray", _options(tiny_model), RayOptions(actors=2), logs.append)
    assert [p.name for p in again.done] == ["bird.png"] and len(again.skipped) == 3
    assert_same_files(_files(tmp_path / "ray"), _files(tmp_path / "local"))
    # ...but outputs another model made are not this job's: they fail (exit 2) and stay as they are
    other = save_tiny_srvgg(tmp_path / "other.pt", seed=1)
    refused = upscale_on_ray([inputs], tmp_path / "ray", _options(other), RayOptions(actors=2), logs.append)
    assert refused.exit_code() == 2 and not refused.done and len(refused.failed) == 5
    assert sum("made with another model (tiny.pt:" in message for _, message, _ in refused.failed) == 4
    assert_same_files(_files(tmp_path / "ray"), _files(tmp_path / "local"))


def _small_clip(video_dir: Path, target: Path) -> Path:
    """Real footage (mov_bbb.mp4, with its audio), 2 s at 160x88 with a keyframe every 12 frames."""
    subprocess.run(
        [
            find_ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-i",
            str(video_dir / "mov_bbb.mp4"),
            "-t",
            "2",
            "-vf",
            "scale=160:88",
            "-c:v",
            "libx264",
            "-g",
            "12",
            "-keyint_min",
            "12",
            "-sc_threshold",
            "0",
            "-bf",
            "2",
            "-c:a",
            "aac",
            str(target),
        ],
        check=True,
    )
    return target


def _frame_md5s(path: Path) -> list[tuple[str, ...]]:
    """(pts, duration, md5 of the decoded frame) of every video frame."""
    out = subprocess.run(
        [
            find_ffmpeg(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-f",
            "framemd5",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split(",") for line in out.splitlines() if line and not line.startswith("#")]
    return [(r[2].strip(), r[3].strip(), r[5].strip()) for r in rows]


def test_the_drivers_precision_decision_is_what_every_actor_runs(
    ray_cluster, tiny_model, set5_dir, tmp_path, monkeypatch
):
    """Issue 24: the driver decides `--precision auto` once and hands the verdict to the actors.
    Here the driver sees a stand-in bf16 CPU whose parity check passes (bf16); the actors, other
    processes, see the suite's CPU without bf16 instructions and would choose fp32 on their own.
    Every output must be the bf16 one, and say so."""
    from PIL import Image

    from sr_deploy.backends import cpu_precision
    from sr_deploy.cluster import RayOptions, upscale_on_ray

    monkeypatch.setenv("SR_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_precision, "cpu_bf16_instructions", lambda: "bf16 dot products (avx512_bf16)")
    monkeypatch.setattr(cpu_precision, "measure_bf16_psnr", lambda model, scale=None: (90.0, "a stand-in"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted(set5_dir.glob("*.png"))[:3]:
        (inputs / path.name).write_bytes(path.read_bytes())
    logs: list[str] = []

    def options(precision: str) -> UpscaleOptions:
        return UpscaleOptions(model=str(tiny_model), device="cpu", precision=precision, progress=False, threads=1)

    on_ray = upscale_on_ray([inputs], tmp_path / "ray", options("auto"), RayOptions(actors=2), logs.append)
    assert len(on_ray.done) == 3 and not on_ray.failed
    assert [line for line in logs if line.startswith("precision:")] == [
        f"precision: bf16: {cpu_precision.cpu_model_name()} has bf16 dot products (avx512_bf16); "
        f"bf16 vs fp32 parity 90.0 dB >= {cpu_precision.REDUCED_MIN_PSNR_DB:g} dB on a stand-in"
    ]  # said once, by the driver
    assert upscale([inputs], tmp_path / "bf16", options("bf16"), log=lambda m: None).done
    assert_same_files(_files(tmp_path / "ray"), _files(tmp_path / "bf16"))  # the bf16 bytes, on every actor
    for path in (tmp_path / "ray").glob("*.png"):
        with Image.open(path) as image:
            assert " precision=bf16 outscale=model input_bytes=" in image.text["sr-deploy"]


def test_video_on_ray_is_frame_exact(ray_cluster, tiny_model, video_dir, tmp_path):
    from sr_deploy.cluster import RayOptions, upscale_on_ray
    from sr_deploy.video import probe_video
    from sr_deploy.video.pieces import split_video

    clip = _small_clip(video_dir, tmp_path / "clip.mp4")
    # the clip really is cut into several independently decodable pieces, every packet in one
    pieces = split_video(clip, tmp_path / "parts", 0.5)
    assert len(pieces) >= 3 and sum(packets for _, packets in pieces) == 50
    lossless = {"codec": "libx264", "crf": 0, "preset": "ultrafast", "segment_seconds": 0.5}
    local = upscale([clip], tmp_path / "local.mp4", _options(tiny_model, **lossless), log=lambda m: None)
    on_ray = upscale_on_ray(
        [clip], tmp_path / "ray.mp4", _options(tiny_model, **lossless), RayOptions(actors=2), lambda m: None
    )
    assert local.done and on_ray.done and not on_ray.failed
    expected = _frame_md5s(tmp_path / "local.mp4")
    assert len(expected) == 50
    assert _frame_md5s(tmp_path / "ray.mp4") == expected  # same frames, same order, same timestamps
    assert probe_video(tmp_path / "ray.mp4").audio == ("aac",)
    # the default encoder settings (B-frames, whose decode times the join must keep increasing):
    # the same presentation times; the frames themselves differ only by lossy encoding
    default = _options(tiny_model, segment_seconds=0.5)
    assert upscale_on_ray([clip], tmp_path / "ray-bframes.mp4", default, RayOptions(actors=2), lambda m: None).done
    assert [row[0] for row in _frame_md5s(tmp_path / "ray-bframes.mp4")] == [row[0] for row in expected]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "clip.mp4",
        "local.mp4",
        "parts",
        "ray-bframes.mp4",
        "ray.mp4",
    ]


def test_an_interrupted_video_resumes_with_its_missing_pieces(ray_cluster, tiny_model, video_dir, tmp_path):
    """Pieces left by an interrupted run (made here by the same functions the actors run) are not
    sent again: only the missing one goes to the cluster, and the output equals a full run's."""
    from sr_deploy.backends import load
    from sr_deploy.cluster import RayOptions, upscale_on_ray
    from sr_deploy.model_file import model_files, model_files_id
    from sr_deploy.upscale.remote import piece_settings
    from sr_deploy.video import upscale_video
    from sr_deploy.video.pieces import VideoPieces, piece_options, upscaled_piece_path

    clip = _small_clip(video_dir, tmp_path / "clip.mp4")
    # the settled job: a budget given here is what the driver keeps (it is in the pieces' key)
    lossless = {"codec": "libx264", "crf": 0, "preset": "ultrafast", "segment_seconds": 0.5}
    options = _options(tiny_model, memory_budget=2**30, **lossless)
    full = upscale([clip], tmp_path / "full.mp4", options, log=lambda m: None)
    assert full.done

    target = tmp_path / "out" / "clip.mp4"
    target.parent.mkdir()
    settings = piece_settings(options, model_files_id(*model_files(str(tiny_model))), ".mp4")
    pieces = VideoPieces.cut(clip, target, tmp_path / "pieces", 0.5, settings)
    backend = load(tiny_model, "cpu", "fp32")
    for part, piece, _ in pieces.pending[:-1]:  # the run "died" before the last piece
        output = upscaled_piece_path(piece)
        result = upscale_video(backend, piece, output, piece_options(options.video(), ".mp4", 8), log=lambda m: None)
        pieces.add(part, output.read_bytes(), result.frames)
    logs: list[str] = []
    result = upscale_on_ray([clip], target.parent, options, RayOptions(actors=2), logs.append)
    assert result.done == [target] and not result.failed
    assert f"{clip}: resuming: {pieces.parts - 1} of {pieces.parts} pieces already done" in logs
    assert any(line.startswith("ray: 1 item(s) (0 image(s), 1 video piece(s))") for line in logs)
    assert _frame_md5s(target) == _frame_md5s(tmp_path / "full.mp4")
    assert sorted(p.name for p in target.parent.iterdir()) == ["clip.mp4"]  # the pieces folder is gone


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(ACTOR_TITLE):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the actor processes in /proc")
def test_killing_an_actor_mid_job_still_completes(ray_cluster, tiny_model, set5_dir, set14_dir, tmp_path):
    """The CLI, connected to the running cluster: one of its two actors is SIGKILLed once the first
    output is written; Ray restarts it, re-runs its block, and every output is complete and equal
    to a local run's."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted(set5_dir.glob("*.png")) + sorted(set14_dir.glob("*.png"))[:9]:
        (inputs / path.name).write_bytes(path.read_bytes())
    local = upscale([inputs], tmp_path / "local", _options(tiny_model), log=lambda m: None)
    assert len(local.done) == 14

    out = tmp_path / "ray"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [
        sys.executable,
        "-m",
        "sr_deploy",
        "upscale",
        str(inputs),
        "-o",
        str(out),
        "--model",
        str(tiny_model),
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--no-progress",
        "--threads",
        "1",
        "--ray-actors",
        "2",
        f"--ray={ray_cluster}",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed: list[tuple[int, int]] = []  # (pid, outputs present when it was killed)

    def kill_one_actor() -> None:
        deadline = time.monotonic() + 280  # the first output can take minutes on a loaded 2-core machine
        while time.monotonic() < deadline and proc.poll() is None:
            pids = _actor_pids()
            done = [p for p in out.glob("*.png")] if out.exists() else []
            if done and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], len(done)))
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor)
    killer.start()
    try:
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        killer.join()
    assert killed, f"no actor was found to kill; stderr: {stderr[-2000:]}"
    pid, present = killed[0]
    assert present < 14, "the job had already finished when the actor was killed"
    assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    assert proc.returncode == 0, stderr[-2000:]
    assert "upscale: 14 done, 0 skipped (already there), 0 failed" in stderr
    assert_same_files(_files(out), _files(tmp_path / "local"))


def test_ray_flag_without_ray_installed_names_the_extra(tmp_path, set5_dir):
    """`--ray` where `import ray` fails: one line naming the extra, exit code 2, no traceback."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "ray").mkdir()
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{ROOT}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sr_deploy",
            "upscale",
            str(set5_dir / "bird.png"),
            "-o",
            str(tmp_path / "out.png"),
            "--ray",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: Ray is not installed: pip install 'sr-deploy[ray]' (on the driver and every node)"
    )
    assert not (tmp_path / "out.png").exists()


def test_a_bad_model_is_refused_on_the_driver_before_any_actor_starts(tmp_path, set5_dir):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "sr_deploy",
            "upscale",
            str(set5_dir / "bird.png"),
            "-o",
            str(tmp_path / "out.png"),
            "--model",
            str(bad),
            "--ray",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(f"error: {bad}: not a PyTorch checkpoint")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("notahost.invalid:6379", "error: --ray notahost.invalid:6379: cannot resolve the host 'notahost.invalid'"),
        ("127.0.0.1:1", "error: --ray 127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1 (Connection refused)"),
        ("ray://127.0.0.1:1", "error: --ray ray://127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1"),
        ("justahost", "error: --ray justahost: expected HOST:PORT, ray://HOST:PORT or auto"),
    ],
)
def test_a_bad_ray_address_is_one_line_exit_2_within_seconds(tmp_path, set5_dir, address, message):
    """Issue 24: `--ray=notahost:6379` hung for 699 s with pages of Ray logs, then exit 1."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sr_deploy", "upscale", str(set5_dir / "bird.png"), "-o", str(tmp_path / "o.png")]
        + [f"--ray={address}"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - start < 30
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_ray_auto_without_a_cluster_and_a_bad_ray_address_variable_say_so_exit_2(tmp_path, set5_dir):
    """`--ray=auto` with no cluster on this machine exited 1 with Ray's text about an `--address`
    flag sr-deploy does not have; a bad RAY_ADDRESS was blamed on --ray. (`auto` is checked with
    a stand-in for ray.init: this test session's own cluster would be found.)"""
    from sr_deploy.cluster import _connect
    from sr_deploy.errors import InputError

    class NoCluster:
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**kwargs):
            raise ConnectionError(
                "Could not find any running Ray instance. Please specify the one to connect to by "
                "setting `--address` flag or `RAY_ADDRESS` environment variable."
            )

    with pytest.raises(InputError) as info:
        _connect(NoCluster, "auto")
    assert str(info.value) == (
        "--ray auto: no Ray cluster runs on this machine (start one with `ray start --head`, "
        "or give --ray without an address for a cluster of this run's own)"
    )
    command = [sys.executable, "-m", "sr_deploy", "upscale", str(set5_dir / "bird.png"), "-o", str(tmp_path / "o.png")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ADDRESS="127.0.0.1:1")
    variable = subprocess.run([*command, "--ray"], env=env, capture_output=True, text=True, timeout=120)
    assert variable.returncode == 2, variable.stderr
    assert variable.stderr.strip().startswith("error: RAY_ADDRESS 127.0.0.1:1: no Ray cluster answers at 127.0.0.1:1")
    assert not (tmp_path / "o.png").exists()


def test_a_ray_address_where_another_service_listens_is_refused_not_waited_on(tmp_path):
    """`--ray=HOST:8265` (the dashboard) or any port where something other than Ray listens: the
    TCP connect succeeds and ray.init then retried for ever (killed after 5 minutes). The address
    must answer as gRPC, as Ray's GCS and client server do: one line, exit 2, within seconds."""
    import http.server
    import threading

    from sr_deploy.errors import InputError
    from sr_deploy.util.net import check_reachable

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        start = time.monotonic()
        with pytest.raises(InputError, match=rf"--ray {address}: something listens at {address} but does not answer"):
            check_reachable(address, "--ray", timeout=3)
        assert time.monotonic() - start < 10
    finally:
        server.shutdown()


def test_ray_with_defaults_gives_a_local_runs_bytes_with_one_thread_count(ray_cluster, tiny_model, set5_dir, tmp_path):
    """Issue 24's acceptance: `upscale --ray` with defaults is byte-identical to a local run with
    defaults. Both CLIs run with this machine's default thread count, and the Ray actor reserves
    and runs with that count (oneDNN promises equal bits only for equal thread counts); a count
    that no node can hold is one line, exit 2, instead of a job that waits for ever."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted(set5_dir.glob("*.png"))[:2]:
        (inputs / path.name).write_bytes(path.read_bytes())
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    base = [sys.executable, "-m", "sr_deploy", "upscale", str(inputs), "--model", str(tiny_model)]
    base += ["--device", "cpu", "--precision", "fp32", "--no-progress"]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=300)

    local = cli("-o", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    on_ray = cli("-o", str(tmp_path / "ray"), f"--ray={ray_cluster}")
    assert on_ray.returncode == 0, on_ray.stderr
    default_threads = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    threads = int(subprocess.run(default_threads, capture_output=True, text=True, check=True).stdout)
    assert f"on {2 // threads} actor(s), CPU, {threads} thread(s) each" in on_ray.stderr
    assert "Progress bars disabled" not in on_ray.stderr and "execution finished" not in on_ray.stderr  # Ray Data's
    assert_same_files(_files(tmp_path / "ray"), _files(tmp_path / "local"))

    too_many = cli("-o", str(tmp_path / "ray-3"), "--threads", "3", f"--ray={ray_cluster}")
    assert too_many.returncode == 2, too_many.stderr
    assert too_many.stderr.strip().splitlines()[-1] == (
        "error: each Ray actor needs 3 CPUs (the job's --threads), but the largest node of the cluster has 2: "
        "pass --threads 2 or fewer"
    )
    assert not (tmp_path / "ray-3").exists() or not any((tmp_path / "ray-3").iterdir())
    crowded = cli("-o", str(tmp_path / "ray-crowded"), "--threads", "1", "--ray-actors", "3", f"--ray={ray_cluster}")
    assert crowded.returncode == 2, crowded.stderr
    assert crowded.stderr.strip().splitlines()[-1] == (
        "error: --ray-actors 3 with 1 CPUs each (the job's --threads) needs 3 CPUs, but the cluster has 2: "
        "ask for fewer actors or threads"
    )


class _StandInCluster:
    """What `_fit_threads` and `_pool` ask of Ray: the nodes and the cluster's resources."""

    def __init__(self, *node_cpus: float):
        self.node_cpus = node_cpus

    def nodes(self) -> list[dict]:
        return [{"Alive": True, "Resources": {"CPU": n}} for n in self.node_cpus] + [{"Alive": False, "Resources": {}}]

    def cluster_resources(self) -> dict:
        return {"CPU": sum(self.node_cpus)}


def test_the_default_thread_count_fits_the_largest_node_and_actors_share_its_memory(monkeypatch):
    """Without --threads a CPU pool runs with the driver's count, capped at the largest node (a
    32-core driver and 16-CPU nodes is a normal cluster, not an error); the tiles' memory budget
    is shared by the actors that fit on one node."""
    import torch

    from sr_deploy.cluster import RayOptions, _fit_threads, _pool
    from sr_deploy.upscale.run import job_memory_budget

    monkeypatch.setattr(torch, "get_num_threads", lambda: 32)
    cluster = _StandInCluster(16, 16)
    options = _fit_threads(cluster, UpscaleOptions(device="cpu"))
    assert options.threads == 16
    assert _fit_threads(cluster, UpscaleOptions(device="cpu", threads=4)).threads == 4  # asked for: kept
    pool = _pool(cluster, options, RayOptions())
    assert (pool.actors, pool.cpus_each, pool.per_node) == (2, 16.0, 1)
    pool = _pool(cluster, dataclasses.replace(options, threads=4), RayOptions())
    assert (pool.actors, pool.cpus_each, pool.per_node) == (8, 4.0, 4)

    from sr_deploy import tiling

    monkeypatch.setattr(tiling, "_cpu_budget_bytes", lambda: 3_000_000_000.0)
    assert job_memory_budget("cpu") == 2**31  # rounded down to a power of two: runs agree
    assert job_memory_budget("cpu", 4) == 2**29  # 750 MB each for 4 actors on a node
