"""How much memory one model call needs, against what this machine has: a bound on inputs that
would otherwise be killed by the kernel (a benchmark batch of 100,000 frames took 23.8 GB before
the OOM killer ended it, and other processes with it)."""

from __future__ import annotations

import os

from ..errors import InputError


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable), or the machine's total."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return physical_memory_bytes() or 1 << 34  # unknown: 16 GiB


def physical_memory_bytes() -> int | None:
    """This machine's RAM, None where the OS cannot say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def call_bytes(lr_pixels: int, scale: int, live_values_per_hr_pixel: int, value_bytes: int = 4) -> int:
    """Bytes one call on `lr_pixels` low-resolution pixels (a whole batch) needs, the memory model
    the automatic tiles are sized by (`sr_deploy.tiling.auto_tile_size`): the activations alive per
    output pixel, `value_bytes` each (2 in fp16 / bf16), plus the float32 RGB output."""
    return lr_pixels * scale * scale * (live_values_per_hr_pixel * value_bytes + 3 * 4)


def check_call_fits(what: str, lr_pixels: int, scale: int, live_values_per_hr_pixel: int) -> None:
    """InputError naming `what` (the options that asked for it) when one call would need more
    than this machine's RAM: refused before anything is allocated, not after the OOM killer. A
    size, not a timing: the same on a busy machine."""
    need, have = call_bytes(lr_pixels, scale, live_values_per_hr_pixel), physical_memory_bytes()
    if have and need > have:
        raise InputError(
            f"{what}: one call needs about {need / 2**30:,.0f} GiB ({lr_pixels:,} input pixels at x{scale}), "
            f"more than this machine's {have / 2**30:,.0f} GiB of RAM: ask for smaller sizes or batches"
        )
