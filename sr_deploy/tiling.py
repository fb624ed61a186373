"""Tiled inference: split a low-resolution image into tiles with context, upscale, keep centres.

Each tile's core is at most `tile` x `tile` low-resolution (LR) pixels. The window sent to the
backend is the core plus `overlap` pixels of real image context on every side (fewer only at the
image border, where the untiled run sees the same border). Only the core of each result is
written to the output, so the seams see the same neighbourhood as an untiled run, up to the
influence of pixels further than `overlap` away (for the SRResNet / ESRGAN family the difference
is far below one 8-bit level at the default overlap).

All windows of one image have the same shape (windows near the far border are shifted inwards
rather than cut short), so tiles can be batched and static-shape backends (TensorRT profiles)
see one shape. Tiles are evened out: an image 1.1 tiles wide is cut into two equal tiles, not a
full tile and a sliver.

Arrays: images are (3, H, W) float32 RGB in [0, 1]; results are (3, s*H, s*W) float32,
unclamped (clamping happens in post-processing, `sr_deploy.imaging`).

Memory: the backend sees at most `batch_size` windows at a time. `upscale_tiled` keeps a float32
output array (3, s*H, s*W); `upscale_tiled_into` hands each finished core to a callback instead
(images are written that way, quantized to 8/16 bits as tiles finish).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .backends.base import Backend
from .errors import SRDeployError
from .models.spec import DEFAULT_LIVE_VALUES_PER_HR_PIXEL
from .util.memory import call_bytes

DEFAULT_TILE_OVERLAP = 16
# Smallest core edge the out-of-memory retry goes down to before giving up.
MIN_TILE = 8
# Memory model for the automatic tile size: per output pixel, a generator holds about
# `live_values_per_hr_pixel` activation values (each architecture declares its own in the model
# registry; the SRResNet / ESRGAN family: 2 feature maps of 64 channels), plus the float32 output.
# Fraction of free memory the automatic tile size may plan to use (CUDA: free device memory; CPU:
# available RAM, capped, since the output array and the decoder need room too).
_CUDA_MEMORY_FRACTION = 0.5
_CPU_MEMORY_FRACTION = 0.25
CPU_MEMORY_CAP_BYTES = 8 << 30
CPU_MEMORY_FALLBACK_BYTES = 2 << 30


@dataclass(frozen=True)
class Tile:
    """One tile, in LR pixel coordinates: the core [y0, y1) x [x0, x1) written to the output and
    the window [wy, wy + window_h) x [wx, wx + window_w) sent to the backend (the window contains
    the core)."""

    y0: int
    y1: int
    x0: int
    x1: int
    wy: int
    wx: int


def _axis_tiles(length: int, tile: int, overlap: int) -> tuple[list[tuple[int, int, int]], int]:
    """Cores and window starts along one axis: ([(core_start, core_end, window_start)], window_len)."""
    count = max(1, math.ceil(length / tile))
    core = math.ceil(length / count)  # evened out: no sliver at the end
    window = min(length, core + 2 * overlap)
    spans = []
    for start in range(0, length, core):
        end = min(start + core, length)
        window_start = min(max(start - overlap, 0), length - window)
        spans.append((start, end, window_start))
    return spans, window


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> tuple[list[Tile], tuple[int, int]]:
    """Cover an (height, width) LR image with tiles of core edge <= `tile` and `overlap` context.

    Returns the tiles (row-major) and the common window shape (window_h, window_w). `tile` <= 0
    means a single tile covering the whole image.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty image of {height}x{width}")
    if overlap < 0:
        raise ValueError(f"tile overlap must be >= 0, got {overlap}")
    if tile <= 0:
        tile = max(height, width)
    rows, window_h = _axis_tiles(height, tile, overlap)
    cols, window_w = _axis_tiles(width, tile, overlap)
    tiles = [Tile(y0, y1, x0, x1, wy, wx) for (y0, y1, wy) in rows for (x0, x1, wx) in cols]
    return tiles, (window_h, window_w)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the out-of-memory errors of numpy, PyTorch (CPU/CUDA), ONNX Runtime and TensorRT."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(
        key in text
        for key in (
            "out of memory",
            "failed to allocate",
            "cudaerrormemoryallocation",
            "cuda_error_out_of_memory",
            "bad_alloc",
        )
    )


