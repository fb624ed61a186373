"""Scratch folders of worker processes: a killed worker's folder is swept by the next one (issue 24 E:
a SIGKILLed Ray actor left its /tmp/sr-deploy-actor-* folder behind)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

from sr_deploy.util.files import process_scratch_dir


def test_a_killed_workers_folder_is_swept_and_a_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # a real process makes its folder, then is killed with SIGKILL (no clean-up runs)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, tempfile; tempfile.tempdir = sys.argv[1];"
            "from sr_deploy.util.files import process_scratch_dir;"
            "d = process_scratch_dir('sr-deploy-actor-'); (d / 'model.pt').write_bytes(b'x' * 1000);"
            "print(d, flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    killed = child.stdout.readline().strip()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    live = tmp_path / f"sr-deploy-actor-{os.getppid()}-keep"  # our parent process is alive
    live.mkdir()
    other = tmp_path / "sr-deploy-actor-notapid"  # not ours to judge
    other.mkdir()
    assert os.path.isdir(killed)

    mine = process_scratch_dir("sr-deploy-actor-")
    assert not os.path.exists(killed)
    assert live.is_dir() and other.is_dir() and mine.is_dir()
    assert mine.name.startswith(f"sr-deploy-actor-{os.getpid()}-")
