"""What ``--precision auto`` means on the CPU: bf16 where it is fast and accurate enough, else fp32.

bf16 is only faster than fp32 on CPUs with bf16 *matrix* units (Intel AMX: the ``amx_bf16`` CPU
flag): there oneDNN runs bf16 convolutions ~2.7x faster than fp32 (issue 18's measurement on a
2-core Xeon). Without AMX (e.g. AMD EPYC with only the ``avx512_bf16`` vector instructions) bf16
gains little or loses, so fp32 stays. And bf16 is only chosen when the model passes the project's
reduced-precision parity threshold (PSNR >= 50 dB against fp32, `sr_deploy.parity`) on real image
crops (Set5 when found): a model that loses too much in bf16 stays fp32 even with AMX.

The parity measurement takes a few seconds, so its verdict is cached per CPU model and model file
(sha256) in ``$SR_DEPLOY_CACHE/cpu_precision.json`` (default ``~/.cache/sr_deploy``).

`cpu_has_bf16_matrix_units` is the probe; tests replace it (or point ``$SR_DEPLOY_CPUINFO`` at a
stand-in cpuinfo file, which subprocesses inherit).
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
AMX_FLAG = "amx_bf16"
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


def cpu_has_bf16_matrix_units() -> bool:
    """True when the CPU has bf16 matrix units (the ``amx_bf16`` flag in /proc/cpuinfo).
    False elsewhere, including machines without /proc/cpuinfo."""
    return AMX_FLAG in _cpuinfo_field("flags").split()


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


def choose_cpu_precision(
    model: nn.Module,
    sha256: str | None,
    scale: int | None = None,
    *,
    probe: Callable[[], bool] | None = None,
    measure: Callable[[nn.Module, int | None], tuple[float, str]] | None = None,
) -> PrecisionChoice:
    """The precision ``auto`` runs `model` in on this CPU, and why.

    Args:
        model: the generator (not modified).
        sha256: the model file's hash: the cache key with the CPU model; None (an in-memory
            model) measures without caching.
        probe: replaces `cpu_has_bf16_matrix_units` (tests).
        measure: replaces `measure_bf16_psnr` (tests).
    """
    probe = probe or cpu_has_bf16_matrix_units
    measure = measure or measure_bf16_psnr
    cpu = cpu_model_name()
    if not probe():
        return PrecisionChoice("fp32", f"fp32: {cpu} has no bf16 matrix units ({AMX_FLAG}), bf16 would not be faster")
    path = cache_path()
    key = f"{cpu}|{sha256}"
    entry = _read_cache(path).get(key) if sha256 else None
    cached = isinstance(entry, dict) and isinstance(entry.get("psnr_db"), (int, float))
    if cached:
        psnr, images = float(entry["psnr_db"]), str(entry.get("images", ""))
    else:
        psnr, images = measure(model, scale)
        if sha256:
            data = _read_cache(path)
            data[key] = {
                "psnr_db": psnr,
                "images": images,
                "cpu": cpu,
                "sha256": sha256,
                "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
            except OSError:
                pass  # a read-only home: the choice stands, it is measured again next time
    passed = psnr >= REDUCED_MIN_PSNR_DB
    where = f"bf16 vs fp32 parity {psnr:.1f} dB {'>=' if passed else '<'} {REDUCED_MIN_PSNR_DB:g} dB on {images}" + (
        " (cached)" if cached else ""
    )
    if passed:
        return PrecisionChoice("bf16", f"bf16: {cpu} has bf16 matrix units ({AMX_FLAG}) and {where}")
    return PrecisionChoice("fp32", f"fp32: {cpu} has bf16 matrix units ({AMX_FLAG}) but {where}")


def auto_precision(model: nn.Module, sha256: str | None, scale: int | None, device: str) -> PrecisionChoice:
    """What ``--precision auto`` runs `model` in on the torch backend on `device` (``cpu``,
    ``cuda``, ``cuda:N``; already resolved), and why: fp16 on CUDA, `choose_cpu_precision` on the CPU."""
    if device.startswith("cuda"):
        return PrecisionChoice("fp16", "fp16: the CUDA default (its parity is checked by export and the benchmark)")
    return choose_cpu_precision(model, sha256, scale)
