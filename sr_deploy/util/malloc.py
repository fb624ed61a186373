"""Keep freed tensor memory in the process instead of handing it back to the kernel after each use.

glibc's malloc serves every block above its mmap threshold (which it raises to at most 32 MiB) with a
fresh ``mmap`` and unmaps it on ``free``. A CPU model allocates its feature maps anew for every layer
of every frame, and an fp32 map is often larger than that (64 channels x 320x176 x 4 frames x 4 bytes =
58 MB): each one is new memory that the kernel zero-fills page by page on first touch. On the fp32
video path that was 11 s of system time in an 18 s run (issue 18 saw 14 s of 55 s CPU time).

`keep_freed_memory` sets ``M_MMAP_MAX = 0`` (large blocks come from the heap too) and a high
``M_TRIM_THRESHOLD`` (the freed top of the heap is kept for the next frame): what a jemalloc or
tcmalloc preload, the advice of PyTorch's CPU performance guide, achieves, without a preload.

The cost is memory: freed blocks stay resident (up to `TRIM_THRESHOLD_BYTES` at the top of the heap)
and the heap fragments, so the peak resident set rises too: one 270x480 forward of the bundled model
peaked at 2.06 GB instead of 1.65 GB; a 50-frame 320x176 video at 1.30 GB instead of 1.05 GB. It is
set by every CPU `TorchBackend`, so any process that runs CPU inference keeps it, including short
ones (export's parity check, the bf16 probe of ``--precision auto``) and long-lived Ray / Triton CPU
workers. ``SR_DEPLOY_MALLOC=system`` leaves glibc's defaults alone. Other C libraries (musl, macOS,
Windows) are left alone too.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 1 << 30
ENV = "SR_DEPLOY_MALLOC"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc reuse freed large blocks (see the module docstring); once per process.

    Returns True when the settings are in force (now or from an earlier call), False where they do
    not apply: not glibc, or ``SR_DEPLOY_MALLOC=system``."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get(ENV, "").lower() == "system" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; both or neither (a half-applied setting would still unmap).
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) and mallopt(M_MMAP_MAX, 0))
