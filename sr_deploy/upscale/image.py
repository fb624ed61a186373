"""One image file through a backend: read, tile, write atomically."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..backends.base import Backend
from ..errors import InputError
from ..formats import image_format
from ..image_metadata import carried_metadata
from ..imaging import (
    image_header_size,
    image_to_model_input,
    output_dtype_for,
    quantize,
    read_image,
    upscaled_size,
    write_image_consuming,
)
from ..tiling import auto_tile_size, upscale_tiled_into
from ..util.memory import available_memory
from ..util.text import PROVENANCE_KEY, pixels_text, provenance
from .options import UpscaleOptions

# What one input pixel costs while its image is upscaled, besides the output: the decoded image
# (up to 4 bytes) and the float32 model input (12 bytes); the output adds 3 (8-bit) or 6 (16-bit)
# bytes per output pixel. The runtime and model take about 1 GiB on top (docs/upscale.md).
INPUT_BYTES_PER_PIXEL = 16
RUNTIME_BYTES = 1 << 30


def max_input_pixels(scale: int, deep: bool = False) -> int:
    """The default bound on an input image's pixels (`--max-pixels`): what fits in the memory
    available now at `scale` (`deep`: a 16-bit output)."""
    per_pixel = INPUT_BYTES_PER_PIXEL + (6 if deep else 3) * scale * scale
    return max(0, available_memory() - RUNTIME_BYTES) // per_pixel


def check_image_size(source: Path, scale: int, limit: int | None, target: Path, outscale: float | None = None) -> None:
    """InputError (exit 2) before anything is decoded when the header of `source` states more
    pixels than `limit` (None: `max_input_pixels`), or an output (at `scale`, or `outscale`) with
    a longer side than `target`'s format writes (`ImageFormat.max_side`: a WebP of a DSLR photo);
    a file whose header cannot be read passes (the decoder reports it)."""
    size = image_header_size(source)
    if size is None:
        return
    fmt = image_format(target.suffix)
    out_side = max(upscaled_size(size[1], size[0], outscale if outscale is not None else scale))
    if fmt is not None and fmt.max_side is not None and out_side > fmt.max_side:
        raise InputError(
            f"{source}: its output would be {out_side} pixels on its long side, more than {target.suffix} "
            f"holds ({fmt.max_side}): choose another --ext (png), or a smaller --outscale"
        )
    pixels = size[0] * size[1]
    bound = max_input_pixels(scale) if limit is None else limit
    if pixels > bound:
        where = "--max-pixels" if limit is not None else f"the memory available now at x{scale}"
        raise InputError(
            f"{source}: {size[0]}x{size[1]} is {pixels_text(pixels)}, more than the {pixels_text(bound)} "
            f"of {where}; pass --max-pixels N to change the bound"
        )


def upscale_image_file(backend: Backend, source: Path, target: Path, options: UpscaleOptions) -> None:
    """Read `source`, upscale it (tiled), write `target` atomically (format from its extension).

    Keeps greyscale as one channel, alpha (bicubic), 16-bit depth where the format holds it,
    and the input's ICC colour profile and EXIF in a PNG or JPEG output (`image_metadata`).
    Memory: each tile is clamped and rounded into the 8/16-bit output as it finishes, so the peak
    is the input (as float32), the tiles in flight and the output image, not a float32 output.
    With `--outscale` the tiles go into a 16-bit image at the model's scale, which is resized and
    then rounded to the output depth once.
    """
    check_image_size(source, backend.scale, options.max_pixels, target, options.outscale)
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
    tile = options.tile
    if tile is None:  # automatic, from the job's settled memory budget (the same on every worker)
        tile = auto_tile_size(backend, height, width, options.tile_overlap, batch_size, options.memory_budget)
    upscale_tiled_into(backend, rgb, put, tile, options.tile_overlap, batch_size)
    del rgb
    if alpha is not None:
        out[:, :, 3] = quantize(cv2.resize(alpha, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), staging)
    if size is not None:
        shrinking = size[0] * size[1] < shape[0] * shape[1]
        out = cv2.resize(out, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)
        if staging != dtype:  # 16-bit staging -> 8-bit, rounded and saturated
            out = cv2.multiply(out, 1 / 257, dtype=cv2.CV_8U)
    model_id = options.model_id or Path(options.model).name
    settings = options.recorded("image", target.suffix)
    text = {PROVENANCE_KEY: provenance(model_id, backend.precision, settings, source.stat().st_size)}
    oriented = getattr(image_format(source.suffix), "orientation", False)  # read_image turned it upright
    metadata = carried_metadata(source, channels, (out.shape[1], out.shape[0]), oriented)
    write_image_consuming(target, out, options.quality, text, metadata)
