"""Benchmark inputs: crops of real photos (../shared/data), several different batches per row so
that no cache holds the answer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

# How many different batches each row cycles through.
ROTATING_BATCHES = 8


def _photo_paths(data_dir: Path | None) -> list[Path]:
    from ..parity import find_shared_data

    root = Path(data_dir) if data_dir is not None else find_shared_data()
    if root is None:
        return []
    paths: list[Path] = []
    for sub in ("train/Sun_Hays80", "benchmark/Set14", "benchmark/Set5"):
        folder = root / sub
        if folder.is_dir():
            paths += sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    return paths


def benchmark_frames(
    height: int, width: int, count: int = ROTATING_BATCHES, data_dir: str | Path | None = None, seed: int = 0
) -> tuple[list[np.ndarray], str]:
    """`count` different frames, each float32 RGB [0, 1] of shape (3, height, width), and where they
    came from.

    Frames are random crops (fixed seed) of different photos from ../shared/data (Sun_Hays80, then
    Set14, Set5); a photo smaller than the crop is first enlarged (bicubic) to cover it. Without
    the data folder: crops of `sr_deploy.parity.synthetic_image` at different offsets.
    """
    import cv2

    rng = np.random.default_rng(seed)
    frames: list[np.ndarray] = []
    used_paths: list[Path] = []
    paths = _photo_paths(Path(data_dir) if data_dir is not None else None)
    for path in paths:
        if len(frames) == count:
            break
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        ih, iw = bgr.shape[:2]
        grow = max(height / ih, width / iw, 1.0)
        if grow > 1.0:
            bgr = cv2.resize(bgr, (math.ceil(iw * grow), math.ceil(ih * grow)), interpolation=cv2.INTER_CUBIC)
            ih, iw = bgr.shape[:2]
        top = int(rng.integers(0, ih - height + 1))
        left = int(rng.integers(0, iw - width + 1))
        crop = bgr[top : top + height, left : left + width, ::-1]  # BGR -> RGB
        frames.append(np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0))
        used_paths.append(path)
    if len(frames) == count:
        used = sorted({f"{p.parent.parent.name}/{p.parent.name}" for p in used_paths})
        return frames, f"crops of {count} photos from ../shared/data ({', '.join(used)})"
    from ..parity import synthetic_image

    base = synthetic_image(max(256, 2 * height), max(256, 2 * width))
    while len(frames) < count:
        i = len(frames)
        shifted = np.roll(base, (37 * i, 53 * i), axis=(0, 1))[:height, :width]
        frames.append(np.ascontiguousarray(shifted.transpose(2, 0, 1), dtype=np.float32))
    return frames, "synthetic frames (../shared/data not found)"


def rotating_batches(frames: Sequence[np.ndarray], batch: int, count: int = ROTATING_BATCHES) -> list[np.ndarray]:
    """`count` batches (batch, 3, H, W), batch k holding frames k*batch, k*batch+1, ... (cyclic), so
    consecutive calls never see the same batch."""
    n = len(frames)
    return [np.stack([frames[(k * batch + j) % n] for j in range(batch)]) for k in range(count)]
