"""Atomic writes: two processes writing one file (two trainings into one folder, two evals to one
JSON) never share a temporary name, so neither fails nor leaves a mixed file; the file a write
leaves has the permissions any new file of this process gets (mkstemp's 0600 is not kept)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from sr_deploy.util.files import atomic_write, atomic_write_bytes


def _writer(target: str, marker: int, times: int) -> int:
    failures = 0
    for _ in range(times):
        try:
            atomic_write_bytes(target, bytes([marker]) * 200_000)
        except OSError:
            failures += 1
    return failures


def test_concurrent_writers_of_one_file_neither_fail_nor_mix(tmp_path):
    target = tmp_path / "state_latest.pt"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        failures = pool.starmap(_writer, [(str(target), marker, 25) for marker in range(1, 5)])
    assert failures == [0, 0, 0, 0]
    data = target.read_bytes()
    assert len(data) == 200_000 and len(set(data)) == 1  # one writer's bytes, whole
    assert [p.name for p in tmp_path.iterdir()] == ["state_latest.pt"]  # no temporary left


def test_a_written_file_gets_the_usual_permissions_and_a_failed_write_leaves_nothing(tmp_path):
    (tmp_path / "plain").write_bytes(b"x")
    atomic_write_bytes(tmp_path / "atomic", b"x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode
    try:
        with atomic_write(tmp_path / "never.json") as tmp:
            Path(tmp).write_text("{half")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic", "plain"]
