"""A real two-node Ray cluster on this machine and a real S3 endpoint (issue 27).

The head and a second node are separate `ray start --block` processes, each with its own temp
folder and resources (the head: 1 CPU and {"head_node": 1}; the second: 1 CPU and
{"worker_node": 1}); the actors ask for {"worker_node": 1} (SR_DEPLOY_RAY_ACTOR_RESOURCES), so
they all run on the second node, and they reach their data only through s3:// keys on the moto
server (the driver gives no local path). `sr-deploy upscale s3://.../in/ -o s3://.../out/ --ray=HEAD`:
objects byte-identical to a local run; the second node's actor SIGKILLed mid-job, the job
still completes; a re-run skips everything; a video comes back frame-exact. The nodes are
stopped by ending their `ray start --block` processes (never `ray stop`, which would stop every
Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from _compare import assert_same_files
from _s3_server import free_port, s3_fs, s3_objects
from _upscale_support import save_tiny_srvgg

from sr_deploy.upscale import UpscaleOptions, upscale

pytest.importorskip("ray", reason="Ray is not installed (pip install 'sr-deploy[ray]')")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ACTOR_TITLE = b"ray::MapWorker(MapBatches(_Upscaler))"


def _node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    # Ray 2.60's `ray start` turns token authentication on by default; a loopback test cluster opts out
    return env | {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}


def _start_node(args: list[str], temp: str, log: Path) -> subprocess.Popen:
    command = ["ray", "start", "--block", f"--temp-dir={temp}", "--num-cpus=1", "--num-gpus=0"]
    command += ["--object-store-memory=100000000", "--disable-usage-stats", "--node-ip-address=127.0.0.1", *args]
    proc = subprocess.Popen(command, env=_node_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while b"Ray runtime started" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"ray start failed: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    return proc


@pytest.fixture(scope="module")
def two_nodes(s3_endpoint, tmp_path_factory):
    """(GCS address of the head, temp folder of the second node). The nodes inherit the S3 environment."""
    logs = tmp_path_factory.mktemp("ray-logs")
    head_temp, worker_temp = tempfile.mkdtemp(prefix="srh"), tempfile.mkdtemp(prefix="srw")  # short: socket paths
    port = free_port()
    nodes = [
        _start_node(
            [
                "--head",
                f"--port={port}",
                "--include-dashboard=false",
                '--resources={"head_node": 1}',
            ],
            head_temp,
            logs / "head.log",
        )
    ]
    try:
        nodes.append(
            _start_node([f"--address=127.0.0.1:{port}", '--resources={"worker_node": 1}'], worker_temp, logs / "w.log")
        )
        yield f"127.0.0.1:{port}", worker_temp
    finally:
        for proc in reversed(nodes):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(head_temp, ignore_errors=True)
        shutil.rmtree(worker_temp, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_srvgg(tmp_path_factory.mktemp("model") / "tiny.pt")


def _cli(args: list[str], address: str) -> subprocess.Popen:
    env = _node_env() | {"SR_DEPLOY_RAY_ACTOR_RESOURCES": '{"worker_node": 1}'}
    command = [sys.executable, "-m", "sr_deploy", "upscale", *args, "--device", "cpu", "--precision", "fp32"]
    command += ["--no-progress", "--threads", "1", "--ray-actors", "1", f"--ray={address}"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _actors_on(node_temp: str) -> list[int]:
    """Our actors whose parent is the raylet of the node with temp folder `node_temp`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(ACTOR_TITLE):
                status = (entry / "status").read_text()
                parent = status.split("PPid:")[1].split()[0]
                if node_temp.encode() in Path(f"/proc/{parent}/cmdline").read_bytes():
                    found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def test_s3_to_s3_on_two_nodes_is_byte_identical_survives_a_killed_actor_and_resumes(
    two_nodes, tiny_model, set5_dir, set14_dir, tmp_path
):
    address, worker_temp = two_nodes
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    fs = s3_fs()
    fs.mkdir(bucket)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in sorted(set5_dir.glob("*.png")) + sorted(set14_dir.glob("*.png"))[:5]:
        (inputs / path.name).write_bytes(path.read_bytes())
    fs.put(str(inputs), f"{bucket}/in", recursive=True)
    options = UpscaleOptions(model=str(tiny_model), device="cpu", precision="fp32", progress=False, threads=1)
    local = upscale([inputs], tmp_path / "local", options, log=lambda m: None)
    assert len(local.done) == 10
    expected = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir()}

    proc = _cli([f"s3://{bucket}/in/", "-o", f"s3://{bucket}/out/", "--model", str(tiny_model)], address)
    killed: list[tuple[int, int]] = []
    seen_on_worker: set[int] = set()

    def kill_the_worker_nodes_actor() -> None:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and proc.poll() is None:
            pids = _actors_on(worker_temp)
            seen_on_worker.update(pids)
            done = [k for k in fs.find(f"{bucket}/out") if not k.rsplit("/", 1)[-1].startswith(".")]
            if done and pids and not killed:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], len(done)))
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_the_worker_nodes_actor)
    watcher.start()
    try:
        _, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        watcher.join()
    assert proc.returncode == 0, stderr[-3000:]
    assert killed and killed[0][1] < 10, f"no actor was killed mid-job on the second node: {stderr[-2000:]}"
    assert len(seen_on_worker) >= 2  # the killed actor and its restart, both on the second node
    assert "upscale: 10 done, 0 skipped (already there), 0 failed" in stderr
    assert_same_files(s3_objects(f"s3://{bucket}/out"), expected)  # byte for byte, no temporary keys

    again = _cli([f"s3://{bucket}/in/", "-o", f"s3://{bucket}/out/", "--model", str(tiny_model)], address)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0 and "upscale: 0 done, 10 skipped (already there), 0 failed" in stderr, stderr


def test_a_video_from_s3_to_s3_on_the_second_node_is_frame_exact(two_nodes, tiny_model, video_dir, tmp_path):
    from test_cluster import _frame_md5s, _small_clip

    address, _ = two_nodes
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    fs = s3_fs()
    fs.mkdir(bucket)
    clip = _small_clip(video_dir, tmp_path / "clip.mp4")
    fs.put_file(str(clip), f"{bucket}/v/clip.mp4")
    lossless = {"codec": "libx264", "crf": 0, "preset": "ultrafast", "segment_seconds": 0.5}
    options = UpscaleOptions(
        model=str(tiny_model), device="cpu", precision="fp32", progress=False, threads=1, **lossless
    )
    assert upscale([clip], tmp_path / "local.mp4", options, log=lambda m: None).done
    args = [f"s3://{bucket}/v/", "-o", f"s3://{bucket}/out/", "--model", str(tiny_model)]
    args += ["--codec", "libx264", "--crf", "0", "--preset", "ultrafast", "--segment-seconds", "0.5"]
    proc = _cli(args, address)
    _, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr[-3000:]
    assert "video piece(s)) on 1 actor(s)" in stderr
    assert list(s3_objects(f"s3://{bucket}/out")) == ["clip.mp4"]  # the hidden pieces prefix is gone
    (tmp_path / "ray.mp4").write_bytes(s3_objects(f"s3://{bucket}/out")["clip.mp4"])
    assert _frame_md5s(tmp_path / "ray.mp4") == _frame_md5s(tmp_path / "local.mp4")