def _free_memory_bytes(device: str) -> int | None:
    """Free memory on a CUDA `device` ("cuda", "cuda:N"), or None when it cannot be asked."""
    if not str(device).startswith("cuda"):
        return None
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        # Blocks PyTorch has cached but not handed out are free for our next call too; without
        # them the estimate would shrink after the first batch and flip a video to tiles.
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + max(0, cached))
    except Exception:  # no torch CUDA, a driver hiccup: fall back to the fixed budget
        return None


def _cpu_budget_bytes() -> float:
    """A quarter of the available RAM, at most 8 GiB (2 GiB when the OS cannot say)."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return CPU_MEMORY_FALLBACK_BYTES
    return min(CPU_MEMORY_CAP_BYTES, available * _CPU_MEMORY_FRACTION)


def memory_budget_bytes(device: str) -> int:
    """What `auto_tile_size` may spend on `device`, measured now: half the free CUDA memory on a
    CUDA device, else a quarter of the available RAM (at most 8 GiB)."""
    free = _free_memory_bytes(device)
    return int(free * _CUDA_MEMORY_FRACTION if free is not None else _cpu_budget_bytes())


def auto_tile_size(
    backend: Backend,
    height: int,
    width: int,
    overlap: int = DEFAULT_TILE_OVERLAP,
    batch_size: int = 1,
    budget: int | None = None,
) -> int:
    """The largest tile core edge that fits the backend's `max_shape` and memory, or 0 when the
    whole (height, width) image fits in one call.

    Memory budget: `budget` bytes (a job's settled budget, so that every worker tiles alike), else
    `memory_budget_bytes` measured now, shared by `batch_size` windows; a window costs about
    (live values * bytes-per-value + 12) * scale^2 bytes per LR pixel (the architecture's live
    activations per output pixel, which the backend carries from the checkpoint's detection or the
    ONNX metadata, plus the float32 output).
    """
    value_bytes = 2 if backend.precision in ("fp16", "bf16") else 4
    live = backend.live_values_per_hr_pixel or DEFAULT_LIVE_VALUES_PER_HR_PIXEL
    per_pixel = call_bytes(1, backend.scale, live, value_bytes)
    if budget is None:
        budget = memory_budget_bytes(backend.device)
    window_pixels = budget / max(1, batch_size) / per_pixel
    limit = int(math.sqrt(max(window_pixels, 1.0)))  # longest window edge that fits the budget
    if backend.max_shape is not None:
        limit = min(limit, backend.max_shape[1], backend.max_shape[2])
    if height <= limit and width <= limit:
        return 0
    tile = limit - 2 * overlap
    if tile < MIN_TILE:
        raise SRDeployError(
            f"tile overlap {overlap} leaves no room in a {limit}-pixel window "
            f"(backend max shape {backend.max_shape}): use a smaller --tile-overlap"
        )
    return tile


def _max_batch(backend: Backend, batch_size: int) -> int:
    if backend.max_shape is not None:
        return max(1, min(batch_size, backend.max_shape[0]))
    return max(1, batch_size)


def _fits_max_shape(backend: Backend, height: int, width: int) -> bool:
    return backend.max_shape is None or (height <= backend.max_shape[1] and width <= backend.max_shape[2])


# Where a finished tile core goes: (y0, y1, x0, x1) in output pixels and the core (3, y1-y0, x1-x0)
# float32 RGB, unclamped. Writing the same region twice (after an out-of-memory restart) is fine.
CoreSink = Callable[[int, int, int, int, np.ndarray], None]


def _run_tiles(backend: Backend, image: np.ndarray, tile: int, overlap: int, batch_size: int, sink: CoreSink) -> None:
    _, height, width = image.shape
    scale = backend.scale
    tiles, (window_h, window_w) = plan_tiles(height, width, tile, overlap)
    per_call = _max_batch(backend, batch_size)
    for first in range(0, len(tiles), per_call):
        group = tiles[first : first + per_call]
        batch = np.stack([image[:, t.wy : t.wy + window_h, t.wx : t.wx + window_w] for t in group])
        result = backend(batch)
        expected = (len(group), 3, window_h * scale, window_w * scale)
        if tuple(result.shape) != expected:
            raise SRDeployError(
                f"backend returned {tuple(result.shape)} for a {tuple(batch.shape)} batch; "
                f"expected {expected} (scale {scale})"
            )
        for t, sr in zip(group, result):
            oy, ox = (t.y0 - t.wy) * scale, (t.x0 - t.wx) * scale
            sink(
                t.y0 * scale,
                t.y1 * scale,
                t.x0 * scale,
                t.x1 * scale,
                sr[:, oy : oy + (t.y1 - t.y0) * scale, ox : ox + (t.x1 - t.x0) * scale],
            )


def upscale_tiled(
    backend: Backend,
    image: np.ndarray,
    tile: int | None = None,
    overlap: int = DEFAULT_TILE_OVERLAP,
    batch_size: int = 1,
    on_retry: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Upscale one image through `backend`, tile by tile.

    Args:
        backend: follows `sr_deploy.backends.base.Backend` (numpy in, numpy out).
        image: (3, H, W) float32 RGB in [0, 1].
        tile: largest tile core edge in LR pixels; None picks it automatically
            (`auto_tile_size`); 0 runs the whole image in one call unless the backend's
            `max_shape` or memory forces tiles.
        overlap: LR pixels of context on each side of a core (`DEFAULT_TILE_OVERLAP` = 16).
        batch_size: windows per backend call (capped by `max_shape[0]`).
        on_retry: called with the new tile size after an out-of-memory error halved it.
    Returns:
        (3, s*H, s*W) float32 RGB, unclamped; s = backend.scale. Exactly that shape for any H, W.

    An out-of-memory error from the backend halves the tile and starts again (down to
    `MIN_TILE`, then it is raised as SRDeployError).
    """
    _, height, width = image.shape
    out = np.empty((3, height * backend.scale, width * backend.scale), dtype=np.float32)

    def keep(y0: int, y1: int, x0: int, x1: int, core: np.ndarray) -> None:
        out[:, y0:y1, x0:x1] = core

    upscale_tiled_into(backend, image, keep, tile, overlap, batch_size, on_retry)
    return out


def upscale_tiled_into(
    backend: Backend,
    image: np.ndarray,
    sink: CoreSink,
    tile: int | None = None,
    overlap: int = DEFAULT_TILE_OVERLAP,
    batch_size: int = 1,
    on_retry: Callable[[int], None] | None = None,
) -> None:
    """`upscale_tiled`, but each finished tile core is handed to `sink(y0, y1, x0, x1, core)`
    (output pixel box, (3, y1-y0, x1-x0) float32 RGB unclamped) instead of being kept in a float32
    copy of the whole output: the caller quantizes it straight into its 8/16-bit image, so memory
    follows the tile and the final image, not 4 bytes per output sample. After an out-of-memory
    restart the sink sees regions again (same values, smaller tiles)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {image.shape}")
    image = np.ascontiguousarray(image, dtype=np.float32)
    _, height, width = image.shape
    if tile is None:
        tile = auto_tile_size(backend, height, width, overlap, batch_size)
    elif tile <= 0 and not _fits_max_shape(backend, height, width):
        tile = auto_tile_size(backend, height, width, overlap, batch_size)
    while True:
        try:
            return _run_tiles(backend, image, tile, overlap, batch_size, sink)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            current = tile if tile > 0 else max(height, width)
            if current <= MIN_TILE:
                raise SRDeployError(f"out of memory even with {current}-pixel tiles ({exc})") from exc
            tile = max(MIN_TILE, current // 2)
            _release_cached_memory()
            if on_retry is not None:
                on_retry(tile)


def upscale_batch(
    backend: Backend,
    frames: np.ndarray,
    tile: int | None = None,
    overlap: int = DEFAULT_TILE_OVERLAP,
    on_retry: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Upscale a batch of same-size frames: (N, 3, H, W) float32 RGB [0, 1] -> (N, 3, sH, sW)
    float32, unclamped.

    When the frames fit the backend (max_shape and memory, or `tile` == 0), the batch goes through
    in as few calls as `max_shape[0]` allows; otherwise, or after an out-of-memory error, each
    frame is tiled with `upscale_tiled`.
    """
    count, _, height, width = frames.shape
    if tile is None:
        tile = auto_tile_size(backend, height, width, overlap, count)
    if tile >= max(height, width):
        tile = 0  # one tile would cover the frame: batch whole frames instead
    if tile <= 0 and _fits_max_shape(backend, height, width):
        try:
            per_call = _max_batch(backend, count)
            parts = [backend(np.ascontiguousarray(frames[i : i + per_call])) for i in range(0, count, per_call)]
            return parts[0] if len(parts) == 1 else np.concatenate(parts)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            _release_cached_memory()
            tile = max(MIN_TILE, max(height, width) // 2)
            if on_retry is not None:
                on_retry(tile)
    return np.stack([upscale_tiled(backend, frame, tile, overlap, 1, on_retry) for frame in frames])


def _release_cached_memory() -> None:
    """Give cached CUDA blocks back after an out-of-memory error, so the retry can use them."""
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
