"""What ``--precision auto`` means on the CPU: bf16 where the CPU has bf16 hardware *and* the model
keeps its accuracy in bf16, else fp32. The same answer on every run, whatever else the machine does.

bf16 can only be faster on CPUs with bf16 instructions: matrix units (Intel AMX, the ``amx_bf16``
flag: oneDNN ran the default model 3.9x faster in bf16 than in fp32 there, issue 26) or the AVX-512
bf16 dot products (``avx512_bf16``: AMD Zen 4/5, Cooper Lake: 1.75-2.1x on a Zen 5 EPYC, issue 18).
Without either flag bf16 is emulated and slower: fp32, without measuring anything.

The choice is a rule on hardware facts and a deterministic measurement, never on a timing: an
earlier version also timed bf16 against fp32 and cached the verdict, and on a machine shared with
other work the same model came out 0.93x (fp32) and 4.1x (bf16) five minutes apart, so outputs
changed from run to run, between thread counts and between the workers of one job (issue 24). The
one measurement left is parity: PSNR of bf16 against fp32 on real image crops (Set5 when found),
which must reach the project's reduced-precision threshold (>= 50 dB, `sr_deploy.parity`); a
model that loses too much in bf16 stays fp32 even with AMX. Parity does not depend on load or
thread count. It is cached per CPU model and bf16 flag, model file (sha256) and torch version in
``$SR_DEPLOY_CACHE/cpu_precision.json`` (default ``~/.cache/sr_deploy``); `sr-deploy cache` lists the
verdicts and `sr-deploy cache --clear` removes them.

`cpu_bf16_instructions` is the probe; tests replace it (or point ``$SR_DEPLOY_CPUINFO`` at a
stand-in cpuinfo file, which subprocesses inherit) and the measurement.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..parity import REDUCED_MIN_PSNR_DB, parity, parity_inputs, uses_real_images
from ..util.files import atomic_write_text

if TYPE_CHECKING:
    from torch import nn

CACHE_FILE = "cpu_precision.json"
# The cpuinfo flags of bf16 hardware, the strongest first: matrix units, then vector dot products.
BF16_FLAGS = {"amx_bf16": "bf16 matrix units (amx_bf16)", "avx512_bf16": "bf16 vector instructions (avx512_bf16)"}
# Parity crops: two 64x64 crops of different Set5 images (~0.1 GFLOP each on the default model).
PARITY_SIZES = ((64, 64),)


@dataclass(frozen=True)
class PrecisionChoice:
    """`precision` (``fp32`` / ``bf16``) and `reason`: one line saying why, for logs and `info`."""

    precision: str
    reason: str


def _cpuinfo_path() -> Path:
    return Path(os.environ.get("SR_DEPLOY_CPUINFO", "/proc/cpuinfo"))


def _cpuinfo_field(name: str) -> str:
    """The first ``name : value`` line's value in the cpuinfo file; "" when absent or unreadable."""
    try:
        with open(_cpuinfo_path(), encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_bf16_instructions() -> str | None:
    """What bf16 hardware the CPU has, as a phrase of `BF16_FLAGS` (``bf16 matrix units
    (amx_bf16)``...), or None: no such flag in /proc/cpuinfo, or no /proc/cpuinfo at all."""
    flags = set(_cpuinfo_field("flags").split())
    return next((phrase for flag, phrase in BF16_FLAGS.items() if flag in flags), None)


def cpu_model_name() -> str:
    """The CPU's model name (``AMD EPYC 9B45``...), or the platform's processor string."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cache_path() -> Path:
    """``$SR_DEPLOY_CACHE/cpu_precision.json``, default ``~/.cache/sr_deploy/cpu_precision.json``."""
    root = os.environ.get("SR_DEPLOY_CACHE") or Path.home() / ".cache" / "sr_deploy"
    return Path(root) / CACHE_FILE


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # absent or damaged: measure again (and rewrite it)


def measure_bf16_psnr(model: nn.Module, scale: int | None = None) -> tuple[float, str]:
    """PSNR (dB, peak 1.0) of the model in bf16 against fp32 on the CPU, over `PARITY_SIZES`
    crops (2 per size) of Set5 (or the synthetic image without it), and which images were used.
    NaN/Inf in the bf16 output gives -inf."""
    from .torch_backend import TorchBackend

    inputs = parity_inputs(PARITY_SIZES, batch=2)
    images = "Set5 crops" if uses_real_images() else "synthetic crops (Set5 not found)"
    reference = TorchBackend(model, scale, "cpu", "fp32")
    candidate = TorchBackend(model, scale, "cpu", "bf16")
    try:
        report = parity(reference, candidate, inputs)
    finally:
        reference.close()
        candidate.close()
    return (float("-inf") if report.nonfinite else report.psnr_db), images


def _cache_key(cpu: str, hardware: str, sha256: str) -> str:
    """CPU model name *and* its bf16 hardware (VMs often report only "AMD EPYC" for different
    cores), model and torch build: what the parity depends on. Not the thread count: the verdict
    must be the same for a driver and its one-thread Ray actors."""
    import torch

    return f"{cpu}|{hardware}|{sha256}|torch {torch.__version__}"


def _measured(
    model: nn.Module,
    sha256: str | None,
    scale: int | None,
    cpu: str,
    hardware: str,
    measure: Callable[[nn.Module, int | None], tuple[float, str]],
) -> tuple[dict, bool]:
    """The cached parity ({psnr_db, images}) for this CPU and model, else a fresh one (written to
    the cache when the model has a hash), and whether it came from the cache."""
    path = cache_path()
    key = _cache_key(cpu, hardware, sha256) if sha256 else ""
    entry = _read_cache(path).get(key) if sha256 else None
    if isinstance(entry, dict) and isinstance(entry.get("psnr_db"), (int, float)):
        return entry, True
    psnr, images = measure(model, scale)
    entry = {"psnr_db": psnr, "images": images}
    if sha256:
        data = _read_cache(path)
        data[key] = {**entry, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass  # a read-only home: the choice stands, it is measured again next time
    return entry, False


def choose_cpu_precision(
    model: nn.Module,
    sha256: str | None,
    scale: int | None = None,
    *,
    probe: Callable[[], str | None] | None = None,
    measure: Callable[[nn.Module, int | None], tuple[float, str]] | None = None,
) -> PrecisionChoice:
    """The precision ``auto`` runs `model` in on this CPU, and why.

    Args:
        model: the generator (not modified).
        sha256: the model file's hash: the cache key with the CPU model; None (an in-memory
            model) measures without caching.
        probe: replaces `cpu_bf16_instructions` (tests).
        measure: replaces `measure_bf16_psnr` (tests).
    """
    hardware = (probe or cpu_bf16_instructions)()
    cpu = cpu_model_name()
    if hardware is None:
        flags = " / ".join(BF16_FLAGS)
        return PrecisionChoice("fp32", f"fp32: {cpu} has no bf16 instructions ({flags}), bf16 would be slower")
    entry, cached = _measured(model, sha256, scale, cpu, hardware, measure or measure_bf16_psnr)
    psnr = float(entry["psnr_db"])
    accurate = precision_of(entry) == "bf16"
    where = (
        f"bf16 vs fp32 parity {psnr:.1f} dB {'>=' if accurate else '<'} {REDUCED_MIN_PSNR_DB:g} dB "
        f"on {entry.get('images', '')}" + (" (cached)" if cached else "")
    )
    if accurate:
        return PrecisionChoice("bf16", f"bf16: {cpu} has {hardware}; {where}")
    return PrecisionChoice("fp32", f"fp32: {cpu} has {hardware} but {where}")


def auto_precision(model: nn.Module, sha256: str | None, scale: int | None, device: str) -> PrecisionChoice:
    """What ``--precision auto`` runs `model` in on the torch backend on `device` (``cpu``,
    ``cuda``, ``cuda:N``; already resolved), and why: fp16 on CUDA, `choose_cpu_precision` on the CPU."""
    if device.startswith("cuda"):
        return PrecisionChoice("fp16", "fp16: the CUDA default (its parity is checked by export and the benchmark)")
    return choose_cpu_precision(model, sha256, scale)


def precision_of(entry: dict) -> str:
    """The verdict of a parity entry on bf16 hardware: ``bf16`` when its PSNR reaches the
    threshold, else ``fp32``."""
    psnr = entry.get("psnr_db")
    return "bf16" if isinstance(psnr, (int, float)) and psnr >= REDUCED_MIN_PSNR_DB else "fp32"


def cached_verdicts() -> dict[str, dict]:
    """The cache's entries: key (``CPU|bf16 hardware|model sha256|torch version``) -> {psnr_db,
    images, measured}. Empty when there is no cache or it is damaged."""
    return {k: v for k, v in _read_cache(cache_path()).items() if isinstance(v, dict)}


def clear_cache() -> int:
    """Remove the verdict cache; the number of entries it held (0 when there was none)."""
    count = len(cached_verdicts())
    cache_path().unlink(missing_ok=True)
    return count
