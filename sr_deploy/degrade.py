"""Named, reproducible LR degradations for real-world evaluation tables (`eval --degrade SPEC`).

A spec is a comma list of ``name=value`` steps, e.g. ``jpeg=40``, ``noise=10,jpeg=60`` or
``blur=1.2,noise=5,jpeg=50``. Whatever order they are written in, they apply in one fixed order:

1. ``blur=SIGMA``: Gaussian blur of the HR image (sigma in HR pixels, reflected borders), before
2. the standard x`scale` MATLAB bicubic downscale, rounded to 8-bit levels (as an LR file holds);
3. ``noise=SIGMA``: additive Gaussian noise of SIGMA 8-bit levels, drawn per colour channel from a
   generator seeded with the image's file name (the same image gets the same noise in every
   run, on every machine), clipped and rounded to 8 bits;
4. ``jpeg=QUALITY``: OpenCV's baseline JPEG encoder (libjpeg, 4:2:0) at QUALITY, decoded again.

With no steps it is plain bicubic, so ``--degrade`` absent and ``--degrade bicubic`` agree.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import InputError
from .imaging import encode_image
from .metrics import bicubic_degrade

STEPS = ("blur", "noise", "jpeg")
_BOUNDS = {"blur": (0.0, 10.0), "noise": (0.0, 100.0), "jpeg": (1, 100)}
# A plain ASCII decimal: float() would also take "1_0", non-ASCII digits and "nan" / "inf".
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


@dataclass(frozen=True)
class Degradation:
    """One parsed spec; a step left at None is not applied."""

    blur: float | None = None
    noise: float | None = None
    jpeg: int | None = None

    @property
    def name(self) -> str:
        """The canonical spec text (steps in the order they apply), ``bicubic`` when empty."""
        parts = [f"{step}={_number_text(getattr(self, step))}" for step in STEPS if getattr(self, step) is not None]
        return ",".join(parts) or "bicubic"

    def apply(self, hr: np.ndarray, scale: int, seed_text: str) -> tuple[np.ndarray, np.ndarray]:
        """Degrade one HR image (RGB uint8 HWC, or grey uint8 HW) to its LR input.

        Returns (hr_cropped, lr): hr_cropped is `hr` mod-cropped to a multiple of `scale` (uint8,
        what the SR output is scored against) and lr is float32 in [0, 1] on 8-bit levels, of
        shape (H/scale, W/scale[, 3]), same colour order as `hr`. `seed_text` (the file name)
        seeds the noise.
        """
        hr_cropped, lr = bicubic_degrade(hr, scale)
        if self.blur:
            blurred = cv2.GaussianBlur(hr_cropped, (0, 0), sigmaX=self.blur, borderType=cv2.BORDER_REFLECT_101)
            lr = bicubic_degrade(blurred, scale)[1]
        levels = lr * np.float32(255.0)
        if self.noise:
            rng = np.random.default_rng(zlib.crc32(seed_text.encode("utf-8")))
            levels = levels + rng.standard_normal(levels.shape).astype(np.float32) * np.float32(self.noise)
            levels = np.clip(np.round(levels), 0, 255)
        if self.jpeg is not None:
            levels = jpeg_round_trip(levels.astype(np.uint8), self.jpeg).astype(np.float32)
        return hr_cropped, (levels / np.float32(255.0)).astype(np.float32)


def _number_text(value: float | int) -> str:
    """The shortest text that reads back as `value` (10, 1.2, 10.0000001): a label never
    rounds one spec onto another's."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def jpeg_round_trip(levels: np.ndarray, quality: int) -> np.ndarray:
    """uint8 RGB HWC (or grey HW) through the JPEG encoder `sr-deploy upscale` writes with
    (`imaging.encode_image`: OpenCV's libjpeg, 4:2:0) at `quality` and decoded again; same shape."""
    decoded = cv2.imdecode(np.frombuffer(encode_image(levels, ".jpg", quality), np.uint8), cv2.IMREAD_UNCHANGED)
    return decoded if decoded.ndim == 2 else cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def parse_degradation(spec: str | None) -> Degradation:
    """``"noise=10,jpeg=60"`` -> Degradation(noise=10.0, jpeg=60). None, ``""`` and ``bicubic``
    are plain bicubic, and a blur or noise sigma of 0 is no step (so ``blur=0,jpeg=40`` is named
    ``jpeg=40``). InputError (one line, naming the step) for an unknown step, a repeated one, a
    value that is not a plain decimal number or is out of range."""
    text = (spec or "").strip()
    if text in ("", "bicubic"):
        return Degradation()
    values: dict[str, float | int] = {}
    for part in text.split(","):
        name, sep, raw = part.strip().partition("=")
        name = name.strip()
        if not sep or name not in STEPS:
            raise InputError(
                f"--degrade {spec}: {part.strip()!r} is not a step; expected NAME=VALUE with NAME one of "
                f"{', '.join(STEPS)} (e.g. noise=10,jpeg=60)"
            )
        if name in values:
            raise InputError(f"--degrade {spec}: {name} is given twice")
        if not _NUMBER.fullmatch(raw.strip()):
            raise InputError(f"--degrade {spec}: {name}={raw.strip()} is not a number")
        value = float(raw)
        low, high = _BOUNDS[name]
        if not math.isfinite(value) or not low <= value <= high or (name == "jpeg" and not value.is_integer()):
            kind = "an integer quality" if name == "jpeg" else "a sigma"
            raise InputError(f"--degrade {spec}: {name}={raw.strip()} must be {kind} in [{low}, {high}]")
        values[name] = int(value) if name == "jpeg" else value
    return Degradation(**{name: value for name, value in values.items() if name == "jpeg" or value})
