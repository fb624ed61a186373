"""Frames between the decoder, the model and the encoder: RGB arrays <-> model batches."""

from __future__ import annotations

import cv2
import numpy as np

from ..imaging import quantize, resize_float


def frames_to_model_input(frames: list[np.ndarray]) -> np.ndarray:
    """Frames, each (H, W, 3) RGB uint8 or uint16 -> (N, 3, H, W) float32 RGB in [0, 1]."""
    stacked = np.stack(frames)
    peak = 255.0 if stacked.dtype == np.uint8 else 65535.0
    batch = np.ascontiguousarray(stacked.transpose(0, 3, 1, 2), dtype=np.float32)
    batch *= np.float32(1 / peak)
    return batch


def model_output_to_frames(
    batch: np.ndarray, size_hw: tuple[int, int] | None = None, dtype: type = np.uint8
) -> np.ndarray:
    """Model output (N, 3, sH, sW) float32 RGB, unclamped -> (N, h, w, 3) RGB of `dtype` (uint8 or
    uint16), C-contiguous. `size_hw` resizes to (h, w) first (INTER_AREA down, LANCZOS4 up)."""
    hwc = batch.transpose(0, 2, 3, 1)
    if size_hw is not None and tuple(hwc.shape[1:3]) != tuple(size_hw):
        hwc = np.stack([resize_float(np.ascontiguousarray(frame), size_hw) for frame in hwc])
        return np.ascontiguousarray(quantize(hwc, dtype))
    if dtype != np.uint8:
        return np.ascontiguousarray(quantize(hwc, dtype))
    # The hot path of every 8-bit video: OpenCV's saturating multiply clamps and rounds (to nearest
    # even, like np.rint) in one SIMD pass, 3x faster than numpy's clip + rint + astype; the
    # transpose is then done on uint8, a quarter of the bytes.
    count, channels, height, width = batch.shape
    flat = np.ascontiguousarray(batch, dtype=np.float32).reshape(-1, width)
    as_bytes = cv2.multiply(flat, 255.0, dtype=cv2.CV_8U).reshape(count, channels, height, width)
    return np.ascontiguousarray(as_bytes.transpose(0, 2, 3, 1))


def even_size(height: int, width: int) -> tuple[int, int]:
    """Round (height, width) to the nearest even numbers >= 2 (4:2:0 chroma needs even sizes)."""
    return max(2, 2 * round(height / 2)), max(2, 2 * round(width / 2))
