"""One image file through a backend: read, tile, write atomically."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..backends.base import Backend
from ..imaging import (
    image_to_model_input,
    output_dtype_for,
    quantize,
    read_image,
    upscaled_size,
    write_image_consuming,
)
from ..tiling import upscale_tiled_into
from .options import UpscaleOptions


def upscale_image_file(backend: Backend, source: Path, target: Path, options: UpscaleOptions) -> None:
    """Read `source`, upscale it (tiled), write `target` atomically (format from its extension).

    Keeps greyscale as one channel, alpha (bicubic), 16-bit depth where the format holds it.
    Memory: each tile is clamped and rounded into the 8/16-bit output as it finishes, so the peak
    is the input (as float32), the tiles in flight and the output image, not a float32 output.
    With `--outscale` the tiles go into a 16-bit image at the model's scale, which is resized and
    then rounded to the output depth once.
    """
    image = read_image(source)
    height, width = image.shape[:2]
    grey, input_dtype = image.ndim == 2, image.dtype
    dtype = output_dtype_for(target.suffix, input_dtype)
    rgb, alpha = image_to_model_input(image)
    del image
    size = None
    if options.outscale is not None and options.outscale != backend.scale:
        size = upscaled_size(height, width, options.outscale)
    staging = np.dtype(np.uint16) if size is not None and dtype == np.uint8 else dtype
    scale = backend.scale
    shape: tuple[int, ...] = (height * scale, width * scale)
    channels = 1 if grey else (4 if alpha is not None else 3)
    out = np.empty(shape if channels == 1 else shape + (channels,), dtype=staging)

    def put(y0: int, y1: int, x0: int, x1: int, core: np.ndarray) -> None:
        hwc = np.ascontiguousarray(core.transpose(1, 2, 0), dtype=np.float32)
        if grey:
            out[y0:y1, x0:x1] = quantize(cv2.cvtColor(hwc, cv2.COLOR_RGB2GRAY), staging)
        else:
            out[y0:y1, x0:x1, :3] = quantize(hwc, staging)

    batch_size = options.batch_size or (4 if str(backend.device).startswith("cuda") else 1)
    upscale_tiled_into(backend, rgb, put, options.tile, options.tile_overlap, batch_size)
    del rgb
    if alpha is not None:
        out[:, :, 3] = quantize(cv2.resize(alpha, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), staging)
    if size is not None:
        shrinking = size[0] * size[1] < shape[0] * shape[1]
        out = cv2.resize(out, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)
        if staging != dtype:  # 16-bit staging -> 8-bit, rounded and saturated
            out = cv2.multiply(out, 1 / 257, dtype=cv2.CV_8U)
    write_image_consuming(target, out, options.quality)
