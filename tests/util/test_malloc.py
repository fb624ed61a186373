"""`sr_deploy.util.malloc.keep_freed_memory`: freed large tensors are reused, not unmapped and faulted
in again (the system time of the fp32 CPU video path, issue 18).

Counted in page faults, not seconds: a 64 MB tensor touched for the first time costs 16,384 minor
faults; once glibc keeps freed memory, a later one of the same size costs none."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (Linux)")

PROGRAM = """
import json, resource, torch
from sr_deploy.backends.torch_backend import TorchBackend
from sr_deploy.util import malloc
TorchBackend(torch.nn.Upsample(scale_factor=2), 2, "cpu", "fp32")  # a CPU backend applies the setting
faults = []
for _ in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 << 20)  # 64 MB: above glibc's largest mmap threshold (32 MB)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": malloc.keep_freed_memory(), "faults": faults}))
"""


def _run(**env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_cpu_backend_makes_freed_tensors_reusable_without_page_faults():
    kept = _run()
    assert kept["applied"] is True
    # glibc settles after a few rounds (its heap top moves); from then on no page is faulted in again.
    assert sum(kept["faults"][-10:]) < 500, kept["faults"]


@pytest.mark.slow
def test_sr_deploy_malloc_system_leaves_glibc_alone():
    system = _run(SR_DEPLOY_MALLOC="system")
    assert system["applied"] is False
    # glibc's default: every 64 MB tensor is a fresh mapping, faulted in page by page: 16,384 faults
    # with 4 KiB pages, still 32 where transparent huge pages are always on.
    assert min(system["faults"][-10:]) >= 32, system["faults"]
